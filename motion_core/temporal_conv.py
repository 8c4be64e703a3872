"""Temporal convolutions as 2-D convolutions.

ZeroScope / ModelScope's ``TemporalConvLayer`` convolves over frames only: ``nn.Conv3d`` with a ``(k, 1, 1)``
kernel on ``(B, C, F, H, W)``. PyTorch has no oneDNN path for that on the CPU and runs its naive im2col kernel
(``slow_conv3d``). The same convolution is a ``conv2d`` with a ``(k, 1)`` kernel on the free view
``(B, C, F, H·W)``, which oneDNN runs: forward and backward of the 32-channel 16 x 32 x 32 layer of the bench
model take 1.9 instead of 7.6 ms (2 threads). Same weights, same result to float rounding (tests/test_speed.py).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["is_frame_only_conv", "temporal_convs_as_2d"]


def is_frame_only_conv(module: nn.Module) -> bool:
    """A ``Conv3d`` that mixes frames only: kernel ``(k, 1, 1)``, no spatial stride, padding or dilation."""
    return (type(module) is nn.Conv3d and module.kernel_size[1:] == (1, 1) and module.stride[1:] == (1, 1)
            and module.dilation[1:] == (1, 1) and module.padding_mode == "zeros"
            and isinstance(module.padding, tuple) and module.padding[1:] == (0, 0))


def _as_2d(conv: nn.Conv3d) -> Callable[..., torch.Tensor]:
    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs or x.dim() != 5:
            return type(conv).forward(conv, x, *args, **kwargs)
        b, c, f, h, w = x.shape
        y = F.conv2d(x.reshape(b, c, f, h * w), conv.weight.squeeze(-1), conv.bias, stride=(conv.stride[0], 1),
                     padding=(conv.padding[0], 0), dilation=(conv.dilation[0], 1), groups=conv.groups)
        return y.view(b, y.shape[1], y.shape[2], h, w)
    return forward


@contextlib.contextmanager
def temporal_convs_as_2d(root: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Every frame-only ``Conv3d`` under ``root`` runs as a ``conv2d`` while inside; yields how many."""
    if not enabled:
        yield 0
        return
    from .patching import replaced_forwards

    with replaced_forwards((m for m in root.modules() if is_frame_only_conv(m)), _as_2d) as count:
        yield count
