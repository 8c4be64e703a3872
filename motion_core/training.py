"""The one training loop every training method uses (MotionDirector, Motion Inversion, Customizing Motion,
MotionMatcher).

A method (:class:`TrainingMethod`, one file in ``motion_core/methods/``) says *what* is trained and *how
the loss is computed*; this module does everything else:

* **data** -- a clip dataset: each video (a file, or frames from ComfyUI) is sampled at a target fps and
  cut into non-overlapping windows of ``frames`` frames, resized and center-cropped to the training size;
  one prompt for all videos or one caption per video (:func:`build_clips`);
* **caching** -- every clip is VAE-encoded once (one posterior sample drawn from the run's seed, as the
  references freeze it) and every distinct prompt text-encoded once (:func:`cache_clips`); training then
  never touches the VAE or the text encoder;
* **the step** -- the method returns one loss per optimizer group (:class:`StepOutput`); the loop takes
  ``∂loss_g/∂θ_g`` for every group g with ``torch.autograd.grad`` *before any optimizer step*, so every
  gradient is evaluated at the same weights, then steps one AdamW with one parameter group per adapter
  set (own lr / weight decay / optional clip norm);
* **precision** -- fp32 on the CPU; on CUDA autocast in fp16 or bf16 (the trainable parameters stay fp32)
  with a GradScaler for fp16; losses are computed in fp32 by the methods (:mod:`motion_core.losses`);
* **gradient checkpointing** -- diffusers' own where the denoiser supports it, else every resnet /
  attention / temporal unit is wrapped in non-reentrant ``torch.utils.checkpoint``
  (:func:`activation_checkpointing`);
* **checkpoints** -- every N steps: trainable tensors, optimizer state (safetensors + JSON, no pickle), LR
  scheduler, GradScaler, every RNG (python, numpy, torch CPU, CUDA, the trainer's own generator), the
  latent cache and the history; resuming continues on exactly the trajectory of an uninterrupted run;
* **validation previews** every N steps, **progress** (step, loss, ETA) and **cancel** (a checkpoint and the
  adapter so far are kept), a **NaN/inf guard** (a non-finite loss or gradient skips the step; several in
  a row stop the run with a :class:`~motion_core.errors.TrainingError`);
* **files** -- one run per run folder (a lock file, :class:`RunLock`; a second run with the same save name is
  refused, a dead run's lock taken over); before the first step the adapters folder and the run folder are
  checked for room for the adapter file and the checkpoints kept (:meth:`Trainer.disk_needs`); every file is
  written under a temporary name and renamed, and a full disk is a :class:`~motion_core.errors.StorageError`
  that leaves nothing half-written (:mod:`motion_core.storage`);
* **multi-GPU** through ``accelerate`` (``accelerate launch -m motion_core train ...``): each process trains
  on its own clips and noise, gradients are averaged across processes (all-reduce) before every step --
  DDP's semantics. We do not wrap the denoiser in ``DistributedDataParallel``: DDP synchronises inside
  ``backward()`` and cannot see the per-group ``autograd.grad`` calls the dual-path methods need.

All random draws of a step come from one CPU ``torch.Generator`` owned by the loop (device independent:
the same seed gives the same noise, timesteps and frame choices on any GPU); dropout uses the global
torch RNG, which the loop seeds and checkpoints too.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import errno
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .autograd import autograd
from .errors import Cancelled, InputError, MotionKitError, StorageError, TrainingError, VideoError

if TYPE_CHECKING:  # pragma: no cover
    from .backbones.base import CancelCheck, ProgressCallback, VideoModel

log = logging.getLogger(__name__)

__all__ = [
    "Batch",
    "CachedClip",
    "Clip",
    "NoisyLatents",
    "ParamGroup",
    "PreviewConfig",
    "StepOutput",
    "Trainer",
    "TrainingConfig",
    "TrainingMethod",
    "TrainingResult",
    "VideoSource",
    "activation_checkpointing",
    "autocast_dtype",
    "build_clips",
    "cache_clips",
    "checkpointed_call",
    "find_checkpoint",
    "grad_scaler",
    "recompute_context",
    "render_loss_curve",
    "step_levers",
    "train",
]

CHECKPOINT_FORMAT = "motionkit.training_checkpoint"
CHECKPOINT_VERSION = 1
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
#: added to the save name for the best checkpoint's adapter file (``select_best``)
BEST_SUFFIX = "_best"


# ============================================================================================== data
@dataclass(frozen=True, eq=False)
class VideoSource:
    """One training video: a file (``path``) or frames ``[F,H,W,3]`` in 0..1 (e.g. a ComfyUI IMAGE batch).

    ``fps`` is the frame rate of ``frames`` (for files it is read from the file); 0/None means unknown, and
    then every frame is used as it is. ``caption`` overrides the run's prompt for this video.
    """

    path: str | os.PathLike | None = None
    frames: torch.Tensor | None = None
    fps: float | None = None
    caption: str | None = None

    def label(self, index: int) -> str:
        return str(self.path) if self.path is not None else f"video {index + 1}"


@dataclass(frozen=True, eq=False)
class Clip:
    """One training window: ``frames`` ``[n, H, W, 3]`` at the training size, from video ``video_index``."""

    video_index: int
    window: int
    frames: torch.Tensor
    prompt: str


def _windows(frames: torch.Tensor, n: int, mode: str) -> list[torch.Tensor]:
    count = frames.shape[0] // n
    if mode == "first":
        count = min(count, 1)
    return [frames[i * n:(i + 1) * n] for i in range(count)]


def build_clips(
    videos: Sequence[VideoSource],
    prompt: str | Sequence[str],
    *,
    frames: int,
    fps: float | None,
    width: int,
    height: int,
    windows: str = "all",
    resize: str = "crop",
) -> list[Clip]:
    """Cut every video into windows of ``frames`` frames sampled at ``fps`` (stride
    ``max(1, round(source_fps / fps))``, MotionDirector's rule), resized to ``width x height``.

    ``windows="all"``: every full non-overlapping window (a long video gives several clips, which share
    the video's per-video adapters); ``"first"``: only the first. A trailing partial window is dropped (the
    reference keeps it as a shorter clip). ``prompt``: one prompt for all videos, or one per video;
    ``VideoSource.caption`` wins over both.
    """
    from .video import load_video, resize_and_crop, resize_frames

    if not videos:
        raise InputError("No training video given.")
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise InputError(f"frames must be a positive integer, got {frames!r}.")
    if windows not in ("all", "first"):
        raise InputError(f"windows must be 'all' or 'first', not {windows!r}.")
    if resize not in ("crop", "stretch"):
        raise InputError(f"resize must be 'crop' or 'stretch', not {resize!r}.")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if len(prompts) not in (1, len(videos)):
        raise InputError(f"{len(prompts)} prompts for {len(videos)} videos: give one prompt, or one per video.")
    clips: list[Clip] = []
    for v, source in enumerate(videos):
        text = source.caption if source.caption else prompts[v if len(prompts) > 1 else 0]
        if not isinstance(text, str):
            raise InputError(f"The prompt of {source.label(v)} is not text.")
        if source.path is not None:
            clip = load_video(str(source.path), fps=fps, width=width, height=height, resize_mode=resize)
            sampled = clip.frames
        elif source.frames is not None:
            x = source.frames
            if not torch.is_tensor(x) or x.dim() != 4 or x.shape[-1] != 3:
                raise InputError(f"{source.label(v)}: frames must be [F,H,W,3], got "
                                 f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}.")
            if not torch.isfinite(x).all():
                raise InputError(f"{source.label(v)} contains NaN or infinite pixel values.")
            stride = 1
            if fps and source.fps and source.fps > 0:
                stride = max(1, round(float(source.fps) / float(fps)))
            x = x[::stride].float()
            sampled = (resize_and_crop if resize == "crop" else resize_frames)(x, width, height)
        else:
            raise InputError(f"{source.label(v)} has neither a path nor frames.")
        cut = _windows(sampled, frames, windows)
        if not cut:
            rate = f" at {fps:g} fps" if fps else ""
            raise VideoError(
                f"{source.label(v)} has only {sampled.shape[0]} frames{rate}, shorter than the {frames}-frame "
                f"training window. Use a longer video, fewer frames, or a higher fps.")
        clips.extend(Clip(video_index=v, window=w, frames=c.contiguous(), prompt=text) for w, c in enumerate(cut))
    return clips


def clips_fingerprint(clips: Sequence[Clip]) -> str:
    """sha256 of every clip's pixels (quantized to 8 bits) and prompt: identifies the training data."""
    h = hashlib.sha256()
    for c in clips:
        h.update(f"{c.video_index}|{c.window}|{tuple(c.frames.shape)}|{c.prompt}".encode())
        h.update((c.frames.clamp(0, 1) * 255).round().to(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass(eq=False)
class CachedClip:
    """A clip as training sees it: latents ``[1,C,F,h,w]`` (float32), the prompt embedding ``[1,L,D]``
    (shared between clips with the same prompt) and, when the method stores a noise prior, the clip's
    DDIM-inverted latents (CPU)."""

    index: int
    video_index: int
    prompt: str
    latents: torch.Tensor
    prompt_embeds: torch.Tensor
    inverted: torch.Tensor | None = None


@torch.no_grad()
def cache_clips(model: "VideoModel", clips: Sequence[Clip], seed: int,
                cancel: "CancelCheck | None" = None) -> list[CachedClip]:
    """Encode every clip once with the VAE (one posterior sample from a generator seeded by ``seed`` and the
    clip index, so a resumed run re-creates the same latents) and every distinct prompt once."""
    embeds: dict[str, torch.Tensor] = {}
    out = []
    for i, clip in enumerate(clips):
        if cancel is not None and cancel():
            raise Cancelled("Training cancelled while encoding the training clips.")
        generator = torch.Generator("cpu").manual_seed(int(seed) * 1_000_003 + i)
        latents = model.encode_video(clip.frames, generator=generator).float()
        if not torch.isfinite(latents).all():
            raise InputError(f"Encoding training clip {i + 1} gave non-finite latents; check the video and the VAE "
                             "(an fp16 VAE can overflow: load the model in fp32 or bf16).")
        if clip.prompt not in embeds:
            embeds[clip.prompt] = model.encode_prompt([clip.prompt]).detach()
        out.append(CachedClip(index=i, video_index=clip.video_index, prompt=clip.prompt, latents=latents,
                              prompt_embeds=embeds[clip.prompt]))
    return out


# ============================================================================================== method API
@dataclass
class ParamGroup:
    """One adapter set's trainable parameters and optimizer settings (one AdamW parameter group)."""

    name: str
    params: list[nn.Parameter]
    lr: float
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        if not self.params:
            raise InputError(f"parameter group {self.name!r} has no parameters.")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"learning rate of {self.name!r} must be a positive number, got {self.lr!r}.")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise InputError(f"weight decay of {self.name!r} must be >= 0, got {self.weight_decay!r}.")


@dataclass
class StepOutput:
    """What a method's step returns.

    ``losses`` maps optimizer-group names to the loss whose gradient updates that group: MotionDirector
    returns ``{"spatial_k": L_S, "temporal": L_T}`` -- the spatial LoRA learns only from the spatial loss,
    the temporal LoRA only from the temporal loss. Several groups may share one loss tensor. A group
    missing from ``losses`` is not updated this step (MotionDirector's 20% branch skips the spatial path).
    ``logs`` are named scalars for progress and the loss curve; ``loss`` is the headline number shown on
    the progress bar (default: the mean of the distinct losses).
    """

    losses: dict[str, torch.Tensor]
    logs: dict[str, float | torch.Tensor] = field(default_factory=dict)
    loss: float | torch.Tensor | None = None


@dataclass
class NoisyLatents:
    """The shared diffusion sample of a step: clean ``z0``, ``noise``, timesteps ``t`` [B], noisy ``z_t``
    and the regression ``target`` for the model's prediction type."""

    z0: torch.Tensor
    noise: torch.Tensor
    t: torch.Tensor
    z_t: torch.Tensor
    target: torch.Tensor


def add_training_noise(model: "VideoModel", z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_t, target) for the model's prediction type: epsilon and v on the VP schedule of its scheduler;
    flow matching as ``z_t = (1 − σ) z0 + σ ε``, target ``ε − z0`` with ``σ = t / T``."""
    prediction = model.prediction_type
    if prediction == "flow":
        sigma = (t.float() / float(model.scheduler.config.get("num_train_timesteps", 1000))).view(-1, 1, 1, 1, 1)
        sigma = sigma.to(z0.device)
        return (1 - sigma) * z0 + sigma * noise, noise - z0
    ac = model.scheduler.alphas_cumprod.to(device=z0.device, dtype=torch.float32)[t.to(z0.device)]
    a = ac.view(-1, 1, 1, 1, 1)
    z_t = a.sqrt() * z0 + (1 - a).sqrt() * noise
    if prediction == "epsilon":
        return z_t, noise
    if prediction == "v_prediction":
        return z_t, a.sqrt() * noise - (1 - a).sqrt() * z0
    raise InputError(f"cannot train a model with prediction type {prediction!r}.")


@dataclass(eq=False)
class Batch:
    """What a method's step gets: the clip (on the training device), the step's generator and helpers."""

    step: int
    clip: CachedClip
    model: "VideoModel"
    generator: torch.Generator
    method: "TrainingMethod"
    _backward: Callable[[torch.Tensor, Sequence[str]], None] | None = field(default=None, repr=False)

    @property
    def latents(self) -> torch.Tensor:
        return self.clip.latents

    @property
    def prompt_embeds(self) -> torch.Tensor:
        return self.clip.prompt_embeds

    @property
    def num_frames(self) -> int:
        return int(self.clip.latents.shape[2])

    def rand(self) -> float:
        """A uniform draw in [0, 1) from the step's generator."""
        return float(torch.rand((), generator=self.generator))

    def randint(self, high: int) -> int:
        """A uniform integer in [0, high) from the step's generator."""
        return int(torch.randint(0, int(high), (), generator=self.generator))

    def noisy_latents(self) -> NoisyLatents:
        """Noise ~ N(0, I) and timesteps from the method's sampler, both drawn on the CPU."""
        z0 = self.clip.latents
        noise = torch.randn(z0.shape, generator=self.generator, dtype=torch.float32).to(z0.device)
        t = self.method.sample_timesteps(self.model, z0.shape[0], self.generator).long()
        z_t, target = add_training_noise(self.model, z0, noise, t)
        return NoisyLatents(z0=z0, noise=noise, t=t.to(z0.device), z_t=z_t, target=target)

    def backward(self, loss: torch.Tensor, groups: str | Sequence[str]) -> None:
        """Take the gradient of ``loss`` w.r.t. the parameters of ``groups`` *now* (nothing is stepped yet).

        A method that changes the adapter configuration between two forward passes (MotionDirector
        switches LoRA sets on and off) must call this right after each pass: a gradient-checkpointed
        backward recomputes the forward with the adapters as they are *at backward time*. The losses it
        returns in :class:`StepOutput` are then only logged and guarded. Gradients of several calls on
        one group add up.
        """
        if self._backward is None:
            raise TrainingError("Batch.backward is only available inside the training loop.")
        self._backward(loss, [groups] if isinstance(groups, str) else list(groups))


class TrainingMethod:
    """Base class of training methods. A subclass sets :attr:`name`, keeps its hyper-parameters in
    ``self.config`` (a dataclass) and implements :meth:`setup`, :meth:`training_step`,
    :meth:`state_tensors` / :meth:`load_state_tensors`, :meth:`build_adapter` and :meth:`teardown`.
    Register it with :func:`motion_core.methods.register_method`.
    """

    name: ClassVar[str] = ""
    #: inversion steps for a stored noise prior (0: none); the loop computes it once after caching
    noise_prior_steps: int = 0

    def __init__(self, config: Any = None) -> None:
        self.config = config

    # ------------------------------------------------------------------ configuration
    def config_dict(self) -> dict[str, Any]:
        """JSON-able hyper-parameters (written into checkpoints and adapter metadata)."""
        if self.config is None:
            return {}
        return dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config) else dict(self.config)

    def defaults(self, num_videos: int) -> dict[str, Any]:
        """Values for :class:`TrainingConfig` fields left at None (steps, frames, fps, width, height...)."""
        return {}

    def prepare(self, config: "TrainingConfig", videos: Sequence["VideoSource"],
                prompt: "str | Sequence[str]") -> "tuple[Sequence[VideoSource], str | Sequence[str]]":
        """Called once at the start of a run with the resolved run settings, before the clips are built and the
        checkpoint fingerprint is taken; returns the (possibly rewritten) videos and prompt. Methods with data of
        their own load it here (Customizing Motion: identifier in the captions, prior videos)."""
        return videos, prompt

    # ------------------------------------------------------------------ lifecycle
    def setup(self, model: "VideoModel", clips: Sequence[CachedClip], generator: torch.Generator) -> list[ParamGroup]:
        """Create the trainable adapters on ``model`` (random init from ``generator`` / the seeded global
        RNG) and return the optimizer groups."""
        raise NotImplementedError

    def sample_timesteps(self, model: "VideoModel", batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Training timesteps ``[B]``; uniform over the schedule by default (methods may bias it)."""
        total = int(model.scheduler.config.get("num_train_timesteps", 1000))
        return torch.randint(0, total, (batch_size,), generator=generator)

    def training_step(self, model: "VideoModel", batch: Batch) -> StepOutput:
        raise NotImplementedError

    def train_mode(self, model: "VideoModel") -> None:
        """Module modes while training: the frozen denoiser in eval mode (its own dropout off -- the base
        is not being trained), the trainable adapters' dropout on."""
        from .adapters.lora import lora_layers, lora_root

        root = lora_root(model)  # every expert of a two-expert model (Wan 2.2 A14B)
        root.train(False)
        for layer in lora_layers(root).values():
            layer.lora_dropout.train()

    @contextlib.contextmanager
    def preview_context(self, model: "VideoModel") -> Iterator[None]:
        """Configure the live adapters as at inference for a validation sample."""
        yield

    def preview_hooks(self, model: "VideoModel") -> list[Any]:
        """Sampling hooks for validation samples (e.g. MotionMatcher's adapter gate over timesteps)."""
        return []

    def state_tensors(self, model: "VideoModel") -> dict[str, torch.Tensor]:
        """Every trainable tensor by a stable name (for checkpoints)."""
        raise NotImplementedError

    def load_state_tensors(self, model: "VideoModel", tensors: Mapping[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def build_adapter(self, model: "VideoModel", *, steps: int, training_config: dict[str, Any],
                      clips: Sequence[CachedClip]) -> Any:
        """The MOTION_ADAPTER users keep (with metadata), from the current weights."""
        raise NotImplementedError

    def teardown(self, model: "VideoModel") -> None:
        """Remove everything :meth:`setup` installed (the base model must be exactly as before)."""


# ============================================================================================== config
@dataclass
class PreviewConfig:
    """Validation samples while training (MotionDirector's reference: 30 DDIM steps, cfg 12)."""

    prompts: list[str] = field(default_factory=list)
    negative_prompt: str = ""
    steps: int = 30
    cfg: float = 12.0
    seed: int = 0
    noise_prior: float = 0.0
    width: int | None = None
    height: int | None = None
    frames: int | None = None


@dataclass
class TrainingConfig:
    """Run settings shared by every method (None = the method's default, see ``TrainingMethod.defaults``).

    A resume must use the same trajectory settings (:attr:`TRAJECTORY_FIELDS`, the method's config, the
    videos and prompts, the number of processes); ``steps`` may grow to train further (a constant learning
    rate continues exactly; a decaying schedule is stretched to the new length from that step on).
    """

    steps: int | None = None
    seed: int = 0
    frames: int | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    windows: str = "all"
    resize: str = "crop"
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    validate_every: int | None = None
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    final_preview: bool = True
    mixed_precision: str = "auto"
    #: ``"auto"`` (checkpoint only the units the device's memory requires, largest activations first; none
    #: when everything fits), ``"on"`` (every unit, the references' setting) or ``"off"``; True / False = on / off
    gradient_checkpointing: bool | str = "auto"
    #: ``"off"`` / ``"on"``: ``torch.compile`` of every repeated block (regional: each unit compiles once
    #: per shape; the compile time is logged with the first step)
    compile: str = "off"
    #: the text encoder and the VAE leave the device (and RAM) once the clips are cached, and come back only
    #: for previews (they are restored when the run ends)
    release_encoders: bool = True
    max_bad_steps: int = 5
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    #: folder of the run's checkpoints and previews (None: a folder is made under the system temp dir)
    run_dir: str | None = None
    #: file name of the final adapter in ``adapters_dir`` (None: not saved, only returned)
    save_name: str | None = None
    adapters_dir: str | None = None
    write_preview_videos: bool = True
    #: score every preview against the training clip (motion fidelity; CLIP-T with ``score_clip``) and make a
    #: preview at every checkpoint for it (:mod:`motion_core.metrics`); never changes the trajectory
    score_previews: bool = False
    #: CLIP model folder or hub id for the scores' CLIP-T (a scorer given to the Trainer wins)
    score_clip: str | None = None
    #: keep the best scored checkpoint (:data:`motion_core.metrics.selection.BEST_RULE`) as a second adapter file,
    #: ``<save_name>_best.safetensors``, beside the last one (implies ``score_previews``)
    select_best: bool = False

    #: fields that change the trajectory (a checkpoint resumes only if they are equal)
    TRAJECTORY_FIELDS: ClassVar[tuple[str, ...]] = (
        "seed", "frames", "fps", "width", "height", "windows", "resize", "lr_scheduler", "warmup_steps")

    def resolved(self, method: TrainingMethod, num_videos: int) -> "TrainingConfig":
        defaults = {"steps": 500, "frames": 16, "fps": 8.0, "width": 384, "height": 384,
                    "checkpoint_every": 0, "validate_every": 0}
        defaults.update(method.defaults(num_videos))
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key, value in defaults.items():
            if key in values and values[key] is None:
                values[key] = value
        cfg = TrainingConfig(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def positive_int(name: str, value: Any, minimum: int = 1) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}.")

        positive_int("steps", self.steps)
        positive_int("frames", self.frames)
        positive_int("width", self.width)
        positive_int("height", self.height)
        positive_int("checkpoint_every", self.checkpoint_every, 0)
        positive_int("validate_every", self.validate_every, 0)
        positive_int("keep_checkpoints", self.keep_checkpoints, 1)
        positive_int("max_bad_steps", self.max_bad_steps, 1)
        positive_int("warmup_steps", self.warmup_steps, 0)
        if self.fps is not None and not (isinstance(self.fps, (int, float)) and self.fps > 0):
            raise InputError(f"fps must be a positive number, got {self.fps!r}.")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise InputError(f"mixed_precision must be auto, no, fp16 or bf16, not {self.mixed_precision!r}.")
        from .memory import checkpointing_mode

        self.gradient_checkpointing = checkpointing_mode(self.gradient_checkpointing)
        if str(self.compile).lower() in ("true", "false"):
            self.compile = "on" if str(self.compile).lower() == "true" else "off"
        if self.compile not in ("off", "on"):
            raise InputError(f"compile must be on or off, not {self.compile!r}.")
        if self.lr_scheduler not in ("constant", "linear", "cosine"):
            raise InputError(f"lr_scheduler must be constant, linear or cosine, not {self.lr_scheduler!r}.")
        if self.save_name is not None:
            from .adapters.files import check_save_name

            check_save_name(self.save_name)

    def trajectory(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.TRAJECTORY_FIELDS}

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return json.loads(json.dumps(data, default=str))


@dataclass
class TrainingResult:
    """What a run returns (also on cancel: ``cancelled=True`` with the adapter of the last step)."""

    adapter: Any
    steps: int
    total_steps: int
    cancelled: bool
    history: list[dict[str, Any]]
    run_dir: Path
    checkpoint: Path | None = None
    adapter_path: Path | None = None
    preview: torch.Tensor | None = None
    seconds: float = 0.0
    skipped_steps: int = 0
    #: the best scored checkpoint (``select_best``): its step and the adapter file saved for it
    best_step: int | None = None
    best_adapter_path: Path | None = None

    def loss_curve(self, width: int = 768, height: int = 384) -> torch.Tensor:
        """The loss curve, with the checkpoint scores beside it when previews were scored."""
        from .metrics.render import render_training_curves

        return render_training_curves(self.history, width=width, height=height)


# ============================================================================================== checkpointing units
_UNIT = re.compile(r"(^|\.)(resnets|attentions|temp_convs|temp_attentions|motion_modules|blocks|transformer_blocks)\.\d+$")


def checkpoint_units(denoiser: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules that get their own checkpoint segment when the denoiser has no built-in gradient
    checkpointing (the MotionDirector reference's granularity: every resnet, temporal convolution, spatial
    and temporal transformer, and ``transformer_in``). Outermost matches only."""
    units: list[tuple[str, nn.Module]] = []
    for name, module in denoiser.named_modules():
        if not name or any(name.startswith(u + ".") for u, _ in units):
            continue
        if name == "transformer_in" or _UNIT.search(name):
            units.append((name, module))
    return units


#: set by :func:`recompute_context`: makes the context manager checkpointed units are recomputed in
_RECOMPUTE_IN: contextvars.ContextVar[Callable[[], contextlib.AbstractContextManager] | None] = \
    contextvars.ContextVar("motionkit_recompute_in", default=None)


@contextlib.contextmanager
def recompute_context(factory: Callable[[], contextlib.AbstractContextManager]) -> Iterator[None]:
    """Checkpointed units that run forward inside this block are recomputed in backward inside
    ``factory()`` too (the factory is captured at forward time).

    A checkpointed pass is otherwise recomputed in whatever state the model is in at backward time. A
    method that runs one pass in another module state (MotionMatcher's frozen feature extractor runs with
    the LoRA disabled) pins that state here, so its gradient is the one of the forward that ran -- the
    MotionMatcher reference recomputes with the LoRA on (reference/motion_inversion_and_motion_matcher.md
    B.9.1).
    """
    token = _RECOMPUTE_IN.set(factory)
    try:
        yield
    finally:
        _RECOMPUTE_IN.reset(token)


def checkpointed_call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Non-reentrant ``torch.utils.checkpoint`` of ``function`` (RNG state preserved); inside
    :func:`recompute_context` its recomputation runs in that context."""
    from torch.utils.checkpoint import checkpoint

    factory = _RECOMPUTE_IN.get()
    if factory is None:
        return checkpoint(function, *args, use_reentrant=False, **kwargs)
    return checkpoint(function, *args, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), factory()), **kwargs)


def _diffusers_checkpoint(module: nn.Module, *args: Any) -> Any:
    """diffusers' ``gradient_checkpointing_func`` signature, through :func:`checkpointed_call`."""
    return checkpointed_call(module.__call__, *args)


@contextlib.contextmanager
def _checkpoint_every_denoiser(model: "VideoModel", enabled: bool,
                               units: Sequence[str] | None = None) -> Iterator[None]:
    """:func:`activation_checkpointing` on every denoiser of ``model`` (both experts of Wan 2.2 A14B);
    ``units``: only these (names prefixed by the expert's name with several experts), else all."""
    from .adapters.lora import denoiser_modules

    with contextlib.ExitStack() as stack:
        for prefix, module in denoiser_modules(model):
            mine = None if units is None else [u[len(prefix) + 1:] if prefix else u for u in units
                                               if not prefix or u.startswith(prefix + ".")]
            stack.enter_context(activation_checkpointing(module, enabled, units=mine))
        yield


@contextlib.contextmanager
def compiled_units(model: "VideoModel", enabled: bool = True) -> Iterator[list[str]]:
    """Regional ``torch.compile``: every checkpointing unit (resnet, transformer, temporal module, DiT block)
    of every denoiser is compiled on its own, so identical blocks share one compiled graph per input shape
    and compile time stays a few graphs' worth instead of the whole network's. Undone on exit."""
    from .adapters.lora import denoiser_modules

    if not enabled:
        yield []
        return
    done: list[tuple[nn.Module, Any]] = []
    try:
        for prefix, module in denoiser_modules(model):
            for name, unit in checkpoint_units(module):
                done.append((unit, getattr(unit, "_compiled_call_impl", None)))
                unit.compile(dynamic=False)
        yield [f"{len(done)} units"]
    finally:
        for unit, previous in done:
            unit._compiled_call_impl = previous


@contextlib.contextmanager
def step_levers(model: "VideoModel", compile: bool = False) -> Iterator[None]:
    """What makes a training step cheaper without changing its maths, while inside: peft's LoRA sets as one
    autograd function each (:mod:`~motion_core.adapters.lora_fast`), frame-only Conv3d as conv2d
    (:mod:`~motion_core.temporal_conv`), denormal floats flushed on the CPU (tiny gradients squared in AdamW's
    second moment fall below 1e-38, where x86 arithmetic is ~7x slower), optional regional torch.compile
    (:func:`compiled_units`). The trainer's loop runs inside it; so do the benches' steps."""
    from .adapters.lora import denoiser_modules, lora_root
    from .adapters.lora_fast import fused_lora
    from .temporal_conv import temporal_convs_as_2d

    with contextlib.ExitStack() as stack:
        stack.enter_context(fused_lora(lora_root(model)))
        for _, denoiser in denoiser_modules(model):
            stack.enter_context(temporal_convs_as_2d(denoiser))
        if model.device.type == "cpu" and torch.set_flush_denormal(True):
            stack.callback(torch.set_flush_denormal, False)
        stack.enter_context(compiled_units(model, compile))
        yield


def _eval_every_denoiser(model: "VideoModel") -> None:
    from .adapters.lora import denoiser_modules

    for _, module in denoiser_modules(model):
        module.train(False)


@contextlib.contextmanager
def activation_checkpointing(denoiser: nn.Module, enabled: bool = True,
                             units: Sequence[str] | None = None) -> Iterator[str]:
    """Gradient checkpointing while inside; yields how (``"diffusers"``, ``"units"`` or ``"off"``).

    ``units``: checkpoint only these of :func:`checkpoint_units` (by name; gradient checkpointing ``auto``
    when only part of the activations must go) -- always through the unit wrappers below.

    diffusers' UNet3DConditionModel does not support ``enable_gradient_checkpointing`` (its blocks have no
    checkpointed path), so its units are wrapped here: their ``forward`` becomes a non-reentrant
    ``torch.utils.checkpoint`` of the original (RNG state preserved, so dropout masks are identical in the
    recomputation). Outside autograd the wrapper calls the original directly.
    """
    if not enabled or (units is not None and not units):
        yield "off"
        return
    if units is None and getattr(denoiser, "_supports_gradient_checkpointing", False) and hasattr(
            denoiser, "enable_gradient_checkpointing"):
        was_on = bool(getattr(denoiser, "is_gradient_checkpointing", False))
        denoiser.enable_gradient_checkpointing(_diffusers_checkpoint)
        try:
            yield "diffusers"
        finally:
            if was_on:
                denoiser.enable_gradient_checkpointing()
            else:
                denoiser.disable_gradient_checkpointing()
        return
    from .patching import replaced_forwards

    def wrap(module: nn.Module) -> Callable[..., Any]:
        inner = module.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            if torch.is_grad_enabled():
                return checkpointed_call(inner, *args, **kwargs)
            return inner(*args, **kwargs)
        return forward

    chosen = None if units is None else set(units)
    with replaced_forwards((m for name, m in checkpoint_units(denoiser) if chosen is None or name in chosen), wrap):
        yield "units"


# ============================================================================================== helpers
def _lr_lambda(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return fn


def autocast_dtype(config: TrainingConfig, model: "VideoModel") -> torch.dtype | None:
    """The dtype the step runs its autocast in (None: no autocast) -- ``config.mixed_precision`` on this model."""
    if model.device.type != "cuda":
        if config.mixed_precision in ("fp16", "bf16"):
            log.warning("mixed precision %s is only used on CUDA; training on %s in %s.", config.mixed_precision,
                        model.device, str(model.dtype).replace("torch.", ""))
        return None
    choice = config.mixed_precision
    if choice == "auto":
        if model.dtype == torch.bfloat16:
            return torch.bfloat16
        if model.dtype == torch.float16:
            return torch.float16
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[choice]


def grad_scaler(model: "VideoModel", autocast_dtype: torch.dtype | None) -> "torch.amp.GradScaler | None":
    """A GradScaler where fp16 is in play on CUDA (autocast in fp16 or an fp16 model), else None."""
    if model.device.type == "cuda" and torch.float16 in (autocast_dtype, model.dtype):
        return torch.amp.GradScaler("cuda")
    return None


def _memory_cap() -> int | None:
    """``MOTIONKIT_MEMORY_BUDGET`` (bytes, or a number with KiB / MiB / GiB / KB / MB / GB): the most memory a
    training run may plan for, below what the device has free (e.g. to leave RAM to other programs)."""
    text = os.environ.get("MOTIONKIT_MEMORY_BUDGET", "").strip()
    if not text:
        return None
    match = re.fullmatch(r"([0-9.]+)\s*([KMG]i?B?)?", text, re.IGNORECASE)
    if not match:
        raise InputError(f"MOTIONKIT_MEMORY_BUDGET must be a size such as 12GiB or 8000MB, not {text!r}.")
    unit = (match.group(2) or "").upper().rstrip("B")
    factor = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "KI": 1 << 10, "MI": 1 << 20, "GI": 1 << 30}[unit]
    return int(float(match.group(1)) * factor)


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def _sha(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _rng_tensor_state(generator: torch.Generator) -> torch.Tensor:
    return generator.get_state().clone()


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder: ``path`` itself, or the latest ``checkpoint-N`` inside a run folder."""
    p = Path(path)
    if (p / "trainer_state.json").is_file():
        return p
    if p.is_dir():
        found = sorted((int(m.group(1)), c) for c in p.iterdir()
                       if c.is_dir() and (m := _CHECKPOINT_DIR.match(c.name)) and (c / "trainer_state.json").is_file())
        if found:
            return found[-1][1]
    raise TrainingError(f"No training checkpoint found at {p}: give a checkpoint-N folder or the run folder that "
                        "holds them.")


def _optimizer_to_file(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{key}"] = value.detach().cpu()
            else:
                plain_state.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "plain_state": plain_state}


def _optimizer_from_file(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor],
                         meta: Mapping[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta.get("plain_state", {}).items():
        state.setdefault(int(idx), {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ============================================================================================== run lock
LOCK_NAME = "training.lock"


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _process_started(pid: int) -> str | None:
    """When process ``pid`` started (Linux: clock ticks since boot, from /proc); None when unknown. A
    different value for the same pid means the pid was reused by another process."""
    try:
        text = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        import ctypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        handle = kernel32.OpenProcess(0x1000, False, int(pid))  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5  # access denied: it exists
        try:
            code = ctypes.c_ulong()
            kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
            return code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return True
    return True


class RunLock:
    """One training run per run folder: ``<run folder>/training.lock``, created atomically
    (``O_CREAT | O_EXCL``), holds the pid, host and start time of the run that owns the folder.

    A second run is refused with a message naming the first. A lock whose process is gone (no such pid on
    this host, the pid reused by a later process, or the machine rebooted since) is stale -- a crashed or
    killed run -- and is taken over, so a lock never stays stuck. :meth:`release` removes only our own lock.
    """

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.name = name
        self.token = uuid.uuid4().hex
        self.held = False

    def _holder(self) -> tuple[str | None, dict[str, Any] | None]:
        """(text, record) of the lock file; text None: there is none; record None: unreadable (half written)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None, None
        except OSError:
            return "", None
        try:
            data = json.loads(text)
        except ValueError:
            return text, None
        return text, data if isinstance(data, dict) and data else None

    def _stale(self, holder: Mapping[str, Any]) -> bool:
        import socket

        if holder.get("host") != socket.gethostname():
            return False  # another machine sharing this folder: its process cannot be checked from here
        if holder.get("boot_id") and _boot_id() and holder["boot_id"] != _boot_id():
            return True
        try:
            pid = int(holder.get("pid", 0))
        except (TypeError, ValueError):
            return True
        if not _pid_alive(pid):
            return True
        started = holder.get("process_started")
        now = _process_started(pid)
        return bool(started and now and started != now)

    def _refusal(self, holder: Mapping[str, Any]) -> TrainingError:
        import socket

        where = "" if holder.get("host") == socket.gethostname() else f" on {holder.get('host', 'another machine')}"
        other = holder.get("name") or self.name
        note = (f" It runs on another machine, so whether it is still alive cannot be checked from here: if it is "
                f"not, delete {self.path}." if where else
                f" (If you are sure no such run is going, delete {self.path}.)")
        return TrainingError(
            f"A training run named '{other}' is already running (pid {holder.get('pid', '?')}{where}, started "
            f"{holder.get('started', 'at an unknown time')}) in {self.folder}; wait for it to finish or choose "
            f"another save name.{note}")

    def _take_over(self, text: str, holder: Mapping[str, Any] | None) -> None:
        aside = self.path.with_name(f".{LOCK_NAME}.{uuid.uuid4().hex[:8]}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another run took it over first
        try:
            moved = aside.read_text(encoding="utf-8")
        except OSError:
            moved = None
        if moved != text:  # a new run locked the folder between our read and the rename: give it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            except OSError:
                if not self.path.exists():
                    os.rename(aside, self.path)
        else:
            log.warning("the run folder %s was locked by pid %s, which is no longer running (a crashed or killed "
                        "run); taking it over.", self.folder, (holder or {}).get("pid", "?"))
        aside.unlink(missing_ok=True)

    def acquire(self) -> "RunLock":
        import socket

        from .storage import storage_error

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            err = storage_error(exc, self.path, what="the run folder's lock", advice="or choose another run folder")
            raise (err or exc) from exc
        pid = os.getpid()
        record = {"pid": pid, "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "name": self.name, "process_started": _process_started(pid), "boot_id": _boot_id(),
                  "token": self.token}
        for _ in range(200):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                text, holder = self._holder()
                if text is None:
                    continue  # released meanwhile
                if holder is None:  # being written by its creator right now, or left empty by a crash
                    try:
                        age = time.time() - self.path.stat().st_mtime
                    except OSError:
                        continue
                    if age < 5.0:
                        time.sleep(0.05)
                        continue
                elif not self._stale(holder):
                    raise self._refusal(holder) from None
                self._take_over(text, holder)
                continue
            except OSError as exc:
                err = storage_error(exc, self.path, what="the run folder's lock", advice="or choose another run "
                                    "folder")
                raise (err or exc) from exc
            try:
                os.write(fd, json.dumps(record).encode("utf-8"))
            finally:
                os.close(fd)
            self.held = True
            return self
        raise TrainingError(f"Could not lock the run folder {self.folder}: {self.path} keeps changing. Another "
                            "run is starting there; wait for it or choose another save name.")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        _, holder = self._holder()
        if holder and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)


# ============================================================================================== the loop
class Trainer:
    """One training run of ``method`` on ``model``.

    ``progress(step, total, info)`` gets ``info = {"loss", "losses", "eta", "lr", "skipped", "preview"}``
    after every step (``preview`` only on steps that made one). ``cancel()`` is checked before every step;
    on cancel a checkpoint is written and the adapter so far is returned (and saved if ``save_name``).
    ``accelerator`` (an ``accelerate.Accelerator``) makes the run data-parallel across its processes.
    """

    def __init__(self, model: "VideoModel", method: TrainingMethod, videos: Sequence[VideoSource],
                 prompt: str | Sequence[str], config: TrainingConfig | None = None, *,
                 progress: "ProgressCallback | None" = None, cancel: "CancelCheck | None" = None,
                 accelerator: Any = None, clip_scorer: Any = None) -> None:
        from .motion_model import MotionModel

        if isinstance(model, MotionModel):
            if model.adapters or model.hooks or model.noise_prior is not None:
                log.warning("training starts from the base model; the adapters, hooks and noise prior applied to "
                            "the MOTION_MODEL are not used for training.")
            model = model.base
        self.model = model
        self.method = method
        self.videos = list(videos)
        self.prompt = prompt
        self.config = (config or TrainingConfig()).resolved(method, len(self.videos))
        self.progress = progress
        self.cancel = cancel
        self.accelerator = accelerator
        self.world = int(getattr(accelerator, "num_processes", 1) or 1)
        self.rank = int(getattr(accelerator, "process_index", 0) or 0)
        self.is_main = self.rank == 0
        self.history: list[dict[str, Any]] = []
        self.skipped = 0
        self.bad_in_a_row = 0
        self.preview: torch.Tensor | None = None
        self._previewed_at = -1
        self.step = 0
        self.run_dir = Path(self.config.run_dir) if self.config.run_dir else self._default_run_dir()
        self.clip_scorer = clip_scorer
        self.scoring = bool(self.config.score_previews or self.config.select_best)
        self.best_step: int | None = None
        self.best_adapter_path: Path | None = None

    # ------------------------------------------------------------------ public
    def run(self, resume: str | os.PathLike | None = None) -> TrainingResult:
        cfg, model = self.config, self.model
        started = time.perf_counter()
        model.check_size(cfg.width, cfg.height)
        model.frame_limits.check(cfg.frames)
        # one run per run folder: a second run with the same save name would write into the first one's
        # checkpoints (and a new run clears the folder), so it is refused before it touches anything
        lock = RunLock(self.run_dir, cfg.save_name or self.run_dir.name)
        refused: MotionKitError | None = None
        if self.is_main:
            try:
                lock.acquire()
            except MotionKitError as exc:
                refused = exc
        try:
            if self._any(refused is not None):
                raise refused or TrainingError(f"The main process could not lock the run folder {self.run_dir}.")
            return self._run(resume, started)
        finally:
            lock.release()

    def _run(self, resume: str | os.PathLike | None, started: float) -> TrainingResult:
        cfg, model, method = self.config, self.model, self.method
        self.videos, self.prompt = method.prepare(cfg, self.videos, self.prompt)
        clips = build_clips(self.videos, self.prompt, frames=cfg.frames, fps=cfg.fps, width=cfg.width,
                            height=cfg.height, windows=cfg.windows, resize=cfg.resize)
        self.num_clips = len(clips)
        self._score_reference = clips[0].frames if clips else None  # what the previews are scored against
        self._score_memo: Any = None  # the reference's tracks / CLIP features, computed at the first preview
        data_fp = clips_fingerprint(clips)
        checkpoint = find_checkpoint(resume) if resume else None
        state = self._read_state(checkpoint, data_fp) if checkpoint else None
        if self.is_main:
            if checkpoint is None:
                self._clear_old_checkpoints()
            else:
                self._clear_partials()
        saved_py, saved_np = random.getstate(), np.random.get_state()
        devices = [model.device] if model.device.type == "cuda" else []
        installed = False
        try:
            with autograd("training"), torch.random.fork_rng(devices=devices):
                self._seed_everything()
                self.cached = self._cache(clips, checkpoint)
                self.generator = torch.Generator("cpu").manual_seed(cfg.seed + 7919 * self.rank)
                activations = self._probe_activations()
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(cfg.seed)  # adapter init: the same on every process
                    groups = method.setup(model, self.cached, torch.Generator("cpu").manual_seed(cfg.seed))
                installed = True
                self.groups = groups
                self._check_groups(groups)
                self._check_memory(groups, activations)
                self.optimizer = torch.optim.AdamW(
                    [{"params": g.params, "lr": g.lr, "weight_decay": g.weight_decay, "betas": g.betas, "eps": g.eps,
                      "name": g.name} for g in groups])
                lam = _lr_lambda(cfg.lr_scheduler, cfg.warmup_steps, cfg.steps)
                self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, [lam] * len(groups))
                self.autocast_dtype = autocast_dtype(cfg, model)
                self.scaler = grad_scaler(model, self.autocast_dtype)
                if state is not None:
                    self._load_checkpoint(checkpoint, state)
                self._check_disk_space(groups)
                if self.step >= cfg.steps:
                    log.info("checkpoint %s is already at step %d of %d; nothing to train.", checkpoint, self.step,
                             cfg.steps)
                plan = self.checkpoint_plan
                with _checkpoint_every_denoiser(model, plan.mode != "off",
                                                units=plan.units if plan.mode == "partial" else None), \
                        self._speed_levers():
                    cancelled = self._loop(data_fp)
                if cancelled and self.step == 0:
                    raise Cancelled("Training was cancelled before its first step: nothing was trained, so no "
                                    "checkpoint or adapter was saved.")
                adapter = method.build_adapter(model, steps=self.step, training_config=self._metadata_config(),
                                               clips=self.cached)
                if cfg.final_preview and not cancelled and self.step > 0 and self._previewed_at != self.step:
                    self._preview(final=True)
                ckpt_path = self._last_checkpoint
                # the last finished step is always checkpointed (checkpoint_every 0 = "only at the end")
                if self.step > 0 and (ckpt_path is None or ckpt_path.name != f"checkpoint-{self.step:06d}"):
                    ckpt_path = self._save_checkpoint(data_fp)
                adapter_path = None
                if cfg.save_name and self.is_main:
                    from .adapters.files import save_named_adapter

                    try:
                        adapter_path = save_named_adapter(adapter, cfg.save_name, cfg.adapters_dir)
                    except StorageError as exc:
                        raise StorageError(f"{exc} The training's checkpoint {ckpt_path} is kept: once there is room, "
                                           "resume from it to save the adapter (a finished run resumes without "
                                           "training).") from exc
        finally:
            random.setstate(saved_py)
            np.random.set_state(saved_np)
            if installed:
                method.teardown(model)
        return TrainingResult(adapter=adapter, steps=self.step, total_steps=cfg.steps, cancelled=cancelled,
                              history=list(self.history), run_dir=self.run_dir, checkpoint=ckpt_path,
                              adapter_path=adapter_path, preview=self.preview,
                              seconds=time.perf_counter() - started, skipped_steps=self.skipped,
                              best_step=self.best_step, best_adapter_path=self.best_adapter_path)

    # ------------------------------------------------------------------ setup pieces
    def _default_run_dir(self) -> Path:
        import tempfile

        name = self.config.save_name or self.method.name or "run"
        return Path(tempfile.gettempdir()) / "motionkit-training" / name

    def _seed_everything(self) -> None:
        seed = int(self.config.seed) + 7919 * self.rank
        random.seed(seed)
        np.random.seed(seed % (2**32))
        torch.manual_seed(seed)

    def _cache(self, clips: Sequence[Clip], checkpoint: Path | None) -> list[CachedClip]:
        """Latents and prompt embeddings once per clip; from the checkpoint on resume (bit-identical even
        where VAE kernels are not deterministic); the noise prior inverted once if the method stores one."""
        from safetensors.torch import load_file

        model = self.model
        cached = cache_clips(model, clips, self.config.seed, self.cancel) if checkpoint is None else None
        if checkpoint is not None:
            data = load_file(str(checkpoint / "cache.safetensors"))
            embeds: dict[str, torch.Tensor] = {}
            cached = []
            for i, clip in enumerate(clips):
                if clip.prompt not in embeds:
                    embeds[clip.prompt] = data[f"prompt_embeds.{i}"].to(model.device, model.dtype)
                cached.append(CachedClip(index=i, video_index=clip.video_index, prompt=clip.prompt,
                                         latents=data[f"latents.{i}"].to(model.device), prompt_embeds=embeds[clip.prompt],
                                         inverted=data.get(f"inverted.{i}")))
        steps = int(getattr(self.method, "noise_prior_steps", 0) or 0)
        if steps and any(c.inverted is None for c in cached):
            from .noise_prior import invert_latents

            empty = model.encode_prompt([""])
            for c in cached:
                if c.inverted is None:
                    c.inverted = invert_latents(model, c.latents, steps=steps, prompt_embeds=empty, cancel=self.cancel)
        return cached

    def _probe_activations(self) -> int | None:
        """Activation bytes of the run for families without their own formula: one measured probe forward
        of the *bare* model (before the method installs anything that is tied to the training size, e.g.
        Motion Inversion's embeddings), under a forked RNG so the run's trajectory is unchanged."""
        from .memory import _measured_activation_bytes, unit_activations

        cfg = self.config
        devices = [self.model.device] if self.model.device.type == "cuda" else []
        embeds = self.cached[0].prompt_embeds if self.cached else None
        self._unit_profile = None
        if cfg.gradient_checkpointing == "auto":  # per unit, so that only what must be recomputed is
            with torch.random.fork_rng(devices=devices):
                self._unit_profile = unit_activations(self.model, cfg.frames, cfg.height, cfg.width, embeds)
            return None
        if hasattr(self.model, "activation_bytes"):
            return None
        with torch.random.fork_rng(devices=devices):
            measured, _ = _measured_activation_bytes(
                self.model, 1, cfg.frames, cfg.height, cfg.width, cfg.gradient_checkpointing == "on", embeds)
        return measured

    def _profile_with_adapters(self) -> Any:
        """The per-unit activation profile again with every installed LoRA set running in training mode (their
        dropout masks and inputs are saved too); None where the method's adapters cannot run at the probe's
        size (Motion Inversion's embeddings are tied to the training size) -- the bare model's profile stays."""
        from .adapters.lora import active_lora, lora_layers, lora_root, set_active_lora
        from .adapters.lora_fast import fused_lora
        from .memory import unit_activations

        root = lora_root(self.model)
        layers = lora_layers(root)
        if not layers:
            return None
        names = sorted({n for layer in layers.values() for n in layer.lora_A.keys()})
        before = active_lora(root)
        cfg = self.config
        devices = [self.model.device] if self.model.device.type == "cuda" else []
        flags = [(p, p.requires_grad) for g in getattr(self, "groups", []) for p in g.params]
        try:
            with torch.random.fork_rng(devices=devices):
                for p, _ in flags:  # their weight gradients keep the LoRA inputs
                    p.requires_grad_(True)
                set_active_lora(root, names)
                self.method.train_mode(self.model)
                with fused_lora(root):  # the sets as the loop runs them (what they keep differs from peft's)
                    return unit_activations(self.model, cfg.frames, cfg.height, cfg.width,
                                            self.cached[0].prompt_embeds if self.cached else None)
        except (RuntimeError, ValueError, MotionKitError):
            return None
        finally:
            set_active_lora(root, sorted(before))
            for p, flag in flags:
                p.requires_grad_(flag)

    def _check_memory(self, groups: Sequence[ParamGroup], activations: int | None = None) -> None:
        """Estimate the run's device memory and refuse it before the first step when it cannot fit
        (:mod:`motion_core.memory`), so an impossible run fails in seconds with the numbers and what to
        change instead of minutes later with an out-of-memory error."""
        from .offload import RELEASABLE
        from .memory import (
            CheckpointPlan,
            available_memory,
            check_training_memory,
            estimate_training_memory,
            format_bytes,
            plan_checkpointing,
        )

        cfg = self.config
        kwargs = dict(trainable_params=[p for g in groups for p in g.params], num_frames=cfg.frames,
                      height=cfg.height, width=cfg.width, lora_rank=int(getattr(self.method.config, "rank", 0) or 0),
                      text_encoder_resident=False if cfg.release_encoders else None,
                      released=RELEASABLE if cfg.release_encoders else ())
        profile = getattr(self, "_unit_profile", None)
        if profile is not None:
            profile = self._profile_with_adapters() or profile
        if profile is not None:  # auto: the fixed part of the estimate decides how many activations may stay
            units, outside = profile
            fixed = estimate_training_memory(self.model, gradient_checkpointing=True, activation_bytes=0, log=False,
                                             **kwargs)
            free = available_memory(fixed.device)
            cap = _memory_cap()
            if cap is not None:
                free = cap if free is None else min(free, cap)
            budget = None
            if free is not None:  # check_training_memory's rule: total - resident <= 0.95 free, workspace 8 %
                budget = max(0, int((0.95 * free - (fixed.total - fixed.resident)) / 1.08))
            plan = plan_checkpointing("auto", units, outside, budget=budget)
            activations = plan.activations
        else:
            plan = CheckpointPlan(cfg.gradient_checkpointing, cfg.gradient_checkpointing, [], 0, activations or 0,
                                  0, 0)
        estimate = estimate_training_memory(
            self.model, gradient_checkpointing=plan.mode != "off", activation_bytes=activations, **kwargs)
        if profile is None:
            plan.activations = estimate.activations
        self.checkpoint_plan = plan
        self.memory_estimate = estimate
        if self.is_main:
            message = (f"{plan.describe()}" if profile is not None else
                       f"gradient checkpointing {plan.mode}: activations {format_bytes(estimate.activations)}")
            log.info("%s. %s", message, estimate.describe())
        check_training_memory(estimate)

    def _check_groups(self, groups: Sequence[ParamGroup]) -> None:
        names = [g.name for g in groups]
        if len(set(names)) != len(names):
            raise TrainingError(f"duplicate optimizer group names {names}.")
        seen: set[int] = set()
        for g in groups:
            for p in g.params:
                if id(p) in seen:
                    raise TrainingError(f"a parameter belongs to two optimizer groups ({g.name}).")
                seen.add(id(p))
                if p.dtype != torch.float32:
                    raise TrainingError(f"trainable parameters must be float32 (group {g.name} has {p.dtype}).")
                p.requires_grad_(True)

    def _metadata_config(self) -> dict[str, Any]:
        return {"method": self.method.name, "method_config": self.method.config_dict(),
                "training": self.config.to_json(), "videos": len(self.videos), "clips": self.num_clips}

    # ------------------------------------------------------------------ the loop
    def _clip_for(self, step: int) -> CachedClip:
        """Epoch-wise shuffled clips, the same order on every process; process r takes every world-th."""
        g = step * self.world + self.rank
        n = len(self.cached)
        epoch, pos = divmod(g, n)
        perm = torch.randperm(n, generator=torch.Generator("cpu").manual_seed(self.config.seed * 1_000_003 + epoch))
        return self.cached[int(perm[pos])]

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.model.device.type, dtype=self.autocast_dtype)

    def _no_autocast(self) -> contextlib.AbstractContextManager:
        """Backward passes run outside autocast (checkpoint recomputation restores the forward's own
        autocast state by itself)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.model.device.type, enabled=False)

    def _any(self, flag: bool) -> bool:
        """True if ``flag`` is True on any process."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.model.device)
        return bool(self.accelerator.reduce(t, reduction="sum").item() > 0)

    def _loop(self, data_fp: str) -> bool:
        cfg, model, method = self.config, self.model, self.method
        self._last_checkpoint: Path | None = None
        method.train_mode(model)
        t0, first = time.perf_counter(), self.step
        while self.step < cfg.steps:
            if self._any(bool(self.cancel is not None and self.cancel())):
                log.info("training cancelled at step %d of %d", self.step, cfg.steps)
                return True
            step = self.step
            batch = Batch(step=step, clip=self._clip_for(step), model=model, generator=self.generator, method=method,
                          _backward=self._backward)
            self._new_step_state()
            with self._autocast():
                out = method.training_step(model, batch)
            record = self._apply(out)
            if getattr(self, "_compiling", False) and self.step == first:
                self._compiling = False
                log.info("first step with torch.compile (regional, %s): %.1fs including compilation",
                         cfg.compile, time.perf_counter() - t0)
            self.step += 1
            record["step"] = self.step
            self.history.append(record)
            preview = None
            # scored runs preview at every checkpoint too: each checkpoint gets its scores
            scored_now = self.scoring and bool(cfg.checkpoint_every) and self.step % cfg.checkpoint_every == 0
            if ((cfg.validate_every and self.step % cfg.validate_every == 0) or scored_now) and self.step < cfg.steps:
                if self._preview():
                    return True
                preview = self.preview
            elif (cfg.validate_every or self.scoring) and self.step == cfg.steps and cfg.final_preview:
                if self._preview(final=True):
                    return True
                preview = self.preview
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self._last_checkpoint = self._save_checkpoint(data_fp)
            if self.progress is not None:
                elapsed = time.perf_counter() - t0
                eta = elapsed / (self.step - first) * (cfg.steps - self.step)
                info = {"loss": record["loss"], "losses": {k: v for k, v in record.items()
                                                           if k.startswith("loss") and k != "loss"},
                        "eta": eta, "lr": self.scheduler.get_last_lr()[0], "skipped": self.skipped,
                        "preview": preview}
                self.progress(self.step, cfg.steps, info)
        return False

    @contextlib.contextmanager
    def _speed_levers(self) -> Iterator[None]:
        """For the loop's duration: the idle encoders leave the device and RAM (back for previews), and the
        step runs inside :func:`step_levers`."""
        from .offload import ComponentStash

        cfg, model = self.config, self.model
        with contextlib.ExitStack() as stack:
            if cfg.release_encoders:
                stash = ComponentStash(model, folder=None)
                stack.callback(self.__dict__.pop, "_stash", None)
                stack.enter_context(stash)
                self._stash = stash
                if stash.released and self.is_main:
                    log.info("released %s (%s) until the run ends; they come back for previews",
                             " and ".join(stash.released), _mib(stash.released_bytes))
            self._compiling = cfg.compile == "on"
            stack.enter_context(step_levers(model, self._compiling))
            yield

    def _new_step_state(self) -> None:
        self._grads: dict[int, torch.Tensor] = {}
        self._backed: dict[str, list[torch.Tensor]] = {}
        self._bad = False

    def _backward(self, loss: torch.Tensor, names: Sequence[str]) -> None:
        """Gradients of ``loss`` for the groups ``names`` at the current weights (see Batch.backward)."""
        groups = {g.name: g for g in self.groups}
        unknown = [n for n in names if n not in groups]
        if unknown:
            raise TrainingError(f"{self.method.name} asked for gradients of unknown groups {unknown}.")
        for n in names:
            self._backed.setdefault(n, []).append(loss)
        if self._bad or not bool(torch.isfinite(loss.detach()).all()):
            self._bad = True  # no gradient through a NaN graph; the step will be skipped
            return
        params = [p for n in names for p in groups[n].params if p.requires_grad]
        if params:
            self._accumulate(loss, params)

    def _accumulate(self, loss: torch.Tensor, params: list[torch.Tensor], retain_graph: bool = False) -> None:
        """Add ``∂loss/∂params`` (scaled for fp16, outside autocast) to the step's gradients."""
        scaled = self.scaler.scale(loss) if self.scaler is not None else loss
        with self._no_autocast():
            result = torch.autograd.grad(scaled, params, allow_unused=True, retain_graph=retain_graph)
        for p, g in zip(params, result):
            if g is not None:
                self._grads[id(p)] = g if id(p) not in self._grads else self._grads[id(p)] + g

    def _apply(self, out: StepOutput) -> dict[str, Any]:
        """Gradients per group at the current weights, all-reduce, NaN guard, one optimizer step."""
        groups = {g.name: g for g in self.groups}
        unknown = sorted(set(out.losses) - set(groups))
        if unknown:
            raise TrainingError(f"{self.method.name} returned losses for unknown groups {unknown}.")
        distinct: list[torch.Tensor] = []
        for loss in out.losses.values():
            if not any(loss is d for d in distinct):
                distinct.append(loss)
        values = {name: float(loss.detach()) for name, loss in out.losses.items()}
        headline = out.loss if out.loss is not None else (
            sum(float(d.detach()) for d in distinct) / max(1, len(distinct)))
        record: dict[str, Any] = {"loss": float(headline)}
        for k, v in out.logs.items():
            record[k] = float(v.detach()) if torch.is_tensor(v) else float(v)
        if not out.logs:
            for name, v in values.items():
                record[f"loss_{name}"] = v
        bad = self._bad or not all(math.isfinite(v) for v in values.values())
        # losses the method did not back-propagate itself: one autograd.grad per distinct loss, before any step
        pending = [d for d in distinct if not any(d is l for n in out.losses for l in self._backed.get(n, ()))]
        if not self._any(bad):
            for i, loss in enumerate(pending):
                names = [n for n, l in out.losses.items() if l is loss]
                params = [p for n in names for p in groups[n].params if p.requires_grad]
                self._accumulate(loss, params, retain_graph=i < len(pending) - 1)
        else:
            bad = True
        grads = self._grads
        active = set(out.losses) | set(self._backed)
        if not bad:
            bad = self._reduce(grads, active)
        if self._any(bad):
            self.skipped += 1
            self.bad_in_a_row += 1
            log.warning("step %d: non-finite loss or gradient (%s); the step was skipped (%d in a row).",
                        self.step + 1, ", ".join(f"{k}={v:.4g}" for k, v in values.items()), self.bad_in_a_row)
            record["skipped"] = 1.0
            self.optimizer.zero_grad(set_to_none=True)
            if self.bad_in_a_row >= self.config.max_bad_steps:
                raise TrainingError(
                    f"Training stopped: the loss or its gradients were NaN/inf {self.bad_in_a_row} steps in a row "
                    f"(last at step {self.step + 1}). Lower the learning rate, train in fp32 or bf16 instead of fp16, "
                    "or check the training video (a black or corrupt clip).")
            self.scheduler.step()
            return record
        self.bad_in_a_row = 0
        for g in self.groups:
            for p in g.params:
                p.grad = grads.get(id(p))
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        for g in self.groups:
            if g.max_grad_norm and g.name in active:
                torch.nn.utils.clip_grad_norm_([p for p in g.params if p.grad is not None], g.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return record

    def _reduce(self, grads: dict[int, torch.Tensor], active: set[str]) -> bool:
        """Average each group's gradients over the processes that computed one (DDP semantics); returns
        True when a gradient is not finite (unscaled runs; the GradScaler checks scaled ones itself)."""
        if self.world > 1:
            flat, counts = [], []
            for g in self.groups:
                has = g.name in active
                counts.append(1.0 if has else 0.0)
                for p in g.params:
                    gr = grads.get(id(p))
                    flat.append((gr if gr is not None else torch.zeros_like(p)).reshape(-1).float())
            buffer = torch.cat(flat + [torch.tensor(counts, device=flat[0].device)])
            buffer = self.accelerator.reduce(buffer, reduction="sum")
            offset = 0
            totals = buffer[-len(self.groups):]
            for gi, g in enumerate(self.groups):
                n = float(totals[gi])
                for p in g.params:
                    chunk = buffer[offset:offset + p.numel()].view_as(p)
                    offset += p.numel()
                    if n > 0:
                        grads[id(p)] = (chunk / n).to(p.dtype)
                    else:
                        grads.pop(id(p), None)
                if n > 0:
                    active.add(g.name)
        if self.scaler is not None:
            return False
        return not all(torch.isfinite(g).all() for g in grads.values())

    # ------------------------------------------------------------------ previews
    def _preview(self, final: bool = False) -> bool:
        """A validation sample with the adapters configured for inference; returns True if cancelled."""
        self._previewed_at = self.step  # on every process: the decision to preview must agree
        if not self.is_main:
            if self.accelerator is not None:
                self.accelerator.wait_for_everyone()
            return False
        from .motion_model import MotionModel
        from .noise_prior import NoisePrior
        from .sampling import SampleRequest, sample

        cfg, model = self.config, self.model
        pv = cfg.preview
        prompts = pv.prompts or [self.cached[0].prompt]
        request = SampleRequest(prompt=prompts, negative_prompt=pv.negative_prompt, width=pv.width or cfg.width,
                                height=pv.height or cfg.height, num_frames=pv.frames or cfg.frames,
                                steps=pv.steps, cfg=pv.cfg, seed=pv.seed)
        motion = MotionModel(base=model)
        inverted = self.cached[0].inverted
        if pv.noise_prior > 0 and inverted is not None:
            motion = motion.with_noise_prior(NoisePrior(inverted, pv.noise_prior))
        for hook in self.method.preview_hooks(model):
            motion = motion.with_hook(hook)
        devices = [model.device] if model.device.type == "cuda" else []
        cancelled = False
        try:
            stash = getattr(self, "_stash", None)
            with torch.random.fork_rng(devices=devices), self.method.preview_context(model), \
                    (stash.back() if stash is not None else contextlib.nullcontext()):
                _eval_every_denoiser(model)
                with self._autocast():
                    result = sample(motion, request, cancel=self.cancel)
            self.preview = result.frames
            if cfg.write_preview_videos:
                self._write_preview(result.frames, final)
        except Cancelled:
            cancelled = True
        finally:
            self.method.train_mode(model)
        if self.scoring and not cancelled:
            self._score_preview(prompts[0])
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
        return cancelled

    # ------------------------------------------------------------------ checkpoint scores
    def _score_preview(self, prompt: str) -> None:
        """Motion fidelity (and CLIP-T) of the preview against the training clip, into this step's history
        record; with ``select_best``, a new best is saved as ``<save_name>_best.safetensors`` at once."""
        from .metrics import ReferenceMemo, evaluate_motion, load_clip_scorer
        from .metrics.selection import BEST_RULE, selection_score

        cfg = self.config
        if self.preview is None or self._score_reference is None:
            return
        if self.clip_scorer is None and cfg.score_clip:
            self.clip_scorer = load_clip_scorer(cfg.score_clip, device=self.model.device)
        try:
            if self._score_memo is None:
                self._score_memo = ReferenceMemo()
            ev = evaluate_motion(self._score_reference, self.preview[0], prompt=prompt, clip=self.clip_scorer,
                                 memo=self._score_memo)
        except InputError as exc:  # a training clip without trackable motion: say so once, keep training
            log.warning("checkpoint scores are off for this run: %s", exc)
            self.scoring = False
            return
        scores = {"motion_fidelity": ev.motion_fidelity}
        if ev.text_alignment is not None:
            scores["text_alignment"] = ev.text_alignment
        if self.history and self.history[-1].get("step") == self.step:
            self.history[-1].update(scores)
        log.info("step %d scores: %s", self.step, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        if not cfg.select_best:
            return
        scored = [h for h in self.history if h.get("step", 0) < self.step and selection_score(h) is not None]
        score = selection_score(scores)
        if scored and score is not None and score <= max(selection_score(h) for h in scored):
            if self.best_step is None:  # resumed: the best so far is an earlier step's file
                self.best_step = int(max(scored, key=lambda h: (selection_score(h), -h["step"]))["step"])
            return
        best = {"step": self.step, "rule": BEST_RULE, "scores": scores, "selection_score": score}
        adapter = self.method.build_adapter(self.model, steps=self.step, clips=self.cached,
                                            training_config={**self._metadata_config(), "best_checkpoint": best})
        self.best_step = self.step
        if cfg.save_name:
            from .adapters.files import save_named_adapter

            self.best_adapter_path = save_named_adapter(adapter, f"{cfg.save_name}{BEST_SUFFIX}", cfg.adapters_dir)

    def _write_preview(self, frames: torch.Tensor, final: bool) -> None:
        try:
            from .video import write_video

            folder = self.run_dir / "previews"
            folder.mkdir(parents=True, exist_ok=True)
            for i, video in enumerate(frames):
                name = f"{'final' if final else f'step-{self.step:06d}'}_{i}.mp4"
                write_video(folder / name, video, self.config.fps or 8.0)
        except Exception as exc:  # a missing encoder must not stop training
            log.warning("could not write the preview video: %s", exc)

    # ------------------------------------------------------------------ checkpoints
    def _fingerprint_inputs(self, data_fp: str) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "method": self.method.name, "method_config": self.method.config_dict(),
                "trajectory": self.config.trajectory(), "data": data_fp, "family": self.model.family,
                "base_model": self.model.base_model, "world_size": self.world,
                "groups": [g.name for g in self.groups] if hasattr(self, "groups") else None}

    def _checkpoint_contents(self, data_fp: str) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, str]]:
        """This process's checkpoint files: safetensors name -> tensors, text name -> text."""
        rng = {"torch_cpu": torch.get_rng_state(), "trainer": _rng_tensor_state(self.generator)}
        if self.model.device.type == "cuda":
            rng["torch_cuda"] = torch.cuda.get_rng_state(self.model.device)
        np_state = np.random.get_state()
        rng["numpy_keys"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
        tensors = {f"rng_rank{self.rank}.safetensors": {k: v.contiguous() for k, v in rng.items()}}
        py_state = random.getstate()
        texts = {f"rng_rank{self.rank}.json": json.dumps({
            "python": [py_state[0], list(py_state[1]), py_state[2]],
            "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])]})}
        if self.is_main:
            tensors["trainable.safetensors"] = {k: v.detach().float().cpu().contiguous()
                                                for k, v in self.method.state_tensors(self.model).items()}
            opt_tensors, opt_meta = _optimizer_to_file(self.optimizer)
            tensors["optimizer.safetensors"] = opt_tensors
            cache: dict[str, torch.Tensor] = {}
            for c in self.cached:
                cache[f"latents.{c.index}"] = c.latents.detach().cpu().contiguous()
                cache[f"prompt_embeds.{c.index}"] = c.prompt_embeds.detach().float().cpu().clone()
                if c.inverted is not None:
                    cache[f"inverted.{c.index}"] = c.inverted.detach().float().cpu().contiguous()
            tensors["cache.safetensors"] = cache
            sched = {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"}
            inputs = self._fingerprint_inputs(data_fp)
            state = {
                "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": self.step,
                "total_steps": self.config.steps, "fingerprint": _sha(inputs), "fingerprint_inputs": inputs,
                "history": self.history, "skipped": self.skipped, "bad_in_a_row": self.bad_in_a_row,
                "optimizer": opt_meta, "lr_scheduler": sched,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "config": self.config.to_json(), "saved": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            texts["trainer_state.json"] = json.dumps(state, default=str)
        return tensors, texts

    def _save_checkpoint(self, data_fp: str) -> Path:
        """Write ``checkpoint-<step>`` into a ``.partial`` folder, then rename it into place: a checkpoint is
        complete or absent. A full disk (checked first, caught while writing) removes the partial folder and
        raises a StorageError naming the run folder, the bytes needed and free, and the last good checkpoint."""
        from safetensors.torch import save_file

        from .storage import describe_bytes, free_bytes, safetensors_bytes, storage_error

        final = self.run_dir / f"checkpoint-{self.step:06d}"
        partial = self.run_dir / f".checkpoint-{self.step:06d}.partial"
        tensors, texts = self._checkpoint_contents(data_fp)
        needed = sum(safetensors_bytes(t) for t in tensors.values()) + sum(len(t.encode()) for t in texts.values())
        try:
            if self.is_main:
                shutil.rmtree(partial, ignore_errors=True)
                free = free_bytes(self.run_dir)
                if free is not None and free < needed:
                    raise OSError(errno.ENOSPC, f"{describe_bytes(free)} free, {describe_bytes(needed)} needed")
                partial.mkdir(parents=True)
            if self.accelerator is not None:
                self.accelerator.wait_for_everyone()
            for name, content in tensors.items():
                save_file(content, str(partial / name))
            for name, text in texts.items():
                (partial / name).write_text(text)
            if self.accelerator is not None:
                self.accelerator.wait_for_everyone()
            if self.is_main:
                if final.exists():
                    shutil.rmtree(final)
                os.replace(partial, final)
        except BaseException as exc:
            if self.is_main:
                shutil.rmtree(partial, ignore_errors=True)
            err = storage_error(exc, final, what="the training checkpoint", needed=needed,
                                advice="or put the run folder on another disk (CLI: --run-dir)")
            if err is None:
                raise
            last = self._last_complete_checkpoint()
            keep = (f" The last complete checkpoint is {last}: resume from it once there is room."
                    if last is not None else " No checkpoint of this run was kept.")
            raise StorageError(f"{err}{keep}") from exc
        if self.is_main:
            self._prune()
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
        return final

    def _last_complete_checkpoint(self) -> Path | None:
        try:
            return find_checkpoint(self.run_dir)
        except TrainingError:
            return None

    def _clear_partials(self) -> None:
        """Remove ``.checkpoint-*.partial`` folders a killed run left behind (the lock says none is being
        written now)."""
        if self.run_dir.is_dir():
            for c in self.run_dir.iterdir():
                if c.is_dir() and c.name.startswith(".checkpoint-") and c.name.endswith(".partial"):
                    shutil.rmtree(c, ignore_errors=True)

    def _check_disk_space(self, groups: Sequence[ParamGroup]) -> None:
        """Refuse the run before its first step when the adapters folder or the run folder is not writable or
        its disk lacks room for the adapter file and the checkpoints the run will keep (estimated from the
        trainable parameters, the latent cache and the history; :mod:`motion_core.storage`)."""
        problem: MotionKitError | None = None
        if self.is_main:
            try:
                from .storage import check_room

                check_room(self.disk_needs(groups), job=f"the training run '{self.config.save_name or self.run_dir.name}'")
            except MotionKitError as exc:
                problem = exc
        if self._any(problem is not None):
            raise problem or StorageError(f"The main process found too little disk space for {self.run_dir}.")

    def disk_needs(self, groups: Sequence[ParamGroup]) -> list[Any]:
        """What the run will write, by folder (:class:`motion_core.storage.Need`): the adapter file (when it
        is saved) and the checkpoints kept at once."""
        from .storage import Need

        cfg = self.config
        params = [p for g in groups for p in g.params]
        trainable = sum(p.numel() * 4 for p in params)  # float32 (checked by _check_groups)
        names = 256 * len(params)  # safetensors header per tensor: its name, dtype, shape and offsets
        inverted = sum(c.inverted.numel() * 4 for c in self.cached if c.inverted is not None)
        # adapters keep the trainable tensors in float32, except weight deltas stored at a lower precision
        stored = {"float16": 2, "bfloat16": 2}.get(str(getattr(self.method.config, "delta_dtype", "")), 4)
        adapter = int(1.05 * (trainable * stored // 4 + names + inverted) + 64 * 1024)  # + metadata
        optimizer = 2 * trainable + 2 * names + len(params) * 300  # AdamW exp_avg + exp_avg_sq + step
        cache = sum(c.latents.numel() * c.latents.element_size() + c.prompt_embeds.numel() * 4 + 3 * 64
                    for c in self.cached) + inverted
        state = 16 * 1024 + len(json.dumps(self.config.to_json())) + 256 * cfg.steps  # the history grows
        rng = 64 * 1024
        checkpoint = int(1.05 * (trainable + names + optimizer + cache + state + rng))
        existing = len([c for c in self.run_dir.iterdir() if c.is_dir() and _CHECKPOINT_DIR.match(c.name)]
                       ) if self.run_dir.is_dir() else 0
        remaining = max(0, cfg.steps - self.step)
        planned = math.ceil(remaining / cfg.checkpoint_every) if cfg.checkpoint_every else 1
        # written before the oldest is pruned: up to keep + 1 on disk at once (existing ones already count)
        count = max(1, min(planned, cfg.keep_checkpoints + 1 - existing))
        what = "the training checkpoint" if count == 1 else f"{count} training checkpoints kept at once"
        run_advice = "or put the run folder on another disk (CLI: --run-dir; ComfyUI: its output folder)"
        if count > 1:
            run_advice += ", or keep fewer checkpoints (keep_checkpoints)"
        needs = [Need(self.run_dir, count * checkpoint + 64 * 1024, what, run_advice)]
        if cfg.save_name:
            from .adapters.files import adapter_path

            target = adapter_path(cfg.save_name, cfg.adapters_dir)
            needs.append(Need(target.parent, adapter, "the adapter file",
                              "or save the adapter into another folder (CLI: --adapters-dir or "
                              "MOTIONKIT_ADAPTERS_DIR)"))
            if cfg.select_best:
                needs.append(Need(target.parent, adapter, "the best checkpoint's adapter file",
                                  "or save the adapters into another folder (CLI: --adapters-dir)"))
        return needs

    def _clear_old_checkpoints(self) -> None:
        """A new run (not a resume) in a folder holding another run's checkpoints replaces them, so that
        'resume the latest' can never pick up a checkpoint of an earlier run."""
        if not self.run_dir.is_dir():
            return
        old = [c for c in self.run_dir.iterdir() if c.is_dir() and (_CHECKPOINT_DIR.match(c.name)
                                                                    or c.name.startswith(".checkpoint-"))]
        if old:
            log.warning("starting a new run in %s: removing %d checkpoint(s) of an earlier run there (resume it "
                        "instead to continue it).", self.run_dir, len(old))
            for c in old:
                shutil.rmtree(c, ignore_errors=True)

    def _prune(self) -> None:
        found = sorted((int(m.group(1)), c) for c in self.run_dir.iterdir()
                       if c.is_dir() and (m := _CHECKPOINT_DIR.match(c.name)))
        for _, old in found[:-self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def _read_state(self, checkpoint: Path, data_fp: str) -> dict[str, Any]:
        try:
            state = json.loads((checkpoint / "trainer_state.json").read_text())
        except (OSError, ValueError) as exc:
            raise TrainingError(f"cannot read the checkpoint {checkpoint}: {exc}") from exc
        if state.get("format") != CHECKPOINT_FORMAT:
            raise TrainingError(f"{checkpoint} is not a MotionKit training checkpoint.")
        theirs = state.get("fingerprint_inputs", {})
        if theirs.get("method") != self.method.name:
            raise TrainingError(f"The checkpoint {checkpoint.name} is from a {theirs.get('method')!r} run; this is a "
                                f"{self.method.name!r} run. Resume it with the same method, or start a new run.")
        ours = self._fingerprint_inputs(data_fp)
        ours["groups"] = theirs.get("groups")  # groups are only known after setup; checked on load
        if _sha(ours) != state.get("fingerprint"):
            diffs = [k for k in ours if json.dumps(ours.get(k), sort_keys=True, default=str)
                     != json.dumps(theirs.get(k), sort_keys=True, default=str)]
            detail = {"method_config": "method settings (rank, learning rates, ...)", "trajectory":
                      "run settings (seed, frames, fps, size, ...)", "data": "training videos or prompts",
                      "family": "model family", "base_model": "base model", "world_size": "number of processes"}
            raise TrainingError(
                f"The checkpoint {checkpoint} was made with different {', '.join(detail.get(d, d) for d in diffs)}; "
                "resuming would not continue the same training. Use the settings of that run, or start a new run.")
        return state

    def _load_checkpoint(self, checkpoint: Path, state: dict[str, Any]) -> None:
        from safetensors.torch import load_file

        groups = [g.name for g in self.groups]
        if state["fingerprint_inputs"].get("groups") != groups:
            raise TrainingError(f"The checkpoint {checkpoint.name} trains groups {state['fingerprint_inputs'].get('groups')}, "
                                f"this run {groups}: another configuration.")
        self.method.load_state_tensors(self.model, load_file(str(checkpoint / "trainable.safetensors")))
        # on the CPU: Optimizer.load_state_dict moves moments to their parameters' device and keeps AdamW's
        # "step" counters on the CPU, as it wants them
        opt_tensors = load_file(str(checkpoint / "optimizer.safetensors"))
        _optimizer_from_file(self.optimizer, opt_tensors, state["optimizer"])
        self.scheduler.load_state_dict({**state["lr_scheduler"], "lr_lambdas": [None] * len(self.groups)})
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        self.skipped = int(state.get("skipped", 0))
        self.bad_in_a_row = int(state.get("bad_in_a_row", 0))
        rng = load_file(str(checkpoint / f"rng_rank{self.rank}.safetensors"))
        meta = json.loads((checkpoint / f"rng_rank{self.rank}.json").read_text())
        torch.set_rng_state(rng["torch_cpu"])
        if "torch_cuda" in rng and self.model.device.type == "cuda":
            torch.cuda.set_rng_state(rng["torch_cuda"], self.model.device)
        self.generator.set_state(rng["trainer"])
        version, internal, gauss = meta["python"]
        random.setstate((version, tuple(internal), gauss))
        name, pos, has_gauss, cached = meta["numpy"]
        np.random.set_state((name, rng["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
        log.info("resumed from %s at step %d", checkpoint, self.step)


def train(model: "VideoModel", method: TrainingMethod, videos: Sequence[VideoSource | str | torch.Tensor],
          prompt: str | Sequence[str], config: TrainingConfig | None = None, *, resume: str | os.PathLike | None = None,
          progress: "ProgressCallback | None" = None, cancel: "CancelCheck | None" = None,
          accelerator: Any = None, clip_scorer: Any = None) -> TrainingResult:
    """Train ``method`` on ``videos`` (VideoSource, file paths, or ``[F,H,W,3]`` frame tensors); ``clip_scorer`` (a
    :class:`motion_core.metrics.ClipScorer`) adds CLIP-T to the checkpoint scores of ``config.score_previews``."""
    sources = [v if isinstance(v, VideoSource) else VideoSource(frames=v) if torch.is_tensor(v) else VideoSource(path=v)
               for v in videos]
    trainer = Trainer(model, method, sources, prompt, config, progress=progress, cancel=cancel, accelerator=accelerator,
                      clip_scorer=clip_scorer)
    return trainer.run(resume)


# ============================================================================================== loss curve
_PALETTE = ((230, 85, 60), (60, 140, 230), (90, 190, 100), (210, 170, 50), (170, 90, 200), (60, 190, 190))


def render_loss_curve(history: Sequence[Mapping[str, Any]], *, keys: Sequence[str] | None = None,
                      width: int = 768, height: int = 384, smoothing: float = 0.9) -> torch.Tensor:
    """A loss-curve picture as a ComfyUI IMAGE ``[1, H, W, 3]``: raw values faint, an exponential moving
    average (``smoothing``) bold, one color per series (default: every ``loss*`` key), log-scaled y axis
    when the values span more than a factor of 20, skipped steps marked at the bottom."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), (250, 250, 248))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    steps = [int(h["step"]) for h in history if "step" in h]
    if keys is None:
        found: list[str] = []
        for h in history:
            for k in h:
                if k.startswith("loss_") and k not in found:
                    found.append(k)
        keys = found or ["loss"]
    left, right, top, bottom = min(56, width // 5), min(12, width // 20), min(24, height // 6), min(28, height // 6)
    pw, ph = width - left - right, height - top - bottom
    if pw < 16 or ph < 16:  # too small to draw anything readable
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
    draw.rectangle([left, top, left + pw, top + ph], outline=(120, 120, 120))
    if not steps or not keys:
        draw.text((left + 10, top + ph // 2), "no training steps yet", fill=(90, 90, 90), font=font)
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
    series = {k: [(int(h["step"]), float(h[k])) for h in history if k in h and math.isfinite(float(h[k]))]
              for k in keys}
    values = [v for pts in series.values() for _, v in pts]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    use_log = lo > 0 and hi / lo > 20
    tf = (lambda v: math.log10(v)) if use_log else (lambda v: v)
    ylo, yhi = tf(lo) if values else 0.0, tf(hi) if values else 1.0
    if yhi - ylo < 1e-12:
        ylo, yhi = ylo - 0.5, yhi + 0.5
    pad = 0.05 * (yhi - ylo)
    ylo, yhi = ylo - pad, yhi + pad
    s0, s1 = min(steps), max(steps)
    s1 = s1 if s1 > s0 else s0 + 1

    def xy(step: float, value: float) -> tuple[float, float]:
        return (left + (step - s0) / (s1 - s0) * pw, top + (1 - (tf(value) - ylo) / (yhi - ylo)) * ph)

    for i in range(5):
        frac = i / 4
        yv = ylo + frac * (yhi - ylo)
        y = top + (1 - frac) * ph
        draw.line([left, y, left + pw, y], fill=(225, 225, 225))
        label = f"{10 ** yv:.3g}" if use_log else f"{yv:.3g}"
        draw.text((4, y - 6), label, fill=(80, 80, 80), font=font)
    draw.text((left, top + ph + 8), f"step {s0}", fill=(80, 80, 80), font=font)
    draw.text((left + pw - 60, top + ph + 8), f"step {max(steps)}", fill=(80, 80, 80), font=font)
    for idx, (key, pts) in enumerate(series.items()):
        if not pts:
            continue
        color = _PALETTE[idx % len(_PALETTE)]
        faint = tuple(int(c + (250 - c) * 0.65) for c in color)
        if len(pts) > 1:
            draw.line([xy(s, v) for s, v in pts], fill=faint, width=1)
        ema, smooth = 0.0, []
        for n, (s, v) in enumerate(pts, start=1):
            ema = smoothing * ema + (1 - smoothing) * v
            smooth.append((s, ema / (1 - smoothing ** n)))  # bias-corrected: no drag toward 0 at the start
        if len(smooth) > 1:
            draw.line([xy(s, v) for s, v in smooth], fill=color, width=2)
        else:
            x, y = xy(*smooth[0])
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
        draw.text((left + 8 + 150 * idx, 6), f"{key}: {pts[-1][1]:.4g}", fill=color, font=font)
    for h in history:
        if h.get("skipped"):
            x, _ = xy(int(h["step"]), lo if values else 0.0)
            draw.line([x, top + ph - 6, x, top + ph], fill=(200, 0, 0), width=2)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
