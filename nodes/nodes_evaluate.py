"""Evaluation nodes: load a CLIP model for scoring, score one generation against its reference, rank several.

Thin declarations over :mod:`motion_core.metrics`.
"""

from __future__ import annotations

import json
from pathlib import Path

from motion_core.errors import InputError

from . import host

NO_CLIP = "(no CLIP model folders found)"
NO_COTRACKER = "(none: use lucas_kanade)"
CLIP_KINDS = ("clip", "clip_vision", "text_encoders")
COTRACKER_KIND = "cotracker"
TRACKERS = ["lucas_kanade", "cotracker"]
LENGTHS = ["resample", "trim", "refuse"]
#: generations one Compare Motion node takes
COMPARED = 6


def _clip_roots() -> list[Path]:
    roots: list[Path] = []
    for kind in CLIP_KINDS:
        for folder in host.models_dirs(kind):
            if folder not in roots:
                roots.append(folder)
    return roots


def list_clip_models() -> list[str]:
    """transformers CLIPModel folders (config.json with model_type 'clip') in models/clip, clip_vision,
    text_encoders."""
    from motion_core.metrics.clip import is_clip_folder

    return host._walk_model_folders(_clip_roots(), is_clip_folder)


def list_cotracker_checkpoints() -> list[str]:
    found = set()
    for root in host.models_dirs(COTRACKER_KIND):
        if root.is_dir():
            found |= {p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in (".pth", ".pt")}
    return sorted(found, key=str.lower)


def _cotracker_path(name: str | None) -> str | None:
    if not name or name == NO_COTRACKER:
        return None
    return str(host._resolve_in(host.models_dirs(COTRACKER_KIND), name, "CoTracker checkpoint"))


def _tracker_inputs() -> dict:
    return {
        "tracker": (TRACKERS, {
            "default": "lucas_kanade",
            "tooltip": "Point tracker. lucas_kanade: OpenCV's pyramidal Lucas-Kanade on the first frame's corners, no "
                       "weights needed. cotracker: Meta's CoTracker on a grid (the papers' choice); needs the "
                       "co-tracker package and its .pth in ComfyUI/models/cotracker (never downloaded)."}),
        "length_mismatch": (LENGTHS, {
            "default": "resample",
            "tooltip": "When the videos have different frame counts: resample = take evenly spaced frames of the longer "
                       "(both span the same time, e.g. MotionClone spreads its frames over the whole reference); trim "
                       "= cut both to the shorter (same frame rate); refuse = stop with an error (also for different "
                       "sizes). The report says what was done."}),
    }


def _optional_inputs() -> dict:
    return {
        "prompt": ("STRING", {"default": "", "multiline": True,
                              "tooltip": "The prompt the video was generated from: gives text alignment (CLIP-T) "
                                         "when a CLIP model is connected. Empty = not computed."}),
        "clip": ("CLIP_SCORER", {"tooltip": "A CLIP model from Load CLIP Scorer: adds text alignment, temporal "
                                            "consistency and appearance leakage."}),
        "max_points": ("INT", {"default": 600, "min": 16, "max": 4096,
                               "tooltip": "Most points the lucas_kanade tracker starts from (corners of the first "
                                          "frame)."}),
        "cotracker_checkpoint": ([NO_COTRACKER] + list_cotracker_checkpoints(), {
            "default": NO_COTRACKER, "tooltip": "The CoTracker .pth file (ComfyUI/models/cotracker) for the cotracker "
                                                "tracker."}),
        "grid_size": ("INT", {"default": 55, "min": 4, "max": 100,
                              "tooltip": "cotracker: points per side of the grid it tracks (DMT: 55)."}),
    }


def _evaluate(reference, generated, tracker, length_mismatch, prompt, clip, max_points, cotracker_checkpoint,
              grid_size, what: str = "generated video", memo=None):
    from motion_core.metrics import evaluate_motion

    try:
        return evaluate_motion(reference, generated, prompt=prompt or None, clip=clip, tracker=tracker,
                               length=length_mismatch, max_points=int(max_points),
                               cotracker_checkpoint=_cotracker_path(cotracker_checkpoint), grid_size=int(grid_size),
                               device=host.torch_device("auto"), memo=memo)
    except InputError as exc:
        if what == "generated video":
            raise
        raise type(exc)(f"{what}: {exc}") from None


class MotionKitLoadCLIPScorer:
    DESCRIPTION = (
        "Loads a CLIP model (transformers CLIPModel folder with its image and text towers, e.g. "
        "openai/clip-vit-base-patch32 saved into ComfyUI/models/clip) for Evaluate Motion and Compare Motion: text "
        "alignment (CLIP-T), temporal consistency and appearance leakage. A hub id is downloaded only when given."
    )
    CATEGORY = "MotionKit/Evaluation"
    FUNCTION = "load"
    RETURN_TYPES = ("CLIP_SCORER",)
    RETURN_NAMES = ("clip",)
    OUTPUT_TOOLTIPS = ("The CLIP model; connect it to Evaluate Motion / Compare Motion.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip_name": (list_clip_models() or [NO_CLIP], {
                    "tooltip": "A CLIPModel folder in ComfyUI/models/clip (or clip_vision, text_encoders): config.json "
                               "with model_type 'clip', weights, tokenizer and preprocessor_config.json."}),
            },
            "optional": {
                "hub_id": ("STRING", {"default": "", "tooltip": "Instead of a folder: a Hugging Face hub id such as "
                                                               "openai/clip-vit-base-patch32 (downloaded when online)."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, clip_name=None, hub_id=None):
        if hub_id is not None and str(hub_id).strip():
            return True
        if clip_name == NO_CLIP:
            return (f"There is no CLIP model folder in {', '.join(str(r) for r in _clip_roots())}: save a transformers "
                    "CLIPModel there (e.g. openai/clip-vit-base-patch32), or give a hub_id.")
        return True

    def load(self, clip_name, hub_id=""):
        from motion_core.metrics import load_clip_scorer

        device = host.torch_device("auto")
        if str(hub_id or "").strip():
            return (load_clip_scorer(str(hub_id).strip(), device=device),)
        if clip_name == NO_CLIP:
            raise InputError(self.VALIDATE_INPUTS(clip_name=clip_name))
        return (load_clip_scorer(host._resolve_in(_clip_roots(), clip_name, "CLIP model folder"), device=device),)


class MotionKitEvaluateMotion:
    DESCRIPTION = (
        "Scores a generated video against its reference: motion fidelity (do the point tracks move alike? 1 = the "
        "same motion), and with a CLIP model text alignment (CLIP-T), temporal consistency and appearance leakage "
        "(how much the output copies the reference's look; lower is better). Outputs the scores as JSON and a "
        "picture of both videos' tracks side by side with the scores."
    )
    CATEGORY = "MotionKit/Evaluation"
    FUNCTION = "evaluate"
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("scores", "report")
    OUTPUT_TOOLTIPS = (
        "The scores and how they were obtained (tracks, frames, alignment notes) as JSON text.",
        "Both videos' tracks (colored by direction, gray = still) side by side, and the scores.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "reference": ("IMAGE", {"tooltip": "The reference video whose motion was to be reproduced."}),
                "generated": ("IMAGE", {"tooltip": "The generated video to score."}),
                **_tracker_inputs(),
            },
            "optional": _optional_inputs(),
        }

    def evaluate(self, reference, generated, tracker="lucas_kanade", length_mismatch="resample", prompt="", clip=None,
                 max_points=600, cotracker_checkpoint=NO_COTRACKER, grid_size=55):
        from motion_core.metrics.render import render_evaluation

        ev = _evaluate(reference, generated, tracker, length_mismatch, prompt, clip, max_points, cotracker_checkpoint,
                       grid_size)
        return (json.dumps(ev.to_json(), indent=2), render_evaluation(ev))


class MotionKitCompareMotion:
    DESCRIPTION = (
        "Ranks several generations of one reference (e.g. MotionDirector, Motion Inversion and MotionClone on the "
        "same prompt) by motion fidelity, with text alignment, temporal consistency and appearance leakage when a "
        "CLIP model is connected: one table image, best first, and the scores as JSON."
    )
    CATEGORY = "MotionKit/Evaluation"
    FUNCTION = "compare"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("table", "scores")
    OUTPUT_TOOLTIPS = ("The ranking table (thumbnail, label, every score; the best of each column in green).",
                       "Every generation's scores as JSON, best first.")

    @classmethod
    def INPUT_TYPES(cls):
        optional = {f"generated_{i}": ("IMAGE", {"tooltip": f"Generation {i} (optional; at least one)."})
                    for i in range(1, COMPARED + 1)}
        return {
            "required": {
                "reference": ("IMAGE", {"tooltip": "The reference video every generation should move like."}),
                "labels": ("STRING", {"default": "", "multiline": True,
                                      "tooltip": "One label per line, for generated_1, generated_2, ... in order "
                                                 "(empty lines or missing labels: 'generation N')."}),
                **_tracker_inputs(),
            },
            "optional": {**optional, **_optional_inputs()},
        }

    def compare(self, reference, labels="", tracker="lucas_kanade", length_mismatch="resample", prompt="", clip=None,
                max_points=600, cotracker_checkpoint=NO_COTRACKER, grid_size=55, generated_1=None, generated_2=None,
                generated_3=None, generated_4=None, generated_5=None, generated_6=None):
        from motion_core.metrics import ReferenceMemo
        from motion_core.metrics.render import ranking, render_comparison
        from motion_core.video import from_comfy_image

        names = [line.strip() for line in str(labels).splitlines()]
        given = (generated_1, generated_2, generated_3, generated_4, generated_5, generated_6)
        videos = list(enumerate(given[:COMPARED], start=1))
        videos = [(i, v) for i, v in videos if v is not None]
        if not videos:
            raise InputError("Compare Motion has no generation to compare: connect videos to generated_1, "
                             "generated_2, ...")
        rows = []
        memo = ReferenceMemo()  # the reference is tracked once for all the generations
        for i, video in videos:
            label = names[i - 1] if i - 1 < len(names) and names[i - 1] else f"generation {i}"
            rows.append((label, _evaluate(reference, video, tracker, length_mismatch, prompt, clip, max_points,
                                          cotracker_checkpoint, grid_size, what=f"generated_{i} ({label})",
                                          memo=memo)))
        table = render_comparison(from_comfy_image(reference), rows)
        ranked = [{"rank": place, "label": rows[i][0], **rows[i][1].to_json()}
                  for place, i in enumerate(ranking(rows), start=1)]
        return (table, json.dumps(ranked, indent=2))


NODE_CLASS_MAPPINGS = {
    "MotionKitLoadCLIPScorer": MotionKitLoadCLIPScorer,
    "MotionKitEvaluateMotion": MotionKitEvaluateMotion,
    "MotionKitCompareMotion": MotionKitCompareMotion,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "MotionKitLoadCLIPScorer": "Load CLIP Scorer (MotionKit)",
    "MotionKitEvaluateMotion": "Evaluate Motion (MotionKit)",
    "MotionKitCompareMotion": "Compare Motion (MotionKit)",
}
