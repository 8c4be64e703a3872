"""CLIP scores of generated frames: text alignment (CLIP-T), temporal consistency, appearance leakage.

Definitions as the evaluation scripts of MotionMatcher / Motion Inversion / MotionClone use them (raw
cosines of ``get_image_features`` / ``get_text_features``; frames resized to the model's input size on the
short side and center-cropped, normalised with the processor's mean and std):

* ``text_alignment`` = mean over frames of cos(prompt, frame) -- higher is better (about 0.3 for a good
  match with ViT-B/32);
* ``temporal_consistency`` = mean over consecutive frames of cos(frame t-1, frame t) -- higher is smoother;
* ``appearance_leakage`` = mean over generated frames of the best cos(generated frame, reference frame) --
  how much the output looks like the reference; lower = less copying of the reference's look.

The model is a transformers ``CLIPModel`` folder the user has (e.g. ``openai/clip-vit-base-patch32`` saved in
``ComfyUI/models/clip``), or a hub id when online; it is never downloaded unless named.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError, ModelLoadError

__all__ = ["ClipScorer", "is_clip_folder", "load_clip_scorer"]

_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
#: frames encoded at once
BATCH = 32


def is_clip_folder(folder: str | os.PathLike) -> bool:
    """A transformers CLIP model folder: config.json with ``model_type`` ``clip`` (a full CLIPModel, with both
    towers: the text-only encoders of diffusion models do not score images)."""
    config = Path(folder) / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("model_type") == "clip"


def _not_clip(source: str, why: str) -> ModelLoadError:
    return ModelLoadError(
        f"{source} is not a CLIP model that can score images and text ({why}). Give a transformers CLIPModel folder "
        "with both the text and the image tower -- config.json with model_type 'clip', the weights, the tokenizer "
        "and preprocessor_config.json -- e.g. openai/clip-vit-base-patch32 saved with CLIPModel.save_pretrained "
        "into ComfyUI/models/clip/clip-vit-base-patch32 (a text encoder of a diffusion model, such as "
        "CLIPTextModel, is not enough).")


@dataclass
class ClipScorer:
    model: Any
    tokenizer: Any
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str
    #: the folder or hub id it was loaded from (a training run reloads it on its own device)
    source: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames[..., :3].to(self.device, torch.float32).permute(0, 3, 1, 2)
        h, w = x.shape[-2:]
        s = self.image_size / min(h, w)
        nh, nw = max(self.image_size, round(h * s)), max(self.image_size, round(w * s))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (nh - self.image_size) // 2, (nw - self.image_size) // 2
        x = x[..., top:top + self.image_size, left:left + self.image_size]
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.dtype)

    @staticmethod
    def _features(out: Any) -> torch.Tensor:
        # transformers 5 may return a model output instead of the projected tensor
        if torch.is_tensor(out):
            return out
        for key in ("image_embeds", "text_embeds", "pooler_output"):
            value = getattr(out, key, None)
            if value is not None:
                return value
        raise ModelLoadError("The CLIP model returned no features; use a transformers CLIPModel.")

    @torch.no_grad()
    def image_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Unit-norm image features ``[F, D]`` of ``frames [F, H, W, 3]`` (0..1), in batches on the model's device."""
        chunks = [self._features(self.model.get_image_features(pixel_values=self._preprocess(frames[i:i + BATCH])))
                  for i in range(0, frames.shape[0], BATCH)]
        return F.normalize(torch.cat(chunks).float(), dim=-1).cpu()

    @torch.no_grad()
    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        limit = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=limit,
                                return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        return F.normalize(self._features(self.model.get_text_features(**tokens)).float(), dim=-1).cpu()

    # ---------------------------------------------------------------------------------- the scores
    def text_alignment(self, frames: torch.Tensor, prompt: str, features: torch.Tensor | None = None) -> float:
        if not str(prompt).strip():
            raise InputError("Text alignment (CLIP-T) needs the prompt the video was generated from; it is empty.")
        image = self.image_features(frames) if features is None else features
        return float((image @ self.text_features([str(prompt)])[0]).mean())

    def temporal_consistency(self, frames: torch.Tensor, features: torch.Tensor | None = None) -> float:
        image = self.image_features(frames) if features is None else features
        if image.shape[0] < 2:
            raise InputError("Temporal consistency needs at least 2 frames.")
        return float((image[1:] * image[:-1]).sum(-1).mean())

    def appearance_leakage(self, generated: torch.Tensor, reference: torch.Tensor,
                           generated_features: torch.Tensor | None = None,
                           reference_features: torch.Tensor | None = None) -> float:
        gen = self.image_features(generated) if generated_features is None else generated_features
        ref = self.image_features(reference) if reference_features is None else reference_features
        return float((gen @ ref.T).max(dim=1).values.mean())


def load_clip_scorer(source: str | os.PathLike, *, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32, local_only: bool | None = None) -> ClipScorer:
    """A :class:`ClipScorer` from a transformers CLIP folder, or from a hub id (downloads only when online and
    ``HF_HUB_OFFLINE`` is not set)."""
    from transformers import AutoTokenizer, CLIPModel

    text = str(source).strip()
    if not text:
        raise InputError("No CLIP model was given: name a transformers CLIP folder or a hub id "
                         "(e.g. openai/clip-vit-base-patch32).")
    path = Path(text).expanduser()
    # a hub id is "name" or "org/name"; anything else that looks like a path is one
    is_path = (path.exists() or path.is_absolute() or text.startswith((".", "~")) or text.count("/") > 1
               or "\\" in text)
    if is_path:
        if not path.is_dir():
            raise _not_clip(str(path), "no such folder" if not path.exists() else "it is a file, not a folder")
        if not (path / "config.json").is_file():
            raise _not_clip(str(path), "it has no config.json")
        if not is_clip_folder(path):
            try:
                kind = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
            except (OSError, ValueError, AttributeError):
                kind = "unreadable"
            raise _not_clip(str(path), f"its config.json says model_type {kind!r}")
    offline = bool(local_only) if local_only is not None else (is_path or os.environ.get("HF_HUB_OFFLINE") == "1")
    try:
        model = CLIPModel.from_pretrained(text, local_files_only=offline, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(text, local_files_only=offline)
    except (OSError, ValueError, KeyError) as exc:
        if is_path:
            raise _not_clip(str(path), f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
        raise ModelLoadError(f"The CLIP model {text!r} cannot be loaded ({str(exc).splitlines()[0] if str(exc) else exc}). "
                             "Offline, give a local CLIP folder; online, check the hub id.") from None
    if len(tokenizer) < 3:  # transformers 5 can return a degenerate tokenizer offline
        raise _not_clip(text, "its tokenizer files are missing (vocab.json and merges.txt)")
    mean, std = _OPENAI_MEAN, _OPENAI_STD
    size = int(model.config.vision_config.image_size)
    pre = path / "preprocessor_config.json" if is_path else None
    if pre is not None and pre.is_file():
        try:
            data = json.loads(pre.read_text(encoding="utf-8"))
            mean = tuple(data.get("image_mean", mean))
            std = tuple(data.get("image_std", std))
        except (OSError, ValueError):
            pass
    model.requires_grad_(False)
    model.train(False)
    return ClipScorer(model.to(torch.device(device)), tokenizer, size, mean, std,
                      path.name if is_path else text, str(path.resolve()) if is_path else text)
