"""MotionClone on Wan: training-free motion cloning with attention-motion-flow guidance on a video DiT.

MotionClone (reference/motion_clone.md) guides the *temporal attention* of a UNet. Wan has none: every
block's self-attention ``attn1`` mixes all ``N = F * h * w`` tokens of the latent video (F latent frames,
frame-major). Its temporal part is the **cross-frame part** -- the queries of one latent frame against the
keys of another (reference/motion_clone.md section 17, "Generalising MotionClone itself to Wan"). We
describe it, per guided layer, with DiTFlow's *attention motion flow* (arXiv 2412.07776) plus the attention
mass per key frame, computed by :mod:`motion_core.attention.flow_kernel` without ever forming the ``N x N``
map:

* **Motion representation** (reference clip, no gradient): for every query token ``i`` and key frame
  ``f``, the attention mass ``m[i, f]`` that the (head-averaged) attention row puts on frame ``f``, and the
  best-matching key position ``a[i, f] = argmax_j mean_h p^f_h[i, j]`` in that frame (``p^f`` = the softmax
  restricted to frame ``f`` at temperature ``T``; heads averaged before the argmax, as DiTFlow does). Stored
  per layer as ``[N, F]`` float16 (mass) and ``[N, F]`` int16 (flat ``y * w + x``): 4 bytes per
  (token, key frame) instead of ``2 N`` for the map -- 2.6 MiB instead of 2 GiB for one layer of Wan 2.1
  1.3B at 832x480x81 (N = 32760, F = 21).
* **Energy** (generation, differentiable): the expected position ``pos[i, f] = sum_j mean_h p^f_h[i, j] c_j``
  (the soft counterpart of the argmax, DiTFlow's generation-side flow) and the mass ``m_gen[i, f]``::

      E(z_t) = λ · r(i) · Σ_l [ mean_{i, f ≠ frame(i)} ‖(pos_l[i, f] − a_l[i, f]) ⊘ (w−1, h−1)‖²
                                + mean_{i, f} (m_gen,l[i, f] − m_l[i, f])² ]

  The flow term (a) is masked to cross-frame pairs: within its own frame a token's best match is itself
  (no motion information). Positions are divided by the grid extent, so both terms are squared errors of
  quantities in [0, 1] -- the same range as MotionClone's probability MSE, which is why λ keeps its
  reference value 2000 as a starting point (the term mix is selectable: ``terms="flow" | "mass" | "both"``,
  default both: the flow says *where* content moves, the mass *how much* a token attends to each other
  frame, i.e. how static it is). λ was not tuned on the real Wan weights (no GPU run was made here).
* **Extraction**: frames spread over the clip (``4k+1`` of them), VAE-encoded, noised **once** at
  ``σ = 0.6`` (``t = 600``) as ``x_σ = (1 − σ) x0 + σ ε`` with the generation's own seeded noise, one forward
  with the empty prompt, stopped after the last guided block (:func:`motion_core.attention.run_until`). Why
  σ = 0.6: MotionClone's t = 400 on its linear schedule has ``√ᾱ / √(1 − ᾱ) = 0.539 / 0.843 = 0.64``; the
  flow noise level with the same signal-to-noise ratio ``(1 − σ) / σ`` is σ = 0.61 -- the top of the
  0.4-0.6 range suggested for DiTs. DiTFlow extracts at t = 0 instead; a noisy input keeps the maps closer
  to those the guided (noisy) steps produce.
* **Guided layers**: three consecutive mid-depth blocks (``blocks.{n/2-1, n/2, n/2+1}``: 14-16 of Wan 2.1
  1.3B's 30, 19-21 of 14B's 40). DiTFlow used one mid block (15 of CogVideoX-2B's 30); the middle of a DiT
  carries layout and correspondence rather than texture, and three blocks give the sum over layers the
  role it has in MotionClone (6 layers of one stage) while the forward still stops just past half depth.
  Every ``attn1`` sees only video tokens (text enters through ``attn2``), so nothing must be excluded.
* **Guidance**: the gradient of ``E`` w.r.t. the latent from the conditional branch (the sampler), applied
  by the sampler's flow rule ``x' ← x' − σ σ' g`` (:func:`motion_core.sampling.flow_guidance_update`) over
  the top ``guidance_fraction`` of the noise range with MotionClone's uneven schedule (custom timesteps
  ``t``, ``σ = t / 1000``) and warm-up / cool-down ramps. Presets (:data:`WAN_PRESETS`): ``camera`` 50
  steps, 20 guided over σ in [0.6, 1) (the "first 30-40 % of the steps"); ``object`` 60 steps, 30 guided over
  σ in [0.5, 1) -- object motion needs guidance deeper into the schedule, as in MotionClone's presets.
* **Memory**: the statistics come from ``on_qk`` of the real attention (post-norm, post-RoPE q/k) through
  the kernel, whose backward recomputes scores chunk by chunk: O(N · F) per layer, never O(N^2). Blocks
  after the last guided one run without autograd (:func:`motion_core.attention.no_grad_after`).
  Reference extraction uses the chunked PyTorch path (:func:`reference_attention_flow`): the head-averaged
  argmax needs every head's per-frame softmax at once, which the per-head kernel does not give.

Wan 2.2 A14B: the stages sit on the same-named blocks of both experts; extraction runs on the expert of the
extraction timestep. Image-to-video Wan models are refused (the extraction forward has no start image).
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import torch
from torch import nn

from ..adapters.representation import MotionRepresentation
from ..attention import AttentionStage, attach, no_grad_after, run_until
from ..attention.flow_kernel import DEFAULT_MAX_CHUNK_ELEMENTS, Backend, frame_attention_stats
from ..attention.processors import AttentionCall
from ..backbones.base import LayerRef, VideoModel
from ..errors import InputError
from ..motion_model import MotionModel
from ..sampling import SamplingState, seeded_noise
from .motion_clone import MotionCloneConfig, MotionCloneGuidance, _resolve_size, prepare_reference_frames

__all__ = [
    "ENERGY_TERMS",
    "WAN_EXTRACTION_TIMESTEP",
    "WAN_PRESETS",
    "WAN_TEMPERATURE",
    "AttentionFlowCapture",
    "AttentionFlowEnergy",
    "WanMotionCloneGuidance",
    "attention_flow_energy",
    "extract_wan_representation",
    "reference_attention_flow",
    "wan_guided_blocks",
    "wan_guided_layers",
    "wan_representation_from_latents",
]

#: extraction noise level t = 1000·σ (σ = 0.6: MotionClone's t = 400 signal-to-noise ratio, see above)
WAN_EXTRACTION_TIMESTEP = 600
#: DiTFlow's softmax temperature for the per-frame attention (scores divided by T)
WAN_TEMPERATURE = 2.0
ENERGY_TERMS = ("both", "flow", "mass")


#: schedule presets for Wan (the UNet presets' 100-300 steps are far more than a flow model needs)
WAN_PRESETS: dict[str, MotionCloneConfig] = {
    "camera": MotionCloneConfig(steps=50, guided_steps=20, guidance_fraction=0.4, warm_up=3, cool_down=3),
    "object": MotionCloneConfig(steps=60, guided_steps=30, guidance_fraction=0.5, warm_up=3, cool_down=5),
}


# --------------------------------------------------------------------------------------------- layers
def wan_guided_blocks(model: VideoModel) -> list[str]:
    """The default guided blocks: ``blocks.{n/2-1, n/2, n/2+1}`` of the ``n`` transformer blocks."""
    n = len(model.denoiser.blocks)
    mid = n // 2
    return [f"blocks.{i}" for i in (mid - 1, mid, mid + 1) if 0 <= i < n]


def wan_guided_layers(model: VideoModel, blocks: Sequence[str] | None = None) -> list[LayerRef]:
    """The self-attention (``attn1``) layers of the guided blocks, in execution order."""
    wanted = list(blocks) if blocks is not None else wan_guided_blocks(model)
    refs = [ref for ref in model.temporal_attention_layers() if ref.block in wanted]
    if not refs:
        have = len(model.denoiser.blocks)
        raise InputError(f"No Wan self-attention in blocks {wanted}; this model has blocks.0 .. blocks.{have - 1}.")
    return sorted(refs, key=lambda r: int(r.block.split(".")[1]))


def _token_grid(model: VideoModel, num_frames: int, width: int, height: int) -> tuple[int, int, int]:
    _, _, f, h, w = model.latent_shape(1, num_frames, height, width)
    return tuple(int(x) for x in model.token_grid(f, h, w))  # type: ignore[attr-defined,return-value]


# --------------------------------------------------------------------------------------------- statistics
@torch.no_grad()
def reference_attention_flow(q: torch.Tensor, k: torch.Tensor, *, frames: int, height: int, width: int,
                             scale: float, max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Head-averaged attention mass per key frame ``[B, N, F]`` (float32) and the argmax of the
    head-averaged per-frame softmax ``[B, N, F]`` (flat index ``y * width + x``), from ``q``/``k``
    ``[B, heads, N, d]``, one chunk of queries at a time (memory O(chunk · N · heads), never N x N)."""
    b, heads, n, _ = q.shape
    s = height * width
    if k.shape[2] != frames * s:
        raise InputError(f"{k.shape[2]} keys do not make a {frames}x{height}x{width} token grid.")
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    kt = k.to(dtype).transpose(-1, -2)
    mass = torch.empty(b, n, frames, device=q.device, dtype=dtype)
    argmax = torch.empty(b, n, frames, device=q.device, dtype=torch.long)
    chunk = max(1, min(n, max_chunk_elements // max(1, b * heads * k.shape[2])))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        scores = (q[:, :, start:stop].to(dtype) @ kt).mul_(scale).view(b, heads, stop - start, frames, s)
        best = scores.amax(dim=-1, keepdim=True)
        weights = scores.sub_(best).exp_()
        total = weights.sum(dim=-1, keepdim=True)
        lse = (best + total.log()).squeeze(-1)  # [b, H, c, F]
        mass[:, start:stop] = torch.softmax(lse, dim=-1).mean(dim=1)
        argmax[:, start:stop] = weights.div_(total).mean(dim=1).argmax(dim=-1)
    return mass, argmax


def _positions(flat: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.stack([flat % width, torch.div(flat, width, rounding_mode="floor")], dim=-1).to(dtype)


def attention_flow_energy(position: torch.Tensor, mass: torch.Tensor, ref_mass: torch.Tensor,
                          ref_argmax: torch.Tensor, *, frames: int, height: int, width: int,
                          terms: str = "both") -> torch.Tensor:
    """One layer's term of the energy (module docstring): ``position`` ``[B, N, F, 2]`` and ``mass``
    ``[B, N, F]`` of the generation (head-averaged), against the stored ``ref_mass`` / ``ref_argmax``
    ``[N, F]``. Per-video means, summed over the videos of the batch."""
    if terms not in ENERGY_TERMS:
        raise InputError(f"energy terms must be one of {', '.join(ENERGY_TERMS)} (got {terms!r}).")
    b, n, f = mass.shape
    dtype = position.dtype
    total = position.new_zeros(())
    if terms in ("both", "flow"):
        extent = torch.tensor([max(width - 1, 1), max(height - 1, 1)], device=position.device, dtype=dtype)
        target = _positions(ref_argmax.to(position.device).long(), width, dtype)
        err = ((position - target) / extent).pow(2).sum(dim=-1)  # [B, N, F]
        own = torch.arange(n, device=position.device) // (height * width)
        cross = (own[:, None] != torch.arange(f, device=position.device)[None, :]).to(dtype)  # [N, F]
        denom = cross.sum().clamp_min(1.0)
        total = total + (err * cross).sum() / denom  # sum over videos of per-video means
    if terms in ("both", "mass"):
        ref = ref_mass.to(device=mass.device, dtype=mass.dtype)
        total = total + (mass - ref).pow(2).mean(dim=(1, 2)).sum()
    return total


class AttentionFlowCapture(AttentionStage):
    """Records the reference statistics (:func:`reference_attention_flow`) of every call of its layers,
    on the token grid ``grid = (F, h, w)`` it is given."""

    def __init__(self, grid: tuple[int, int, int], temperature: float = WAN_TEMPERATURE) -> None:
        self.grid = tuple(int(x) for x in grid)
        self.temperature = float(temperature)
        self.records: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def active(self, call: AttentionCall) -> bool:
        return not call.is_cross

    def on_qk(self, call: AttentionCall, query: torch.Tensor, key: torch.Tensor) -> None:
        f, h, w = self.grid
        self.records[call.layer] = reference_attention_flow(query.detach(), key.detach(), frames=f, height=h,
                                                            width=w, scale=call.scale / self.temperature)


class AttentionFlowEnergy(AttentionStage):
    """While armed, each call of a target layer adds its :func:`attention_flow_energy` term, from the
    layer's own q/k through the O(N·F) kernel (:func:`frame_attention_stats`, differentiable)."""

    def __init__(self, targets: dict[str, tuple[torch.Tensor, torch.Tensor]], grid: tuple[int, int, int], *,
                 temperature: float = WAN_TEMPERATURE, terms: str = "both", backend: Backend = "auto",
                 max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS) -> None:
        if terms not in ENERGY_TERMS:
            raise InputError(f"energy terms must be one of {', '.join(ENERGY_TERMS)} (got {terms!r}).")
        self.targets = dict(targets)
        self.grid = tuple(int(x) for x in grid)
        self.temperature = float(temperature)
        self.terms_kind = terms
        self.backend = backend
        self.max_chunk_elements = int(max_chunk_elements)
        self.armed = False
        self.terms: dict[str, torch.Tensor] = {}

    def active(self, call: AttentionCall) -> bool:
        return self.armed and not call.is_cross and call.layer in self.targets

    def arm(self) -> None:
        self.terms = {}
        self.armed = True

    def disarm(self) -> None:
        self.armed = False

    def on_qk(self, call: AttentionCall, query: torch.Tensor, key: torch.Tensor) -> None:
        f, h, w = self.grid
        ref_mass, ref_argmax = self.targets[call.layer]
        if call.query_length != f * h * w or ref_mass.shape[0] != call.query_length:
            raise InputError(
                f"The motion representation of {call.layer} holds {ref_mass.shape[0]} tokens but the model runs "
                f"{call.query_length} there: it was extracted for another size or frame count.")
        stats = frame_attention_stats(query, key, frames=f, height=h, width=w,
                                      scale=call.scale / self.temperature, backend=self.backend,
                                      max_chunk_elements=self.max_chunk_elements)
        position = stats.position.mean(dim=1)  # = expected position under the head-averaged per-frame map
        mass = stats.mass.mean(dim=1)
        self.terms[call.layer] = attention_flow_energy(position, mass, ref_mass, ref_argmax, frames=f, height=h,
                                                       width=w, terms=self.terms_kind)

    def take(self) -> torch.Tensor | None:
        """Σ over the layers that ran (None when none ran); disarms."""
        self.armed = False
        if not self.terms:
            return None
        total = torch.stack([t.float() if t.dtype != torch.float64 else t for t in self.terms.values()]).sum()
        self.terms = {}
        return total


# --------------------------------------------------------------------------------------------- extraction
def _check_wan(base: VideoModel) -> None:
    if getattr(base, "needs_image", False):
        raise InputError(f"MotionClone on Wan needs a text-to-video model (T2V 1.3B/14B, TI2V-5B, T2V-A14B); "
                         f"{base.base_model} ({getattr(base, 'variant', '?')}) is image-to-video only.")


def _flow_maps(base: VideoModel, z0: torch.Tensor, *, seed: int, timestep: int, layers: list[LayerRef],
               temperature: float) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], tuple[int, int, int]]:
    """Noise ``z0`` once at ``σ = timestep / 1000`` with the seed's noise, run the expert of that timestep up
    to the last guided block with the empty prompt, keep mass (fp16) and argmax (int16) per layer."""
    if z0.shape[0] != 1:
        raise InputError("extract the motion of one reference clip at a time.")
    noise = seeded_noise(tuple(z0.shape), seed).to(z0.device)
    sigma = float(timestep) / float(base.num_train_timesteps)  # type: ignore[attr-defined]
    z_t = (1.0 - sigma) * z0.float() + sigma * noise.float()
    grid = tuple(int(x) for x in base.token_grid(*z0.shape[2:]))  # type: ignore[attr-defined]
    expert = base.expert_for(timestep).module  # type: ignore[attr-defined]
    embeds = base.encode_prompt([""])
    capture = AttentionFlowCapture(grid, temperature)  # type: ignore[arg-type]
    targets = [(ref.name, expert.get_submodule(ref.name)) for ref in layers]
    stops = [expert.get_submodule(blk) for blk in sorted({r.block for r in layers})]
    with attach(expert, targets, capture):
        run_until(stops, lambda: base.predict(z_t, timestep, embeds))
    index_dtype = torch.int16 if grid[1] * grid[2] <= 32767 else torch.int32
    kept = {}
    for ref in layers:
        if ref.name not in capture.records:
            raise RuntimeError(f"guided layer {ref.name} did not run during extraction")
        mass, argmax = capture.records[ref.name]
        kept[ref.name] = (mass[0].to("cpu", torch.float16), argmax[0].to("cpu", index_dtype))
    return kept, grid  # type: ignore[return-value]


def _representation(base: VideoModel, kept: dict, grid: tuple[int, int, int], *, num_frames: int, width: int,
                    height: int, timestep: int, seed: int, source: str, temperature: float,
                    layers: list[LayerRef]) -> MotionRepresentation:
    return MotionRepresentation(
        layers=kept, family=base.family, base_model=str(base.base_model), num_frames=num_frames, width=width,
        height=height, k=1, timestep=int(timestep), seed=int(seed), source=source,
        extra={"kind": "attention_flow", "grid": list(grid), "variant": getattr(base, "variant", ""),
               "blocks": sorted({r.block for r in layers}, key=lambda b: int(b.split(".")[1])),
               "sigma": int(timestep) / float(base.num_train_timesteps),  # type: ignore[attr-defined]
               "temperature": float(temperature)})


@torch.no_grad()
def extract_wan_representation(model: VideoModel | MotionModel, video: Any, *, num_frames: int | None = None,
                               width: int | None = None, height: int | None = None, seed: int = 0,
                               timestep: int | None = None, blocks: Sequence[str] | None = None,
                               temperature: float = WAN_TEMPERATURE, source: str | None = None
                               ) -> MotionRepresentation:
    """The Wan motion representation of a reference clip (module docstring, "Extraction").

    ``num_frames`` (4k+1) / ``width`` / ``height`` / ``seed`` must be those of the generations it will guide.
    """
    motion = MotionModel.wrap(model)
    base = motion.base
    _check_wan(base)
    num_frames, width, height = _resolve_size(base, num_frames, width, height)
    base.latent_shape(1, num_frames, height, width)  # validates size and 4k+1 frames
    t = WAN_EXTRACTION_TIMESTEP if timestep is None else int(timestep)
    t_max = int(base.num_train_timesteps)  # type: ignore[attr-defined]
    if not 0 < t < t_max:
        raise InputError(f"The extraction timestep must be in 1..{t_max - 1} (noise level σ = t/{t_max}; got {t}); "
                         f"Wan's default is {WAN_EXTRACTION_TIMESTEP} (σ = 0.6).")
    if not temperature > 0:
        raise InputError(f"The attention temperature must be > 0 (got {temperature}).")
    layers = wan_guided_layers(base, blocks)
    frames, name = prepare_reference_frames(video, num_frames, width, height)
    with motion.activated():
        generator = torch.Generator("cpu").manual_seed(int(seed))
        z0 = base.encode_video(frames, generator=generator, sample=True)
        kept, grid = _flow_maps(base, z0, seed=int(seed), timestep=t, layers=layers, temperature=temperature)
    return _representation(base, kept, grid, num_frames=num_frames, width=width, height=height, timestep=t,
                           seed=int(seed), source=source or name, temperature=temperature, layers=layers)


@torch.no_grad()
def wan_representation_from_latents(model: VideoModel | MotionModel, latents: torch.Tensor, *, seed: int,
                                    timestep: int | None = None, blocks: Sequence[str] | None = None,
                                    temperature: float = WAN_TEMPERATURE, source: str = "latents"
                                    ) -> MotionRepresentation:
    """The same representation from clean latents ``[1, C, F_lat, h, w]`` (e.g. a generation's result)."""
    motion = MotionModel.wrap(model)
    base = motion.base
    _check_wan(base)
    t = WAN_EXTRACTION_TIMESTEP if timestep is None else int(timestep)
    layers = wan_guided_layers(base, blocks)
    _, _, f, h, w = latents.shape
    with motion.activated():
        kept, grid = _flow_maps(base, latents.to(base.device), seed=int(seed), timestep=t, layers=layers,
                                temperature=temperature)
    num_frames = (f - 1) * int(base.vae_temporal_factor) + 1  # type: ignore[attr-defined]
    s = base.vae_scale_factor
    return _representation(base, kept, grid, num_frames=num_frames, width=w * s, height=h * s, timestep=t,
                           seed=int(seed), source=source, temperature=temperature, layers=layers)


# --------------------------------------------------------------------------------------------- guidance
class WanMotionCloneGuidance(MotionCloneGuidance):
    """MotionClone's guidance hook with the attention-flow energy (module docstring, "Guidance").

    Inherits the uneven schedule, ramps and λ from :class:`~motion_core.methods.motion_clone.MotionCloneGuidance`;
    only the stage differs. ``terms`` picks the energy terms, ``backend`` the kernel.
    """

    def __init__(self, representation: MotionRepresentation, config: Any = None, *, terms: str = "both",
                 backend: Backend = "auto", skip_graph_after_guided: bool = True) -> None:
        super().__init__(representation, config if config is not None else WAN_PRESETS["camera"],
                         skip_graph_after_guided=skip_graph_after_guided)
        if not representation.is_attention_flow:
            raise InputError("This motion representation was not extracted from a Wan model; extract it again "
                             "with the Wan model.")
        if terms not in ENERGY_TERMS:
            raise InputError(f"energy terms must be one of {', '.join(ENERGY_TERMS)} (got {terms!r}).")
        self.terms = terms
        self.backend = backend

    def describe(self) -> str:
        return super().describe() + f", attention flow ({self.terms})"

    def setup(self, state: SamplingState) -> None:
        req, model = state.request, state.model
        rep = self.representation
        rep.check_compatible(model, width=int(req.width), height=int(req.height), num_frames=int(req.num_frames))
        self.last_energies = []
        if self.config.weight == 0:
            return
        grid = _token_grid(model, int(req.num_frames), int(req.width), int(req.height))
        if list(grid) != [int(x) for x in rep.extra["grid"]]:
            raise InputError(f"The representation's token grid {rep.extra['grid']} differs from the generation's "
                             f"{list(grid)}; extract it again at this size.")
        self._energy = AttentionFlowEnergy(rep.layers, grid, temperature=float(rep.extra.get("temperature",
                                           WAN_TEMPERATURE)), terms=self.terms, backend=self.backend)
        self._stack = contextlib.ExitStack()
        last = max((n.split(".attn1")[0] for n in rep.layer_names), key=lambda b: int(b.split(".")[1]))
        for expert in model.experts:  # A14B: both experts carry the stage on the same-named layers
            root: nn.Module = expert.module
            self._stack.enter_context(attach(root, [(n, root.get_submodule(n)) for n in rep.layer_names],
                                             self._energy))
            if self.skip_graph_after_guided:
                self._stack.enter_context(no_grad_after(root, last))
