"""Work-pool base job templates for GPU runs: Kubernetes (and the Docker pool's GPU request).

Prefect's default Kubernetes job template has no GPU field. `kubernetes_gpu_template` extends the
installed prefect-kubernetes default, so it stays in step with the worker's version, with:

- `gpus`: `nvidia.com/gpu` limits and requests (set it to `train.nproc` for DDP in one pod);
- an in-memory `/dev/shm` in the default `volumes` (PyTorch loader workers pass batches through
  shared memory; the container default of 64 MB stalls them): keep it when overriding volumes;
- `node_selector` and `tolerations` (GPU nodes are usually tainted);
- `volumes` / `volume_mounts`: e.g. a PVC mounted at the work_dir for checkpoints that a resumed
  or multi-node run must find.

`python -m flows.workpools > docker/k8s-gpu-job-template.json` writes it; create the pool with
`prefect work-pool create k8s-gpu --type kubernetes --base-job-template docker/k8s-gpu-job-template.json`.
"""

from __future__ import annotations

import copy
import json
from typing import Any

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
SHM_VOLUME = {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}
SHM_MOUNT = {"name": "dshm", "mountPath": "/dev/shm"}


def kubernetes_gpu_template() -> dict[str, Any]:
    from prefect_kubernetes.worker import KubernetesWorker

    template = copy.deepcopy(KubernetesWorker.get_default_base_job_template())
    props = template["variables"]["properties"]
    props["gpus"] = {
        "title": "GPUs",
        "type": "integer",
        "default": 1,
        "minimum": 0,
        "description": "nvidia.com/gpu per pod (train.nproc for DDP in one pod)",
    }
    props["shm_size_gi"] = {
        "title": "Shared memory (GiB)",
        "type": "integer",
        "default": 8,
        "description": "/dev/shm for the data loader's worker processes",
    }
    props["node_selector"] = {
        "title": "Node selector",
        "type": "object",
        "default": {},
        "additionalProperties": {"type": "string"},
    }
    props["tolerations"] = {
        "title": "Tolerations",
        "type": "array",
        "default": [GPU_TOLERATION],
        "items": {"type": "object"},
    }
    props["volumes"] = {"title": "Volumes", "type": "array", "default": [SHM_VOLUME],
                        "items": {"type": "object"}}  # fmt: skip
    props["volume_mounts"] = {"title": "Volume mounts", "type": "array", "default": [SHM_MOUNT],
                              "items": {"type": "object"}}  # fmt: skip
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    container["resources"]["limits"]["nvidia.com/gpu"] = "{{ gpus }}"
    container["resources"]["requests"]["nvidia.com/gpu"] = "{{ gpus }}"
    container["volumeMounts"] = "{{ volume_mounts }}"
    pod["nodeSelector"] = "{{ node_selector }}"
    pod["tolerations"] = "{{ tolerations }}"
    pod["volumes"] = "{{ volumes }}"
    return template


if __name__ == "__main__":
    print(json.dumps(kubernetes_gpu_template(), indent=2, sort_keys=True))
