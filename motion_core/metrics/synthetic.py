"""Synthetic clips of known motion, for validating the metrics (tests, bench) without any real video."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..video import moving_square_frames

__all__ = ["moving_square", "textured_image", "textured_pan", "textured_zoom", "static_clip"]


def moving_square(frames: int = 16, size: int = 64, velocity: tuple[float, float] = (1.5, 0.0),
                  square: int | None = None) -> torch.Tensor:
    """The moving square, started so that it stays inside the frame for ``frames`` frames."""
    square = square or max(6, size // 4)
    travel_x, travel_y = velocity[0] * (frames - 1), velocity[1] * (frames - 1)
    x0 = (size - square - travel_x) / 2
    y0 = (size - square - travel_y) / 2
    return moving_square_frames(frames, size, size, square=square, velocity=velocity, start=(x0, y0))


def textured_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth random color texture ``[H, W, 3]`` in 0..1 (blobs at several scales: good features everywhere)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(1, 3, height, width)
    for cells in (4, 9, 21):
        noise = torch.rand(1, 3, cells, cells, generator=g)
        out += F.interpolate(noise, size=(height, width), mode="bicubic", align_corners=False)
    out = (out - out.amin()) / (out.amax() - out.amin() + 1e-8)
    return out[0].permute(1, 2, 0).contiguous()


def _sample(image: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
    src = image.permute(2, 0, 1)[None].expand(grids.shape[0], -1, -1, -1)
    out = F.grid_sample(src, grids, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.permute(0, 2, 3, 1).clamp(0, 1).contiguous()


def _base_grid(size: int) -> torch.Tensor:
    lin = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack([x, y], dim=-1)  # [H, W, 2] in -1..1


def textured_pan(frames: int = 16, size: int = 64, velocity: tuple[float, float] = (1.5, 0.0),
                 seed: int = 0) -> torch.Tensor:
    """A camera pan over a textured image: the content moves by ``velocity`` pixels per frame."""
    canvas = 2 * size
    image = textured_image(canvas, canvas, seed)
    grid = _base_grid(size) * (size / canvas)  # the central window of the canvas
    t = torch.arange(frames, dtype=torch.float32)
    shift = torch.stack([-t * velocity[0], -t * velocity[1]], dim=-1) * (2 / canvas)  # content moves +v
    return _sample(image, grid[None] + shift[:, None, None, :])


def textured_zoom(frames: int = 16, size: int = 64, rate: float = 0.02, seed: int = 0) -> torch.Tensor:
    """A zoom into a textured image: magnification ``(1 + rate) ** t`` (``rate < 0`` zooms out)."""
    canvas = 2 * size
    image = textured_image(canvas, canvas, seed)
    grid = _base_grid(size) * (size / canvas)
    scale = (1 + rate) ** torch.arange(frames, dtype=torch.float32)
    return _sample(image, grid[None] / scale[:, None, None, None])


def static_clip(frames: int = 16, size: int = 64, seed: int = 0) -> torch.Tensor:
    """The textured image, still."""
    return textured_pan(frames, size, (0.0, 0.0), seed)
