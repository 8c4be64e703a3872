"""The ``unet3d`` family: ZeroScope, ModelScope, VideoCrafter2 in diffusers layout (UNet3DConditionModel).

Also home of :class:`ClipVaeVideoModel`, what the two UNet families share: a CLIP text encoder, an SD-style
KL VAE (latents x ``scaling_factor``), a UNet with down/up blocks, and layer discovery by transformer class.

Module map of the UNet3D (reference/motion_director_and_custom_motion.md section 0.1):

* ``transformer_in`` and every ``*.temp_attentions.*`` are ``TransformerTemporalModel`` -- attention over
  frames; **both** ``attn1`` and ``attn2`` are self-attention over frames (``double_self_attention``);
* every ``*.attentions.*`` is a ``Transformer2DModel`` -- per frame: ``attn1`` spatial self-attention,
  ``attn2`` text cross-attention;
* every ``*.temp_convs.*`` is a ``TemporalConvLayer`` (3D convolutions over frames).
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ..errors import InputError
from .base import FrameLimits, LayerKind, LayerRef, VideoModel

logger = logging.getLogger(__name__)

_LAYER_KINDS = ("temporal_attention", "spatial_self_attention", "cross_attention", "feed_forward")
_LAYER_NAME = re.compile(r"^(?P<transformer>.+)\.transformer_blocks\.\d+\.(?P<leaf>attn1|attn2|ff)$")


def block_of(name: str) -> str:
    """``down_blocks.1.attentions.0...`` -> ``down_blocks.1``; ``mid_block...`` -> ``mid_block``;
    ``transformer_in...`` -> ``transformer_in``."""
    parts = name.split(".")
    if parts[0] in ("down_blocks", "up_blocks") and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def discover_layers(
    denoiser: nn.Module,
    temporal_classes: tuple[type, ...],
    spatial_classes: tuple[type, ...],
    kind: LayerKind | None = None,
) -> list[LayerRef]:
    """Attention and feed-forward layers of a UNet, in ``named_modules()`` order.

    A layer is ``<transformer>.transformer_blocks.<i>.{attn1,attn2,ff}`` where ``<transformer>`` is an
    instance of one of ``temporal_classes`` (its sequence axis is the frame axis) or ``spatial_classes``
    (per frame). In a temporal transformer ``attn1``/``attn2`` are both temporal attention; in a spatial
    one ``attn2`` is cross-attention when it attends to the text states (``is_cross_attention``).
    """
    if kind is not None and kind not in _LAYER_KINDS:
        raise InputError(f"unknown layer kind {kind!r}; use one of {', '.join(_LAYER_KINDS)}.")
    transformers: dict[str, bool] = {}
    refs: list[LayerRef] = []
    for name, module in denoiser.named_modules():
        if isinstance(module, temporal_classes):
            transformers[name] = True
            continue
        if isinstance(module, spatial_classes):
            transformers[name] = False
            continue
        match = _LAYER_NAME.match(name)
        if match is None or match["transformer"] not in transformers:
            continue
        temporal = transformers[match["transformer"]]
        leaf = match["leaf"]
        if leaf == "ff":
            layer_kind = "feed_forward"
        elif temporal:
            layer_kind = "temporal_attention"
        elif leaf == "attn2" and getattr(module, "is_cross_attention", True):
            layer_kind = "cross_attention"
        else:
            layer_kind = "spatial_self_attention"
        if kind is not None and layer_kind != kind:
            continue
        refs.append(LayerRef(name=name, module=module, kind=layer_kind, block=block_of(name),
                             transformer=match["transformer"], temporal=temporal))
    return refs


def find_modules(denoiser: nn.Module, classes: tuple[type, ...]) -> list[tuple[str, nn.Module]]:
    """Outermost modules of the given classes, in ``named_modules()`` order."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in denoiser.named_modules():
        if isinstance(module, classes) and not any(name.startswith(prefix + ".") for prefix, _ in found):
            found.append((name, module))
    return found


def _first_arg(args: tuple, kwargs: dict) -> Any:
    return args[0] if args else kwargs["hidden_states"]


def identity_forward(module: nn.Module) -> Callable[..., Any]:
    """A ``forward`` that returns the module's input in the form its callers expect.

    ``TransformerTemporalModel.forward(hidden_states, encoder_hidden_states, timestep, class_labels,
    num_frames, cross_attention_kwargs, return_dict)`` returns ``(sample,)`` when ``return_dict=False`` (how
    the UNet3D blocks call it, then take ``[0]``) and a ``TransformerTemporalModelOutput`` otherwise.
    ``TemporalConvLayer`` and ``AnimateDiffTransformer3D`` return the tensor itself.
    """
    from diffusers.models.transformers.transformer_temporal import (
        TransformerTemporalModel,
        TransformerTemporalModelOutput,
    )

    if isinstance(module, TransformerTemporalModel):
        def forward(*args: Any, **kwargs: Any) -> Any:
            hidden_states = _first_arg(args, kwargs)
            return_dict = kwargs.get("return_dict", args[6] if len(args) > 6 else True)
            return TransformerTemporalModelOutput(sample=hidden_states) if return_dict else (hidden_states,)
    else:
        def forward(*args: Any, **kwargs: Any) -> Any:
            return _first_arg(args, kwargs)
    return forward


@contextlib.contextmanager
def bypass_modules(modules: Sequence[tuple[str, nn.Module]]) -> Iterator[None]:
    """Make every module an identity while inside (its ``forward`` is shadowed by an instance attribute,
    restored on exit even on an exception; wrappers already installed, e.g. accelerate's hooks, come back)."""
    from ..patching import replaced_forwards

    with replaced_forwards((module for _, module in modules), identity_forward):
        yield


class ClipVaeVideoModel(VideoModel):
    """What the UNet families share: CLIP text encoder, SD-style KL VAE, a UNet with down blocks.

    Subclasses set :attr:`family`, ``_temporal_transformer_classes()``, ``_spatial_transformer_classes()``,
    ``temporal_modules()``, :meth:`predict`, :attr:`frame_limits` and ``_family_default_size``.
    """

    _family_default_size: tuple[int, int] = (256, 256)
    #: (width, height) of known bases whose config does not say it (matched in the lower-cased base name)
    _known_sizes: tuple[tuple[str, tuple[int, int]], ...] = ()

    # ----------------------------------------------------------------------------- facts
    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def size_multiple(self) -> int:
        # The VAE factor only: the UNets pass explicit upsample sizes when a latent side does not divide by
        # 2**downsamplers (diffusers' forward_upsample_size), so e.g. 512x288 works as in diffusers' own
        # pipelines, which also only ask for multiples of 8.
        return self.vae_scale_factor

    @property
    def default_size(self) -> tuple[int, int]:
        """(width, height): a known base's training size (by name, e.g. ZeroScope 576w -> 576x320), else
        the UNet's ``sample_size`` x the VAE factor (square), else the family default."""
        base = self.base_model.lower()
        for needle, size in self._known_sizes:
            if needle in base:
                return size
        sample_size = self.denoiser.config.get("sample_size")
        if isinstance(sample_size, (list, tuple)):
            h, w = sample_size
            return (int(w) * self.vae_scale_factor, int(h) * self.vae_scale_factor)
        if sample_size:
            side = int(sample_size) * self.vae_scale_factor
            return (side, side)
        return self._family_default_size

    # ----------------------------------------------------------------------------- layers
    def _temporal_transformer_classes(self) -> tuple[type, ...]:
        raise NotImplementedError

    def _spatial_transformer_classes(self) -> tuple[type, ...]:
        from diffusers.models.transformers.transformer_2d import Transformer2DModel

        return (Transformer2DModel,)

    def layers(self, kind: LayerKind | None = None) -> list[LayerRef]:
        return discover_layers(self.denoiser, self._temporal_transformer_classes(),
                               self._spatial_transformer_classes(), kind)

    @contextlib.contextmanager
    def single_frame_mode(self) -> Iterator[None]:
        with bypass_modules(self.temporal_modules()):
            yield

    # ----------------------------------------------------------------------------- encoders
    def _text_device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    def encode_prompt(self, prompts: Sequence[str] | str) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise InputError("encode_prompt needs one prompt or a non-empty list of prompts (strings).")
        tokenizer = self.tokenizer
        max_length = int(tokenizer.model_max_length)
        batch = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                          return_tensors="pt")
        for i, prompt in enumerate(prompts):
            full = tokenizer(prompt, truncation=False, verbose=False).input_ids
            dropped = len(full) - max_length
            if dropped > 0:
                removed = tokenizer.decode(full[max_length - 1:-1])
                logger.warning(
                    "Prompt %d is %d tokens long but the text encoder reads %d: the last %d token(s) were "
                    "dropped: %r", i, len(full), max_length, dropped, removed)
        device = self._text_device()
        attention_mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            attention_mask = batch.attention_mask.to(device)
        out = self.text_encoder(batch.input_ids.to(device), attention_mask=attention_mask)
        return out[0]

    def _vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def _vae_chunks(self, total: int) -> list[slice]:
        size = int(self.vae_slicing) if self.vae_slicing else total
        size = max(1, size)
        return [slice(i, min(i + size, total)) for i in range(0, total, size)]

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor, *, generator: torch.Generator | None = None,
                     sample: bool = True) -> torch.Tensor:
        """Frames -> scaled latents (``vae_slicing``: True encodes one frame at a time, an int that many;
        the posterior noise is drawn once for the whole clip, so slicing does not change the result)."""
        from diffusers.utils.torch_utils import randn_tensor

        if not torch.is_tensor(frames) or frames.dim() not in (4, 5) or frames.shape[-1] != 3:
            shape = tuple(frames.shape) if torch.is_tensor(frames) else type(frames).__name__
            raise InputError(f"encode_video expects frames [F,H,W,3] or [B,F,H,W,3] in 0..1, got {shape}.")
        if frames.dim() == 4:
            frames = frames[None]
        b, f, h, w, _ = frames.shape
        factor = self.vae_scale_factor
        if h % factor or w % factor:
            raise InputError(f"frames of {w}x{h} cannot be encoded: width and height must be multiples of "
                             f"{factor} (the VAE's scale factor).")
        vae_device = next(self.vae.parameters()).device
        x = frames.to(device=vae_device, dtype=self._vae_dtype()).permute(0, 1, 4, 2, 3).reshape(b * f, 3, h, w)
        x = x * 2.0 - 1.0
        means, stds = [], []
        for part in self._vae_chunks(b * f):
            dist = self.vae.encode(x[part]).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
        z = torch.cat(means)
        if sample:
            z = z + torch.cat(stds) * randn_tensor(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        shift = self.vae.config.get("shift_factor") or 0.0
        z = (z - shift) * self.vae.config.scaling_factor
        z = z.reshape(b, f, *z.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()
        return z.to(self.dtype)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(latents) or latents.dim() != 5:
            shape = tuple(latents.shape) if torch.is_tensor(latents) else type(latents).__name__
            raise InputError(f"decode_latents expects latents [B,C,F,h,w], got {shape}.")
        b, c, f, h, w = latents.shape
        if c != self.latent_channels:
            raise InputError(f"latents have {c} channels; this model's VAE has {self.latent_channels}.")
        vae_device = next(self.vae.parameters()).device
        z = latents.to(device=vae_device, dtype=self._vae_dtype()).permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        shift = self.vae.config.get("shift_factor") or 0.0
        z = z / self.vae.config.scaling_factor + shift
        images = [self.vae.decode(z[part]).sample for part in self._vae_chunks(b * f)]
        x = (torch.cat(images).float() / 2.0 + 0.5).clamp(0.0, 1.0).cpu()
        return x.reshape(b, f, *x.shape[1:]).permute(0, 1, 3, 4, 2).contiguous()

    # ----------------------------------------------------------------------------- denoiser helpers
    _PASSTHROUGH = ("down_block_additional_residuals", "mid_block_additional_residual",
                    "cross_attention_kwargs", "timestep_cond", "attention_mask")

    def _denoiser_inputs(self, latents: torch.Tensor, timestep: Any, prompt_embeds: torch.Tensor,
                         extra: dict[str, Any]) -> tuple[torch.Tensor, Any, torch.Tensor, dict[str, Any]]:
        unknown = sorted(set(extra) - set(self._PASSTHROUGH))
        if unknown:
            raise TypeError(f"{type(self).__name__}.predict got unexpected keyword(s) {unknown}; "
                            f"it passes through {list(self._PASSTHROUGH)}.")
        if latents.dim() != 5:
            raise InputError(f"predict expects latents [B,C,F,h,w], got {tuple(latents.shape)}.")
        b = latents.shape[0]
        if prompt_embeds.dim() != 3:
            raise InputError(f"prompt embeddings must be [B,L,D], got {tuple(prompt_embeds.shape)}.")
        if prompt_embeds.shape[0] != b:
            if prompt_embeds.shape[0] != 1:
                raise InputError(f"{prompt_embeds.shape[0]} prompt embeddings for a batch of {b} latents.")
            prompt_embeds = prompt_embeds.expand(b, -1, -1)
        weight = next(self.denoiser.parameters())
        device, dtype = weight.device, weight.dtype
        sample = latents.to(device=device, dtype=dtype)
        embeds = prompt_embeds.to(device=device, dtype=dtype)
        if torch.is_tensor(timestep):
            timestep = timestep.to(device)
        kwargs = {k: v for k, v in extra.items() if v is not None}
        return sample, timestep, embeds, kwargs


class UNet3DVideoModel(ClipVaeVideoModel):
    """ZeroScope / ModelScope / VideoCrafter2-style UNet3DConditionModel (+ CLIP + KL VAE)."""

    family = "unet3d"
    _family_default_size = (256, 256)
    _known_sizes = (("zeroscope_v2_576w", (576, 320)), ("zeroscope_v2_xl", (1024, 576)),
                    ("zeroscope_v2_dark", (448, 256)), ("potat1", (1024, 576)))

    @property
    def frame_limits(self) -> FrameLimits:
        return FrameLimits(minimum=1, maximum=64, step=1, offset=0, default=16)

    def _temporal_transformer_classes(self) -> tuple[type, ...]:
        from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

        return (TransformerTemporalModel,)

    def temporal_modules(self) -> list[tuple[str, nn.Module]]:
        """``transformer_in``, every ``temp_attentions.*`` and every ``temp_convs.*``."""
        from diffusers.models.resnet import TemporalConvLayer

        return find_modules(self.denoiser, self._temporal_transformer_classes() + (TemporalConvLayer,))

    def predict(self, latents: torch.Tensor, timestep: torch.Tensor | int | float, prompt_embeds: torch.Tensor,
                **extra: Any) -> torch.Tensor:
        sample, timestep, embeds, kwargs = self._denoiser_inputs(latents, timestep, prompt_embeds, extra)
        # UNet3DConditionModel takes [B,C,F,h,w] and repeats the text states per frame itself
        out = self.denoiser(sample, timestep, encoder_hidden_states=embeds, return_dict=False, **kwargs)[0]
        return out.to(latents.dtype)


def unet3d_layers(denoiser: nn.Module, kind: LayerKind | None = None) -> list[LayerRef]:
    """Layer discovery on a bare ``UNet3DConditionModel`` (works on the meta device)."""
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

    return discover_layers(denoiser, (TransformerTemporalModel,), (Transformer2DModel,), kind)
