"""Weight-delta motion adapters: what a partial fine-tune (Customizing Motion) keeps.

A partial fine-tune changes some of the denoiser's own tensors (Customizing Motion: every temporal
attention transformer, every temporal convolution and the cross-attention K/V projections). Instead of a
copy of the whole pipeline (the reference saves a 5.6 GB fp32 folder per checkpoint) we keep only

    Δ_k = W_k(trained) − W_k(base)

for the trained tensors ``k``. Applying the adapter with strength ``s`` sets ``W_k ← W_k(base) + s·Δ_k``:
``s = 1`` is the fine-tuned model, ``s = 0`` the base model, values in between interpolate and values
above 1 extrapolate (as a LoRA strength does). The base weights are copied (to the CPU) before patching and
copied back when the sampling run ends, so the base model is restored **bit for bit**, whatever ``s``.

File (MotionKit format, ``kind = weight_delta``): tensors ``delta.<parameter name>`` (diffusers names of
the denoiser's parameters), float16 by default -- a delta is small, and float16 keeps 11 bits of it, i.e.
an error around 1e-3·|Δ|, far below the weights' own fp16 rounding -- or float32 / bfloat16; metadata as
every MotionKit adapter (``format``, ``format_version``, ``kind``, ``method``, ``family``, ``base_model``,
``steps``, ``training_config``, ``default_strength``, ``strength_schedule``, ``extra``) plus ``groups``
(JSON: which parameters belong to which trained part) and ``delta_dtype``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import torch
from torch import nn

from ..errors import AdapterMismatchError, InputError
from ..sampling import SamplingHook
from .files import FORMAT, FORMAT_VERSION, register_adapter_kind, write_safetensors
from .lora import StrengthSchedule

if TYPE_CHECKING:  # pragma: no cover
    from ..backbones.base import VideoModel

__all__ = ["DELTA_DTYPES", "KIND", "WeightDelta", "denoiser_parameters"]

KIND = "weight_delta"
DELTA_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_PREFIX = "delta."


def denoiser_parameters(denoiser: nn.Module) -> dict[str, nn.Parameter]:
    """The denoiser's own parameters by their plain diffusers names, also while LoRA sets of other adapters
    are installed (peft moves a wrapped layer's weight to ``….base_layer.weight``; LoRA tensors are not
    the denoiser's own and are left out)."""
    out: dict[str, nn.Parameter] = {}
    for name, p in denoiser.named_parameters():
        if ".lora_" in name or ".lora_magnitude_vector." in name:
            continue
        out[name.replace(".base_layer.", ".")] = p
    return out


class _Activation(threading.local):
    """Per thread: the live patches of this adapter (parameter, base copy, delta, applied strength)."""

    def __init__(self) -> None:
        self.stack: list[dict[str, Any]] = []


@dataclass(frozen=True, eq=False)
class WeightDelta:
    """The MOTION_ADAPTER of a partial fine-tune: ``deltas[name] = W_trained − W_base`` (CPU tensors).

    Implements the ActiveAdapter protocol of :mod:`motion_core.motion_model` (``activate`` patches the
    weights for one sampling run and restores them exactly; ``sampling_hook`` re-patches when a strength
    schedule over timesteps changes the strength). ``groups`` maps a part's name (``temporal``,
    ``temp_convs``, ``cross_kv``) to its parameter names.
    """

    deltas: Mapping[str, torch.Tensor]
    method: str
    family: str
    base_model: str
    steps: int = 0
    training_config: Mapping[str, Any] = field(default_factory=dict)
    strength: float = 1.0
    strength_schedule: StrengthSchedule | None = None
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    check_base_model: bool = True
    source: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    _activation: _Activation = field(default_factory=_Activation, init=False, repr=False, compare=False)

    kind = KIND
    #: for code that treats every adapter alike (MotionLoRA has these): a delta has no appearance part
    #: and no stored noise prior
    appearance_strength = 0.0
    noise_prior: tuple[torch.Tensor, ...] = ()

    def __post_init__(self) -> None:
        if not self.deltas:
            raise InputError("a weight-delta adapter needs at least one tensor.")
        if not math.isfinite(float(self.strength)):
            raise InputError(f"strength must be a finite number, got {self.strength}.")

    # ----------------------------------------------------------------------------------- facts
    @property
    def num_parameters(self) -> int:
        return sum(d.numel() for d in self.deltas.values())

    @property
    def rank(self) -> int:  # a full-rank update; kept for code that prints adapters generically
        return 0

    def describe(self) -> str:
        lines = [f"{self.method} weight delta for {self.family} ({self.base_model or 'any base'}), {self.steps} steps",
                 f"{len(self.deltas)} tensors, {self.num_parameters:,} parameters"]
        for name, params in self.groups.items():
            count = sum(self.deltas[p].numel() for p in params if p in self.deltas)
            lines.append(f"{name}: {len(params)} tensors, {count:,} parameters")
        identifier = self.extra.get("identifier")
        if identifier:
            lines.append(f"identifier word: '{identifier}' (use it in the prompt)")
        lines.append(f"strength {self.strength:g}")
        return "\n".join(lines)

    # ----------------------------------------------------------------------------------- copies
    def with_strength(self, strength: float | None = None, *, appearance_strength: float | None = None,
                      appearance_set: str | None = None, schedule: StrengthSchedule | None | str = "keep",
                      check_base_model: bool | None = None) -> "WeightDelta":
        """A copy with another strength / schedule / base-model check (sharing the tensors). The appearance
        arguments exist for signature compatibility with LoRA adapters; a delta has no appearance part."""
        changes: dict[str, Any] = {}
        if strength is not None:
            if not math.isfinite(float(strength)):
                raise InputError(f"strength must be a finite number, got {strength}.")
            changes["strength"] = float(strength)
        if schedule != "keep":
            changes["strength_schedule"] = schedule
        if check_base_model is not None:
            changes["check_base_model"] = bool(check_base_model)
        return replace(self, **changes)

    # ----------------------------------------------------------------------------------- checks
    def check_compatible(self, model: "VideoModel") -> None:
        """AdapterMismatchError for another family (always) or another base model (unless turned off)."""
        if self.family and model.family != self.family:
            raise AdapterMismatchError(
                f"This motion adapter was trained for the {self.family} family ({self.base_model}); the model is "
                f"a {model.family} model ({model.base_model}). Load a {self.family} model, or an adapter trained "
                "on this one.")
        if self.check_base_model and self.base_model and model.base_model != self.base_model:
            raise AdapterMismatchError(
                f"This weight-delta adapter was trained on '{self.base_model}', but the model is "
                f"'{model.base_model}'. A weight delta only means something on the weights it was taken from; "
                "if the two models share those weights and you want to try anyway, turn off the base-model check.")

    def _targets(self, model: "VideoModel") -> dict[str, nn.Parameter]:
        params = denoiser_parameters(model.denoiser)
        missing = [n for n in self.deltas if n not in params]
        if missing:
            raise AdapterMismatchError(
                f"{len(missing)} tensor(s) of this adapter do not exist in the model, e.g. {missing[0]!r}: it was "
                "made for a model with another layer layout.")
        for name, delta in self.deltas.items():
            if tuple(delta.shape) != tuple(params[name].shape):
                raise AdapterMismatchError(
                    f"Adapter tensor {name!r} has shape {tuple(delta.shape)} but the model's is "
                    f"{tuple(params[name].shape)}: the adapter was trained on a model of another size.")
        return {n: params[n] for n in self.deltas}

    # ----------------------------------------------------------------------------------- ActiveAdapter
    @contextlib.contextmanager
    def activate(self, model: "VideoModel") -> Iterator["VideoModel"]:
        """Patch ``W ← W + s·Δ`` for one run; the exact base tensors come back on exit (even on errors)."""
        self.check_compatible(model)
        targets = self._targets(model)  # every check before the first weight changes
        entry: dict[str, Any] = {"patches": [], "strength": None}
        try:
            with torch.no_grad():
                for name, p in targets.items():
                    # the base copy lives on the CPU: GPU memory stays as without the adapter
                    entry["patches"].append((p, p.detach().to("cpu", copy=True), self.deltas[name]))
                _patch(entry, self.strength)
            self._activation.stack.append(entry)
            try:
                yield model
            finally:
                self._activation.stack.pop()
        finally:
            with torch.no_grad():
                for p, base, _ in entry["patches"]:
                    p.copy_(base.to(p.device))

    def sampling_hook(self) -> SamplingHook | None:
        if self.strength_schedule is None:
            return None
        return _DeltaScheduleHook(self)

    # ----------------------------------------------------------------------------------- files
    def to_file(self, dtype: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Tensors and metadata of the MotionKit file (``dtype``: the stored delta precision, default the
        ``delta_dtype`` of the training config or float16)."""
        import motion_core

        dtype = dtype or str(self.extra.get("delta_dtype", "float16"))
        if dtype not in DELTA_DTYPES:
            raise InputError(f"delta dtype must be one of {', '.join(DELTA_DTYPES)}, not {dtype!r}.")
        tensors = {_PREFIX + k: v.detach().to("cpu", DELTA_DTYPES[dtype]).contiguous() for k, v in self.deltas.items()}
        metadata = {
            "format": FORMAT, "format_version": str(FORMAT_VERSION), "kind": KIND,
            "method": self.method, "family": self.family, "base_model": self.base_model,
            "rank": "0", "steps": str(self.steps),
            "training_config": json.dumps(dict(self.training_config), sort_keys=True, default=str),
            "groups": json.dumps({k: list(v) for k, v in self.groups.items()}),
            "delta_dtype": dtype,
            "default_strength": repr(float(self.strength)),
            "strength_schedule": json.dumps(self.strength_schedule.to_json()) if self.strength_schedule else "",
            "extra": json.dumps(dict(self.extra), default=str),
            "motionkit_version": getattr(motion_core, "__version__", ""),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        return tensors, metadata

    def save(self, path: str | Path, dtype: str | None = None) -> Path:
        tensors, metadata = self.to_file(dtype)
        return write_safetensors(path, tensors, metadata)

    def metadata(self) -> dict[str, Any]:
        return {"method": self.method, "family": self.family, "base_model": self.base_model, "steps": self.steps,
                "kind": KIND, "training_config": dict(self.training_config),
                "groups": {k: len(v) for k, v in self.groups.items()}, "default_strength": self.strength,
                "strength_schedule": self.strength_schedule.to_json() if self.strength_schedule else None,
                "extra": dict(self.extra)}


@torch.no_grad()
def _patch(entry: dict[str, Any], strength: float) -> None:
    """``W = base + s·Δ`` from the exact base copy (never cumulatively), computed in float32."""
    if entry["strength"] == strength:
        return
    for p, base, delta in entry["patches"]:
        if strength == 0.0:
            p.copy_(base.to(p.device))
            continue
        value = base.to(p.device, torch.float32) + float(strength) * delta.to(p.device, torch.float32)
        p.copy_(value.to(p.dtype))
    entry["strength"] = strength


class _DeltaScheduleHook(SamplingHook):
    """Re-patches the weights when ``strength · schedule(t)`` changes between steps (a step schedule patches
    once at its switch; a linear one every step -- one pass over the trained tensors each time)."""

    label = "sampling"

    def __init__(self, adapter: WeightDelta) -> None:
        self.adapter = adapter

    def before_step(self, state: Any) -> None:
        stack = self.adapter._activation.stack
        if not stack:
            return
        _patch(stack[-1], self.adapter.strength * float(self.adapter.strength_schedule(state.timestep)))


def _from_file(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> WeightDelta:
    from .files import metadata_json  # files imports this module to register the kind

    deltas: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if not key.startswith(_PREFIX):
            raise AdapterMismatchError(f"{path.name}: unexpected tensor {key!r} in a weight-delta adapter.")
        if not torch.is_floating_point(value):
            raise AdapterMismatchError(f"{path.name}: tensor {key!r} is not floating point.")
        deltas[key[len(_PREFIX):]] = value
    if not deltas:
        raise AdapterMismatchError(f"{path.name} holds no weight deltas.")
    groups = {k: tuple(v) for k, v in metadata_json(metadata, "groups", {}).items()}
    extra = metadata_json(metadata, "extra", {})
    extra.setdefault("delta_dtype", metadata.get("delta_dtype", "float16"))
    return WeightDelta(
        deltas=deltas, method=metadata.get("method", ""), family=metadata.get("family", ""),
        base_model=metadata.get("base_model", ""), steps=int(metadata.get("steps", "0") or 0),
        training_config=metadata_json(metadata, "training_config", {}),
        strength=float(metadata.get("default_strength", "1.0") or 1.0),
        strength_schedule=StrengthSchedule.from_json(metadata_json(metadata, "strength_schedule", None)),
        groups=groups, source=str(path), extra=extra)


register_adapter_kind(KIND, _from_file)
