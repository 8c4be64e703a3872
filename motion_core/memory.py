"""How much device memory a training run needs, and an early, clear refusal when it cannot fit.

:func:`estimate_training_memory` adds up, for any family:

* **weights** -- every component that stays on the device while training (denoiser(s), VAE, image encoder;
  the text encoder only when it is not released after its prompts were encoded), at their actual dtypes;
* **trainable parameters, gradients and optimizer states** -- from the number of trainable elements
  (LoRA / embeddings), kept in float32 as mixed-precision training does; AdamW keeps two states per element
  (``adamw8bit`` two bytes, SGD none);
* **activations** -- what the forward keeps for backward: the family's own estimate when it has one
  (``VideoModel.activation_bytes``, e.g. Wan's per-block formula with and without gradient checkpointing),
  otherwise *measured*: one forward on a small clip with ``torch.autograd.graph.saved_tensors_hooks``
  counting the bytes of distinct saved tensors (parameters excluded), scaled linearly to the real latent
  size (exact for memory-efficient attention, an underestimate where an attention map is materialised);
* **workspace** -- allocator slack and kernel workspaces: 8 % of the rest + 512 MiB.

:func:`check_training_memory` compares that with what the device has free -- ``torch.cuda.mem_get_info``
plus the PyTorch cache, or ``MemAvailable`` of ``/proc/meminfo`` (psutil when installed) for the CPU --
counting weights already on the device as available to themselves, and raises
:class:`InsufficientMemoryError` (an :class:`~motion_core.errors.InputError`) with the numbers and what to
change. The trainer calls both before its first step.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from .autograd import autograd
from .errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "InsufficientMemoryError",
    "MemoryEstimate",
    "available_memory",
    "check_training_memory",
    "estimate_training_memory",
    "format_bytes",
    "module_bytes",
]

GiB = 1 << 30
_OPTIMIZER_STATE_BYTES = {"adamw": 8, "adam": 8, "adamw8bit": 2, "lion": 4, "prodigy": 16, "sgd": 0}


class InsufficientMemoryError(InputError):
    """A training run would not fit the device's memory (raised before it starts)."""


def format_bytes(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB / 10 else f"{n / (1 << 20):.1f} MiB"


def module_bytes(module: nn.Module | None, device: torch.device | None = None) -> int:
    """Bytes of a module's parameters and buffers (only those on ``device`` when given; meta tensors count
    at their dtype's size)."""
    if module is None:
        return 0
    total = 0
    seen: set[int] = set()
    for tensor in list(module.parameters()) + list(module.buffers()):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if device is not None and not _same_device(tensor.device, device):
            continue
        total += tensor.numel() * tensor.element_size()
    return total


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    return (a.index or 0) == (b.index if b.index is not None else torch.cuda.current_device())


@dataclass
class MemoryEstimate:
    """Bytes a training run needs on ``device`` (see the module docstring)."""

    device: str
    weights: int
    trainable: int
    gradients: int
    optimizer: int
    activations: int
    workspace: int
    #: bytes of the weights already on the device (they do not need to be free)
    resident: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.weights + self.trainable + self.gradients + self.optimizer + self.activations + self.workspace

    def describe(self) -> str:
        d = self.details
        parts = [
            f"weights {format_bytes(self.weights)}",
            f"{d.get('trainable_params', 0) / 1e6:.2f} M trainable parameters {format_bytes(self.trainable)}",
            f"gradients {format_bytes(self.gradients)}",
            f"{d.get('optimizer', 'optimizer')} states {format_bytes(self.optimizer)}",
            f"activations {format_bytes(self.activations)} ({d.get('activations_source', '?')}, gradient "
            f"checkpointing {'on' if d.get('gradient_checkpointing') else 'off'})",
            f"workspace {format_bytes(self.workspace)}",
        ]
        return f"Training memory estimate on {self.device}: " + ", ".join(parts) + f" -> total {format_bytes(self.total)}."


def _count(trainable: int | Iterable[torch.Tensor]) -> int:
    if isinstance(trainable, int):
        return trainable
    seen: set[int] = set()
    n = 0
    for p in trainable:
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def _components(model: nn.Module) -> dict[str, nn.Module]:
    return {name: child for name, child in model.named_children() if child is not None}


def _measured_activation_bytes(model: Any, batch: int, num_frames: int, height: int, width: int,
                               gradient_checkpointing: bool,
                               prompt_embeds: torch.Tensor | None = None) -> tuple[int, dict[str, Any]]:
    """Saved-tensor bytes of one forward on a small probe clip, scaled to the real latent size."""
    probe_frames = model.frame_limits.minimum
    step = model.frame_limits.step
    while probe_frames < min(num_frames, 1 + 2 * step):  # at least two latent frames where possible
        probe_frames += step
    side = model.size_multiple * 2
    probe_shape = model.latent_shape(1, probe_frames, side, side)
    full_shape = model.latent_shape(batch, num_frames, height, width)
    denoiser = model.denoiser
    param_ptrs = {p.data_ptr() for p in model.parameters()}
    weight = next(denoiser.parameters())
    latents = torch.randn(probe_shape, device=weight.device, dtype=weight.dtype, requires_grad=True)
    embeds = prompt_embeds[:1] if prompt_embeds is not None else (
        model.encode_prompt([""]) if getattr(model, "text_encoder", None) is not None else None)
    if embeds is None:
        raise InputError("cannot measure activations without the text encoder; pass activation_bytes=...")
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        try:
            ptr = tensor.untyped_storage().data_ptr()
            if ptr not in param_ptrs:
                saved[ptr] = max(saved.get(ptr, 0), tensor.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):  # pragma: no cover - tensors without storage
            pass
        return tensor

    from .training import activation_checkpointing

    with autograd("the activation-memory probe"), activation_checkpointing(denoiser, gradient_checkpointing), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model.predict(latents, torch.tensor([500]), embeds)
    del out
    measured = sum(saved.values())
    scale = torch.Size(full_shape).numel() / torch.Size(probe_shape).numel()
    return int(measured * scale), {"probe_shape": list(probe_shape), "probe_bytes": measured}


def estimate_training_memory(
    model: Any,
    *,
    trainable_params: int | Iterable[torch.Tensor],
    num_frames: int,
    height: int,
    width: int,
    batch_size: int = 1,
    gradient_checkpointing: bool = True,
    optimizer: str = "adamw",
    trainable_dtype: torch.dtype = torch.float32,
    lora_rank: int = 0,
    text_encoder_resident: bool | None = None,
    activation_bytes: int | None = None,
    device: torch.device | str | None = None,
    log: bool = True,
    prompt_embeds: torch.Tensor | None = None,
    released: Iterable[str] = (),
) -> MemoryEstimate:
    """Estimate the device memory of a training run on ``model`` (any family) -- see the module docstring.

    ``trainable_params``: a count or the parameters themselves. ``text_encoder_resident``: whether the
    text encoder stays on the device while training (default: not for families that can release it after
    caching the prompt embeddings, e.g. Wan; yes otherwise). ``activation_bytes`` overrides the activation
    estimate. With ``log`` the summary is logged at INFO level (and returned in ``describe()``).
    ``prompt_embeds``: already encoded embeddings for the measured probe (else it encodes ``""``).
    ``released``: components that leave the device while training (the trainer's idle encoders).
    """
    if optimizer not in _OPTIMIZER_STATE_BYTES:
        raise InputError(f"unknown optimizer {optimizer!r} for the memory estimate; use one of "
                         f"{', '.join(_OPTIMIZER_STATE_BYTES)}.")
    target = torch.device(device) if device is not None else torch.device(model.device)
    if text_encoder_resident is None:
        text_encoder_resident = not hasattr(model, "release_text_encoder")
    weights = 0
    per_component: dict[str, int] = {}
    released = set(released)
    if not text_encoder_resident:
        released.add("text_encoder")
    for name, child in _components(model).items():
        if name in released:
            continue
        size = module_bytes(child)
        if name.startswith("denoiser") and getattr(model, "offload_idle_experts", False) and name != "denoiser":
            continue  # an idle expert waits on the CPU
        per_component[name] = size
        weights += size
    resident = sum(module_bytes(child, target) for name, child in _components(model).items()
                   if name not in released)
    n_trainable = _count(trainable_params)
    elem = torch.finfo(trainable_dtype).bits // 8
    trainable = n_trainable * elem
    gradients = n_trainable * elem
    states = n_trainable * _OPTIMIZER_STATE_BYTES[optimizer]
    details: dict[str, Any] = {"trainable_params": n_trainable, "optimizer": optimizer,
                               "gradient_checkpointing": gradient_checkpointing, "components": per_component,
                               "shape": {"batch": batch_size, "frames": num_frames, "height": height,
                                         "width": width}}
    if activation_bytes is not None:
        activations, details["activations_source"] = int(activation_bytes), "given"
    elif hasattr(model, "activation_bytes"):
        activations = int(model.activation_bytes(batch_size, num_frames, height, width,
                                                 gradient_checkpointing=gradient_checkpointing,
                                                 lora_rank=lora_rank))
        details["activations_source"] = f"{model.family} formula"
    else:
        activations, probe = _measured_activation_bytes(model, batch_size, num_frames, height, width,
                                                        gradient_checkpointing, prompt_embeds)
        details["activations_source"] = "measured on a small clip, scaled"
        details.update(probe)
    subtotal = weights + trainable + gradients + states + activations
    workspace = int(0.08 * subtotal) + 512 * (1 << 20)
    estimate = MemoryEstimate(device=str(target), weights=weights, trainable=trainable, gradients=gradients,
                              optimizer=states, activations=activations, workspace=workspace, resident=resident,
                              details=details)
    if log:
        logger.info("%s", estimate.describe())
    return estimate


def _meminfo_available() -> int | None:
    try:
        import psutil  # type: ignore[import-not-found]

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or unusable: read the kernel's estimate
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_memory(device: torch.device | str) -> int | None:
    """Bytes this process can still allocate on ``device`` (None when unknown, e.g. MPS)."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        free, _ = torch.cuda.mem_get_info(index)
        cached = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
        return int(free + max(0, cached))
    if device.type == "cpu":
        return _meminfo_available()
    return None


def check_training_memory(estimate: MemoryEstimate, *, available: int | None = None,
                          headroom: float = 0.95) -> None:
    """Raise :class:`InsufficientMemoryError` when ``estimate`` does not fit what the device has free
    (``available`` overrides the measurement; weights already on the device count as theirs).
    ``MOTIONKIT_SKIP_MEMORY_CHECK=1`` turns the refusal into a warning (for estimates that are known to be
    pessimistic on a setup)."""
    free = available if available is not None else available_memory(estimate.device)
    if free is None:
        logger.info("cannot tell the free memory of %s; skipping the memory check", estimate.device)
        return
    needed = estimate.total - estimate.resident
    if needed <= headroom * free:
        return
    d = estimate.details
    hints = []
    if not d.get("gradient_checkpointing"):
        hints.append("turn on gradient checkpointing")
    if estimate.activations > 0.3 * estimate.total:
        shape = d.get("shape", {})
        hints.append(f"train on fewer frames or a smaller size (now {shape.get('frames')} frames at "
                     f"{shape.get('width')}x{shape.get('height')}; activations grow with both)")
    if estimate.weights > 0.5 * estimate.total:
        hints.append("load the model in bf16, release the text encoder after caching the prompts, or offload "
                     "idle modules to the CPU")
    if d.get("trainable_params", 0) and estimate.trainable + estimate.gradients + estimate.optimizer > 0.2 * estimate.total:
        hints.append("use a lower LoRA rank or an 8-bit optimizer")
    message = (f"{estimate.describe()} Only {format_bytes(free)} are free on {estimate.device} "
               f"(the run needs {format_bytes(needed)} more than what is already loaded there).")
    if hints:
        message += " To fit: " + "; ".join(hints) + "."
    if os.environ.get("MOTIONKIT_SKIP_MEMORY_CHECK", "").strip() in ("1", "true", "yes"):
        logger.warning("%s (MOTIONKIT_SKIP_MEMORY_CHECK is set: going on anyway)", message)
        return
    raise InsufficientMemoryError(message)


# ============================================================================================ checkpointing plan
CHECKPOINTING_MODES = ("auto", "on", "off")


def checkpointing_mode(value: Any) -> str:
    """``"auto"`` / ``"on"`` / ``"off"`` from a setting (``True`` = on, ``False`` = off, for older callers)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value).strip().lower()
    text = {"true": "on", "false": "off", "all": "on", "none": "off", "1": "on", "0": "off"}.get(text, text)
    if text not in CHECKPOINTING_MODES:
        raise InputError(f"gradient_checkpointing must be auto, on or off, not {value!r}.")
    return text


@dataclass
class UnitActivations:
    """One checkpointing unit: the bytes its forward keeps for backward (``saved``) and the bytes its inputs
    take (what a checkpoint of it keeps instead), both at the run's latent size."""

    name: str
    saved: int
    inputs: int


@dataclass
class CheckpointPlan:
    """Which units of the denoiser recompute their forward in backward (``units``: names; every unit when
    ``mode == "on"``, none when ``"off"``) and the activation bytes that leaves (``activations``)."""

    requested: str
    mode: str  # "on" | "off" | "partial"
    units: list[str]
    total_units: int
    activations: int
    activations_off: int
    activations_on: int
    budget: int | None = None
    reason: str = ""

    def describe(self) -> str:
        what = {"on": f"every unit ({self.total_units})", "off": "none",
                "partial": f"{len(self.units)} of {self.total_units} units (largest activations first)"}[self.mode]
        budget = f", budget for activations {format_bytes(self.budget)}" if self.budget is not None else ""
        return (f"gradient checkpointing {self.requested} -> {what}: activations {format_bytes(self.activations)} "
                f"(none checkpointed {format_bytes(self.activations_off)}, all {format_bytes(self.activations_on)}"
                f"{budget}){'; ' + self.reason if self.reason else ''}")


def unit_activations(model: Any, num_frames: int, height: int, width: int,
                     prompt_embeds: torch.Tensor | None = None, batch: int = 1) -> tuple[list[UnitActivations], int]:
    """Per checkpointing unit (:func:`motion_core.training.checkpoint_units`) of the denoiser(s): saved and
    input bytes of one forward, measured on the small probe clip of :func:`_measured_activation_bytes` and
    scaled linearly to the run's latent size; plus the bytes saved outside every unit. Families with their own
    activation formula (``VideoModel.activation_bytes``: Wan) split it evenly over their blocks."""
    from .adapters.lora import denoiser_modules
    from .training import checkpoint_units

    prefixed = []
    for prefix, module in denoiser_modules(model):
        for name, unit in checkpoint_units(module):
            prefixed.append((f"{prefix}.{name}" if prefix else name, unit))
    if hasattr(model, "activation_bytes"):
        full = int(model.activation_bytes(batch, num_frames, height, width, gradient_checkpointing=False))
        ckpt = int(model.activation_bytes(batch, num_frames, height, width, gradient_checkpointing=True))
        experts = max(1, len(denoiser_modules(model)))
        per_expert = [n for n, _ in prefixed]
        n = max(1, len(per_expert) // experts)  # one expert runs per step
        saving = max(0, full - ckpt) // n
        inputs = max(0, ckpt) // (n + 1)
        units = [UnitActivations(name, saving + inputs, inputs) for name in per_expert]
        return units, max(0, full - n * (saving + inputs))
    probe_frames = model.frame_limits.minimum
    step = model.frame_limits.step
    while probe_frames < min(num_frames, 1 + 2 * step):
        probe_frames += step
    full_shape = model.latent_shape(batch, num_frames, height, width)
    param_ptrs = {p.data_ptr() for p in model.parameters()}
    weight = next(model.denoiser.parameters())
    embeds = prompt_embeds[:1] if prompt_embeds is not None else model.encode_prompt([""])
    names = {id(unit): name for name, unit in prefixed}

    def probe(side: int) -> tuple[tuple[int, ...], dict[str, int], dict[str, int]]:
        shape = model.latent_shape(1, probe_frames, side, side)
        latents = torch.randn(shape, device=weight.device, dtype=weight.dtype, requires_grad=True)
        stack: list[str] = []
        saved: dict[str, dict[int, int]] = {}
        inputs: dict[str, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            try:
                ptr = tensor.untyped_storage().data_ptr()
                if ptr not in param_ptrs:
                    bucket = saved.setdefault(stack[-1] if stack else "", {})
                    bucket[ptr] = max(bucket.get(ptr, 0), tensor.untyped_storage().nbytes())
            except (RuntimeError, NotImplementedError):  # pragma: no cover
                pass
            return tensor

        def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
            name = names[id(module)]
            stack.append(name)
            size = sum(t.numel() * t.element_size() for t in list(args) + list(kwargs.values()) if torch.is_tensor(t))
            inputs[name] = max(inputs.get(name, 0), size)

        def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            stack.pop()

        handles = []
        try:
            for _, unit in prefixed:
                handles.append(unit.register_forward_pre_hook(pre, with_kwargs=True))
                handles.append(unit.register_forward_hook(post, with_kwargs=True))
            with autograd("the activation-memory probe"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = model.predict(latents, torch.tensor([500]), embeds)
            del out
        finally:
            for h in handles:
                h.remove()
        return shape, {k: sum(v.values()) for k, v in saved.items()}, inputs

    # two probes of 4x the tokens apart: bytes that grow with the latent area (activations) are told apart
    # from bytes that do not (text keys / values of cross-attention), then both are scaled to the run's size
    side = model.size_multiple * 2
    shape_a, saved_a, inputs_a = probe(side)
    shape_b, saved_b, inputs_b = probe(2 * side)
    area_a, area_b = shape_a[-1] * shape_a[-2], shape_b[-1] * shape_b[-2]
    area = full_shape[-1] * full_shape[-2]
    time_scale = (full_shape[0] * full_shape[2]) / (shape_a[0] * shape_a[2])

    def extrapolate(a: int, b: int) -> int:
        per_area = max(0.0, (b - a) / (area_b - area_a))
        fixed = max(0.0, a - per_area * area_a)
        return int((fixed + per_area * area) * time_scale)

    units = [UnitActivations(name, extrapolate(saved_a.get(name, 0), saved_b.get(name, 0)),
                             extrapolate(inputs_a.get(name, 0), inputs_b.get(name, 0))) for name, _ in prefixed]
    outside = extrapolate(saved_a.get("", 0), saved_b.get("", 0))
    return units, outside


def plan_checkpointing(requested: Any, units: list[UnitActivations], outside: int, *,
                       budget: int | None) -> CheckpointPlan:
    """Choose the units to checkpoint. ``on``: all; ``off``: none; ``auto``: none when every activation fits
    ``budget`` (bytes left for activations on the device), else the units with the largest activations
    (most bytes freed by recomputing them) first, until the rest fits -- all of them if it never does."""
    requested = checkpointing_mode(requested)
    total = len(units)

    def cost(chosen: set[str]) -> int:
        # the end of the forward keeps every unit's saved tensors (a checkpointed one: its inputs); backward
        # then runs the units in reverse, so a checkpointed unit is recomputed while the units before it
        # still hold theirs and the ones after it are already freed
        kept = [u.inputs if u.name in chosen else u.saved for u in units]
        peak, before = sum(kept), 0
        for u, k in zip(units, kept):
            if u.name in chosen:
                peak = max(peak, before + u.saved)
            before += k
        return outside + peak

    everything = {u.name for u in units}
    off, on = cost(set()), cost(everything)
    if requested == "off" or not units:
        return CheckpointPlan(requested, "off", [], total, off, off, on, budget)
    if requested == "on":
        return CheckpointPlan(requested, "on", [u.name for u in units], total, on, off, on, budget)
    if budget is None:
        return CheckpointPlan(requested, "on", [u.name for u in units], total, on, off, on, budget,
                              "the device's free memory is unknown")
    if off <= budget:
        return CheckpointPlan(requested, "off", [], total, off, off, on, budget, "everything fits")
    chosen: set[str] = set()
    for u in sorted(units, key=lambda u: u.saved - u.inputs, reverse=True):
        if u.saved <= u.inputs:
            break
        chosen.add(u.name)
        if cost(chosen) <= budget:
            break
    if chosen == everything or cost(chosen) > budget:
        return CheckpointPlan(requested, "on", [u.name for u in units], total, on, off, on, budget,
                              "" if on <= budget else "even checkpointing every unit may not fit")
    order = [u.name for u in units if u.name in chosen]
    return CheckpointPlan(requested, "partial", order, total, cost(chosen), off, on, budget)
