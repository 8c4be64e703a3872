"""MotionClone: training-free motion cloning with sparse temporal-attention guidance.

Ling, Bu et al., "MotionClone: Training-Free Motion Cloning for Controllable Video Generation" (ICLR 2025),
in its current single-step, inversion-free form (reference/motion_clone.md, tag [LP]).

**Motion representation.** The reference clip is sampled at the generation's frame count with frames
spread over its whole length, VAE-encoded, and noised *once* at ``t_alpha = 400`` with the generation's
own seeded noise (so ``z_T`` equals the extraction noise, quirk Q5). One denoiser forward with the empty
prompt, stopped right after the last guided block, gives the temporal-attention maps ``A^l`` of the guided
layers; per row (latent position, head, query frame) only the top-k (k = 1) probabilities and their key
frames are kept: :class:`~motion_core.adapters.representation.MotionRepresentation`.

**Primary temporal-attention guidance.** For the first ``G`` of ``N`` sampling steps (all within the top
``guidance_fraction`` of the noise range, the "uneven" schedule of section 5.4), the conditional forward
runs with autograd and the energy

    E(z_t) = λ · r(i) · Σ_l mean_{p,h,i} (A^l_gen[p, h, i, j*] − v_l[p, h, i])²,   λ = 2000

(the paper's masked L2 ``||M ⊙ (A_ref − A_gen)||²``) is differentiated w.r.t. ``z_t``; ``r`` is the linear
warm-up / cool-down ramp of section 5.1. The gradient enters the DDIM *direction* term only, as the
reference code does (``motion_core.sampling.ddim_step``): ``z_prev = DDIM(z_t, ε̃) − √((1−ᾱ_t)(1−ᾱ_prev))·g``.
Camera and object motion differ only in schedule density (presets ``camera``: 100 steps / 50 guided /
fraction 0.3, ``object``: 300 / 180 / 0.4). The sampler's step count is always the one that runs: a preset
made for another count is scaled to it (:meth:`MotionCloneConfig.for_steps`: guided steps and ramps in
proportion, the guidance fraction unchanged), so 30 sampler steps with ``camera`` guide 15 of them.

**CFG.** The reference writes CFG as ``ε_c + s(ε_c − ε_u)`` with s = 7.5; our sampler uses the diffusers
form ``ε_u + w(ε_c − ε_u)``, which is the same thing for ``w = s + 1``: use **cfg 8.5** to match
(:data:`REFERENCE_CFG`; quirk Q4).

**Image / sketch to video.** A SparseCtrl ControlNet (diffusers ``SparseControlNetModel``, rgb or
scribble) conditions chosen frames (:class:`SparseCtrlHook`); its residuals are computed under
``no_grad`` for every denoiser call and passed through ``denoiser_inputs``, so the guidance gradient
never flows through the ControlNet. Extraction runs the same ControlNet conditioned on the reference
clip's own frames (section 4.3 -- RGB frames for scribble too, quirk Q9).

**Guided layers.** AnimateDiff: ``up_blocks.1`` motion modules (3 x attn1/attn2 = 6 temporal
self-attentions; section 3). UNet3D (ZeroScope, ModelScope, VideoCrafter2 in diffusers layout): also
``up_blocks.1``, i.e. ``up_blocks.1.temp_attentions.{0,1,2}.transformer_blocks.0.attn{1,2}``. Why: the
diffusers UNet3D has exactly the SD1.5 skeleton -- ``up_blocks.0`` is an ``UpBlock3D`` at the 1/8 latent
bottleneck with no temporal attention, ``up_blocks.1`` the first ``CrossAttnUpBlock3D``, 1280 channels,
three temporal transformers at 1/4 of the latent size (16x16 at 512², 18x10 for ZeroScope 576x320) whose
attn1/attn2 are both self-attention over frames (``double_self_attention``). That is the same stage, the
same resolution (coarse layout, little appearance -- the authors' reason for the choice, issue #18) and
the same layer count as AnimateDiff's, so λ = 2000, which multiplies a *sum* over layers (quirk Q7),
keeps its meaning. ``transformer_in`` and the mid block are excluded (not in the reference choice; the
mid block's 1/8 map is too coarse to carry a layout). Other blocks can be chosen with ``blocks=``.

**GroupNorm.** diffusers' ``AnimateDiffTransformer3D`` normalises a 5-D ``(b, c, f, h, w)`` tensor, so its
GroupNorm statistics span all frames, while the original AnimateDiff motion module normalises every frame
on its own (section 3, C11). We *measured* what this does to the extracted representation
(:func:`groupnorm_effect`, bench/bench_motionclone.py) on the tiny 4-level AnimateDiff with the moving-square
clip, three seeds: at 128x128x16 the top-1 key frame changes in 3.6-4.1 % of the rows and the kept
probabilities move by 0.0007-0.0008 on average (max 0.008; kept values average 0.10 against 0.0625 for a
flat map); at 64x64x8, 5.2-6.0 % and 0.002. We keep diffusers' cross-frame norm for extraction *and*
guidance: what matters for the energy is that both maps come from the same network, and the network that
generates is diffusers' (every MotionKit node, and diffusers' own AnimateDiff pipelines, sample with the
cross-frame norm; patching it only for extraction would compare maps of two different networks -- an error
of the size measured above in every guided step -- and patching it for sampling too would change every
AnimateDiff video MotionKit makes). :func:`per_frame_motion_norm` gives the original behaviour for parity checks.

Deliberate differences from the reference implementation (also in README):

* the energy (attention recompute, softmax, MSE) runs in **float32** from the model-dtype Q/K; the
  reference does it in fp16 with λ acting as an implicit loss scale (quirk Q8). λ keeps its value;
* the reference frames are resized to cover the target size and **center-cropped** (the reference
  stretches them, quirk Q10), and the VAE posterior sample is drawn from the **seed** (not the global RNG
  in example order, quirk Q11), so extraction is reproducible;
* with several videos in one batch, the energy is the **sum over videos** of the per-video means, so each
  video is guided exactly as it would be alone (the reference only runs batch 1);
* the blocks after the last guided block run with autograd **off** in the guided forward (the reference
  does the same for ``up_blocks.2/3`` in a patched forward; we use a pre-hook, see
  :func:`motion_core.attention.no_grad_after`), and the energy is computed per layer under activation
  checkpointing, so no layer's full map is kept for the backward pass;
* the **sampler's step count runs**: a schedule made for N steps (the presets: the reference configs' 100 /
  300 / 200) sampled with n ≠ N steps guides ``round(G·n/N)`` steps (at least 1) with warm-up and cool-down
  scaled alike, over the same guidance fraction; the reference always runs its config's N. With n = N
  nothing changes. A scaled schedule that cannot be built (more guided steps than the guided noise range
  holds) is refused with an error that says so.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..adapters.representation import MotionRepresentation, index_dtype_for
from ..attention import AttentionCapture, SparseMapEnergy, attach, no_grad_after, run_until
from ..backbones.base import LayerRef, VideoModel
from ..errors import AdapterMismatchError, InputError, ModelLoadError
from ..motion_model import MotionModel
from ..sampling import SampleRequest, SamplingHook, SamplingState, seeded_noise

log = logging.getLogger(__name__)

__all__ = [
    "GUIDED_BLOCKS",
    "MotionCloneConfig",
    "MotionCloneGuidance",
    "PRESETS",
    "REFERENCE_CFG",
    "REFERENCE_NEGATIVE_PROMPT",
    "SparseCtrlCondition",
    "SparseCtrlHook",
    "add_noise",
    "apply_motion_clone",
    "check_sparsectrl_fits",
    "extract_motion_representation",
    "groupnorm_effect",
    "guidance_ramp",
    "guided_layers",
    "load_sparsectrl",
    "motion_agreement",
    "per_frame_motion_norm",
    "prepare_reference_frames",
    "representation_from_latents",
    "uneven_timesteps",
]

#: the reference's CFG 7.5 in ``ε_c + s(ε_c − ε_u)`` form, written in the diffusers convention (quirk Q4)
REFERENCE_CFG = 8.5
#: t2v configs' negative prompt ([LP] configs/t2v_*.yaml)
REFERENCE_NEGATIVE_PROMPT = ("bad anatomy, extra limbs, ugly, deformed, noisy, blurry, distorted, out of focus, "
                             "poorly drawn face, poorly drawn hands, missing fingers")
#: extraction timestep t_alpha ([LP] add_noise_step)
EXTRACTION_TIMESTEP = 400

#: guided blocks per family (see the module docstring for the UNet3D choice)
GUIDED_BLOCKS: dict[str, tuple[str, ...]] = {"animatediff": ("up_blocks.1",), "unet3d": ("up_blocks.1",)}


# --------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class MotionCloneConfig:
    """Guidance settings ([LP] configs, section 6.1).

    ``steps`` is the total DDIM step count N the schedule was made for (``None``: any, taken as is);
    ``guided_steps`` G are the first G of them, spread over the top ``guidance_fraction`` of the noise range
    (the config's ``guidance_scale``, which is *not* a CFG weight, quirk Q3); ``warm_up``/``cool_down`` ramp
    λ in and out; ``weight`` is λ (0 switches guidance off). The sampler request's steps are what runs: a
    config with another ``steps`` is scaled to them by :meth:`for_steps`.
    """

    steps: int | None = 100
    guided_steps: int = 50
    guidance_fraction: float = 0.3
    warm_up: int = 10
    cool_down: int = 10
    weight: float = 2000.0

    def total_steps(self, request_steps: int) -> int:
        """The step count this schedule was made for (``request_steps`` when it was made for any): the
        default to give the sampler when nothing else chose one (the CLI without ``--steps``)."""
        return int(self.steps) if self.steps is not None else int(request_steps)

    def for_steps(self, steps: int) -> "MotionCloneConfig":
        """This schedule on ``steps`` sampler steps (``steps`` set to them).

        Unchanged when it was made for that many or for any (``self.steps`` None); otherwise guided steps,
        warm-up and cool-down are scaled by ``steps / self.steps`` (rounded half up; at least one guided
        step), so the guided share of the run stays the reference's. The guidance fraction and λ stay.
        Whether the result can be built is :meth:`check`'s business."""
        n = int(steps)
        if self.steps is None or int(self.steps) == n or int(self.steps) < 1:
            return replace(self, steps=n)
        factor = n / int(self.steps)

        def scaled(count: int) -> int:
            return int(math.floor(count * factor + 0.5))

        return replace(self, steps=n, guided_steps=max(1, scaled(self.guided_steps)), warm_up=scaled(self.warm_up),
                       cool_down=scaled(self.cool_down))

    def check(self, total_steps: int | None = None, num_train_timesteps: int = 1000) -> None:
        """InputError unless the schedule can be built (see :func:`uneven_timesteps`); with
        ``total_steps=None`` (sampler's steps not known yet) only what does not depend on them."""
        total = self.guided_steps if total_steps is None else total_steps
        uneven_timesteps(total, self.guided_steps, self.guidance_fraction, num_train_timesteps)
        if self.warm_up < 0 or self.cool_down < 0:
            raise InputError(f"warm-up and cool-down must be >= 0 (got {self.warm_up}, {self.cool_down}).")
        if not np.isfinite(self.weight) or self.weight < 0:
            raise InputError(f"The guidance weight must be a number >= 0 (got {self.weight}).")


PRESETS: dict[str, MotionCloneConfig] = {
    "camera": MotionCloneConfig(steps=100, guided_steps=50, guidance_fraction=0.3),
    "object": MotionCloneConfig(steps=300, guided_steps=180, guidance_fraction=0.4),
    "i2v_rgb": MotionCloneConfig(steps=100, guided_steps=40, guidance_fraction=0.3),
    "i2v_sketch": MotionCloneConfig(steps=200, guided_steps=120, guidance_fraction=0.4),
}


def uneven_timesteps(num_steps: int, guided_steps: int, guidance_fraction: float,
                     num_train_timesteps: int = 1000) -> list[int]:
    """The reference's "uneven" DDIM schedule (section 5.4), descending.

    Guided part: ``G`` timesteps ``linspace(⌊(1−gs)·T⌋, T−1)``; unguided part: ``N−G`` timesteps
    ``linspace(0, ⌊(1−gs)·T⌋−1)``; both rounded (half to even, as numpy) and reversed, then concatenated.
    Every timestep must be distinct, which bounds G by the guided range and N−G by the rest.
    """
    n, g, gs, t_max = int(num_steps), int(guided_steps), float(guidance_fraction), int(num_train_timesteps)
    if not (0.0 < gs <= 1.0):
        raise InputError(f"The guidance fraction must be in (0, 1] (got {guidance_fraction}); it is the share "
                         "of the noise range that receives guidance, e.g. 0.3 for camera motion.")
    if n < 1:
        raise InputError(f"The schedule needs at least 1 step (got {num_steps}).")
    if g < 1:
        raise InputError(f"MotionClone needs at least 1 guided step (got {guided_steps}); set the weight to 0 "
                         "to sample without guidance.")
    if g > n:
        raise InputError(f"{g} guided steps is more than the {n} steps of the schedule; use at most {n} "
                         "guided steps or more steps.")
    boundary = int((1.0 - gs) * t_max)
    guided_room = t_max - boundary
    if g > guided_room:
        raise InputError(f"{g} guided steps do not fit in the guided noise range t = {boundary}..{t_max - 1} "
                         f"({guided_room} distinct timesteps at guidance fraction {gs:g}); use at most "
                         f"{guided_room} guided steps or a larger guidance fraction.")
    if n - g > boundary:
        raise InputError(f"{n - g} unguided steps do not fit below t = {boundary} (guidance fraction {gs:g}); "
                         f"use at most {boundary + g} steps in total or a smaller guidance fraction.")
    guided = np.linspace(boundary, t_max - 1, g).round()[::-1]
    plain = np.linspace(0, boundary - 1, n - g).round()[::-1] if n > g else np.array([])
    return [int(t) for t in np.concatenate([guided, plain])]


def guidance_ramp(step: int, guided_steps: int, warm_up: int, cool_down: int) -> float:
    """r(i) of section 5.1: linear warm-up over the first ``warm_up`` steps and cool-down over the last
    ``cool_down`` guided steps; the factors multiply where the windows overlap."""
    r = 1.0
    if warm_up > 0 and step < warm_up:
        r *= (step + 1) / warm_up
    if cool_down > 0 and step > guided_steps - cool_down:
        r *= (guided_steps - step) / cool_down
    return r


def add_noise(scheduler: Any, x0: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
    """``√ᾱ_t · x0 + √(1−ᾱ_t) · ε`` with the model's own schedule (section 4.2), in float32."""
    alpha = scheduler.alphas_cumprod[int(timestep)].to(torch.float32)
    return alpha.sqrt() * x0.float() + (1 - alpha).sqrt() * noise.float().to(x0.device)


def guided_layers(model: VideoModel, blocks: Sequence[str] | None = None) -> list[LayerRef]:
    """The temporal self-attention layers MotionClone guides (default: :data:`GUIDED_BLOCKS`)."""
    if model.family == "wan":  # DiT: mid-depth attn1 layers (motion_clone_wan)
        from .motion_clone_wan import wan_guided_layers

        return wan_guided_layers(model, blocks)
    if blocks is None:
        blocks = GUIDED_BLOCKS.get(model.family)
        if blocks is None:
            raise InputError(f"MotionClone has no default guided layers for the {model.family} family; pass "
                             "blocks=[...] (block names such as 'up_blocks.1').")
    blocks = tuple(blocks)
    refs = [ref for ref in model.temporal_attention_layers() if ref.block in blocks]
    if not refs:
        have = sorted({ref.block for ref in model.temporal_attention_layers()})
        raise InputError(f"No temporal attention layer in blocks {list(blocks)} of this {model.family} model; "
                         f"blocks with temporal attention: {have}.")
    return refs


_BLOCK_ORDER = {"transformer_in": (0, 0), "down_blocks": (1, 0), "mid_block": (2, 0), "up_blocks": (3, 0),
                "blocks": (1, 0), "transformer_blocks": (1, 0)}


def _execution_key(block: str) -> tuple[int, int] | None:
    parts = block.split(".")
    base = _BLOCK_ORDER.get(parts[0])
    if base is None:
        return None
    index = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return (base[0], index)


def _last_block(blocks: Sequence[str]) -> str | None:
    keys = {b: _execution_key(b) for b in blocks}
    if any(k is None for k in keys.values()):
        return None
    return max(blocks, key=lambda b: keys[b])


# --------------------------------------------------------------------------------------------- frames
def prepare_reference_frames(video: Any, num_frames: int, width: int, height: int) -> tuple[torch.Tensor, str]:
    """``[F, H, W, 3]`` frames in 0..1 spread over the whole reference (section 4.1) at ``width x height``
    (scaled to cover, center-cropped), and a short name of the source.

    ``video`` is a file path, a :class:`~motion_core.video.VideoClip`, or frames ``[N, H, W, 3]``
    (ComfyUI IMAGE).
    """
    from ..video import VideoClip, load_video, resize_and_crop, select_frame_indices

    if isinstance(video, (str, Path)):
        clip = load_video(str(video), num_frames=num_frames, spread=True, width=width, height=height)
        return clip.frames, Path(video).name
    if isinstance(video, VideoClip):
        frames, name = video.frames, Path(video.path).name
    elif torch.is_tensor(video):
        frames, name = video, "frames"
    else:
        raise InputError(f"The reference video must be a file path or frames [F,H,W,3], not {type(video).__name__}.")
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise InputError(f"Reference frames must be [frames, height, width, 3], got {tuple(frames.shape)}.")
    indices = select_frame_indices(int(frames.shape[0]), 0.0, num_frames=num_frames, spread=True)
    frames = frames[indices].float()
    return resize_and_crop(frames, width, height).clamp(0.0, 1.0), name


def _resolve_size(model: VideoModel, num_frames: int | None, width: int | None,
                  height: int | None) -> tuple[int, int, int]:
    w, h = model.default_size
    return (int(num_frames or model.frame_limits.default), int(width or w), int(height or h))


# --------------------------------------------------------------------------------------------- extraction
@torch.no_grad()
def extract_motion_representation(
    model: VideoModel | MotionModel,
    video: Any,
    *,
    num_frames: int | None = None,
    width: int | None = None,
    height: int | None = None,
    seed: int = 0,
    timestep: int | None = None,
    k: int = 1,
    blocks: Sequence[str] | None = None,
    sparsectrl: "SparseCtrlCondition | None" = None,
    source: str | None = None,
) -> MotionRepresentation:
    """One noisy forward of the reference -> the sparse motion representation (section 4).

    ``num_frames``/``width``/``height``/``seed`` must be those of the generations it will guide (the
    representation is checked against them, and ``z_T`` of a generation with that seed equals the noise
    used here). Adapters a :class:`MotionModel` carries are active during the forward, as they will be
    during guidance. ``timestep`` defaults to the family's (400; Wan: 600 = σ 0.6). A Wan model gets the
    attention-flow representation (:mod:`motion_core.methods.motion_clone_wan`).
    """
    motion = MotionModel.wrap(model)
    base = motion.base
    if base.family == "wan":
        from .motion_clone_wan import extract_wan_representation

        if int(k) != 1 or sparsectrl is not None:
            raise InputError("On Wan, MotionClone keeps one best match per key frame (k = 1) and has no SparseCtrl "
                             "(an AnimateDiff ControlNet); use k = 1 without a SparseCtrl condition.")
        return extract_wan_representation(model, video, num_frames=num_frames, width=width, height=height,
                                          seed=seed, timestep=timestep, blocks=blocks, source=source)
    timestep = EXTRACTION_TIMESTEP if timestep is None else int(timestep)
    num_frames, width, height = _resolve_size(base, num_frames, width, height)
    base.latent_shape(1, num_frames, height, width)  # validates size and frame count
    if int(k) < 1 or int(k) > num_frames:
        raise InputError(f"k must be between 1 and the frame count {num_frames} (got {k}); k = 1 is the "
                         "reference's sparse mask.")
    t_max = int(base.scheduler.config.num_train_timesteps)
    if not 0 <= int(timestep) < t_max:
        raise InputError(f"The extraction timestep must be in 0..{t_max - 1} (got {timestep}); the reference "
                         f"uses {EXTRACTION_TIMESTEP}.")
    layers = guided_layers(base, blocks)
    frames, name = prepare_reference_frames(video, num_frames, width, height)

    with motion.activated():
        generator = torch.Generator("cpu").manual_seed(int(seed))
        z0 = base.encode_video(frames, generator=generator, sample=True)
        condition = None
        if sparsectrl is not None:
            # section 4.3: the ControlNet sees the reference's own frames at the condition indices
            condition = replace(sparsectrl, images=frames[list(sparsectrl.resolved_indices(num_frames))])
        layers_kept, blocks_used = _sparse_maps(base, z0, seed=seed, timestep=int(timestep), k=int(k),
                                                layers=layers, sparsectrl=condition)
    return MotionRepresentation(
        layers=layers_kept, family=base.family, base_model=str(base.base_model), num_frames=num_frames,
        width=width, height=height, k=int(k), timestep=int(timestep), seed=int(seed), source=source or name,
        extra={"blocks": blocks_used, "sparsectrl": sparsectrl.describe() if sparsectrl is not None else None},
    )


@torch.no_grad()
def representation_from_latents(model: VideoModel | MotionModel, latents: torch.Tensor, *, seed: int,
                                timestep: int | None = None, k: int = 1,
                                blocks: Sequence[str] | None = None, source: str = "latents") -> MotionRepresentation:
    """The same representation from clean latents ``[1, C, F, h, w]`` (e.g. a generation's own result, to
    measure how closely its motion follows a reference's)."""
    motion = MotionModel.wrap(model)
    base = motion.base
    if base.family == "wan":
        from .motion_clone_wan import wan_representation_from_latents

        return wan_representation_from_latents(model, latents, seed=seed, timestep=timestep, blocks=blocks,
                                               source=source)
    timestep = EXTRACTION_TIMESTEP if timestep is None else int(timestep)
    _, _, f, h, w = latents.shape
    size = base.vae_scale_factor
    with motion.activated():
        kept, blocks_used = _sparse_maps(base, latents.to(base.device), seed=seed, timestep=int(timestep),
                                         k=int(k), layers=guided_layers(base, blocks))
    return MotionRepresentation(layers=kept, family=base.family, base_model=str(base.base_model), num_frames=f,
                                width=w * size, height=h * size, k=int(k), timestep=int(timestep), seed=int(seed),
                                source=source, extra={"blocks": blocks_used})


def _sparse_maps(base: VideoModel, z0: torch.Tensor, *, seed: int, timestep: int, k: int, layers: list[LayerRef],
                 sparsectrl: "SparseCtrlCondition | None" = None
                 ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list[str]]:
    """Noise ``z0`` once at ``timestep`` with the seed's noise, run the denoiser up to the last guided block
    with the empty prompt and keep the top-k of every guided layer's map."""
    b, _, num_frames, h, w = z0.shape
    noise = seeded_noise(tuple(z0.shape), seed).to(z0.device)
    z_t = add_noise(base.scheduler, z0, noise, timestep)
    embeds = base.encode_prompt([""] * b)
    extra: dict[str, Any] = {}
    if sparsectrl is not None:
        hook = SparseCtrlHook(sparsectrl)
        hook.prepare(base, num_frames, w * base.vae_scale_factor, h * base.vae_scale_factor, seed)
        extra = hook.residuals(z_t, timestep, embeds)
    capture = AttentionCapture("topk", k=k)
    blocks_used = sorted({ref.block for ref in layers}, key=lambda blk: _execution_key(blk) or (9, 0))
    stops = [base.denoiser.get_submodule(blk) for blk in blocks_used]
    with attach(base.denoiser, layers, capture):
        run_until(stops, lambda: base.predict(z_t, timestep, embeds, **extra))
    index_dtype = index_dtype_for(num_frames)
    kept: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for ref in layers:
        if ref.name not in capture.records:
            raise RuntimeError(f"guided layer {ref.name} did not run during extraction")
        values, indices = capture.last(ref.name)
        kept[ref.name] = (values.to("cpu", torch.float16), indices.to("cpu", index_dtype))
    return kept, blocks_used


def motion_agreement(reference: MotionRepresentation, other: MotionRepresentation) -> dict[str, float]:
    """How alike two representations of the same layers are: the fraction of rows whose top-1 key frame
    is the same, and the mean |Δ| of the top-1 probabilities."""
    same, total, diffs = 0, 0, []
    for name, (v_ref, i_ref) in reference.layers.items():
        if name not in other.layers:
            raise InputError(f"Layer {name} is missing from the other representation.")
        v_o, i_o = other.layers[name]
        if v_o.shape != v_ref.shape:
            raise InputError(f"Layer {name}: shapes {tuple(v_ref.shape)} and {tuple(v_o.shape)} differ.")
        same += int((i_ref[..., 0] == i_o[..., 0]).sum())
        total += i_ref[..., 0].numel()
        diffs.append((v_ref[..., 0].float() - v_o[..., 0].float()).abs().flatten())
    return {"index_agreement": same / max(1, total), "value_abs_diff_mean": float(torch.cat(diffs).mean())}


# --------------------------------------------------------------------------------------------- guidance
class MotionCloneGuidance(SamplingHook):
    """Primary temporal-attention guidance as a sampling hook (section 5).

    ``timesteps`` returns the uneven schedule; the first ``guided_steps`` steps are guided: the hook arms
    its :class:`~motion_core.attention.SparseMapEnergy` stage for the conditional forward the sampler runs
    under autograd, and :meth:`energy` returns ``λ · r(i) · Σ_l mean(...)``. The sampler turns its
    gradient into the DDIM direction-term update (``sampling.ddim_step``).
    """

    label = "motion guidance"

    def __init__(self, representation: MotionRepresentation, config: MotionCloneConfig = PRESETS["camera"],
                 *, skip_graph_after_guided: bool = True) -> None:
        if not isinstance(representation, MotionRepresentation):
            raise InputError("MotionClone guidance needs a motion representation (from Extract/Load Motion "
                             "Representation).")
        self.representation = representation
        self.config = config
        self.skip_graph_after_guided = skip_graph_after_guided
        self._energy: SparseMapEnergy | None = None
        self._stack: contextlib.ExitStack | None = None
        self.last_energies: list[float] = []

    def describe(self) -> str:
        c = self.config
        steps = f"{c.guided_steps}/{c.steps} guided steps (scaled to the sampler's steps)" if c.steps else \
            f"{c.guided_steps} guided steps"
        return (f"MotionClone λ={c.weight:g}, {steps}, fraction {c.guidance_fraction:g}, ramps "
                f"{c.warm_up}/{c.cool_down} ({self.representation.source})")

    def schedule(self, request_steps: int) -> MotionCloneConfig:
        """The schedule that runs with ``request_steps`` sampler steps (:meth:`MotionCloneConfig.for_steps`)."""
        return self.config.for_steps(request_steps)

    def timesteps(self, model: VideoModel, request: SampleRequest) -> list[int]:
        c = self.schedule(request.steps)
        t_max = int(model.scheduler.config.num_train_timesteps)
        made_for = self.config.steps
        if made_for is not None and int(made_for) != c.steps:
            log.info("MotionClone: the schedule made for %d steps (%d guided, warm-up %d, cool-down %d) runs on the "
                     "sampler's %d steps: %d guided, warm-up %d, cool-down %d, guidance fraction %g.", made_for,
                     self.config.guided_steps, self.config.warm_up, self.config.cool_down, c.steps, c.guided_steps,
                     c.warm_up, c.cool_down, c.guidance_fraction)
            try:
                c.check(c.steps, t_max)
            except InputError as exc:
                raise InputError(f"The MotionClone schedule made for {made_for} steps ({self.config.guided_steps} "
                                 f"guided), scaled to the sampler's {c.steps} steps ({c.guided_steps} guided), cannot "
                                 f"be built: {exc} Use fewer sampler steps, or the custom preset.") from None
        c.check(c.steps, t_max)
        return uneven_timesteps(c.steps, c.guided_steps, c.guidance_fraction, t_max)

    def setup(self, state: SamplingState) -> None:
        req, model = state.request, state.model
        self.representation.check_compatible(model, width=int(req.width), height=int(req.height),
                                             num_frames=int(req.num_frames))
        self.last_energies = []
        if self.config.weight == 0:
            return
        layers = {ref.name: ref for ref in model.temporal_attention_layers()}
        refs = [layers[name] for name in self.representation.layer_names]
        self._energy = SparseMapEnergy(self.representation.layers)
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(attach(model.denoiser, refs, self._energy))
        last = _last_block([ref.block for ref in refs])
        if self.skip_graph_after_guided and last is not None:
            self._stack.enter_context(no_grad_after(model.denoiser, last))

    def wants_guidance(self, state: SamplingState) -> bool:
        guided = self.schedule(state.request.steps).guided_steps
        on = self._energy is not None and self.config.weight > 0 and state.step < guided
        if on:
            self._energy.arm()
        return on

    def energy(self, state: SamplingState) -> torch.Tensor:
        assert self._energy is not None
        loss = self._energy.take()
        if loss is None:
            raise RuntimeError("the guided layers did not run in the conditional forward")
        c = self.schedule(state.request.steps)
        ramp = guidance_ramp(state.step, c.guided_steps, c.warm_up, c.cool_down)
        self.last_energies.append(float(loss.detach()))
        state.scratch["motion_loss"] = float(loss.detach())
        return loss * (self.config.weight * ramp)

    def after_step(self, state: SamplingState) -> None:
        if self._energy is not None:
            self._energy.disarm()

    def teardown(self, state: SamplingState) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack = None
        self._energy = None


def presets_for(family: str) -> dict[str, MotionCloneConfig]:
    """The named MotionClone presets of a family: the reference's DDIM schedules for the UNet families, the
    flow-model schedules of :data:`~motion_core.methods.motion_clone_wan.WAN_PRESETS` for Wan."""
    if family == "wan":
        from .motion_clone_wan import WAN_PRESETS

        return WAN_PRESETS
    return PRESETS


def apply_motion_clone(model: VideoModel | MotionModel, representation: MotionRepresentation,
                       config: MotionCloneConfig | str = "camera",
                       sparsectrl: "SparseCtrlCondition | None" = None) -> MotionModel:
    """A MOTION_MODEL that samples with MotionClone guidance (and SparseCtrl conditioning when given).

    On Wan, preset names refer to :data:`~motion_core.methods.motion_clone_wan.WAN_PRESETS` and the hook is
    :class:`~motion_core.methods.motion_clone_wan.WanMotionCloneGuidance`."""
    motion = MotionModel.wrap(model)
    base = motion.base
    presets = presets_for(base.family)
    if isinstance(config, str):
        if config not in presets:
            raise InputError(f"Unknown MotionClone preset {config!r} for {base.family}; choose one of "
                             f"{', '.join(presets)}.")
        config = presets[config]
    config.check(config.steps, int(base.scheduler.config.num_train_timesteps))
    if representation.family != base.family:
        raise AdapterMismatchError(f"This motion representation was extracted with a {representation.family} "
                                   f"model, but the model to guide is {base.family}.")
    if sparsectrl is not None:
        check_sparsectrl_fits(sparsectrl.controlnet, base)
        motion = motion.with_hook(SparseCtrlHook(sparsectrl), note=f"SparseCtrl {sparsectrl.describe()}")
    if base.family == "wan":
        from .motion_clone_wan import WanMotionCloneGuidance

        hook: MotionCloneGuidance = WanMotionCloneGuidance(representation, config)
    else:
        hook = MotionCloneGuidance(representation, config)
    return motion.with_hook(hook, note=hook.describe())


# --------------------------------------------------------------------------------------------- SparseCtrl
def load_sparsectrl(source: str | Path, model: VideoModel | MotionModel) -> nn.Module:
    """A SparseCtrl model in the model's dtype and device, checked against the model (AdapterMismatchError when
    it does not fit): a SparseCtrl file as ComfyUI users have it (``models/controlnet``:
    ``v3_sd15_sparsectrl_rgb.ckpt`` / ``v3_sd15_sparsectrl_scribble.ckpt``, or ``.safetensors``; rgb or scribble
    read from its shapes, see :mod:`motion_core.backbones.sd_files`), or a diffusers ``SparseControlNetModel``
    folder / hub id."""
    from diffusers import SparseControlNetModel

    base = MotionModel.wrap(model).base
    try:
        if Path(source).is_file():
            from ..backbones.sd_files import load_sparsectrl_file

            controlnet = load_sparsectrl_file(source, dtype=base.dtype)
        else:
            controlnet = SparseControlNetModel.from_pretrained(str(source), torch_dtype=base.dtype)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ModelLoadError(f"Cannot load a SparseCtrl model from {source}: {exc}. Use a diffusers "
                             "SparseControlNetModel folder, e.g. guoyww/animatediff-sparsectrl-rgb or "
                             "-scribble.") from None
    controlnet = controlnet.to(base.device).train(False).requires_grad_(False)
    check_sparsectrl_fits(controlnet, base)
    return controlnet


def sparsectrl_kind(controlnet: nn.Module) -> Literal["rgb", "scribble"]:
    """``rgb`` (latent condition, simplified embedding) or ``scribble`` (pixel condition)."""
    return "rgb" if controlnet.config.get("use_simplified_condition_embedding") else "scribble"


def check_sparsectrl_fits(controlnet: nn.Module, model: VideoModel) -> None:
    """AdapterMismatchError unless ``controlnet`` can condition ``model`` (family, channels, layout)."""
    cfg, base = controlnet.config, model
    if type(controlnet).__name__ != "SparseControlNetModel":
        raise AdapterMismatchError(f"{type(controlnet).__name__} is not a SparseCtrl model.")
    if base.family != "animatediff":
        raise AdapterMismatchError(f"SparseCtrl was trained for AnimateDiff (SD1.5); this model is {base.family}. "
                                   "Use an AnimateDiff model, or MotionClone without SparseCtrl.")
    unet = base.denoiser.config
    problems = []
    for key in ("block_out_channels", "layers_per_block", "cross_attention_dim"):
        a, b = cfg.get(key), unet.get(key)
        if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
            a, b = list(a) if isinstance(a, (list, tuple)) else a, list(b) if isinstance(b, (list, tuple)) else b
        if a != b:
            problems.append(f"{key} {a} vs {b}")
    if cfg.get("in_channels") != base.latent_channels:
        problems.append(f"in_channels {cfg.get('in_channels')} vs {base.latent_channels} latent channels")
    if sparsectrl_kind(controlnet) == "rgb":
        if cfg.get("conditioning_channels") != base.latent_channels:
            problems.append(f"rgb condition channels {cfg.get('conditioning_channels')} vs "
                            f"{base.latent_channels} latent channels")
    else:
        factor = 2 ** (len(cfg.get("conditioning_embedding_out_channels") or (16, 32, 96, 256)) - 1)
        if factor != base.vae_scale_factor:
            problems.append(f"scribble embedding downsamples {factor}x, the VAE {base.vae_scale_factor}x")
    if problems:
        raise AdapterMismatchError("This SparseCtrl model does not fit the video model (" + "; ".join(problems)
                                   + "). Use the SparseCtrl release of the same base (SD1.5 -> "
                                   "guoyww/animatediff-sparsectrl-rgb / -scribble).")


@dataclass(frozen=True)
class SparseCtrlCondition:
    """Condition images for chosen frames: rgb images (image-to-video) or sketches (scribble)."""

    controlnet: nn.Module
    images: torch.Tensor  # [n, H, W, 3] in 0..1
    frame_indices: tuple[int, ...] = (0,)
    strength: float = 1.0

    def __post_init__(self) -> None:
        if not torch.is_tensor(self.images) or self.images.dim() != 4 or self.images.shape[-1] != 3:
            shape = tuple(self.images.shape) if torch.is_tensor(self.images) else type(self.images).__name__
            raise InputError(f"SparseCtrl condition images must be [n, height, width, 3], got {shape}.")
        if not self.frame_indices:
            raise InputError("Give at least one frame index for the SparseCtrl condition.")
        n = int(self.images.shape[0])
        if n not in (1, len(self.frame_indices)):
            raise InputError(f"{n} condition images for {len(self.frame_indices)} frame indices: give one image "
                             "per index, or one image for all of them.")
        if not np.isfinite(self.strength) or self.strength < 0:
            raise InputError(f"SparseCtrl strength must be >= 0 (got {self.strength}).")

    @property
    def kind(self) -> str:
        return sparsectrl_kind(self.controlnet)

    def resolved_indices(self, num_frames: int) -> list[int]:
        """Frame indices in 0..F-1 (negative ones count from the end); InputError when out of range."""
        out = []
        for i in self.frame_indices:
            j = int(i) + num_frames if int(i) < 0 else int(i)
            if not 0 <= j < num_frames:
                raise InputError(f"SparseCtrl frame index {i} is outside the {num_frames} frames of the video.")
            out.append(j)
        if len(set(out)) != len(out):
            raise InputError(f"SparseCtrl frame indices {list(self.frame_indices)} name a frame twice.")
        return out

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "frames": list(self.frame_indices), "strength": float(self.strength)}


class SparseCtrlHook(SamplingHook):
    """Adds SparseCtrl residuals to every denoiser call, computed under ``no_grad`` (section 8)."""

    def __init__(self, condition: SparseCtrlCondition) -> None:
        self.condition = condition
        self._cond: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None

    def prepare(self, model: VideoModel, num_frames: int, width: int, height: int, seed: int) -> None:
        """Build the condition tensor and mask (diffusers ``prepare_sparse_control_conditioning``)."""
        from ..video import resize_and_crop

        check_sparsectrl_fits(self.condition.controlnet, model)
        indices = self.condition.resolved_indices(num_frames)
        images = resize_and_crop(self.condition.images.float().clamp(0, 1), width, height)
        if images.shape[0] == 1 and len(indices) > 1:
            images = images.expand(len(indices), -1, -1, -1)
        controlnet = self.condition.controlnet
        dtype = next(controlnet.parameters()).dtype
        device = next(controlnet.parameters()).device
        with torch.no_grad():
            if self.condition.kind == "rgb":  # the simplified embedding takes VAE latents of the images
                generator = torch.Generator("cpu").manual_seed(int(seed))
                frames = model.encode_video(images, generator=generator, sample=True)[0]  # [C, n, h, w]
            else:  # scribble: the raw 0..1 RGB images at pixel resolution
                frames = images.permute(3, 0, 1, 2)
        c, _, h, w = frames.shape
        cond = torch.zeros((1, c, num_frames, h, w), dtype=dtype, device=device)
        mask = torch.zeros((1, 1, num_frames, h, w), dtype=dtype, device=device)
        cond[:, :, indices] = frames.to(device=device, dtype=dtype)
        mask[:, :, indices] = 1
        self._cond, self._mask = cond, mask

    def setup(self, state: SamplingState) -> None:
        req = state.request
        self.prepare(state.model, int(req.num_frames), int(req.width), int(req.height), int(req.seed))

    @torch.no_grad()
    def residuals(self, latents: torch.Tensor, timestep: Any, embeds: torch.Tensor) -> dict[str, Any]:
        assert self._cond is not None and self._mask is not None, "prepare() first"
        controlnet = self.condition.controlnet
        dtype = self._cond.dtype
        b, _, f = latents.shape[:3]
        text = embeds.to(self._cond.device, dtype)
        if text.shape[0] != b:
            text = text.expand(b, -1, -1)
        down, mid = controlnet(
            latents.detach().to(self._cond.device, dtype), timestep,
            encoder_hidden_states=text.repeat_interleave(f, dim=0),
            controlnet_cond=self._cond.expand(b, -1, -1, -1, -1),
            conditioning_mask=self._mask.expand(b, -1, -1, -1, -1),
            conditioning_scale=float(self.condition.strength), guess_mode=False, return_dict=False)
        return {"down_block_additional_residuals": tuple(d.detach() for d in down),
                "mid_block_additional_residual": mid.detach()}

    def denoiser_inputs(self, state: SamplingState, latents: torch.Tensor, embeds: torch.Tensor) -> dict:
        return self.residuals(latents, state.raw_timesteps[state.step], embeds)

    def teardown(self, state: SamplingState) -> None:
        self._cond = self._mask = None


# --------------------------------------------------------------------------------------------- GroupNorm study
def _per_frame_group_norm(norm: nn.GroupNorm):
    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
        b, c, f, h, w = x.shape
        y = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        y = F.group_norm(y, norm.num_groups, norm.weight, norm.bias, norm.eps)
        return y.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)
    return forward


@contextlib.contextmanager
def per_frame_motion_norm(model: VideoModel) -> Iterator[int]:
    """Inside, the AnimateDiff motion modules' GroupNorm normalises every frame separately, as the original
    AnimateDiff code does (diffusers normalises across frames, section 3). Yields the number of patched
    norms; restores diffusers' behaviour on exit."""
    patched: list[nn.Module] = []
    try:
        for _, module in model.temporal_modules():
            norm = getattr(module, "norm", None)
            if isinstance(norm, nn.GroupNorm):
                norm.forward = _per_frame_group_norm(norm)  # instance attribute shadows the class method
                patched.append(norm)
        yield len(patched)
    finally:
        for norm in patched:
            del norm.forward


def groupnorm_effect(model: VideoModel, video: Any, **extract_kwargs: Any) -> dict[str, float]:
    """Extract the representation with diffusers' cross-frame GroupNorm and with the original per-frame
    one; returns the fraction of top-1 key frames that differ, the mean / max |Δ| of the kept values, and
    the mean kept value (for scale)."""
    cross = extract_motion_representation(model, video, **extract_kwargs)
    with per_frame_motion_norm(model) as count:
        if not count:
            raise InputError(f"The {model.family} model has no motion-module GroupNorm to patch.")
        per_frame = extract_motion_representation(model, video, **extract_kwargs)
    changed, total, diffs, values = 0, 0, [], []
    for name, (v_cross, i_cross) in cross.layers.items():
        v_pf, i_pf = per_frame.layers[name]
        changed += int((i_cross[..., 0] != i_pf[..., 0]).sum())
        total += i_cross[..., 0].numel()
        diffs.append((v_cross[..., 0].float() - v_pf[..., 0].float()).abs().flatten())
        values.append(v_cross[..., 0].float().flatten())
    d = torch.cat(diffs)
    return {"index_changed_fraction": changed / max(1, total), "value_abs_diff_mean": float(d.mean()),
            "value_abs_diff_max": float(d.max()), "value_mean": float(torch.cat(values).mean()),
            "rows": float(total)}
