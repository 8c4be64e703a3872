"""Customizing Motion in Text-to-Video Diffusion Models (NewMove; arXiv 2312.04966; adobe-research/custom_motion).

No LoRA: a **partial fine-tune** of the denoiser, with the new motion bound to an *identifier* word.

* **Trainable set** -- every parameter of every temporal attention transformer (UNet3D: ``transformer_in``
  and all ``temp_attentions``: norms, projections, both frame attentions, feed-forward), every temporal
  convolution (``temp_convs``) and the K/V projections of the spatial *cross*-attention (``attn2.to_k`` /
  ``attn2.to_v``, Custom-Diffusion style: how the text -- the identifier -- is read). Everything else is
  frozen, the text encoder included. On ZeroScope/ModelScope: 570,882,176 of 1,411,233,860 parameters
  (temporal 278,431,616, temp_convs 266,891,520, cross K/V 25,559,040). AnimateDiff has no temporal
  convolutions: its trainable set is the motion modules (all parameters) and the cross-attention K/V.
* **Identifier** -- the captions of the training videos contain a rare word (default ``sks``, the paper's
  V*), e.g. "A woman doing the sks sign."; no embedding is learned, the frozen text encoder's features of
  the word are what the cross-attention K/V learn to read. At inference the word in a prompt calls up the
  motion.
* **Prior ("regularization") videos** -- videos of related, generic motions with their own captions
  (without the identifier), DreamBooth-style: every step pairs one training clip with one prior clip in one
  batch, and the loss is ``L = L_instance + λ·L_prior`` with ``λ = 0.5`` (plain ε-MSE each, float32). The
  prior term keeps the fine-tuned layers from forgetting other motions.
* **High-noise timestep sampling** -- ``p(t) ∝ 1 − 0.5·cos(π t / T)`` (the reference's "high-level"
  sampling; E[t] ≈ 600.9), drawn independently for the training and the prior item
  (:mod:`motion_core.timesteps`; ``"uniform"`` and ``"low"`` are the other choices).
* **Optimizer** -- AdamW, lr 5e-6, betas (0.9, 0.999), weight decay 1e-2, constant schedule, gradient
  clipping at norm 1.0 over all trained tensors together.
* **Artifact** -- a :class:`~motion_core.adapters.weight_delta.WeightDelta`: ``Δ = W_trained − W_base`` of the
  trained tensors only (safetensors + metadata), applied by the Apply Motion Adapter node as
  ``W_base + s·Δ`` for one sampling run, the base restored bit for bit afterwards.

Captions without the identifier (decision): a caption that lacks the word gets it appended
(``"a person waving"`` → ``"a person waving sks"``, a trailing period kept at the end) with a warning that
names the caption -- training on such a caption would bind the motion to ordinary words instead. Set
``missing_identifier="error"`` to refuse such captions instead. Prior captions that contain the identifier
only draw a warning (they teach the word the prior motions).

Deliberate differences from the reference implementation (also listed in the README):

1. *Prior videos are optional.* The reference cycles the training videos to the length of the prior set,
   so without prior videos its dataset is empty and construction crashes (modulo by zero, spec §2.3). Here
   training without priors works -- plain ε-MSE on the training clips -- with a warning that the prior
   term is what keeps the model's other motions intact.
2. *Bucketing with width and height in the right order.* The reference passes ``(h, w)`` where its
   bucketing expects ``(w, h)``, so a 16:9 landscape clip trains at 256 wide × 384 high (spec §2.3).
   :func:`bucket_size` keeps the reference's rule with the orientation fixed (16:9 → 384 × 256), used when
   no training size is given (:func:`train_custom_motion`).
3. *Prior videos of another size are resized* to the training size (center crop), as the training videos
   are; the reference needs both to come out of bucketing at the same size (they are concatenated on the
   batch axis). Prior clips shorter than the training window are padded by repeating their last frame (as
   the reference does).
4. *Cached latents, seeded runs.* Like every MotionKit training method, clips are VAE-encoded once (every
   full window of every video, one posterior sample) instead of re-decoding a random window every step,
   runs are seeded and resumable bit for bit, and the prior clip of a step is drawn from the trainer's
   generator.
5. *The artifact is a weight delta*, not a full pipeline copy (the reference saves ~5.6 GB of fp32 UNet per
   checkpoint, with an fp16 cast that is a no-op, spec §2.5).
6. Known reference slips not reproduced: ``extra_unet_params`` (silently ignored there) is not offered; the
   class latents are always the prior clips' own (the reference's cached-latents path encodes the instance
   pixels twice, spec §2.9).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..adapters.weight_delta import DELTA_DTYPES, WeightDelta
from ..errors import InputError, TrainingError, VideoError
from ..losses import diffusion_mse
from ..timesteps import TimestepSampler, make_timestep_sampler
from ..training import (
    Batch,
    CachedClip,
    Clip,
    ParamGroup,
    StepOutput,
    TrainingMethod,
    VideoSource,
    add_training_noise,
    build_clips,
    cache_clips,
    clips_fingerprint,
)
from . import register_method

if TYPE_CHECKING:  # pragma: no cover
    from ..backbones.base import VideoModel
    from ..training import TrainingConfig, TrainingResult

log = logging.getLogger(__name__)

__all__ = [
    "CustomMotion",
    "CustomMotionConfig",
    "FINETUNE",
    "TRAINABLE_MODULES",
    "add_identifier",
    "apply_identifier",
    "bucket_size",
    "has_identifier",
    "prior_preservation_loss",
    "trainable_parameters",
    "train_custom_motion",
    "videos_in_folder",
]

#: the one optimizer group (the reference clips the gradient norm over all trained tensors together)
FINETUNE = "finetune"
#: the reference's ``trainable_modules`` names
TRAINABLE_MODULES = ("temporal", "temp_convs", "cross")
_GROUP_NAMES = {"temporal": "temporal", "temp_convs": "temp_convs", "cross": "cross_kv"}
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".gif")


# ============================================================================================== config
@dataclass
class CustomMotionConfig:
    """Hyper-parameters; defaults are the reference's ``config.yaml`` (spec §2.7)."""

    #: the word that names the motion in the captions (the paper's V*)
    identifier: str = "sks"
    #: a training caption without the identifier: "append" it (with a warning) or "error"
    missing_identifier: str = "append"
    #: which parts train: any of "temporal", "temp_convs", "cross"
    trainable_modules: tuple[str, ...] = TRAINABLE_MODULES
    learning_rate: float = 5e-6
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    #: gradient clipping over all trained tensors (None: off)
    max_grad_norm: float | None = 1.0
    #: λ of the prior-preservation loss
    prior_weight: float = 0.5
    #: "high" (p(t) ∝ 1 − a·cos(πt/T), the reference's "high-level"), "uniform" or "low"
    timestep_sampling: str = "high"
    #: a of the cosine-biased samplers
    sampling_amplitude: float = 0.5
    #: precision of the stored weight delta: float16, bfloat16 or float32
    delta_dtype: str = "float16"

    def validate(self) -> None:
        self.identifier = check_identifier(self.identifier)
        if self.missing_identifier not in ("append", "error"):
            raise InputError(f"missing_identifier must be 'append' or 'error', not {self.missing_identifier!r}.")
        modules = [self.trainable_modules] if isinstance(self.trainable_modules, str) else list(self.trainable_modules)
        unknown = [m for m in modules if m not in TRAINABLE_MODULES]
        if unknown or not modules:
            raise InputError(f"trainable_modules must be a non-empty selection of {', '.join(TRAINABLE_MODULES)}, "
                             f"got {self.trainable_modules!r}.")
        self.trainable_modules = tuple(dict.fromkeys(modules))
        if not (isinstance(self.learning_rate, (int, float)) and not isinstance(self.learning_rate, bool)
                and math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise InputError(f"learning rate must be a positive number, got {self.learning_rate!r} "
                             "(the reference uses 5e-6).")
        if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay)
                and self.weight_decay >= 0):
            raise InputError(f"weight decay must be >= 0, got {self.weight_decay!r}.")
        if self.max_grad_norm is not None and not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise InputError(f"max_grad_norm must be a positive number or None, got {self.max_grad_norm!r}.")
        if not (isinstance(self.prior_weight, (int, float)) and math.isfinite(self.prior_weight)
                and self.prior_weight >= 0):
            raise InputError(f"prior weight λ must be >= 0, got {self.prior_weight!r}.")
        if self.delta_dtype not in DELTA_DTYPES:
            raise InputError(f"delta_dtype must be one of {', '.join(DELTA_DTYPES)}, not {self.delta_dtype!r}.")
        self.sampler()  # checks the sampling name and amplitude
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]

    def sampler(self) -> TimestepSampler:
        return make_timestep_sampler(self.timestep_sampling, amplitude=self.sampling_amplitude)


# ============================================================================================== identifier
def check_identifier(identifier: Any) -> str:
    """The identifier must be one word (letters/digits, no spaces)."""
    if isinstance(identifier, int) and not isinstance(identifier, bool):
        identifier = str(identifier)  # e.g. "--option identifier=123" arrives as a number
    if not isinstance(identifier, str) or not identifier.strip():
        raise InputError("The identifier word is empty: give a rare word such as 'sks' that your captions use to "
                         "name the motion.")
    word = identifier.strip()
    if not re.fullmatch(r"[^\W_][\w'-]*", word):
        raise InputError(f"The identifier {identifier!r} must be one word (letters and digits, no spaces), e.g. "
                         "'sks'.")
    return word


def has_identifier(caption: str, identifier: str) -> bool:
    """Whether ``identifier`` occurs in ``caption`` as a whole word (case-insensitive: CLIP lower-cases)."""
    pattern = rf"(?<![\w]){re.escape(identifier)}(?![\w])"
    return re.search(pattern, caption, flags=re.IGNORECASE) is not None


def add_identifier(caption: str, identifier: str) -> str:
    """``"a person waving."`` → ``"a person waving sks."`` (empty caption → the identifier alone)."""
    text = caption.strip()
    end = ""
    while text and text[-1] in ".!?":
        end = text[-1] + end
        text = text[:-1].rstrip()
    return f"{text} {identifier}{end}".strip()


def apply_identifier(captions: Sequence[str], identifier: str, policy: str = "append",
                     labels: Sequence[str] | None = None) -> list[str]:
    """Every caption with the identifier: unchanged when it has it; else appended with a warning
    (``policy="append"``) or an InputError (``policy="error"``)."""
    identifier = check_identifier(identifier)
    out = []
    for i, caption in enumerate(captions):
        label = labels[i] if labels else f"caption {i + 1}"
        if not isinstance(caption, str):
            raise InputError(f"The {label} is not text.")
        if has_identifier(caption, identifier):
            out.append(caption)
            continue
        if policy == "error":
            raise InputError(
                f"The {label} {caption!r} does not contain the identifier word '{identifier}'. Customizing Motion "
                f"binds the motion to that word: write it into every caption (e.g. 'a person doing the {identifier} "
                "motion'), set the identifier to the word your captions use, or let MotionKit append it.")
        fixed = add_identifier(caption, identifier)
        log.warning("The %s %r lacks the identifier word '%s'; training on %r instead (write the word where it "
                    "reads naturally, e.g. 'a person doing the %s motion').", label, caption, identifier, fixed,
                    identifier)
        out.append(fixed)
    return out


# ============================================================================================== data helpers
def bucket_size(source_width: int, source_height: int, width: int = 384, height: int = 384,
                multiple: int = 8) -> tuple[int, int]:
    """The training size for a ``source_width x source_height`` video (the reference's bucketing, spec §1.4 /
    §2.3, with width and height in the right order -- the reference swaps them).

    A square video trains at ``width x height``. Otherwise the side along the video's longer axis keeps the
    target and the other side becomes whichever of ``target − 64`` / ``target − 128`` (at least 192, or half
    the target for targets under 384) is closest to the aspect-correct length; sides are rounded to
    ``multiple``. 16:9 at 384² → 384 x 256, 4:3 → 384 x 320, 9:16 → 256 x 384.
    """
    for name, value in (("source width", source_width), ("source height", source_height), ("width", width),
                        ("height", height), ("multiple", multiple)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InputError(f"{name} must be a positive integer, got {value!r}.")

    def short_side(target: int, ideal: float) -> int:
        floor = min(192, max(multiple, target // 2))
        candidates = [max(floor, abs(target - 64)), max(floor, abs(target - 128))]
        best = min(candidates, key=lambda c: abs(c - ideal))  # the first wins a tie, as in the reference
        return max(multiple, int(round(best / multiple)) * multiple)

    if source_width > source_height:
        return width, short_side(height, height * source_height / source_width)
    if source_height > source_width:
        return short_side(width, width * source_width / source_height), height
    return width, height


def videos_in_folder(folder: str | os.PathLike, caption: str | None = None) -> list[VideoSource]:
    """The video files of ``folder`` (sorted by name); ``<video>.txt`` beside a video is its caption, else
    ``caption`` (None: no caption, the run's prompt applies)."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise InputError(f"Video folder {str(folder)!r} does not exist or is not a folder.")
    files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES),
                   key=lambda p: p.name.lower())
    if not files:
        raise InputError(f"Video folder {path} holds no video files ({', '.join(VIDEO_SUFFIXES)}).")
    out = []
    for f in files:
        side = f.with_suffix(".txt")
        text = " ".join(side.read_text(encoding="utf-8").split()) if side.is_file() else None
        out.append(VideoSource(path=str(f), caption=text or caption))
    return out


def _source_size(source: VideoSource) -> tuple[int, int]:
    if source.frames is not None:
        return int(source.frames.shape[2]), int(source.frames.shape[1])
    from ..video import probe_video

    info = probe_video(str(source.path))
    return int(info.width), int(info.height)


def _pad_frames(frames: torch.Tensor, count: int) -> torch.Tensor:
    if frames.shape[0] >= count:
        return frames
    return torch.cat([frames, frames[-1:].expand(count - frames.shape[0], *frames.shape[1:])])


# ============================================================================================== trainable set
def trainable_parameters(model: "VideoModel", modules: Sequence[str] = TRAINABLE_MODULES
                         ) -> dict[str, dict[str, nn.Parameter]]:
    """The parameters Customizing Motion trains, per part: ``{"temporal": {name: p}, "temp_convs": {...},
    "cross_kv": {...}}`` (full diffusers names in ``model.denoiser``), in module order.

    * ``temporal``: every parameter under every temporal transformer (the modules whose attention runs
      over frames: UNet3D ``transformer_in`` + ``temp_attentions``; AnimateDiff motion modules);
    * ``temp_convs``: every parameter of the other frame-mixing modules (UNet3D ``TemporalConvLayer``);
    * ``cross_kv``: ``to_k`` / ``to_v`` of every spatial cross-attention (``attn2`` reading the text).

    Works on the meta device (no weights needed).
    """
    unknown = [m for m in modules if m not in TRAINABLE_MODULES]
    if unknown:
        raise InputError(f"unknown trainable module group(s) {unknown}; use {', '.join(TRAINABLE_MODULES)}.")
    denoiser = model.denoiser
    named = dict(denoiser.named_modules())
    layers = model.layers()
    transformers = list(dict.fromkeys(r.transformer for r in layers if r.temporal))
    out: dict[str, dict[str, nn.Parameter]] = {}

    def under(prefix: str) -> dict[str, nn.Parameter]:
        return {f"{prefix}.{n}": p for n, p in named[prefix].named_parameters()}

    if "temporal" in modules:
        group: dict[str, nn.Parameter] = {}
        for name in transformers:
            group.update(under(name))
        out["temporal"] = group
    if "temp_convs" in modules:
        group = {}
        inside = tuple(t + "." for t in transformers)
        for name, _ in model.temporal_modules():
            if name in transformers or name.startswith(inside):
                continue
            group.update(under(name))
        out["temp_convs"] = group
    if "cross" in modules:
        group = {}
        for ref in model.cross_attention_layers():
            for proj in ("to_k", "to_v"):
                if f"{ref.name}.{proj}" in named:
                    group.update(under(f"{ref.name}.{proj}"))
        out["cross_kv"] = group
    return out


# ============================================================================================== loss
def prior_preservation_loss(instance_pred: torch.Tensor, instance_target: torch.Tensor,
                            prior_pred: torch.Tensor | None = None, prior_target: torch.Tensor | None = None,
                            prior_weight: float = 0.5) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L = mean((ε̂_inst − ε_inst)²) + λ · mean((ε̂_prior − ε_prior)²)`` in float32 (DreamBooth's prior
    preservation; λ = 0.5 in the reference). Without a prior item it is the instance term alone.
    Returns the total and its parts (for logging)."""
    l_inst = diffusion_mse(instance_pred, instance_target)
    if prior_pred is None:
        return l_inst, {"loss_instance": l_inst}
    if prior_target is None:
        raise InputError("a prior prediction needs its target.")
    l_prior = diffusion_mse(prior_pred, prior_target)
    return l_inst + float(prior_weight) * l_prior, {"loss_instance": l_inst, "loss_prior": l_prior}


# ============================================================================================== method
@register_method("custom_motion", "customizing_motion", "newmove", "custommotion")
class CustomMotion(TrainingMethod):
    """Partial fine-tuning with an identifier word and prior videos, see the module docstring.

    ``prior_videos`` (VideoSource, file paths or ``[F,H,W,3]`` frames) and ``prior_prompt`` (one caption for
    all, one per video; a VideoSource's own caption wins) are the regularization set; :meth:`set_priors`
    sets them later.
    """

    name = "custom_motion"
    config_class = CustomMotionConfig

    def __init__(self, config: CustomMotionConfig | None = None, *,
                 prior_videos: Sequence[VideoSource | str | os.PathLike | torch.Tensor] = (),
                 prior_prompt: str | Sequence[str] | None = None) -> None:
        super().__init__(config or CustomMotionConfig())
        self.config.validate()
        self._sampler = self.config.sampler()
        self.set_priors(prior_videos, prior_prompt)
        self.prior_clips: list[Clip] = []
        self.prior_cache: list[CachedClip] = []
        self.prior_fingerprint = ""
        self.seed = 0
        self.groups: dict[str, list[str]] = {}
        self.params: dict[str, nn.Parameter] = {}
        self._base: dict[str, torch.Tensor] = {}
        self._flags: list[tuple[nn.Parameter, bool]] = []

    def set_priors(self, videos: Sequence[VideoSource | str | os.PathLike | torch.Tensor],
                   prompt: str | Sequence[str] | None = None) -> None:
        """The prior (regularization) videos and their caption(s)."""
        sources = [v if isinstance(v, VideoSource) else VideoSource(frames=v) if torch.is_tensor(v)
                   else VideoSource(path=v) for v in (videos or ())]
        prompts = [] if prompt is None else [prompt] if isinstance(prompt, str) else list(prompt)
        if sources and prompts and len(prompts) not in (1, len(sources)):
            raise InputError(f"{len(prompts)} prior captions for {len(sources)} prior videos: give one caption for "
                             "all, or one per prior video.")
        self.prior_sources = sources
        self.prior_prompts = prompts

    # ------------------------------------------------------------------ configuration
    def config_dict(self) -> dict[str, Any]:
        data = super().config_dict()
        # the prior data belongs to the run's identity: a resume with other prior videos is another run
        data["prior_videos"] = len(self.prior_sources)
        data["prior_data"] = self.prior_fingerprint
        return data

    def defaults(self, num_videos: int) -> dict[str, Any]:
        # reference config.yaml: 3000 steps, 16 frames at 24 fps, 384², checkpoints/validation every 500
        return {"steps": 3000, "frames": 16, "fps": 24.0, "width": 384, "height": 384,
                "checkpoint_every": 500, "validate_every": 500}

    def sample_timesteps(self, model: "VideoModel", batch_size: int, generator: torch.Generator) -> torch.Tensor:
        total = int(model.scheduler.config.get("num_train_timesteps", 1000))
        return self._sampler.sample(int(batch_size), total, generator)

    # ------------------------------------------------------------------ data
    def prepare(self, config: "TrainingConfig", videos: Sequence[VideoSource],
                prompt: str | Sequence[str]) -> tuple[list[VideoSource], str | Sequence[str]]:
        """Captions with the identifier (policy in the module docstring) and the prior clips at the run's
        frames / fps / size."""
        cfg = self.config
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if len(prompts) not in (1, len(videos)):
            raise InputError(f"{len(prompts)} prompts for {len(videos)} videos: give one prompt, or one per video.")
        captions = [v.caption or prompts[i if len(prompts) > 1 else 0] for i, v in enumerate(videos)]
        labels = [f"caption of {v.label(i)}" for i, v in enumerate(videos)]
        fixed = apply_identifier(captions, cfg.identifier, cfg.missing_identifier, labels)
        videos = [dataclasses.replace(v, caption=c) for v, c in zip(videos, fixed)]
        self.seed = int(config.seed)
        self.prior_clips = self._prior_clips(config)
        self.prior_fingerprint = clips_fingerprint(self.prior_clips) if self.prior_clips else ""
        if not self.prior_clips:
            log.warning(
                "Customizing Motion without prior videos: the fine-tuned temporal layers learn only your motion and "
                "may forget others (and absorb your videos' look). Give prior (regularization) videos of related, "
                "generic motions with captions without '%s' to keep the rest of the model intact.", cfg.identifier)
        return videos, prompt

    def _prior_clips(self, config: "TrainingConfig") -> list[Clip]:
        if not self.prior_sources:
            return []
        from ..video import load_video, resize_and_crop, resize_frames

        sources = []
        for i, source in enumerate(self.prior_sources):
            label = f"prior {source.label(i)}"
            caption = source.caption or (self.prior_prompts[i if len(self.prior_prompts) > 1 else 0]
                                         if self.prior_prompts else None)
            if not caption:
                raise InputError(f"The {label} has no caption: give prior captions (one for all prior videos or one "
                                 "per video) describing their motion without the identifier, e.g. 'a person "
                                 "waving'.")
            if has_identifier(caption, self.config.identifier):
                log.warning("The caption of %s (%r) contains the identifier '%s': prior captions normally describe "
                            "the generic motion without it.", label, caption, self.config.identifier)
            # decode / resample / resize here so a short prior can be padded (the reference repeats its last
            # frame) and a prior of another size is resized like the training videos
            if source.path is not None:
                frames = load_video(str(source.path), fps=config.fps, width=config.width, height=config.height,
                                    resize_mode=config.resize).frames
            elif source.frames is not None:
                x = source.frames
                if not torch.is_tensor(x) or x.dim() != 4 or x.shape[-1] != 3:
                    shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
                    raise InputError(f"The {label}: frames must be [F,H,W,3] in 0..1, got {shape}.")
                if not torch.isfinite(x).all():
                    raise InputError(f"The {label} contains NaN or infinite pixel values.")
                stride = 1
                if config.fps and source.fps and source.fps > 0:
                    stride = max(1, round(float(source.fps) / float(config.fps)))
                resize = resize_and_crop if config.resize == "crop" else resize_frames
                frames = resize(x[::stride].float(), config.width, config.height)
            else:
                raise InputError(f"The {label} has neither a path nor frames.")
            if frames.shape[0] == 0:
                raise VideoError(f"The {label} has no frames.")
            if frames.shape[0] < config.frames:
                log.warning("The %s has %d frames at the training fps, fewer than the %d-frame window; its last "
                            "frame is repeated.", label, frames.shape[0], config.frames)
                frames = _pad_frames(frames, config.frames)
            sources.append(VideoSource(frames=frames, fps=None, caption=caption))
        return build_clips(sources, "", frames=config.frames, fps=None, width=config.width, height=config.height,
                           windows=config.windows, resize=config.resize)

    # ------------------------------------------------------------------ setup / teardown
    def setup(self, model: "VideoModel", clips: Sequence[CachedClip], generator: torch.Generator) -> list[ParamGroup]:
        from ..adapters.lora import denoiser_modules

        if len(denoiser_modules(model)) > 1:
            raise InputError(
                f"Customizing Motion does not support two-expert models (Wan 2.2 A14B: high-noise / low-noise transformers) "
                "yet. Train it on Wan 2.1 T2V 1.3B/14B or Wan 2.2 TI2V-5B, or use MotionDirector, which trains "
                "both A14B experts.")
        cfg = self.config
        parts = trainable_parameters(model, cfg.trainable_modules)
        if not parts.get("temporal") and not parts.get("temp_convs"):
            raise InputError(
                f"Customizing Motion fine-tunes the temporal layers, and this {model.family} model has none that "
                "only mix frames (full 3D attention). Use a UNet3D (ZeroScope, ModelScope) or AnimateDiff model.")
        if "temp_convs" in cfg.trainable_modules and not parts.get("temp_convs"):
            log.info("%s has no temporal convolutions; training the temporal attention modules and the "
                     "cross-attention K/V only.", model.family)
        self.groups = {name: list(params) for name, params in parts.items() if params}
        self.params = {n: p for params in parts.values() for n, p in params.items()}
        denoiser = model.denoiser
        self._flags = [(p, p.requires_grad) for p in denoiser.parameters()]
        # exact copies of the base tensors (CPU, original dtype): the delta's reference and what teardown restores
        self._base = {n: p.detach().to("cpu", copy=True) for n, p in self.params.items()}
        try:
            for p in denoiser.parameters():
                p.requires_grad_(False)
            for p in self.params.values():
                if p.dtype != torch.float32:
                    # fp32 master weights for the trained tensors (AdamW steps of 5e-6 vanish in fp16); the
                    # forward runs under the trainer's autocast
                    p.data = p.data.float()
            self.prior_cache = cache_clips(model, self.prior_clips, self.seed + 1_000_000) if self.prior_clips else []
        except Exception:
            self.teardown(model)
            raise
        return [ParamGroup(FINETUNE, list(self.params.values()), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                           betas=tuple(cfg.betas), eps=cfg.eps, max_grad_norm=cfg.max_grad_norm)]

    @torch.no_grad()
    def teardown(self, model: "VideoModel") -> None:
        """The base weights back, bit for bit (original values, dtype and trainability)."""
        for name, p in self.params.items():
            base = self._base.get(name)
            if base is not None:
                p.data = base.to(p.device)
        for p, flag in self._flags:
            p.requires_grad_(flag)
        self.params, self._base, self._flags = {}, {}, []

    # ------------------------------------------------------------------ one step
    def training_step(self, model: "VideoModel", batch: Batch) -> StepOutput:
        if model.dtype in (torch.float16, torch.bfloat16) and not torch.is_autocast_enabled(model.device.type):
            raise TrainingError(
                f"Customizing Motion trains float32 master weights inside a {str(model.dtype).replace('torch.', '')} "
                "model, which needs mixed precision: use mixed_precision 'auto', 'fp16' or 'bf16' (CUDA), or load "
                "the model in fp32.")
        cfg = self.config
        # the training item: noise, then its timestep from the high-noise sampler
        inst = batch.noisy_latents()
        if not self.prior_cache:
            pred = model.predict(inst.z_t, inst.t, batch.prompt_embeds)
            loss, parts = prior_preservation_loss(pred, inst.target)
            return StepOutput(losses={FINETUNE: loss}, logs=parts, loss=loss.detach())
        # the prior item: its own clip, noise and independently drawn timestep (as the reference)
        prior = self.prior_cache[batch.randint(len(self.prior_cache))]
        z0 = prior.latents.to(inst.z0.device)
        noise = torch.randn(z0.shape, generator=batch.generator, dtype=torch.float32).to(z0.device)
        t_prior = self.sample_timesteps(model, z0.shape[0], batch.generator).long().to(z0.device)
        z_prior, target_prior = add_training_noise(model, z0, noise, t_prior)
        # one forward over [instance, prior] on the batch axis, as the reference concatenates them
        embeds = torch.cat([batch.prompt_embeds, prior.prompt_embeds.to(batch.prompt_embeds)])
        pred = model.predict(torch.cat([inst.z_t, z_prior.to(inst.z_t.dtype)]), torch.cat([inst.t, t_prior]), embeds)
        n = inst.z_t.shape[0]
        loss, parts = prior_preservation_loss(pred[:n], inst.target, pred[n:], target_prior, cfg.prior_weight)
        return StepOutput(losses={FINETUNE: loss}, logs=parts, loss=loss.detach())

    # ------------------------------------------------------------------ checkpoints
    def state_tensors(self, model: "VideoModel") -> dict[str, torch.Tensor]:
        out = {f"param.{n}": p.detach() for n, p in self.params.items()}
        # the prior latents too, so a resume continues on exactly the same data
        for c in self.prior_cache:
            out[f"prior.latents.{c.index}"] = c.latents.detach()
            out[f"prior.embeds.{c.index}"] = c.prompt_embeds.detach().clone()  # shared per prompt: own copy
        return out

    @torch.no_grad()
    def load_state_tensors(self, model: "VideoModel", tensors: Mapping[str, torch.Tensor]) -> None:
        expected = set(self.state_tensors(model))
        if set(tensors) != expected:
            extra = sorted(set(tensors) - expected)[:1]
            missing = sorted(expected - set(tensors))[:1]
            raise InputError("The checkpoint does not match this Customizing Motion run (trained tensors or prior "
                             f"clips differ, e.g. {'unexpected ' + extra[0] if extra else 'missing ' + missing[0]}).")
        for n, p in self.params.items():
            value = tensors[f"param.{n}"]
            if tuple(value.shape) != tuple(p.shape):
                raise InputError(f"checkpoint tensor {n!r} has shape {tuple(value.shape)}, the model's is "
                                 f"{tuple(p.shape)}.")
            p.copy_(value.to(p.device, p.dtype))
        for c in self.prior_cache:
            c.latents = tensors[f"prior.latents.{c.index}"].to(c.latents.device, c.latents.dtype)
            c.prompt_embeds = tensors[f"prior.embeds.{c.index}"].to(c.prompt_embeds.device, c.prompt_embeds.dtype)

    # ------------------------------------------------------------------ the adapter
    @torch.no_grad()
    def build_adapter(self, model: "VideoModel", *, steps: int, training_config: dict[str, Any],
                      clips: Sequence[CachedClip]) -> WeightDelta:
        # Δ in float32 from the exact base copy; stored at delta_dtype when saved
        deltas = {n: (p.detach().float().cpu() - self._base[n].float()) for n, p in self.params.items()}
        prompts = sorted({c.prompt for c in clips})
        extra = {"identifier": self.config.identifier, "prompts": prompts,
                 "videos": len({c.video_index for c in clips}),
                 "prior_videos": len(self.prior_sources), "prior_prompts": sorted({c.prompt for c in self.prior_cache}),
                 "delta_dtype": self.config.delta_dtype,
                 "parameters": {g: sum(self.params[n].numel() for n in names) for g, names in self.groups.items()}}
        return WeightDelta(deltas=deltas, method=self.name, family=model.family, base_model=model.base_model,
                           steps=steps, training_config=training_config, strength=1.0,
                           groups={g: tuple(names) for g, names in self.groups.items()}, extra=extra)

    @contextlib.contextmanager
    def preview_context(self, model: "VideoModel") -> Iterator[None]:
        """The fine-tuned weights are live in the model: a preview is the adapter at strength 1."""
        yield


# ============================================================================================== one call
def train_custom_motion(
    model: "VideoModel",
    videos: Sequence[VideoSource | str | os.PathLike | torch.Tensor],
    captions: str | Sequence[str],
    *,
    prior_videos: Sequence[VideoSource | str | os.PathLike | torch.Tensor] = (),
    prior_captions: str | Sequence[str] | None = None,
    config: CustomMotionConfig | None = None,
    training: "TrainingConfig | None" = None,
    bucketing: bool = True,
    resume: str | os.PathLike | None = None,
    progress: Any = None,
    cancel: Any = None,
    accelerator: Any = None,
) -> "TrainingResult":
    """Train Customizing Motion on ``videos`` (captions with the identifier) regularized by ``prior_videos``.

    When ``training`` leaves width and height unset and ``bucketing`` is on, the training size follows the
    first video's aspect ratio (:func:`bucket_size` around the 384² default); every video and prior clip is
    resized (center crop) to it. Previews default to the reference's validation (25 steps, CFG 9) with the
    first caption.
    """
    from ..training import PreviewConfig, TrainingConfig, train

    method = CustomMotion(config, prior_videos=prior_videos, prior_prompt=prior_captions)
    sources = [v if isinstance(v, VideoSource) else VideoSource(frames=v) if torch.is_tensor(v) else VideoSource(path=v)
               for v in videos]
    if not sources:
        raise InputError("No training video given: give one or more videos of the motion.")
    training = dataclasses.replace(training) if training is not None else TrainingConfig(
        preview=PreviewConfig(steps=25, cfg=9.0))
    if bucketing and training.width is None and training.height is None:
        defaults = method.defaults(len(sources))
        w, h = _source_size(sources[0])
        training.width, training.height = bucket_size(w, h, defaults["width"], defaults["height"],
                                                      model.size_multiple)
    return train(model, method, sources, captions, training, resume=resume, progress=progress, cancel=cancel,
                 accelerator=accelerator)
