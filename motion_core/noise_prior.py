"""MotionDirector's noise prior: start sampling from a blend of inverted reference latents and noise.

``z_T = √p · z_inv + √(1−p) · ε`` where ``z_inv`` is the reference clip's latents carried to the last
timestep by DDIM inversion with the empty prompt (reference/motion_director_and_custom_motion.md §1.6.1,
§1.6.3). ``p = 0`` is plain seeded noise; ``p = 1`` is the inversion itself; the reference README suggests
0.1-0.5 for single-video adapters and 0 for multi-video ones.

The inversion costs ``steps`` denoiser forwards, so it is computed **once** -- at training time, on the
training clips, and stored in the adapter file (:class:`~motion_core.adapters.lora.MotionLoRA.noise_prior`)
-- and every sample only blends. :func:`invert_latents` dispatches on the model family, so families whose
sampler is not DDIM-like (flow matching) register their own inversion with :func:`register_inversion`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from .errors import AdapterMismatchError, Cancelled, InputError

if TYPE_CHECKING:  # pragma: no cover
    from .backbones.base import CancelCheck, ProgressCallback, VideoModel
    from .sampling import SampleRequest

__all__ = [
    "NoisePrior",
    "blend_noise_prior",
    "ddim_inversion",
    "invert_latents",
    "register_inversion",
]

Inversion = Callable[..., torch.Tensor]
#: family name -> inversion function ``fn(model, latents, *, steps, prompt_embeds, progress, cancel)``
INVERSIONS: dict[str, Inversion] = {}


def register_inversion(family: str, fn: Inversion) -> None:
    """Use ``fn`` instead of DDIM inversion for models of ``family`` (e.g. a flow-matching inversion)."""
    INVERSIONS[family] = fn


def _epsilon(model_output: torch.Tensor, z: torch.Tensor, alpha_t: torch.Tensor, prediction_type: str) -> torch.Tensor:
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return alpha_t.sqrt() * model_output + (1 - alpha_t).sqrt() * z
    raise InputError(f"DDIM inversion is not defined for a '{prediction_type}' model; its family must register "
                     "its own inversion (motion_core.noise_prior.register_inversion).")


@torch.no_grad()
def ddim_inversion(
    model: "VideoModel",
    latents: torch.Tensor,
    *,
    steps: int = 50,
    prompt_embeds: torch.Tensor | None = None,
    progress: "ProgressCallback | None" = None,
    cancel: "CancelCheck | None" = None,
) -> torch.Tensor:
    """Deterministic DDIM inversion of clean latents ``[B,C,F,h,w]`` (spec §1.6.3).

    Timesteps are the DDIM schedule for ``steps`` steps (1, 21, ..., 981 for 50 steps with
    ``steps_offset=1``) walked upward. At each ``t`` with ``t⁻ = t − T/steps``:
    ``ε = model(z, t, c_∅)``, ``ẑ0 = (z − √(1−ᾱ[t⁻]) ε) / √ᾱ[t⁻]`` (``ᾱ[t⁻<0]`` = the scheduler's
    ``final_alpha_cumprod``), ``z ← √ᾱ[t] ẑ0 + √(1−ᾱ[t]) ε``. The condition is the empty prompt (no CFG).
    Math in float32; the denoiser runs in the model's dtype. Returns float32 latents on the CPU.
    """
    from diffusers import DDIMScheduler

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"inversion steps must be a positive integer, got {steps!r}.")
    if latents.dim() != 5:
        raise InputError(f"DDIM inversion expects latents [B,C,F,h,w], got {tuple(latents.shape)}.")
    scheduler = DDIMScheduler.from_config(dict(model.scheduler.config))
    scheduler.set_timesteps(steps)
    ascending = [int(t) for t in scheduler.timesteps.flip(0)]
    step_size = scheduler.config.num_train_timesteps // steps
    ac = scheduler.alphas_cumprod.to(torch.float32)
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float32)
    if prompt_embeds is None:
        prompt_embeds = model.encode_prompt([""])
    z = latents.to(device=model.device, dtype=torch.float32)
    prediction_type = model.prediction_type
    for i, t in enumerate(ascending):
        if cancel is not None and cancel():
            raise Cancelled(f"DDIM inversion cancelled at step {i} of {len(ascending)}.")
        t_prev = t - step_size
        alpha_t = ac[t].to(z.device)
        alpha_prev = (ac[t_prev] if t_prev >= 0 else final).to(z.device)
        out = model.predict(z, t, prompt_embeds).to(torch.float32)
        eps = _epsilon(out, z, alpha_t, prediction_type)
        x0 = (z - (1 - alpha_prev).sqrt() * eps) / alpha_prev.sqrt()
        z = alpha_t.sqrt() * x0 + (1 - alpha_t).sqrt() * eps
        if progress is not None:
            progress(i + 1, len(ascending), {"timestep": t, "label": "inversion"})
    return z.cpu()


def invert_latents(model: "VideoModel", latents: torch.Tensor, *, steps: int = 50,
                   prompt_embeds: torch.Tensor | None = None, progress: "ProgressCallback | None" = None,
                   cancel: "CancelCheck | None" = None) -> torch.Tensor:
    """The family's inversion of clean latents to the start of sampling (DDIM inversion by default)."""
    fn = INVERSIONS.get(model.family, ddim_inversion)
    return fn(model, latents, steps=steps, prompt_embeds=prompt_embeds, progress=progress, cancel=cancel)


def check_p(p: float) -> float:
    p = float(p)
    if not math.isfinite(p) or not 0.0 <= p <= 1.0:
        raise InputError(f"noise prior p must be between 0 and 1 (0 = plain noise, 1 = the inverted reference), "
                         f"got {p}.")
    return p


def blend_noise_prior(inverted: torch.Tensor, noise: torch.Tensor, p: float) -> torch.Tensor:
    """``√p · inverted + √(1−p) · noise`` with ``inverted`` repeated to the noise's batch and, when the
    latent size differs (e.g. another resolution than the training clip), bilinearly resized frame by frame
    as the reference does. A different frame count is refused (resizing over time would mix frames)."""
    p = check_p(p)
    if noise.dim() != 5 or inverted.dim() != 5:
        raise InputError(f"noise prior tensors must be [B,C,F,h,w]; got {tuple(inverted.shape)} and {tuple(noise.shape)}.")
    b, c, f, h, w = noise.shape
    z = inverted.to(device=noise.device, dtype=torch.float32)
    if z.shape[1] != c:
        raise AdapterMismatchError(f"the stored noise prior has {z.shape[1]} latent channels, the model {c}: it was "
                                   "made with another model family.")
    if z.shape[2] != f:
        raise InputError(f"the noise prior was inverted from a {z.shape[2]}-frame clip; this generation has {f} "
                         f"frames. Generate {z.shape[2]} frames, or set the noise prior to 0.")
    if z.shape[3:] != (h, w):
        zb, zc, zf = z.shape[:3]
        z = z.permute(0, 2, 1, 3, 4).reshape(zb * zf, zc, *z.shape[3:])
        z = F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False)
        z = z.reshape(zb, zf, zc, h, w).permute(0, 2, 1, 3, 4)
    if z.shape[0] != b:
        z = z[torch.arange(b) % z.shape[0]]
    return math.sqrt(p) * z + math.sqrt(1.0 - p) * noise.to(torch.float32)


@dataclass(frozen=True, eq=False)
class NoisePrior:
    """InitialLatents for the sampler: blends ``inverted`` (``[1 or B, C, F, h, w]``, CPU float32) with the
    run's seeded noise at weight ``p``. Attach it with ``MotionModel.with_noise_prior``."""

    inverted: torch.Tensor
    p: float = 0.5
    source: str = ""

    def __post_init__(self) -> None:
        check_p(self.p)
        if not torch.is_tensor(self.inverted) or self.inverted.dim() != 5:
            raise InputError("a noise prior needs inverted latents [B,C,F,h,w].")

    def initial_latents(self, noise: torch.Tensor, model: "VideoModel", request: "SampleRequest") -> torch.Tensor:
        from .sampling import make_scheduler

        sigma = float(getattr(make_scheduler(model, request.scheduler), "init_noise_sigma", 1.0))
        return blend_noise_prior(self.inverted, noise, self.p) * sigma

    @classmethod
    def from_frames(cls, model: "VideoModel", frames: torch.Tensor, p: float, *, steps: int = 50, seed: int = 0,
                    progress: "ProgressCallback | None" = None, cancel: "CancelCheck | None" = None) -> "NoisePrior":
        """Encode frames ``[F,H,W,3]`` (already at the generation size) and invert them."""
        check_p(p)
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        with torch.no_grad():
            latents = model.encode_video(frames, generator=generator)
        inverted = invert_latents(model, latents.float(), steps=steps, progress=progress, cancel=cancel)
        return cls(inverted=inverted, p=p, source="reference video")
