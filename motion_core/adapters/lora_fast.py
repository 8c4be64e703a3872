"""A fused forward for peft's LoRA ``Linear`` layers while training.

peft computes ``result = base(x); result = result + lora_B(lora_A(dropout(x))) * scaling`` per active set.
Profiled on a MotionDirector step (torch.profiler, UNet3D, 362 LoRA calls per step), that costs more than the
two small matmuls themselves:

* ``nn.Dropout`` draws its mask with ``bernoulli_`` -- one Mersenne-Twister draw per element, 20% of the
  whole step's CPU time (0.70 of 3.5 s) -- then scales the float mask and multiplies: three full-size passes,
  and backward keeps both the float mask and the dropped-out input (8 bytes per input element);
* the scaling multiply and the add are two more full-size passes over the layer's output, two more in
  backward.

:class:`LoRABranch` is the branch as one autograd function. The keep mask comes from 16-bit uniform integers
(four per 64-bit draw of the same torch generator, so gradient checkpointing's recomputation replays it) and
is kept as bytes (1 instead of 8 bytes per input element); backward keeps only the layer's input (a tensor the q / k / v sets of one attention share),
that mask and the rank-r hidden state, and rebuilds the dropped-out input where the LoRA-A gradient needs it.
The second matmul, the scale and the add are one ``addmm(result, h, Bᵀ, alpha=scaling)``.

The maths is peft's: dropout on the LoRA input with inverted scaling ``1 / (1 - p)``. One deliberate
difference (README): the drop probability is a multiple of 1/65536 (0.1 -> 0.100006; the scale uses that
exact probability, so the expectation of the dropped-out input is still the input), and the masks are other
draws than ``bernoulli_``'s, so a run with LoRA dropout does not repeat, mask for mask, one made before this
function. Without dropout (p = 0 or eval mode) outputs and gradients equal peft's to float rounding
(tests/test_speed.py). Anything unusual (DoRA and other variants, merged weights, mixed-batch
``adapter_names``, extra arguments) goes through peft's own forward.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["LoRABranch", "fused_lora", "fused_lora_forward", "keep_mask", "quantized_drop_probability"]

_LEVELS = 1 << 16  # the keep mask compares 16-bit uniform integers


def quantized_drop_probability(p: float) -> float:
    """The drop probability :func:`keep_mask` realises for ``p``: the nearest multiple of 1/65536."""
    return round(p * _LEVELS) / _LEVELS


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """A 0 / 1 byte mask (``uint8``), each element kept with probability ``1 - quantized_drop_probability(p)``, from the
    device's default torch generator (what ``nn.Dropout`` draws from, and what checkpointing replays).

    One 64-bit draw gives four 16-bit uniform integers: on the CPU that is ~7x cheaper than ``bernoulli_``'s
    one draw per element (0.5 vs 3.5 ms for 512 k elements, 2 threads)."""
    n = 1
    for size in shape:
        n *= int(size)
    words = torch.randint(-(1 << 63), (1 << 63) - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)
    uniform = words.view(torch.int16)[:n].view(shape)  # uniform over [-32768, 32767]
    return (uniform >= round(p * _LEVELS) - _LEVELS // 2).view(torch.uint8)


class LoRABranch(torch.autograd.Function):
    """``result + scale · dropout(x) Aᵀ Bᵀ`` for 2-D ``result`` (N, out) and ``x`` (N, in); ``keep`` is the
    dropout's keep mask (0 / 1 bytes) or None (no dropout), ``inv_keep`` = 1 / (1 - p). All tensors share
    one dtype (the caller casts them, autocast included).

    The inverted-dropout factor is a scalar of the whole branch, so it joins ``scale`` and the mask
    multiplies as bytes (a float-by-byte product is ~3x cheaper on the CPU than float-by-bool)."""

    @staticmethod
    def forward(ctx: Any, result: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
                scale: float, keep: torch.Tensor | None, inv_keep: float) -> torch.Tensor:
        scale = scale * (1.0 if keep is None else inv_keep)
        h = (x if keep is None else x.mul(keep)).mm(lora_a.t())  # without the scalar factor
        ctx.scale = scale
        # x, not the dropped-out copy: x is usually kept anyway (the q / k / v sets of one attention share it)
        ctx.save_for_backward(x if ctx.needs_input_grad[2] else None, keep, lora_a, lora_b, h)
        return torch.addmm(result, h, lora_b.t(), alpha=scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, keep, lora_a, lora_b, h = ctx.saved_tensors
        need_result, need_x, need_a, need_b = ctx.needs_input_grad[:4]
        grad_h = grad.mm(lora_b).mul_(ctx.scale) if (need_x or need_a) else None  # (N, r): small
        grad_b = grad.t().mm(h).mul_(ctx.scale) if need_b else None
        grad_a = grad_h.t().mm(x if keep is None else x.mul(keep)) if need_a else None
        grad_x = None
        if need_x:
            grad_x = grad_h.mm(lora_a)
            if keep is not None:
                grad_x.mul_(keep)
        return grad if need_result else None, grad_x, grad_a, grad_b, None, None, None


def fused_lora_forward(layer: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``layer.forward(x)`` of a peft ``lora.Linear`` with each active set computed by :class:`LoRABranch`."""
    if args or kwargs or layer.disable_adapters or layer.merged or getattr(layer, "lora_variant", None):
        return type(layer).forward(layer, x, *args, **kwargs)
    result = layer.base_layer(x)
    result_dtype = result.dtype
    keys = layer.lora_A.keys()
    for name in layer.active_adapters:
        if name not in keys:
            continue
        weight_a, weight_b = layer.lora_A[name].weight, layer.lora_B[name].weight
        x = layer._cast_input_dtype(x, weight_a.dtype)  # as peft casts the LoRA input
        drop = layer.lora_dropout[name]
        p = float(drop.p) if isinstance(drop, nn.Dropout) and drop.training else 0.0
        flat_x = x.reshape(-1, x.shape[-1])
        flat = result.reshape(-1, result.shape[-1])
        device = flat_x.device.type
        if torch.is_autocast_enabled(device):  # the matmuls in autocast's dtype, as peft's nn.Linear calls run
            dtype = torch.get_autocast_dtype(device)
        else:
            dtype = torch.promote_types(torch.promote_types(flat.dtype, flat_x.dtype),
                                        torch.promote_types(weight_a.dtype, weight_b.dtype))
        keep = keep_mask(flat_x.shape, p, flat_x.device) if p > 0 else None
        inv_keep = 1.0 / (1.0 - quantized_drop_probability(p))
        with torch.autocast(device, enabled=False):
            out = LoRABranch.apply(flat.to(dtype), flat_x.to(dtype), weight_a.to(dtype), weight_b.to(dtype),
                                   float(layer.scaling[name]), keep, inv_keep)
        result = out.view(*result.shape[:-1], weight_b.shape[0])
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
