"""A fused forward for peft's LoRA ``Linear`` layers while training.

peft computes ``result = base(x); result = result + lora_B(lora_A(dropout(x))) * scaling`` per active set:
after the two small matmuls come two full-size elementwise passes over the layer's output (the scaling
multiply and the add), and two more in backward -- about 350 multiplies per MotionDirector step on a
UNet3D, even though the scale is 1 (``alpha = r``). Here the second matmul, the scale and the add are one
``addmm(result, h, Bᵀ, alpha=scaling)``: the scale is applied once, inside the GEMM, and the output is
written once. The sets run in the same order, dropout is the same module drawing from the same RNG, and
the inputs are cast exactly as peft casts them, so outputs and gradients equal peft's to float rounding
(tests/test_speed.py). Anything unusual (DoRA and other variants, merged weights, mixed-batch
``adapter_names``, extra arguments) goes through peft's own forward.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["fused_lora", "fused_lora_forward"]


def fused_lora_forward(layer: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``layer.forward(x)`` of a peft ``lora.Linear`` with the scale and the add fused into one GEMM."""
    if args or kwargs or layer.disable_adapters or layer.merged or getattr(layer, "lora_variant", None):
        return type(layer).forward(layer, x, *args, **kwargs)
    result = layer.base_layer(x)
    result_dtype = result.dtype
    keys = layer.lora_A.keys()
    for name in layer.active_adapters:
        if name not in keys:
            continue
        lora_a = layer.lora_A[name]
        lora_b = layer.lora_B[name]
        x = layer._cast_input_dtype(x, lora_a.weight.dtype)
        h = lora_a(layer.lora_dropout[name](x))
        weight = lora_b.weight
        out_shape = (*result.shape[:-1], weight.shape[0])
        flat = result.reshape(-1, result.shape[-1])
        h = h.reshape(-1, h.shape[-1])
        if not torch.is_autocast_enabled(h.device.type):
            common = torch.promote_types(torch.promote_types(flat.dtype, h.dtype), weight.dtype)
            flat, h, weight = flat.to(common), h.to(common), weight.to(common)
        result = torch.addmm(flat, h, weight.t(), alpha=float(layer.scaling[name])).view(out_shape)
    return result.to(result_dtype)


@contextlib.contextmanager
def fused_lora(root: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Every peft LoRA ``Linear`` under ``root`` runs :func:`fused_lora_forward` while inside; yields how
    many layers. The layers' own ``forward`` comes back on exit."""
    if not enabled:
        yield 0
        return
    from peft.tuners.lora.layer import Linear

    from ..patching import replaced_forwards

    with replaced_forwards((m for m in root.modules() if type(m) is Linear), fused_lora_forward.__get__) as count:
        yield count
