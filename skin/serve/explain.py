"""Class-activation maps: where a model looked for its answer, through `pytorch_grad_cam`.

A map is computed on exactly what the model was shown: `Predictor.to_input` decodes and crops
the image, `Normalize` with the model's own mean and std runs inside the explained network, and
with TTA the map is the mean of the views' maps, each turned back to the image's orientation. An
ensemble's map is the mean of its members' maps. The target layer is chosen per architecture
(`target_layer`), or named by `explain.target_layer`.
"""

from __future__ import annotations

import base64
import io
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import torch
from pytorch_grad_cam import EigenCAM, GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from skin.base.plots import pyplot
from skin.data.images import ImageDecodeError
from skin.data.storage import StorageError, open_store
from skin.serve.predict import PredictError, check_output, image_keys, output_uri, write_frame
from skin.serve.tta import views
from skin.train.datasets import Normalize, dihedral_view

METHODS = {"gradcam": GradCAM, "eigencam": EigenCAM}  # Grad-CAM; Eigen-CAM needs no gradient
CHUNK = 16  # images per backward pass: bounds the activations and gradients held at once


class ExplainError(ValueError):
    """A map cannot be made (unknown method, class or layer); says which and what is available."""


@dataclass(frozen=True)
class Maps:
    """Maps of N images: the crops the model saw, maps in [0, 1], the answer, the class explained."""

    images: np.ndarray  # uint8 [N, size, size, 3]
    cams: np.ndarray  # float32 [N, size, size], each scaled to [0, 1]
    probs: np.ndarray  # calibrated probabilities [N, classes], as `Predictor.predict`
    targets: np.ndarray  # int [N]: the class each map explains
    method: str
    layer: str


# --------------------------------------------------------------------------- the target layer


def target_layer(net: nn.Module, size: int, name: str | None = None) -> str:
    """The layer whose activations are mapped: `name` when given, else the last layer that
    outputs the final feature map (what the head pools): a CNN's last stage, `conv_head`+`bn2`,
    ConvNeXt's `norm_pre`; for a transformer (tokens, no grid) the last block's `norm1`."""
    modules = dict(net.named_modules())
    if name:
        if name not in modules:
            tail = [n for n in modules if n][-6:]
            raise ExplainError(
                f"explain.target_layer {name!r} is not a layer of {type(net).__name__};"
                f" its last layers are {tail}"
            )
        return name
    return _chosen(net, size)[0]


_CHOSEN: weakref.WeakKeyDictionary[nn.Module, dict[int, tuple[str, bool]]] = (
    weakref.WeakKeyDictionary()
)  # per network and input size: the probe runs once, not once a request


def _chosen(net: nn.Module, size: int) -> tuple[str, bool]:
    """The automatic layer of `net` at `size`, and whether its features are tokens (a ViT)."""
    known = _CHOSEN.setdefault(net, {})
    if size not in known:
        known[size] = _probe_layer(net, size)
    return known[size]


def _probe_layer(net: nn.Module, size: int) -> tuple[str, bool]:
    modules = dict(net.named_modules())
    shapes = _output_shapes(net, size)
    final = shapes.pop("", None)  # the network itself
    feats = _features_shape(net, size)
    if len(feats) == 3:  # tokens [N, T, C]: a vision transformer
        blocks = [n for n in modules if n.endswith(".norm1")]
        if not blocks:
            raise ExplainError(
                f"{type(net).__name__}: tokens but no block norm1: set explain.target_layer"
            )
        return blocks[-1], True
    found = [n for n, shape in shapes.items() if shape == feats]
    if len(feats) != 4 or not found or final is None:
        raise ExplainError(
            f"{type(net).__name__}: no layer outputs its {list(feats)} feature map;"
            " set explain.target_layer to a layer name"
        )
    return found[-1], False


def _output_shapes(net: nn.Module, size: int) -> dict[str, tuple[int, ...]]:
    """Each module's output shape on one probe image, in the order the modules finished."""
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, module in net.named_modules():

        def hook(_m: nn.Module, _i: object, out: object, name: str = name) -> None:
            if isinstance(out, torch.Tensor):
                shapes.pop(name, None)  # a module called twice counts at its last call
                shapes[name] = tuple(out.shape)

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            net(_probe(net, size))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _features_shape(net: nn.Module, size: int) -> tuple[int, ...]:
    features = getattr(net, "forward_features", None)
    if features is None:
        raise ExplainError(f"{type(net).__name__} is not a timm model: set explain.target_layer")
    with torch.no_grad():
        return tuple(features(_probe(net, size)).shape)


def _probe(net: nn.Module, size: int) -> torch.Tensor:
    param = next(net.parameters())
    return torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype)


def tokens_to_grid(prefix: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A transformer's tokens [N, prefix + h*w, C] as a CNN's map [N, C, h, w] (square grid)."""

    def reshape(x: torch.Tensor) -> torch.Tensor:
        grid = x[:, prefix:, :]
        side = round(grid.shape[1] ** 0.5)
        return grid.reshape(x.shape[0], side, side, x.shape[2]).permute(0, 3, 1, 2)

    return reshape


# --------------------------------------------------------------------------- maps


class _Prepared(nn.Module):
    """The network behind its own normalisation: float 0–255 NCHW in, logits out."""

    def __init__(self, net: nn.Module, norm: nn.Module) -> None:
        super().__init__()
        self.net, self.norm = net, norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(x))


def class_maps(
    net: nn.Module,
    norm: nn.Module,
    images: np.ndarray,
    targets: Sequence[int],
    *,
    method: str = "gradcam",
    layer: str | None = None,
    tta: bool = False,
) -> np.ndarray:
    """Maps [N, size, size] in [0, 1] of uint8 images [N, size, size, 3] for class `targets[i]`;
    with `tta`, the mean over the 8 views (each map turned back), as TTA predicts."""
    if method not in METHODS:
        raise ExplainError(f"explain.method {method!r}: use one of {sorted(METHODS)}")
    size = images.shape[1]
    name = target_layer(net, size, layer)
    module = dict(net.named_modules())[name]
    tokens = _chosen(net, size)[1]
    reshape = tokens_to_grid(getattr(net, "num_prefix_tokens", 1)) if tokens else None
    device = next(net.parameters()).device
    total = np.zeros((len(images), size, size), dtype=np.float64)
    cut = module.register_forward_hook(_cut_below)  # before the CAM's own hook: it sees the cut
    try:
        with METHODS[method](_Prepared(net, norm), [module], reshape_transform=reshape) as cam:
            for i in range(0, len(images), CHUNK):
                x = torch.from_numpy(np.ascontiguousarray(images[i : i + CHUNK])).to(device)
                x = x.permute(0, 3, 1, 2).float()
                wanted = [ClassifierOutputTarget(int(c)) for c in targets[i : i + CHUNK]]
                for k, transpose in views(tta):
                    view = cam(input_tensor=dihedral_view(x, k, transpose), targets=wanted)
                    total[i : i + CHUNK] += _undo_view(view, k, transpose)
    finally:
        cut.remove()
    return _unit(total / len(views(tta)))


def _cut_below(_module: nn.Module, _inputs: object, out: object) -> object:
    """The mapped layer's output as a new leaf that needs a gradient: the backward pass stops
    there (no gradient for the layers below, which a map does not use), and a frozen network's
    activations still get one."""
    return out.detach().requires_grad_(True) if isinstance(out, torch.Tensor) else None


def _undo_view(cams: np.ndarray, k: int, transpose: bool) -> np.ndarray:
    """A view's maps [N, H, W] in the image's orientation: k quarter turns back, then transpose."""
    back = np.rot90(cams, -k, axes=(1, 2)) if k else cams
    return back.transpose(0, 2, 1) if transpose else back


def _unit(cams: np.ndarray) -> np.ndarray:
    """Each map scaled to [0, 1] (an all-zero map stays zero)."""
    low = cams.min(axis=(1, 2), keepdims=True)
    span = cams.max(axis=(1, 2), keepdims=True) - low
    return ((cams - low) / np.where(span > 0, span, 1.0)).astype(np.float32)


def explain_arrays(
    predictor: object,
    images: np.ndarray,
    target: str | None = None,
    *,
    method: str = "gradcam",
    layer: str | None = None,
) -> Maps:
    """Maps of decoded, cropped images for `target` (a class name), else each one's answer; an
    ensemble (a predictor with `members`) averages its members' maps."""
    probs = predictor.predict_arrays(images)  # type: ignore[attr-defined]
    classes = tuple(predictor.classes)  # type: ignore[attr-defined]
    targets = np.full(len(images), class_index(classes, target)) if target else probs.argmax(1)
    members = getattr(predictor, "members", None) or [predictor]
    cams = np.mean([_member_maps(m, images, targets, method, layer) for m in members], axis=0)
    name = layer or target_layer(members[0].model, images.shape[1])
    return Maps(images, _unit(cams), probs, targets.astype(int), method, name)


def explain_images(
    predictor: object,
    images: Sequence[bytes],
    target: str | None = None,
    *,
    method: str = "gradcam",
    layer: str | None = None,
) -> Maps:
    """`explain_arrays` for image bytes, decoded and cropped as the predictor does."""
    arrays = np.stack([predictor.to_input(b) for b in images])  # type: ignore[attr-defined]
    return explain_arrays(predictor, arrays, target, method=method, layer=layer)


def _member_maps(
    member: object, images: np.ndarray, targets: np.ndarray, method: str, layer: str | None
) -> np.ndarray:
    spec = member.spec  # type: ignore[attr-defined]
    if images.shape[1] != spec.size:
        raise ExplainError(f"images are {images.shape[1]} px, the model takes {spec.size} px")
    norm = Normalize(spec).to(member.device)  # type: ignore[attr-defined]
    net = member.model  # type: ignore[attr-defined]
    return class_maps(net, norm, images, targets, method=method, layer=layer, tta=member.tta)  # type: ignore[attr-defined]


def class_index(classes: Sequence[str], name: str) -> int:
    """The column of class `name`, or an error listing the model's classes."""
    if name not in classes:
        raise ExplainError(f"class {name!r} is not one of this model's classes {list(classes)}")
    return list(classes).index(name)


# --------------------------------------------------------------------------- pictures


def overlay(image: np.ndarray, cam: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """The map over the image (jet colours; `weight` of the image), uint8 RGB."""
    return show_cam_on_image(
        image.astype(np.float32) / 255.0, cam, use_rgb=True, image_weight=weight
    )


def png_bytes(rgb: np.ndarray) -> bytes:
    """A uint8 RGB array as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def overlay_base64(image: np.ndarray, cam: np.ndarray) -> str:
    """The overlay as a base64 PNG: what the served model's `explanation` column holds."""
    return base64.b64encode(png_bytes(overlay(image, cam))).decode("ascii")


# --------------------------------------------------------------------------- sanity checks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (Adebayo et al. 2018's similarity); nan if flat."""
    from scipy.stats import rankdata

    ra, rb = rankdata(np.ravel(a)), rankdata(np.ravel(b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def mass_share(cam: np.ndarray, mask: np.ndarray) -> float:
    """The share of a map's mass inside `mask` (bool, same shape); nan for an all-zero map."""
    total = float(cam.sum())
    return float(cam[mask].sum()) / total if total > 0 else float("nan")


def randomised_cascade(net: nn.Module) -> Iterator[str]:
    """Re-initialise the network's top-level children from the output back to the input, one at a
    time and cumulatively (Adebayo et al.'s cascading randomisation); yields each child's name
    after it is randomised. Changes `net` in place: run it on a copy."""
    for name, child in reversed(list(net.named_children())):
        touched = False
        for module in child.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
                touched = True
        if touched:
            yield name


# --------------------------------------------------------------------------- files


def sheet_png(image: np.ndarray, cam: np.ndarray, title: str, lines: Sequence[str]) -> bytes:
    """The image and its map side by side, `lines` (the answer, top classes) beneath: a PNG."""
    plt = pyplot()
    text_in = 0.1 + 0.18 * len(lines)  # inches of text under the pictures
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.5 + text_in))
    for ax, picture, name in zip(axes, (image, overlay(image, cam)), ("image", title), strict=True):
        ax.imshow(picture)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.text(0.5, 0.02, "\n".join(lines), ha="center", va="bottom", fontsize=9, family="monospace")
    fig.tight_layout(rect=(0, text_in / (3.5 + text_in), 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def answer_lines(row: pd.Series, classes: Sequence[str], k: int = 3) -> list[str]:
    """The top-k classes with probabilities of a `Predictor.score` row, and its UNK answer."""
    probs = np.array([row[f"prob_{c}"] for c in classes], dtype=float)
    top = "  ".join(f"{classes[j]} {probs[j]:.3f}" for j in np.argsort(-probs, kind="stable")[:k])
    lines = [f"top {k}: {top}"]
    if "ood_score" in row.index:
        lines.append(f"answer: {row['predicted_label']} (OOD score {row['ood_score']:.3f})")
    return lines


def output_name(key: str, taken: set[str]) -> str:
    """`<image stem>.cam.png`, numbered when two images share a stem."""
    stem = PurePosixPath(key.rstrip("/")).stem or "image"
    name, n = f"{stem}.cam.png", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.cam.png"
    taken.add(name)
    return name


def write_explanations(
    predictor: Any,
    keys: Sequence[str],
    fetch: Callable[[str], bytes],
    out: Path,
    target: str | None = None,
    *,
    method: str = "gradcam",
    layer: str | None = None,
) -> pd.DataFrame:
    """Predict and map each image, and write `<out>/<stem>.cam.png` (image, map, top three, UNK
    answer); never overwrites a file. The prediction table gains `explained` (the class mapped)
    and `explanation_file`; an image that cannot be read keeps its error and gets no file."""
    if target is not None:
        class_index(predictor.classes, target)  # a wrong class fails before any work
    taken: set[str] = set()
    files = {key: out / output_name(key, taken) for key in keys}
    existing = [str(p) for p in files.values() if p.exists()]
    if existing:
        raise ExplainError(
            f"{existing[0]} already exists: choose another folder (nothing overwritten)"
        )
    data = {key: _fetched(fetch, key) for key in keys}
    frame = predictor.score(keys, lambda key: _raise_or(data[key]))
    good = [i for i, e in enumerate(frame["error"]) if not isinstance(e, str)]
    explained: list[str | None] = [None] * len(keys)
    written: list[str | None] = [None] * len(keys)
    if good:
        arrays = [data[keys[i]] for i in good]
        maps = explain_images(predictor, arrays, target, method=method, layer=layer)
        out.mkdir(parents=True, exist_ok=True)
        for j, i in enumerate(good):
            explained[i] = predictor.classes[maps.targets[j]]
            title = f"{method} for {explained[i]} ({maps.layer})"
            lines = answer_lines(frame.iloc[i], predictor.classes)
            files[keys[i]].write_bytes(sheet_png(maps.images[j], maps.cams[j], title, lines))
            written[i] = str(files[keys[i]])
    as_objects = {"explained": explained, "explanation_file": written}  # None stays None
    return frame.assign(**{k: pd.Series(v, dtype=object) for k, v in as_objects.items()})


def explain_store(
    uri: str,
    predictor: Any,
    out: Path,
    out_uri: str | None = None,
    *,
    method: str = "gradcam",
    layer: str | None = None,
) -> tuple[pd.DataFrame, str]:
    """Predict and map every image under a folder or s3:// prefix: the maps into `out`, the table
    where the batch prediction writes it (default `output_uri(uri)`); inputs are only read and
    nothing is overwritten."""
    target = out_uri or output_uri(uri)
    check_output(target)
    keys = image_keys(uri)
    if not keys:
        raise PredictError(f"no .jpg/.jpeg/.png images under {uri}")
    frame = write_explanations(
        predictor, keys, open_store(uri).get, out, method=method, layer=layer
    )
    write_frame(frame, target)
    return frame, target


def _fetched(fetch: Callable[[str], bytes], key: str) -> bytes | Exception:
    try:
        return fetch(key)
    except (ImageDecodeError, StorageError, OSError) as err:  # as Predictor.score reports them
        return err


def _raise_or(data: bytes | Exception) -> bytes:
    if isinstance(data, Exception):
        raise data
    return data
