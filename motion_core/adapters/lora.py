"""LoRA sets on a video denoiser: named peft adapters, and the MOTION_ADAPTER object of LoRA methods.

Two levels:

* **Machinery on a module** (any ``nn.Module``, usually ``VideoModel.denoiser``): :func:`inject_lora` adds a
  named LoRA set on chosen ``nn.Linear`` layers through ``peft.inject_adapter_in_model`` (UNet3D has no
  ``PeftAdapterMixin``, so diffusers' ``add_adapter`` is not available), :func:`set_active_lora` chooses which
  sets run, :func:`set_lora_strength` scales one, :func:`lora_weights` / :func:`load_lora_weights` move
  tensors in and out, and :func:`remove_lora` deletes sets and puts the original ``nn.Linear`` back once a
  layer has no set left -- the base model is then exactly what it was.
* :class:`MotionLoRA` -- what a LoRA method hands to users (the ``MOTION_ADAPTER`` socket type): the
  trained tensors of one or more sets (MotionDirector: ``temporal`` with role ``motion`` and one
  ``spatial_<k>`` per training video with role ``appearance``), metadata, strengths, an optional strength
  schedule over timesteps and an optional stored noise prior. It implements the ActiveAdapter protocol
  of :mod:`motion_core.motion_model`: ``activate(model)`` installs the sets for one sampling run and
  removes them on exit; ``sampling_hook()`` varies the strength with the timestep when a schedule is set.

LoRA convention: ``y = W x + b + s·(alpha/r)·B(A(dropout(x)))`` with ``A`` ``[r, in]`` (Gaussian init, std
1/r) and ``B`` ``[out, r]`` (zero init). MotionDirector's own LoRA has no alpha/r factor -- its multiplier is
the plain scale -- so its sets use ``alpha = r``. peft applies dropout to the LoRA *input*, the reference to
its *output*; both are identical in eval mode (inference) and differ only in which activations a training
step drops.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import re
import threading
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..errors import AdapterMismatchError, InputError
from ..sampling import SamplingHook

if TYPE_CHECKING:  # pragma: no cover
    from ..backbones.base import LayerRef, VideoModel

__all__ = [
    "ROLE_APPEARANCE",
    "ROLE_MOTION",
    "LoraSet",
    "MotionLoRA",
    "StrengthSchedule",
    "active_lora",
    "inject_lora",
    "linear_targets",
    "load_lora_weights",
    "denoiser_modules",
    "lora_disabled",
    "lora_layers",
    "lora_root",
    "lora_targets",
    "lora_parameters",
    "lora_weights",
    "reference_order",
    "remove_lora",
    "set_active_lora",
    "set_lora_strength",
    "spatial_lora_targets",
    "temporal_lora_targets",
]

#: a set that carries motion (kept at inference by default)
ROLE_MOTION = "motion"
#: a set that absorbed appearance (MotionDirector's spatial LoRAs; off at inference by default)
ROLE_APPEARANCE = "appearance"
_ROLES = (ROLE_MOTION, ROLE_APPEARANCE)
_SET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


# ============================================================================================ targets
def _is_tuner_layer(module: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return isinstance(module, BaseTunerLayer)


def linear_targets(refs: Iterable["LayerRef"]) -> list[str]:
    """Full names of the ``nn.Linear`` layers inside the given layers (attention: ``to_q``, ``to_k``,
    ``to_v``, ``to_out.0``; feed-forward: ``net.0.proj``, ``net.2``), in module order.

    A layer that already carries LoRA sets counts as its Linear (its peft internals are skipped).
    """
    names: list[str] = []
    for ref in refs:
        skip: list[str] = []
        for sub, module in ref.module.named_modules():
            if any(sub == s or sub.startswith(s + ".") for s in skip):
                continue
            if _is_tuner_layer(module):
                names.append(f"{ref.name}.{sub}")
                skip.append(sub)
            elif type(module) is nn.Linear:
                names.append(f"{ref.name}.{sub}")
    return names


def temporal_lora_targets(model: "VideoModel") -> list[str]:
    """Every Linear of every temporal transformer: temporal attention ``attn1``/``attn2`` q/k/v/out and the
    temporal feed-forward (UNet3D: ``transformer_in`` + all ``temp_attentions``; AnimateDiff: every motion
    module). 170 layers on the ZeroScope/ModelScope config (17 transformers x 10)."""
    if callable(getattr(model, "motion_lora_targets", None)):  # families that choose their own (Wan: a DiT)
        return list(model.motion_lora_targets("temporal"))
    refs = [r for r in model.layers() if r.temporal and r.kind in ("temporal_attention", "feed_forward")]
    return linear_targets(refs)


def spatial_lora_targets(model: "VideoModel") -> list[str]:
    """Every Linear of the spatial self-attention (``attn1`` q/k/v/out) and the spatial feed-forward of
    every spatial transformer -- not the text cross-attention ``attn2``. 96 layers on ZeroScope (16 x 6)."""
    if callable(getattr(model, "motion_lora_targets", None)):
        return list(model.motion_lora_targets("spatial"))
    refs = [r for r in model.layers() if not r.temporal and r.kind in ("spatial_self_attention", "feed_forward")]
    return linear_targets(refs)


def denoiser_modules(model: "VideoModel") -> list[tuple[str, nn.Module]]:
    """Every denoiser of ``model`` as ``(prefix, module)``: ``[("", denoiser)]`` for single-denoiser models,
    ``[("high_noise", transformer), ("low_noise", transformer_2)]`` for Wan 2.2 A14B's two experts."""
    experts = getattr(model, "experts", None)
    if experts is not None and len(experts) > 1:
        return [(e.name, e.module) for e in experts]
    return [("", model.denoiser)]


def lora_root(model: "VideoModel") -> nn.Module:
    """The module LoRA sets of ``model`` live on: the denoiser itself, or -- with several experts (Wan 2.2
    A14B) -- a container holding each expert under its name, so one set spans both experts with layer names
    ``high_noise.blocks.0.attn1.to_q`` / ``low_noise.blocks.0.attn1.to_q``. The container only references the
    experts; every function of this module works on it as on a single denoiser."""
    modules = denoiser_modules(model)
    if len(modules) == 1:
        return modules[0][1]
    return nn.ModuleDict(dict(modules))


def lora_targets(model: "VideoModel", role: str) -> list[str]:
    """MotionDirector's ``role`` (``"temporal"`` / ``"spatial"``) targets, relative to :func:`lora_root`: with
    several experts the same layers of every expert (``model.motion_lora_targets(role, expert=...)``),
    prefixed by the expert's name."""
    modules = denoiser_modules(model)
    if len(modules) > 1:
        return [f"{prefix}.{t}" for prefix, _ in modules for t in model.motion_lora_targets(role, expert=prefix)]
    return temporal_lora_targets(model) if role == "temporal" else spatial_lora_targets(model)


def reference_order(names: Sequence[str]) -> list[str]:
    """Names in the order the MotionDirector reference walks its UNet3D (``named_modules()`` of its custom
    copy: ``transformer_in``, ``down_blocks``, ``up_blocks``, **``mid_block`` last**; spec §0.1, §1.3), the
    order its list-format ``.pt`` files follow. Stable within a block."""
    rank = {"transformer_in": 0, "down_blocks": 1, "up_blocks": 2, "mid_block": 3}
    return sorted(names, key=lambda n: rank.get(n.split(".")[0], 4))


# ============================================================================================ machinery
def lora_layers(module: nn.Module) -> dict[str, nn.Module]:
    """Every peft LoRA layer inside ``module`` (full name -> layer)."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in module.named_modules() if isinstance(m, LoraLayer)}


def _set_layer_active(layer: nn.Module, names: Sequence[str]) -> None:
    """Activate exactly ``names`` (those present) on one layer, leaving every ``requires_grad`` as it was
    (peft's ``set_adapter`` also toggles trainability, which the trainer manages itself)."""
    present = [n for n in names if n in layer.lora_A]
    flags = [(p, p.requires_grad) for p in layer.parameters()]
    layer.set_adapter(present)
    for p, flag in flags:
        p.requires_grad_(flag)


def active_lora(module: nn.Module) -> set[str]:
    """Names of the sets active on at least one layer."""
    out: set[str] = set()
    for layer in lora_layers(module).values():
        out.update(layer.active_adapters)
    return out


def set_active_lora(module: nn.Module, names: Iterable[str]) -> None:
    """Make exactly ``names`` the active sets everywhere (several active sets add up in parallel, like the
    reference's nested per-video LoRAs); an empty list runs the base model only."""
    names = list(dict.fromkeys(names))
    for layer in lora_layers(module).values():
        _set_layer_active(layer, names)


def set_lora_strength(module: nn.Module, name: str, strength: float) -> None:
    """Effective multiplier of set ``name``: ``strength · alpha / r`` (strength 1 = as trained)."""
    for layer in lora_layers(module).values():
        if name in layer.lora_A:
            layer.set_scale(name, float(strength))


@contextlib.contextmanager
def lora_disabled(module: nn.Module, layers: Iterable[nn.Module] | None = None) -> Iterator[None]:
    """Every LoRA layer inside ``module`` (or the given ``layers``, e.g. a list kept from
    :func:`lora_layers` -- finding them walks the whole model) runs its base layer alone while inside:
    peft's adapter switch, so the LoRA branch is not computed and is neither in the output nor in the
    autograd graph -- a frozen base-model pass (MotionMatcher's feature extractor). Previous switch states
    come back on exit. Cheap enough to enter once per checkpointed unit: the switch is flipped directly
    (peft's ``enable_adapters`` would also rewrite every ``requires_grad`` flag, which the trainer owns)."""
    targets = list(lora_layers(module).values()) if layers is None else list(layers)
    saved = [(layer, bool(layer.disable_adapters)) for layer in targets]
    direct = all(hasattr(layer, "_disable_adapters") for layer in targets)
    flags = [] if direct else [(p, p.requires_grad) for layer in targets for p in layer.parameters()]
    try:
        for layer in targets:
            if direct:
                layer._disable_adapters = True
            else:  # a peft without the private switch: the public one, flags restored below
                layer.enable_adapters(False)
        yield
    finally:
        for layer, was_disabled in saved:
            if direct:
                layer._disable_adapters = was_disabled
            else:
                layer.enable_adapters(not was_disabled)
        for p, flag in flags:
            p.requires_grad_(flag)


def _target_modules(module: nn.Module, targets: Sequence[str]) -> dict[str, nn.Module]:
    found = dict(module.named_modules())
    missing = [t for t in targets if t not in found]
    if missing:
        raise AdapterMismatchError(
            f"{len(missing)} LoRA target layer(s) do not exist in this model, e.g. {missing[0]!r}: the adapter "
            "was made for a model with another layer layout (another family or configuration).")
    out = {}
    for t in targets:
        m = found[t]
        base = m.get_base_layer() if _is_tuner_layer(m) else m
        if not isinstance(base, nn.Linear):
            raise AdapterMismatchError(f"LoRA target {t!r} is a {type(base).__name__}, not a Linear layer.")
        out[t] = base
    return out


def check_rank(module: nn.Module, targets: Sequence[str], rank: int) -> None:
    """InputError when ``rank`` is not a positive integer or exceeds ``min(in, out)`` of a target layer
    (a rank-r update of a smaller matrix has no meaning; the reference silently clips it)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise InputError(f"LoRA rank must be a positive integer, got {rank!r}.")
    layers = _target_modules(module, targets)
    limit_name, limit = min(((n, min(m.in_features, m.out_features)) for n, m in layers.items()),
                            key=lambda item: item[1])
    if rank > limit:
        raise InputError(f"LoRA rank {rank} is larger than the layer {limit_name!r} allows "
                         f"({limit}: the smaller of its input and output sizes). Use a rank of at most {limit}.")


def inject_lora(
    module: nn.Module,
    name: str,
    targets: Sequence[str],
    *,
    rank: int,
    alpha: float | None = None,
    dropout: float = 0.0,
    init: str | bool = "gaussian",
    dtype: torch.dtype | None = None,
    active: bool = True,
) -> list[str]:
    """Add LoRA set ``name`` (rank ``rank``, ``alpha`` default = rank) on the Linear layers ``targets``
    (full module names). Returns the targets. The new set is active (added to the layers' active sets)
    unless ``active=False``; its parameters have ``requires_grad=False`` (the trainer decides).

    ``init``: ``"gaussian"`` (A ~ N(0, 1/r²), B = 0: a no-op at start, as MotionDirector), or ``True``
    (peft default) / ``False`` when the weights are loaded right after. Random draws come from the global
    torch RNG; callers that need a seed wrap this in ``torch.random.fork_rng``.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if not _SET_NAME.match(name):
        raise InputError(f"LoRA set name {name!r} must be letters, digits and '_' (starting with a letter).")
    targets = list(dict.fromkeys(targets))
    if not targets:
        raise InputError(f"LoRA set {name!r} has no target layers.")
    if not 0.0 <= float(dropout) < 1.0:
        raise InputError(f"LoRA dropout must be in [0, 1), got {dropout}.")
    check_rank(module, targets, rank)
    existing = lora_layers(module)
    if any(name in layer.lora_A for layer in existing.values()):
        raise InputError(f"a LoRA set named {name!r} is already installed on this model.")
    previously_active = {n: list(layer.active_adapters) for n, layer in existing.items()}
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha if alpha is not None else rank),
                        lora_dropout=float(dropout), init_lora_weights=init, target_modules=targets, bias="none")
    flags = [(p, p.requires_grad) for p in module.parameters()]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Aa]lready found a `peft_config`.*")
        warnings.filterwarnings("ignore", message=".*Setting active adapter.*")
        inject_adapter_in_model(config, module, adapter_name=name)
    for p, flag in flags:  # peft freezes every non-LoRA parameter; restore what the caller had
        p.requires_grad_(flag)
    for layer_name, layer in lora_layers(module).items():
        base = list(previously_active.get(layer_name, []))
        wanted = base + [name] if (active and name in layer.lora_A) else base
        _set_layer_active(layer, wanted)
    params = lora_parameters(module, name)
    for p in params:
        p.requires_grad_(False)
    if dtype is not None:
        for p in params:
            p.data = p.data.to(dtype)
    return targets


def lora_parameters(module: nn.Module, name: str) -> list[nn.Parameter]:
    """The parameters of set ``name`` in module order (A then B per layer)."""
    params: list[nn.Parameter] = []
    for layer in lora_layers(module).values():
        if name in layer.lora_A:
            params.append(layer.lora_A[name].weight)
            params.append(layer.lora_B[name].weight)
    return params


def lora_weights(module: nn.Module, name: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{layer name: (A [r, in], B [out, r])}`` of set ``name`` -- detached copies on the CPU in float32."""
    out = {}
    for layer_name, layer in lora_layers(module).items():
        if name in layer.lora_A:
            out[layer_name] = (layer.lora_A[name].weight.detach().float().cpu().clone(),
                               layer.lora_B[name].weight.detach().float().cpu().clone())
    return out


@torch.no_grad()
def load_lora_weights(module: nn.Module, name: str, weights: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Copy ``weights`` into installed set ``name`` (cast to the set's dtype/device); every layer of the set
    must be given, with matching shapes, else AdapterMismatchError."""
    layers = {n: l for n, l in lora_layers(module).items() if name in l.lora_A}
    if set(layers) != set(weights):
        extra = sorted(set(weights) - set(layers))[:1]
        missing = sorted(set(layers) - set(weights))[:1]
        raise AdapterMismatchError(
            f"LoRA set {name!r}: the weights cover other layers than the installed set "
            f"(e.g. {'unexpected ' + extra[0] if extra else 'missing ' + missing[0]}).")
    for layer_name, (a, b) in weights.items():
        layer = layers[layer_name]
        pa, pb = layer.lora_A[name].weight, layer.lora_B[name].weight
        if tuple(a.shape) != tuple(pa.shape) or tuple(b.shape) != tuple(pb.shape):
            raise AdapterMismatchError(
                f"LoRA set {name!r}, layer {layer_name!r}: weights of shape {tuple(a.shape)}/{tuple(b.shape)} "
                f"do not fit the layer ({tuple(pa.shape)}/{tuple(pb.shape)}); the adapter was trained on a "
                "model of another size or with another rank.")
        pa.copy_(a.to(pa.device, pa.dtype))
        pb.copy_(b.to(pb.device, pb.dtype))


def _replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def remove_lora(module: nn.Module, names: Iterable[str]) -> None:
    """Delete sets ``names``; a layer left without any set is replaced by its original ``nn.Linear`` (the
    same Parameter objects), so removing every set restores the base model exactly."""
    names = set(names)
    if not names:
        return
    for layer_name, layer in lora_layers(module).items():
        if not names & set(layer.lora_A):
            continue
        keep_active = [n for n in layer.active_adapters if n not in names]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for n in names & set(layer.lora_A):
                layer.delete_adapter(n)
        if len(layer.lora_A) == 0:
            _replace_module(module, layer_name, layer.get_base_layer())
        else:
            _set_layer_active(layer, keep_active)
    config = getattr(module, "peft_config", None)
    if isinstance(config, dict):
        for n in names:
            config.pop(n, None)
        if not config:
            with contextlib.suppress(AttributeError):
                delattr(module, "peft_config")


# ============================================================================================ schedule
@dataclass(frozen=True)
class StrengthSchedule:
    """Adapter strength as a function of the diffusion timestep ``t`` (0 = clean, 999 = pure noise).

    ``points`` are ``(timestep, multiplier)`` pairs in ascending timestep order. ``mode="linear"``
    interpolates between them (constant beyond the ends); ``mode="step"`` holds each point's value from
    its timestep up to the next point. MotionMatcher's "active only for t >= 500" is
    ``StrengthSchedule.from_timestep(500)``.

    Text form (:meth:`parse`, for nodes and the CLI): ``"t>=500"``, ``"t<500"``, or
    ``"0:0, 500:1, 999:1"`` (linear) / ``"step 0:0, 500:1"`` (step).
    """

    points: tuple[tuple[float, float], ...]
    mode: str = "linear"

    def __post_init__(self) -> None:
        if self.mode not in ("linear", "step"):
            raise InputError(f"strength schedule mode must be 'linear' or 'step', not {self.mode!r}.")
        if not self.points:
            raise InputError("a strength schedule needs at least one (timestep, strength) point.")
        ts = [float(t) for t, _ in self.points]
        if any(b <= a for a, b in zip(ts, ts[1:])):
            raise InputError("strength schedule timesteps must be strictly increasing.")
        if any(not math.isfinite(float(v)) for _, v in self.points):
            raise InputError("strength schedule values must be finite numbers.")

    @classmethod
    def from_timestep(cls, t_min: float) -> "StrengthSchedule":
        """Full strength for ``t >= t_min``, off below."""
        return cls(((0.0, 0.0), (float(t_min), 1.0)), "step") if t_min > 0 else cls(((0.0, 1.0),), "step")

    @classmethod
    def until_timestep(cls, t_max: float) -> "StrengthSchedule":
        """Full strength for ``t < t_max``, off from ``t_max`` on."""
        return cls(((0.0, 1.0), (float(t_max), 0.0)), "step")

    def __call__(self, timestep: float) -> float:
        t = float(timestep)
        pts = self.points
        if t <= pts[0][0]:
            return float(pts[0][1])
        if t >= pts[-1][0]:
            return float(pts[-1][1])
        for (t0, v0), (t1, v1) in zip(pts, pts[1:]):
            if t0 <= t < t1:
                if self.mode == "step":
                    return float(v0)
                return float(v0 + (v1 - v0) * (t - t0) / (t1 - t0))
        return float(pts[-1][1])  # pragma: no cover

    @classmethod
    def parse(cls, text: str) -> "StrengthSchedule | None":
        """Parse the text form; empty text -> None (constant strength)."""
        s = (text or "").strip().lower().replace(" ", "")
        if not s or s in ("none", "constant", "always"):
            return None
        m = re.fullmatch(r"t(>=|>|<|<=)(\d+(?:\.\d+)?)", s)
        if m:
            op, value = m.group(1), float(m.group(2))
            if op == ">=":
                return cls.from_timestep(value)
            if op == ">":
                return cls.from_timestep(math.floor(value) + 1)
            if op == "<":
                return cls.until_timestep(value)
            return cls.until_timestep(math.floor(value) + 1)
        mode = "linear"
        if s.startswith("step"):
            mode, s = "step", s[4:].lstrip(":")
        elif s.startswith("linear"):
            s = s[6:].lstrip(":")
        points = []
        for part in filter(None, s.split(",")):
            try:
                t, v = part.split(":")
                points.append((float(t), float(v)))
            except ValueError:
                raise InputError(
                    f"cannot read the strength schedule {text!r}: use 't>=500', 't<500' or "
                    "'timestep:strength' pairs such as '0:0, 500:1, 999:1' (prefix 'step' for steps).") from None
        return cls(tuple(sorted(points)), mode)

    def to_json(self) -> dict[str, Any]:
        return {"points": [list(p) for p in self.points], "mode": self.mode}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> "StrengthSchedule | None":
        if not data:
            return None
        return cls(tuple((float(t), float(v)) for t, v in data["points"]), str(data.get("mode", "linear")))


# ============================================================================================ MotionLoRA
@dataclass(frozen=True, eq=False)
class LoraSet:
    """One trained LoRA set: ``weights[layer] = (A [r, in], B [out, r])`` on the CPU in float32.

    ``ordered=True`` marks a set imported from the reference's list-format files: its keys are ``"#0"``,
    ``"#1"`` ... and are matched to the model's layers (in the reference's module order) at activation.
    """

    name: str
    role: str
    rank: int
    alpha: float
    weights: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
    ordered: bool = False

    def __post_init__(self) -> None:
        if not _SET_NAME.match(self.name):
            raise InputError(f"LoRA set name {self.name!r} must be letters, digits and '_'.")
        if self.role not in _ROLES:
            raise InputError(f"LoRA set role must be one of {_ROLES}, not {self.role!r}.")

    @property
    def targets(self) -> list[str]:
        return list(self.weights)

    @property
    def num_parameters(self) -> int:
        return sum(a.numel() + b.numel() for a, b in self.weights.values())

    def delta(self, layer: str, strength: float = 1.0) -> torch.Tensor:
        """The weight update ``strength · alpha/r · B @ A`` of one layer (float32)."""
        a, b = self.weights[layer]
        return (strength * self.alpha / self.rank) * (b.float() @ a.float())


class _Activation(threading.local):
    """Names under which a MotionLoRA is installed right now (read by its sampling hook)."""

    def __init__(self) -> None:
        self.stack: list[list[tuple[str, float]]] = []


_COUNTER = itertools.count()


@dataclass(frozen=True, eq=False)
class MotionLoRA:
    """The MOTION_ADAPTER of LoRA methods (immutable; ``with_*`` return copies sharing the tensors).

    At inference the ``motion`` sets run at ``strength`` and, when ``appearance_strength`` is not 0, the
    appearance set ``appearance_set`` (default: the first, i.e. the first training video's spatial LoRA)
    at ``appearance_strength``. ``strength_schedule`` multiplies every installed set's strength by a
    function of the timestep. ``noise_prior`` holds the DDIM-inverted latents of the training clips
    (computed once at training time) for :class:`~motion_core.noise_prior.NoisePrior`.
    """

    sets: tuple[LoraSet, ...]
    method: str
    family: str
    base_model: str
    steps: int = 0
    training_config: Mapping[str, Any] = field(default_factory=dict)
    strength: float = 1.0
    appearance_strength: float = 0.0
    appearance_set: str | None = None
    strength_schedule: StrengthSchedule | None = None
    noise_prior: tuple[torch.Tensor, ...] = ()
    noise_prior_info: Mapping[str, Any] = field(default_factory=dict)
    check_base_model: bool = True
    source: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    _activation: _Activation = field(default_factory=_Activation, init=False, repr=False, compare=False)

    kind = "lora"

    def __post_init__(self) -> None:
        names = [s.name for s in self.sets]
        if len(set(names)) != len(names):
            raise InputError(f"duplicate LoRA set names in one adapter: {names}.")
        if self.appearance_set is not None and self.appearance_set not in names:
            raise InputError(f"this adapter has no LoRA set {self.appearance_set!r}; it has {', '.join(names)}.")

    # ----------------------------------------------------------------------------------- facts
    @property
    def motion_sets(self) -> list[LoraSet]:
        return [s for s in self.sets if s.role == ROLE_MOTION]

    @property
    def appearance_sets(self) -> list[LoraSet]:
        return [s for s in self.sets if s.role == ROLE_APPEARANCE]

    @property
    def rank(self) -> int:
        return max((s.rank for s in self.sets), default=0)

    @property
    def num_parameters(self) -> int:
        return sum(s.num_parameters for s in self.sets)

    def get_set(self, name: str) -> LoraSet:
        for s in self.sets:
            if s.name == name:
                return s
        raise InputError(f"this adapter has no LoRA set {name!r}; it has {', '.join(s.name for s in self.sets)}.")

    def describe(self) -> str:
        parts = [f"{self.method} LoRA for {self.family} ({self.base_model or 'any base'}), {self.steps} steps"]
        for s in self.sets:
            parts.append(f"{s.name} [{s.role}]: rank {s.rank}, {len(s.weights)} layers, {s.num_parameters:,} params")
        parts.append(f"strength {self.strength:g}, appearance strength {self.appearance_strength:g}")
        if self.noise_prior:
            parts.append(f"stored noise prior: {len(self.noise_prior)} clip(s)")
        return "\n".join(parts)

    # ----------------------------------------------------------------------------------- copies
    def with_strength(self, strength: float | None = None, *, appearance_strength: float | None = None,
                      appearance_set: str | None = None, schedule: StrengthSchedule | None | str = "keep",
                      check_base_model: bool | None = None) -> "MotionLoRA":
        changes: dict[str, Any] = {}
        for key, value in (("strength", strength), ("appearance_strength", appearance_strength)):
            if value is not None:
                if not math.isfinite(float(value)):
                    raise InputError(f"{key.replace('_', ' ')} must be a finite number, got {value}.")
                changes[key] = float(value)
        if appearance_set is not None:
            changes["appearance_set"] = appearance_set
        if schedule != "keep":
            changes["strength_schedule"] = schedule
        if check_base_model is not None:
            changes["check_base_model"] = bool(check_base_model)
        return replace(self, **changes)

    # ----------------------------------------------------------------------------------- checks
    def check_compatible(self, model: "VideoModel") -> None:
        """AdapterMismatchError when the adapter was trained for another family (always) or another base
        model (unless ``check_base_model`` is off)."""
        if self.family and model.family != self.family:
            raise AdapterMismatchError(
                f"This motion adapter was trained for the {self.family} family ({self.base_model}); the model is "
                f"a {model.family} model ({model.base_model}). Load a {self.family} model, or an adapter trained "
                f"on this one.")
        if self.check_base_model and self.base_model and model.base_model != self.base_model:
            raise AdapterMismatchError(
                f"This motion adapter was trained on '{self.base_model}', but the model is "
                f"'{model.base_model}'. Use the same base model; if the two share an architecture (e.g. "
                "ZeroScope and ModelScope) and you want to try anyway, turn off the base-model check.")
        self._check_layers(model)

    def _check_layers(self, model: "VideoModel") -> None:
        """AdapterMismatchError, before anything is installed, when a set names layers the model does not have:
        how many, what the adapter's and the model's layer names look like, and the likely cause."""
        modules = dict(lora_root(model).named_modules())
        for s in self.sets:
            if s.ordered:  # reference .pt lists: matched by order in _resolve_ordered, with its own checks
                continue
            missing = sorted(n for n in s.weights if n not in modules)
            if not missing:
                continue
            linear = [n for n, m in modules.items() if isinstance(m, nn.Linear) and ".lora_" not in n
                      and not n.endswith(".base_layer")]
            leaf = missing[0].rsplit(".", 1)[-1]  # show the model's layers of the same kind first (to_q, ...)
            examples = ([n for n in linear if n.rsplit(".", 1)[-1] == leaf] or linear)[:2]
            how_many = "none" if len(missing) == len(s.weights) else f"{len(missing)}"
            where = f" ({Path(self.source).name})" if self.source else ""
            raise AdapterMismatchError(
                f"The motion adapter{where} does not fit this model: {how_many} of the {len(s.weights)} layers of "
                f"its LoRA set {s.name!r} exist in it. The adapter's layers look like {missing[0]!r}"
                f"{', ' + repr(missing[-1]) if len(missing) > 1 else ''}; this {model.family} model "
                f"({model.base_model or 'unnamed'}) has {len(linear)} linear layers like "
                f"{', '.join(repr(n) for n in examples) or 'none'}. The adapter was most likely trained on another "
                f"model family or base model{' (it says ' + self.family + ')' if self.family else ''}, or another "
                "configuration of it: apply it to the model it was trained on, or train an adapter on this model.")

    def resolved(self, model: "VideoModel") -> "MotionLoRA":
        """Checks compatibility and maps reference-ordered sets onto the model's layer names."""
        self.check_compatible(model)
        if not any(s.ordered for s in self.sets):
            return self
        sets: list[LoraSet] = []
        for s in self.sets:
            sets.extend(_resolve_ordered(s, model) if s.ordered else [s])
        appearance = self.appearance_set
        if appearance is not None and appearance not in {s.name for s in sets}:
            appearance = None
        return replace(self, sets=tuple(sets), appearance_set=appearance)

    def _installed_strengths(self) -> list[tuple[LoraSet, float]]:
        out = [(s, self.strength) for s in self.motion_sets]
        if self.appearance_strength != 0.0 and self.appearance_sets:
            chosen = self.get_set(self.appearance_set) if self.appearance_set else self.appearance_sets[0]
            out.append((chosen, self.appearance_strength))
        return out

    # ----------------------------------------------------------------------------------- ActiveAdapter
    @contextlib.contextmanager
    def activate(self, model: "VideoModel") -> Iterator["VideoModel"]:
        """Install the sets on ``model.denoiser`` (every expert of a two-expert model, see :func:`lora_root`)
        for one run; always removes them (base restored)."""
        resolved = self.resolved(model)
        denoiser = lora_root(model)
        weight = next(denoiser.parameters())
        token = next(_COUNTER)
        installed: list[tuple[str, float]] = []
        try:
            # injection draws random init values; keep them off the global RNG (the reference's inference
            # seeding depended on LoRA injection draws, spec §1.9.8 -- ours does not)
            with torch.random.fork_rng(devices=[]):
                for lora_set, strength in resolved._installed_strengths():
                    name = f"motionkit{token}_{lora_set.name}"
                    inject_lora(denoiser, name, lora_set.targets, rank=lora_set.rank, alpha=lora_set.alpha,
                                dropout=0.0, init=True, dtype=weight.dtype)
                    installed.append((name, strength))
                    load_lora_weights(denoiser, name, lora_set.weights)
                    set_lora_strength(denoiser, name, strength)
            self._activation.stack.append(installed)
            try:
                yield model
            finally:
                self._activation.stack.pop()
        finally:
            remove_lora(denoiser, [n for n, _ in installed])

    def sampling_hook(self) -> SamplingHook | None:
        if self.strength_schedule is None:
            return None
        return _ScheduleHook(self)

    # ----------------------------------------------------------------------------------- files
    def save(self, path: str, **kwargs: Any):
        from .files import save_adapter

        return save_adapter(self, path, **kwargs)

    def metadata(self) -> dict[str, Any]:
        """JSON-able description written into the file (tensors go separately)."""
        return {
            "method": self.method, "family": self.family, "base_model": self.base_model, "steps": self.steps,
            "rank": self.rank, "training_config": dict(self.training_config),
            "sets": [{"name": s.name, "role": s.role, "rank": s.rank, "alpha": s.alpha, "layers": len(s.weights),
                      "ordered": s.ordered} for s in self.sets],
            "default_strength": self.strength, "default_appearance_strength": self.appearance_strength,
            "strength_schedule": self.strength_schedule.to_json() if self.strength_schedule else None,
            "noise_prior": dict(self.noise_prior_info), "extra": dict(self.extra),
        }


def _scheduled_strength(adapter: MotionLoRA, timestep: int) -> float:
    return adapter.strength_schedule(timestep) if adapter.strength_schedule is not None else 1.0


class _ScheduleHook(SamplingHook):
    """Sets the installed sets' strengths for each step's timestep (``strength · schedule(t)``)."""

    label = "sampling"

    def __init__(self, adapter: MotionLoRA) -> None:
        self.adapter = adapter

    def before_step(self, state: Any) -> None:
        if not self.adapter._activation.stack:
            return
        factor = _scheduled_strength(self.adapter, state.timestep)
        for name, strength in self.adapter._activation.stack[-1]:
            set_lora_strength(lora_root(state.model), name, strength * factor)


def _resolve_ordered(lora_set: LoraSet, model: "VideoModel") -> list[LoraSet]:
    """Map a reference-ordered set onto the model's layers (module order with mid_block last). A spatial
    file of N training videos holds N nested LoRAs per layer, entry ``j·N + k`` being video ``k`` of layer
    ``j`` (spec §1.2): it becomes N sets ``spatial_0..spatial_{N-1}``."""
    targets = reference_order(temporal_lora_targets(model) if lora_set.role == ROLE_MOTION
                              else spatial_lora_targets(model))
    count = len(lora_set.weights)
    if not targets or count % len(targets) or (lora_set.role == ROLE_MOTION and count != len(targets)):
        raise AdapterMismatchError(
            f"The imported {lora_set.role} LoRA has {count} layers but this {model.family} model has "
            f"{len(targets)} matching layers: the file was made for another model architecture.")
    nested = count // len(targets)
    layers = dict(model.denoiser.named_modules())
    out = []
    for k in range(nested):
        weights = {name: lora_set.weights[f"#{j * nested + k}"] for j, name in enumerate(targets)}
        for name, (a, b) in weights.items():
            base = layers[name]
            base = base.get_base_layer() if _is_tuner_layer(base) else base
            if a.shape[1] != base.in_features or b.shape[0] != base.out_features or a.shape[0] != b.shape[1]:
                raise AdapterMismatchError(
                    f"The imported LoRA does not fit layer {name!r} (down {tuple(a.shape)}, up {tuple(b.shape)} vs "
                    f"a {base.in_features}->{base.out_features} Linear): another model architecture.")
        name = lora_set.name if nested == 1 else f"{lora_set.name}_{k}"
        out.append(replace(lora_set, name=name, weights=weights, ordered=False))
    return out
