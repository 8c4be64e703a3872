"""The one denoising loop every model family and every method uses.

Not the deprecated diffusers ``TextToVideoSDPipeline``: we own the loop so that methods can plug in

* initial latents other than seeded noise (MotionDirector's noise prior: ``MotionModel.noise_prior``);
* per-step hooks (:class:`SamplingHook`): adapter strength schedules over timesteps, ControlNet residuals,
  and *guidance* -- an energy computed from the conditional forward whose gradient w.r.t. the latents
  steers the step (MotionClone);
* a custom timestep list (MotionClone's "uneven" schedule).

Seeded noise is drawn on the CPU in float32 from ``torch.Generator().manual_seed(seed)``, so the same seed
gives the same starting point on every device and dtype; the same seed on the same device gives
identical frames. Latents are kept in float32 between steps and cast to the model dtype for each
denoiser call (fp16/bf16 models stay numerically sane through 50-300 steps).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .backbones.base import CancelCheck, ProgressCallback, VideoModel
from .autograd import autograd
from .errors import Cancelled, InputError
from .motion_model import MotionModel

log = logging.getLogger(__name__)

# name -> (diffusers class name, extra config). "ddim" is stepped by our own DDIM (custom timestep lists,
# guidance on the direction term); the others by the diffusers scheduler built from the model's config.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++2m_karras": ("DPMSolverMultistepScheduler",
                       {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
}

# Flow-matching models (prediction_type "flow": x_σ = (1−σ)·x0 + σ·ε, the model predicts v = ε − x0) are
# stepped on the flow ODE over shifted sigmas. "ddim" means the deterministic Euler step of that ODE --
# the DDIM update written in the flow parametrisation -- so the default request works on every family.
FLOW_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("FlowMatchEulerDiscreteScheduler", {}),
    "euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {"prediction_type": "flow_prediction", "use_flow_sigmas": True}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"prediction_type": "flow_prediction", "use_flow_sigmas": True,
                                                "algorithm_type": "dpmsolver++", "solver_order": 2}),
}


@dataclass
class SampleRequest:
    """What to generate. ``None`` sizes fall back to the model's defaults."""

    prompt: str | Sequence[str]
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    num_frames: int | None = None
    steps: int = 25
    cfg: float = 9.0
    seed: int = 0
    scheduler: str = "ddim"
    eta: float = 0.0
    videos_per_prompt: int = 1

    def resolved(self, model: VideoModel) -> "SampleRequest":
        w, h = model.default_size
        r = SampleRequest(**{**self.__dict__})
        r.width = self.width or w
        r.height = self.height or h
        r.num_frames = self.num_frames or model.frame_limits.default
        return r

    @property
    def prompts(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
        return [p for p in prompts for _ in range(self.videos_per_prompt)]


@dataclass
class SamplingState:
    """Shared, mutable view of a run that hooks read (and may annotate through ``scratch``)."""

    model: VideoModel
    request: SampleRequest
    timesteps: list[int]
    latents: torch.Tensor
    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor | None
    scheduler: Any = None
    raw_timesteps: list[Any] = field(default_factory=list)
    step: int = 0
    timestep: int = 0
    scratch: dict[str, Any] = field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        return len(self.timesteps)

    @property
    def next_timestep(self) -> int:
        return self.timesteps[self.step + 1] if self.step + 1 < len(self.timesteps) else -1


class SamplingHook:
    """Base class of per-step hooks. Override only what you need; every method is a no-op by default.

    Order within a step: ``before_step`` → (``wants_guidance`` ? conditional forward under grad →
    ``energy``) → CFG → scheduler step (+ guidance update) → ``after_step``.
    """

    #: label shown on the progress bar for steps where this hook guides
    label: str = "guided"

    def timesteps(self, model: VideoModel, request: SampleRequest) -> list[int] | None:
        """A custom descending timestep list for the whole run (DDIM only), or None."""
        return None

    def setup(self, state: SamplingState) -> None:
        """Called once before the first step (install attention processors here)."""

    def before_step(self, state: SamplingState) -> None:
        """Called before each denoiser call (set adapter strengths for ``state.timestep`` here)."""

    def denoiser_inputs(self, state: SamplingState, latents: torch.Tensor, embeds: torch.Tensor) -> dict:
        """Extra keyword inputs for ``VideoModel.predict`` (e.g. ControlNet residuals), computed without
        gradient. ``latents``/``embeds`` are exactly what the denoiser will see (possibly a CFG batch)."""
        return {}

    def wants_guidance(self, state: SamplingState) -> bool:
        """True when this step should be guided by :meth:`energy`."""
        return False

    def energy(self, state: SamplingState) -> torch.Tensor | None:
        """Scalar energy from what the conditional forward just computed (captured by processors this
        hook installed). Its gradient w.r.t. the latents steers the step: the sampler moves the latents
        by ``-sqrt((1-ᾱ_t)(1-ᾱ_prev)) · ∂E/∂z`` after the DDIM step (MotionClone's direction-term
        injection, see ``ddim_step``)."""
        return None

    def after_step(self, state: SamplingState) -> None:
        """Called after the latents were updated."""

    def teardown(self, state: SamplingState) -> None:
        """Called once at the end, also on error or cancel (remove processors here)."""


@dataclass
class SampleResult:
    frames: torch.Tensor  # [B, F, H, W, 3] float32 0..1, CPU
    latents: torch.Tensor  # [B, C, F, h, w] float32 (before decoding)
    timesteps: list[int]
    info: dict[str, Any]


# --------------------------------------------------------------------------------------------- schedulers
def make_scheduler(model: VideoModel, name: str) -> Any:
    """A fresh diffusers scheduler of kind ``name`` built from the model's own scheduler config."""
    import diffusers

    if model.prediction_type == "flow":
        return make_flow_scheduler(model, name)
    if name not in SCHEDULERS:
        raise InputError(f"Unknown scheduler '{name}'. Choose one of: {', '.join(SCHEDULERS)}.")
    cls_name, extra = SCHEDULERS[name]
    cls = getattr(diffusers, cls_name)
    return cls.from_config(dict(model.scheduler.config), **extra)


def flow_shift(model: VideoModel) -> float:
    """The sigma shift of a flow model's schedule (``flow_shift`` of a UniPC/DPM config, ``shift`` of a
    FlowMatchEuler config; 1.0 when neither is set)."""
    config = model.scheduler.config
    return float(getattr(model, "flow_shift", None) or config.get("flow_shift") or config.get("shift") or 1.0)


def make_flow_scheduler(model: VideoModel, name: str) -> Any:
    """A fresh flow-matching scheduler of kind ``name`` with the model's shift and training timesteps."""
    import diffusers

    if name not in FLOW_SCHEDULERS:
        raise InputError(f"The scheduler '{name}' does not exist for flow-matching models; choose one of: "
                         f"{', '.join(FLOW_SCHEDULERS)}.")
    cls_name, extra = FLOW_SCHEDULERS[name]
    train_steps = int(model.scheduler.config.get("num_train_timesteps", 1000))
    shift = flow_shift(model)
    if cls_name == "FlowMatchEulerDiscreteScheduler":
        return diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=train_steps, shift=shift)
    return getattr(diffusers, cls_name)(num_train_timesteps=train_steps, flow_shift=shift, **extra)


def flow_guidance_update(latents_next: torch.Tensor, grad: torch.Tensor, sigma: float,
                         sigma_next: float) -> torch.Tensor:
    """Guidance for a flow step, the flow analogue of ``ddim_step``'s direction-term injection.

    Written as DDIM in the flow parametrisation, a step is ``x' = (1−σ')·x̂0 + σ'·ε̂`` with
    ``x̂0 = x − σ v`` and ``ε̂ = x + (1−σ) v``. Correcting only the noise direction, ``ε̂ → ε̂ − σ·g``
    (MotionClone's rule with the flow noise level σ in place of √(1−ᾱ_t)), moves the result by
    ``−σ·σ'·g`` -- the same as an Euler step with the corrected velocity ``v + σσ'/(σ−σ')·g`` (σ' < σ).
    """
    return latents_next - float(sigma) * float(sigma_next) * grad


def seeded_noise(shape: Sequence[int], seed: int) -> torch.Tensor:
    """Standard normal noise drawn on the CPU in float32 from ``seed`` (device independent)."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)


def ddim_step(
    latents: torch.Tensor,
    model_output: torch.Tensor,
    alpha_t: torch.Tensor | float,
    alpha_prev: torch.Tensor | float,
    *,
    prediction_type: str = "epsilon",
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    clip_sample: float | None = None,
    guidance_grad: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM update ``z_t → z_prev`` (Song et al., eq. 12); returns ``(z_prev, x0_pred)``.

    ``guidance_grad`` (∂E/∂z_t of an energy E) is applied to the *direction* term only:
    ``ε_dir = ε − √(1−ᾱ_t)·g`` while x̂0 keeps the unguided ε. This is the MotionClone reference code's
    algebra (reference/motion_clone.md §5.2) -- net effect ``z_prev = DDIM(z_t, ε) − √((1−ᾱ_t)(1−ᾱ_prev))·g``.
    The paper's formula (ε̂ also inside x̂0) nearly cancels at high noise, so we follow the code.
    """
    alpha_t = torch.as_tensor(alpha_t, dtype=latents.dtype, device=latents.device)
    alpha_prev = torch.as_tensor(alpha_prev, dtype=latents.dtype, device=latents.device)
    beta_t = 1 - alpha_t
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (latents - beta_t.sqrt() * eps) / alpha_t.sqrt()
    elif prediction_type == "v_prediction":
        x0 = alpha_t.sqrt() * latents - beta_t.sqrt() * model_output
        eps = alpha_t.sqrt() * model_output + beta_t.sqrt() * latents
    elif prediction_type == "sample":
        x0 = model_output
        eps = (latents - alpha_t.sqrt() * x0) / beta_t.sqrt()
    else:
        raise InputError(f"DDIM cannot step a '{prediction_type}' model.")
    if clip_sample is not None:
        x0 = x0.clamp(-clip_sample, clip_sample)
    sigma = eta * ((1 - alpha_prev) / beta_t).sqrt() * (1 - alpha_t / alpha_prev).sqrt() if eta > 0 else 0.0
    eps_dir = eps if guidance_grad is None else eps - beta_t.sqrt() * guidance_grad
    z_prev = alpha_prev.sqrt() * x0 + (1 - alpha_prev - sigma**2).sqrt() * eps_dir
    if eta > 0:
        if noise is None:
            raise ValueError("eta > 0 needs a noise tensor")
        z_prev = z_prev + sigma * noise
    return z_prev, x0


def classifier_free_guidance(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Standard diffusers convention: ``ε_u + w (ε_c − ε_u)`` (w = 1 means no guidance)."""
    return uncond + scale * (cond - uncond)


# --------------------------------------------------------------------------------------------- the loop
def sample(
    model: VideoModel | MotionModel,
    request: SampleRequest,
    *,
    hooks: Sequence[SamplingHook] = (),
    initial_latents: torch.Tensor | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    decode: bool = True,
) -> SampleResult:
    """Generate videos. ``model`` may carry adapters, hooks and a noise prior (a :class:`MotionModel`).

    ``initial_latents`` replaces the seeded noise entirely (already at the first timestep's noise level).
    ``progress(step, total, info)`` is called after every step; ``cancel()`` is checked between steps and
    raises :class:`~motion_core.errors.Cancelled` (nothing is decoded).
    """
    motion = MotionModel.wrap(model)
    base = motion.base
    req = request.resolved(base)
    if req.steps < 1:
        raise InputError(f"steps must be at least 1 (got {req.steps}).")
    if not req.prompts:
        raise InputError("No prompt given.")
    all_hooks = list(motion.all_hooks()) + list(hooks)
    shape = base.latent_shape(len(req.prompts), req.num_frames, req.height, req.width)

    started = time.perf_counter()
    with motion.activated(), torch.no_grad():
        scheduler = make_scheduler(base, req.scheduler)
        raw_timesteps = _timesteps(scheduler, base, req, all_hooks)
        timesteps = [int(round(float(t))) for t in raw_timesteps]
        noise = seeded_noise(shape, req.seed)
        if initial_latents is not None:
            latents = initial_latents.to(torch.float32).cpu()
            if tuple(latents.shape) != tuple(shape):
                raise InputError(f"Initial latents have shape {tuple(latents.shape)}, expected {shape}.")
        elif motion.noise_prior is not None:
            latents = motion.noise_prior.initial_latents(noise, base, req).to(torch.float32).cpu()
        else:
            latents = noise * float(getattr(scheduler, "init_noise_sigma", 1.0))
        latents = latents.to(base.device)

        prompt_embeds = base.encode_prompt(req.prompts)
        negative = base.encode_prompt([req.negative_prompt] * len(req.prompts)) if req.cfg != 1.0 else None
        state = SamplingState(base, req, timesteps, latents, prompt_embeds, negative,
                              scheduler=scheduler, raw_timesteps=raw_timesteps)
        guided_steps = 0
        try:
            for hook in all_hooks:
                hook.setup(state)
            for i, t in enumerate(timesteps):
                if cancel is not None and cancel():
                    raise Cancelled(f"Sampling cancelled at step {i} of {len(timesteps)}.")
                state.step, state.timestep = i, int(t)
                for hook in all_hooks:
                    hook.before_step(state)
                guiding = [h for h in all_hooks if h.wants_guidance(state)]
                if guiding and req.scheduler != "ddim" and base.prediction_type != "flow":
                    raise InputError("Guidance needs the DDIM scheduler (its update is defined on the DDIM "
                                     f"direction term); got '{req.scheduler}'.")
                model_out, grad = _predict(state, all_hooks, guiding)
                state.latents = _scheduler_step(scheduler, base, req, state, model_out, grad)
                guided_steps += bool(guiding)
                for hook in all_hooks:
                    hook.after_step(state)
                if progress is not None:
                    progress(i + 1, len(timesteps), {"timestep": int(t), "guided": bool(guiding),
                                                     "label": guiding[0].label if guiding else "sampling"})
        finally:
            for hook in reversed(all_hooks):
                hook.teardown(state)
        latents = state.latents.to(torch.float32)
        frames = base.decode_latents(latents) if decode else torch.empty(0)
    info = {"seconds": time.perf_counter() - started, "guided_steps": guided_steps,
            "steps": len(timesteps), "width": req.width, "height": req.height,
            "num_frames": req.num_frames, "seed": req.seed, "scheduler": req.scheduler}
    return SampleResult(frames=frames, latents=latents.cpu(), timesteps=[int(t) for t in timesteps], info=info)


def _timesteps(scheduler: Any, model: VideoModel, req: SampleRequest, hooks: Sequence[SamplingHook]) -> list[Any]:
    """The run's timesteps as the scheduler wants them (ints for DDIM, floats for sigma schedulers)."""
    custom = [ts for ts in (h.timesteps(model, req) for h in hooks) if ts is not None]
    if len(custom) > 1:
        raise InputError("Two hooks ask for different timestep schedules; use only one of them.")
    if custom:
        if req.scheduler != "ddim":
            raise InputError(f"A custom timestep schedule needs the DDIM scheduler, not '{req.scheduler}'.")
        ts = [int(t) for t in custom[0]]
        if any(a <= b for a, b in zip(ts, ts[1:])):
            raise InputError("A custom timestep schedule must be strictly decreasing.")
        if model.prediction_type == "flow":
            # σ = t / T exactly: undo the scheduler's shift, which set_timesteps applies to given sigmas
            train_steps, shift = float(scheduler.config.num_train_timesteps), flow_shift(model)
            sigmas = [min(1.0, t / train_steps) for t in ts]
            scheduler.set_timesteps(sigmas=[s / (shift - (shift - 1.0) * s) for s in sigmas], device="cpu")
            return list(scheduler.timesteps)
        return ts
    scheduler.set_timesteps(req.steps, device="cpu")
    return list(scheduler.timesteps)


def _predict(state: SamplingState, hooks: Sequence[SamplingHook],
             guiding: Sequence[SamplingHook]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Model output after CFG, and the guidance gradient (or None) for this step."""
    model, req = state.model, state.request
    t = state.raw_timesteps[state.step]
    z = state.latents
    if req.scheduler != "ddim" and hasattr(state.scheduler, "scale_model_input"):
        z = state.scheduler.scale_model_input(z, t)

    def run(latents: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        extra: dict[str, Any] = {}
        for hook in hooks:
            extra.update(hook.denoiser_inputs(state, latents, embeds))
        return model.predict(latents, t, embeds, **extra).to(torch.float32)

    grad = None
    if guiding:
        # The energy is read from the *conditional* branch only, with autograd on; the unconditional
        # branch runs separately without graph (reference/motion_clone.md §5.2 steps 2-5).
        with autograd("motion guidance"):
            z_leaf = z.detach().requires_grad_(True)
            cond = run(z_leaf, state.prompt_embeds)
            energies = [e for e in (h.energy(state) for h in guiding) if e is not None]
            if energies:
                total = torch.stack([e.float() for e in energies]).sum()
                grad = torch.autograd.grad(total, z_leaf)[0].detach().to(torch.float32)
                state.scratch["energy"] = float(total.detach())
        cond = cond.detach()
        if state.negative_embeds is None:
            return cond, grad
        uncond = run(z, state.negative_embeds)
        return classifier_free_guidance(uncond, cond, req.cfg), grad
    if state.negative_embeds is None:
        return run(z, state.prompt_embeds), None
    both = run(torch.cat([z, z]), torch.cat([state.negative_embeds, state.prompt_embeds]))
    uncond, cond = both.chunk(2)
    return classifier_free_guidance(uncond, cond, req.cfg), None


def _scheduler_step(scheduler: Any, model: VideoModel, req: SampleRequest, state: SamplingState,
                    model_out: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
    z, t = state.latents.to(torch.float32), state.timestep
    if req.scheduler == "ddim" and model.prediction_type != "flow":
        ac = scheduler.alphas_cumprod
        t_prev = state.next_timestep
        alpha_prev = ac[t_prev] if t_prev >= 0 else scheduler.final_alpha_cumprod
        noise = None
        if req.eta > 0:
            noise = seeded_noise(z.shape, req.seed * 1000 + state.step + 1).to(z.device)
        clip = scheduler.config.clip_sample_range if scheduler.config.get("clip_sample") else None
        z_prev, _ = ddim_step(z, model_out, ac[t], alpha_prev, prediction_type=model.prediction_type,
                              eta=req.eta, noise=noise, clip_sample=clip, guidance_grad=grad)
        return z_prev
    out = scheduler.step(model_out, state.raw_timesteps[state.step], z, return_dict=False)[0]
    out = out.to(torch.float32)
    if grad is not None:
        if model.prediction_type == "flow":
            sigmas = scheduler.sigmas
            out = flow_guidance_update(out, grad, float(sigmas[state.step]), float(sigmas[state.step + 1]))
        else:
            out = model.guidance_update(state, out, grad)
    return out

