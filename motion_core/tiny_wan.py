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

__all__ = ["TINY_WAN_VARIANTS", "TINY_WAN_VOCAB_SIZE", "build_tiny_wan", "write_tiny_t5_tokenizer"]

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
