"""Wan as ComfyUI users keep it: a diffusion-model file, a umt5-xxl file and a VAE file (no diffusers folder).

==============================  ===========================================  ======================================
input                           ComfyUI folder (``folder_paths`` name)       files
==============================  ===========================================  ======================================
the model (``source``)          ``diffusion_models`` (also ``unet``)         ``wan2.1_t2v_1.3B_fp16``, ``wan2.1_t2v_14B_
                                                                             fp8_e4m3fn``, ``wan2.2_ti2v_5B_fp16``,
                                                                             ``wan2.2_t2v_high_noise_14B_fp8_scaled``
``low_noise_model`` (A14B)      ``diffusion_models``                         ``wan2.2_t2v_low_noise_14B_fp16``, ...
``text_encoder``                ``text_encoders`` (also ``clip``)            ``umt5_xxl_fp16``, ``umt5_xxl_fp8_e4m3fn_
                                                                             scaled``
``vae``                         ``vae``                                      ``wan_2.1_vae`` (every Wan but TI2V-5B),
                                                                             ``wan2.2_vae`` (TI2V-5B)
==============================  ===========================================  ======================================

How a file becomes a diffusers module, the same way for a real file and a tiny test file:

1. the header is read (:func:`single_file.read_header`): names, shapes, dtypes, nothing else;
2. the architecture numbers the shapes fix are read from it -- transformer width, blocks, ffn width, in/out
   channels, text width, time-embedding width, patch; umt5 layers, d_model, d_ff, heads and buckets (from
   ``relative_attention_bias``), vocabulary; VAE base width, decoder width, z channels, input channels -- and
   laid over the shipped config of the variant (``backbones/configs``, the numbers of the published diffusers
   folders). **Heads are ``width // 128``**, as ComfyUI derives them (``comfy/model_detection.py``): every
   published Wan uses 128-wide heads, and the file does not say;
3. the module is built on the meta device (``accelerate.init_empty_weights``: no memory), the tensors are
   read memory-mapped, renamed by diffusers' own single-file converters (``convert_wan_transformer_to_diffusers``,
   ``convert_wan_vae_to_diffusers``; umt5's names already are transformers' names; only the Wan 2.2 VAE's
   down/up blocks, which diffusers has no converter for, are renamed here), cast tensor by tensor to the
   compute dtype (fp8 upcast, ``_scaled`` files times their ``scale_weight``) and assigned
   (``load_state_dict(assign=True)``), so the weights exist once, never twice;
4. every weight the module needs must come from the file and every tensor of the file must land somewhere:
   otherwise a ModelLoadError names the file and what is missing / left over.

The VAE is kept in float32 and diffusers' float32 modules of the transformer stay float32 (as ``load_wan``
loads a folder); umt5's ``wo`` stays float32 in fp16 (transformers' rule).

Wan 2.2 A14B: the model is the high-noise expert and ``low_noise_model`` the low-noise one (ComfyUI's file names
say ``high_noise`` / ``low_noise``); ``boundary_ratio`` 0.875. A ``high_noise``/``low_noise`` file alone is refused.
"""

from __future__ import annotations

import gc
import logging
import re
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ModelLoadError
from . import single_file
from .base import VideoModel
from .single_file import WeightsHeader, WeightsKind

logger = logging.getLogger(__name__)

__all__ = ["WAN_FOLDERS", "check_expert_pair", "convert_wan22_vae_to_diffusers", "load_umt5_file", "load_wan_files",
           "load_wan_transformer_file", "load_wan_vae_file", "read_spiece_model", "umt5_config_from_header",
           "wan_transformer_config_from_header", "wan_vae_config_from_header"]

#: the ComfyUI model folders (``folder_paths`` names) each input comes from
WAN_FOLDERS = {"model": "diffusion_models", "low_noise_model": "diffusion_models", "text_encoder": "text_encoders",
               "vae": "vae"}
HEAD_DIM = 128
_TEXT_FILES = "umt5_xxl_fp16.safetensors / umt5_xxl_fp8_e4m3fn_scaled.safetensors in models/text_encoders"
_VAE_FILES = {"wan2.1-vae": "wan_2.1_vae.safetensors", "wan2.2-vae": "wan2.2_vae.safetensors"}


# --------------------------------------------------------------------------------------------- generations
def _generation(kind: WeightsKind, pair: bool) -> dict[str, str]:
    """The shipped configs of a diffusion file's model: transformer, pipeline facts, scheduler, VAE variant."""
    info = kind.info
    if info["in_dim"] == 48:
        return {"transformer": "wan2.2_ti2v_5b_transformer", "pipeline": "wan2.2_ti2v_5b_pipeline",
                "scheduler": "wan2.2_ti2v_5b_scheduler", "vae": "wan2.2-vae", "name": "Wan 2.2 TI2V 5B"}
    if pair:
        return {"transformer": "wan2.2_t2v_a14b_transformer", "pipeline": "wan2.2_t2v_a14b_pipeline",
                "scheduler": "wan_scheduler", "vae": "wan2.1-vae", "name": "Wan 2.2 T2V A14B"}
    big = info["dim"] >= 5120
    return {"transformer": "wan2.1_t2v_14b_transformer" if big else "wan2.1_t2v_1.3b_transformer",
            "pipeline": "wan2.1_pipeline", "scheduler": "wan_scheduler", "vae": "wan2.1-vae",
            "name": "Wan 2.1 T2V 14B" if big else "Wan 2.1 T2V 1.3B"}


def _check_diffusion_kind(path: Path, kind: WeightsKind) -> None:
    if kind.family != "wan" or kind.role != "diffusion_model":
        raise ModelLoadError(f"{path.name} is {kind.describe()}, not a Wan diffusion model (expected a file of "
                             f"models/diffusion_models such as wan2.1_t2v_1.3B_fp16.safetensors).")
    info = kind.info
    if info.get("other"):
        raise ModelLoadError(f"{path.name} is a Wan {info['other']} model; MotionKit loads the Wan text-to-video "
                             f"models from files (Wan 2.1 T2V 1.3B / 14B, Wan 2.2 TI2V 5B, Wan 2.2 T2V A14B).")
    if info.get("image") or info["in_dim"] != info["out_dim"]:
        raise ModelLoadError(f"{path.name} is a Wan image-to-video model ({kind.variant}); from single files "
                             f"MotionKit loads the text-to-video ones (Wan 2.1 T2V 1.3B / 14B, Wan 2.2 TI2V 5B, "
                             f"Wan 2.2 T2V A14B). Load image-to-video Wan from its diffusers folder.")
    if info["dim"] % HEAD_DIM:
        raise ModelLoadError(f"{path.name}: transformer width {info['dim']} is not a multiple of {HEAD_DIM} (Wan's "
                             f"head width; ComfyUI derives heads = width // {HEAD_DIM} too).")


# --------------------------------------------------------------------------------------------- configs
def wan_transformer_config_from_header(header: WeightsHeader, prefix: str = "",
                                       base: str = "wan2.1_t2v_1.3b_transformer") -> dict[str, Any]:
    """The ``WanTransformer3DModel`` config of a Wan diffusion file (original key names): the shipped config
    ``base`` with the numbers the shapes fix read from ``header``; heads = width // 128."""
    h = header.with_prefix_removed(prefix) if prefix else header
    config = single_file.shipped_config(base)
    config.pop("_class_name", None)
    patch = h.shape("patch_embedding.weight")  # [dim, in, pt, ph, pw]
    dim = int(h.shape("head.modulation")[-1])
    patch_size = [int(n) for n in patch[2:]]
    config.update(
        num_attention_heads=dim // HEAD_DIM, attention_head_dim=HEAD_DIM, in_channels=int(patch[1]),
        out_channels=int(h.shape("head.head.weight")[0]) // (patch_size[0] * patch_size[1] * patch_size[2]),
        patch_size=patch_size, text_dim=int(h.shape("text_embedding.0.weight")[1]),
        freq_dim=int(h.shape("time_embedding.0.weight")[1]), ffn_dim=int(h.shape("blocks.0.ffn.0.weight")[0]),
        num_layers=h.count("blocks.{}."), cross_attn_norm=h.has("blocks.0.norm3.weight"),
        qk_norm="rms_norm_across_heads" if h.has("blocks.0.self_attn.norm_q.weight") else None)
    return config


def umt5_config_from_header(header: WeightsHeader, prefix: str = "") -> dict[str, Any]:
    """The transformers ``UMT5Config`` of a umt5 file: shipped umt5-xxl with the shapes' numbers (layers,
    d_model, d_kv, d_ff, heads and buckets from ``relative_attention_bias``, vocabulary)."""
    h = header.with_prefix_removed(prefix) if prefix else header
    config = single_file.shipped_config("umt5_xxl")
    q = h.shape("encoder.block.0.layer.0.SelfAttention.q.weight")
    bias = h.shape("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")  # [buckets, heads]
    vocab = h.shape("shared.weight") or h.shape("encoder.embed_tokens.weight")
    gated = h.has("encoder.block.0.layer.1.DenseReluDense.wi_0.weight")
    ff = h.shape("encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight")
    heads = int(bias[1])
    config.update(vocab_size=int(vocab[0]), d_model=int(q[1]), num_heads=heads, d_kv=int(q[0]) // heads,
                  relative_attention_num_buckets=int(bias[0]), d_ff=int(ff[0]), num_layers=h.count("encoder.block.{}."),
                  num_decoder_layers=h.count("encoder.block.{}."), is_gated_act=gated,
                  feed_forward_proj="gated-gelu" if gated else "gelu")
    return config


def wan_vae_config_from_header(header: WeightsHeader, prefix: str = "", variant: str = "wan2.1-vae") -> dict[str, Any]:
    """The ``AutoencoderKLWan`` config of a Wan VAE file: the shipped 2.1 / 2.2 config with base width, decoder
    width, z channels and input channels from the shapes."""
    h = header.with_prefix_removed(prefix) if prefix else header
    config = single_file.shipped_config("wan2.2_vae" if variant == "wan2.2-vae" else "wan2.1_vae")
    config.pop("_class_name", None)
    conv_in = h.shape("encoder.conv1.weight")  # [base_dim, in_channels, 3, 3, 3]
    config.update(base_dim=int(conv_in[0]), z_dim=int(h.shape("conv2.weight")[0]))
    if variant == "wan2.2-vae":
        config.update(decoder_base_dim=int(h.shape("decoder.head.2.weight")[1]), in_channels=int(conv_in[1]),
                      out_channels=int(h.shape("decoder.head.2.weight")[0]))
    return config


# --------------------------------------------------------------------------------------------- conversion
def convert_wan22_vae_to_diffusers(checkpoint: dict[str, torch.Tensor], num_res_blocks: int = 2) -> dict[str, torch.Tensor]:
    """Wan 2.2 VAE (``comfy.ldm.wan.vae2_2`` / the original repository's names) -> diffusers ``AutoencoderKLWan``
    (``is_residual=True``). diffusers ships no converter for it; its down/up stages are nested
    (``encoder.downsamples.<i>.downsamples.<j>``: ``num_res_blocks`` residual blocks, then the resample;
    decoder: ``num_res_blocks + 1`` blocks, then the upsample), the rest is named as in the 2.1 VAE, so those keys
    go through diffusers' ``convert_wan_vae_to_diffusers``."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    residual = {"residual.0.gamma": "norm1.gamma", "residual.2.weight": "conv1.weight", "residual.2.bias": "conv1.bias",
                "residual.3.gamma": "norm2.gamma", "residual.6.weight": "conv2.weight", "residual.6.bias": "conv2.bias",
                "shortcut.weight": "conv_shortcut.weight", "shortcut.bias": "conv_shortcut.bias"}
    stage = re.compile(r"^(encoder\.downsamples|decoder\.upsamples)\.(\d+)\.(?:downsamples|upsamples)\.(\d+)\.(.+)$")
    renamed: dict[str, torch.Tensor] = {}
    rest: dict[str, torch.Tensor] = {}
    for key in list(checkpoint):
        m = stage.match(key)
        if m is None:
            rest[key] = checkpoint.pop(key)
            continue
        where, i, j, leaf = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        encoder = where.startswith("encoder")
        blocks = f"encoder.down_blocks.{i}" if encoder else f"decoder.up_blocks.{i}"
        resnets = num_res_blocks if encoder else num_res_blocks + 1
        if j < resnets and leaf in residual:
            new = f"{blocks}.resnets.{j}.{residual[leaf]}"
        elif j == resnets and (leaf.startswith("resample.") or leaf.startswith("time_conv.")):
            new = f"{blocks}.{'downsampler' if encoder else 'upsampler'}.{leaf}"
        else:
            new = key  # left as is: reported as unexpected by the loader
        renamed[new] = checkpoint.pop(key)
    renamed.update(convert_wan_vae_to_diffusers(rest))
    return renamed


# --------------------------------------------------------------------------------------------- loading helpers
def _keep_fp32(name: str, patterns: Any) -> bool:
    parts = name.split(".")
    return any(p in parts for p in (patterns or ()))


def _assign(module: nn.Module, state: dict[str, torch.Tensor], *, path: Path, what: str, dtype: torch.dtype,
            fp32_patterns: Any = (), tied: dict[str, str] | None = None) -> nn.Module:
    """Cast ``state`` tensor by tensor (the memory-mapped source of each is dropped once its copy exists) and
    assign it to the meta-built ``module``; every name must match both ways, with the same shapes."""
    expected = module.state_dict()
    tied = tied or {}
    missing = [k for k in expected if k not in state and k not in tied]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (needs {tuple(expected[k].shape)})" for k in state
             if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} weights {what} needs are not in the file (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} tensors of the file fit nowhere (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} have another shape (e.g. {'; '.join(wrong[:2])})")
        raise ModelLoadError(f"{path.name} does not fit {what}: {'; '.join(parts)}. Is it a complete, unmodified "
                             f"file of that model?")
    for name in list(state):
        tensor = state.pop(name)
        target = expected[name].dtype if not expected[name].is_floating_point() else (
            torch.float32 if _keep_fp32(name, fp32_patterns) else dtype)
        state[name] = tensor.to(dtype=target, copy=True) if tensor.is_floating_point() else tensor.clone()
        del tensor
    module.load_state_dict(state, strict=False, assign=True)
    state.clear()
    for name, source in tied.items():
        owner, _, leaf = name.rpartition(".")
        src_owner, _, src_leaf = source.rpartition(".")
        setattr(module.get_submodule(owner), leaf, getattr(module.get_submodule(src_owner), src_leaf))
    left = [n for n, p in list(module.named_parameters()) + list(module.named_buffers()) if p.is_meta]
    if left:  # pragma: no cover - the name check above makes this unreachable
        raise ModelLoadError(f"{path.name}: {what} has weights left unloaded ({', '.join(left[:3])}).")
    return module


def _empty(build: Callable[[], nn.Module]) -> nn.Module:
    from accelerate import init_empty_weights

    with init_empty_weights():  # parameters on meta, buffers (rope tables) real
        return build()


def _header_kind(path: Path) -> tuple[WeightsHeader, WeightsKind]:
    header = single_file.read_header(path)
    return header, single_file.identify(header)


# --------------------------------------------------------------------------------------------- components
def load_wan_transformer_file(path: str | Path, *, dtype: torch.dtype = torch.float32, base: str | None = None):
    """A ``WanTransformer3DModel`` from a Wan diffusion-model file (fp32/fp16/bf16/fp8/fp8 ``_scaled``)."""
    from diffusers import WanTransformer3DModel

    path = Path(path)
    header, kind = _header_kind(path)
    _check_diffusion_kind(path, kind)
    config = wan_transformer_config_from_header(header, kind.prefix, base or _generation(kind, False)["transformer"])
    model = _empty(lambda: WanTransformer3DModel.from_config(config))
    state = single_file.read_state_dict(path, prefix=kind.prefix or None, dtype=dtype)
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    state = convert_wan_transformer_to_diffusers(state)
    fp32 = WanTransformer3DModel._keep_in_fp32_modules if dtype != torch.float32 else ()
    return _assign(model, state, path=path, what=f"a Wan transformer of width {config['num_attention_heads'] * HEAD_DIM}",
                   dtype=dtype, fp32_patterns=fp32)


def read_spiece_model(path: str | Path) -> bytes | None:
    """The SentencePiece model a ComfyUI text-encoder file embeds (uint8 tensor ``spiece_model``), or None."""
    path = Path(path)
    header = single_file.read_header(path)
    if not header.has("spiece_model"):
        return None
    tensor = single_file.read_state_dict(path, prefix="spiece_model")[""]
    return tensor.to(torch.uint8).contiguous().numpy().tobytes()


def _check_umt5(path: Path, kind: WeightsKind) -> None:
    if kind.family != "umt5" or kind.role != "text_encoder":
        what = kind.describe() if kind.family != "unknown" else "no text encoder MotionKit recognises"
        hint = " (the T5-XXL of Flux / SD3 / LTX has another vocabulary and position bias)" if kind.family == "t5" else ""
        raise ModelLoadError(f"{path.name} is {what}{hint}; Wan's text encoder is umt5-xxl ({_TEXT_FILES}).")


def load_umt5_file(path: str | Path, *, dtype: torch.dtype = torch.float32, tokenizer: str | Path | None = None,
                   text_dim: int | None = None):
    """``(UMT5EncoderModel, tokenizer)`` from a umt5 text-encoder file; the tokenizer from the file's embedded
    ``spiece_model`` (ComfyUI's files carry it), else from the ``tokenizer`` folder."""
    from transformers import UMT5Config, UMT5EncoderModel

    path = Path(path)
    header, kind = _header_kind(path)
    _check_umt5(path, kind)
    config = umt5_config_from_header(header, kind.prefix)
    if text_dim is not None and config["d_model"] != text_dim:
        raise ModelLoadError(f"{path.name} is a umt5 of width {config['d_model']}; the Wan model reads text of width "
                             f"{text_dim} (umt5-xxl: 4096). Pick the text encoder made for it.")
    tok = _umt5_tokenizer(path, tokenizer, config["vocab_size"])
    model = _empty(lambda: UMT5EncoderModel(UMT5Config(**config)))
    skip = {"spiece_model"}
    state = single_file.read_state_dict(path, prefix=kind.prefix or None, dtype=dtype, skip=skip)
    state.pop("spiece_model", None)
    if "encoder.embed_tokens.weight" in state:
        if "shared.weight" not in state:
            state["shared.weight"] = state.pop("encoder.embed_tokens.weight")
        else:
            del state["encoder.embed_tokens.weight"]
    fp32 = UMT5EncoderModel._keep_in_fp32_modules if dtype == torch.float16 else ()
    model = _assign(model, state, path=path, what=f"a umt5 encoder ({config['num_layers']} blocks, width "
                    f"{config['d_model']})", dtype=dtype, fp32_patterns=fp32,
                    tied={"encoder.embed_tokens.weight": "shared.weight"})
    return model, tok


def _umt5_tokenizer(path: Path, folder: str | Path | None, vocab: int):
    if folder is not None:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, TypeError) as exc:
            raise ModelLoadError(f"cannot load the tokenizer folder {folder}: {exc}") from None
        if len(tok) < 16:
            raise ModelLoadError(f"the tokenizer folder {folder} loaded with only {len(tok)} tokens: it needs "
                                 f"tokenizer.json or spiece.model of umt5-xxl.")
    else:
        data = read_spiece_model(path)
        if data is None:
            raise ModelLoadError(
                f"{path.name} carries no tokenizer (no spiece_model tensor, which ComfyUI's umt5 files have). Give "
                f"tokenizer=<a folder with umt5-xxl's tokenizer.json or spiece.model, e.g. the tokenizer/ folder of a "
                f"Wan diffusers model>, or use {_TEXT_FILES}.")
        from .spm_proto import t5_tokenizer_from_spm

        tok = t5_tokenizer_from_spm(data, source=path.name, model_max_length=512)
    if len(tok) > vocab:
        raise ModelLoadError(f"the tokenizer of {path.name} has {len(tok)} tokens, more than the encoder's "
                             f"vocabulary ({vocab}): they do not belong together.")
    return tok


def _check_vae(path: Path, kind: WeightsKind, expected: str | None, model_name: str) -> None:
    if kind.family == "wan" and kind.role == "vae" and (expected is None or kind.variant == expected):
        return
    want = expected or "wan2.1-vae"
    name = {"wan2.1-vae": "the Wan 2.1 VAE", "wan2.2-vae": "the Wan 2.2 VAE"}[want]
    if kind.family == "wan" and kind.role == "vae":
        other = {"wan2.1-vae": "Wan 2.1", "wan2.2-vae": "Wan 2.2"}[kind.variant]
        raise ModelLoadError(f"{path.name} is the {other} VAE; {model_name} uses {name} ({_VAE_FILES[want]} in "
                             f"models/vae). Wan 2.2 TI2V 5B uses the 2.2 VAE, every other Wan the 2.1 VAE.")
    what = kind.describe() if kind.family != "unknown" else "no VAE MotionKit recognises"
    raise ModelLoadError(f"{path.name} is {what}, not a Wan VAE; {model_name} uses {name} ({_VAE_FILES[want]} in "
                         f"models/vae).")


def load_wan_vae_file(path: str | Path, *, expected: str | None = None, model_name: str = "this Wan model"):
    """An ``AutoencoderKLWan`` (float32) from ``wan_2.1_vae.safetensors`` / ``wan2.2_vae.safetensors``;
    ``expected`` = ``"wan2.1-vae"`` / ``"wan2.2-vae"`` refuses the other one."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    path = Path(path)
    header, kind = _header_kind(path)
    _check_vae(path, kind, expected, model_name)
    config = wan_vae_config_from_header(header, kind.prefix, kind.variant)
    if len(config["latents_mean"]) != config["z_dim"]:
        raise ModelLoadError(f"{path.name} has {config['z_dim']} latent channels; the {kind.variant} has "
                             f"{len(config['latents_mean'])}.")
    model = _empty(lambda: AutoencoderKLWan.from_config(config))
    state = single_file.read_state_dict(path, prefix=kind.prefix or None, dtype=torch.float32)
    if kind.variant == "wan2.2-vae":
        state = convert_wan22_vae_to_diffusers(state, config["num_res_blocks"])
    else:
        state = convert_wan_vae_to_diffusers(state)
    return _assign(model, state, path=path, what=f"the {kind.variant.replace('-vae', '').capitalize()} VAE",
                   dtype=torch.float32)


# --------------------------------------------------------------------------------------------- the model
def _expert_names(path: Path) -> tuple[bool, bool]:
    name = path.name.lower()
    return "high_noise" in name, "low_noise" in name


def check_expert_pair(path: Path, low: Path | None) -> Path | None:
    """The low-noise expert to load with the model file ``path`` (None for a single-expert Wan), or a
    ModelLoadError when the two do not make a Wan 2.2 A14B pair by ComfyUI's file names (``high_noise`` /
    ``low_noise``). Also what Load Video Model checks when a prompt is queued."""
    path = Path(path)
    high_name, low_name = _expert_names(path)
    if low is None:
        if high_name:
            partner = path.name.replace("high_noise", "low_noise")
            raise ModelLoadError(f"{path.name} is the high-noise expert of Wan 2.2 A14B, which runs only the first "
                                 f"steps; give its low-noise partner (e.g. {partner}, models/diffusion_models) as "
                                 f"low_noise_model.")
        if low_name:
            raise ModelLoadError(f"{path.name} is the low-noise expert of Wan 2.2 A14B: give the high-noise file as the "
                                 f"model and this one as low_noise_model.")
        return None
    low = Path(low)
    if low.resolve() == path.resolve():
        raise ModelLoadError(f"low_noise_model is the model file itself ({path.name}); give the low-noise expert.")
    if low_name and not high_name:
        raise ModelLoadError(f"{path.name} is the low-noise expert and {low.name} is given as low_noise_model: swap "
                             f"them (the model is the high-noise file).")
    if _expert_names(low)[0] and not _expert_names(low)[1]:
        raise ModelLoadError(f"{low.name} (given as low_noise_model) is a high-noise expert; give the low-noise file.")
    return low


def load_wan_files(request: Any) -> VideoModel:
    """The single-file loader of the ``wan`` family (``loading.SingleFileRequest`` -> :class:`WanVideoModel`)."""
    from .loading import _scheduler_class
    from .wan import WanVideoModel

    path, dtype = Path(request.path), request.dtype
    kind = request.kind if isinstance(request.kind, WeightsKind) else single_file.identify(path)
    _check_diffusion_kind(path, kind)
    low = check_expert_pair(request.path, request.low_noise_model)
    low_kind = None
    if low is not None:
        low_kind = single_file.identify(low)
        _check_diffusion_kind(low, low_kind)
        if low_kind.info != kind.info:
            raise ModelLoadError(f"{low.name} ({low_kind.variant}, width {low_kind.info['dim']}) is not the partner of "
                                 f"{path.name} ({kind.variant}, width {kind.info['dim']}): the two experts of Wan 2.2 "
                                 f"A14B have the same shapes.")
        if kind.info["in_dim"] == 48:
            raise ModelLoadError(f"{path.name} is a Wan 2.2 TI2V 5B model, which has one expert; give no "
                                 f"low_noise_model.")
    gen = _generation(kind, low is not None)
    # every file is checked (header only) before any weight is read: a bad companion loads nothing
    if request.text_encoder is None:
        raise ModelLoadError(f"{path.name} ({gen['name']}) needs its text encoder: give text_encoder = {_TEXT_FILES}.")
    if request.vae is None:
        raise ModelLoadError(f"{path.name} ({gen['name']}) needs its VAE: give vae = {_VAE_FILES[gen['vae']]} "
                             f"(models/vae).")
    te_path, vae_path = Path(request.text_encoder), Path(request.vae)
    te_header, te_kind = _header_kind(te_path)
    _check_umt5(te_path, te_kind)
    _check_vae(vae_path, single_file.identify(vae_path), gen["vae"], gen["name"])
    if request.tokenizer is None and not te_header.has("spiece_model"):
        _umt5_tokenizer(te_path, None, 0)  # raises the "carries no tokenizer" error

    logger.info("loading %s as %s from files (%s)", path.name, gen["name"], dtype)
    denoiser = load_wan_transformer_file(path, dtype=dtype, base=gen["transformer"])
    denoiser_2 = load_wan_transformer_file(low, dtype=dtype, base=gen["transformer"]) if low is not None else None
    text_encoder, tokenizer = load_umt5_file(te_path, dtype=dtype, tokenizer=request.tokenizer,
                                             text_dim=int(denoiser.config.text_dim))
    vae = load_wan_vae_file(vae_path, expected=gen["vae"], model_name=gen["name"])
    scheduler_config = single_file.shipped_config(gen["scheduler"])
    scheduler = _scheduler_class(scheduler_config.pop("_class_name", None)).from_config(scheduler_config)
    pipeline = single_file.shipped_config(gen["pipeline"])
    gc.collect()
    base_model = path.stem + (f"+{low.stem}" if low is not None else "")
    model = WanVideoModel(
        denoiser=denoiser, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        base_model=base_model, device=request.device, dtype=dtype, denoiser_2=denoiser_2,
        boundary_ratio=pipeline.get("boundary_ratio") if denoiser_2 is not None else None,
        expand_timesteps=bool(pipeline.get("expand_timesteps")))
    model.to(device=request.device)  # device only: the float32 VAE and modules stay float32
    model.requires_grad_(False)
    model.train(False)
    return model
