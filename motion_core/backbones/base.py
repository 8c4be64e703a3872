"""The one interface every model family implements.

Methods (MotionDirector, MotionClone, ...) talk to a :class:`VideoModel` and never to a concrete
diffusers class. A family answers, for its denoiser:

* which layers mix frames (temporal attention) and which are per frame (spatial self-attention,
  cross-attention, feed-forward) -- as :class:`LayerRef` lists with full module names;
* how prompts and videos are encoded and latents decoded;
* the noise schedule and prediction type (epsilon / v / flow);
* how to run the denoiser on a single frame with every temporal module bypassed.

Canonical tensor layouts, the same for every family:

* frames: ``[F, H, W, 3]`` (one clip) or ``[B, F, H, W, 3]`` float in 0..1 -- ComfyUI's IMAGE layout;
* latents: ``[B, C, F, h, w]`` (the family converts to its denoiser's native layout);
* prompt embeddings: ``[B, L, D]`` as the text encoder returns them (the family repeats them per frame
  when its denoiser wants that).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Sequence

import torch
from torch import nn

LayerKind = Literal["temporal_attention", "spatial_self_attention", "cross_attention", "feed_forward"]
PredictionType = Literal["epsilon", "v_prediction", "flow"]


@dataclass(frozen=True)
class LayerRef:
    """One layer of the denoiser, found by the family's layer discovery.

    ``name`` is the full module name inside ``VideoModel.denoiser`` (what peft target regexes and
    attention-processor installers use). ``block`` is the enclosing down/mid/up block (``"up_blocks.1"``,
    ``"mid_block"``, ``"transformer_in"``, ``"blocks.7"`` for a DiT). ``transformer`` is the name of the
    transformer module the layer belongs to (a temporal transformer or a spatial Transformer2DModel), so
    methods can group layers per transformer (Motion Inversion shares one embedding per block).
    ``temporal`` says whether the layer's sequence axis is the frame axis.
    """

    name: str
    module: nn.Module = field(compare=False, repr=False)
    kind: LayerKind
    block: str
    transformer: str
    temporal: bool


@dataclass(frozen=True)
class FrameLimits:
    """Frame counts a family accepts: ``minimum <= F <= maximum`` and ``(F - offset) % step == 0``."""

    minimum: int = 1
    maximum: int = 64
    step: int = 1
    offset: int = 0
    default: int = 16

    def check(self, num_frames: int) -> None:
        from ..errors import InputError

        if num_frames < self.minimum or num_frames > self.maximum:
            raise InputError(
                f"{num_frames} frames is outside what this model accepts ({self.minimum}..{self.maximum})."
            )
        if (num_frames - self.offset) % self.step:
            lower = num_frames - (num_frames - self.offset) % self.step
            raise InputError(
                f"{num_frames} frames is not allowed: this model needs {self.step}k+{self.offset} frames; "
                f"the nearest are {lower} and {lower + self.step}."
            )


class VideoModel(nn.Module):
    """A loaded video diffusion model: components + the family's knowledge about them.

    Subclasses (one per family) set :attr:`family` and implement the abstract methods. The object is a
    ``nn.Module`` only so that ``.to()`` / ``.parameters()`` reach every component; it is never called.
    """

    family: str = "abstract"

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
    ) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        #: a stable identifier of the base weights (hub id or folder name) written into adapter metadata
        self.base_model = base_model
        self.device = torch.device(device)
        self.dtype = dtype
        self.vae_slicing = False

    # ----------------------------------------------------------------------------- facts
    @property
    def prediction_type(self) -> PredictionType:
        return self.scheduler.config.get("prediction_type", "epsilon")

    @property
    def size_multiple(self) -> int:
        """Width and height of a video must be multiples of this (VAE factor x denoiser downsampling)."""
        raise NotImplementedError

    @property
    def frame_limits(self) -> FrameLimits:
        raise NotImplementedError

    @property
    def default_size(self) -> tuple[int, int]:
        """(width, height) the model was trained at."""
        raise NotImplementedError

    @property
    def latent_channels(self) -> int:
        raise NotImplementedError

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along height/width."""
        raise NotImplementedError

    def latent_shape(self, batch: int, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        """Shape of the ``[B, C, F, h, w]`` latents for a video of this size (validates the size)."""
        self.check_size(width, height)
        self.frame_limits.check(num_frames)
        f = self.vae_scale_factor
        return (batch, self.latent_channels, self.latent_frames(num_frames), height // f, width // f)

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames for a video of ``num_frames`` (identity unless the VAE compresses time)."""
        return num_frames

    def check_size(self, width: int, height: int) -> None:
        from ..errors import InputError

        m = self.size_multiple
        if width <= 0 or height <= 0 or width % m or height % m:
            raise InputError(
                f"{width}x{height} is not usable with this {self.family} model: width and height must be "
                f"positive multiples of {m} (e.g. {max(m, width // m * m)}x{max(m, height // m * m)})."
            )

    # ----------------------------------------------------------------------------- layers
    def layers(self, kind: LayerKind | None = None) -> list[LayerRef]:
        """Every adaptable layer of the denoiser, in module registration order."""
        raise NotImplementedError

    def temporal_attention_layers(self) -> list[LayerRef]:
        return self.layers("temporal_attention")

    def spatial_self_attention_layers(self) -> list[LayerRef]:
        return self.layers("spatial_self_attention")

    def cross_attention_layers(self) -> list[LayerRef]:
        return self.layers("cross_attention")

    def feed_forward_layers(self, temporal: bool | None = None) -> list[LayerRef]:
        return [r for r in self.layers("feed_forward") if temporal is None or r.temporal == temporal]

    def temporal_modules(self) -> list[tuple[str, nn.Module]]:
        """Modules that mix frames and are skipped in :meth:`single_frame_mode` (name, module)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def single_frame_mode(self) -> Iterator[None]:
        """Inside, the denoiser runs on ``F == 1`` clips as a pure image model: every temporal module
        (temporal attention, temporal convolution, motion module) returns its input unchanged.

        Stock diffusers applies temporal modules even at F == 1; MotionDirector's spatial path needs
        them bypassed (reference/motion_director_and_custom_motion.md section 1.5, 1.9.1).
        """
        raise NotImplementedError
        yield  # pragma: no cover

    # ----------------------------------------------------------------------------- encoders
    def encode_prompt(self, prompts: Sequence[str] | str) -> torch.Tensor:
        """Text embeddings ``[B, L, D]`` (prompts longer than the tokenizer allows are truncated
        with a warning, as diffusers does)."""
        raise NotImplementedError

    def encode_video(self, frames: torch.Tensor, *, generator: torch.Generator | None = None,
                     sample: bool = True) -> torch.Tensor:
        """Frames ``[F,H,W,3]`` or ``[B,F,H,W,3]`` in 0..1 -> scaled latents ``[B,C,F,h,w]``.

        ``sample=True`` draws from the VAE posterior (as the references do), else uses its mean.
        """
        raise NotImplementedError

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``[B,C,F,h,w]`` -> frames ``[B,F,H,W,3]`` float32 in 0..1 on the CPU."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------- denoiser
    def predict(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor | int | float,
        prompt_embeds: torch.Tensor,
        **extra: Any,
    ) -> torch.Tensor:
        """Run the denoiser on ``[B,C,F,h,w]`` latents; returns the raw model output in the same layout
        (epsilon, v or flow velocity, see :attr:`prediction_type`). ``extra`` carries family-specific
        conditioning (e.g. ControlNet residuals)."""
        raise NotImplementedError

    def guidance_update(self, state: Any, latents_next: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Apply an energy gradient after a non-DDIM scheduler step (flow-matching families override
        this; epsilon/v families are guided through ``sampling.ddim_step``)."""
        from ..errors import InputError

        raise InputError(f"Guidance is not defined for the {self.family} family with this scheduler.")

    # ----------------------------------------------------------------------------- misc
    def to(self, *args: Any, **kwargs: Any) -> "VideoModel":  # type: ignore[override]
        super().to(*args, **kwargs)
        device, dtype, *_ = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None:
            self.device = torch.device(device)
        if dtype is not None:
            self.dtype = dtype
        return self

    def describe(self) -> dict[str, Any]:
        """A short JSON-able summary (shown by the loader node and written into adapter metadata)."""
        return {
            "family": self.family,
            "base_model": self.base_model,
            "prediction_type": self.prediction_type,
            "size_multiple": self.size_multiple,
            "default_size": list(self.default_size),
            "frames": {"min": self.frame_limits.minimum, "max": self.frame_limits.maximum,
                       "step": self.frame_limits.step, "offset": self.frame_limits.offset,
                       "default": self.frame_limits.default},
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "temporal_attention_layers": len(self.temporal_attention_layers()),
        }


ProgressCallback = Callable[[int, int, dict], None]
"""``progress(step, total, info)`` -- called after every step of a long job (sampling, training)."""

CancelCheck = Callable[[], bool]
"""``cancel()`` -- returns True when the user asked to stop; checked between steps."""
