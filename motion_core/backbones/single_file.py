"""Model files as ComfyUI users have them: one ``.safetensors`` / ``.ckpt`` per component.

ComfyUI keeps a model's parts in its own folders -- ``models/diffusion_models`` (Wan DiT files),
``models/text_encoders`` (umt5-xxl, also as fp8 ``_scaled`` files), ``models/vae``, ``models/checkpoints``
(SD1.5: UNet + VAE + CLIP in one file), ``models/animatediff_models`` (motion modules) and
``models/controlnet`` (SparseCtrl). This module is what every single-file loader shares:

* :func:`read_header` -- the tensor names, shapes and dtypes of a file without reading the weights (the
  safetensors JSON header; for a pickle-based ``.ckpt`` a memory-mapped ``torch.load(weights_only=True)``).
  A file shorter than its header promises is reported as truncated.
* :func:`identify` -- what a file holds (family, role, variant), from names and shapes only, so a file of
  another family (Flux, SDXL, HunyuanVideo, LTX, ...) is named in the error instead of failing deep inside
  a converter.
* :func:`read_state_dict` -- the tensors, memory-mapped (no copy until a tensor is converted), with the
  ComfyUI prefix removed and fp8 weights upcast (:func:`dequantize_fp8`).
* :func:`shipped_config` -- the architecture configs the conversions need, shipped as small JSON files in
  ``backbones/configs`` (written from the architectures' published numbers; nothing is downloaded).

fp8
    ComfyUI runs fp8 files (``*_fp8_e4m3fn.safetensors``, and the ``_scaled`` ones that carry a per-layer
    ``scale_weight``) by keeping the fp8 weights and upcasting each layer when it runs. MotionKit upcasts once,
    on load, to the compute dtype: ``weight = fp8_weight.to(dtype) * scale_weight``. Training adapts the
    weights' neighbours and reads them on every step, so a per-call upcast would cost one cast per layer per
    step; the price is memory: a bf16/fp16 model takes twice the bytes of the fp8 file (umt5-xxl: 6.7 GB fp8
    -> 11.4 GB bf16), and fp32 four times.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import torch

from ..errors import ModelLoadError

__all__ = [
    "WEIGHT_SUFFIXES",
    "WeightsHeader",
    "WeightsKind",
    "dequantize_fp8",
    "identify",
    "is_weights_file",
    "read_header",
    "read_state_dict",
    "shipped_config",
]

#: file endings ComfyUI lists in its model folders (``folder_paths.supported_pt_extensions``)
WEIGHT_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".pkl")
_SAFETENSORS = (".safetensors", ".sft")
#: prefixes ComfyUI and the original repositories put before a component's own names
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.")
_CONFIGS = Path(__file__).resolve().parent / "configs"

_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
              "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
              "BOOL": "bool"}
_ST_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
             "I8": 1, "U8": 1, "BOOL": 1}


def is_weights_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an existing file with a weights ending ComfyUI lists."""
    p = Path(path)
    return p.is_file() and p.name.lower().endswith(WEIGHT_SUFFIXES)


# --------------------------------------------------------------------------------------------- header
@dataclass
class WeightsHeader:
    """Names, shapes and dtypes of the tensors in a weights file (nothing loaded)."""

    path: Path
    #: tensor name -> (shape, dtype name as torch spells it, e.g. "float16")
    tensors: dict[str, tuple[tuple[int, ...], str]]
    metadata: dict[str, str] = field(default_factory=dict)

    def shape(self, name: str) -> tuple[int, ...] | None:
        entry = self.tensors.get(name)
        return entry[0] if entry else None

    def has(self, name: str) -> bool:
        return name in self.tensors

    def count(self, pattern: str) -> int:
        """How many distinct indices ``{}`` takes in names matching ``pattern`` (e.g. ``"blocks.{}."``)."""
        regex = re.compile(re.escape(pattern).replace(r"\{\}", r"(\d+)"))
        found = {m.group(1) for name in self.tensors for m in [regex.match(name)] if m}
        return len(found)

    def dtypes(self) -> set[str]:
        return {dtype for _, dtype in self.tensors.values()}

    def with_prefix_removed(self, prefix: str) -> "WeightsHeader":
        kept = {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}
        return WeightsHeader(self.path, kept, self.metadata)


def _truncated(path: Path, detail: str) -> ModelLoadError:
    return ModelLoadError(
        f"{path.name} is truncated or damaged ({detail}): an interrupted download or copy? Get the file again "
        f"(its folder: {path.parent}).")


def _safetensors_header(path: Path) -> WeightsHeader:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _truncated(path, f"{size} bytes, not even a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > 100_000_000 or 8 + length > size:
            if length > 100_000_000:
                raise ModelLoadError(f"{path.name} is not a safetensors file (its first bytes are not a safetensors "
                                     f"header). If it is a .ckpt/.pt file, give it its real ending.")
            raise _truncated(path, f"the header says {8 + length} bytes, the file has {size}")
        try:
            raw = json.loads(f.read(length).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ModelLoadError(f"{path.name} is not a readable safetensors file ({exc}).") from None
    metadata = raw.pop("__metadata__", None) or {}
    tensors: dict[str, tuple[tuple[int, ...], str]] = {}
    end = 0
    for name, entry in raw.items():
        try:
            shape = tuple(int(n) for n in entry["shape"])
            dtype = _ST_DTYPES.get(entry["dtype"], entry["dtype"].lower())
            end = max(end, int(entry["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise ModelLoadError(f"{path.name} has a damaged safetensors header (entry {name!r}).") from None
        tensors[name] = (shape, dtype)
    if 8 + length + end > size:
        raise _truncated(path, f"its tensors need {8 + length + end} bytes, the file has {size}")
    return WeightsHeader(path, tensors, {str(k): str(v) for k, v in metadata.items()})


def _torch_file(path: Path) -> dict[str, Any]:
    """A pickle-based checkpoint read as plain tensors only (never code), unwrapped to its state dict."""
    from ..adapters.files import read_reference_pt

    try:
        data = read_reference_pt(path, "a model checkpoint", mmap=True)
    except ModelLoadError:
        raise
    except Exception as exc:  # InputError in read_reference_pt's words: keep them, as a load error
        raise ModelLoadError(str(exc)) from None
    if isinstance(data, dict):
        for wrapper in ("state_dict", "module", "model", "controlnet"):  # "controlnet": SparseCtrl .ckpt
            inner = data.get(wrapper)
            if isinstance(inner, dict) and inner and all(isinstance(k, str) for k in inner):
                data = inner
                break
    if not isinstance(data, dict) or not data:
        raise ModelLoadError(f"{path.name} holds no named tensors (it is a {type(data).__name__}).")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


@lru_cache(maxsize=64)
def _cached_header(path: str, size: int, mtime: float) -> WeightsHeader:
    p = Path(path)
    if p.name.lower().endswith(_SAFETENSORS):
        return _safetensors_header(p)
    tensors = _torch_file(p)
    return WeightsHeader(p, {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in tensors.items()})


def read_header(path: str | os.PathLike) -> WeightsHeader:
    """The names/shapes/dtypes of ``path`` (cached by size and modification time)."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"model file not found: {p}")
    stat = p.stat()
    return _cached_header(str(p.resolve()), stat.st_size, stat.st_mtime)


# --------------------------------------------------------------------------------------------- tensors
def dequantize_fp8(state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """fp8 weights -> ``dtype``, in place: ``w = w_fp8.to(dtype) * scale_weight`` where the file is a ComfyUI
    ``_scaled`` one (``<layer>.scale_weight`` beside ``<layer>.weight``, a ``scaled_fp8`` marker); the
    ``scale_input`` tensors (only used by fp8 matmul kernels) and the marker are dropped."""
    for name in [k for k in state_dict if k == "scaled_fp8" or k.endswith(".scaled_fp8") or k.endswith(".scale_input")]:
        del state_dict[name]
    fp8 = {torch.float8_e4m3fn, torch.float8_e5m2}
    for name in list(state_dict):
        if not name.endswith(".scale_weight"):
            continue
        scale = state_dict.pop(name)
        weight_name = name[: -len(".scale_weight")] + ".weight"
        if weight_name in state_dict:
            state_dict[weight_name] = state_dict[weight_name].to(torch.float32).mul_(scale.to(torch.float32)).to(dtype)
    for name, tensor in state_dict.items():
        if tensor.dtype in fp8:
            state_dict[name] = tensor.to(dtype)
    return state_dict


def read_state_dict(path: str | os.PathLike, *, prefix: str | None = None, dtype: torch.dtype | None = None,
                    skip: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` on the CPU. safetensors files are memory-mapped: a tensor costs RAM only once it
    is converted or copied, so a loader that converts tensor by tensor never holds two copies of the model.

    ``prefix``: keep only names that start with it, without it. ``dtype``: fp8 weights are upcast to it (see
    :func:`dequantize_fp8`; other dtypes are left to the loader). ``skip``: names not to read (e.g. an
    embedded tokenizer)."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    header = read_header(p)  # the truncation check before any read
    skip = set(skip)
    state: dict[str, torch.Tensor] = {}
    if p.name.lower().endswith(_SAFETENSORS):
        try:
            with safe_open(str(p), framework="pt", device="cpu") as f:
                for name in f.keys():
                    if name in skip or (prefix is not None and not name.startswith(prefix)):
                        continue
                    state[name[len(prefix):] if prefix else name] = f.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise _truncated(p, str(exc)) from None
    else:
        for name, tensor in _torch_file(p).items():
            if name in skip or (prefix is not None and not name.startswith(prefix)):
                continue
            state[name[len(prefix):] if prefix else name] = tensor
    if not state:
        raise ModelLoadError(f"{p.name} has no tensors{f' under {prefix!r}' if prefix else ''} "
                             f"({len(header.tensors)} tensors in the file).")
    if dtype is not None:
        dequantize_fp8(state, dtype)
    return state


# --------------------------------------------------------------------------------------------- identify
@dataclass(frozen=True)
class WeightsKind:
    """What a weights file holds."""

    #: "wan", "sd15", "animatediff", ... or another family's name ("flux", "sdxl", ...) MotionKit does not load
    family: str
    #: "diffusion_model", "checkpoint" (UNet + VAE + text encoder), "text_encoder", "vae", "motion_module",
    #: "controlnet", "lora" or "unknown"
    role: str
    #: e.g. "wan2.1-t2v-1.3b", "wan2.2-ti2v-5b", "umt5-xxl", "wan2.1-vae", "v3", "rgb"
    variant: str = ""
    #: the prefix before the component's own names in this file ("" when none)
    prefix: str = ""
    #: numbers read from the shapes (dim, layers, ...)
    details: tuple[tuple[str, Any], ...] = ()

    @property
    def info(self) -> dict[str, Any]:
        return dict(self.details)

    def describe(self) -> str:
        what = {"diffusion_model": "diffusion model", "checkpoint": "checkpoint", "text_encoder": "text encoder",
                "vae": "VAE", "motion_module": "motion module", "controlnet": "ControlNet", "lora": "LoRA",
                "unknown": "model file"}.get(self.role, self.role)
        if self.family == "animatediff" and self.variant:  # "an AnimateDiff v2 motion module"
            return f"an AnimateDiff {self.variant} {what}"
        name = self.variant or self.family
        if f" {what.lower()}" in f" {name.lower()}" or name.lower().startswith(("a ", "an ")):  # "a CLIP text encoder"
            return name if name.lower().startswith(("a ", "an ")) else f"a {name}"
        return f"a {name} {what}"


def _prefix_of(header: WeightsHeader, probe: str) -> str | None:
    for prefix in ("",) + _PREFIXES:
        if header.has(prefix + probe):
            return prefix
    return None


def _any(header: WeightsHeader, *fragments: str) -> bool:
    return any(any(f in name for f in fragments) for name in header.tensors)


def _wan_variant(header: WeightsHeader, prefix: str) -> WeightsKind:
    h = header.with_prefix_removed(prefix) if prefix else header
    dim = h.shape("head.modulation")[-1]
    in_dim = h.shape("patch_embedding.weight")[1]
    layers = h.count("blocks.{}.")
    image = h.has("img_emb.proj.0.bias")
    other = next((kind for probe, kind in (("vace_patch_embedding.weight", "VACE"),
                                           ("control_adapter.conv.weight", "Fun Camera"),
                                           ("casual_audio_encoder.encoder.final_linear.weight", "S2V"),
                                           ("audio_proj.audio_proj_glob_1.layer.bias", "HuMo"),
                                           ("face_adapter.fuser_blocks.0.k_norm.weight", "Animate"))
                  if h.has(probe)), None)
    if other:
        variant = f"wan-{other.lower().replace(' ', '-')}"
    elif in_dim == 48:
        variant = "wan2.2-ti2v-5b"
    elif image:
        variant = "wan2.1-i2v-14b" if dim == 5120 else "wan2.1-i2v"
    elif in_dim == 36:
        variant = "wan2.2-i2v-a14b"
    elif dim == 1536:
        variant = "wan2.1-t2v-1.3b"
    elif dim == 5120:
        variant = "wan-t2v-14b"  # Wan 2.1 T2V 14B and each Wan 2.2 A14B expert have the same shapes
    else:
        variant = f"wan-t2v-dim{dim}"
    details = (("dim", dim), ("in_dim", in_dim), ("num_layers", layers),
               ("ffn_dim", h.shape("blocks.0.ffn.0.weight")[0]),
               ("text_dim", h.shape("text_embedding.0.weight")[1]),
               ("out_dim", h.shape("head.head.weight")[0] // 4), ("image", image), ("other", other or ""))
    return WeightsKind("wan", "diffusion_model", variant, prefix, details)


def identify(path_or_header: str | os.PathLike | WeightsHeader) -> WeightsKind:
    """What a weights file holds, from its tensor names and shapes (see :class:`WeightsKind`). Files MotionKit
    cannot load still get their family named where it is recognisable (so errors can say "this is a Flux
    diffusion model"); anything else is ``WeightsKind("unknown", "unknown")``."""
    header = path_or_header if isinstance(path_or_header, WeightsHeader) else read_header(path_or_header)

    # --- Wan DiT (the original repository's names, as ComfyUI keeps them)
    prefix = _prefix_of(header, "head.modulation")
    if prefix is not None and _prefix_of(header, "patch_embedding.weight") == prefix:
        return _wan_variant(header, prefix)
    # --- diffusers-layout single files (a transformer/unet saved alone)
    if header.has("scale_shift_table") and header.has("patch_embedding.weight") and _any(header, "attn1.to_q"):
        return WeightsKind("wan", "diffusers_component", "wan (diffusers layout)")
    # --- other DiT families (named so the error can say what the file is)
    if _any(header, "double_blocks.0.img_attn.qkv") or _any(header, "double_blocks.0.img_attn.proj"):
        if _any(header, "txt_in.individual_token_refiner"):
            return WeightsKind("hunyuanvideo", "diffusion_model", "HunyuanVideo")
        return WeightsKind("flux", "diffusion_model", "Flux")
    if _any(header, "adaln_single.") or _any(header, "patchify_proj."):
        return WeightsKind("ltx", "diffusion_model", "LTX-Video")
    if _any(header, "joint_blocks.0.") :
        return WeightsKind("sd3", "diffusion_model", "Stable Diffusion 3")
    # (anchored at the root: diffusers-named UNet/ControlNet files have transformer_blocks deeper down)
    if header.has("transformer_blocks.0.attn1.to_q.weight") and header.has("patch_embed.proj.weight"):
        return WeightsKind("cogvideox", "diffusion_model", "CogVideoX (diffusers layout)")

    # --- AnimateDiff motion modules and SparseCtrl (original AnimateDiff layout)
    if _any(header, "motion_modules.") and _any(header, "temporal_transformer"):
        if _any(header, "controlnet_cond_embedding") or _any(header, "input_hint_block"):
            return WeightsKind("animatediff", "controlnet", "sparsectrl")
        levels = header.count("down_blocks.{}.motion_modules")
        variant = "sdxl" if levels == 3 else ("v2" if _any(header, "mid_block.motion_modules") else "v1/v3")
        return WeightsKind("animatediff", "motion_module", variant, "", (("down_levels", levels),))

    # --- SD-style checkpoints and UNets (LDM layout)
    if _any(header, "conditioner.embedders.") or header.has("model.diffusion_model.label_emb.0.0.weight") \
            or header.has("label_emb.0.0.weight"):
        return WeightsKind("sdxl", "checkpoint" if _any(header, "first_stage_model.") else "diffusion_model", "SDXL")
    unet_prefix = _prefix_of(header, "input_blocks.0.0.weight")
    if unet_prefix is not None:
        ctx = next((shape[1] for name, (shape, _) in header.tensors.items()
                    if name.startswith(unet_prefix) and name.endswith("attn2.to_k.weight")), None)
        proj_in = next((shape for name, (shape, _) in header.tensors.items()
                        if name.startswith(unet_prefix) and name.endswith(".proj_in.weight")), ())
        # SD2 projects with Linear layers into a 1024-wide context; SD1.x uses 1x1 convolutions (the tiny
        # SD1.5-shaped test files too, whose context is narrower than 768)
        if ctx == 1024 or len(proj_in) == 2:
            variant = "sd2"
        elif ctx and len(proj_in) == 4:
            variant = "sd15"
        else:
            variant = f"sd (context {ctx})"
        role = "checkpoint" if _any(header, "first_stage_model.") else "diffusion_model"
        return WeightsKind(variant if variant in ("sd15", "sd2") else "sd", role, variant, unet_prefix,
                           (("context_dim", ctx),))

    # --- text encoders
    t5 = _prefix_of(header, "encoder.block.0.layer.0.SelfAttention.q.weight")
    if t5 is not None:
        per_block_bias = header.has(f"{t5}encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight")
        vocab = (header.shape(f"{t5}shared.weight") or header.shape(f"{t5}encoder.embed_tokens.weight") or (0,))[0]
        d_model = header.shape(f"{t5}encoder.block.0.layer.0.SelfAttention.q.weight")[1]
        variant = ("umt5-xxl" if d_model == 4096 else "umt5") if per_block_bias else f"t5 (vocab {vocab})"
        return WeightsKind("umt5" if per_block_bias else "t5", "text_encoder", variant, t5,
                           (("d_model", d_model), ("vocab", vocab), ("layers", header.count(f"{t5}encoder.block.{{}}."))))
    if _any(header, "text_model.encoder.layers.0.self_attn.q_proj"):
        return WeightsKind("clip", "text_encoder", "CLIP text encoder")
    if _any(header, "model.layers.0.self_attn.q_proj") or _any(header, "layers.0.self_attn.q_proj"):
        return WeightsKind("llm", "text_encoder", "an LLM text encoder (Llama/Qwen)")

    # --- VAEs
    wan_vae = _prefix_of(header, "encoder.conv1.weight")
    if wan_vae is not None and len(header.shape(f"{wan_vae}encoder.conv1.weight") or ()) == 5 \
            and header.has(f"{wan_vae}conv1.weight"):
        z = (header.shape(f"{wan_vae}conv2.weight") or (0,))[1]
        in_channels = header.shape(f"{wan_vae}encoder.conv1.weight")[1]
        variant = "wan2.2-vae" if z == 48 or in_channels == 12 else "wan2.1-vae"
        return WeightsKind("wan", "vae", variant, wan_vae, (("z_dim", z), ("in_channels", in_channels),
                                                            ("base_dim", header.shape(f"{wan_vae}encoder.conv1.weight")[0])))
    ldm_vae = _prefix_of(header, "encoder.conv_in.weight")
    if ldm_vae is None and header.has("first_stage_model.encoder.conv_in.weight"):
        ldm_vae = "first_stage_model."
    if ldm_vae is not None:
        shape = header.shape(f"{ldm_vae}encoder.conv_in.weight")
        latent = (header.shape(f"{ldm_vae}decoder.conv_in.weight") or (0, 0))[1]
        if len(shape) == 5:
            return WeightsKind("video-vae", "vae", "a 3D video VAE (HunyuanVideo/LTX/Mochi-style)", ldm_vae)
        variant = "sd-vae" if latent == 4 else f"vae with {latent} latent channels (Flux/SD3-style)"
        return WeightsKind("sd" if latent == 4 else "other-vae", "vae", variant, ldm_vae, (("latent_channels", latent),))

    if _any(header, "lora_A.weight", "lora_down.weight", "lora_B.weight", "lora_up.weight"):
        return WeightsKind("lora", "lora", "LoRA")
    return WeightsKind("unknown", "unknown")


# --------------------------------------------------------------------------------------------- configs
def shipped_config(name: str) -> dict[str, Any]:
    """A config shipped in ``backbones/configs/<name>.json`` (a copy: callers may change it)."""
    path = _CONFIGS / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in _CONFIGS.glob("*.json"))) or "none"
        raise ModelLoadError(f"MotionKit ships no config named {name!r} (shipped: {known}).")
    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop("_comment", None)
    return data
