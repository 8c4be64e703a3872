"""MotionMatcher: Motion Customization of Text-to-Video Diffusion Models via Motion Feature Matching
(Wu et al., 2025; reference/motion_inversion_and_motion_matcher.md Part B).

One LoRA set, trained with a **motion feature matching loss** instead of the pixel-level (ε) loss.

* **LoRA placement** (B.1) -- rank 32 on the spatial self-attention ``attn1`` (q/k/v/out) and the
  feed-forward of every spatial transformer (not the text cross-attention ``attn2``), and on every
  temporal transformer (both temporal attentions and the feed-forward, ``transformer_in`` included):
  96 + 170 = 266 Linear layers on ZeroScope. The targets are the ones MotionDirector uses for its spatial
  and temporal LoRAs (:func:`~motion_core.adapters.lora.spatial_lora_targets`,
  :func:`~motion_core.adapters.lora.temporal_lora_targets`), here in one set.
* **Motion features** (B.2) -- what the *frozen* model (LoRA off) attends to in the down block at 1/4
  latent resolution: the **cross-attention maps** ``A_CA [B, F, h', w', L]`` ("camera framing": where each
  text token lands in each frame) and the **temporal self-attention maps** ``A_TSA [B, h'w', F, F]``
  ("object movement": which frames each position looks at), each averaged over heads and layers. The
  extractor runs the denoiser only up to that block (:func:`~motion_core.attention.run_until`).
* **Training step** (B.3) -- ``t ~ U{500..999}``, ``z_t = √ᾱ_t z0 + √(1−ᾱ_t) ε``; the LoRA model predicts
  ``ε̂``; one DDIM step (step size 1) gives the predicted next latent ``x̂_{t−1}`` and, with the true ``ε``,
  the ground-truth next latent ``x_{t−1}``; the frozen extractor runs on both at timestep ``t − 1``;
  ``L = w_s · MSE(A_CA(x̂), A_CA(x)) + w_t · MSE(A_TSA(x̂), A_TSA(x))`` with ``w_s = w_t = 2000``. Since
  ``x̂ − x = c_t (ε̂ − ε)`` with a tiny ``c_t`` (≈ −0.003), the loss is a Jacobian-weighted ε-loss that
  only counts the part of the error that changes *what the model attends to* -- the motion -- hence the
  large weights. Gradient flows loss → maps → frozen extractor → ``x̂`` → ``ε̂`` → LoRA; the ground-truth
  branch runs without gradient; no base weight is trainable.
* **Inference** (B.5) -- the LoRA is active only for ``t ≥ 500`` (a
  :class:`~motion_core.adapters.lora.StrengthSchedule` stored in the adapter and applied by the sampler
  through the adapter's sampling hook), and sampling starts from a 0.3 noise prior (the training clip's
  DDIM inversion, computed once at training time and stored in the adapter).

Deliberate differences from the reference implementation (also listed in the README):

1. *Clean extractor gradients under gradient checkpointing* (B.9.1). The reference runs its extractor
   passes under checkpointing with LoRA scale 0 but sets the scale back to 1 before ``backward``, so the
   recomputation uses LoRA-enabled activations: once the LoRA is non-zero its gradient is off by ~17 %
   on a tiny UNet. Here the extractor passes run with peft's adapter layers *disabled* (the LoRA branch is
   not computed at all), and their checkpointed units are recomputed in that same state
   (:func:`~motion_core.training.recompute_context`), so the gradient is the one of the loss as written --
   identical with checkpointing on or off.
2. *Only the maps that are compared are kept* (B.9.3): the reference stores every down-block attention
   map (0.85 GB per 48²x48² spatial map in fp16); we capture the layers of the feature block only, and the
   extractor stops after that block (the later down blocks cannot change those maps).
3. *Any aspect ratio* (B.9.2): the reference finds its maps by a square-resolution test and fails on
   non-square clips; we select the feature block by its depth, so 576x320 works.
4. *Noise prior from the base model's inversion*: the reference re-inverts the clip with the LoRA enabled
   at inference (B.5.2); we store the inversion made once at training time with the base model (as for
   MotionDirector) -- no 75-step inversion per sampling run.
5. *LoRA dropout on the LoRA input* (peft) instead of its output; identical at inference.
6. *Seeded and resumable*; the reference draws random validation seeds.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..adapters.lora import (
    ROLE_MOTION,
    LoraSet,
    MotionLoRA,
    StrengthSchedule,
    inject_lora,
    lora_disabled,
    lora_layers,
    lora_parameters,
    lora_weights,
    load_lora_weights,
    reference_order,
    remove_lora,
    set_active_lora,
    set_lora_strength,
    spatial_lora_targets,
    temporal_lora_targets,
)
from ..attention import AttentionCapture, attach, run_until
from ..errors import AdapterMismatchError, InputError
from ..sampling import SamplingHook, ddim_step
from ..training import Batch, CachedClip, ParamGroup, StepOutput, TrainingMethod, recompute_context
from . import register_method

if TYPE_CHECKING:  # pragma: no cover
    import os  # noqa: F401

    from ..backbones.base import LayerRef, VideoModel
    from ..training import TrainingConfig, TrainingResult, VideoSource

log = logging.getLogger(__name__)

__all__ = [
    "MOTION",
    "FeatureLayers",
    "MotionFeatures",
    "MotionMatcher",
    "MotionMatcherConfig",
    "check_backbone",
    "extract_motion_features",
    "import_reference_lora",
    "motion_feature_layers",
    "motion_feature_loss",
    "motion_matching_loss",
    "motion_matcher_schedule",
    "motion_matcher_targets",
    "next_latents",
    "train_motion_matcher",
]

#: name of MotionMatcher's one LoRA set
MOTION = "motion"
#: the reference's feature resolution: the down block at 1/4 of the latent size (spatial/temporal_scale_factor)
REFERENCE_DOWNSCALE = 4


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class MotionMatcherConfig:
    """Hyper-parameters; defaults are the reference configs (``MM:configs/config_*.yaml``, spec B.6)."""

    rank: int = 32
    lora_dropout: float = 0.1
    learning_rate: float = 5e-4
    weight_decay: float = 1e-2
    #: lower bound of the training timesteps and the inference gate (LoRA on for t >= min_timestep)
    min_timestep: int = 500
    #: weight of the cross-attention map term (car_roundabout: 8000)
    spatial_loss_weight: float = 2000.0
    #: weight of the temporal self-attention map term (car_roundabout: 800)
    temporal_loss_weight: float = 2000.0
    #: resolution of the feature block as a divisor of the latent size (None: 4 as the reference where the
    #: model has cross- and temporal attention there, else the deepest down block that has both)
    feature_downscale: int | None = None
    #: default noise prior p written into the adapter (bear: 0.2)
    noise_prior: float = 0.3
    #: DDIM inversion steps for the stored noise prior (0: store none); the reference uses its 75
    #: validation steps
    noise_prior_steps: int = 75
    #: optional gradient clipping (the reference does not clip)
    max_grad_norm: float | None = None

    def validate(self) -> None:
        if not _is_int(self.rank) or self.rank <= 0:
            raise InputError(f"LoRA rank must be a positive integer, got {self.rank!r}.")
        lr = self.learning_rate
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise InputError(f"learning rate must be a positive number, got {lr!r}.")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise InputError(f"weight decay must be >= 0, got {self.weight_decay!r}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise InputError(f"LoRA dropout must be in [0, 1), got {self.lora_dropout}.")
        if not _is_int(self.min_timestep) or not 1 <= self.min_timestep <= 999:
            raise InputError(f"min timestep must be an integer in 1..999 (the reference uses 500), got "
                             f"{self.min_timestep!r}.")
        for name in ("spatial_loss_weight", "temporal_loss_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise InputError(f"{name.replace('_', ' ')} must be a number >= 0, got {value!r}.")
        if self.spatial_loss_weight == 0 and self.temporal_loss_weight == 0:
            raise InputError("MotionMatcher needs a cross-attention or a temporal-attention loss weight above 0.")
        scale = self.feature_downscale
        if scale is not None and (not _is_int(scale) or scale < 1 or scale & (scale - 1)):
            raise InputError(f"feature downscale must be a power of two (1, 2, 4, 8) or None for automatic, got "
                             f"{self.feature_downscale!r}.")
        if not 0.0 <= self.noise_prior <= 1.0:
            raise InputError(f"noise prior p must be in [0, 1], got {self.noise_prior}.")
        if not _is_int(self.noise_prior_steps) or self.noise_prior_steps < 0:
            raise InputError(f"noise prior steps must be an integer >= 0, got {self.noise_prior_steps!r}.")
        if self.max_grad_norm is not None and not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise InputError(f"max grad norm must be a positive number or None, got {self.max_grad_norm!r}.")


# ============================================================================================== targets
def motion_matcher_targets(model: "VideoModel") -> list[str]:
    """The LoRA's Linear layers: spatial ``attn1`` + ``ff`` of every spatial transformer, then every temporal
    transformer's attention + ``ff`` (the reference's order: all Transformer2DModel LoRAs first). 266 on
    ZeroScope (96 + 170)."""
    return spatial_lora_targets(model) + temporal_lora_targets(model)


def motion_matcher_schedule(min_timestep: int = 500) -> StrengthSchedule:
    """The inference gate: full strength for ``t >= min_timestep``, off below (spec B.5 step 4)."""
    return StrengthSchedule.from_timestep(int(min_timestep))


def import_reference_lora(path: "str | os.PathLike", model: "VideoModel") -> MotionLoRA:
    """A MotionMatcher reference LoRA file (``<run>/checkpoint-<k>/lora/<k>_unet.pt``, spec B.1) mapped onto
    ``model``'s layers, with the reference's inference gate (t >= 500).

    The file is a list ``[B₁, A₁, B₂, A₂, …]`` (read with ``torch.load(weights_only=True)``): every
    Transformer2DModel LoRA first, then every temporal one, each group in the reference's module order
    (``mid_block`` last); its scale is 1 with no alpha/r factor (alpha = rank here).
    """
    from ..adapters.files import import_reference_lora as read_lora_list

    listed = read_lora_list(path, role=ROLE_MOTION).sets[0]
    targets = reference_order(spatial_lora_targets(model)) + reference_order(temporal_lora_targets(model))
    if len(listed.weights) != len(targets):
        raise AdapterMismatchError(
            f"{Path(path).name} holds {len(listed.weights)} LoRA layers; MotionMatcher's LoRA on this {model.family} "
            f"model has {len(targets)} (266 on ZeroScope): the file was made for another architecture.")
    modules = dict(model.denoiser.named_modules())
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for j, name in enumerate(targets):
        a, b = listed.weights[f"#{j}"]
        base = modules[name]
        base = base.get_base_layer() if hasattr(base, "get_base_layer") else base
        if a.shape[1] != base.in_features or b.shape[0] != base.out_features or a.shape[0] != listed.rank:
            raise AdapterMismatchError(
                f"{Path(path).name}: entry {j} (down {tuple(a.shape)}, up {tuple(b.shape)}) does not fit {name!r}, "
                f"a {base.in_features}->{base.out_features} Linear (rank {listed.rank}): another architecture, "
                "or per-layer ranks (clipped to small layers), which one LoRA set cannot hold.")
        weights[name] = (a, b)
    lora = LoraSet(name=MOTION, role=ROLE_MOTION, rank=listed.rank, alpha=float(listed.rank), weights=weights)
    return MotionLoRA(sets=(lora,), method="motionmatcher", family=model.family, base_model=model.base_model,
                      strength_schedule=motion_matcher_schedule(), source=str(path),
                      extra={"imported_from": "MotionMatcher reference .pt"})


# ============================================================================================== features
@dataclass(frozen=True)
class FeatureLayers:
    """Where the motion features are read: one down block (``block``, at ``1/downscale`` of the latent
    size), its spatial cross-attention layers and its temporal attention layers."""

    block: str
    downscale: int
    cross_attention: tuple["LayerRef", ...]
    temporal_attention: tuple["LayerRef", ...]

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.cross_attention + self.temporal_attention]


def _down_block_scales(denoiser: nn.Module) -> dict[str, int]:
    """``down_blocks.i`` -> its resolution divisor (2^(downsamplers before it))."""
    blocks = getattr(denoiser, "down_blocks", None)
    if blocks is None:
        return {}
    scales, factor = {}, 1
    for i, block in enumerate(blocks):
        scales[f"down_blocks.{i}"] = factor
        if getattr(block, "downsamplers", None):
            factor *= 2
    return scales


def motion_feature_layers(model: "VideoModel", downscale: int | None = None) -> FeatureLayers:
    """The feature block and its layers; InputError when the model has none that MotionMatcher can read."""
    scales = _down_block_scales(model.denoiser)
    refs = model.layers()
    usable: dict[int, FeatureLayers] = {}
    for block, scale in scales.items():
        ca = tuple(r for r in refs if r.block == block and r.kind == "cross_attention")
        tsa = tuple(r for r in refs if r.block == block and r.kind == "temporal_attention")
        if ca and tsa:
            usable[scale] = FeatureLayers(block=block, downscale=scale, cross_attention=ca, temporal_attention=tsa)
    if not usable:
        raise InputError(
            f"MotionMatcher cannot train on this {model.family} model: its motion features are the text "
            "cross-attention maps and the temporal self-attention maps of a UNet down block, and this model "
            f"has no down block with both ({'no UNet down blocks' if not scales else 'none found'}). Use a "
            "UNet3D model (ZeroScope, ModelScope) or an AnimateDiff model, or train MotionDirector instead.")
    if downscale is not None:
        if downscale not in usable:
            raise InputError(
                f"This model has no down block at 1/{downscale} of the latent size with both cross-attention and "
                f"temporal attention; usable feature downscales are {sorted(usable)}.")
        return usable[downscale]
    if REFERENCE_DOWNSCALE in usable:
        return usable[REFERENCE_DOWNSCALE]
    chosen = usable[max(usable)]
    log.info("MotionMatcher: this model has no feature block at 1/%d latent resolution (the reference's); using "
             "%s at 1/%d.", REFERENCE_DOWNSCALE, chosen.block, chosen.downscale)
    return chosen


def check_backbone(model: "VideoModel", downscale: int | None = None) -> FeatureLayers:
    """Fail early (before any encoding) when MotionMatcher cannot train on ``model``."""
    if model.prediction_type not in ("epsilon", "v_prediction", "flow"):
        raise InputError(f"MotionMatcher cannot train a model with prediction type {model.prediction_type!r}.")
    return motion_feature_layers(model, downscale)


@dataclass
class MotionFeatures:
    """Head- and layer-averaged attention maps of one extractor pass (float32).

    ``cross_attention`` ``[B, F, h', w', L]`` (rows sum to 1 over the L text tokens);
    ``temporal_attention`` ``[B, h'w', F, F]`` (rows sum to 1 over the frames).
    """

    cross_attention: torch.Tensor
    temporal_attention: torch.Tensor


class _FeatureCapture(AttentionCapture):
    """Head-averaged softmax maps with the graph kept. ``recording=False`` still computes the maps the
    explicit way (so a checkpointed unit recomputes exactly the operations of its forward) but stores
    nothing (its recomputation needs no second copy)."""

    def __init__(self, layers: Sequence[str]) -> None:
        super().__init__("probs", keep_graph=True, head_mean=True, layers=layers)
        self.recording = True

    def on_probs(self, call: Any, probs: torch.Tensor) -> None:
        if self.recording:
            super().on_probs(call, probs)


def _feature_shape(latent_hw: tuple[int, int], downscale: int) -> tuple[int, int]:
    h, w = latent_hw
    while downscale > 1:  # stride-2 downsamplers with padding 1 round up
        h, w, downscale = (h + 1) // 2, (w + 1) // 2, downscale // 2
    return h, w


def _layer_mean(records: Sequence[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """Mean over layers weighted by their head counts: the reference concatenates every layer's heads and
    averages them all at once."""
    total = sum(heads for _, heads in records)
    return sum(m * (heads / total) for m, heads in records)


def _aggregate(capture: _FeatureCapture, layers: FeatureLayers, batch: int, frames: int,
               latent_hw: tuple[int, int]) -> MotionFeatures:
    def take(refs: Sequence["LayerRef"]) -> list[tuple[torch.Tensor, int]]:
        out = []
        for ref in refs:
            if ref.name not in capture.records:
                raise InputError(f"MotionMatcher: the layer {ref.name} did not run in the feature pass.")
            out.append((capture.records[ref.name][-1], int(ref.module.heads)))
        return out

    ca = _layer_mean(take(layers.cross_attention))  # [B*F, Lq, L]
    tsa = _layer_mean(take(layers.temporal_attention))  # [B*Lq, F, F]
    positions = ca.shape[1]
    h, w = _feature_shape(latent_hw, layers.downscale)
    grid = (h, w) if h * w == positions else (positions,)
    ca = ca.reshape(batch, frames, *grid, ca.shape[-1])
    tsa = tsa.reshape(batch, -1, frames, frames)
    return MotionFeatures(cross_attention=ca, temporal_attention=tsa)


@contextlib.contextmanager
def _frozen_extractor(model: "VideoModel", capture: _FeatureCapture, recording: bool = True,
                      layers: Sequence[nn.Module] | None = None) -> Iterator[None]:
    """The extractor's state: every LoRA layer disabled (the frozen base model) and the capture on."""
    was = (capture.enabled, capture.recording)
    with lora_disabled(model.denoiser, layers):
        capture.enabled, capture.recording = True, recording
        try:
            yield
        finally:
            capture.enabled, capture.recording = was


def _run_features(model: "VideoModel", capture: _FeatureCapture, layers: FeatureLayers, latents: torch.Tensor,
                  timestep: torch.Tensor, prompt_embeds: torch.Tensor) -> MotionFeatures:
    capture.clear()
    block = model.denoiser.get_submodule(layers.block)
    run_until(block, lambda: model.predict(latents, timestep, prompt_embeds))
    features = _aggregate(capture, layers, latents.shape[0], latents.shape[2], tuple(latents.shape[-2:]))
    capture.clear()
    return features


def extract_motion_features(model: "VideoModel", latents: torch.Tensor, timestep: torch.Tensor | int,
                            prompt_embeds: torch.Tensor, layers: FeatureLayers | None = None) -> MotionFeatures:
    """The motion features of ``latents`` ``[B,C,F,h,w]`` as the *frozen* model sees them at ``timestep``:
    LoRA layers (if any) are disabled for the pass. Differentiable w.r.t. ``latents`` when grad is on, also
    under gradient checkpointing (the units are recomputed with the LoRA off and the maps computed the same
    way)."""
    layers = layers or motion_feature_layers(model)
    refs = [(r.name, r.module) for r in layers.cross_attention + layers.temporal_attention]
    loras = list(lora_layers(model.denoiser).values())
    capture = _FeatureCapture(layers.names)

    @contextlib.contextmanager
    def replay() -> Iterator[None]:
        idle = _FeatureCapture(layers.names)
        idle.recording = False
        with attach(model.denoiser, refs, idle), lora_disabled(model.denoiser, loras):
            yield

    with attach(model.denoiser, refs, capture), _frozen_extractor(model, capture, layers=loras), \
            recompute_context(replay):
        return _run_features(model, capture, layers, latents, torch.as_tensor(timestep), prompt_embeds)


def motion_feature_loss(predicted: MotionFeatures, target: MotionFeatures, spatial_weight: float = 2000.0,
                        temporal_weight: float = 2000.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``w_s · MSE(A_CA) + w_t · MSE(A_TSA)`` in float32; returns the total and its weighted parts."""
    for name in ("cross_attention", "temporal_attention"):
        a, b = getattr(predicted, name), getattr(target, name)
        if a.shape != b.shape:
            raise InputError(f"MotionMatcher: {name} maps of shape {tuple(a.shape)} and {tuple(b.shape)} differ.")
    def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.mean((a.float() - b.float()) ** 2)

    spatial = float(spatial_weight) * mse(predicted.cross_attention, target.cross_attention)
    temporal = float(temporal_weight) * mse(predicted.temporal_attention, target.temporal_attention)
    return spatial + temporal, {"loss_spatial": spatial, "loss_temporal": temporal}


def motion_matching_loss(model: "VideoModel", latents: torch.Tensor, prompt_embeds: torch.Tensor,
                         noise: torch.Tensor, timesteps: torch.Tensor, config: MotionMatcherConfig | None = None,
                         layers: FeatureLayers | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MotionMatcher's loss for given clean latents, noise and timesteps ``[B]``, with whatever adapters are
    live on ``model`` for the prediction (the extractor always runs the frozen base). For evaluation and
    benchmarks; training goes through :class:`MotionMatcher`."""
    from ..training import add_training_noise

    cfg = config or MotionMatcherConfig()
    layers = layers or motion_feature_layers(model, cfg.feature_downscale)
    timesteps = timesteps.to(latents.device).long().view(-1)
    z_t, target = add_training_noise(model, latents.float(), noise.to(latents.device).float(), timesteps)
    prediction = model.predict(z_t, timesteps, prompt_embeds)
    predicted_next = next_latents(model, z_t, prediction, timesteps, timesteps - 1)
    with torch.no_grad():
        true_next = next_latents(model, z_t, target, timesteps, timesteps - 1)
        target_features = extract_motion_features(model, true_next, timesteps - 1, prompt_embeds, layers)
    features = extract_motion_features(model, predicted_next, timesteps - 1, prompt_embeds, layers)
    return motion_feature_loss(features, target_features, cfg.spatial_loss_weight, cfg.temporal_loss_weight)


# ============================================================================================== one step
def next_latents(model: "VideoModel", z_t: torch.Tensor, model_output: torch.Tensor, t: torch.Tensor,
                 t_prev: torch.Tensor) -> torch.Tensor:
    """One deterministic sampler step ``z_t → z_{t_prev}`` (per batch item), in float32.

    DDIM with the model's training schedule (``clip_sample`` as its config says, like the reference's
    ``DDIMScheduler.step``); for flow-matching models the Euler step ``z + (σ' − σ) v``.
    """
    z = z_t.float()
    out = model_output.float()
    t = t.to(z.device).long().view(-1)
    t_prev = t_prev.to(z.device).long().view(-1)
    if model.prediction_type == "flow":
        total = float(model.scheduler.config.get("num_train_timesteps", 1000))
        dsigma = ((t_prev.float() - t.float()) / total).view(-1, 1, 1, 1, 1)
        return z + dsigma * out
    ac = model.scheduler.alphas_cumprod.to(device=z.device, dtype=torch.float32)
    final = torch.as_tensor(float(model.scheduler.final_alpha_cumprod), dtype=torch.float32, device=z.device)
    alpha_t = ac[t].view(-1, 1, 1, 1, 1)
    alpha_prev = torch.where(t_prev >= 0, ac[t_prev.clamp(min=0)], final).view(-1, 1, 1, 1, 1)
    config = model.scheduler.config
    clip = float(config.get("clip_sample_range", 1.0)) if config.get("clip_sample") else None
    z_prev, _ = ddim_step(z, out, alpha_t, alpha_prev, prediction_type=model.prediction_type, clip_sample=clip)
    return z_prev


# ============================================================================================== the method
class _PreviewGate(SamplingHook):
    """Previews while training: the LoRA set at ``schedule(t)`` for each step, as at inference."""

    label = "sampling"

    def __init__(self, schedule: StrengthSchedule) -> None:
        self.schedule = schedule

    def before_step(self, state: Any) -> None:
        set_lora_strength(state.model.denoiser, MOTION, self.schedule(state.timestep))

    def teardown(self, state: Any) -> None:
        set_lora_strength(state.model.denoiser, MOTION, 1.0)


@register_method("motionmatcher", "motion_matcher")
class MotionMatcher(TrainingMethod):
    """LoRA trained by motion feature matching, see the module docstring."""

    name = "motionmatcher"
    config_class = MotionMatcherConfig

    def __init__(self, config: MotionMatcherConfig | None = None) -> None:
        super().__init__(config or MotionMatcherConfig())
        self.config.validate()
        self.sets: list[str] = []
        self.layers: FeatureLayers | None = None
        self._capture: _FeatureCapture | None = None
        self._attachment: Any = None
        self._lora_layers: list[nn.Module] = []

    @property
    def noise_prior_steps(self) -> int:  # type: ignore[override]
        return self.config.noise_prior_steps if self.config.noise_prior > 0 else 0

    def defaults(self, num_videos: int) -> dict[str, Any]:
        # 16 frames at 384x384, 8 fps, 400 steps, checkpoints and validation every 50 (spec B.4, B.6)
        return {"steps": 400, "frames": 16, "fps": 8.0, "width": 384, "height": 384,
                "checkpoint_every": 50, "validate_every": 50}

    def default_noise_prior(self, num_videos: int) -> float:
        """p of previews and of the adapter's stored noise prior (0.3, the reference's inference default)."""
        return float(self.config.noise_prior)

    # ------------------------------------------------------------------ adapters
    def setup(self, model: "VideoModel", clips: Sequence[CachedClip], generator: torch.Generator) -> list[ParamGroup]:
        cfg = self.config
        self.layers = check_backbone(model, cfg.feature_downscale)
        denoiser = model.denoiser
        inject_lora(denoiser, MOTION, motion_matcher_targets(model), rank=cfg.rank, alpha=cfg.rank,
                    dropout=cfg.lora_dropout, init="gaussian", dtype=torch.float32, active=True)
        self.sets = [MOTION]
        self._lora_layers = list(lora_layers(denoiser).values())
        try:
            # the capture stays installed for the whole run; it is idle (the layers run their own processor,
            # bit for bit) except inside the extractor passes
            self._capture = _FeatureCapture(self.layers.names)
            self._capture.enabled = False
            self._attachment = attach(denoiser, [(r.name, r.module) for r in
                                                 self.layers.cross_attention + self.layers.temporal_attention],
                                      self._capture)
        except Exception:
            self.teardown(model)
            raise
        return [ParamGroup(MOTION, lora_parameters(denoiser, MOTION), lr=cfg.learning_rate,
                           weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm)]

    def sample_timesteps(self, model: "VideoModel", batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``t ~ U{min_timestep .. T−1}`` (the reference's ``min_timestep = 500``)."""
        total = int(model.scheduler.config.get("num_train_timesteps", 1000))
        return torch.randint(self.config.min_timestep, total, (batch_size,), generator=generator)

    # ------------------------------------------------------------------ one step
    def training_step(self, model: "VideoModel", batch: Batch) -> StepOutput:
        cfg = self.config
        capture, layers, loras = self._capture, self.layers, self._lora_layers
        if capture is None or layers is None:
            raise InputError("MotionMatcher.training_step needs setup() first.")
        noisy = batch.noisy_latents()  # RNG order as the reference: ε, then t
        embeds = batch.prompt_embeds
        t_prev = noisy.t - 1

        # trainable path: the LoRA model's prediction and the next latent it leads to
        prediction = model.predict(noisy.z_t, noisy.t, embeds)
        predicted_next = next_latents(model, noisy.z_t, prediction, noisy.t, t_prev)
        with torch.no_grad():
            true_next = next_latents(model, noisy.z_t, noisy.target, noisy.t, t_prev)

        # frozen extractor (LoRA layers disabled). Under gradient checkpointing its units are recomputed in
        # backward in this same state -- not with the LoRA on, as the reference does (B.9.1).
        with recompute_context(lambda: _frozen_extractor(model, capture, recording=False, layers=loras)), \
                _frozen_extractor(model, capture, layers=loras):
            predicted = _run_features(model, capture, layers, predicted_next.to(noisy.z_t.dtype), t_prev, embeds)
        with torch.no_grad(), _frozen_extractor(model, capture, layers=loras):
            target = _run_features(model, capture, layers, true_next.to(noisy.z_t.dtype), t_prev, embeds)

        loss, parts = motion_feature_loss(predicted, target, cfg.spatial_loss_weight, cfg.temporal_loss_weight)
        # the gradient now, with the LoRA on again as in the trainable pass it flows back into
        batch.backward(loss, MOTION)
        logs = {"loss_motion": loss.detach(), **{k: v.detach() for k, v in parts.items()},
                "timestep": float(noisy.t.float().mean())}
        return StepOutput(losses={MOTION: loss}, logs=logs, loss=loss.detach())

    # ------------------------------------------------------------------ inference view
    @contextlib.contextmanager
    def preview_context(self, model: "VideoModel") -> Iterator[None]:
        set_active_lora(model.denoiser, self.sets)
        try:
            yield
        finally:
            set_lora_strength(model.denoiser, MOTION, 1.0)

    def preview_hooks(self, model: "VideoModel") -> list[SamplingHook]:
        """Previews apply the LoRA only for ``t >= min_timestep``, as inference does."""
        return [_PreviewGate(motion_matcher_schedule(self.config.min_timestep))]

    # ------------------------------------------------------------------ checkpoints
    def state_tensors(self, model: "VideoModel") -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for layer, (a, b) in lora_weights(model.denoiser, MOTION).items():
            out[f"lora.{MOTION}.{layer}.lora_A.weight"] = a
            out[f"lora.{MOTION}.{layer}.lora_B.weight"] = b
        return out

    def load_state_tensors(self, model: "VideoModel", tensors: Mapping[str, torch.Tensor]) -> None:
        prefix = f"lora.{MOTION}."
        layers: dict[str, list[torch.Tensor | None]] = {}
        for key, value in tensors.items():
            if not key.startswith(prefix) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
                raise InputError(f"unexpected tensor {key!r} in a MotionMatcher checkpoint.")
            layer, which = key[len(prefix):-len(".lora_A.weight")], key[-len("A.weight")]
            layers.setdefault(layer, [None, None])[0 if which == "A" else 1] = value
        if any(v is None for pair in layers.values() for v in pair):
            raise InputError("the MotionMatcher checkpoint misses an A or B matrix of a LoRA layer.")
        load_lora_weights(model.denoiser, MOTION, {k: (v[0], v[1]) for k, v in layers.items()})

    def build_adapter(self, model: "VideoModel", *, steps: int, training_config: dict[str, Any],
                      clips: Sequence[CachedClip]) -> MotionLoRA:
        cfg = self.config
        lora = LoraSet(name=MOTION, role=ROLE_MOTION, rank=cfg.rank, alpha=float(cfg.rank),
                       weights=lora_weights(model.denoiser, MOTION))
        inverted = tuple(c.inverted.float().cpu() for c in clips if c.inverted is not None)
        info: dict[str, Any] = {}
        if inverted:
            info = {"p": cfg.noise_prior, "steps": cfg.noise_prior_steps,
                    "clips": [{"video": c.video_index, "index": c.index} for c in clips],
                    "latent_shape": list(inverted[0].shape), "prompt": "", "scheduler": "ddim"}
        layers = self.layers
        return MotionLoRA(
            sets=(lora,), method=self.name, family=model.family, base_model=model.base_model, steps=steps,
            training_config=training_config, strength=1.0, appearance_strength=0.0,
            strength_schedule=motion_matcher_schedule(cfg.min_timestep), noise_prior=inverted,
            noise_prior_info=info,
            extra={"videos": len({c.video_index for c in clips}), "prompts": sorted({c.prompt for c in clips}),
                   "feature_block": layers.block if layers else None,
                   "feature_downscale": layers.downscale if layers else None})

    def teardown(self, model: "VideoModel") -> None:
        if self._attachment is not None:
            self._attachment.remove()
        self._attachment = None
        self._capture = None
        self._lora_layers = []
        remove_lora(model.denoiser, self.sets)
        self.sets = []


def train_motion_matcher(
    model: "VideoModel",
    videos: Sequence["VideoSource | str | os.PathLike | torch.Tensor"],
    prompt: str | Sequence[str],
    *,
    config: MotionMatcherConfig | None = None,
    training: "TrainingConfig | None" = None,
    resume: "str | os.PathLike | None" = None,
    progress: Any = None,
    cancel: Any = None,
    accelerator: Any = None,
) -> "TrainingResult":
    """Train MotionMatcher on ``videos`` (usually one) described by ``prompt``.

    The backbone is checked before anything is encoded. Unless ``training`` says otherwise, only the first
    window of each video is used (the reference's ``SingleVideoDataset`` returns chunk 0) and previews are
    made as the reference validates: CFG 12, the noise prior p of ``config``, LoRA only for ``t >= 500``.
    """
    from ..training import PreviewConfig, TrainingConfig, VideoSource, train

    method = MotionMatcher(config)
    check_backbone(model, method.config.feature_downscale)
    sources = [v if isinstance(v, VideoSource) else VideoSource(frames=v) if torch.is_tensor(v) else VideoSource(path=v)
               for v in videos]
    if not sources:
        raise InputError("No training video given: give the video whose motion MotionMatcher should learn.")
    if isinstance(prompt, str) and not prompt.strip():
        raise InputError("The prompt is empty: describe what the reference video shows (e.g. 'A bear is walking "
                         "on rocks.').")
    if training is None:
        training = TrainingConfig(windows="first", preview=PreviewConfig(
            cfg=12.0, noise_prior=method.default_noise_prior(len(sources))))
    return train(model, method, sources, prompt, training, resume=resume, progress=progress, cancel=cancel,
                 accelerator=accelerator)
