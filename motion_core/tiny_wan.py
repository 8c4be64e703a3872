"""Tiny random Wan models (2.1 T2V, 2.2 TI2V-5B-like, 2.2 A14B-like two experts), in WanPipeline layout.

Built from config, no download, deterministic for a seed; saved as real diffusers folders
(``model_index.json`` + ``transformer/ [transformer_2/] vae/ text_encoder/ tokenizer/ scheduler/``), so they
go through the same loading code (``load_video_model``) as a real Wan model -- and diffusers' own
``WanPipeline.from_pretrained`` loads them too.

Variants (``variant=``):

* ``"2.1"`` -- Wan 2.1 T2V-like: ``WanTransformer3DModel`` (2 blocks, 2 heads x 16 = width 32, ffn 64,
  patch (1, 2, 2), 16 in/out channels), ``AutoencoderKLWan`` with 16 latent channels, **4x temporal and 4x
  spatial** compression (``dim_mult (1, 2, 2)``: two down stages, both temporal) -> size multiple 8;
  default size 32x32, 9 frames (3 latent frames of 4x4 tokens).
* ``"2.2-5b"`` -- Wan 2.2 TI2V-5B-like: a residual VAE with ``patch_size 2`` (pixel-unshuffle, 12 in/out
  channels) and **48 latent channels**, spatial factor 8 (2 x 4) -> size multiple 16; transformer with 48
  in/out channels; ``expand_timesteps=True`` in ``model_index.json`` (per-token timesteps, first-frame
  image conditioning). Default 32x32, 9 frames.
* ``"2.2-a14b"`` -- Wan 2.2 A14B-like: two transformers of the 2.1 shape (``transformer`` = high-noise expert,
  ``transformer_2`` = low-noise expert, different random weights) and ``boundary_ratio 0.875`` in
  ``model_index.json``.
* ``"2.1-i2v"`` -- Wan 2.1 I2V-like (``WanImageToVideoPipeline``): the transformer reads 36 channels (16
  latents + 4 mask + 16 first-frame latents) and CLIP image tokens (``image_dim`` 32, ``add_k_proj`` /
  ``add_v_proj``); a tiny ``CLIPVisionModel`` (32x32 images, 8x8 patches) + ``CLIPImageProcessor``.

Text: a UMT5 encoder (2 layers, d_model 32) and a T5 tokenizer written as a ``tokenizers`` Unigram model
(``<pad>``=0, ``</s>``=1, ``<unk>``=2, a few whole words, the letters, digits and punctuation; Metaspace
pre-tokenizer, ``$A </s>`` template; reference/environment_notes.md "Tokenizers offline").
``model_max_length`` 512 = Wan's text length (the pipeline pads prompts to 512 tokens).

Scheduler: ``FlowMatchEulerDiscreteScheduler(shift=3.0)`` (the real repositories ship a UniPC scheduler in
flow mode with ``flow_shift`` 3.0; both load). Every denoiser weight is perturbed by ``0.02 * randn``
(seeded) so no zero-initialised projection hides a bug. A ``motionkit.json`` beside ``model_index.json``
gives the default size and frame count (``WanVideoModel`` reads it; real models fall back to their
published sizes).
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["COMFY_WAN_VARIANTS", "TINY_WAN_VARIANTS", "TINY_WAN_VOCAB_SIZE", "build_tiny_wan", "precompiled_charsmap",
           "save_comfy_wan_files", "tiny_spiece_model", "write_tiny_t5_tokenizer"]

TINY_WAN_VARIANTS = ("2.1", "2.2-5b", "2.2-a14b", "2.1-i2v")
TINY_TEXT_DIM = 32
TINY_WAN_MAX_LENGTH = 512

_WORDS = ("the", "a", "cat", "dog", "car", "running", "moving", "square", "red", "blue", "white", "right",
          "left", "up", "down", "on", "in", "of", "video", "camera")


def _pieces() -> list[tuple[str, float]]:
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -8.0)]
    seen = {p for p, _ in pieces}

    def add(piece: str, score: float) -> None:
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, score))

    for word in _WORDS:
        add("\u2581" + word, -4.0)
    for ch in string.ascii_lowercase:
        add("\u2581" + ch, -9.0)
    for ch in string.ascii_letters + string.digits + string.punctuation:
        add(ch, -10.0)
    return pieces


TINY_WAN_VOCAB_SIZE = len(_pieces())


def write_tiny_t5_tokenizer(folder: str | os.PathLike, *, model_max_length: int = TINY_WAN_MAX_LENGTH):
    """Write a T5/UMT5-style Unigram tokenizer (``tokenizer.json`` + configs) into ``folder``, load it back
    with ``AutoTokenizer`` and return it. Raises RuntimeError when transformers loads it with another
    vocabulary size (transformers 5 can silently return a degenerate tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import AutoTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pieces = _pieces()
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    tok.save(str(folder / "tokenizer.json"))
    specials = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "model_max_length": model_max_length, "extra_ids": 0,
         "additional_special_tokens": [], **specials}), encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if len(tokenizer) != len(pieces) or tokenizer.model_max_length != model_max_length:
        raise RuntimeError(f"the tiny T5 tokenizer in {folder} loaded with {len(tokenizer)} tokens and "
                           f"model_max_length {tokenizer.model_max_length} (expected {len(pieces)} and "
                           f"{model_max_length})")
    return tokenizer


def _tiny_text_encoder():
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=TINY_WAN_VOCAB_SIZE, d_model=TINY_TEXT_DIM, d_kv=8, d_ff=64, num_layers=2,
                        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=32,
                        feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
                        decoder_start_token_id=0)
    return UMT5EncoderModel(config)


def _tiny_transformer(channels: int, *, image: bool = False):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16,
        in_channels=2 * channels + 4 if image else channels, out_channels=channels, text_dim=TINY_TEXT_DIM,
        freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
        rope_max_seq_len=64, image_dim=TINY_TEXT_DIM if image else None,
        added_kv_proj_dim=32 if image else None,
    )


def _tiny_image_encoder():
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=TINY_TEXT_DIM, intermediate_size=37,
                                               num_hidden_layers=2, num_attention_heads=4, image_size=32,
                                               patch_size=8, projection_dim=TINY_TEXT_DIM))
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return encoder, processor


def _tiny_vae(wan22: bool, generator: torch.Generator):
    from diffusers import AutoencoderKLWan

    z = 48 if wan22 else 16
    # latent statistics that are not 0/1, so a missing (de)normalisation shows up in the tests
    mean = (0.2 * torch.randn(z, generator=generator)).tolist()
    std = (1.0 + 0.5 * torch.rand(z, generator=generator)).tolist()
    common = dict(base_dim=8, z_dim=z, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[True, True],
                  latents_mean=[round(v, 4) for v in mean], latents_std=[round(v, 4) for v in std],
                  scale_factor_temporal=4)
    if wan22:
        return AutoencoderKLWan(**common, decoder_base_dim=16, is_residual=True, in_channels=12, out_channels=12,
                                patch_size=2, scale_factor_spatial=8)
    return AutoencoderKLWan(**common, scale_factor_spatial=4)


@torch.no_grad()
def _perturb(module: nn.Module, generator: torch.Generator, std: float = 0.02) -> None:
    for p in module.parameters():
        p.add_(std * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def _write_index(folder: Path, components: dict[str, tuple[str | None, str | None]], pipeline: str,
                 **config: Any) -> None:
    import diffusers

    index: dict[str, Any] = {"_class_name": pipeline, "_diffusers_version": diffusers.__version__}
    index.update(config)
    for name, (library, cls) in sorted(components.items()):
        index[name] = [library, cls]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


def build_tiny_wan(folder: str | os.PathLike, seed: int = 0, *, variant: str = "2.1") -> Path:
    """Build a tiny Wan model of ``variant`` (see :data:`TINY_WAN_VARIANTS`) into ``folder``; returns it."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if variant not in TINY_WAN_VARIANTS:
        from .errors import InputError

        raise InputError(f"unknown tiny Wan variant {variant!r}; use one of {', '.join(TINY_WAN_VARIANTS)}.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wan22_vae = variant == "2.2-5b"
    channels = 48 if wan22_vae else 16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed + 1)
        transformer = _tiny_transformer(channels, image=variant == "2.1-i2v")
        _perturb(transformer, generator)
        transformer_2 = None
        if variant == "2.2-a14b":
            transformer_2 = _tiny_transformer(channels)
            _perturb(transformer_2, generator)
        vae = _tiny_vae(wan22_vae, generator)
        text_encoder = _tiny_text_encoder()
        image_encoder = image_processor = None
        if variant == "2.1-i2v":
            image_encoder, image_processor = _tiny_image_encoder()
    transformer.save_pretrained(folder / "transformer", safe_serialization=True)
    if transformer_2 is not None:
        transformer_2.save_pretrained(folder / "transformer_2", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    write_tiny_t5_tokenizer(folder / "tokenizer")
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0).save_pretrained(folder / "scheduler")
    if image_encoder is not None:
        image_encoder.save_pretrained(folder / "image_encoder", safe_serialization=True)
        image_processor.save_pretrained(folder / "image_processor")
    components = {
        "transformer": ("diffusers", "WanTransformer3DModel"),
        "transformer_2": ("diffusers", "WanTransformer3DModel") if transformer_2 is not None else (None, None),
        "vae": ("diffusers", "AutoencoderKLWan"),
        "text_encoder": ("transformers", "UMT5EncoderModel"),
        "tokenizer": ("transformers", "T5Tokenizer"),
        "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler"),
    }
    pipeline = "WanPipeline"
    if image_encoder is not None:
        pipeline = "WanImageToVideoPipeline"
        components["image_encoder"] = ("transformers", "CLIPVisionModel")
        components["image_processor"] = ("transformers", "CLIPImageProcessor")
    _write_index(folder, components, pipeline, boundary_ratio=0.875 if variant == "2.2-a14b" else None,
                 expand_timesteps=wan22_vae)
    (folder / "motionkit.json").write_text(json.dumps(
        {"default_size": [32, 32], "default_frames": 9, "tiny": True, "variant": variant}), encoding="utf-8")
    return folder


# --------------------------------------------------------------------------------------------- ComfyUI layout
#: what :func:`save_comfy_wan_files` writes
COMFY_WAN_VARIANTS = ("2.1", "2.2-5b", "2.2-a14b")
#: ComfyUI derives heads = width // 128, so a tiny Wan file is 256 wide (2 heads of 128) with ComfyUI's fixed
#: time-embedding width 256
COMFY_TINY_DIM = 256


def precompiled_charsmap(mapping: dict[str, str]) -> bytes:
    """A SentencePiece ``precompiled_charsmap`` (what ``normalizers.Precompiled`` reads) replacing each key of
    ``mapping`` by its value: a double-array trie over the keys' UTF-8 bytes (one 256-unit block per trie
    node, so a child's slot is ``block + byte``; a terminal node keeps its value, the offset of the
    replacement in the string blob, in slot 0), then the NUL-terminated replacements."""
    import struct

    blob = bytearray()
    values: dict[bytes, int] = {}
    for src, dst in mapping.items():
        values[src.encode("utf-8")] = len(blob)
        blob += dst.encode("utf-8") + b"\0"
    blocks: dict[bytes, int] = {b"": 1}  # trie node (a key prefix) -> its block; block 0 holds the root unit
    for key in values:
        for n in range(1, len(key) + 1):
            blocks.setdefault(key[:n], len(blocks) + 1)
    units = [0] * (256 * (len(blocks) + 1))
    units[0] = (256 * blocks[b""]) << 10  # root: offset to its block
    for node, block in blocks.items():
        base = 256 * block
        if node in values:
            units[base] = (1 << 31) | values[node]  # a leaf unit: never matches a byte label
        if node:
            parent = 256 * blocks[node[:-1]]
            pos = parent + node[-1]
            offset = pos ^ base
            assert offset < (1 << 21)
            units[pos] = (offset << 10) | ((node in values) << 8) | node[-1]
    trie = struct.pack(f"<{len(units)}I", *units)
    return struct.pack("<I", len(trie)) + trie + bytes(blob)


#: the tiny charsmap: full-width letters of the tiny words -> ASCII (the NFKC part a real umt5 charsmap has)
TINY_CHARSMAP = {chr(0xFF41 + i): chr(ord("a") + i) for i in range(26)}


def tiny_spiece_model(charsmap: dict[str, str] | None = None) -> bytes:
    """The tiny tokenizer's pieces as a serialized SentencePiece ``ModelProto`` (what ComfyUI's umt5 files embed
    as ``spiece_model``): Unigram, pad 0 / eos 1 / unk 2 (control, control, unknown), the charsmap."""
    from .backbones.spm_proto import CONTROL, NORMAL, UNKNOWN, SentencePieceModel, serialize_model_proto

    kinds = {0: CONTROL, 1: CONTROL, 2: UNKNOWN}
    model = SentencePieceModel(pieces=[(p, s, kinds.get(i, NORMAL)) for i, (p, s) in enumerate(_pieces())],
                               unk_id=2, bos_id=-1, eos_id=1, pad_id=0, normalizer_name="nmt_nfkc",
                               precompiled_charsmap=precompiled_charsmap(TINY_CHARSMAP if charsmap is None else charsmap))
    return serialize_model_proto(model)


def _comfy_transformer(channels: int):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=COMFY_TINY_DIM // 128, attention_head_dim=128,
        in_channels=channels, out_channels=channels, text_dim=TINY_TEXT_DIM, freq_dim=256, ffn_dim=64, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)


def _comfy_text_encoder():
    from transformers import UMT5Config, UMT5EncoderModel

    # ComfyUI's T5 fixes 32 buckets and max distance 128 (umt5-xxl's)
    return UMT5EncoderModel(UMT5Config(
        vocab_size=TINY_WAN_VOCAB_SIZE, d_model=TINY_TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))


def _comfy_vae(wan22: bool):
    """A tiny VAE of the real Wan layout (dim_mult 1,2,4,4, 2 residual blocks: ComfyUI and diffusers' converter
    assume it) with the real latent statistics (they live in the config, not in the file)."""
    from diffusers import AutoencoderKLWan

    from .backbones.single_file import shipped_config

    config = shipped_config("wan2.2_vae" if wan22 else "wan2.1_vae")
    config.pop("_class_name", None)
    config.update(base_dim=8, decoder_base_dim=16 if wan22 else None)
    return AutoencoderKLWan(**config)


_TRANSFORMER_TO_COMFY = (  # diffusers -> original Wan names (the inverse of diffusers' converter)
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("attn1", "self_attn"), ("attn2", "cross_attn"), (".to_out.0.", ".o."), (".to_q.", ".q."), (".to_k.", ".k."),
    (".to_v.", ".v."), ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"), ("proj_out", "head.head"),
    ("norm2", "norm__swap"), ("norm3", "norm2"), ("norm__swap", "norm3"),
)


def _transformer_to_comfy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        new = key
        for a, b in _TRANSFORMER_TO_COMFY:
            new = new.replace(a, b)
        if new == "scale_shift_table":
            new = "head.modulation"
        elif new.endswith(".scale_shift_table"):
            new = new[: -len("scale_shift_table")] + "modulation"
        out[new] = value
    return out


_RESIDUAL_TO_COMFY = {"norm1.gamma": "residual.0.gamma", "conv1.weight": "residual.2.weight",
                      "conv1.bias": "residual.2.bias", "norm2.gamma": "residual.3.gamma",
                      "conv2.weight": "residual.6.weight", "conv2.bias": "residual.6.bias",
                      "conv_shortcut.weight": "shortcut.weight", "conv_shortcut.bias": "shortcut.bias"}


def _vae_to_comfy(state: dict[str, torch.Tensor], wan22: bool, res_blocks: int = 2) -> dict[str, torch.Tensor]:
    import re

    out = {}
    for key, value in state.items():
        new = key
        for a, b in (("quant_conv.", "conv1."), ("post_quant_conv.", "conv2.")):
            if key.startswith(a):
                new = b + key[len(a):]
        for side in ("encoder", "decoder"):
            for a, b in ((".conv_in.", ".conv1."), (".norm_out.", ".head.0."), (".conv_out.", ".head.2.")):
                if key.startswith(side + a):
                    new = side + b + key[len(side + a):]
        m = re.match(r"^(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d)\.(.+)$", key)
        if m:
            index = {"resnets": {0: 0, 1: 2}, "attentions": {0: 1}}[m.group(2)][int(m.group(3))]
            leaf = _RESIDUAL_TO_COMFY.get(m.group(4), m.group(4)) if m.group(2) == "resnets" else m.group(4)
            new = f"{m.group(1)}.middle.{index}.{leaf}"
        m = re.match(r"^encoder\.down_blocks\.(\d+)\.(.+)$", key)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            if wan22:
                r = re.match(r"^resnets\.(\d+)\.(.+)$", rest)
                if r:
                    new = f"encoder.downsamples.{i}.downsamples.{r.group(1)}.{_RESIDUAL_TO_COMFY[r.group(2)]}"
                else:
                    new = f"encoder.downsamples.{i}.downsamples.{res_blocks}.{rest.split('.', 1)[1]}"
            else:
                new = f"encoder.downsamples.{i}.{_RESIDUAL_TO_COMFY.get(rest, rest)}"
        m = re.match(r"^decoder\.up_blocks\.(\d+)\.(.+)$", key)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            r = re.match(r"^resnets\.(\d+)\.(.+)$", rest)
            if wan22:
                new = (f"decoder.upsamples.{i}.upsamples.{r.group(1)}.{_RESIDUAL_TO_COMFY[r.group(2)]}" if r else
                       f"decoder.upsamples.{i}.upsamples.{res_blocks + 1}.{rest.split('.', 1)[1]}")
            else:
                per = res_blocks + 2  # residual blocks + the upsample, one flat list
                new = (f"decoder.upsamples.{i * per + int(r.group(1))}.{_RESIDUAL_TO_COMFY[r.group(2)]}" if r else
                       f"decoder.upsamples.{i * per + res_blocks + 1}.{rest.split('.', 2)[2]}")
        out[new] = value
    return out


def _fp8(state: dict[str, torch.Tensor], scaled: bool, fp8_names) -> dict[str, torch.Tensor]:
    """ComfyUI's fp8 layout: the big matrices in float8_e4m3fn; ``scaled``: each divided by a per-layer scale
    (amax / 448) stored beside it as ``<layer>.scale_weight``, plus the ``scaled_fp8`` marker."""
    out = {}
    for key, value in state.items():
        if not fp8_names(key, value):
            out[key] = value
            continue
        if scaled:
            scale = (value.float().abs().amax() / 448.0).clamp(min=1e-12)
            out[key] = (value.float() / scale).to(torch.float8_e4m3fn)
            out[key[: -len(".weight")] + ".scale_weight"] = scale.reshape(())
        else:
            out[key] = value.to(torch.float8_e4m3fn)
    if scaled:
        out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


def _dequantized(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key == "scaled_fp8" or key.endswith(".scale_weight"):
            continue
        if value.dtype == torch.float8_e4m3fn:
            scale = state.get(key[: -len(".weight")] + ".scale_weight")
            value = value.float() * (scale.float() if scale is not None else 1.0)
        out[key] = value.float()
    return out


def save_comfy_wan_files(folder: str | os.PathLike, seed: int = 0, *, variant: str = "2.1", fp8: str | None = None,
                         dtype: torch.dtype = torch.float32, prefix: str = "model.diffusion_model.",
                         diffusers_folder: str | os.PathLike | None = None) -> dict[str, Path]:
    """A tiny Wan written as ComfyUI users have it -- original Wan key names, one file per component:
    ``models/diffusion_models/<...>.safetensors`` (A14B: a ``high_noise`` and a ``low_noise`` file),
    ``models/text_encoders/umt5_xxl_tiny_<...>.safetensors`` (with the tokenizer embedded as ``spiece_model``,
    serialized here as a SentencePiece ModelProto) and ``models/vae/wan_2.1_vae_tiny.safetensors`` /
    ``wan2.2_vae_tiny.safetensors`` under ``folder``. Returns ``{"diffusion_model", ["low_noise_model"],
    "text_encoder", "vae"}`` -> path.

    ``fp8``: None, ``"e4m3fn"`` (matrices in float8_e4m3fn) or ``"scaled"`` (ComfyUI's ``_scaled`` files, per-layer
    ``scale_weight``), for the diffusion model(s) and the text encoder. ``dtype``: the other tensors' dtype.
    ``prefix``: before the diffusion model's names (ComfyUI saves ``model.diffusion_model.``; "" is accepted too).
    ``diffusers_folder``: also write the same weights (fp8 ones dequantized) as a diffusers Wan folder, with a
    tokenizer built by transformers' own T5Tokenizer from the same pieces and charsmap.

    Widths follow what ComfyUI derives from files: transformer 256 wide (heads = width // 128 = 2), time
    embedding 256; umt5 with 32 position buckets; VAEs of the real layout at base width 8."""
    from safetensors.torch import save_file

    if variant not in COMFY_WAN_VARIANTS:
        from .errors import InputError

        raise InputError(f"unknown ComfyUI-layout tiny Wan variant {variant!r}; use one of "
                         f"{', '.join(COMFY_WAN_VARIANTS)}.")
    if fp8 not in (None, "e4m3fn", "scaled"):
        raise ValueError(f"fp8 must be None, 'e4m3fn' or 'scaled', got {fp8!r}")
    folder = Path(folder)
    wan22 = variant == "2.2-5b"
    channels = 48 if wan22 else 16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed + 1)
        experts = [_comfy_transformer(channels) for _ in range(2 if variant == "2.2-a14b" else 1)]
        for expert in experts:
            _perturb(expert, generator)
        vae = _comfy_vae(wan22)
        _perturb(vae, generator)
        text_encoder = _comfy_text_encoder()
    tag = {None: "fp32" if dtype == torch.float32 else str(dtype).replace("torch.float", "fp").replace(
        "torch.bfloat", "bf"), "e4m3fn": "fp8_e4m3fn", "scaled": "fp8_e4m3fn_scaled"}[fp8]
    names = {"2.1": ["wan2.1_t2v_tiny_{}.safetensors"], "2.2-5b": ["wan2.2_ti2v_tiny_{}.safetensors"],
             "2.2-a14b": ["wan2.2_t2v_high_noise_tiny_{}.safetensors", "wan2.2_t2v_low_noise_tiny_{}.safetensors"]}
    paths: dict[str, Path] = {}
    dequantized: dict[str, dict[str, torch.Tensor]] = {}

    def matrix(key: str, value: torch.Tensor) -> bool:
        return key.endswith(".weight") and value.dim() == 2 and ("blocks." in key or "block." in key)

    def write(role: str, path: Path, state: dict[str, torch.Tensor]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        paths[role] = path

    for role, expert, name in zip(("diffusion_model", "low_noise_model"), experts, names[variant]):
        state = {k: v.detach().to(dtype) for k, v in _transformer_to_comfy(expert.state_dict()).items()}
        if fp8:
            state = _fp8(state, fp8 == "scaled", matrix)
        dequantized[role] = _dequantized(state)
        write(role, folder / "diffusion_models" / name.format(tag), {prefix + k: v for k, v in state.items()})
    te_state = {k: v.detach().to(dtype) for k, v in text_encoder.state_dict().items()
                if k != "encoder.embed_tokens.weight"}
    if fp8:
        te_state = _fp8(te_state, fp8 == "scaled", matrix)
    dequantized["text_encoder"] = _dequantized(te_state)
    spiece = torch.frombuffer(bytearray(tiny_spiece_model()), dtype=torch.uint8).clone()
    write("text_encoder", folder / "text_encoders" / f"umt5_xxl_tiny_{tag}.safetensors", {**te_state, "spiece_model": spiece})
    write("vae", folder / "vae" / ("wan2.2_vae_tiny.safetensors" if wan22 else "wan_2.1_vae_tiny.safetensors"),
          {k: v.detach().float() for k, v in _vae_to_comfy(vae.state_dict(), wan22).items()})
    if diffusers_folder is not None:
        _save_diffusers_twin(Path(diffusers_folder), experts, text_encoder, vae, dequantized, wan22)
    return paths


def _save_diffusers_twin(folder: Path, experts, text_encoder, vae, dequantized, wan22: bool) -> None:
    """The same weights as :func:`save_comfy_wan_files` wrote, as a diffusers Wan folder (``load_wan``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
    from transformers import T5Tokenizer

    from .backbones.spm_proto import parse_model_proto

    folder.mkdir(parents=True, exist_ok=True)
    for sub, expert, role in zip(("transformer", "transformer_2"), experts, ("diffusion_model", "low_noise_model")):
        expert.load_state_dict(convert_wan_transformer_to_diffusers(dict(dequantized[role])))
        expert.save_pretrained(folder / sub, safe_serialization=True)
    te = dict(dequantized["text_encoder"])
    te["encoder.embed_tokens.weight"] = te["shared.weight"]
    text_encoder.load_state_dict(te)
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    spm = parse_model_proto(tiny_spiece_model())
    tok = T5Tokenizer(vocab=[(p, s) for p, s, _ in spm.pieces], _spm_precompiled_charsmap=spm.precompiled_charsmap,
                      extra_ids=0, additional_special_tokens=[], model_max_length=TINY_WAN_MAX_LENGTH)
    tok.save_pretrained(str(folder / "tokenizer"))
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0).save_pretrained(folder / "scheduler")
    components = {"transformer": ("diffusers", "WanTransformer3DModel"),
                  "transformer_2": ("diffusers", "WanTransformer3DModel") if len(experts) > 1 else (None, None),
                  "vae": ("diffusers", "AutoencoderKLWan"), "text_encoder": ("transformers", "UMT5EncoderModel"),
                  "tokenizer": ("transformers", "T5Tokenizer"),
                  "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler")}
    _write_index(folder, components, "WanPipeline", boundary_ratio=0.875 if len(experts) > 1 else None,
                 expand_timesteps=wan22)
