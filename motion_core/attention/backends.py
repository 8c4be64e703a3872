"""Attention backends, through diffusers' attention dispatcher (``diffusers.models.attention_dispatch``).

``native`` -- PyTorch's ``scaled_dot_product_attention`` (the default; on CUDA it picks FlashAttention /
memory-efficient kernels itself); ``xformers`` -- xformers' memory-efficient attention (CUDA only);
``flash`` -- the flash-attn package (CUDA, fp16 / bf16); ``sage`` -- SageAttention (CUDA, fp16 / bf16;
quantized Q/K, forward only: sampling and MotionClone, not training); ``auto`` -- flash-attn where it can run,
else native.

:func:`apply_attention_backend` sets the choice on every attention layer of a model's denoiser(s):
diffusers' own processors that call the dispatcher (Wan) get it through ``set_attention_backend``, the UNet
families' ``AttnProcessor2_0`` layers get :class:`.processors.DispatchAttnProcessor` (the same computation through the
dispatcher), and MotionKit's capture / energy / injection processors read it from the layer
(:func:`layer_backend`) and compute their attention with :func:`attention`. ``native`` leaves every
processor as it was, bit for bit.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

__all__ = ["ATTENTION_BACKENDS", "apply_attention_backend", "attention",
           "available_backends", "layer_backend", "resolve_backend"]

ATTENTION_BACKENDS = ("auto", "native", "xformers", "flash", "sage")
_PACKAGE = {"xformers": "xformers", "flash": "flash_attn", "sage": "sageattention"}
_LABEL = {"xformers": "xformers", "flash": "flash-attn", "sage": "SageAttention"}
_ATTR = "_motionkit_attention_backend"


def _installed(name: str) -> bool:
    package = _PACKAGE.get(name)
    return package is None or importlib.util.find_spec(package) is not None


def available_backends(device: torch.device | str, dtype: torch.dtype | None = None) -> list[str]:
    """The concrete backends that can run on ``device`` (and ``dtype``) here."""
    device = torch.device(device)
    out = ["native"]
    for name in ("flash", "xformers", "sage"):
        if _installed(name) and device.type == "cuda" and (dtype is None or name == "xformers"
                                                           or dtype in (torch.float16, torch.bfloat16)):
            out.append(name)
    return out


def resolve_backend(name: str | None, device: torch.device | str, dtype: torch.dtype | None = None, *,
                    training: bool = False) -> str:
    """The concrete backend for a choice (``auto`` -> the best one available); a backend that is missing or
    cannot run on ``device`` / ``dtype`` (or, with ``training``, has no backward) is an :class:`InputError`."""
    choice = str(name or "native").strip().lower()
    if choice not in ATTENTION_BACKENDS:
        raise InputError(f"attention must be one of {', '.join(ATTENTION_BACKENDS)}, not {name!r}.")
    device = torch.device(device)
    if choice == "auto":
        usable = available_backends(device, dtype)
        return "flash" if "flash" in usable else "native"
    if choice == "native":
        return choice
    label = _LABEL[choice]
    if not _installed(choice):
        raise InputError(f"The {label} attention backend is not installed (pip install {_PACKAGE[choice].replace('_', '-')}); "
                         "choose native or auto.")
    if device.type != "cuda":
        raise InputError(f"The {label} attention backend runs only on CUDA GPUs, not on {device}; choose native or "
                         "auto.")
    if choice in ("flash", "sage") and dtype is not None and dtype not in (torch.float16, torch.bfloat16):
        raise InputError(f"The {label} attention backend needs an fp16 or bf16 model, not "
                         f"{str(dtype).replace('torch.', '')}; load the model in fp16/bf16 or choose native.")
    if choice == "sage" and training:
        raise InputError("SageAttention has no backward pass, so it cannot train; choose native, flash or auto for "
                         "training (SageAttention is for sampling and MotionClone).")
    return choice


def layer_backend(attn: nn.Module) -> str:
    """The backend set on an attention layer (``native`` when none was)."""
    return getattr(attn, _ATTR, "native")


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
              *, scale: float | None = None, backend: str = "native") -> torch.Tensor:
    """``scaled_dot_product_attention`` of ``[B, heads, L, d]`` tensors through ``backend``."""
    if backend == "native":
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=0.0,
                                              is_causal=False, scale=scale)
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    out = dispatch_attention_fn(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                attn_mask=attn_mask, scale=scale, backend=AttentionBackendName(backend))
    return out.transpose(1, 2)


def _attention_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if hasattr(m, "set_processor") and hasattr(m, "processor")]


def apply_attention_backend(model: Any, name: str | None, *, training: bool = False) -> str:
    """Use attention backend ``name`` (see the module docstring) in every denoiser of ``model``; returns the
    concrete backend. Stored as ``model.attention_backend``; ``native`` undoes an earlier choice."""
    from ..adapters.lora import denoiser_modules
    from .processors import DispatchAttnProcessor  # (processors imports this module)

    weight = next(model.denoiser.parameters())
    backend = resolve_backend(name, weight.device, weight.dtype, training=training)
    for _, denoiser in denoiser_modules(model):
        if hasattr(denoiser, "set_attention_backend"):  # diffusers processors that call the dispatcher (Wan)
            try:
                denoiser.set_attention_backend(backend)
            except (ValueError, AttributeError, RuntimeError) as exc:  # pragma: no cover - GPU-only checks
                raise InputError(f"The {backend} attention backend cannot run this model here: {exc}") from exc
        for layer in _attention_layers(denoiser):
            setattr(layer, _ATTR, backend)
            processor = layer.processor
            if isinstance(processor, DispatchAttnProcessor):
                if backend == "native":
                    layer.set_processor(processor.previous)
                else:
                    processor.backend = backend
            elif backend != "native" and type(processor).__name__ == "AttnProcessor2_0":
                layer.set_processor(DispatchAttnProcessor(backend, processor))
    model.attention_backend = backend
    return backend
