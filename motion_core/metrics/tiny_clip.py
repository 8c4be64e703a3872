"""A tiny random CLIPModel folder (text + image towers, BPE tokenizer, preprocessor config): what tests and the
host run score with, since no weights can be downloaded. Its scores are meaningless, its code path is real."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["build_tiny_clip"]


def build_tiny_clip(folder: str | os.PathLike, seed: int = 0, image_size: int = 32) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPModel

    from ..tiny import TINY_VOCAB_SIZE, write_tiny_clip_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_clip_tokenizer(folder)
    config = CLIPConfig(
        text_config={"vocab_size": TINY_VOCAB_SIZE, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": TINY_VOCAB_SIZE - 2,
                     "eos_token_id": TINY_VOCAB_SIZE - 1, "pad_token_id": TINY_VOCAB_SIZE - 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": image_size, "patch_size": 8},
        projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "crop_size": {"height": image_size, "width": image_size},
        "size": {"shortest_edge": image_size}, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}),
        encoding="utf-8")
    return folder
