"""SD1.5 + AnimateDiff + SparseCtrl as ComfyUI users keep them: single files in the original layouts.

* ``models/checkpoints``: an SD1.5 checkpoint (LDM layout: ``model.diffusion_model.*`` UNet,
  ``first_stage_model.*`` VAE, ``cond_stage_model.transformer.text_model.*`` CLIP-L), ``.safetensors`` or
  ``.ckpt``. A UNet alone (``models/unet`` / ``models/diffusion_models``) loads too when ``vae`` (an SD VAE
  file, ``models/vae``) and ``text_encoder`` (a CLIP-L file, ``models/text_encoders`` / ``models/clip``) are
  given.
* ``models/animatediff_models``: a motion module in the original AnimateDiff layout (``mm_sd_v15_v2.ckpt``
  with a mid-block module, ``v3_sd15_mm.ckpt`` without; ``mm_sd_v15.ckpt`` = v1, 24 positions).
* ``models/controlnet``: SparseCtrl (``v3_sd15_sparsectrl_rgb.ckpt`` / ``..._scribble.ckpt``).

The result is what the diffusers-folder path gives: ``UNetMotionModel.from_unet2d(unet2d, adapter)`` + CLIP +
KL VAE, as an :class:`~motion_core.backbones.animatediff.AnimateDiffVideoModel`.

Conversion
    diffusers' own single-file converters rename the keys (``convert_ldm_unet_checkpoint``,
    ``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``, ``convert_animatediff_checkpoint_to_diffusers``
    -- also what diffusers' ``SparseControlNetModel.from_single_file`` uses) and build the configs
    (``create_unet_diffusers_config_from_ldm``, ``create_vae_diffusers_config_from_ldm``) from an LDM-style
    description that :func:`unet_ldm_params` / :func:`vae_ldm_params` read off the weights' shapes. The one key
    diffusers' motion-module converter drops, the sinusoidal position table (``attention_blocks.0.pos_encoder.pe``),
    is kept as the diffusers block's ``pos_embed.pe`` (the same table).

What the shapes determine and what is a fixed rule
    Read from shapes: channel widths per level, layers per block, attention per level, transformer depth,
    context width, in/out/latent channels, text width / layers / MLP width / vocabulary / positions, motion
    module widths, layers, positional-encoding length and mid block, SparseCtrl's condition channels and
    embedding widths. Fixed (not visible in shapes, from ``backbones/configs/*.json``): SD1.x UNet attention
    heads = 8 per layer, GroupNorm 32 groups everywhere (UNet, VAE, motion modules), CLIP heads = width / 64
    (at least 1), CLIP ``quick_gelu``, motion-module heads = 8, VAE scaling factor 0.18215, and the scheduler
    (AnimateDiff's DDIM, linear betas).

Memory
    Tensors are read memory-mapped (:func:`~motion_core.backbones.single_file.read_state_dict`), each
    diffusers module is built on the ``meta`` device and gets the file's tensors with
    ``load_state_dict(assign=True)``; a tensor cast to the compute dtype replaces its source at once, so the
    process never holds two full copies of the weights. The motion UNet is put together on ``meta`` by diffusers'
    own ``UNetMotionModel.from_unet2d`` (so its config is exactly the folder path's) and then given the UNet's
    and the motion module's tensors.

Tokenizer
    SD1.5 checkpoints carry none. Searched in this order: ``SingleFileRequest.tokenizer``; the host's own
    ``comfy/sd1_tokenizer`` (found with ``importlib.util.find_spec('comfy')``, nothing of ComfyUI imported); the
    Hugging Face cache of ``openai/clip-vit-large-patch14`` (never downloaded). Its vocabulary must match the
    text encoder's embedding rows.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..errors import ModelLoadError
from . import single_file
from .single_file import WeightsHeader

logger = logging.getLogger(__name__)

__all__ = [
    "CLIP_TOKENIZER_REPO",
    "find_clip_tokenizer",
    "load_motion_module_file",
    "load_sd15_components",
    "load_sparsectrl_file",
    "motion_adapter_config",
    "motion_module_variant",
    "sparsectrl_config",
    "text_encoder_config",
    "unet_ldm_params",
    "vae_ldm_params",
]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
CLIP_TOKENIZER_REPO = "openai/clip-vit-large-patch14"
#: SD1.x's UNet: 8 attention heads per layer (its ``num_heads``; diffusers keeps it in ``attention_head_dim``)
SD15_HEADS = 8

Shapes = Mapping[str, tuple[int, ...]]


# --------------------------------------------------------------------------------------------- helpers
def _shapes(header: WeightsHeader, prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {k[len(prefix):]: v[0] for k, v in header.tensors.items() if k.startswith(prefix)}


def _count(shapes: Shapes, pattern: str) -> int:
    return WeightsHeader(Path("."), {k: (v, "") for k, v in shapes.items()}).count(pattern)


def _need(shapes: Shapes, name: str, path: Path, what: str) -> tuple[int, ...]:
    shape = shapes.get(name)
    if shape is None:
        raise ModelLoadError(f"{path.name} is not {what}: it has no {name!r} tensor.")
    return shape


def _quiet_diffusers():
    from .loading import _diffusers_errors_only

    return _diffusers_errors_only()


def _build_on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    with _quiet_diffusers(), torch.device("meta"):
        return build()


def _assign(module: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype, *, path: Path, what: str,
            ignore: tuple[str, ...] = (), fix: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """Give a meta-built ``module`` the tensors of ``state`` (emptied as it goes: each tensor is cast to
    ``dtype`` and handed over, the source freed). Every weight must be present with its shape."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    for name in [k for k in state if k not in expected and any(k.endswith(s) for s in ignore)]:
        del state[name]
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    wrong = sorted(f"{k} {tuple(state[k].shape)} vs {expected[k]}" for k in state
                   if k in expected and tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        parts = []
        for label, names in (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", wrong)):
            if names:
                parts.append(f"{len(names)} {label} ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})")
        raise ModelLoadError(f"{path.name}: its {what} weights do not form the architecture read from its shapes: "
                             f"{'; '.join(parts)}. The file is damaged or of a variant MotionKit does not load.")
    ready: dict[str, torch.Tensor] = {}
    for name in list(state):
        tensor = state.pop(name)
        ready[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
        del tensor
    module.load_state_dict(ready, strict=True, assign=True)
    del ready
    if fix is not None:  # non-persistent buffers (no file has them) made again on the CPU
        fix(module)
    left = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if left:
        raise ModelLoadError(f"{path.name}: {what} has tensors the file does not give ({', '.join(left[:4])}).")
    return module


# --------------------------------------------------------------------------------------------- UNet
def unet_ldm_params(shapes: Shapes, path: Path) -> dict[str, Any]:
    """The LDM ``unet_config.params`` of an SD-style UNet (names without ``model.diffusion_model.``), from
    its shapes; ``num_heads`` is SD1.x's fixed 8."""
    what = "an SD UNet"
    conv_in = _need(shapes, "input_blocks.0.0.weight", path, what)
    model_channels, in_channels = conv_in[0], conv_in[1]
    out_channels = _need(shapes, "out.2.weight", path, what)[0]
    levels: list[list[tuple[int, bool]]] = [[]]
    for i in range(1, _count(shapes, "input_blocks.{}.")):
        if f"input_blocks.{i}.0.op.weight" in shapes:
            levels.append([])
            continue
        width = _need(shapes, f"input_blocks.{i}.0.out_layers.3.weight", path, what)[0]
        levels[-1].append((width, f"input_blocks.{i}.1.proj_in.weight" in shapes))
    layers = {len(level) for level in levels}
    if len(layers) != 1 or not levels[0]:
        raise ModelLoadError(f"{path.name}: its UNet levels have different numbers of layers ({sorted(layers)}).")
    context = next((s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight")), None)
    first_attention = next((k for k in sorted(shapes) if k.endswith(".proj_in.weight")), None)
    if context is None or first_attention is None:
        raise ModelLoadError(f"{path.name} is not an SD UNet with text cross-attention.")
    depth = _count(shapes, first_attention[: -len("proj_in.weight")] + "transformer_blocks.{}.")
    return {
        "in_channels": in_channels, "out_channels": out_channels, "model_channels": model_channels,
        "channel_mult": [level[0][0] // model_channels for level in levels],
        "attention_resolutions": [2 ** i for i, level in enumerate(levels) if level[0][1]],
        "num_res_blocks": layers.pop(), "transformer_depth": depth, "context_dim": context,
        "use_linear_in_transformer": len(shapes[first_attention]) == 2, "num_heads": SD15_HEADS,
    }


def vae_ldm_params(shapes: Shapes, path: Path) -> dict[str, Any]:
    """The LDM ``ddconfig`` of a KL VAE (names without ``first_stage_model.``), from its shapes."""
    what = "an SD VAE"
    conv_in = _need(shapes, "encoder.conv_in.weight", path, what)
    ch = conv_in[0]
    levels = _count(shapes, "encoder.down.{}.")
    if not levels:
        raise ModelLoadError(f"{path.name} is not an SD VAE in the original layout (no encoder.down.* blocks).")
    return {
        "double_z": True, "z_channels": _need(shapes, "decoder.conv_in.weight", path, what)[1],
        "resolution": 256, "in_channels": conv_in[1], "out_ch": _need(shapes, "decoder.conv_out.weight", path, what)[0],
        "ch": ch, "ch_mult": [_need(shapes, f"encoder.down.{i}.block.0.conv2.weight", path, what)[0] // ch
                              for i in range(levels)],
        "num_res_blocks": _count(shapes, "encoder.down.0.block.{}."), "attn_resolutions": [], "dropout": 0.0,
    }


def _original_config(unet: dict[str, Any] | None, vae: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {"first_stage_config": {"params": {"ddconfig": vae}}, "scale_factor": 0.18215}
    if unet is not None:
        params["unet_config"] = {"params": unet}
    return {"model": {"params": params}}


def _unet_config(unet_params: dict[str, Any], vae_params: dict[str, Any], checkpoint: Mapping) -> dict[str, Any]:
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    config = single_file.shipped_config("sd15_unet")
    config.update(create_unet_diffusers_config_from_ldm(_original_config(unet_params, vae_params), checkpoint))
    return config


def _vae_config(vae_params: dict[str, Any], checkpoint: Mapping) -> dict[str, Any]:
    from diffusers.loaders.single_file_utils import create_vae_diffusers_config_from_ldm

    config = single_file.shipped_config("sd15_vae")
    config.update(create_vae_diffusers_config_from_ldm(_original_config(None, vae_params), checkpoint))
    return config


# --------------------------------------------------------------------------------------------- CLIP
def text_encoder_config(shapes: Shapes, path: Path) -> dict[str, Any]:
    """A ``CLIPTextConfig`` dict for CLIP text weights in transformers' names (``text_model.*``)."""
    what = "a CLIP text encoder"
    tokens = _need(shapes, "text_model.embeddings.token_embedding.weight", path, what)
    config = single_file.shipped_config("sd15_text_encoder")
    width = tokens[1]
    config.update(
        vocab_size=tokens[0], hidden_size=width, projection_dim=width, num_attention_heads=max(1, width // 64),
        max_position_embeddings=_need(shapes, "text_model.embeddings.position_embedding.weight", path, what)[0],
        num_hidden_layers=_count(shapes, "text_model.encoder.layers.{}."),
        intermediate_size=_need(shapes, "text_model.encoder.layers.0.mlp.fc1.weight", path, what)[0])
    return config


def _clip_state(path: Path, prefix: str | None) -> dict[str, torch.Tensor]:
    """CLIP text weights in transformers' names, from a checkpoint (``prefix``) or a text encoder file."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    if prefix is None:  # a text encoder file: transformers' names, maybe under a prefix
        header = single_file.read_header(path)
        found = next((p for p in ("", CLIP_PREFIX, "cond_stage_model.", "clip_l.transformer.", "transformer.")
                      if header.has(p + "text_model.embeddings.token_embedding.weight")), None)
        if found is None:
            kind = single_file.identify(header)
            raise ModelLoadError(f"{path.name} is {kind.describe()}, not a CLIP-L text encoder (expected "
                                 f"text_model.* weights, as clip_l.safetensors in models/text_encoders has).")
        state = single_file.read_state_dict(path, prefix=found)
        return state
    state = single_file.read_state_dict(path, prefix=prefix)
    # older checkpoints (transformers < 4.x) have no text_model level
    state = {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}
    return convert_ldm_clip_checkpoint({CLIP_PREFIX + k: v for k, v in state.items()})


def _text_encoder(state: dict[str, torch.Tensor], path: Path, dtype: torch.dtype):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(**text_encoder_config({k: tuple(v.shape) for k, v in state.items()}, path))
    model = _build_on_meta(lambda: CLIPTextModel(config))
    if "embeddings.token_embedding.weight" in model.state_dict():  # transformers 5 names it without text_model.
        state = {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in state.items()}
    def position_ids(module: nn.Module) -> None:
        embeddings = getattr(module, "text_model", module).embeddings
        if getattr(embeddings, "position_ids", None) is not None and embeddings.position_ids.is_meta:
            embeddings.register_buffer("position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)),
                                       persistent=False)

    return _assign(model, state, dtype, path=path, what="CLIP text encoder",
                   ignore=("position_ids", "text_projection.weight", "logit_scale"), fix=position_ids)


def _host_tokenizer_folder() -> Path | None:
    try:
        spec = importlib.util.find_spec("comfy")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "sd1_tokenizer"
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            return folder
    return None


def _cached_tokenizer_folder() -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - comes with diffusers
        return None
    found = [try_to_load_from_cache(CLIP_TOKENIZER_REPO, name) for name in ("vocab.json", "merges.txt")]
    if all(isinstance(f, str) for f in found) and Path(found[0]).parent == Path(found[1]).parent:
        return Path(found[0]).parent
    return None


def find_clip_tokenizer(explicit: str | os.PathLike | None, *, vocab_size: int, max_length: int,
                        for_file: Path | None = None):
    """The CLIP tokenizer for an SD1.5 text encoder (see the module notes for the search order)."""
    from transformers import CLIPTokenizer

    tried = []
    candidates = []
    if explicit is not None:
        candidates.append(("the tokenizer folder given", Path(explicit)))
    else:
        for label, find in (("ComfyUI's comfy/sd1_tokenizer", _host_tokenizer_folder),
                            (f"the Hugging Face cache of {CLIP_TOKENIZER_REPO}", _cached_tokenizer_folder)):
            folder = find()
            if folder is not None:
                candidates.append((label, folder))
            else:
                tried.append(label)
    for label, folder in candidates:
        if not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()) \
                and not (folder / "tokenizer.json").is_file():
            raise ModelLoadError(f"{label} ({folder}) is not a CLIP tokenizer folder (vocab.json + merges.txt).")
        try:
            tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True, model_max_length=max_length)
        except (OSError, ValueError, TypeError) as exc:
            raise ModelLoadError(f"cannot read the CLIP tokenizer in {folder}: {exc}") from None
        if len(tokenizer) != vocab_size:
            raise ModelLoadError(
                f"the CLIP tokenizer in {folder} ({label}) has {len(tokenizer)} tokens but the text encoder"
                f"{f' of {for_file.name}' if for_file else ''} has {vocab_size} token embeddings: they do not "
                f"belong together (SD1.5's CLIP-L tokenizer has 49408).")
        tokenizer.model_max_length = max_length
        logger.info("CLIP tokenizer: %s (%s)", folder, label)
        return tokenizer
    raise ModelLoadError(
        f"{for_file.name if for_file else 'this SD1.5 model'} carries no tokenizer, and none was found "
        f"(looked in {' and '.join(tried)}). Give a CLIP tokenizer folder (vocab.json + merges.txt): "
        f"--tokenizer DIR on the command line (e.g. --tokenizer ComfyUI/comfy/sd1_tokenizer), tokenizer=DIR in "
        f"Python; inside ComfyUI the host's own is used.")


# --------------------------------------------------------------------------------------------- SD1.5
def _ldm_state(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix`` (kept in the names: diffusers' converters expect them)."""
    return {prefix + k: v for k, v in single_file.read_state_dict(path, prefix=prefix).items()}


def _vae_source(checkpoint: Path, vae: Path | None) -> tuple[Path, str]:
    """(file, prefix) of the VAE to use: the ``vae`` file when given, else the checkpoint's."""
    if vae is None:
        header = single_file.read_header(checkpoint)
        if not header.has(VAE_PREFIX + "encoder.conv_in.weight"):
            raise ModelLoadError(f"{checkpoint.name} has no VAE (it is a UNet alone): give an SD VAE file "
                                 f"(models/vae) as vae.")
        return checkpoint, VAE_PREFIX
    header = single_file.read_header(vae)
    for prefix in ("", VAE_PREFIX, "vae."):
        if header.has(prefix + "encoder.down.0.block.0.conv1.weight"):
            return vae, prefix
    kind = single_file.identify(header)
    layout = " (it is in diffusers' layout; use the original-layout .safetensors)" if header.has(
        "encoder.down_blocks.0.resnets.0.conv1.weight") else ""
    raise ModelLoadError(f"{vae.name} is {kind.describe()}, not an SD VAE in the original layout "
                         f"(encoder.down.*, as models/vae files have){layout}.")


def load_sd15_components(path: Path, *, kind: Any, dtype: torch.dtype, vae: Path | None = None,
                         text_encoder: Path | None = None, tokenizer: Path | None = None) -> dict[str, Any]:
    """``unet`` (UNet2DConditionModel, weights assigned), ``vae``, ``text_encoder``, ``tokenizer`` and
    ``scheduler`` of an SD1.5 checkpoint (or a UNet file + ``vae`` + ``text_encoder`` files)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    unet_prefix = kind.prefix
    header = single_file.read_header(path)
    if kind.role == "diffusion_model" and (vae is None or text_encoder is None):
        raise ModelLoadError(
            f"{path.name} is an SD1.5 UNet alone (no VAE, no text encoder). Use the SD1.5 checkpoint "
            f"(models/checkpoints), or give vae=<SD VAE file from models/vae> and text_encoder=<CLIP-L file from "
            f"models/text_encoders> with it.")
    vae_file, vae_prefix = _vae_source(path, vae)
    vae_shapes = _shapes(single_file.read_header(vae_file), vae_prefix)
    vae_params = vae_ldm_params(vae_shapes, vae_file)

    # --- UNet
    unet_params = unet_ldm_params(_shapes(header, unet_prefix), path)
    raw = {UNET_PREFIX + k: v for k, v in single_file.read_state_dict(path, prefix=unet_prefix).items()}
    config = _unet_config(unet_params, vae_params, raw)
    with _quiet_diffusers():
        state = convert_ldm_unet_checkpoint(raw, config)
    del raw
    unet = _build_on_meta(lambda: UNet2DConditionModel.from_config(config))
    _assign(unet, state, dtype, path=path, what="UNet")

    # --- VAE
    raw = {VAE_PREFIX + k: v for k, v in single_file.read_state_dict(vae_file, prefix=vae_prefix).items()}
    vae_config = _vae_config(vae_params, raw)
    state = convert_ldm_vae_checkpoint(raw, vae_config)
    del raw
    vae_model = _build_on_meta(lambda: AutoencoderKL.from_config(vae_config))
    _assign(vae_model, state, dtype, path=vae_file, what="VAE")

    # --- CLIP text encoder + tokenizer
    if text_encoder is not None:
        clip_file, clip = text_encoder, _clip_state(text_encoder, None)
    else:
        clip_prefix = next((p for p in (CLIP_PREFIX, "cond_stage_model.model.")
                            if any(k.startswith(p) for k in header.tensors)), None)
        if clip_prefix != CLIP_PREFIX:
            raise ModelLoadError(f"{path.name} has no CLIP-L text encoder under {CLIP_PREFIX}* (an SD2 / OpenCLIP "
                                 f"checkpoint?): MotionKit's AnimateDiff needs SD1.5.")
        clip_file, clip = path, _clip_state(path, CLIP_PREFIX)
    text_model = _text_encoder(clip, clip_file, dtype)
    context = unet.config.cross_attention_dim
    if text_model.config.hidden_size != context:
        raise ModelLoadError(f"the text encoder of {clip_file.name} is {text_model.config.hidden_size} wide, the UNet "
                             f"of {path.name} expects {context}: they are not one SD1.5 model.")
    tokenizer_model = find_clip_tokenizer(tokenizer, vocab_size=text_model.config.vocab_size,
                                          max_length=text_model.config.max_position_embeddings, for_file=path)
    scheduler = DDIMScheduler.from_config(single_file.shipped_config("sd15_animatediff_scheduler"))
    return {"unet": unet, "vae": vae_model, "text_encoder": text_model, "tokenizer": tokenizer_model,
            "scheduler": scheduler}


# --------------------------------------------------------------------------------------------- motion modules
_MM = "down_blocks.{i}.motion_modules.{j}.temporal_transformer."


def _strip_module_prefix(shapes: Shapes) -> str:
    for prefix in ("", "module.", "model."):
        if any(k.startswith(prefix + "down_blocks.") for k in shapes):
            return prefix
    return ""


def motion_module_variant(shapes: Shapes) -> str:
    """``sdxl``, ``v2`` (mid block), ``v1`` (24 positions) or ``v3`` (SD1.5, 32 positions, no mid block)."""
    levels = _count(shapes, "down_blocks.{}.motion_modules.")
    if levels == 3:
        return "sdxl"
    if any(k.startswith("mid_block.motion_modules.") for k in shapes):
        return "v2"
    pe = next((s for k, s in shapes.items() if k.endswith("pos_encoder.pe")), None)
    return "v1" if pe is not None and pe[1] == 24 else "v3"


def motion_adapter_config(shapes: Shapes, path: Path) -> dict[str, Any]:
    """A diffusers ``MotionAdapter`` config for an original-layout motion module, from its shapes."""
    what = "an AnimateDiff motion module"
    levels = _count(shapes, "down_blocks.{}.motion_modules.")
    if not levels:
        raise ModelLoadError(f"{path.name} is not {what} (no down_blocks.*.motion_modules.* weights).")
    if any(k.startswith(("conv_in.", "fps_embedding.", "motion_embedding.", "img_encoder.")) for k in shapes):
        raise ModelLoadError(f"{path.name} is a PIA / FancyVideo / AnimateLCM-I2V motion module (extra input "
                             f"layers): MotionKit loads AnimateDiff v1/v2/v3 motion modules.")
    widths = [_need(shapes, _MM.format(i=i, j=0) + "proj_in.weight", path, what)[0] for i in range(levels)]
    layers = _count(shapes, "down_blocks.0.motion_modules.{}.")
    up_layers = _count(shapes, "up_blocks.0.motion_modules.{}.")
    if up_layers != layers + 1:
        raise ModelLoadError(f"{path.name}: {layers} motion modules per down block but {up_layers} per up block "
                             f"(AnimateDiff has one more on the way up): not {what}.")
    pe = next((s for k, s in shapes.items() if k.endswith("pos_encoder.pe")), None)
    if pe is None:
        raise ModelLoadError(f"{path.name} has no positional encoding (pos_encoder.pe): an AnimateLCM / HotShot-style "
                             f"motion module, which MotionKit does not load.")
    attention_blocks = _count(shapes, _MM.format(i=0, j=0) + "transformer_blocks.0.attention_blocks.{}.")
    if attention_blocks != 2:
        raise ModelLoadError(f"{path.name}: {attention_blocks} attention blocks per motion transformer (AnimateDiff "
                             f"v1-v3 have 2).")
    mid = any(k.startswith("mid_block.motion_modules.") for k in shapes)
    config = single_file.shipped_config("animatediff_motion_adapter_v2" if mid else "animatediff_motion_adapter_v3")
    config.update(
        block_out_channels=widths, motion_layers_per_block=layers, motion_max_seq_length=pe[1],
        use_motion_mid_block=mid,
        motion_transformer_layers_per_block=_count(shapes, _MM.format(i=0, j=0) + "transformer_blocks.{}."))
    if mid:
        config["motion_transformer_layers_per_mid_block"] = _count(
            shapes, "mid_block.motion_modules.0.temporal_transformer.transformer_blocks.{}.")
    return config


def _motion_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original motion-module names -> diffusers' (their converter), the position table kept as ``pos_embed.pe``."""
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    tables = {k: v for k, v in state.items() if k.endswith("attention_blocks.0.pos_encoder.pe")}
    converted = convert_animatediff_checkpoint_to_diffusers(state)
    state.clear()
    for key, table in tables.items():
        stem = key[: -len("attention_blocks.0.pos_encoder.pe")].replace(".temporal_transformer", "")
        converted[stem + "pos_embed.pe"] = table
    return converted


def load_motion_module_file(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32):
    """A diffusers ``MotionAdapter`` from an original-layout motion module file (``models/animatediff_models``)."""
    from diffusers import MotionAdapter

    path = Path(path)
    header = single_file.read_header(path)
    prefix = _strip_module_prefix(_shapes(header))
    shapes = _shapes(header, prefix)
    kind = single_file.identify(header)
    if kind.role != "motion_module":
        raise ModelLoadError(f"{path.name} is {kind.describe()}, not an AnimateDiff motion module "
                             f"(models/animatediff_models, e.g. v3_sd15_mm.ckpt or mm_sd_v15_v2.ckpt).")
    config = motion_adapter_config(shapes, path)
    state = _motion_state(single_file.read_state_dict(path, prefix=prefix or None))
    adapter = _build_on_meta(lambda: MotionAdapter.from_config(config))
    _assign(adapter, state, dtype, path=path, what="motion module")
    adapter.register_to_config(_name_or_path=str(path))
    return adapter


def _describe_unet(config: Mapping) -> str:
    return f"{len(config['block_out_channels'])} levels {'/'.join(map(str, config['block_out_channels']))}"


def _check_adapter_fits(unet_config: Mapping, adapter, checkpoint: Path, module_name: str) -> None:
    a = adapter.config
    problems = []
    if list(a["block_out_channels"]) != list(unet_config["block_out_channels"]):
        problems.append(f"the motion module has {_describe_unet(a)}, the UNet {_describe_unet(unet_config)}")
    if a["motion_layers_per_block"] != unet_config["layers_per_block"]:
        problems.append(f"{a['motion_layers_per_block']} vs {unet_config['layers_per_block']} layers per block")
    if problems:
        sdxl = len(a["block_out_channels"]) == 3
        raise ModelLoadError(
            f"the motion module {module_name} does not fit the checkpoint {checkpoint.name}: {'; '.join(problems)}. "
            + ("It is an SDXL motion module; use an SD1.5 one (v3_sd15_mm.ckpt, mm_sd_v15_v2.ckpt)." if sdxl else
               "Use a motion module for SD1.5 with an SD1.5 checkpoint."))


def _motion_unet(unet2d, adapter, dtype: torch.dtype, path: Path):
    """``UNetMotionModel.from_unet2d(unet2d, adapter)`` without a second copy: diffusers assembles it on meta
    (its config exactly as the folder path's), then the UNet's and the motion module's tensors are moved in."""
    from diffusers import UNetMotionModel

    meta_unet = _build_on_meta(lambda: type(unet2d).from_config(unet2d.config))
    meta_adapter = _build_on_meta(lambda: type(adapter).from_config(adapter.config))
    with _quiet_diffusers(), torch.device("meta"):
        model = UNetMotionModel.from_unet2d(meta_unet, meta_adapter)
    del meta_unet, meta_adapter
    state = dict(unet2d.state_dict())
    state.update(adapter.state_dict())
    unet2d.to("meta")
    adapter.to("meta")
    return _assign(model, state, dtype, path=path, what="motion UNet")


def load_animatediff_file(request) -> Any:
    """The single-file loader of the ``animatediff`` family (registered with ``register_single_file_family``)."""
    from diffusers import MotionAdapter
    from .animatediff import AnimateDiffVideoModel
    from .loading import _finish, load_motion_adapter

    path = request.path
    source = request.motion_adapter
    if source is None:
        raise ModelLoadError(
            f"{path.name} is an SD1.5 image model; AnimateDiff also needs a motion module: give motion_adapter="
            f"<a file from models/animatediff_models, e.g. v3_sd15_mm.ckpt> (or a MotionAdapter folder).")
    module_name = source.name if isinstance(source, Path) else (
        Path(os.fspath(source)).name if isinstance(source, (str, os.PathLike)) else type(source).__name__)
    if isinstance(source, (str, os.PathLike)) and single_file.is_weights_file(source):
        header = single_file.read_header(source)
        variant = motion_module_variant(_shapes(header, _strip_module_prefix(_shapes(header))))
        if variant == "sdxl":
            raise ModelLoadError(f"the motion module {module_name} is an SDXL motion module, the checkpoint "
                                 f"{path.name} is SD1.5: use an SD1.5 motion module (v3_sd15_mm.ckpt, "
                                 f"mm_sd_v15_v2.ckpt) with it.")
    parts = load_sd15_components(path, kind=request.kind, dtype=request.dtype, vae=request.vae,
                                 text_encoder=request.text_encoder, tokenizer=request.tokenizer)
    unet2d = parts.pop("unet")
    adapter = load_motion_adapter(source, dtype=request.dtype)
    if not isinstance(adapter, MotionAdapter):  # pragma: no cover - load_motion_adapter checks
        raise ModelLoadError(f"{module_name} is not a motion module.")
    _check_adapter_fits(unet2d.config, adapter, path, module_name)
    denoiser = _motion_unet(unet2d, adapter, request.dtype, path)
    del unet2d
    stem = Path(module_name).stem if isinstance(source, (str, os.PathLike)) else str(
        adapter.config.get("_name_or_path") or "motion_adapter")
    model = AnimateDiffVideoModel(denoiser=denoiser, base_model=f"{path.stem}+{Path(stem).stem}",
                                  device=request.device, dtype=request.dtype, **parts)
    return _finish(model, request)


# --------------------------------------------------------------------------------------------- SparseCtrl
def sparsectrl_config(shapes: Shapes, path: Path) -> tuple[dict[str, Any], str]:
    """A diffusers ``SparseControlNetModel`` config and the kind (``rgb`` / ``scribble``), from the shapes:
    rgb conditions on a latent through one convolution (``controlnet_cond_embedding.weight``), scribble on an
    image through the ControlNet embedding; one more input channel than the condition = the mask channel."""
    what = "a SparseCtrl model"
    conv_in = _need(shapes, "conv_in.weight", path, what)
    in_channels = conv_in[1]
    simplified = "controlnet_cond_embedding.weight" in shapes
    kind = "rgb" if simplified else "scribble"
    config = single_file.shipped_config(f"sparsectrl_{kind}")
    if simplified:
        cond_in = shapes["controlnet_cond_embedding.weight"][1]
        image = in_channels
    else:
        cond_in = _need(shapes, "controlnet_cond_embedding.conv_in.weight", path, what)[1]
        image = 3
        stages = _count(shapes, "controlnet_cond_embedding.blocks.{}.") // 2
        config["conditioning_embedding_out_channels"] = [shapes["controlnet_cond_embedding.conv_in.weight"][0]] + [
            _need(shapes, f"controlnet_cond_embedding.blocks.{2 * i + 1}.weight", path, what)[0]
            for i in range(stages)]
    if cond_in not in (image, image + 1):
        raise ModelLoadError(f"{path.name}: its {kind} condition embedding takes {cond_in} channels; SparseCtrl "
                             f"{kind} takes {image} (+1 mask).")
    levels = _count(shapes, "down_blocks.{}.")
    widths = [_need(shapes, f"down_blocks.{i}.resnets.0.conv2.weight", path, what)[0] for i in range(levels)]
    context = next((s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight")), None)
    pe = next((s for k, s in shapes.items() if k.endswith("pos_encoder.pe")), None)
    proj = next((s for k, s in sorted(shapes.items()) if k.startswith("down_blocks.") and ".attentions." in k
                 and k.endswith("proj_in.weight")), None)
    config.update(
        in_channels=in_channels, conditioning_channels=image,
        concat_conditioning_mask=cond_in == image + 1, block_out_channels=widths,
        layers_per_block=_count(shapes, "down_blocks.0.resnets.{}."),
        down_block_types=["CrossAttnDownBlockMotion" if f"down_blocks.{i}.attentions.0.proj_in.weight" in shapes
                          else "DownBlockMotion" for i in range(levels)])
    if context is not None:
        config["cross_attention_dim"] = context
    if pe is not None:
        config["motion_max_seq_length"] = pe[1]
    if proj is not None:
        config["use_linear_projection"] = len(proj) == 2
    return config, kind


def load_sparsectrl_file(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32):
    """A diffusers ``SparseControlNetModel`` from a SparseCtrl file (``models/controlnet``)."""
    from diffusers import SparseControlNetModel

    path = Path(path)
    header = single_file.read_header(path)
    prefix = next((p for p in ("", "controlnet.", "module.") if header.has(p + "conv_in.weight")), None)
    kind = single_file.identify(header)
    if prefix is None or not any(".motion_modules." in k for k in header.tensors):
        raise ModelLoadError(f"{path.name} is {kind.describe()}, not a SparseCtrl model (models/controlnet: "
                             f"v3_sd15_sparsectrl_rgb.ckpt or v3_sd15_sparsectrl_scribble.ckpt).")
    config, _ = sparsectrl_config(_shapes(header, prefix), path)
    state = _motion_state(single_file.read_state_dict(path, prefix=prefix or None))
    controlnet = _build_on_meta(lambda: SparseControlNetModel.from_config(config))
    _assign(controlnet, state, dtype, path=path, what="SparseCtrl")
    controlnet.register_to_config(_name_or_path=str(path))
    return controlnet


def _register() -> None:
    from .loading import register_single_file_family

    register_single_file_family("animatediff", load_animatediff_file)


_register()
