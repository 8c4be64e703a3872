"""The ``animatediff`` family: an SD1.5 UNet with AnimateDiff motion modules (diffusers UNetMotionModel).

Module map (reference/motion_clone.md section 3): every ``*.motion_modules.<i>`` is an
``AnimateDiffTransformer3D`` whose ``transformer_blocks.0.attn1`` and ``attn2`` are both self-attention over
frames (``double_self_attention``); the SD UNet's ``*.attentions.<i>`` (Transformer2DModel) hold the spatial
self-attention (``attn1``), the text cross-attention (``attn2``) and ``ff``. With the SD1.5 layout
``up_blocks.1`` is the second decoder stage (3 motion modules = 6 temporal attention layers), the one
MotionClone guides.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import FrameLimits, LayerKind, LayerRef
from .unet3d import ClipVaeVideoModel, discover_layers, find_modules


def _motion_classes() -> tuple[type, ...]:
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    return (AnimateDiffTransformer3D,)


class AnimateDiffVideoModel(ClipVaeVideoModel):
    """SD1.5 UNet + AnimateDiff motion adapter, as one ``UNetMotionModel`` (+ CLIP + KL VAE)."""

    family = "animatediff"
    _family_default_size = (512, 512)
    _PASSTHROUGH = ClipVaeVideoModel._PASSTHROUGH + ("added_cond_kwargs",)

    @property
    def max_frames(self) -> int:
        """Length of the motion modules' positional embedding (``motion_max_seq_length``; 32 for v2/v3)."""
        return int(self.denoiser.config.get("motion_max_seq_length") or 32)

    @property
    def frame_limits(self) -> FrameLimits:
        maximum = self.max_frames
        return FrameLimits(minimum=1, maximum=maximum, step=1, offset=0, default=min(16, maximum))

    def _temporal_transformer_classes(self) -> tuple[type, ...]:
        return _motion_classes()

    def temporal_modules(self) -> list[tuple[str, nn.Module]]:
        """Every motion module (``*.motion_modules.<i>``, mid block included when present)."""
        return find_modules(self.denoiser, _motion_classes())

    def predict(self, latents: torch.Tensor, timestep: torch.Tensor | int | float, prompt_embeds: torch.Tensor,
                **extra: Any) -> torch.Tensor:
        sample, timestep, embeds, kwargs = self._denoiser_inputs(latents, timestep, prompt_embeds, extra)
        num_frames = sample.shape[2]
        # UNetMotionModel runs its 2D layers on (B*F) images and does not repeat the text states itself
        embeds = embeds.repeat_interleave(num_frames, dim=0)
        out = self.denoiser(sample, timestep, encoder_hidden_states=embeds, return_dict=False, **kwargs)[0]
        return out.to(latents.dtype)


def animatediff_layers(denoiser: nn.Module, kind: LayerKind | None = None) -> list[LayerRef]:
    """Layer discovery on a bare ``UNetMotionModel`` (works on the meta device)."""
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    return discover_layers(denoiser, _motion_classes(), (Transformer2DModel,), kind)
