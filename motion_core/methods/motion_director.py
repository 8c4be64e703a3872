"""MotionDirector: Motion Customization of Text-to-Video Diffusion Models (Zhao et al., ECCV 2024).

Dual-path LoRAs decouple appearance from motion
(reference/motion_director_and_custom_motion.md §1; numbers from the reference configs).

* **Spatial path** -- one *spatial LoRA per training video* on the spatial self-attention (``attn1``
  q/k/v/out) and feed-forward of every spatial transformer (not the text cross-attention). It is trained
  on *one random frame* of the clip with every temporal module bypassed (the family's
  ``single_frame_mode``), so it can only learn what a single frame shows: the appearance.
* **Temporal path** -- one *temporal LoRA*, shared by all videos, on every temporal transformer (temporal
  attention ``attn1``/``attn2`` q/k/v/out and feed-forward; UNet3D: ``transformer_in`` + all
  ``temp_attentions``; AnimateDiff: every motion module). It is trained on the whole clip with the
  video's spatial LoRA switched on but *not updated* by this path, so appearance is already explained and
  the temporal LoRA is pushed toward motion. In 20% of the steps the spatial path is skipped and every
  spatial LoRA is switched off for the temporal pass (a reference-code detail, not in the paper).
* **On a DiT (Wan)** frames mix only inside each block's joint self-attention, so both paths adapt the same
  layers (self-attention ``attn1`` q/k/v/out and feed-forward of every block, chosen by the backbone:
  ``WanVideoModel.motion_lora_targets``) as two named LoRAs; the spatial path sees single latent frames
  (``single_frame_mode``), the temporal path whole clips, and the loss is on the flow (velocity) target.
  Wan 2.2 A14B has two experts (high-noise / low-noise transformers, switched at the boundary timestep):
  every LoRA set spans the same layers of *both* experts (layer names prefixed ``high_noise.`` /
  ``low_noise.``, :func:`~motion_core.adapters.lora.lora_root`). A training step's timestep selects the
  expert that runs, so that expert's half of each set learns; the other half simply gets no gradient that
  step (AdamW skips it, no weight decay either). Over the run both experts see their own timestep ranges,
  as at sampling, where the adapter is active on both.
* **Appearance-debiased temporal loss** -- ``L_T = L_org + L_ad`` with
  ``L_ad = mean((debias(ε̂) − debias(ε))²)``, ``debias(x)_f = √(β²+1)·x_f − β·x_anchor`` and a random
  anchor frame (β = 1).
* **Inference** -- only the temporal LoRA is kept (``MotionLoRA`` strength), optionally a spatial LoRA with
  its own strength, and the *noise prior*: ``z_T = √p·z_inv + √(1−p)·ε`` from the DDIM inversion of the
  training clip, computed once here and stored in the adapter file.

Deliberate differences from the reference implementation (also listed in the README):

1. *Gradients at one point.* We take ``∂L_S/∂θ_spatial`` and ``∂L_T/∂θ_temporal`` with ``autograd.grad``
   before any optimizer step. The reference steps the spatial optimizer between the two backward passes,
   so under gradient checkpointing its temporal backward recomputes activations with the already-updated
   spatial LoRA -- a mixed-point gradient (spec §1.5 step 6, §1.9.4) -- and in pure fp32 without
   checkpointing it crashes on an in-place modification.
2. *One training mode throughout.* The reference trains in train mode until its first validation preview
   and in eval mode afterwards (spec §1.9.3). We keep the frozen base model in eval mode (its own dropout
   off, as for most of the reference's run) and the LoRA dropout on, for the whole run.
3. *LoRA dropout on the LoRA input* (peft) instead of its output; identical at inference.
4. *One spatial LoRA per video, not per 16-frame chunk*: a long video gives several training windows that
   share its spatial LoRA (the reference makes every chunk a "video", issue #11), and a trailing partial
   window is dropped instead of training on a shorter clip.
5. *Seeded*: the reference ignores ``seed``; our runs are reproducible and resumable bit for bit.
6. Clips are center-cropped to the training size (the reference stretches them, spec §1.4).
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import torch

from ..adapters.lora import (
    ROLE_APPEARANCE,
    ROLE_MOTION,
    LoraSet,
    MotionLoRA,
    inject_lora,
    lora_parameters,
    lora_weights,
    load_lora_weights,
    remove_lora,
    set_active_lora,
    denoiser_modules,
    lora_root,
    lora_targets,
)
from ..errors import InputError
from ..losses import diffusion_mse, temporal_loss
from ..training import Batch, CachedClip, ParamGroup, StepOutput, TrainingMethod
from . import register_method

if TYPE_CHECKING:  # pragma: no cover
    from ..backbones.base import VideoModel

__all__ = ["MotionDirector", "MotionDirectorConfig", "TEMPORAL", "spatial_name"]

TEMPORAL = "temporal"


def spatial_name(video_index: int) -> str:
    """Name of the spatial LoRA of training video ``video_index``."""
    return f"spatial_{video_index}"


@dataclass
class MotionDirectorConfig:
    """Hyper-parameters; defaults are the reference configs (``config_single_video.yaml`` /
    ``config_multi_videos.yaml``)."""

    rank: int = 32
    lora_dropout: float = 0.1
    learning_rate: float = 5e-4
    #: learning rate of the spatial LoRAs (None: the same as the temporal one, as in the reference)
    spatial_learning_rate: float | None = None
    #: AdamW weight decay (None: 1e-2 for one video, 1e-4 for several, as the reference configs)
    weight_decay: float | None = None
    train_spatial: bool = True
    train_temporal: bool = True
    #: probability of skipping the spatial path and switching every spatial LoRA off for the temporal pass
    spatial_drop_probability: float = 0.2
    #: β of the appearance-debiased loss (α = √(β²+1)); 0 turns the debiased term into plain MSE
    debias_beta: float = 1.0
    #: DDIM inversion steps for the stored noise prior (0: store none)
    noise_prior_steps: int = 50
    #: default noise prior p written into the adapter (None: 0.5 for one video, 0 for several)
    noise_prior: float | None = None
    #: optional gradient clipping per LoRA set (the reference does not clip)
    max_grad_norm: float | None = None

    def validate(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise InputError(f"LoRA rank must be a positive integer, got {self.rank!r}.")
        for name in ("learning_rate", "spatial_learning_rate"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise InputError(f"{name.replace('_', ' ')} must be a positive number, got {value!r}.")
        if self.weight_decay is not None and not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise InputError(f"weight decay must be >= 0, got {self.weight_decay!r}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise InputError(f"LoRA dropout must be in [0, 1), got {self.lora_dropout}.")
        if not 0.0 <= self.spatial_drop_probability <= 1.0:
            raise InputError(f"spatial drop probability must be in [0, 1], got {self.spatial_drop_probability}.")
        if not (self.train_spatial or self.train_temporal):
            raise InputError("MotionDirector needs the spatial path, the temporal path or both.")
        if isinstance(self.noise_prior_steps, bool) or not isinstance(self.noise_prior_steps, int) or self.noise_prior_steps < 0:
            raise InputError(f"noise prior steps must be an integer >= 0, got {self.noise_prior_steps!r}.")
        if self.noise_prior is not None and not 0.0 <= self.noise_prior <= 1.0:
            raise InputError(f"noise prior p must be in [0, 1], got {self.noise_prior}.")


_KEY = re.compile(r"^lora\.([A-Za-z][A-Za-z0-9_]*)\.(.+)\.lora_([AB])\.weight$")


@register_method("motiondirector", "motion_director")
class MotionDirector(TrainingMethod):
    """Dual-path LoRA training (spatial per video + shared temporal), see the module docstring."""

    name = "motiondirector"
    config_class = MotionDirectorConfig

    def __init__(self, config: MotionDirectorConfig | None = None) -> None:
        super().__init__(config or MotionDirectorConfig())
        self.config.validate()
        self.sets: list[str] = []
        self.num_videos = 0

    @property
    def noise_prior_steps(self) -> int:  # type: ignore[override]
        return self.config.noise_prior_steps

    def defaults(self, num_videos: int) -> dict[str, Any]:
        single = num_videos <= 1
        return {"steps": 150 if single else 500, "frames": 16, "fps": 8.0, "width": 384, "height": 384,
                "checkpoint_every": 50 if single else 100, "validate_every": 50 if single else 500}

    def weight_decay(self, num_videos: int) -> float:
        if self.config.weight_decay is not None:
            return float(self.config.weight_decay)
        return 1e-2 if num_videos <= 1 else 1e-4

    def default_noise_prior(self, num_videos: int) -> float:
        if self.config.noise_prior is not None:
            return float(self.config.noise_prior)
        return 0.5 if num_videos <= 1 else 0.0

    # ------------------------------------------------------------------ adapters
    def setup(self, model: "VideoModel", clips: Sequence[CachedClip], generator: torch.Generator) -> list[ParamGroup]:
        cfg = self.config
        videos = sorted({c.video_index for c in clips})
        self.num_videos = len(videos)
        denoiser = lora_root(model)
        wd = self.weight_decay(self.num_videos)
        groups: list[ParamGroup] = []
        self.sets = []
        try:
            # the temporal LoRA first, then the spatial ones, as the reference injects them
            if cfg.train_temporal:
                inject_lora(denoiser, TEMPORAL, lora_targets(model, "temporal"), rank=cfg.rank, alpha=cfg.rank,
                            dropout=cfg.lora_dropout, init="gaussian", dtype=torch.float32, active=False)
                self.sets.append(TEMPORAL)
                groups.append(ParamGroup(TEMPORAL, lora_parameters(denoiser, TEMPORAL), lr=cfg.learning_rate,
                                         weight_decay=wd, max_grad_norm=cfg.max_grad_norm))
            if cfg.train_spatial:
                targets = lora_targets(model, "spatial")
                for k in videos:
                    name = spatial_name(k)
                    inject_lora(denoiser, name, targets, rank=cfg.rank, alpha=cfg.rank, dropout=cfg.lora_dropout,
                                init="gaussian", dtype=torch.float32, active=False)
                    self.sets.append(name)
                    groups.append(ParamGroup(name, lora_parameters(denoiser, name),
                                             lr=cfg.spatial_learning_rate or cfg.learning_rate, weight_decay=wd,
                                             max_grad_norm=cfg.max_grad_norm))
        except Exception:
            remove_lora(denoiser, self.sets)
            self.sets = []
            raise
        return groups

    def _only_trainable(self, model: "VideoModel", name: str) -> None:
        """Only set ``name`` records gradients in the next forward: the other sets act as frozen weights
        (the spatial LoRA in the temporal pass is "shared but frozen"), which also spares the autograd
        memory their weight gradients would need."""
        for other in self.sets:
            for p in lora_parameters(lora_root(model), other):
                p.requires_grad_(other == name)

    # ------------------------------------------------------------------ one step
    def training_step(self, model: "VideoModel", batch: Batch) -> StepOutput:
        cfg = self.config
        spatial = spatial_name(batch.clip.video_index)
        # RNG order as the reference: m_drop -> noise -> t -> frame i -> anchor a (spec §1.5)
        drop_spatial = batch.rand() < cfg.spatial_drop_probability
        noisy = batch.noisy_latents()
        embeds = batch.prompt_embeds
        frames = batch.num_frames
        losses: dict[str, torch.Tensor] = {}
        logs: dict[str, torch.Tensor] = {}

        if cfg.train_spatial and not drop_spatial:
            # spatial path: this video's spatial LoRA alone, one random frame, temporal modules bypassed
            set_active_lora(lora_root(model), [spatial])
            self._only_trainable(model, spatial)
            i = batch.randint(frames)
            with model.single_frame_mode():
                pred_frame = model.predict(noisy.z_t[:, :, i:i + 1], noisy.t, embeds)
            losses[spatial] = diffusion_mse(pred_frame, noisy.target[:, :, i:i + 1])
            logs["loss_spatial"] = losses[spatial]
            # the spatial LoRA learns only from L_S -- its gradient now, while this configuration is live
            batch.backward(losses[spatial], spatial)

        if cfg.train_temporal:
            # temporal path: the whole clip; the spatial LoRA of this video runs (frozen) unless dropped
            active = [TEMPORAL] + ([spatial] if cfg.train_spatial and not drop_spatial else [])
            set_active_lora(lora_root(model), active)
            self._only_trainable(model, TEMPORAL)
            pred = model.predict(noisy.z_t, noisy.t, embeds)
            anchor = batch.randint(frames)
            l_t, parts = temporal_loss(pred, noisy.target, anchor, cfg.debias_beta)
            losses[TEMPORAL] = l_t
            logs["loss_temporal"] = l_t
            # the temporal LoRA learns only from L_T (the spatial LoRA is frozen here, so it gets nothing)
            batch.backward(l_t, TEMPORAL)
            logs.update(parts)
        headline = losses.get(TEMPORAL, losses.get(spatial))
        return StepOutput(losses=losses, logs=logs, loss=headline.detach() if headline is not None else None)

    # ------------------------------------------------------------------ inference view
    @contextlib.contextmanager
    def preview_context(self, model: "VideoModel") -> Iterator[None]:
        """Previews show what users get by default: the temporal LoRA alone at strength 1 (the reference's
        video configs preview with spatial scale 0)."""
        set_active_lora(lora_root(model), [TEMPORAL] if TEMPORAL in self.sets else self.sets[:1])
        try:
            yield
        finally:
            set_active_lora(lora_root(model), [])

    # ------------------------------------------------------------------ checkpoints
    def state_tensors(self, model: "VideoModel") -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name in self.sets:
            for layer, (a, b) in lora_weights(lora_root(model), name).items():
                out[f"lora.{name}.{layer}.lora_A.weight"] = a
                out[f"lora.{name}.{layer}.lora_B.weight"] = b
        return out

    def load_state_tensors(self, model: "VideoModel", tensors: Mapping[str, torch.Tensor]) -> None:
        per_set: dict[str, dict[str, list[torch.Tensor]]] = {}
        for key, value in tensors.items():
            m = _KEY.match(key)
            if m is None:
                raise InputError(f"unexpected tensor {key!r} in a MotionDirector checkpoint.")
            name, layer, which = m.groups()
            per_set.setdefault(name, {}).setdefault(layer, [None, None])[0 if which == "A" else 1] = value
        if set(per_set) != set(self.sets):
            raise InputError(f"the checkpoint holds LoRA sets {sorted(per_set)}, this run trains {sorted(self.sets)}.")
        for name, layers in per_set.items():
            load_lora_weights(lora_root(model), name, {k: (v[0], v[1]) for k, v in layers.items()})

    def build_adapter(self, model: "VideoModel", *, steps: int, training_config: dict[str, Any],
                      clips: Sequence[CachedClip]) -> MotionLoRA:
        cfg = self.config
        sets = tuple(
            LoraSet(name=name, role=ROLE_MOTION if name == TEMPORAL else ROLE_APPEARANCE, rank=cfg.rank,
                    alpha=float(cfg.rank), weights=lora_weights(lora_root(model), name))
            for name in self.sets)
        inverted = tuple(c.inverted.float().cpu() for c in clips if c.inverted is not None)
        # two-expert models (Wan 2.2 A14B): every layer name starts with one of these expert names
        modules = denoiser_modules(model)
        experts = {"experts": [prefix for prefix, _ in modules]} if len(modules) > 1 else {}
        info: dict[str, Any] = {}
        if inverted:
            shape = list(inverted[0].shape)
            info = {"p": self.default_noise_prior(self.num_videos), "steps": cfg.noise_prior_steps,
                    "clips": [{"video": c.video_index, "index": c.index} for c in clips], "latent_shape": shape,
                    "prompt": "",
                    # Wan (flow matching) inverts along the flow ODE (noise_prior.register_inversion)
                    "scheduler": "flow" if model.prediction_type == "flow" else "ddim"}
        return MotionLoRA(
            sets=sets, method=self.name, family=model.family, base_model=model.base_model, steps=steps,
            training_config=training_config, strength=1.0, appearance_strength=0.0,
            noise_prior=inverted, noise_prior_info=info,
            extra={"videos": self.num_videos, "prompts": sorted({c.prompt for c in clips}),
                   **experts})

    def teardown(self, model: "VideoModel") -> None:
        remove_lora(lora_root(model), self.sets)
        self.sets = []
