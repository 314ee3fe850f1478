"""Bad input in a bucket: every kind is reported with its reason, the good images still train."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from skin.cli import app
from skin.data.images import ImageDecodeError, decode
from skin.data.sample_data import write_sample_dataset
from tests.helpers import png_bomb, snapshot
from tests.recipes import TINY


def jpeg(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def lesion(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), "RGB")


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise on display
    return jpeg(lesion(7), exif=exif.tobytes())


GOOD = {
    "AK/png_with_alpha.png": png(Image.new("RGBA", (40, 40), (200, 30, 30, 120))),
    "BCC/cmyk.jpg": jpeg(Image.new("CMYK", (40, 40), (0, 120, 120, 30))),
    "BKL/sixteen_bit.png": png(
        Image.fromarray((np.arange(1600).reshape(40, 40) * 40).astype(np.uint16))
    ),
    "DF/grayscale.jpg": jpeg(Image.new("L", (40, 40), 90)),
    "MEL/exif_rotated.jpg": exif_rotated(),
    "NV/with spaces and ünïcödé.jpg": jpeg(lesion(8)),
}
BAD = {
    "SCC/truncated.jpg": jpeg(lesion(9))[:300],
    "SCC/zero_bytes.jpg": b"",
    "VASC/text_named.jpg": b"this is not an image, just text\n",
    "VASC/bomb.png": png_bomb(),
    "AK/../escape.jpg": jpeg(lesion(10)),
    "XYZ/unknown_class.jpg": jpeg(lesion(11)),
    "README.txt": b"notes",
}


def test_decode_handles_every_kind_of_image() -> None:
    for key, data in GOOD.items():
        arr = decode(data, 32)
        assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8, key
    rotated = decode(GOOD["MEL/exif_rotated.jpg"], 32)
    upright = decode(jpeg(lesion(7).transpose(Image.Transpose.ROTATE_270)), 32)
    assert np.abs(rotated.astype(int) - upright.astype(int)).mean() < 12, "EXIF orientation applied"
    expectations = {
        "SCC/truncated.jpg": "truncated",
        "SCC/zero_bytes.jpg": "empty",
        "VASC/text_named.jpg": "not a usable image",
        "VASC/bomb.png": "limit|bomb",
    }
    for key, pattern in expectations.items():
        with pytest.raises(ImageDecodeError, match=pattern):
            decode(BAD[key], 32)


@pytest.mark.server
@pytest.mark.slow
def test_bad_bucket_is_reported_and_the_pipeline_trains_on_the_rest(
    s3_client, bucket: str, tmp_path: Path, prefect_api, mlflow_server
) -> None:
    from flows.pipeline import pipeline_flow

    data = f"s3://{bucket}/isic"
    write_sample_dataset(
        data,
        dict.fromkeys(["AK", "BCC", "BKL", "DF", "MEL", "NV", "SCC", "VASC"], 10),
        size=32,
        seed=3,
    )
    for key, body in {**GOOD, **BAD}.items():
        s3_client.put_object(Bucket=bucket, Key=f"isic/{key}", Body=body)
    before = snapshot(s3_client, bucket)

    result = CliRunner().invoke(app, ["--json", "validate", "--data", data], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    reasons = {p["key"]: (p["stage"], p["reason"]) for p in report["problems"]}
    assert reasons["AK/../escape.jpg"] == ("listing", "unsafe key"), reasons
    assert reasons["XYZ/unknown_class.jpg"] == ("listing", "unknown class folder XYZ")
    assert reasons["README.txt"] == ("listing", "not an image file")
    assert reasons["SCC/zero_bytes.jpg"] == ("listing", "empty object")
    assert reasons["SCC/truncated.jpg"][0] == "decode", reasons
    assert reasons["VASC/text_named.jpg"][0] == "decode"
    assert reasons["VASC/bomb.png"][0] == "decode"
    assert not set(GOOD) & set(reasons), f"good images reported bad: {set(GOOD) & set(reasons)}"
    assert sum(report["good"].values()) == 80 + len(GOOD)

    ov = {
        **TINY,
        "train.epochs": 2,
        "work_dir": str(tmp_path / "work"),
        "tracking.tracking_uri": mlflow_server.url,
        "tracking.experiment": "bad-input",
    }
    out = pipeline_flow(data_uri=data, overrides=ov)
    assert out["bad_images"] == 3, out["bad_images"]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.url)
    local = client.download_artifacts(out["run_id"], "data/bad_images.csv", str(tmp_path))
    text = Path(local).read_text()
    assert "SCC/truncated.jpg" in text and "VASC/bomb.png" in text, text
    assert snapshot(s3_client, bucket) == before, "the pipeline must not change the bucket"
