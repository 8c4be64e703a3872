"""The ``wan`` family: Wan 2.1 / 2.2 video DiTs in diffusers layout (WanPipeline / WanImageToVideoPipeline).

Components: ``WanTransformer3DModel`` (the denoiser; Wan 2.2 A14B has two), ``AutoencoderKLWan`` (causal 3D
VAE: 4x in time, 8x -- Wan 2.2 TI2V-5B: 16x -- in space), a UMT5 text encoder (prompts padded to 512 tokens,
the padding zeroed as the pipeline does) and a flow-matching scheduler.

Variants (``WanVideoModel.variant``):

==================  ==========================================================================================
``wan2.1-t2v``      1.3B (width 1536, 30 blocks) / 14B (5120, 40 blocks); 16 latent channels
``wan2.1-i2v``      14B with a CLIP image encoder; the transformer reads 36 channels (latents + mask +
                    first-frame latents) and the CLIP image tokens through ``add_k_proj``/``add_v_proj``
``wan2.2-ti2v-5b``  width 3072, 30 blocks, **48** latent channels, VAE 16x spatial; text-to-video, and
                    image-to-video by replacing the first latent frame (per-token timesteps, 0 on it)
``wan2.2-a14b``     two experts: ``transformer`` (high noise) for ``t >= boundary_ratio * T``, ``transformer_2``
                    (low noise) below; the boundary comes from ``model_index.json`` (0.875 T2V, 0.9 I2V)
==================  ==========================================================================================

Frames: ``4k + 1`` (the VAE keeps the first frame and compresses the rest 4x): ``(F - 1) / 4 + 1`` latent
frames, latents ``[B, C, F_lat, h, w]`` (already the canonical layout).

**Flow matching.** ``prediction_type == "flow"``: ``x_sigma = (1 - sigma) x0 + sigma eps`` with ``sigma = t / 1000``
and the model predicts the velocity ``v = eps - x0`` (the training target). The sampler steps the flow ODE
(``motion_core.sampling.FLOW_SCHEDULERS``): ``"ddim"`` = deterministic Euler (what DDIM is in the flow
parametrisation, and the scheduler the tiny models ship), ``"unipc"`` = what the published Wan repositories
ship (UniPC in flow mode with their ``flow_shift``: 3.0, 5.0 for TI2V-5B), ``"euler"``, ``"dpm++2m"``. We
default to the deterministic Euler step because guidance (MotionClone) and inversion (the noise prior) are
defined on a single-step update; UniPC is the better choice for plain sampling at few steps.

**What "temporal" means in a DiT.** Wan has no temporal-only layer: each block's self-attention ``attn1``
attends from every (frame, position) token to every other one. The temporal part of that attention is its
*cross-frame part* -- the queries of one latent frame against the keys of the other frames. So:

* ``layers("temporal_attention")`` = every block's ``attn1`` (``temporal=True``: its sequence spans the frame
  axis). It is the only self-attention, so ``layers("spatial_self_attention")`` is empty: methods that put a
  spatial adapter on spatial self-attention (MotionDirector's appearance LoRA) use the same ``attn1`` layers
  on single frames, where they *are* spatial.
* ``layers("cross_attention")`` = every ``attn2`` (text, and image tokens in Wan 2.1 I2V);
  ``layers("feed_forward")`` = every ``ffn`` (per token, ``temporal=False``).
* Statistics of the cross-frame part (attention mass per key frame, best-matching position per frame:
  DiTFlow's attention motion flow) come from :mod:`motion_core.attention.flow_kernel` without building the
  ``N x N`` map; :meth:`WanVideoModel.token_grid` gives its ``(frames, height, width)``.
* :meth:`single_frame_mode` has nothing to bypass (``temporal_modules()`` is empty): with one latent frame the
  self-attention is purely spatial. Inside it, :meth:`predict` runs every latent frame on its own (frames
  folded into the batch), so no frame ever sees another one -- the image-model behaviour MotionDirector's
  spatial path needs -- whatever the number of frames it is given.

Memory for real sizes: :meth:`enable_gradient_checkpointing` (per transformer block, every expert),
:meth:`release_text_encoder` (the encoder is dropped once the prompts are encoded; encodings are cached per
prompt), VAE slicing (``vae_slicing``) and tiling (:meth:`enable_vae_tiling`), ``offload_idle_experts``
(A14B: the expert not in use waits on the CPU), :meth:`offload_text_encoder` and :meth:`activation_bytes` for
:func:`motion_core.memory.estimate_training_memory`. The VAE is kept in float32 (as the diffusers Wan
examples load it) whatever the model dtype; the transformer keeps diffusers' float32 modules (norms,
modulation tables, time embedding).
"""

from __future__ import annotations

import collections
import contextlib
import gc
import html
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..errors import InputError, ModelLoadError
from .base import FrameLimits, LayerKind, LayerRef, VideoModel

logger = logging.getLogger(__name__)

__all__ = ["WanExpert", "WanImageConditioning", "WanVideoModel", "flow_inversion", "wan_layers"]

_LAYER_KINDS = ("temporal_attention", "spatial_self_attention", "cross_attention", "feed_forward")
#: published sizes (width, height) by variant, used when the folder does not say (motionkit.json)
_DEFAULT_SIZES = {"wan2.1-t2v-1.3b": (832, 480), "wan2.1-t2v-14b": (1280, 720), "wan2.1-i2v": (832, 480),
                  "wan2.2-ti2v-5b": (1280, 704), "wan2.2-a14b": (1280, 720)}
_PROMPT_CACHE_SIZE = 64


@dataclass(frozen=True)
class WanExpert:
    """One denoiser of the model: Wan 2.1/2.2-5B have one, Wan 2.2 A14B two (high noise, low noise).

    It runs for timesteps ``t_min <= t < t_max`` (the high-noise expert's ``t_max`` is infinite)."""

    name: str  # "main" | "high_noise" | "low_noise"
    component: str  # "transformer" | "transformer_2"
    module: nn.Module
    t_min: float
    t_max: float


def _clean_prompt(text: str) -> str:
    # the pipeline's prompt_clean without ftfy: unescape HTML twice, collapse whitespace
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def wan_layers(denoiser: nn.Module, kind: LayerKind | None = None) -> list[LayerRef]:
    """Layer discovery on a bare ``WanTransformer3DModel`` (works on the meta device)."""
    if kind is not None and kind not in _LAYER_KINDS:
        raise InputError(f"unknown layer kind {kind!r}; use one of {', '.join(_LAYER_KINDS)}.")
    refs: list[LayerRef] = []
    for i, block in enumerate(getattr(denoiser, "blocks", [])):
        name = f"blocks.{i}"
        for leaf, layer_kind, temporal in (("attn1", "temporal_attention", True),
                                           ("attn2", "cross_attention", False),
                                           ("ffn", "feed_forward", False)):
            if kind is not None and layer_kind != kind:
                continue
            refs.append(LayerRef(name=f"{name}.{leaf}", module=getattr(block, leaf), kind=layer_kind,
                                 block=name, transformer=name, temporal=temporal))
    return refs


class WanVideoModel(VideoModel):
    """Wan 2.1 / 2.2 (T2V 1.3B/14B, TI2V-5B, A14B, I2V) as a :class:`VideoModel`. See the module docstring."""

    family = "wan"

    def __init__(
        self,
        *,
        denoiser: nn.Module,
        vae: nn.Module,
        text_encoder: nn.Module,
        tokenizer: Any,
        scheduler: Any,
        base_model: str,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        denoiser_2: nn.Module | None = None,
        boundary_ratio: float | None = None,
        expand_timesteps: bool = False,
        image_encoder: nn.Module | None = None,
        image_processor: Any = None,
        max_sequence_length: int = 512,
        defaults: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(denoiser=denoiser, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                         scheduler=scheduler, base_model=base_model, device=device, dtype=dtype)
        if (denoiser_2 is None) != (boundary_ratio is None):
            raise ModelLoadError("a Wan 2.2 A14B model needs both transformer_2 and boundary_ratio "
                                 "(model_index.json); this folder has only one of them.")
        if boundary_ratio is not None and not 0.0 < float(boundary_ratio) < 1.0:
            raise ModelLoadError(f"boundary_ratio must be between 0 and 1, got {boundary_ratio}.")
        self.denoiser_2 = denoiser_2
        self.boundary_ratio = None if boundary_ratio is None else float(boundary_ratio)
        self.expand_timesteps = bool(expand_timesteps)
        self.image_encoder = image_encoder
        self.image_processor = image_processor
        self.max_sequence_length = int(max_sequence_length)
        self.defaults = dict(defaults or {})
        #: A14B: keep the expert not in use on the CPU (moved to ``device`` when its timesteps come)
        self.offload_idle_experts = False
        self._single_frame_depth = 0
        self._prompt_cache: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()

    # ----------------------------------------------------------------------------- facts
    @property
    def prediction_type(self) -> str:  # type: ignore[override]
        return "flow"

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.get("num_train_timesteps", 1000))

    @property
    def flow_shift(self) -> float:
        config = self.scheduler.config
        return float(config.get("flow_shift") or config.get("shift") or 1.0)

    @property
    def width(self) -> int:
        """Hidden width of the transformer (1536 for 1.3B, 3072 for 5B, 5120 for 14B)."""
        config = self.denoiser.config
        return int(config.num_attention_heads) * int(config.attention_head_dim)

    @property
    def image_conditioning(self) -> str | None:
        """How the model takes a start image: ``"first_frame"`` (Wan 2.2 TI2V-5B: the first latent frame is
        replaced), ``"concat"`` (I2V models: mask + first-frame latents concatenated to the input
        channels, plus CLIP image tokens for Wan 2.1 I2V), or None (text-to-video only)."""
        config = self.denoiser.config
        if int(config.in_channels) != int(config.out_channels):
            return "concat"
        if self.expand_timesteps:
            return "first_frame"
        return None

    @property
    def needs_image(self) -> bool:
        """True for image-to-video-only models (they cannot run without a start image)."""
        return self.image_conditioning == "concat"

    @property
    def variant(self) -> str:
        config = self.denoiser.config
        if self.denoiser_2 is not None:
            return "wan2.2-a14b" + ("-i2v" if self.needs_image else "")
        if self.needs_image:
            return "wan2.1-i2v" if config.get("image_dim") else "wan-i2v"
        if self.latent_channels == 48 or self.expand_timesteps:
            return "wan2.2-ti2v-5b"
        size = {1536: "1.3b", 5120: "14b"}.get(self.width)
        return f"wan2.1-t2v-{size}" if size else "wan2.1-t2v"

    @property
    def vae_scale_factor(self) -> int:
        return int(self.vae.config.get("scale_factor_spatial") or 8)

    @property
    def vae_temporal_factor(self) -> int:
        return int(self.vae.config.get("scale_factor_temporal") or 4)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(int(p) for p in self.denoiser.config.patch_size)  # type: ignore[return-value]

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.z_dim)

    @property
    def size_multiple(self) -> int:
        return self.vae_scale_factor * max(self.patch_size[1], self.patch_size[2])

    @property
    def frame_limits(self) -> FrameLimits:
        step = self.vae_temporal_factor
        max_latent = int(self.denoiser.config.get("rope_max_seq_len") or 1024) // self.patch_size[0]
        # the published lengths: 81 frames at 16 fps (Wan 2.1, 2.2 A14B), 121 at 24 fps (TI2V-5B)
        default = int(self.defaults.get("default_frames") or (121 if self.latent_channels == 48 else 81))
        return FrameLimits(minimum=1, maximum=step * (max_latent - 1) + 1, step=step, offset=1, default=default)

    def latent_frames(self, num_frames: int) -> int:
        return (int(num_frames) - 1) // self.vae_temporal_factor + 1

    @property
    def default_size(self) -> tuple[int, int]:
        size = self.defaults.get("default_size")
        if size:
            return (int(size[0]), int(size[1]))
        variant = self.variant
        for key, value in _DEFAULT_SIZES.items():
            if variant.startswith(key):
                return value
        return (832, 480)

    @property
    def boundary_timestep(self) -> float | None:
        """Wan 2.2 A14B: timesteps ``>=`` this run on the high-noise expert, the others on the low-noise one."""
        return None if self.boundary_ratio is None else self.boundary_ratio * self.num_train_timesteps

    @property
    def experts(self) -> list[WanExpert]:
        if self.denoiser_2 is None:
            return [WanExpert("main", "transformer", self.denoiser, float("-inf"), float("inf"))]
        b = float(self.boundary_timestep)  # type: ignore[arg-type]
        return [WanExpert("high_noise", "transformer", self.denoiser, b, float("inf")),
                WanExpert("low_noise", "transformer_2", self.denoiser_2, float("-inf"), b)]

    def expert_for(self, timestep: float | int | torch.Tensor) -> WanExpert:
        t = float(torch.as_tensor(timestep).float().reshape(-1)[0])
        for expert in self.experts:
            if expert.t_min <= t < expert.t_max:
                return expert
        return self.experts[0]  # pragma: no cover - the ranges cover the real line

    def _expert_named(self, name: str | None) -> WanExpert:
        if name is None:
            return self.experts[0]
        for expert in self.experts:
            if name in (expert.name, expert.component):
                return expert
        raise InputError(f"this Wan model has no expert {name!r}; it has "
                         f"{', '.join(e.name for e in self.experts)}.")

    def token_grid(self, latent_frames: int, latent_height: int, latent_width: int) -> tuple[int, int, int]:
        """``(frames, height, width)`` of the transformer's token grid for latents of that size -- the
        layout of the self-attention sequence (frame-major), what the flow kernel takes."""
        pt, ph, pw = self.patch_size
        return latent_frames // pt, latent_height // ph, latent_width // pw

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update({
            "variant": self.variant,
            "width": self.width,
            "blocks": len(self.denoiser.blocks),
            "latent_channels": self.latent_channels,
            "latent_frames": "(frames - 1) / 4 + 1",
            "experts": [e.name for e in self.experts],
            "boundary_timestep": self.boundary_timestep,
            "image_to_video": self.image_conditioning,
            "flow_shift": self.flow_shift,
        })
        return info

    # ----------------------------------------------------------------------------- layers
    def layers(self, kind: LayerKind | None = None, expert: str | None = None) -> list[LayerRef]:
        """Layers of one expert's transformer (default: the first -- the only one unless A14B, where
        ``expert="low_noise"`` gives ``transformer_2``'s). Names are relative to that transformer."""
        return wan_layers(self._expert_named(expert).module, kind)

    def motion_lora_targets(self, role: str, expert: str | None = None) -> list[str]:
        """Linear layers of MotionDirector's LoRA paths on Wan (``role``: ``"temporal"`` or ``"spatial"``).

        A DiT has no separate temporal module: frames mix only inside the joint self-attention. So both
        paths adapt the *same* layers -- every block's self-attention (``attn1`` q/k/v/out) and feed-forward
        (``ffn``), never the text cross-attention -- as two named peft adapters; what separates them is the
        data (the spatial path sees one latent frame at a time through :meth:`single_frame_mode`, where
        self-attention cannot mix frames, the temporal path whole clips) and the appearance-debiased loss.

        Wan 2.2 A14B: names are relative to one expert's transformer, so ``expert`` must be given
        (MotionDirector adapts both experts, see :func:`motion_core.adapters.lora.lora_targets`); without it
        the call is refused, as LoRA methods that train on a single denoiser do not support two experts.
        """
        if role not in ("temporal", "spatial"):
            raise InputError(f"unknown LoRA role {role!r}; use 'temporal' or 'spatial'.")
        from ..adapters.lora import linear_targets

        if len(self.experts) > 1 and expert is None:
            raise InputError(
                f"{self.base_model} ({self.variant}) has two experts (high-noise / low-noise transformers); "
                "this LoRA method does not support two-expert Wan 2.2 A14B yet (MotionDirector does). Train it "
                "on Wan 2.1 T2V 1.3B/14B or Wan 2.2 TI2V-5B.")
        return linear_targets(r for r in self.layers(expert=expert)
                              if r.kind in ("temporal_attention", "feed_forward"))

    def temporal_modules(self) -> list[tuple[str, nn.Module]]:
        """None: every frame-mixing operation is inside the joint self-attention (see the module docstring)."""
        return []

    @contextlib.contextmanager
    def single_frame_mode(self) -> Iterator[None]:
        """Every latent frame is denoised on its own (frames folded into the batch); with one frame the
        joint self-attention is purely spatial, so there is no module to bypass."""
        self._single_frame_depth += 1
        try:
            yield
        finally:
            self._single_frame_depth -= 1

    # ----------------------------------------------------------------------------- memory options
    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Per-block activation checkpointing of every expert (diffusers' own implementation)."""
        for expert in self.experts:
            if enabled:
                expert.module.enable_gradient_checkpointing()
            else:
                expert.module.disable_gradient_checkpointing()

    def enable_vae_tiling(self, enabled: bool = True) -> None:
        """Spatial tiling of the VAE (decode/encode large frames in overlapping tiles)."""
        if enabled:
            self.vae.enable_tiling()
        else:
            self.vae.disable_tiling()

    def release_text_encoder(self) -> None:
        """Drop the text encoder (UMT5-XXL is ~11 GB in bf16) once the prompts a job needs are encoded.
        Encoded prompts stay cached; encoding a new prompt afterwards is an :class:`InputError`."""
        self.text_encoder = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def offload_text_encoder(self) -> None:
        """Keep the text encoder on the CPU (prompts are encoded there, then moved to ``device``): frees
        its ~11 GB (UMT5-XXL, bf16) on the GPU at the cost of slower prompt encoding."""
        if self.text_encoder is not None:
            self.text_encoder.to("cpu")

    def _place_expert(self, active: WanExpert) -> None:
        if not self.offload_idle_experts or self.denoiser_2 is None:
            return
        for expert in self.experts:
            target = self.device if expert is active else torch.device("cpu")
            if next(expert.module.parameters()).device != target:
                expert.module.to(target)

    def activation_bytes(self, batch: int, num_frames: int, height: int, width: int, *,
                         gradient_checkpointing: bool = True, lora_rank: int = 0) -> int:
        """Estimated bytes of activations one training step keeps for backward (see
        :func:`motion_core.memory.estimate_training_memory`).

        Per block and token, without checkpointing: ~7 x width in float32 (the block input and the float32
        copies around the norms, modulations and gated residuals) plus ~3 x width + 2 x ffn_dim in the
        model dtype (q/k/v, attention output, the ffn hidden state before and after the GELU) and the LoRA
        bottlenecks; plus, per block, the cross-attention keys/values of the 512 text tokens. Calibrated
        with ``saved_tensors_hooks`` on a width-256 Wan transformer (fp32 and bf16: within 5 %). With
        checkpointing, only each block's input is kept, plus one block's activations while it is
        recomputed. Attention is memory-efficient SDPA (O(tokens), no map kept).
        """
        config = self.denoiser.config
        f, h, w = self.token_grid(self.latent_frames(num_frames), height // self.vae_scale_factor,
                                  width // self.vae_scale_factor)
        tokens = batch * f * h * w
        d, ffn = self.width, int(config.ffn_dim)
        elem = torch.finfo(self.dtype).bits // 8
        per_block = tokens * (7 * d * 4 + (3 * d + 2 * ffn + 6 * lora_rank) * elem)
        text = batch * self.max_sequence_length * d * elem * 2  # cross-attention k/v per block
        outside = tokens * d * 4 * 2  # patch embedding, output norm and projection
        blocks = len(self.denoiser.blocks)
        if gradient_checkpointing:
            return blocks * (tokens * d * elem + text) + per_block + outside
        return blocks * (per_block + text) + outside

    # ----------------------------------------------------------------------------- encoders
    def encode_prompt(self, prompts: Sequence[str] | str) -> torch.Tensor:
        """UMT5 embeddings ``[B, 512, D]`` (padding positions zeroed, as ``WanPipeline`` does). Encodings are
        cached per prompt (the last 64), so sampling after :meth:`release_text_encoder` still works for the
        prompts encoded before."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise InputError("encode_prompt needs one prompt or a non-empty list of prompts (strings).")
        cleaned = [_clean_prompt(p) for p in prompts]
        missing = [p for p in dict.fromkeys(cleaned) if p not in self._prompt_cache]
        if missing:
            if self.text_encoder is None:
                raise InputError(
                    "the text encoder was released to save memory, and these prompts were not encoded before: "
                    + "; ".join(repr(p) for p in missing[:3]) + ". Encode every prompt a job needs before "
                    "releasing the text encoder (or reload the model).")
            for prompt, embeds in zip(missing, self._encode_uncached(missing)):
                self._prompt_cache[prompt] = embeds
                while len(self._prompt_cache) > _PROMPT_CACHE_SIZE:
                    self._prompt_cache.popitem(last=False)
        for p in cleaned:
            self._prompt_cache.move_to_end(p)
        out = torch.stack([self._prompt_cache[p] for p in cleaned])
        return out.to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> torch.Tensor:
        tokenizer, length = self.tokenizer, self.max_sequence_length
        batch = tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                          add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        for i, prompt in enumerate(prompts):
            full = tokenizer(prompt, truncation=False, add_special_tokens=True).input_ids
            if len(full) > length:
                logger.warning("Prompt %d is %d tokens long but Wan reads %d: the end was dropped: %r", i,
                               len(full), length, tokenizer.decode(full[length - 1:-1]))
        device = next(self.text_encoder.parameters()).device
        mask = batch.attention_mask.to(device)
        hidden = self.text_encoder(batch.input_ids.to(device), attention_mask=mask).last_hidden_state
        hidden = hidden * mask.unsqueeze(-1).to(hidden.dtype)
        return hidden.to("cpu")

    def _vae_device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def _vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def _latent_stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.latent_channels
        mean = torch.tensor(self.vae.config.latents_mean, dtype=torch.float32, device=device).view(1, c, 1, 1, 1)
        std = torch.tensor(self.vae.config.latents_std, dtype=torch.float32, device=device).view(1, c, 1, 1, 1)
        return mean, std

    def _check_frames_tensor(self, frames: torch.Tensor, what: str) -> torch.Tensor:
        if not torch.is_tensor(frames) or frames.dim() not in (4, 5) or frames.shape[-1] != 3:
            shape = tuple(frames.shape) if torch.is_tensor(frames) else type(frames).__name__
            raise InputError(f"{what} expects frames [F,H,W,3] or [B,F,H,W,3] in 0..1, got {shape}.")
        return frames[None] if frames.dim() == 4 else frames

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor, *, generator: torch.Generator | None = None,
                     sample: bool = True) -> torch.Tensor:
        """Frames (``4k+1`` of them) -> normalised latents ``[B, C, (F-1)/4+1, h, w]``
        (``(z - latents_mean) / latents_std``). ``vae_slicing`` encodes one video of the batch at a time."""
        from diffusers.utils.torch_utils import randn_tensor

        frames = self._check_frames_tensor(frames, "encode_video")
        b, f, h, w, _ = frames.shape
        self.frame_limits.check(f)
        self.check_size(w, h)
        device = self._vae_device()
        x = frames.to(device=device, dtype=self._vae_dtype()).permute(0, 4, 1, 2, 3) * 2.0 - 1.0
        self.vae.use_slicing = bool(self.vae_slicing)
        dist = self.vae.encode(x).latent_dist
        z = dist.mean
        if sample:
            z = z + dist.std * randn_tensor(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        mean, std = self._latent_stats(z.device)
        return ((z.float() - mean) / std).to(self.dtype)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(latents) or latents.dim() != 5:
            shape = tuple(latents.shape) if torch.is_tensor(latents) else type(latents).__name__
            raise InputError(f"decode_latents expects latents [B,C,F,h,w], got {shape}.")
        if latents.shape[1] != self.latent_channels:
            raise InputError(f"latents have {latents.shape[1]} channels; this Wan VAE has {self.latent_channels}.")
        device = self._vae_device()
        mean, std = self._latent_stats(device)
        z = latents.to(device=device, dtype=torch.float32) * std + mean
        self.vae.use_slicing = bool(self.vae_slicing)
        video = self.vae.decode(z.to(self._vae_dtype())).sample
        x = (video.float() / 2.0 + 0.5).clamp(0.0, 1.0).cpu()
        return x.permute(0, 2, 3, 4, 1).contiguous()

    # ----------------------------------------------------------------------------- image-to-video
    def _image_tensor(self, image: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """Image ``[H,W,3]`` / ``[1,H,W,3]`` / ``[B,H,W,3]`` in 0..1 -> ``[B,3,height,width]`` in -1..1 on the
        VAE device (bilinearly resized when its size differs from the generation's)."""
        if not torch.is_tensor(image) or image.dim() not in (3, 4) or image.shape[-1] != 3:
            shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
            raise InputError(f"the start image must be [H,W,3] or [B,H,W,3] in 0..1, got {shape}.")
        x = (image[None] if image.dim() == 3 else image).float().permute(0, 3, 1, 2)
        if tuple(x.shape[-2:]) != (height, width):
            x = nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                                          antialias=True)
        return (x.clamp(0, 1) * 2.0 - 1.0).to(device=self._vae_device(), dtype=self._vae_dtype())

    @torch.no_grad()
    def image_condition(self, image: torch.Tensor, num_frames: int, width: int, height: int) -> dict[str, torch.Tensor]:
        """The keyword inputs of :meth:`predict` that condition a generation on a start image:

        * TI2V-5B (``"first_frame"``): ``first_frame_latents`` ``[B, C, 1, h, w]`` -- the image encoded as a
          one-frame video (posterior mode), normalised;
        * I2V (``"concat"``): ``image_condition`` ``[B, 4 + C, F_lat, h, w]`` -- a mask (1 on the first
          latent frame) and the latents of ``[image, 0, 0, ...]``; Wan 2.1 I2V adds ``image_embeds`` (the
          CLIP vision encoder's penultimate hidden states).
        """
        mode = self.image_conditioning
        if mode is None:
            raise InputError(f"{self.base_model} ({self.variant}) is a text-to-video model: it cannot start from "
                             f"an image. Use Wan 2.2 TI2V-5B or a Wan I2V model for image-to-video.")
        self.frame_limits.check(num_frames)
        self.check_size(width, height)
        x = self._image_tensor(image, width, height)
        mean, std = self._latent_stats(x.device)
        if mode == "first_frame":
            z = self.vae.encode(x[:, :, None]).latent_dist.mode()
            return {"first_frame_latents": ((z.float() - mean) / std).to(self.dtype)}
        video = torch.cat([x[:, :, None], x.new_zeros(x.shape[0], 3, num_frames - 1, height, width)], dim=2)
        z = (self.vae.encode(video).latent_dist.mode().float() - mean) / std
        mask = torch.zeros(z.shape[0], self.vae_temporal_factor, z.shape[2], *z.shape[3:], device=z.device)
        mask[:, :, 0] = 1.0
        out = {"image_condition": torch.cat([mask, z], dim=1).to(self.dtype)}
        if self.denoiser.config.get("image_dim"):
            if self.image_encoder is None or self.image_processor is None:
                raise ModelLoadError(f"{self.base_model} needs its CLIP image encoder (image_encoder/ and "
                                     f"image_processor/ folders) for image-to-video; they were not found.")
            # 8-bit images, as the pipeline's PIL input: the processor's resize works on uint8 pictures
            images = (((x.float() + 1) / 2).clamp(0, 1) * 255).round().to(torch.uint8).cpu()
            pixels = self.image_processor(images=list(images), return_tensors="pt").pixel_values
            encoder_device = next(self.image_encoder.parameters()).device
            encoder_dtype = next(self.image_encoder.parameters()).dtype
            hidden = self.image_encoder(pixel_values=pixels.to(encoder_device, encoder_dtype),
                                        output_hidden_states=True).hidden_states[-2]
            out["image_embeds"] = hidden.to(self.dtype)
        return out

    # ----------------------------------------------------------------------------- denoiser
    _EXTRA = ("first_frame_latents", "image_condition", "image_embeds", "attention_kwargs", "expert")

    def predict(self, latents: torch.Tensor, timestep: torch.Tensor | int | float, prompt_embeds: torch.Tensor,
                **extra: Any) -> torch.Tensor:
        """Velocity ``v = eps - x0`` for ``[B, C, F_lat, h, w]`` latents at ``timestep`` (``sigma * 1000``; one
        number or one per batch element). A14B: each element runs on the expert of its timestep.

        ``extra``: ``first_frame_latents`` / ``image_condition`` / ``image_embeds`` (from
        :meth:`image_condition`, broadcast to the batch), ``attention_kwargs`` (e.g. ``{"scale": 0.5}``
        for peft LoRA strength), ``expert`` (force one expert by name).
        """
        unknown = sorted(set(extra) - set(self._EXTRA))
        if unknown:
            raise TypeError(f"WanVideoModel.predict got unexpected keyword(s) {unknown}; it takes {list(self._EXTRA)}.")
        if not torch.is_tensor(latents) or latents.dim() != 5:
            raise InputError(f"predict expects latents [B,C,F,h,w], got {tuple(getattr(latents, 'shape', ()))}.")
        b = latents.shape[0]
        if latents.shape[1] != self.latent_channels:
            raise InputError(f"latents have {latents.shape[1]} channels; this {self.variant} model takes "
                             f"{self.latent_channels}.")
        if prompt_embeds.dim() != 3:
            raise InputError(f"prompt embeddings must be [B,L,D], got {tuple(prompt_embeds.shape)}.")
        embeds = _batch(prompt_embeds, b, "prompt embeddings")
        # on the CPU: only used to pick experts and build the per-element timestep vector
        t = torch.as_tensor(timestep).detach().to("cpu", torch.float32).reshape(-1)
        if t.numel() == 1:
            t = t.expand(b)
        elif t.numel() != b:
            raise InputError(f"{t.numel()} timesteps for a batch of {b} latents.")
        cond = {k: extra.get(k) for k in ("first_frame_latents", "image_condition", "image_embeds")}
        if self.needs_image and cond["image_condition"] is None:
            raise InputError(f"{self.base_model} is an image-to-video model ({self.variant}): it needs a start "
                             f"image (WanImageConditioning / image_condition). Text-to-video and MotionKit's "
                             f"training methods need a text-to-video Wan model (T2V 1.3B/14B, TI2V-5B, T2V-A14B).")
        if cond["first_frame_latents"] is not None and self.image_conditioning != "first_frame":
            raise InputError(f"{self.base_model} ({self.variant}) cannot take first-frame latents: only Wan 2.2 "
                             f"TI2V-5B conditions on its first latent frame.")
        if cond["image_condition"] is not None and self.image_conditioning != "concat":
            raise InputError(f"{self.base_model} ({self.variant}) is not an I2V model; image_condition is for "
                             f"Wan I2V models.")
        cond = {k: (_batch(v, b, k) if v is not None else None) for k, v in cond.items()}

        if self._single_frame_depth and latents.shape[2] > 1:
            return self._predict_frames_separately(latents, t, embeds, cond, extra)

        if extra.get("expert") is not None:
            groups = [(self._expert_named(extra["expert"]), torch.arange(b))]
        else:
            groups = []
            for expert in self.experts:
                idx = torch.nonzero((t >= expert.t_min) & (t < expert.t_max)).flatten()
                if idx.numel():
                    groups.append((expert, idx))
        if len(groups) == 1:
            return self._run(groups[0][0], latents, t, embeds, cond, extra.get("attention_kwargs")).to(latents.dtype)
        out = None
        for expert, idx in groups:
            part = self._run(expert, latents[idx], t[idx], embeds[idx],
                             {k: (v[idx] if v is not None else None) for k, v in cond.items()},
                             extra.get("attention_kwargs"))
            if out is None:
                out = part.new_empty((b, *part.shape[1:]))
            out[idx.to(part.device)] = part
        return out.to(latents.dtype)  # type: ignore[union-attr]

    def _predict_frames_separately(self, latents, t, embeds, cond, extra) -> torch.Tensor:
        b, c, f, h, w = latents.shape
        if cond["image_condition"] is not None or cond["first_frame_latents"] is not None:
            raise InputError("single-frame mode runs frames independently; it cannot take an image condition.")
        folded = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, 1, h, w)
        rep = torch.arange(b).repeat_interleave(f)
        sub = {k: v for k, v in extra.items() if k in ("attention_kwargs", "expert")}
        out = self.predict(folded, t[rep], embeds[rep.to(embeds.device)], **sub)
        return out.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)

    def _run(self, expert: WanExpert, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor,
             cond: dict[str, torch.Tensor | None], attention_kwargs: dict | None) -> torch.Tensor:
        self._place_expert(expert)
        module = expert.module
        weight = module.proj_out.weight
        device, dtype = weight.device, weight.dtype
        x = x.to(device=device, dtype=dtype)
        t = t.to(device)
        timestep: torch.Tensor = t
        first = cond.get("first_frame_latents")
        if first is not None:
            # TI2V: the first latent frame is the clean image latent; its tokens get timestep 0
            x = torch.cat([first.to(device=device, dtype=dtype), x[:, :, 1:]], dim=2)
            _, hp, wp = self.token_grid(x.shape[2], x.shape[3], x.shape[4])
            per_frame = torch.ones(x.shape[2] // self.patch_size[0], device=device)
            per_frame[0] = 0.0
            timestep = (per_frame.repeat_interleave(hp * wp)[None] * t[:, None])
        elif self.expand_timesteps:
            pass  # all tokens at t: the scalar path computes the same modulation with less memory
        image_cond = cond.get("image_condition")
        if image_cond is not None:
            x = torch.cat([x, image_cond.to(device=device, dtype=dtype)], dim=1)
        image_embeds = cond.get("image_embeds")
        if image_embeds is not None:
            image_embeds = image_embeds.to(device=device, dtype=dtype)
        return module(hidden_states=x, timestep=timestep, encoder_hidden_states=embeds.to(device=device, dtype=dtype),
                      encoder_hidden_states_image=image_embeds, attention_kwargs=attention_kwargs,
                      return_dict=False)[0]

    # ----------------------------------------------------------------------------- misc
    def to(self, *args: Any, **kwargs: Any) -> "WanVideoModel":  # type: ignore[override]
        """Moves every component; a dtype conversion leaves the VAE in float32 (see the module docstring)."""
        vae_dtype = self._vae_dtype()
        super().to(*args, **kwargs)
        if self._vae_dtype() != vae_dtype:
            self.vae.to(dtype=vae_dtype)
        return self


def _batch(value: torch.Tensor, b: int, what: str) -> torch.Tensor:
    if value.shape[0] == b:
        return value
    if value.shape[0] == 1:
        return value.expand(b, *value.shape[1:])
    if b % value.shape[0] == 0:  # e.g. a CFG batch [uncond; cond] of a condition given once per video
        return value.repeat(b // value.shape[0], *([1] * (value.dim() - 1)))
    raise InputError(f"{value.shape[0]} {what} for a batch of {b} latents.")


# --------------------------------------------------------------------------------------------- sampling hook
class WanImageConditioning:
    """Image-to-video for the shared sampler: a :class:`~motion_core.sampling.SamplingHook` that conditions
    every denoiser call on a start image and keeps the first latent frame equal to it (TI2V-5B), as
    diffusers' ``WanImageToVideoPipeline`` does.

    >>> result = sample(model, request, hooks=[WanImageConditioning(image)])   # doctest: +SKIP
    """

    label = "image-to-video"

    def __init__(self, image: torch.Tensor) -> None:
        self.image = image
        self._inputs: dict[str, torch.Tensor] = {}

    # SamplingHook interface (duck-typed to keep backbones free of a sampling import cycle)
    def timesteps(self, model: Any, request: Any) -> None:
        return None

    def setup(self, state: Any) -> None:
        model = state.model
        if not isinstance(model, WanVideoModel):
            raise InputError("WanImageConditioning works with Wan models only.")
        req = state.request
        self._inputs = model.image_condition(self.image, req.num_frames, req.width, req.height)
        self._replace_first_frame(state)

    def before_step(self, state: Any) -> None:
        return None

    def denoiser_inputs(self, state: Any, latents: torch.Tensor, embeds: torch.Tensor) -> dict:
        return dict(self._inputs)

    def wants_guidance(self, state: Any) -> bool:
        return False

    def energy(self, state: Any) -> None:
        return None

    def after_step(self, state: Any) -> None:
        self._replace_first_frame(state)

    def teardown(self, state: Any) -> None:
        self._inputs = {}

    def _replace_first_frame(self, state: Any) -> None:
        first = self._inputs.get("first_frame_latents")
        if first is not None:
            z = state.latents.clone()
            z[:, :, :1] = _batch(first, z.shape[0], "start images").to(z.device, z.dtype)
            state.latents = z


# --------------------------------------------------------------------------------------------- inversion
@torch.no_grad()
def flow_inversion(model: VideoModel, latents: torch.Tensor, *, steps: int = 50,
                   prompt_embeds: torch.Tensor | None = None, progress: Any = None, cancel: Any = None,
                   fixed_point_iterations: int = 2) -> torch.Tensor:
    """Carry clean latents to pure noise along the flow ODE (the noise prior's inversion for Wan).

    The sampler's Euler step ``x_{k+1} = x_k + (sigma_{k+1} - sigma_k) v(x_k, t_k)`` is walked backwards on the
    same shifted sigma grid (``scheduler="ddim"`` with ``steps`` steps). Each backward step solves for
    ``x_k`` -- first the usual DDIM-inversion guess ``x_{k+1} - (sigma_{k+1} - sigma_k) v(x_{k+1}, t_k)`` (velocity
    taken at the known point), then ``fixed_point_iterations`` rounds of
    ``x_k <- x_{k+1} - (sigma_{k+1} - sigma_k) v(x_k, t_k)``, which make it the exact inverse of the sampler's step
    when they converge (the step times the velocity's Lipschitz constant below 1). Without them the
    reconstruction error shrinks only as 1/steps. Each iteration costs one more denoiser call per step.
    Empty prompt, no CFG, float32 math. Sampling the result with ``scheduler="ddim"``, the same number of
    steps, the empty prompt and ``cfg=1`` gives the latents back.
    """
    from ..errors import Cancelled
    from ..sampling import make_flow_scheduler

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"inversion steps must be a positive integer, got {steps!r}.")
    if fixed_point_iterations < 0:
        raise InputError(f"fixed_point_iterations must be >= 0, got {fixed_point_iterations}.")
    if latents.dim() != 5:
        raise InputError(f"flow inversion expects latents [B,C,F,h,w], got {tuple(latents.shape)}.")
    scheduler = make_flow_scheduler(model, "ddim")
    scheduler.set_timesteps(steps, device="cpu")
    sigmas = [float(s) for s in scheduler.sigmas]
    timesteps = list(scheduler.timesteps)
    if prompt_embeds is None:
        prompt_embeds = model.encode_prompt([""])
    z = latents.to(device=model.device, dtype=torch.float32)
    for n, k in enumerate(reversed(range(len(timesteps)))):
        if cancel is not None and cancel():
            raise Cancelled(f"flow inversion cancelled at step {n} of {len(timesteps)}.")
        step = sigmas[k] - sigmas[k + 1]  # > 0: towards noise
        target = z
        z = target + step * model.predict(target, timesteps[k], prompt_embeds).to(torch.float32)
        for _ in range(fixed_point_iterations):
            z = target + step * model.predict(z, timesteps[k], prompt_embeds).to(torch.float32)
        if progress is not None:
            progress(n + 1, len(timesteps), {"timestep": float(timesteps[k]), "label": "inversion"})
    return z.cpu()


# --------------------------------------------------------------------------------------------- loading
def _wan_components(info: Any) -> dict[str, tuple[tuple[str, ...], ...]]:
    weights = (("config.json", "*.safetensors"), ("config.json", "*.safetensors.index.json"),
               ("config.json", "*.bin"))
    required = {
        "transformer": weights,
        "vae": weights,
        "text_encoder": weights,
        "tokenizer": (("tokenizer.json",), ("spiece.model",)),
        "scheduler": (("scheduler_config.json",),),
    }
    index_t2 = info.model_index.get("transformer_2")
    if isinstance(index_t2, list) and index_t2 and index_t2[-1]:
        required["transformer_2"] = weights
    return required


def detect_wan(info: Any) -> bool:
    transformer = info.class_of("transformer") or ""
    return transformer.startswith("Wan") or (info.pipeline_class or "").startswith("Wan")


def load_wan(request: Any) -> WanVideoModel:
    """The ``wan`` family loader for :func:`motion_core.backbones.load_video_model`."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    from .loading import _diffusers_errors_only, _load, _scheduler_class, check_components

    info = request.info
    pipeline = info.pipeline_class or "WanPipeline"
    transformer_cls = info.class_of("transformer") or "WanTransformer3DModel"
    if transformer_cls != "WanTransformer3DModel" or pipeline not in ("WanPipeline", "WanImageToVideoPipeline"):
        raise ModelLoadError(f"{info.source} is a {pipeline} with a {transformer_cls}: MotionKit supports the Wan "
                             f"text-to-video and image-to-video models (WanPipeline / WanImageToVideoPipeline with a "
                             f"WanTransformer3DModel), not VACE / Animate variants.")
    check_components(info, _wan_components(info))
    src, lfo, dtype = info.pretrained, info.local_files_only, request.dtype
    index = info.model_index

    def transformer(sub: str) -> nn.Module:
        return _load(sub, info, lambda: WanTransformer3DModel.from_pretrained(
            src, subfolder=sub, torch_dtype=dtype, local_files_only=lfo))

    with _diffusers_errors_only():
        denoiser = transformer("transformer")
        denoiser_2 = transformer("transformer_2") if "transformer_2" in _wan_components(info) else None
        vae = _load("vae", info, lambda: AutoencoderKLWan.from_pretrained(
            src, subfolder="vae", torch_dtype=torch.float32, local_files_only=lfo))
    text_encoder = _load("text_encoder", info, lambda: UMT5EncoderModel.from_pretrained(
        src, subfolder="text_encoder", dtype=dtype, local_files_only=lfo))
    tokenizer = _load("tokenizer", info, lambda: AutoTokenizer.from_pretrained(
        src, subfolder="tokenizer", local_files_only=lfo))
    if len(tokenizer) < 16:  # transformers 5 can return a degenerate tokenizer instead of failing
        raise ModelLoadError(f"the tokenizer of {info.source} loaded with only {len(tokenizer)} tokens: its files "
                             f"are missing or unreadable (a T5/UMT5 tokenizer needs tokenizer.json or spiece.model).")
    scheduler_cls = _scheduler_class(info.class_of("scheduler") or "FlowMatchEulerDiscreteScheduler")
    scheduler = _load("scheduler", info, lambda: scheduler_cls.from_pretrained(
        src, subfolder="scheduler", local_files_only=lfo))
    image_encoder = image_processor = None
    if denoiser.config.get("image_dim") and info.has_subfolder("image_encoder"):
        from transformers import CLIPImageProcessor, CLIPVisionModel

        image_encoder = _load("image_encoder", info, lambda: CLIPVisionModel.from_pretrained(
            src, subfolder="image_encoder", dtype=dtype, local_files_only=lfo))
        if info.has_subfolder("image_processor"):
            image_processor = _load("image_processor", info, lambda: CLIPImageProcessor.from_pretrained(
                src, subfolder="image_processor", local_files_only=lfo))
    defaults: dict[str, Any] = {}
    if info.folder is not None and (info.folder / "motionkit.json").is_file():
        try:
            defaults = json.loads((info.folder / "motionkit.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read {info.folder / 'motionkit.json'}: {exc}") from exc
    model = WanVideoModel(
        denoiser=denoiser, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        base_model=info.name, device=request.device, dtype=dtype, denoiser_2=denoiser_2,
        boundary_ratio=index.get("boundary_ratio"), expand_timesteps=bool(index.get("expand_timesteps")),
        image_encoder=image_encoder, image_processor=image_processor, defaults=defaults,
    )
    # device only: a dtype cast would undo diffusers' float32 modules and the float32 VAE
    model.to(device=request.device)
    model.requires_grad_(False)
    model.train(False)
    return model


def _register() -> None:
    from . import loading
    from ..noise_prior import register_inversion

    loading.register_family("wan", WanVideoModel, load=load_wan, detect=detect_wan)
    loading.register_single_file_family("wan", _load_wan_files)
    register_inversion("wan", flow_inversion)


def _load_wan_files(request: Any) -> WanVideoModel:
    """ComfyUI-style Wan files (diffusion model + umt5 + VAE): :func:`motion_core.backbones.wan_files.load_wan_files`
    (imported on first use)."""
    from .wan_files import load_wan_files

    return load_wan_files(request)


_register()
