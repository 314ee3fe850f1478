"""Batched augmentation on the training device: one warp and one colour matrix per image.

The per-image torchvision pipeline (`skin.train.datasets.TrainImages`) costs ~3 ms an image on a CPU core,
which a GPU eats faster than a few loader workers can make. Here a whole uint8 batch is
augmented where it already is (the GPU, or the main process on CPU) with two batched ops:

- **geometry**: a random resized crop (torchvision's area/aspect sampling) composed with a random
  symmetry of the square (flips, quarter turns, transposes: orientation means nothing in
  dermoscopy) is one affine map per image, applied by a single bilinear `grid_sample`;
- **colour**: brightness, contrast, saturation and hue are all affine in RGB, so their product is
  one 3×3 matrix plus an offset per image, applied by one batched matrix product. Hue turns
  colours about the grey axis of the RGB cube (grey and the mean of R, G, B are kept): the
  rotation closest to torchvision's HSV hue shift, which turns the same hexagon piecewise.

Parameters are drawn on the CPU from torch's global generator, which the training loop seeds
per (seed, epoch, rank): the same run draws the same augmentations on any device and on resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional

from skin.base.config import AugmentConfig

LUMA = (0.299, 0.587, 0.114)  # the ITU-R 601 weights torchvision's grayscale uses
_GREY_AXIS = torch.ones(3) / math.sqrt(3)
_CROSS = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3)
# Every symmetry of the square as a 2×2 signed permutation on (x, y) output coordinates.
_FLIPS = torch.tensor([[[sx, 0.0], [0.0, sy]] for sx in (1, -1) for sy in (1, -1)])
_TURNS = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, -1.0], [1.0, 0.0]],
                       [[-1.0, 0.0], [0.0, -1.0]], [[0.0, 1.0], [-1.0, 0.0]]])  # fmt: skip
_SQUARE = torch.cat([_FLIPS, _FLIPS[:, :, [1, 0]]])  # the 8 elements of the dihedral group D4


@dataclass
class Draw:
    """The random choices for one batch (all on the CPU): crop box, symmetry and colour."""

    width: torch.Tensor  # crop width as a fraction of the image side, (n,)
    height: torch.Tensor  # (n,)
    centre: torch.Tensor  # crop centre in [-1, 1] coordinates, (n, 2) as (x, y)
    symmetry: torch.Tensor  # (n, 2, 2)
    brightness: torch.Tensor  # factors around 1, (n,)
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor  # fraction of a full turn, (n,)

    @classmethod
    def identity(cls, n: int) -> Draw:
        one, zero = torch.ones(n), torch.zeros(n)
        eye = torch.eye(2).expand(n, 2, 2).clone()
        return cls(one, one.clone(), torch.zeros(n, 2), eye, one.clone(), one.clone(),
                   one.clone(), zero)  # fmt: skip


class BatchAugment:
    """Augment uint8 NCHW batches on their device → float32 NCHW in [0, 255] at `size`."""

    def __init__(self, aug: AugmentConfig, size: int, ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        self.aug, self.size, self.log_ratio = aug, size, (math.log(ratio[0]), math.log(ratio[1]))

    def draw(self, n: int, generator: torch.Generator | None = None) -> Draw:
        """Random parameters for n images, torchvision's RandomResizedCrop sampling, vectorised:
        ten tries per image of an (area, aspect) pair, the first that fits wins, else the whole
        image."""
        a = self.aug
        tries = 10
        area = torch.empty(n, tries).uniform_(a.scale_min, 1.0, generator=generator)
        log_r = torch.empty(n, tries).uniform_(*self.log_ratio, generator=generator)
        w, h = torch.sqrt(area * torch.exp(log_r)), torch.sqrt(area / torch.exp(log_r))
        fits = (w <= 1) & (h <= 1)
        first = fits.float().argmax(1, keepdim=True)
        ok = fits.any(1)
        w = torch.where(ok, w.gather(1, first).squeeze(1), torch.ones(n))
        h = torch.where(ok, h.gather(1, first).squeeze(1), torch.ones(n))
        # A centre anywhere the box stays inside the image ([-1, 1] spans the pixel edges).
        u = torch.rand(n, 2, generator=generator)
        centre = (u * 2 - 1) * (1 - torch.stack([w, h], 1))
        if a.flips and a.rotate90:
            group = _SQUARE
        elif a.flips:
            group = _FLIPS
        elif a.rotate90:
            group = _TURNS
        else:
            group = torch.eye(2)[None]
        symmetry = group[torch.randint(len(group), (n,), generator=generator)]
        j = a.color_jitter

        def factor() -> torch.Tensor:
            return torch.empty(n).uniform_(max(0.0, 1 - j), 1 + j, generator=generator)

        hue_max = min(j / 4, 0.5)  # the per-image path's ColorJitter(hue=j/4)
        hue = torch.empty(n).uniform_(-hue_max, hue_max, generator=generator)
        return Draw(w, h, centre, symmetry, factor(), factor(), factor(), hue)

    def __call__(self, x: torch.Tensor, draw: Draw | None = None) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"expected a uint8 batch of shape (n, 3, H, W), got {x.dtype} {tuple(x.shape)}"
            )
        draw = draw if draw is not None else self.draw(len(x))
        # Channels-last throughout: the loader's batches already are (NHWC memory), and both the
        # CPU's oneDNN kernels and the GPU's convolutions run the model faster on that layout
        # (measured here: a tf_mixnet_s step on NCHW input took 1.3x as long).
        y = warp(x.float().contiguous(memory_format=torch.channels_last), draw, self.size)
        y = y.contiguous(memory_format=torch.channels_last)
        if self.aug.color_jitter > 0:
            y = recolour(y, draw)
        return y.clamp_(0.0, 255.0)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor to the device without stalling the host: a copy from pageable memory
    waits for the GPU to finish everything queued before it (the last step's backward)."""
    t = t.to(torch.float32)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def warp(x: torch.Tensor, draw: Draw, size: int) -> torch.Tensor:
    """Crop box + symmetry as one affine sampling grid, bilinear, border pixels repeated."""
    n = len(x)
    scale = torch.stack([draw.width, draw.height], 1)[:, :, None]  # (n, 2, 1)
    theta = to_device(torch.cat([scale * draw.symmetry, draw.centre[:, :, None]], 2), x.device)
    grid = functional.affine_grid(theta, [n, 3, size, size], align_corners=False)
    return functional.grid_sample(
        x, grid, mode="bilinear", padding_mode="border", align_corners=False
    )


def colour_matrix(draw: Draw) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (M, k) with colour' = M @ colour + k · mean luma: brightness, then contrast
    (towards the image's mean grey), saturation (towards each pixel's grey), then hue."""
    n = len(draw.brightness)
    eye = torch.eye(3).expand(n, 3, 3)
    luma = torch.tensor(LUMA)
    b, c, s = (t[:, None, None] for t in (draw.brightness, draw.contrast, draw.saturation))
    sat = s * eye + (1 - s) * torch.ones(3, 1) * luma[None, :]  # s·I + (1−s)·1·lumaᵀ
    angle = (draw.hue * 2 * math.pi)[:, None, None]
    # Rodrigues' rotation about the grey axis k: cos·I + sin·[k]× + (1 − cos)·k kᵀ
    axis = torch.outer(_GREY_AXIS, _GREY_AXIS)
    hue = torch.cos(angle) * eye + torch.sin(angle) * _CROSS + (1 - torch.cos(angle)) * axis
    m = hue @ sat @ (c * b * eye)
    # The contrast offset (1 − c)·mean grey, carried through saturation and hue (grey is kept by
    # both, so it stays a grey of the same level): k multiplies the mean luma after brightness.
    k = ((1 - c) * b).view(n, 1) * torch.ones(n, 3)
    return m, k


def recolour(x: torch.Tensor, draw: Draw) -> torch.Tensor:
    """Each pixel's colour times its image's 3×3 matrix, plus the contrast offset; computed on
    the channels-last memory (n, H·W, 3) and returned channels-last, without a copy of x."""
    m, k = (to_device(t, x.device) for t in colour_matrix(draw))
    n, _, h, w = x.shape
    pixels = x.permute(0, 2, 3, 1).reshape(n, h * w, 3)  # a view when x is channels-last
    grey = (pixels @ to_device(torch.tensor(LUMA), x.device)).mean(1)  # mean luma per image
    out = torch.baddbmm((k * grey[:, None])[:, None, :], pixels, m.transpose(1, 2))
    return out.view(n, h, w, 3).permute(0, 3, 1, 2)
