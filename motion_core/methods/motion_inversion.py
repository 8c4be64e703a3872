"""Motion Inversion: motion embeddings for video customization (Wang, Mai et al., arXiv 2403.20193 v2,
SIGGRAPH 2025) -- the October-2024 structure of the reference code (reference/motion_inversion_and_motion_matcher.md
Part A; the April-2024 "1-D embedding" version is not implemented, see below).

**Motion embeddings.** A frozen video model learns the motion of one reference video through two kinds of
small tensors injected into chosen *temporal* transformer blocks (the inversion of the motion into the
model's own temporal attention):

* a **Motion Query-Key embedding** ``m_QK`` of shape ``(1, L, C)`` per selected temporal block, shared by
  the block's temporal self-attentions (``attn1`` and ``attn2``); it carries *when* things move -- one row
  per frame, no spatial axis (the paper's "exclude spatial dims from the QK embedding");
* a **Motion Value embedding** ``m_V`` of shape ``(h·w, L, C)`` per temporal attention: one row per frame
  for every latent position of the block, i.e. *where* things move.

``L`` is the embedding length (32 rows, the reference's hard-coded maximum; only the first ``F`` rows --
the training clip's frames -- are ever read or trained). Both start at zero, so an untrained adapter leaves
the model exactly as it was. For a selected temporal block with input ``x`` and layer norm output ``n``::

    TA(n) = softmax( W_q(n + m_QK) · W_k(n + m_QK)ᵀ / √d ) · W_v(n + m_V)

applied to both temporal self-attentions of the block (``m_QK`` shared, ``m_V`` per attention). The
embeddings enter *only* where the equation says: ``m_QK`` feeds the query and key projections (not the
value), ``m_V`` feeds the value projection (not query/key). This is installed through the attention
processors' inject stage (:mod:`motion_core.attention`: ``modify_qk_input`` / ``modify_v_input``), so it
composes with LoRA adapters on the same layers.

**Which blocks.** The reference config selects the temporal blocks at the UNet's coarsest cross-attention
resolution (``combinations: [[down,1280],[up,1280]]``): on ZeroScope/ModelScope/VideoCrafter2
``down_blocks.2`` (2 temporal transformers) and ``up_blocks.1`` (3), at 1/32 of the pixel size
(18×10 = 180 positions at 576×320). :func:`select_blocks` finds the same blocks on any UNet family by that
rule: the last down block and the first up block that hold cross-attention. On SD1.5 AnimateDiff this is
again ``down_blocks.2`` (2 motion modules) and ``up_blocks.1`` (3), at 1/32 of the pixel size. AnimateDiff
also has motion modules at the 1/64 level (``down_blocks.3``, ``up_blocks.0``), which ZeroScope lacks (its
1/64 level has no temporal attention); we leave them out so the embeddings sit at the same resolution and
in the same number of blocks as in the paper. Other selections: ``blocks=[...]`` with block names
(``"down_blocks.1"``), temporal transformer names, or the reference's ``"down:640"`` form (direction and
channel count; the April-2024 config was ``down:1280, down:640, up:1280, up:640``).

**On a DiT (Wan).** There is no temporal module: every block's self-attention (``attn1``) is one joint
attention over all frames' tokens ``(B, F·h·w, C)`` (frame-major), so that is where the embeddings go.
``m_QK`` keeps one row per *latent* frame, broadcast over the frame's ``h·w`` token positions; ``m_V`` one
row per (token position, latent frame) -- the same two tensors, in the DiT's token order (injected through
the Wan attention processor's stages). Every block works at one resolution (the patch grid), so the default
blocks are chosen by :func:`dit_default_blocks`; the frame rows and length checks count latent frames.

**Training.** Plain ε-MSE (``loss="mse"``, the reference's ``BaseLoss``, default) or the
appearance-debiased temporal loss shared with MotionDirector (``loss="debiased"``, the reference's
``DebiasedTemporalLoss`` = MSE + debiased MSE, from :mod:`motion_core.losses`). AdamW, lr 0.02, weight
decay 0.01, 400 steps, 24-frame clips, one optimizer group holding only the embeddings.

**Inference strategies** (the motion type of the reference's ``inference.py``):

* ``camera`` -- the Value embeddings are dropped; only ``m_QK`` acts (global motion, no object layout);
* ``object`` and ``hybrid`` -- the Value embeddings are *differenced over frames*: ``d₀ = e₀``,
  ``dⱼ = eⱼ − eⱼ₋₁``, which removes what all frames share (the appearance/layout) and keeps the change; the
  reference treats both names identically at inference (``hybrid`` only differed in a training loss that
  is broken as shipped, spec A.10.1), and so do we;
* ``vanilla`` -- the Value embeddings as trained (the function that was trained; the paper's "vanilla"
  inference ablation).

plus the **noise prior** shared with MotionDirector (:mod:`motion_core.noise_prior`): the training clip is
DDIM-inverted once (50 steps) at training time and stored in the adapter; sampling starts from
``√p·z_inv + √(1−p)·ε`` with ``p = 0.5`` by default.

**Other sizes and lengths.** ``m_V`` is tied to the training latent size and both embeddings to the
trained frame count ``T``. Fewer frames (``F ≤ T``) read the first ``F`` rows, as the reference does. A
different size or ``F > T`` is refused with :class:`~motion_core.errors.AdapterMismatchError` unless
*resampling* is on; then ``m_V`` is resized bilinearly over the ``(h, w)`` grid, frame by frame
(``align_corners=False``, like an image resize), and for ``F > T`` the ``T`` trained rows of both
embeddings are stretched linearly over ``F`` frames (``align_corners=True``: the first and last trained
frames stay the first and last; the motion plays slower). Strategies apply after resampling.

**Files.** ``.safetensors`` in the motion adapters folder, ``kind = motion_embeddings``; the tensors keep
the reference's key names (``<block>.pos_embed`` for ``m_QK``, ``<attention>.vSpatial`` for ``m_V``, full
module names of the diffusers denoiser, e.g. ``down_blocks.2.temp_attentions.0.transformer_blocks.0
.attn1.vSpatial``), plus ``noise_prior.<i>``; metadata: family, base model, training size and latent size,
frames, blocks, per-attention grids, default strategy / strength / noise prior, training config.
:func:`import_reference_embeddings` reads the reference's ``motion_embed.pt`` (``torch.load(...,
weights_only=True)``; the key mapping is the identity, ``.pos_embed`` → QK, ``.vSpatial`` → V);
:func:`export_reference_embeddings` writes one back.

Deliberate differences from the reference implementation (also in the README):

1. *Train mode throughout.* The reference calls ``unet.train()`` only at step 0; its first validation (step
   1) switches the UNet to eval mode and nothing switches back, so from step 2 on it trains in eval mode
   (the temporal convolutions' dropout 0.1 silently off, spec A.10.2). We keep the denoiser in train mode
   for the whole run (previews are sampled in eval mode and training returns to train mode), as the
   reference intends.
2. *Longer clips.* The reference hard-codes 32 embedding rows and crashes beyond; we use
   ``max(32, frames)`` rows.
3. *Other sizes / more frames* are refused or resampled (above) instead of silently tiling wrongly or
   reading never-trained zero rows (spec A.10.3).
4. *Seeded and resumable*: the reference sets no seed; our runs are reproducible and resume bit for bit.
5. Clips are center-cropped to the training size (the reference stretches them).
6. The V tiling over the batch is checked against the block's real ``(h, w)`` (read from the temporal
   transformer's input), not inferred from ``N // (h·w)``.
7. Not implemented: the old 1-D embedding format (QK embedding also feeding V), the ``DebiasedHybridLoss``
   (dead code in the reference) and ``MotionDistillationLoss`` (does not run).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import AttentionCall, AttentionStage, attach
from ..errors import AdapterMismatchError, InputError
from ..losses import diffusion_mse, temporal_loss
from ..sampling import SamplingHook
from ..training import Batch, CachedClip, ParamGroup, StepOutput, TrainingMethod
from . import register_method

if TYPE_CHECKING:  # pragma: no cover
    from ..backbones.base import LayerRef, VideoModel

__all__ = [
    "KIND",
    "LOSSES",
    "STRATEGIES",
    "EmbeddedBlock",
    "MotionEmbeddingStage",
    "MotionEmbeddings",
    "MotionInversion",
    "MotionInversionConfig",
    "block_grid",
    "create_motion_embeddings",
    "export_reference_embeddings",
    "frame_difference",
    "import_reference_embeddings",
    "select_blocks",
    "strategy_value_embedding",
]

#: ``kind`` metadata of motion-embedding adapter files
KIND = "motion_embeddings"
METHOD = "motion_inversion"
#: inference strategies: how the Value embedding is used (the QK embedding is always added)
STRATEGIES = ("camera", "object", "hybrid", "vanilla")
#: training losses (reference names in parentheses): mse (BaseLoss), debiased (DebiasedTemporalLoss)
LOSSES = ("mse", "debiased")
_LOSS_ALIASES = {"mse": "mse", "base": "mse", "baseloss": "mse", "debiased": "debiased",
                 "debiased_temporal": "debiased", "debiasedtemporal": "debiased", "debiasedtemporalloss": "debiased",
                 "temporal": "debiased"}
#: rows of every embedding (the reference's ``max_seq_length``)
DEFAULT_LENGTH = 32
QK_SUFFIX = ".pos_embed"
V_SUFFIX = ".vSpatial"
GROUP = "motion_embeddings"


def check_strategy(strategy: str) -> str:
    """The strategy name, lower-cased, or InputError naming the valid ones."""
    name = str(strategy).strip().lower()
    if name not in STRATEGIES:
        raise InputError(f"Unknown motion-embedding strategy {strategy!r}: choose camera (drop the Value "
                         "embeddings), object or hybrid (frame-differenced Value embeddings) or vanilla (as trained).")
    return name


def check_loss(loss: str) -> str:
    key = str(loss).strip().lower().replace("-", "_").replace(" ", "_")
    if key not in _LOSS_ALIASES:
        raise InputError(f"Unknown Motion Inversion loss {loss!r}: use 'mse' (plain noise MSE, the reference's "
                         "BaseLoss) or 'debiased' (MotionDirector's appearance-debiased temporal loss).")
    return _LOSS_ALIASES[key]


# ============================================================================================ the blocks
@dataclass(frozen=True)
class EmbeddedBlock:
    """One selected temporal transformer block.

    ``name`` is the transformer *block* (``…temp_attentions.0.transformer_blocks.0``; the reference's key
    prefix), ``transformer`` the temporal transformer module around it (its input ``(B·F, C, h, w)`` tells
    the block's grid), ``block`` the UNet block (``down_blocks.2``), ``attentions`` its temporal
    self-attentions in module order, ``channels`` their width ``C``.
    """

    name: str
    transformer: str
    block: str
    attentions: tuple[str, ...]
    channels: int


def _channels(attn: nn.Module) -> int:
    to_q = attn.to_q
    features = getattr(to_q, "in_features", None)
    if features is None and hasattr(to_q, "get_base_layer"):
        features = to_q.get_base_layer().in_features
    return int(features)


def _temporal_blocks(model: "VideoModel") -> list[EmbeddedBlock]:
    grouped: dict[str, list["LayerRef"]] = {}
    for ref in model.temporal_attention_layers():
        grouped.setdefault(ref.name.rsplit(".", 1)[0], []).append(ref)
    out = []
    for name, refs in grouped.items():
        out.append(EmbeddedBlock(name=name, transformer=refs[0].transformer, block=refs[0].block,
                                 attentions=tuple(r.name for r in refs), channels=_channels(refs[0].module)))
    return out


def _block_index(block: str) -> tuple[str, int] | None:
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)", block)
    return (m.group(1), int(m.group(2))) if m else None


def default_blocks(model: "VideoModel") -> list[str]:
    """The UNet blocks at the coarsest cross-attention resolution: the last down block and the first up
    block that hold text cross-attention (ZeroScope and SD1.5 AnimateDiff: ``down_blocks.2``, ``up_blocks.1``)."""
    if _is_dit(model):
        return dit_default_blocks(model)
    cross = {r.block for r in model.cross_attention_layers()}
    temporal = {b.block for b in _temporal_blocks(model)}
    downs = sorted(i for kind, i in filter(None, map(_block_index, cross & temporal)) if kind == "down")
    ups = sorted(i for kind, i in filter(None, map(_block_index, cross & temporal)) if kind == "up")
    if not downs or not ups:
        raise AdapterMismatchError(
            f"This {model.family} model has no down and up blocks with both cross-attention and temporal attention, "
            "so the default Motion Inversion blocks cannot be chosen; name the blocks to embed explicitly.")
    return [f"down_blocks.{downs[-1]}", f"up_blocks.{ups[0]}"]


def _is_dit(model: "VideoModel") -> bool:
    """A DiT family (Wan): one joint self-attention over every frame's tokens, all blocks at one resolution."""
    return callable(getattr(model, "token_grid", None))


#: at most this many DiT blocks get embeddings by default (each Value embedding is positions x frames x width)
DIT_DEFAULT_BLOCKS = 4


def dit_default_blocks(model: "VideoModel") -> list[str]:
    """Default Motion Inversion blocks of a DiT (Wan). Every block works at the same token resolution, so the
    UNet rule (the coarsest level) has no analogue; we take up to :data:`DIT_DEFAULT_BLOCKS` blocks evenly
    spaced over the middle half of the stack (Wan 2.1 1.3B, 30 blocks: 8, 12, 17, 22; 14B, 40 blocks: 10, 16,
    23, 29), where a DiT's
    attention is least tied to the input patches or the output pixels, and which bounds the Value embeddings'
    memory (positions x frames x width each). Name other blocks with ``blocks=[...]``."""
    names = [b.block for b in _temporal_blocks(model)]
    n = len(names)
    if n <= DIT_DEFAULT_BLOCKS:
        return names
    lo, hi = n / 4, 3 * n / 4 - 1
    picks = sorted({round(lo + k * (hi - lo) / (DIT_DEFAULT_BLOCKS - 1)) for k in range(DIT_DEFAULT_BLOCKS)})
    return [names[i] for i in picks]


def embedding_grid(model: "VideoModel", block: str, latent_height: int, latent_width: int) -> tuple[int, int]:
    """``(h, w)`` of the token grid the embeddings of ``block`` see: the DiT's patch grid (every block the
    same), or the UNet block's resolution (:func:`block_grid`)."""
    if _is_dit(model):
        _, h, w = model.token_grid(1, int(latent_height), int(latent_width))
        return int(h), int(w)
    return block_grid(model.denoiser, block, latent_height, latent_width)


def _stage_layout(model: "VideoModel") -> dict[str, Any]:
    """Keyword arguments of :class:`MotionEmbeddingStage` for the family's token layout."""
    if _is_dit(model):
        return {"layout": "dit", "patch": tuple(int(p) for p in model.patch_size)}
    return {}


def select_blocks(model: "VideoModel", blocks: Sequence[str] | None = None) -> list[EmbeddedBlock]:
    """The temporal transformer blocks that get motion embeddings, in module order.

    ``blocks``: None = :func:`default_blocks`; else entries that are UNet block names (``down_blocks.2``),
    temporal transformer or transformer-block names, or the reference's ``"<down|up|mid>:<channels>"``.
    """
    available = _temporal_blocks(model)
    if not available:
        raise AdapterMismatchError(f"This {model.family} model has no temporal attention layers: Motion Inversion "
                                   "needs a model with temporal (frame) attention.")
    wanted = list(blocks) if blocks else default_blocks(model)
    chosen: list[EmbeddedBlock] = []
    for entry in wanted:
        text = str(entry).strip()
        m = re.fullmatch(r"(down|up|mid)\s*:\s*(\d+)", text)
        if m:
            hits = [b for b in available if b.block.split("_")[0] == m.group(1) and b.channels == int(m.group(2))]
        else:
            hits = [b for b in available if text in (b.block, b.transformer, b.name)]
        if not hits:
            raise AdapterMismatchError(
                f"No temporal attention block matches {text!r} in this {model.family} model; its temporal blocks "
                f"are {sorted({b.block for b in available})} (or give 'down:<channels>' / 'up:<channels>').")
        chosen.extend(b for b in hits if b not in chosen)
    order = {b.name: i for i, b in enumerate(available)}
    return sorted(chosen, key=lambda b: order[b.name])


def _ceil_half(n: int) -> int:
    return (n + 1) // 2


def block_grid(denoiser: nn.Module, block: str, latent_height: int, latent_width: int) -> tuple[int, int]:
    """``(h, w)`` of the tokens of UNet block ``block`` for a latent of ``latent_height x latent_width``.

    Each downsampler halves a side rounding up (stride-2 convolution with padding 1); the up path returns
    to the down path's sizes exactly (the UNets pass explicit upsample sizes). So ZeroScope at 576×320
    (latent 72×40) has ``down_blocks.2``/``up_blocks.1`` at 18×10, ``down_blocks.1``/``up_blocks.2`` at 36×20.
    """
    down = list(getattr(denoiser, "down_blocks", []))
    up = list(getattr(denoiser, "up_blocks", []))
    sizes = [(int(latent_height), int(latent_width))]
    for b in down:
        if getattr(b, "downsamplers", None):
            h, w = sizes[-1]
            sizes.append((_ceil_half(h), _ceil_half(w)))
    parsed = _block_index(block)
    if block == "mid_block":
        return sizes[-1]
    if parsed is None:
        raise AdapterMismatchError(f"cannot tell the resolution of block {block!r} (not a down/up/mid block).")
    kind, index = parsed
    if kind == "down":
        level = sum(1 for b in down[:index] if getattr(b, "downsamplers", None))
    else:
        level = (len(sizes) - 1) - sum(1 for b in up[:index] if getattr(b, "upsamplers", None))
    return sizes[max(0, level)]


# ============================================================================================ the math
def frame_difference(e: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The differential operation on the Value embedding: ``d₀ = e₀``, ``dⱼ = eⱼ − eⱼ₋₁`` along ``dim``."""
    first = e.narrow(dim, 0, 1)
    rest = e.narrow(dim, 1, e.shape[dim] - 1) - e.narrow(dim, 0, e.shape[dim] - 1)
    return torch.cat([first, rest], dim=dim)


def _stretch_frames(e: torch.Tensor, frames: int) -> torch.Tensor:
    """``(P, T, C)`` -> ``(P, frames, C)``, linear over frames with the end rows kept."""
    x = e.permute(0, 2, 1)  # (P, C, T)
    x = F.interpolate(x.float(), size=frames, mode="linear", align_corners=True)
    return x.permute(0, 2, 1).to(e.dtype)


def _resize_grid(e: torch.Tensor, grid: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """``(h·w, F, C)`` -> ``(h'·w', F, C)``, bilinear over the grid for every frame and channel."""
    (h, w), (nh, nw) = grid, new
    frames, channels = e.shape[1], e.shape[2]
    x = e.reshape(h, w, frames * channels).permute(2, 0, 1)[None]  # (1, F·C, h, w)
    x = F.interpolate(x.float(), size=(nh, nw), mode="bilinear", align_corners=False)
    return x[0].permute(1, 2, 0).reshape(nh * nw, frames, channels).to(e.dtype)


def _rows(e: torch.Tensor, frames: int, trained: int, resample: bool, what: str) -> torch.Tensor:
    """The ``frames`` rows to use: the first ``frames`` when ``frames <= trained`` (the reference), else
    the trained rows stretched (resampling on) or AdapterMismatchError."""
    if frames <= trained:
        return e[:, :frames]
    if not resample:
        raise AdapterMismatchError(
            f"These motion embeddings were trained on {trained} frames; this generation has {frames}. Generate at "
            f"most {trained} frames, or turn on resampling (the trained {what} rows are then stretched over the "
            "frames).")
    return _stretch_frames(e[:, :trained], frames)


def strategy_value_embedding(e: torch.Tensor, strategy: str) -> torch.Tensor | None:
    """What a strategy adds to the value input for Value embedding rows ``e`` ``(P, F, C)``: None for
    ``camera``, the frame differences for ``object``/``hybrid``, ``e`` itself for ``vanilla``."""
    strategy = check_strategy(strategy)
    if strategy == "camera":
        return None
    if strategy in ("object", "hybrid"):
        return frame_difference(e, dim=1)
    return e


# ============================================================================================ injection
class MotionEmbeddingStage(AttentionStage):
    """The inject stage: ``m_QK`` into the query/key input, ``m_V`` (per strategy) into the value input of
    the selected temporal attentions. One stage object serves every selected attention.

    ``qk[block]`` ``(1, L, C)`` and ``v[attention]`` ``(P, L, C)`` are read live (training: the parameters
    themselves; inference: device copies). ``grids[attention]`` is the trained ``(h, w)`` (``P = h·w``),
    ``trained_frames`` the rows that were trained. The block's current ``(h, w)`` comes from a forward
    pre-hook on its temporal transformer (installed by :meth:`install`).
    """

    def __init__(self, blocks: Sequence[EmbeddedBlock], qk: Mapping[str, torch.Tensor],
                 v: Mapping[str, torch.Tensor], grids: Mapping[str, tuple[int, int]], *, trained_frames: int,
                 strategy: str = "vanilla", strength: float = 1.0, resample: bool = False,
                 cache: bool = False, layout: str = "unet", patch: tuple[int, ...] = (1, 1, 1)) -> None:
        if layout not in ("unet", "dit"):
            raise InputError(f"unknown token layout {layout!r}; use 'unet' or 'dit'.")
        #: "unet": temporal attention over (B·h·w, F, C) sequences; "dit": joint self-attention over
        #: (B, F·h·w, C), frame-major (Wan), with the patch size ``patch`` (t, h, w) of the patch embedding
        self.layout = layout
        self.patch = tuple(int(p) for p in patch)
        self.blocks = list(blocks)
        self.qk = dict(qk)
        self.v = dict(v)
        self.grids = {k: (int(g[0]), int(g[1])) for k, g in grids.items()}
        self.trained_frames = int(trained_frames)
        self.strategy = check_strategy(strategy)
        self.strength = float(strength)
        self.resample = bool(resample)
        self.cache = cache
        self._cached: dict[tuple, torch.Tensor | None] = {}
        self._block_of = {a: b for b in self.blocks for a in b.attentions}
        self._transformer_of = {a: b.transformer for b in self.blocks for a in b.attentions}
        self.current_grid: dict[str, tuple[int, int]] = {}
        self._handles: list[Any] = []
        self._attachment = None

    # -------------------------------------------------------------------------- install / remove
    def install(self, denoiser: nn.Module) -> "MotionEmbeddingStage":
        modules = dict(denoiser.named_modules())
        seen: set[str] = set()
        try:
            if self.layout == "dit":
                # the token grid is the same in every block: read it once from the denoiser's latent input
                self._handles.append(denoiser.register_forward_pre_hook(self._dit_grid_hook, with_kwargs=True))
                seen.update(b.transformer for b in self.blocks)
            for b in self.blocks:
                if b.transformer in seen:
                    continue
                seen.add(b.transformer)
                self._handles.append(modules[b.transformer].register_forward_pre_hook(
                    self._grid_hook(b.transformer), with_kwargs=True))
            self._attachment = attach(denoiser, [a for b in self.blocks for a in b.attentions], self)
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        if self._attachment is not None:
            self._attachment.remove()
            self._attachment = None
        while self._handles:
            self._handles.pop().remove()
        self._cached.clear()
        self.current_grid.clear()

    def _grid_hook(self, transformer: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs.get("hidden_states")
            if torch.is_tensor(hidden) and hidden.dim() == 4:
                self.current_grid[transformer] = (int(hidden.shape[-2]), int(hidden.shape[-1]))
        return hook

    def _dit_grid_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if torch.is_tensor(hidden) and hidden.dim() == 5:  # [B, C, F, H, W] latents
            grid = (int(hidden.shape[-2]) // self.patch[1], int(hidden.shape[-1]) // self.patch[2])
            for b in self.blocks:
                self.current_grid[b.transformer] = grid

    def _dit_split(self, call: AttentionCall, hidden_states: torch.Tensor) -> tuple[int, int, tuple[int, int]]:
        """(frames, positions, grid) of a DiT self-attention input ``[B, F·h·w, C]``."""
        grid = self.current_grid.get(self._transformer_of[call.layer], self.grids[call.layer])
        positions = grid[0] * grid[1]
        n = hidden_states.shape[1]
        if n % positions:
            raise AdapterMismatchError(
                f"{call.layer}: {n} tokens do not tile a {grid[1]}x{grid[0]} grid per frame; the embeddings do not "
                "fit this model's layout.")
        return n // positions, positions, grid

    # -------------------------------------------------------------------------- stage points
    def active(self, call: AttentionCall) -> bool:
        return self.strength != 0.0 and not call.is_cross and call.layer in self._block_of

    def _check_width(self, call: AttentionCall, x: torch.Tensor, e: torch.Tensor) -> None:
        if x.shape[-1] != e.shape[-1]:
            raise AdapterMismatchError(
                f"The motion embedding of {call.layer} has {e.shape[-1]} channels but the layer has {x.shape[-1]}: "
                "the embeddings were trained on a model with another architecture.")

    def _qk_rows(self, call: AttentionCall, frames: int, dtype: torch.dtype) -> torch.Tensor:
        block = self._block_of[call.layer].name
        key = ("qk", block, frames, dtype)
        if self.cache and key in self._cached:
            return self._cached[key]  # type: ignore[return-value]
        e = _rows(self.qk[block], frames, self.trained_frames, self.resample, "Query-Key")
        out = (e * self.strength).to(dtype) if self.strength != 1.0 else e.to(dtype)
        if self.cache:
            self._cached[key] = out
        return out

    def _v_rows(self, call: AttentionCall, frames: int, grid: tuple[int, int],
                dtype: torch.dtype) -> torch.Tensor | None:
        key = ("v", call.layer, frames, grid, dtype)
        if self.cache and key in self._cached:
            return self._cached[key]
        if self.strategy == "camera":
            out = None
        else:
            trained = self.grids[call.layer]
            if grid != trained and not self.resample:
                raise AdapterMismatchError(
                    f"These motion embeddings were trained at a latent grid of {trained[1]}x{trained[0]} at "
                    f"{call.layer.split('.transformer_blocks')[0]}; this generation has {grid[1]}x{grid[0]} there "
                    "(another width/height). Generate at the training size, or turn on resampling (the Value "
                    "embeddings are then resized bilinearly).")
            e = _rows(self.v[call.layer], frames, self.trained_frames, self.resample, "Value")
            if grid != trained:
                e = _resize_grid(e, trained, grid)
            # the strategy acts on the rows actually used (differencing after resampling)
            d = strategy_value_embedding(e, self.strategy)
            out = None if d is None else ((d * self.strength).to(dtype) if self.strength != 1.0 else d.to(dtype))
        if self.cache:
            self._cached[key] = out
        return out

    def modify_qk_input(self, call: AttentionCall, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.layout == "dit":
            # one row per latent frame, broadcast over that frame's positions (frame-major tokens)
            b, n, c = hidden_states.shape
            frames, positions, _ = self._dit_split(call, hidden_states)
            e = self._qk_rows(call, frames, hidden_states.dtype)
            self._check_width(call, hidden_states, e)
            out = hidden_states.reshape(b, frames, positions, c) + e.to(hidden_states.device)[:, :, None, :]
            return out.reshape(b, n, c)
        e = self._qk_rows(call, hidden_states.shape[1], hidden_states.dtype)
        self._check_width(call, hidden_states, e)
        # (1, F, C) broadcasts over every (batch, position) sequence
        return hidden_states + e.to(hidden_states.device)

    def modify_v_input(self, call: AttentionCall, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.layout == "dit":
            # one row per (position, latent frame): (h·w, F, C) -> the (F, h·w) token order
            b, n, c = hidden_states.shape
            frames, positions, grid = self._dit_split(call, hidden_states)
            e = self._v_rows(call, frames, grid, hidden_states.dtype)
            if e is None:
                return hidden_states
            self._check_width(call, hidden_states, e)
            out = hidden_states.reshape(b, frames, positions, c) + e.to(hidden_states.device).transpose(0, 1)[None]
            return out.reshape(b, n, c)
        n, frames, channels = hidden_states.shape
        grid = self.current_grid.get(self._transformer_of[call.layer], self.grids[call.layer])
        positions = grid[0] * grid[1]
        if n % positions:
            raise AdapterMismatchError(
                f"{call.layer}: {n} token sequences do not tile a {grid[1]}x{grid[0]} grid; the embeddings do not "
                "fit this model's layout.")
        e = self._v_rows(call, frames, grid, hidden_states.dtype)
        if e is None:
            return hidden_states
        self._check_width(call, hidden_states, e)
        # token order is batch-major, then h, then w: (B·h·w, F, C) = (B, h·w, F, C)
        out = hidden_states.reshape(n // positions, positions, frames, channels) + e.to(hidden_states.device)[None]
        return out.reshape(n, frames, channels)


# ============================================================================================ creating them
def create_motion_embeddings(
    model: "VideoModel", latent_height: int, latent_width: int, *, frames: int, length: int = DEFAULT_LENGTH,
    blocks: Sequence[str] | None = None, device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[list[EmbeddedBlock], dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, tuple[int, int]]]:
    """Zero-initialised embeddings for ``model`` at a latent size: ``(blocks, qk, v, grids)`` with
    ``qk[block] (1, L, C)``, ``v[attention] (h·w, L, C)``, ``L = max(length, frames)``. Works on the
    ``meta`` device (shapes and counts of real configs without weights)."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise InputError(f"frames must be a positive integer, got {frames!r}.")
    rows = max(int(length), frames)
    chosen = select_blocks(model, blocks)
    device = torch.device(device) if device is not None else next(model.denoiser.parameters()).device
    qk: dict[str, torch.Tensor] = {}
    v: dict[str, torch.Tensor] = {}
    grids: dict[str, tuple[int, int]] = {}
    for b in chosen:
        grid = embedding_grid(model, b.block, latent_height, latent_width)
        qk[b.name] = torch.zeros(1, rows, b.channels, device=device, dtype=dtype)
        for a in b.attentions:
            grids[a] = grid
            v[a] = torch.zeros(grid[0] * grid[1], rows, b.channels, device=device, dtype=dtype)
    return chosen, qk, v, grids


def reference_keys(qk: Mapping[str, Any], v: Mapping[str, Any]) -> list[str]:
    """The reference file's keys in its order: per block ``attn1.vSpatial``, ``attn2.vSpatial``, ``pos_embed``."""
    keys = []
    for block in qk:
        keys += [a + V_SUFFIX for a in v if a.rsplit(".", 1)[0] == block]
        keys.append(block + QK_SUFFIX)
    return keys


# ============================================================================================ the adapter
@dataclass(frozen=True, eq=False)
class MotionEmbeddings:
    """The MOTION_ADAPTER of Motion Inversion (immutable; ``with_*`` return copies sharing the tensors).

    ``qk[block]`` ``(1, L, C)``, ``v[attention]`` ``(h·w, L, C)`` (CPU float32); ``grids[attention]`` the
    trained ``(h, w)``; ``frames`` the trained length ``T``; ``width``/``height`` the training size in pixels.
    At inference ``strategy`` picks how ``v`` is used, ``strength`` scales both embeddings, ``resample``
    allows other sizes / longer clips (see the module docstring). ``noise_prior`` holds the DDIM-inverted
    training clip(s) for :class:`~motion_core.noise_prior.NoisePrior` (default ``p`` in
    ``noise_prior_info["p"]``). Implements the ActiveAdapter protocol (``activate``, ``sampling_hook``).
    """

    qk: Mapping[str, torch.Tensor]
    v: Mapping[str, torch.Tensor]
    grids: Mapping[str, tuple[int, int]]
    frames: int
    family: str
    base_model: str
    width: int = 0
    height: int = 0
    latent_size: tuple[int, int] = (0, 0)
    method: str = METHOD
    steps: int = 0
    training_config: Mapping[str, Any] = field(default_factory=dict)
    strategy: str = "hybrid"
    strength: float = 1.0
    resample: bool = False
    noise_prior: tuple[torch.Tensor, ...] = ()
    noise_prior_info: Mapping[str, Any] = field(default_factory=dict)
    check_base_model: bool = True
    source: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    kind = KIND

    def __post_init__(self) -> None:
        check_strategy(self.strategy)
        if not self.qk:
            raise AdapterMismatchError("motion embeddings without any Query-Key embedding.")
        for name, e in self.qk.items():
            if e.dim() != 3 or e.shape[0] != 1:
                raise AdapterMismatchError(f"Query-Key embedding {name!r} must be (1, L, C), got {tuple(e.shape)}.")
        for name, e in self.v.items():
            block = name.rsplit(".", 1)[0]
            if block not in self.qk:
                raise AdapterMismatchError(f"Value embedding {name!r} belongs to no block with a Query-Key embedding.")
            if e.dim() != 3 or e.shape[2] != self.qk[block].shape[2] or e.shape[1] != self.qk[block].shape[1]:
                raise AdapterMismatchError(f"Value embedding {name!r} has shape {tuple(e.shape)}, which does not match "
                                           f"its block's Query-Key embedding {tuple(self.qk[block].shape)}.")
            grid = self.grids.get(name)
            if grid is None or grid[0] * grid[1] != e.shape[0]:
                raise AdapterMismatchError(f"Value embedding {name!r}: its grid {grid} does not hold {e.shape[0]} "
                                           "positions.")
        length = min(e.shape[1] for e in self.qk.values())
        if not 1 <= int(self.frames) <= length:
            raise AdapterMismatchError(f"trained frames {self.frames} outside 1..{length} (the embedding length).")
        if not math.isfinite(float(self.strength)):
            raise InputError(f"strength must be a finite number, got {self.strength}.")

    # ----------------------------------------------------------------------------------- facts
    @property
    def blocks(self) -> list[str]:
        return list(self.qk)

    @property
    def num_qk_parameters(self) -> int:
        return sum(e.numel() for e in self.qk.values())

    @property
    def num_v_parameters(self) -> int:
        return sum(e.numel() for e in self.v.values())

    @property
    def num_parameters(self) -> int:
        return self.num_qk_parameters + self.num_v_parameters

    @property
    def default_noise_prior(self) -> float:
        return float(self.noise_prior_info.get("p", 0.0)) if self.noise_prior else 0.0

    def describe(self) -> str:
        lines = [f"Motion Inversion embeddings for {self.family} ({self.base_model or 'any base'}), "
                 f"{self.steps} steps, "
                 f"trained at {self.width}x{self.height} on {self.frames} frames",
                 f"blocks: {', '.join(self.blocks)}",
                 f"Query-Key: {len(self.qk)} x {tuple(next(iter(self.qk.values())).shape)} = "
                 f"{self.num_qk_parameters:,} params; Value: {len(self.v)} tensors = {self.num_v_parameters:,} params",
                 f"strategy {self.strategy}, strength {self.strength:g}, resampling {'on' if self.resample else 'off'}"]
        if self.noise_prior:
            lines.append(f"stored noise prior: {len(self.noise_prior)} clip(s), default p {self.default_noise_prior:g}")
        return "\n".join(lines)

    # ----------------------------------------------------------------------------------- copies
    def with_strategy(self, strategy: str | None = None, *, strength: float | None = None,
                      resample: bool | None = None, check_base_model: bool | None = None) -> "MotionEmbeddings":
        changes: dict[str, Any] = {}
        if strategy is not None:
            changes["strategy"] = check_strategy(strategy)
        if strength is not None:
            if not math.isfinite(float(strength)):
                raise InputError(f"strength must be a finite number, got {strength}.")
            changes["strength"] = float(strength)
        if resample is not None:
            changes["resample"] = bool(resample)
        if check_base_model is not None:
            changes["check_base_model"] = bool(check_base_model)
        return replace(self, **changes)

    def with_strength(self, strength: float | None = None, **kwargs: Any) -> "MotionEmbeddings":
        """Same spelling as MotionLoRA's (nodes call this on any adapter); only ``strength`` and
        ``check_base_model`` apply to embeddings."""
        return self.with_strategy(strength=strength, check_base_model=kwargs.get("check_base_model"))

    # ----------------------------------------------------------------------------------- checks
    def check_compatible(self, model: "VideoModel") -> list[EmbeddedBlock]:
        """The model's blocks these embeddings go into; AdapterMismatchError for another family, base model
        (unless ``check_base_model`` is off) or block layout."""
        if self.family and model.family != self.family:
            raise AdapterMismatchError(
                f"These motion embeddings were trained for the {self.family} family ({self.base_model}); the model "
                f"is a {model.family} model ({model.base_model}). Load a {self.family} model, or train embeddings "
                "on this one.")
        if self.check_base_model and self.base_model and model.base_model != self.base_model:
            raise AdapterMismatchError(
                f"These motion embeddings were trained on '{self.base_model}', but the model is '{model.base_model}'. "
                "Use the same base model; if the two share an architecture and you want to try anyway, turn off the "
                "base-model check.")
        available = {b.name: b for b in _temporal_blocks(model)}
        blocks = []
        for name, e in self.qk.items():
            b = available.get(name)
            if b is None:
                raise AdapterMismatchError(
                    f"The motion embeddings are for the temporal block {name!r}, which this model does not have: they "
                    "were trained on a model with another block layout.")
            if b.channels != e.shape[-1]:
                raise AdapterMismatchError(
                    f"Block {name!r} has {b.channels} channels in this model but the embedding has {e.shape[-1]}: "
                    "another model architecture.")
            mine = tuple(a for a in self.v if a.rsplit(".", 1)[0] == name)
            missing = [a for a in mine if a not in b.attentions]
            if missing:
                raise AdapterMismatchError(f"The model has no temporal attention {missing[0]!r} (another layout).")
            blocks.append(replace(b, attentions=tuple(a for a in b.attentions if a in mine) or b.attentions))
        return blocks

    def check_request(self, model: "VideoModel", width: int, height: int, frames: int) -> None:
        """AdapterMismatchError before sampling when the size or length needs resampling and it is off."""
        if self.resample:
            return
        f = model.vae_scale_factor
        for attn, grid in self.grids.items():
            block = ".".join(attn.split(".")[:2]) if attn.startswith(("down_blocks", "up_blocks")) else "mid_block"
            if _is_dit(model):
                block = attn.rsplit(".", 1)[0]
            now = embedding_grid(model, block, int(height) // f, int(width) // f)
            if tuple(now) != tuple(grid):
                raise AdapterMismatchError(
                    f"These motion embeddings were trained at {self.width}x{self.height}; this generation is "
                    f"{width}x{height}, which gives {block} a {now[1]}x{now[0]} grid instead of {grid[1]}x{grid[0]}. "
                    f"Their Value embeddings are tied to that grid: generate at {self.width}x{self.height}, or turn on "
                    "resampling.")
        if _is_dit(model):
            # a DiT's rows are latent frames (Wan: 4 video frames each, plus the first)
            latent = model.latent_frames(int(frames))
            if latent > self.frames:
                step = int(model.vae_temporal_factor)
                raise AdapterMismatchError(
                    f"These motion embeddings were trained on {self.frames} latent frames "
                    f"({(self.frames - 1) * step + 1} video frames); this generation has {latent} "
                    f"({frames} video frames). Generate at most {(self.frames - 1) * step + 1} frames, or turn on "
                    "resampling.")
            return
        if frames > self.frames:
            raise AdapterMismatchError(
                f"These motion embeddings were trained on {self.frames} frames; this generation has {frames}. "
                f"Generate at most {self.frames} frames, or turn on resampling.")

    # ----------------------------------------------------------------------------------- ActiveAdapter
    def stage(self, model: "VideoModel") -> MotionEmbeddingStage:
        """An (uninstalled) inject stage with device copies of the tensors for ``model``."""
        blocks = self.check_compatible(model)
        device = next(model.denoiser.parameters()).device
        qk = {k: e.to(device=device, dtype=torch.float32) for k, e in self.qk.items()}
        v = {k: e.to(device=device, dtype=torch.float32) for k, e in self.v.items()}
        return MotionEmbeddingStage(blocks, qk, v, self.grids, trained_frames=self.frames, strategy=self.strategy,
                                    strength=self.strength, resample=self.resample, cache=True,
                                    **_stage_layout(model))

    @contextlib.contextmanager
    def activate(self, model: "VideoModel") -> Iterator["VideoModel"]:
        """Install the embeddings on ``model.denoiser`` for one run; always removes them."""
        stage = self.stage(model).install(model.denoiser)
        try:
            yield model
        finally:
            stage.remove()

    def sampling_hook(self) -> SamplingHook | None:
        return _RequestCheck(self)

    # ----------------------------------------------------------------------------------- files
    def to_file(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        import motion_core

        from ..adapters.files import FORMAT, FORMAT_VERSION

        tensors: dict[str, torch.Tensor] = {}
        for key in reference_keys(self.qk, self.v):
            src = self.qk[key[: -len(QK_SUFFIX)]] if key.endswith(QK_SUFFIX) else self.v[key[: -len(V_SUFFIX)]]
            tensors[key] = src.float()
        for i, z in enumerate(self.noise_prior):
            tensors[f"noise_prior.{i}"] = z.float()
        metadata = {
            "format": FORMAT, "format_version": str(FORMAT_VERSION), "kind": KIND, "method": self.method,
            "family": self.family, "base_model": self.base_model, "steps": str(self.steps),
            "width": str(self.width), "height": str(self.height),
            "latent_size": json.dumps(list(self.latent_size)), "frames": str(self.frames),
            "blocks": json.dumps(self.blocks), "grids": json.dumps({k: list(g) for k, g in self.grids.items()}),
            "default_strategy": self.strategy, "default_strength": repr(float(self.strength)),
            "resample": "1" if self.resample else "0",
            "noise_prior": json.dumps(dict(self.noise_prior_info), default=str),
            "training_config": json.dumps(dict(self.training_config), sort_keys=True, default=str),
            "extra": json.dumps(dict(self.extra), default=str),
            "motionkit_version": getattr(motion_core, "__version__", ""),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        return tensors, metadata

    def save(self, path: str | os.PathLike) -> Path:
        from ..adapters.files import save_adapter

        return save_adapter(self, path)

    def metadata(self) -> dict[str, Any]:
        return {"method": self.method, "kind": KIND, "family": self.family, "base_model": self.base_model,
                "steps": self.steps, "width": self.width, "height": self.height, "frames": self.frames,
                "blocks": self.blocks, "strategy": self.strategy, "strength": self.strength,
                "resample": self.resample, "noise_prior": dict(self.noise_prior_info),
                "training_config": dict(self.training_config), "extra": dict(self.extra)}


class _RequestCheck(SamplingHook):
    """Refuses a generation size / length the embeddings cannot serve before the first step."""

    label = "sampling"

    def __init__(self, adapter: MotionEmbeddings) -> None:
        self.adapter = adapter

    def setup(self, state: Any) -> None:
        req = state.request
        self.adapter.check_request(state.model, int(req.width), int(req.height), int(req.num_frames))


def embeddings_from_file(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> MotionEmbeddings:
    """Loader of ``kind = motion_embeddings`` files (registered with :mod:`motion_core.adapters.files`)."""
    from ..adapters.files import metadata_json

    qk, v, prior = _split_tensors(tensors, path.name, allow_prior=True)
    grids = {k: (int(g[0]), int(g[1])) for k, g in metadata_json(metadata, "grids", {}).items()}
    missing = [k for k in v if k not in grids]
    if missing:
        raise AdapterMismatchError(f"{path.name}: no grid recorded for {missing[0]!r}; the file is damaged.")
    latent = metadata_json(metadata, "latent_size", [0, 0])
    return MotionEmbeddings(
        qk=qk, v=v, grids=grids, frames=int(metadata.get("frames", "0") or 0), family=metadata.get("family", ""),
        base_model=metadata.get("base_model", ""), width=int(metadata.get("width", "0") or 0),
        height=int(metadata.get("height", "0") or 0), latent_size=(int(latent[0]), int(latent[1])),
        method=metadata.get("method", METHOD), steps=int(metadata.get("steps", "0") or 0),
        training_config=metadata_json(metadata, "training_config", {}),
        strategy=metadata.get("default_strategy", "hybrid") or "hybrid",
        strength=float(metadata.get("default_strength", "1.0") or 1.0), resample=metadata.get("resample") == "1",
        noise_prior=tuple(prior[i] for i in sorted(prior)), noise_prior_info=metadata_json(metadata, "noise_prior", {}),
        source=str(path), extra=metadata_json(metadata, "extra", {}))


def _split_tensors(tensors: Mapping[str, Any], label: str, *, allow_prior: bool
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[int, torch.Tensor]]:
    qk: dict[str, torch.Tensor] = {}
    v: dict[str, torch.Tensor] = {}
    prior: dict[int, torch.Tensor] = {}
    for key, value in tensors.items():
        if not isinstance(key, str) or not torch.is_tensor(value):
            raise AdapterMismatchError(f"{label}: entry {key!r} is not a named tensor.")
        t = value.detach().float().cpu().clone()
        if key.endswith(QK_SUFFIX):
            qk[key[: -len(QK_SUFFIX)]] = t
        elif key.endswith(V_SUFFIX):
            v[key[: -len(V_SUFFIX)]] = t
        elif allow_prior and re.fullmatch(r"noise_prior\.\d+", key):
            prior[int(key.split(".")[1])] = t
        else:
            raise AdapterMismatchError(f"{label}: unexpected tensor {key!r} (motion embeddings hold "
                                       "'<block>.pos_embed' "
                                       "and '<attention>.vSpatial' tensors).")
    return qk, v, prior


# ============================================================================================ reference .pt
#: pixels per token side of the reference's blocks (its lookup: down 1 -> /16, down 2 -> /32, up 1 -> /32, up 2 -> /16)
_REFERENCE_FACTORS = {("down", 1): 16, ("down", 2): 32, ("up", 1): 32, ("up", 2): 16}


def _trained_length(tensors: Sequence[torch.Tensor]) -> int:
    """Rows ever trained: AdamW keeps untrained rows exactly zero, so the last non-zero row + 1."""
    last = 0
    for t in tensors:
        idx = torch.nonzero((t != 0).any(dim=0).any(dim=-1)).flatten()  # (P, L, C) -> rows with any value
        if idx.numel():
            last = max(last, int(idx[-1]) + 1)
    return last


def import_reference_embeddings(path: str | os.PathLike, *, family: str | None = None, base_model: str = "",
                                width: int = 576, height: int = 320, frames: int | None = None,
                                strategy: str = "hybrid", model: "VideoModel | None" = None) -> MotionEmbeddings:
    """A reference ``motion_embed.pt`` (``{module name: nn.Parameter}``, read with ``weights_only=True``).

    Key mapping (identity on names): ``<block>.pos_embed`` ``(1, 32, C)`` -> Query-Key embedding of
    ``<block>``; ``<block>.attn{1,2}.vSpatial`` ``(h·w, 32, C)`` -> Value embedding of that attention. The
    grid of each Value embedding follows the reference's lookup from ``width x height`` (the training size,
    576x320 by default); ``frames`` (the trained length) defaults to the last non-zero row + 1 (untrained
    rows stay exactly zero under AdamW). The reference trains only ZeroScope-layout UNets (``unet3d``).
    With ``model`` the grids come from that model's block resolutions (any block; family and base model
    default to the model's) instead of the reference's lookup.
    """
    from ..adapters.files import read_reference_pt  # names a pickle that would run code; never relays torch's advice

    path = Path(path)
    data = read_reference_pt(path, "a Motion Inversion motion_embed.pt")
    if model is not None:
        base_model = base_model or model.base_model
    family = family or (model.family if model is not None else "unet3d")
    return _from_reference_dict(data, path, family=family, base_model=base_model, width=width, height=height,
                                frames=frames, strategy=strategy, model=model)


def _from_reference_dict(data: Any, path: Path, *, family: str = "unet3d", base_model: str = "", width: int = 576,
                         height: int = 320, frames: int | None = None, strategy: str = "hybrid",
                         model: "VideoModel | None" = None) -> MotionEmbeddings:
    if not isinstance(data, Mapping) or not data:
        raise AdapterMismatchError(f"{path.name} is not a Motion Inversion motion_embed.pt (expected a dict of "
                                   "'<module>.pos_embed' / '<module>.vSpatial' tensors).")
    qk, v, _ = _split_tensors(data, path.name, allow_prior=False)
    if not qk:
        raise AdapterMismatchError(f"{path.name} holds no '.pos_embed' tensors: not a Motion Inversion file.")
    if not v:
        raise AdapterMismatchError(
            f"{path.name} is an April-2024 (1-D embedding) Motion Inversion file: its embeddings also fed the value "
            "projection, which MotionKit's (October-2024) motion embeddings do not. Retrain with MotionKit.")
    grids: dict[str, tuple[int, int]] = {}
    vae = model.vae_scale_factor if model is not None else 8
    for attn, e in v.items():
        block = ".".join(attn.split(".")[:2])
        if model is not None:
            grid = block_grid(model.denoiser, block, int(height) // vae, int(width) // vae)
        else:
            parsed = _block_index(block)
            factor = _REFERENCE_FACTORS.get(parsed) if parsed else None
            if factor is None:
                raise AdapterMismatchError(f"{path.name}: {attn!r} is not in a block the reference embeds "
                                           "(down_blocks.1/2, up_blocks.1/2); pass the model to import it.")
            grid = (math.ceil(int(height) / factor), math.ceil(int(width) / factor))
        if grid[0] * grid[1] != e.shape[0]:
            raise AdapterMismatchError(
                f"{path.name}: {attn!r} holds {e.shape[0]} positions, but a {width}x{height} training size gives "
                f"{grid[1]}x{grid[0]} = {grid[0] * grid[1]} there. Pass the width and height it was trained at.")
        grids[attn] = grid
    trained = int(frames) if frames else _trained_length(list(qk.values()) + list(v.values()))
    if trained < 1:
        raise AdapterMismatchError(f"{path.name}: every embedding is zero (an untrained file); give frames= explicitly "
                                   "to load it anyway.")
    latent = (int(height) // vae, int(width) // vae)
    return MotionEmbeddings(qk=qk, v=v, grids=grids, frames=trained, family=family, base_model=base_model,
                            width=int(width), height=int(height), latent_size=latent, strategy=strategy,
                            noise_prior_info={}, source=str(path),
                            extra={"imported_from": "Motion Inversion reference motion_embed.pt"})


def export_reference_embeddings(adapter: MotionEmbeddings, path: str | os.PathLike) -> Path:
    """Write ``adapter`` as the reference's ``motion_embed.pt`` (``{key: nn.Parameter}`` fp32, keys in the
    reference's order), loadable by its ``load_motion_embeddings``. Written atomically. Needs embeddings of
    the reference's length (32 rows) for its loader to accept them unchanged."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out: dict[str, nn.Parameter] = {}
    for key in reference_keys(adapter.qk, adapter.v):
        src = adapter.qk[key[: -len(QK_SUFFIX)]] if key.endswith(QK_SUFFIX) else adapter.v[key[: -len(V_SUFFIX)]]
        out[key] = nn.Parameter(src.float().clone(), requires_grad=True)
    from ..storage import write_atomically

    return write_atomically(path, lambda tmp: torch.save(out, str(tmp)), what="the reference-format embeddings")


def _probe_reference_pt(path: Path) -> MotionEmbeddings | None:
    """:func:`import_reference_embeddings` for a ``.pt`` that is a Motion Inversion dict, else None (so
    :func:`~motion_core.adapters.files.load_adapter` tries the next format)."""
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:
        return None
    if not isinstance(data, Mapping) or not any(str(k).endswith((QK_SUFFIX, V_SUFFIX)) for k in data):
        return None
    return _from_reference_dict(data, path)


def _register_file_kind() -> None:
    from ..adapters.files import register_adapter_kind, register_reference_importer

    register_adapter_kind(KIND, embeddings_from_file)
    register_reference_importer(_probe_reference_pt)


_register_file_kind()


# ============================================================================================ the method
@dataclass
class MotionInversionConfig:
    """Hyper-parameters; defaults are the reference's latest config (``configs/config.yaml``)."""

    learning_rate: float = 0.02
    weight_decay: float = 0.01
    #: "mse" (BaseLoss, default) or "debiased" (DebiasedTemporalLoss = MSE + appearance-debiased MSE)
    loss: str = "mse"
    #: β of the debiased loss (α = √(β²+1))
    debias_beta: float = 1.0
    #: blocks to embed (None: the coarsest cross-attention down/up blocks, see select_blocks)
    blocks: list[str] | None = None
    #: embedding rows (the reference's hard-coded 32; longer clips get one row per frame)
    length: int = DEFAULT_LENGTH
    #: default inference strategy written into the adapter (the reference inference default: hybrid)
    strategy: str = "hybrid"
    #: DDIM inversion steps of the stored noise prior (0: store none)
    noise_prior_steps: int = 50
    #: default noise prior p written into the adapter (the reference's BlendInit 0.5)
    noise_prior: float = 0.5
    #: optional gradient clipping (the reference does not clip)
    max_grad_norm: float | None = None

    def validate(self) -> None:
        for name in ("learning_rate",):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise InputError(f"learning rate must be a positive number, got {value!r}.")
        if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay)
                and self.weight_decay >= 0):
            raise InputError(f"weight decay must be >= 0, got {self.weight_decay!r}.")
        self.loss = check_loss(self.loss)
        self.strategy = check_strategy(self.strategy)
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 1:
            raise InputError(f"embedding length must be a positive integer, got {self.length!r}.")
        if isinstance(self.noise_prior_steps, bool) or not isinstance(self.noise_prior_steps, int) \
                or self.noise_prior_steps < 0:
            raise InputError(f"noise prior steps must be an integer >= 0, got {self.noise_prior_steps!r}.")
        if not 0.0 <= float(self.noise_prior) <= 1.0:
            raise InputError(f"noise prior p must be in [0, 1], got {self.noise_prior}.")
        if self.blocks is not None:
            if isinstance(self.blocks, str):
                self.blocks = [b for b in re.split(r"[,;\s]+", self.blocks) if b]
            # the reference's combinations form [[down, 1280], [up, 1280]] becomes "down:1280"
            self.blocks = [f"{b[0]}:{b[1]}" if isinstance(b, (list, tuple)) and len(b) == 2 else str(b)
                           for b in self.blocks]
        if self.max_grad_norm is not None and not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise InputError(f"max grad norm must be a positive number, got {self.max_grad_norm!r}.")


@register_method(METHOD, "motioninversion", "motion_embeddings")
class MotionInversion(TrainingMethod):
    """Learns motion embeddings (Query-Key + Value) on a frozen model, see the module docstring."""

    name = METHOD
    config_class = MotionInversionConfig

    def __init__(self, config: MotionInversionConfig | None = None) -> None:
        super().__init__(config or MotionInversionConfig())
        self.config.validate()
        self.blocks: list[EmbeddedBlock] = []
        self.qk: dict[str, nn.Parameter] = {}
        self.v: dict[str, nn.Parameter] = {}
        self.grids: dict[str, tuple[int, int]] = {}
        self.frames = 0
        self.latent_size = (0, 0)
        self._stage: MotionEmbeddingStage | None = None

    @property
    def noise_prior_steps(self) -> int:  # type: ignore[override]
        return self.config.noise_prior_steps

    def defaults(self, num_videos: int) -> dict[str, Any]:
        # the reference: 400 steps, 24-frame chunks of every frame (frame_step 1), 576x320, checkpoints every 50;
        # previews every 100 steps (the reference previews once, at step 1)
        return {"steps": 400, "frames": 24, "fps": None, "width": 576, "height": 320, "checkpoint_every": 50,
                "validate_every": 100}

    def default_noise_prior(self, num_videos: int) -> float:
        return float(self.config.noise_prior) if self.config.noise_prior_steps else 0.0

    # ------------------------------------------------------------------ adapters
    def setup(self, model: "VideoModel", clips: Sequence[CachedClip], generator: torch.Generator) -> list[ParamGroup]:
        from ..adapters.lora import denoiser_modules

        if len(denoiser_modules(model)) > 1:
            raise InputError(
                f"Motion Inversion does not support two-expert models (Wan 2.2 A14B: high-noise / low-noise transformers) "
                "yet. Train it on Wan 2.1 T2V 1.3B/14B or Wan 2.2 TI2V-5B, or use MotionDirector, which trains "
                "both A14B experts.")
        shapes = {tuple(c.latents.shape[2:]) for c in clips}
        if len(shapes) != 1:
            raise InputError("Motion Inversion needs every training clip at one size and length; got "
                             f"{sorted(shapes)}.")
        frames, h, w = next(iter(shapes))
        self.frames, self.latent_size = int(frames), (int(h), int(w))
        self._was_training = model.denoiser.training  # train_mode() switches it; teardown() restores it
        blocks, qk, v, grids = create_motion_embeddings(
            model, h, w, frames=self.frames, length=self.config.length, blocks=self.config.blocks,
            device=next(model.denoiser.parameters()).device)
        self.blocks, self.grids = blocks, grids
        # zero init: an untrained adapter is the identity
        self.qk = {k: nn.Parameter(t) for k, t in qk.items()}
        self.v = {k: nn.Parameter(t) for k, t in v.items()}
        self._stage = MotionEmbeddingStage(blocks, self.qk, self.v, grids, trained_frames=self.frames,
                                           strategy="vanilla", **_stage_layout(model)).install(model.denoiser)
        return [ParamGroup(GROUP, self._parameters(), lr=float(self.config.learning_rate),
                           weight_decay=float(self.config.weight_decay), max_grad_norm=self.config.max_grad_norm)]

    def _parameters(self) -> list[nn.Parameter]:
        """In the reference's order (per block: attn1 V, attn2 V, QK)."""
        return [self.qk[k[: -len(QK_SUFFIX)]] if k.endswith(QK_SUFFIX) else self.v[k[: -len(V_SUFFIX)]]
                for k in reference_keys(self.qk, self.v)]

    def train_mode(self, model: "VideoModel") -> None:
        """Train mode for the whole run (the reference's intent; it falls into eval mode after its first
        validation, see the module docstring). Only the embeddings have gradients; the base is frozen."""
        model.denoiser.train()

    # ------------------------------------------------------------------ one step
    def training_step(self, model: "VideoModel", batch: Batch) -> StepOutput:
        # RNG order as the reference: noise -> t -> forward (dropout) -> anchor frame r (spec C.1.5)
        noisy = batch.noisy_latents()
        pred = model.predict(noisy.z_t, noisy.t, batch.prompt_embeds)
        if self.config.loss == "mse":
            loss = diffusion_mse(pred, noisy.target)
            logs: dict[str, torch.Tensor] = {"loss_mse": loss}
        else:
            anchor = batch.randint(batch.num_frames)
            loss, parts = temporal_loss(pred, noisy.target, anchor, self.config.debias_beta)
            logs = {"loss_temporal": loss, **parts}
        return StepOutput(losses={GROUP: loss}, logs=logs, loss=loss.detach())

    @contextlib.contextmanager
    def preview_context(self, model: "VideoModel") -> Iterator[None]:
        """Previews show what users get by default: the adapter's default strategy."""
        stage = self._stage
        previous = stage.strategy if stage is not None else None
        if stage is not None:
            stage.strategy = self.config.strategy
        try:
            yield
        finally:
            if stage is not None:
                stage.strategy = previous  # type: ignore[assignment]

    # ------------------------------------------------------------------ checkpoints
    def state_tensors(self, model: "VideoModel") -> dict[str, torch.Tensor]:
        return {k: (self.qk[k[: -len(QK_SUFFIX)]] if k.endswith(QK_SUFFIX) else self.v[k[: -len(V_SUFFIX)]]).detach()
                for k in reference_keys(self.qk, self.v)}

    @torch.no_grad()
    def load_state_tensors(self, model: "VideoModel", tensors: Mapping[str, torch.Tensor]) -> None:
        expected = set(reference_keys(self.qk, self.v))
        if set(tensors) != expected:
            extra = sorted(set(tensors) - expected)[:1]
            missing = sorted(expected - set(tensors))[:1]
            raise InputError(f"the checkpoint's motion embeddings differ from this run's "
                             f"({'unexpected ' + extra[0] if extra else 'missing ' + missing[0]}).")
        for key, value in tensors.items():
            p = self.qk[key[: -len(QK_SUFFIX)]] if key.endswith(QK_SUFFIX) else self.v[key[: -len(V_SUFFIX)]]
            if tuple(value.shape) != tuple(p.shape):
                raise InputError(f"checkpoint tensor {key!r} has shape {tuple(value.shape)}, this run "
                                 f"{tuple(p.shape)}.")
            p.copy_(value.to(p.device, p.dtype))

    def build_adapter(self, model: "VideoModel", *, steps: int, training_config: dict[str, Any],
                      clips: Sequence[CachedClip]) -> MotionEmbeddings:
        cfg = self.config
        run = training_config.get("training", {}) if isinstance(training_config, Mapping) else {}
        factor = model.vae_scale_factor
        width = int(run.get("width") or self.latent_size[1] * factor)
        height = int(run.get("height") or self.latent_size[0] * factor)
        inverted = tuple(c.inverted.float().cpu() for c in clips if c.inverted is not None)
        info: dict[str, Any] = {}
        if inverted:
            info = {"p": self.default_noise_prior(1), "steps": cfg.noise_prior_steps,
                    "clips": [{"video": c.video_index, "index": c.index} for c in clips],
                    "latent_shape": list(inverted[0].shape), "prompt": "",
                    "scheduler": "flow" if model.prediction_type == "flow" else "ddim"}
        return MotionEmbeddings(
            qk={k: p.detach().float().cpu().clone() for k, p in self.qk.items()},
            v={k: p.detach().float().cpu().clone() for k, p in self.v.items()},
            grids=dict(self.grids), frames=self.frames, family=model.family, base_model=model.base_model,
            width=width, height=height, latent_size=self.latent_size, steps=steps,
            training_config=training_config, strategy=cfg.strategy, strength=1.0, noise_prior=inverted,
            noise_prior_info=info, extra={"prompts": sorted({c.prompt for c in clips}), "loss": cfg.loss})

    def teardown(self, model: "VideoModel") -> None:
        if self._stage is not None:
            self._stage.remove()
            self._stage = None
        self.qk, self.v = {}, {}
        model.denoiser.train(getattr(self, "_was_training", False))
