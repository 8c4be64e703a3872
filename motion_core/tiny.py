"""Tiny random models of every family, built from config and saved in diffusers layout.

Used by the tests and by the CLI's offline smoke test: no download, no network, deterministic for a seed.
The folders are real diffusers folders (``model_index.json`` + one subfolder per component, safetensors),
so they go through the same loading code as a real model.

Sizes (chosen so that a 2-step, 8-frame, 64x64 sample takes well under a second on a CPU):

* VAE: ``block_out_channels (32, 32, 64)`` -> **vae scale factor 4**, 4 latent channels, SD scaling
  0.18215. (Factor 2 makes a 64x64 clip a 32x32 latent, and the spatial attention over 1024 tokens makes
  one UNet forward about 5x slower on a CPU.)
* UNet3D: the tiny config of reference/motion_director_and_custom_motion.md section 4 (1,328,900 params);
  one downsampler -> **size multiple 8** (4 x 2); ``sample_size 16`` -> default size 64x64.
* AnimateDiff (default): SD-style UNet2D (32, 64) + a motion adapter with a mid-block motion module
  (v2-like) -> size multiple 8. ``four_level=True``: the 4-level config of reference/motion_clone.md section
  16 (``up_blocks.1`` is the second decoder stage with 3 motion modules, no mid-block motion module, like
  AnimateDiff v3) -> size multiple 32 (4 x 2^3).
* Text: a CLIP BPE tokenizer written from the 256 byte characters, their ``</w>`` forms, a few merges
  and the 2 special tokens (:data:`TINY_VOCAB_SIZE` entries), ``model_max_length`` **77** as in the real
  CLIP models (prompt truncation behaves like the real thing); a 2-layer CLIPTextModel, hidden size 32.

Every weight of the denoisers (and motion adapters) is perturbed by ``0.02 * randn`` (seeded): the
zero-initialised output projections (``proj_out``, ``conv4`` of the temporal convolutions, motion module
``proj_out``) would otherwise make temporal modules no-ops and hide bugs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "TinySD15Files",
    "ldm_unet_state",
    "ldm_vae_state",
    "original_motion_state",
    "sd15_checkpoint_state",
    "sparsectrl_file_state",
    "tiny_sd15_modules",
    "write_full_size_sd15_files",
    "write_tiny_sd15_files",
    "write_tiny_sparsectrl_file",
    "build_tiny_sparsectrl",
    "tiny_sparsectrl",
    "TINY_FAMILIES",
    "TINY_MODEL_MAX_LENGTH",
    "TINY_VOCAB_SIZE",
    "TinyAnimateDiffPaths",
    "build_tiny_animatediff",
    "build_tiny_model",
    "build_tiny_unet3d",
    "ensure_tiny_model",
    "write_tiny_clip_tokenizer",
]

#: bump when the tiny configs change, so cached folders are rebuilt
TINY_FORMAT_VERSION = 1
TINY_MODEL_MAX_LENGTH = 77
TINY_HIDDEN = 32

# A few BPE merges so that common test words are single tokens ("the", "cat", "dog", "car", "running").
_MERGES: tuple[tuple[str, str], ...] = (
    ("t", "h"), ("th", "e</w>"),
    ("c", "a"), ("ca", "t</w>"), ("ca", "r</w>"),
    ("d", "o"), ("do", "g</w>"),
    ("i", "n"), ("in", "g</w>"),
    ("r", "u"), ("ru", "n"), ("run", "n"), ("runn", "ing</w>"),
)
_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
TINY_VOCAB_SIZE = 256 * 2 + len(_MERGES) + len(_SPECIAL_TOKENS)

TINY_FAMILIES = ("unet3d", "animatediff", "wan")
_MARKER = "motionkit_tiny.json"


@contextlib.contextmanager
def _quiet():
    """Silence diffusers/transformers logging and progress bars while building (restored after)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    saved = (dlog.get_verbosity(), tlog.get_verbosity(), dlog.is_progress_bar_enabled(),
             tlog.is_progress_bar_enabled())
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        dlog.set_verbosity(saved[0])
        tlog.set_verbosity(saved[1])
        (dlog.enable_progress_bar if saved[2] else dlog.disable_progress_bar)()
        (tlog.enable_progress_bar if saved[3] else tlog.disable_progress_bar)()


def _byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the 256 byte values (GPT-2/CLIP scheme):
    printable Latin-1 bytes stand for themselves, the others are shifted to code points 256+."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(
        range(ord("®"), ord("ÿ") + 1))
    shifted = 0
    alphabet = []
    for byte in range(256):
        if byte in printable:
            alphabet.append(chr(byte))
        else:
            alphabet.append(chr(256 + shifted))
            shifted += 1
    return alphabet


def write_tiny_clip_tokenizer(folder: str | os.PathLike, *, model_max_length: int = TINY_MODEL_MAX_LENGTH):
    """Write a CLIP BPE tokenizer (vocab.json, merges.txt, configs) into ``folder``, load it back with
    ``CLIPTokenizer.from_pretrained`` and return it. Raises RuntimeError if transformers does not load it
    with the intended vocabulary size (transformers 5 can silently return a degenerate tokenizer)."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + [a + b for a, b in _MERGES] + list(_SPECIAL_TOKENS)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != TINY_VOCAB_SIZE:  # a merge result duplicating an existing token
        raise RuntimeError(f"tiny vocabulary has duplicates ({len(vocab)} != {TINY_VOCAB_SIZE})")
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in _MERGES), encoding="utf-8")
    specials = {"bos_token": _SPECIAL_TOKENS[0], "eos_token": _SPECIAL_TOKENS[1],
                "pad_token": _SPECIAL_TOKENS[1], "unk_token": _SPECIAL_TOKENS[1]}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length, "do_lower_case": True,
         "errors": "replace", **specials}), encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    if len(tokenizer) != TINY_VOCAB_SIZE or tokenizer.model_max_length != model_max_length:
        raise RuntimeError(
            f"the tiny CLIP tokenizer in {folder} loaded with {len(tokenizer)} tokens and model_max_length "
            f"{tokenizer.model_max_length} (expected {TINY_VOCAB_SIZE} and {model_max_length})")
    return tokenizer


def _tiny_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=TINY_VOCAB_SIZE, hidden_size=TINY_HIDDEN, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=TINY_MODEL_MAX_LENGTH, projection_dim=TINY_HIDDEN,
        bos_token_id=TINY_VOCAB_SIZE - 2, eos_token_id=TINY_VOCAB_SIZE - 1, pad_token_id=TINY_VOCAB_SIZE - 1,
    )
    return CLIPTextModel(config)


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 32, 64), layers_per_block=1, norm_num_groups=32, sample_size=64,
    )


def _ddim_scheduler(beta_schedule: str):
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule=beta_schedule,
        steps_offset=1, set_alpha_to_one=False, clip_sample=False, prediction_type="epsilon",
    )


@torch.no_grad()
def _perturb(module: nn.Module, generator: torch.Generator, std: float = 0.02) -> None:
    for p in module.parameters():
        p.add_(std * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def _write_model_index(folder: Path, pipeline_class: str, components: dict[str, tuple[str | None, str | None]]):
    import diffusers

    index: dict[str, Any] = {"_class_name": pipeline_class, "_diffusers_version": diffusers.__version__}
    for name, (library, cls) in sorted(components.items()):
        index[name] = [library, cls]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


def _save_common(folder: Path, *, vae, text_encoder, scheduler) -> None:
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    write_tiny_clip_tokenizer(folder / "tokenizer")
    scheduler.save_pretrained(folder / "scheduler")


_COMMON_INDEX = {
    "vae": ("diffusers", "AutoencoderKL"),
    "text_encoder": ("transformers", "CLIPTextModel"),
    "tokenizer": ("transformers", "CLIPTokenizer"),
    "scheduler": ("diffusers", "DDIMScheduler"),
}


def build_tiny_unet3d(folder: str | os.PathLike, seed: int = 0) -> Path:
    """A tiny ZeroScope/ModelScope-like model in the TextToVideoSDPipeline layout; returns ``folder``."""
    with _quiet():
        return _build_unet3d(Path(folder), seed)


def _build_unet3d(folder: Path, seed: int) -> Path:
    from diffusers import UNet3DConditionModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed + 1)
        unet = UNet3DConditionModel(
            sample_size=16, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
            block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=8,
            cross_attention_dim=TINY_HIDDEN, norm_num_groups=32,
        )
        _perturb(unet, generator)
        vae, text_encoder = _tiny_vae(), _tiny_text_encoder()
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    _save_common(folder, vae=vae, text_encoder=text_encoder, scheduler=_ddim_scheduler("scaled_linear"))
    _write_model_index(folder, "TextToVideoSDPipeline", {**_COMMON_INDEX,
                                                         "unet": ("diffusers", "UNet3DConditionModel")})
    return folder


@dataclass(frozen=True)
class TinyAnimateDiffPaths:
    """Folders written by :func:`build_tiny_animatediff`."""

    root: Path
    #: SD1.5-layout folder (UNet2DConditionModel, no safety checker)
    sd15: Path
    #: MotionAdapter folder (config.json + diffusion_pytorch_model.safetensors)
    motion_adapter: Path
    #: AnimateDiffPipeline folder (UNetMotionModel + motion_adapter), loadable on its own
    pipeline: Path


def build_tiny_animatediff(folder: str | os.PathLike, seed: int = 0, *, four_level: bool = False
                           ) -> TinyAnimateDiffPaths:
    """A tiny SD1.5-layout folder + a motion adapter + the combined AnimateDiffPipeline folder.

    Default: 2 levels (32, 64), 1 layer per block, a mid-block motion module (v2-like).
    ``four_level``: (32, 32, 64, 64), 2 layers per block, GroupNorm(2), 4 motion heads, no mid-block
    motion module (v3-like) -- reference/motion_clone.md section 16.
    """
    with _quiet():
        return _build_animatediff(Path(folder), seed, four_level)


def _build_animatediff(folder: Path, seed: int, four_level: bool) -> TinyAnimateDiffPaths:
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    root = Path(folder)
    paths = TinyAnimateDiffPaths(root=root, sd15=root / "sd15", motion_adapter=root / "motion_adapter",
                                 pipeline=root / "animatediff")
    for p in (paths.sd15, paths.motion_adapter, paths.pipeline):
        p.mkdir(parents=True, exist_ok=True)
    if four_level:
        channels, layers, groups, heads, mid = (32, 32, 64, 64), 2, 2, 4, False
        down = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
        up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    else:
        channels, layers, groups, heads, mid = (32, 64), 1, 32, 4, True
        down = ("CrossAttnDownBlock2D", "DownBlock2D")
        up = ("UpBlock2D", "CrossAttnUpBlock2D")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed + 1)
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, down_block_types=down, up_block_types=up,
            block_out_channels=channels, layers_per_block=layers, attention_head_dim=8,
            cross_attention_dim=TINY_HIDDEN, norm_num_groups=groups,
        )
        adapter = MotionAdapter(
            block_out_channels=channels, motion_layers_per_block=layers, motion_norm_num_groups=groups,
            motion_num_attention_heads=heads, motion_max_seq_length=32, use_motion_mid_block=mid,
        )
        _perturb(unet, generator)
        _perturb(adapter, generator)
        vae, text_encoder = _tiny_vae(), _tiny_text_encoder()
        motion_unet = UNetMotionModel.from_unet2d(unet, adapter)
    scheduler = _ddim_scheduler("linear")  # AnimateDiff's training schedule (reference/motion_clone.md 2)

    unet.save_pretrained(paths.sd15 / "unet", safe_serialization=True)
    _save_common(paths.sd15, vae=vae, text_encoder=text_encoder, scheduler=scheduler)
    _write_model_index(paths.sd15, "StableDiffusionPipeline", {
        **_COMMON_INDEX, "unet": ("diffusers", "UNet2DConditionModel"),
        "safety_checker": (None, None), "feature_extractor": (None, None), "image_encoder": (None, None)})
    index = json.loads((paths.sd15 / "model_index.json").read_text(encoding="utf-8"))
    index["requires_safety_checker"] = False
    (paths.sd15 / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")

    adapter.save_pretrained(paths.motion_adapter, safe_serialization=True)

    motion_unet.save_pretrained(paths.pipeline / "unet", safe_serialization=True)
    adapter.save_pretrained(paths.pipeline / "motion_adapter", safe_serialization=True)
    _save_common(paths.pipeline, vae=vae, text_encoder=text_encoder, scheduler=scheduler)
    _write_model_index(paths.pipeline, "AnimateDiffPipeline", {
        **_COMMON_INDEX, "unet": ("diffusers", "UNetMotionModel"),
        "motion_adapter": ("diffusers", "MotionAdapter"),
        "feature_extractor": (None, None), "image_encoder": (None, None)})
    return paths


def tiny_sparsectrl(unet_config: Any, vae_scale_factor: int, kind: str = "rgb", seed: int = 0,
                    **overrides: Any) -> nn.Module:
    """A SparseCtrl ControlNet (diffusers ``SparseControlNetModel``, ``kind`` rgb or scribble) shaped like
    the UNet of ``unet_config`` (random weights, every weight perturbed as the denoisers are)."""
    from diffusers import SparseControlNetModel

    cfg = unet_config
    levels = int(vae_scale_factor).bit_length()  # log2(scale) + 1 conditioning stages
    options = dict(
        in_channels=4, conditioning_channels=4 if kind == "rgb" else 3,
        # an SD UNet's blocks are the motion UNet's (CrossAttnDownBlock2D -> CrossAttnDownBlockMotion)
        down_block_types=tuple(b.replace("2D", "Motion") for b in cfg.down_block_types),
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block, norm_num_groups=cfg.norm_num_groups,
        cross_attention_dim=cfg.cross_attention_dim,
        # UNet2DConditionModel configs keep SD's legacy head count in attention_head_dim
        attention_head_dim=getattr(cfg, "num_attention_heads", None) or cfg.attention_head_dim,
        motion_num_attention_heads=4, motion_max_seq_length=32,
        use_simplified_condition_embedding=kind == "rgb",
        conditioning_embedding_out_channels=(16, 32, 64, 64)[:levels],
    )
    options.update(overrides)
    with _quiet(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        controlnet = SparseControlNetModel(**options)
        _perturb(controlnet, torch.Generator().manual_seed(seed + 1))
    return controlnet.train(False).requires_grad_(False)


def build_tiny_sparsectrl(folder: str | os.PathLike, animatediff_folder: str | os.PathLike, kind: str = "rgb",
                          seed: int = 0) -> Path:
    """Save :func:`tiny_sparsectrl` for the tiny AnimateDiff in ``animatediff_folder`` (its ``unet/``) as a
    diffusers ``SparseControlNetModel`` folder; returns ``folder``."""
    from types import SimpleNamespace

    unet = json.loads((Path(animatediff_folder) / "unet" / "config.json").read_text(encoding="utf-8"))
    vae = json.loads((Path(animatediff_folder) / "vae" / "config.json").read_text(encoding="utf-8"))
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    tiny_sparsectrl(SimpleNamespace(**unet), scale, kind, seed).save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def build_tiny_model(family: str, folder: str | os.PathLike, seed: int = 0, **options: Any) -> Path:
    """Build the tiny model of ``family`` into ``folder``; returns the folder ``load_video_model`` loads
    (for ``animatediff``: the combined AnimateDiffPipeline folder). ``options`` go to the family builder
    (``four_level=True`` for animatediff)."""
    if family == "unet3d":
        if options:
            raise TypeError(f"unexpected options for unet3d: {sorted(options)}")
        return build_tiny_unet3d(folder, seed)
    if family == "animatediff":
        return build_tiny_animatediff(folder, seed, **options).pipeline
    if family == "wan":
        from .tiny_wan import build_tiny_wan

        return build_tiny_wan(folder, seed, **options)
    from .errors import InputError

    raise InputError(f"no tiny model for family {family!r}; available: {', '.join(TINY_FAMILIES)}.")


def default_cache_dir() -> Path:
    """``$MOTIONKIT_CACHE`` or ``<OS temp dir>/motionkit-tiny``."""
    env = os.environ.get("MOTIONKIT_CACHE")
    return Path(env) if env else Path(tempfile.gettempdir()) / "motionkit-tiny"


def ensure_tiny_model(family: str, cache_dir: str | os.PathLike | None = None, *, seed: int = 0,
                      **options: Any) -> Path:
    """The tiny model of ``family``, built once into ``cache_dir`` and reused afterwards.

    The build goes to a private folder that is renamed into place at the end, so concurrent callers (two
    test processes) never see a half-written model. Returns what :func:`build_tiny_model` returns.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    # The key carries a digest of this file, so a changed recipe never reuses a stale cached build.
    recipe = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:10]
    key = "-".join([family, f"v{TINY_FORMAT_VERSION}", recipe, f"seed{seed}"]
                   + [f"{k}={options[k]}" for k in sorted(options)])
    target = cache / key
    record = {"family": family, "seed": seed, "options": {k: str(v) for k, v in options.items()},
              "version": TINY_FORMAT_VERSION}
    marker = target / _MARKER
    if marker.is_file():
        return target / json.loads(marker.read_text(encoding="utf-8"))["model"]
    cache.mkdir(parents=True, exist_ok=True)
    staging = cache / f".{key}.{uuid.uuid4().hex}"
    try:
        built = build_tiny_model(family, staging, seed, **options)
        record["model"] = built.relative_to(staging).as_posix() if built != staging else "."
        (staging / _MARKER).write_text(json.dumps(record, indent=2), encoding="utf-8")
        try:
            staging.rename(target)
        except OSError:  # another process won the race (or a stale incomplete folder is in the way)
            if not marker.is_file():
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target / json.loads(marker.read_text(encoding="utf-8"))["model"]


# --------------------------------------------------------------------------------------------- ComfyUI layouts
# SD1.5 checkpoints, AnimateDiff motion modules and SparseCtrl files as ComfyUI users have them (LDM /
# original AnimateDiff layouts), written from diffusers modules. diffusers ships the other direction only
# (loaders/single_file_utils.py), so the names are mapped here; tests/test_sd_files.py checks them against
# ComfyUI's and AnimateDiff-Evolved's own classes and converts them back with diffusers' converters.

def _ldm_resnet(name: str) -> str:
    for new, old in (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                     ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")):
        if name.startswith(new + "."):
            return old + name[len(new):]
    return name


def ldm_unet_state(unet: nn.Module, prefix: str = "model.diffusion_model.") -> dict[str, torch.Tensor]:
    """A diffusers ``UNet2DConditionModel`` state dict in the LDM layout (``input_blocks`` / ``middle_block`` /
    ``output_blocks``) that ComfyUI's ``UNetModel`` and SD1.5 checkpoints use."""
    cfg = unet.config
    per_level = cfg.layers_per_block + 1
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    out = {}
    for key, value in unet.state_dict().items():
        parts = key.split(".")
        name = None
        stem = ".".join(parts[:2])
        if stem in fixed:
            name = fixed[stem] + "." + ".".join(parts[2:])
        elif parts[0] in fixed:
            name = fixed[parts[0]] + "." + ".".join(parts[1:])
        elif parts[0] == "down_blocks":
            level, kind = int(parts[1]), parts[2]
            rest = ".".join(parts[4:])
            if kind == "downsamplers":
                name = f"input_blocks.{1 + level * per_level + cfg.layers_per_block}.0.op.{parts[-1]}"
            else:
                block = 1 + level * per_level + int(parts[3])
                name = f"input_blocks.{block}.0.{_ldm_resnet(rest)}" if kind == "resnets" else \
                    f"input_blocks.{block}.1.{rest}"
        elif parts[0] == "mid_block":
            index = int(parts[2])
            rest = ".".join(parts[3:])
            name = f"middle_block.{2 * index}.{_ldm_resnet(rest)}" if parts[1] == "resnets" else \
                f"middle_block.1.{rest}"
        elif parts[0] == "up_blocks":
            level, kind = int(parts[1]), parts[2]
            rest = ".".join(parts[4:])
            if kind == "upsamplers":
                has_attention = any(k.startswith(f"up_blocks.{level}.attentions.") for k in unet.state_dict())
                block = level * per_level + cfg.layers_per_block
                name = f"output_blocks.{block}.{2 if has_attention else 1}.conv.{parts[-1]}"
            else:
                block = level * per_level + int(parts[3])
                name = f"output_blocks.{block}.0.{_ldm_resnet(rest)}" if kind == "resnets" else \
                    f"output_blocks.{block}.1.{rest}"
        if name is None:
            raise KeyError(f"no LDM name for UNet weight {key}")
        out[prefix + name] = value
    return out


def ldm_vae_state(vae: nn.Module, prefix: str = "first_stage_model.") -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL`` state dict in the LDM layout (``encoder.down.<i>.block.<j>``, attention
    as 1x1 convolutions) of SD checkpoints and ComfyUI's ``AutoencoderKL``."""
    levels = len(vae.config.block_out_channels)
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in vae.state_dict().items():
        name = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        for side in ("encoder", "decoder"):
            name = name.replace(f"{side}.mid_block.resnets.0.", f"{side}.mid.block_1.")
            name = name.replace(f"{side}.mid_block.resnets.1.", f"{side}.mid.block_2.")
            if name.startswith(f"{side}.mid_block.attentions.0."):
                rest = name[len(f"{side}.mid_block.attentions.0."):]
                layer, _, param = rest.rpartition(".")
                name = f"{side}.mid.attn_1.{attention[layer]}.{param}"
                if value.ndim == 2:
                    value = value[:, :, None, None]
        parts = name.split(".")
        if parts[1] in ("down_blocks", "up_blocks"):
            level = int(parts[2]) if parts[1] == "down_blocks" else levels - 1 - int(parts[2])
            group = "down" if parts[1] == "down_blocks" else "up"
            if parts[3] == "resnets":
                name = f"{parts[0]}.{group}.{level}.block.{parts[4]}." + ".".join(parts[5:])
            else:  # downsamplers.0.conv / upsamplers.0.conv
                name = f"{parts[0]}.{group}.{level}.{'downsample' if group == 'down' else 'upsample'}.conv.{parts[-1]}"
        out[prefix + name] = value
    return out


def original_motion_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Motion modules of a diffusers ``MotionAdapter`` / ``SparseControlNetModel`` state dict in the original
    AnimateDiff layout (``temporal_transformer``, ``attention_blocks``, ``norms``, one position table per
    attention block); other weights unchanged."""
    import re

    out = {}
    for key, value in state.items():
        if ".motion_modules." not in key:
            out[key] = value
            continue
        name = re.sub(r"\.motion_modules\.(\d+)\.", r".motion_modules.\1.temporal_transformer.", key)
        if name.endswith(".pos_embed.pe"):
            stem = name[: -len("pos_embed.pe")]
            out[stem + "attention_blocks.0.pos_encoder.pe"] = value
            out[stem + "attention_blocks.1.pos_encoder.pe"] = value.clone()
            continue
        for new, old in ((".norms.0", ".norm1"), (".norms.1", ".norm2"), (".ff_norm", ".norm3"),
                         (".attention_blocks.0", ".attn1"), (".attention_blocks.1", ".attn2")):
            name = name.replace(old, new)
        out[name] = value
    return out


def sd15_checkpoint_state(unet: nn.Module, vae: nn.Module, text_encoder: nn.Module) -> dict[str, torch.Tensor]:
    """UNet + VAE + CLIP text encoder as one SD1.5 checkpoint state dict (``models/checkpoints``)."""
    state = ldm_unet_state(unet)
    state.update(ldm_vae_state(vae))
    state.update({"cond_stage_model.transformer." + ("" if k.startswith("text_model.") else "text_model.") + k: v
                  for k, v in text_encoder.state_dict().items() if not k.endswith("position_ids")})
    return state


def _save_weights(state: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in state.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:  # a plain tensor dict, as the original .ckpt files are (torch.load(weights_only=True) reads it)
        torch.save(state, str(path))
    return path


@dataclass(frozen=True)
class TinySD15Files:
    """What :func:`write_tiny_sd15_files` writes: the same weights as ComfyUI files and as diffusers folders."""

    checkpoint: Path
    motion_module: Path
    #: diffusers SD1.5-layout folder (unet, vae, text_encoder, tokenizer, scheduler)
    sd15: Path
    #: diffusers MotionAdapter folder
    motion_adapter: Path
    #: CLIP tokenizer folder (SD1.5 checkpoints carry none)
    tokenizer: Path


def _sd15_rule_text_encoder(width: int, layers: int, vocab: int, positions: int, intermediate: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    # heads = width / 64 (at least 1): the rule the single-file loader applies
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=width, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=max(1, width // 64), max_position_embeddings=positions, projection_dim=width,
        hidden_act="quick_gelu"))


def tiny_sd15_modules(seed: int = 0, *, version: str = "v3"):
    """Tiny SD1.5-shaped UNet2D, VAE, CLIP text encoder and motion adapter (``version`` v2: mid-block motion
    module; v3: none) that follow SD1.5's fixed rules (8 heads, GroupNorm 32, CLIP heads = width / 64), so the
    single-file loader rebuilds them from shapes alone."""
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel

    with _quiet(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed + 1)
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=8, cross_attention_dim=TINY_HIDDEN, norm_num_groups=32)
        vae = _tiny_vae()
        text_encoder = _sd15_rule_text_encoder(TINY_HIDDEN, 2, TINY_VOCAB_SIZE, TINY_MODEL_MAX_LENGTH, 37)
        adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=32,
                                motion_num_attention_heads=8, motion_max_seq_length=32,
                                use_motion_mid_block=version == "v2")
        for module in (unet, vae, text_encoder, adapter):
            _perturb(module, generator)
    return unet, vae, text_encoder, adapter


def write_tiny_sd15_files(folder: str | os.PathLike, seed: int = 0, *, version: str = "v3",
                          suffix: str = ".safetensors") -> TinySD15Files:
    """A tiny SD1.5 checkpoint (``checkpoints/tiny_sd15<suffix>``) and motion module
    (``animatediff_models/tiny_mm_<version><suffix>``) in ComfyUI's layouts, plus the same weights as diffusers
    folders and the tokenizer; ``suffix`` ``.safetensors`` or ``.ckpt``."""
    folder = Path(folder)
    unet, vae, text_encoder, adapter = tiny_sd15_modules(seed, version=version)
    files = TinySD15Files(
        checkpoint=_save_weights(sd15_checkpoint_state(unet, vae, text_encoder),
                                 folder / "checkpoints" / f"tiny_sd15{suffix}"),
        motion_module=_save_weights(original_motion_state(adapter.state_dict()),
                                    folder / "animatediff_models" / f"tiny_mm_{version}{suffix}"),
        sd15=folder / "diffusers" / "tiny_sd15", motion_adapter=folder / "diffusers" / f"tiny_mm_{version}",
        tokenizer=folder / "tokenizer")
    with _quiet():
        unet.save_pretrained(files.sd15 / "unet", safe_serialization=True)
        _save_common(files.sd15, vae=vae, text_encoder=text_encoder, scheduler=_ddim_scheduler("linear"))
        _write_model_index(files.sd15, "StableDiffusionPipeline", {
            **_COMMON_INDEX, "unet": ("diffusers", "UNet2DConditionModel")})
        adapter.save_pretrained(files.motion_adapter, safe_serialization=True)
    write_tiny_clip_tokenizer(files.tokenizer)
    return files


def save_comfy_animatediff_files(sd15: str | os.PathLike, motion_adapter: str | os.PathLike,
                                 checkpoint: str | os.PathLike, motion_module: str | os.PathLike) -> tuple[Path, Path]:
    """The diffusers folders of an SD1.5 model (``unet/``, ``vae/``, ``text_encoder/``) and of a MotionAdapter,
    written as ComfyUI keeps them: one checkpoint file (LDM layout) and one motion module file (original
    AnimateDiff layout; ``.ckpt`` or ``.safetensors`` by the name's ending)."""
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextModel

    sd15 = Path(sd15)
    with _quiet():
        unet = UNet2DConditionModel.from_pretrained(sd15 / "unet")
        vae = AutoencoderKL.from_pretrained(sd15 / "vae")
        text_encoder = CLIPTextModel.from_pretrained(sd15 / "text_encoder")
        adapter = MotionAdapter.from_pretrained(motion_adapter)
    return (_save_weights(sd15_checkpoint_state(unet, vae, text_encoder), Path(checkpoint)),
            _save_weights(original_motion_state(adapter.state_dict()), Path(motion_module)))


def sparsectrl_file_state(controlnet: nn.Module) -> dict[str, torch.Tensor]:
    """A diffusers ``SparseControlNetModel`` state dict in the original SparseCtrl layout
    (``v3_sd15_sparsectrl_*.ckpt``: diffusers' ControlNet names, motion modules in AnimateDiff's)."""
    return original_motion_state(controlnet.state_dict())


def write_tiny_sparsectrl_file(path: str | os.PathLike, kind: str = "rgb", seed: int = 0) -> Path:
    """A tiny SparseCtrl file (``kind`` rgb / scribble) for :func:`tiny_sd15_modules`' UNet (models/controlnet)."""
    unet = tiny_sd15_modules(seed)[0]
    controlnet = tiny_sparsectrl(unet.config, 4, kind, seed, motion_num_attention_heads=8)
    return _save_weights(sparsectrl_file_state(controlnet), Path(path))


def write_full_size_sd15_files(models: str | os.PathLike, seed: int = 0, *, dtype: torch.dtype = torch.float16,
                               checkpoint: str = "sd15_random.safetensors", motion_module: str = "v3_sd15_mm.ckpt",
                               sparsectrl: dict[str, str] | None = None) -> dict[str, Path]:
    """Random-weight files at SD1.5's real sizes in ComfyUI's model folders under ``models``: an SD1.5 checkpoint
    (``checkpoints/``), an AnimateDiff v3 motion module (``animatediff_models/``) and SparseCtrl rgb / scribble
    (``controlnet/``; ``sparsectrl`` = {kind: file name}, default the v3 names), all from MotionKit's shipped
    configs. About 2.6 GB in fp16; the full-size models are built one at a time."""
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .backbones.single_file import shipped_config

    models = Path(models)
    names = sparsectrl if sparsectrl is not None else {"rgb": "v3_sd15_sparsectrl_rgb.ckpt",
                                                      "scribble": "v3_sd15_sparsectrl_scribble.ckpt"}
    written: dict[str, Path] = {}
    with _quiet(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed + 1)
        unet = UNet2DConditionModel.from_config(shipped_config("sd15_unet")).to(dtype)
        vae = AutoencoderKL.from_config(shipped_config("sd15_vae")).to(dtype)
        text_encoder = CLIPTextModel(CLIPTextConfig(**shipped_config("sd15_text_encoder"))).to(dtype)
        written["checkpoint"] = _save_weights(sd15_checkpoint_state(unet, vae, text_encoder),
                                              models / "checkpoints" / checkpoint)
        del vae, text_encoder
        adapter = MotionAdapter.from_config(shipped_config("animatediff_motion_adapter_v3"))
        _perturb(adapter, generator)  # the zero-initialised output projections would make it a no-op
        written["motion_module"] = _save_weights(original_motion_state(adapter.to(dtype).state_dict()),
                                                 models / "animatediff_models" / motion_module)
        del adapter
        for kind, name in names.items():
            controlnet = tiny_sparsectrl(unet.config, 8, kind, seed, motion_num_attention_heads=8,
                                         conditioning_embedding_out_channels=(16, 32, 96, 256))
            written[f"sparsectrl_{kind}"] = _save_weights(sparsectrl_file_state(controlnet.to(dtype)),
                                                          models / "controlnet" / name)
            del controlnet
    return written
