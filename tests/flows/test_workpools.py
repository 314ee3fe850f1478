"""Work-pool job templates render the GPU requests prefect.yaml asks for (no cluster needed)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.workpools import GPU_TOLERATION, SHM_MOUNT, SHM_VOLUME, kubernetes_gpu_template

REPO = Path(__file__).resolve().parents[2]


def pool_variables(name: str) -> dict[str, Any]:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    return spec["definitions"]["work_pools"][name]["job_variables"]


def test_the_committed_kubernetes_template_is_up_to_date() -> None:
    committed = json.loads((REPO / "docker" / "k8s-gpu-job-template.json").read_text())
    assert committed == kubernetes_gpu_template(), (
        "regenerate: python -m flows.workpools > docker/k8s-gpu-job-template.json"
    )


@pytest.mark.server
def test_kubernetes_job_requests_gpus_on_gpu_nodes(prefect_api) -> None:
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    values = {**pool_variables("kubernetes"), "gpus": 4}
    config = asyncio.run(
        KubernetesWorkerJobConfiguration.from_template_and_values(kubernetes_gpu_template(), values)
    )
    pod = config.job_manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "skin-worker:latest"
    for kind in ("limits", "requests"):
        assert int(container["resources"][kind]["nvidia.com/gpu"]) == 4, container["resources"]
    assert pod["tolerations"] == [GPU_TOLERATION]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["volumes"] == [SHM_VOLUME] and container["volumeMounts"] == [SHM_MOUNT]
    env = {e["name"]: e["value"] for e in container["env"]} if isinstance(container["env"], list) \
        else config.env  # fmt: skip
    assert env.get("SKIN_PROJECT_DIR") == "/app"


@pytest.mark.server
def test_kubernetes_defaults_keep_one_gpu_and_shared_memory(prefect_api) -> None:
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    config = asyncio.run(
        KubernetesWorkerJobConfiguration.from_template_and_values(
            kubernetes_gpu_template(), {"image": "x"}
        )
    )
    pod = config.job_manifest["spec"]["template"]["spec"]
    assert int(pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert pod["volumes"] == [SHM_VOLUME]


@pytest.mark.server
def test_docker_job_passes_every_gpu_to_the_container(prefect_api) -> None:
    from prefect_docker.worker import DockerWorker, DockerWorkerJobConfiguration

    template = DockerWorker.get_default_base_job_template()
    config = asyncio.run(
        DockerWorkerJobConfiguration.from_template_and_values(template, pool_variables("docker"))
    )
    assert config.image == "skin-worker:latest"
    assert config.container_create_kwargs["device_requests"] == [
        {"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}
    ]
    assert config.env["SKIN_PROJECT_DIR"] == "/app"
