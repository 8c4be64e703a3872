"""MotionClone's motion representation: the sparse temporal-attention maps of a reference video.

Per guided layer, for every (latent position, head, query frame) row of the temporal attention map, the
``k`` largest probabilities (``values``, fp16) and the key frames they sit at (``indices``). With k = 1
this is the paper's sparse mask M (one key frame kept per row, reference/motion_clone.md section 4.5):
``3 bytes`` per row instead of ``2 * F`` for the dense fp16 map.

File format (``.safetensors``, written atomically):

* tensors ``"<layer>.values"`` ``[P, heads, F, k]`` float16 and ``"<layer>.indices"`` ``[P, heads, F, k]``
  uint8 (F <= 256; int16 / int32 for longer clips), ``P = h_l * w_l`` latent positions of the layer;
* metadata (strings): ``format`` = ``motionkit.motion_representation``, ``format_version``, ``method``,
  ``family``, ``base_model``, ``num_frames``, ``width``, ``height``, ``layers`` (JSON list, in order),
  ``k``, ``timestep``, ``seed``, ``source``, plus free-form ``extra`` (JSON).

A representation is reused across any number of generations; :meth:`MotionRepresentation.check_compatible`
refuses a generation of another family, size or frame count (AdapterMismatchError) before any work.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import AdapterMismatchError, InputError

log = logging.getLogger(__name__)

FORMAT = "motionkit.motion_representation"
FORMAT_VERSION = 1

__all__ = ["FORMAT", "FORMAT_VERSION", "MotionRepresentation", "index_dtype_for"]


def index_dtype_for(num_frames: int) -> torch.dtype:
    """The smallest integer dtype that holds a key-frame index (uint8 up to 256 frames)."""
    if num_frames <= 256:
        return torch.uint8
    if num_frames <= 32767:
        return torch.int16
    return torch.int32


@dataclass
class MotionRepresentation:
    """Sparse temporal-attention maps of one reference clip, keyed by layer name (in guidance order)."""

    layers: dict[str, tuple[torch.Tensor, torch.Tensor]]
    family: str
    base_model: str
    num_frames: int
    width: int
    height: int
    k: int
    timestep: int
    seed: int
    source: str = ""
    method: str = "motionclone"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.layers:
            raise InputError("A motion representation needs at least one layer.")
        if self.is_attention_flow:
            self._check_flow_layers()
            return
        for name, (values, indices) in self.layers.items():
            if values.shape != indices.shape or values.dim() != 4:
                raise InputError(f"Layer {name}: values {tuple(values.shape)} and indices {tuple(indices.shape)} "
                                 "must both be [positions, heads, frames, k].")
            if values.shape[2] != self.num_frames or values.shape[3] != self.k:
                raise InputError(f"Layer {name} holds {values.shape[2]} frames x top-{values.shape[3]}, but the "
                                 f"representation says {self.num_frames} frames x top-{self.k}.")

    # ----------------------------------------------------------------------------- DiT attention flow
    @property
    def is_attention_flow(self) -> bool:
        """True for a DiT (Wan) representation: per guided layer ``values`` = attention mass per key frame
        ``[N, F]`` (float16, heads averaged) and ``indices`` = best-matching key position per key frame
        ``[N, F]`` (flat ``y * w + x``, int16), ``N = F * h * w`` tokens of the grid ``extra["grid"]``
        (see :mod:`motion_core.methods.motion_clone_wan`)."""
        return self.extra.get("kind") == "attention_flow"

    def _index_dtype(self) -> torch.dtype:
        if self.is_attention_flow:
            _, h, w = (int(x) for x in self.extra["grid"])
            return torch.int16 if h * w <= 32767 else torch.int32
        return index_dtype_for(self.num_frames)

    def _check_flow_layers(self) -> None:
        grid = self.extra.get("grid")
        if not isinstance(grid, (list, tuple)) or len(grid) != 3:
            raise InputError("An attention-flow motion representation needs its token grid [frames, height, "
                             "width] in extra['grid'].")
        f, h, w = (int(x) for x in grid)
        for name, (values, indices) in self.layers.items():
            if values.shape != indices.shape or tuple(values.shape) != (f * h * w, f):
                raise InputError(f"Layer {name}: mass {tuple(values.shape)} and positions {tuple(indices.shape)} "
                                 f"must both be [tokens, key frames] = [{f * h * w}, {f}] for the {f}x{h}x{w} "
                                 "token grid.")

    # ----------------------------------------------------------------------------- facts
    @property
    def layer_names(self) -> list[str]:
        return list(self.layers)

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data (what the file holds besides its small header)."""
        return sum(v.numel() * v.element_size() + i.numel() * i.element_size() for v, i in self.layers.values())

    @property
    def dense_nbytes(self) -> int:
        """Bytes the dense fp16 maps of the same layers would take (``[P, heads, F, F]`` each)."""
        if self.is_attention_flow:  # the N x N map of every guided layer (one head)
            return sum(v.shape[0] * v.shape[0] * 2 for v, _ in self.layers.values())
        return sum(v.shape[0] * v.shape[1] * v.shape[2] * self.num_frames * 2 for v, _ in self.layers.values())

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "family": self.family, "base_model": self.base_model,
                "num_frames": self.num_frames, "width": self.width, "height": self.height, "k": self.k,
                "timestep": self.timestep, "seed": self.seed, "source": self.source,
                "layers": len(self.layers), "bytes": self.nbytes}

    def __repr__(self) -> str:
        return (f"MotionRepresentation({self.family}, {self.width}x{self.height}x{self.num_frames}, "
                f"{len(self.layers)} layers, k={self.k}, t={self.timestep}, source={self.source!r})")

    def to(self, device: torch.device | str) -> "MotionRepresentation":
        layers = {n: (v.to(device), i.to(device)) for n, (v, i) in self.layers.items()}
        return MotionRepresentation(**{**self.__dict__, "layers": layers})

    # ----------------------------------------------------------------------------- checks
    def check_compatible(self, model: Any, *, width: int, height: int, num_frames: int) -> None:
        """Raise AdapterMismatchError unless a ``width x height x num_frames`` generation with ``model``
        can be guided by this representation (family, size, frame count, layers and heads)."""
        family = getattr(model, "family", None)
        if family != self.family:
            raise AdapterMismatchError(
                f"This motion representation was extracted with a {self.family} model, but the model to "
                f"guide is {family}. Extract it again with this model.")
        if (width, height) != (self.width, self.height) or num_frames != self.num_frames:
            raise AdapterMismatchError(
                f"This motion representation was extracted at {self.width}x{self.height} with "
                f"{self.num_frames} frames, but the generation asks for {width}x{height} with {num_frames} "
                f"frames. Generate at {self.width}x{self.height}x{self.num_frames}, or extract the reference "
                "again at the size and frame count you want.")
        base = getattr(model, "base_model", "")
        if base and self.base_model and base != self.base_model:
            log.warning("motion representation extracted on %s, guiding %s: fine for fine-tunes of the same "
                        "base, but the maps may not match", self.base_model, base)
        if self.is_attention_flow:
            variant, model_variant = self.extra.get("variant"), getattr(model, "variant", None)
            if variant and model_variant and variant != model_variant:
                raise AdapterMismatchError(
                    f"This motion representation was extracted with a {variant} model, but the model to guide "
                    f"is {model_variant} (other widths, heads or layer count). Extract it again with this model.")
        available = {ref.name: ref.module for ref in model.temporal_attention_layers()}
        for name, (values, _) in self.layers.items():
            module = available.get(name)
            if module is None:
                raise AdapterMismatchError(
                    f"This motion representation guides layer {name}, which this {family} model does not "
                    "have (another architecture). Extract it again with this model.")
            if not self.is_attention_flow and int(getattr(module, "heads", values.shape[1])) != values.shape[1]:
                raise AdapterMismatchError(
                    f"Layer {name} has {module.heads} heads in this model but {values.shape[1]} in the "
                    "representation (another architecture). Extract it again with this model.")

    # ----------------------------------------------------------------------------- files
    def metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT, "format_version": str(FORMAT_VERSION), "method": self.method,
            "family": self.family, "base_model": self.base_model, "num_frames": str(self.num_frames),
            "width": str(self.width), "height": str(self.height), "layers": json.dumps(list(self.layers)),
            "k": str(self.k), "timestep": str(self.timestep), "seed": str(self.seed), "source": self.source,
            "extra": json.dumps(self.extra, default=str),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the ``.safetensors`` file atomically (a temp file in the same folder, then rename; a full disk
        is a StorageError naming the folder)."""
        from .files import write_safetensors

        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        for name, (values, indices) in self.layers.items():
            tensors[f"{name}.values"] = values.detach().to("cpu", torch.float16).contiguous()
            tensors[f"{name}.indices"] = indices.detach().to("cpu", self._index_dtype()).contiguous()
        return write_safetensors(path, tensors, self.metadata(), what="the motion representation")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MotionRepresentation":
        """Read a file written by :meth:`save` (InputError for a missing file or another kind of file)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise InputError(f"Motion representation {path} does not exist. Check the path, or save one first (Save "
                             "Motion Representation; CLI: 'clone --save-representation').")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except Exception as exc:  # a truncated or foreign file
            from .files import safetensors_error

            raise safetensors_error(path, exc, "a motion representation") from None
        if meta.get("format") != FORMAT:
            raise InputError(f"{path.name} is not a MotionKit motion representation (it may be a LoRA or "
                             "motion embedding file); pick a file saved by 'Save Motion Representation'.")
        version = int(meta.get("format_version", "0"))
        if version > FORMAT_VERSION:
            raise InputError(f"{path.name} was written by a newer MotionKit (format {version}); update MotionKit.")
        try:
            names = json.loads(meta["layers"])
            layers = {name: (tensors[f"{name}.values"], tensors[f"{name}.indices"]) for name in names}
            return cls(layers=layers, family=meta["family"], base_model=meta.get("base_model", ""),
                       num_frames=int(meta["num_frames"]), width=int(meta["width"]), height=int(meta["height"]),
                       k=int(meta["k"]), timestep=int(meta["timestep"]), seed=int(meta.get("seed", "0")),
                       source=meta.get("source", ""), method=meta.get("method", "motionclone"),
                       extra=json.loads(meta.get("extra", "{}")))
        except (KeyError, ValueError) as exc:
            raise InputError(f"{path.name} is a damaged motion representation (missing {exc}).") from None
