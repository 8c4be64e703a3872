"""One call that scores a generated video against its reference: motion fidelity from point tracks, and --
with a CLIP model -- text alignment, temporal consistency and appearance leakage (:mod:`.clip`)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InputError
from ..video import from_comfy_image
from .clip import ClipScorer
from .fidelity import FidelityResult, motion_fidelity
from .tracks import MIN_FRAMES, Tracks, track_points

__all__ = ["LENGTH_POLICIES", "SCORE_KEYS", "MotionEvaluation", "ReferenceMemo", "align_lengths", "evaluate_motion"]

#: how two videos of different lengths are compared
LENGTH_POLICIES = ("resample", "trim", "refuse")
#: the scores of a report, in the order tables show them, with their direction (True = higher is better)
SCORE_KEYS = {"motion_fidelity": True, "text_alignment": True, "temporal_consistency": True,
              "appearance_leakage": False}
REPORT_FORMAT = "motionkit.motion_evaluation"


def _frames(video: Any, what: str) -> torch.Tensor:
    try:
        frames = from_comfy_image(video)
    except InputError as exc:
        raise InputError(f"The {what}: {exc}") from None
    if frames.shape[0] < MIN_FRAMES:
        raise InputError(f"The {what} has {frames.shape[0]} frame(s): at least {MIN_FRAMES} are needed to measure "
                         "motion (two frame steps). Connect the whole clip, not a single image.")
    return frames


def _even_indices(count: int, wanted: int) -> torch.Tensor:
    return torch.linspace(0, count - 1, wanted).round().long()


def align_lengths(reference: torch.Tensor, generated: torch.Tensor, policy: str = "resample"
                  ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Both videos at one frame count, and the sentences that say how they were aligned (sizes may differ:
    tracks are compared in fractions of each frame's size)."""
    if policy not in LENGTH_POLICIES:
        raise InputError(f"Unknown length policy {policy!r}: choose one of {', '.join(LENGTH_POLICIES)}.")
    notes = []
    fr, fg = reference.shape[0], generated.shape[0]
    (hr, wr), (hg, wg) = reference.shape[1:3], generated.shape[1:3]
    if (hr, wr) != (hg, wg):
        if policy == "refuse":
            raise InputError(f"The reference is {wr}x{hr} and the generated video {wg}x{hg}; with the 'refuse' policy "
                             "both must have the same size. Choose 'resample' or 'trim' to compare them anyway "
                             "(tracks are then compared in fractions of each frame's width and height).")
        notes.append(f"sizes differ (reference {wr}x{hr}, generated {wg}x{hg}): each video was tracked at its own size "
                     "and point positions compared as fractions of its width and height")
    if fr != fg:
        if policy == "refuse":
            raise InputError(f"The reference has {fr} frames and the generated video {fg}; with the 'refuse' policy "
                             "both must have the same length. Choose 'resample' (the longer one is sampled at evenly "
                             "spaced frames: both cover the same time) or 'trim' (both are cut to the shorter: same "
                             "frame rate).")
        n = min(fr, fg)
        if policy == "resample":
            longer = "reference" if fr > fg else "generated video"
            if fr > fg:
                reference = reference[_even_indices(fr, n)]
            else:
                generated = generated[_even_indices(fg, n)]
            notes.append(f"lengths differ (reference {fr} frames, generated {fg}): the {longer} was resampled to {n} "
                         "evenly spaced frames, as both are taken to span the same time")
        else:
            reference, generated = reference[:n], generated[:n]
            notes.append(f"lengths differ (reference {fr} frames, generated {fg}): both were trimmed to their first "
                         f"{n} frames (same frame rate assumed)")
    return reference, generated, notes


class ReferenceMemo:
    """One reference scored against many videos (a run's checkpoint previews, *Compare Motion*'s generations,
    the CLI's several ``--video``): its point tracks and CLIP image features are computed once per way it is
    aligned and reused. Bound to the first reference object it sees; another one empties it."""

    def __init__(self) -> None:
        self._reference: Any = None
        self._values: dict[tuple, Any] = {}

    def get(self, reference: Any, key: tuple, compute: Any) -> Any:
        if self._reference is not reference:
            self._reference, self._values = reference, {}
        if key not in self._values:
            self._values[key] = compute()
        return self._values[key]


@dataclass
class MotionEvaluation:
    """Scores of one generated video against its reference (None where a score was not computed)."""

    motion_fidelity: float
    text_alignment: float | None
    temporal_consistency: float | None
    appearance_leakage: float | None
    reference_tracks: Tracks
    generated_tracks: Tracks
    fidelity: FidelityResult
    reference_frames: torch.Tensor
    generated_frames: torch.Tensor
    prompt: str | None = None
    clip_model: str | None = None
    notes: list[str] = field(default_factory=list)
    frames: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def scores(self) -> dict[str, float | None]:
        return {k: getattr(self, k) for k in SCORE_KEYS}

    def to_json(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(float(v), 6)

        return {
            "format": REPORT_FORMAT, "version": 1,
            **{k: r(v) for k, v in self.scores().items()},
            "higher_is_better": {k: v for k, v in SCORE_KEYS.items()},
            "tracker": self.reference_tracks.tracker,
            "tracks": {"reference": self.reference_tracks.count, "generated": self.generated_tracks.count,
                       "reference_queried": self.reference_tracks.queried,
                       "generated_queried": self.generated_tracks.queried},
            "frames": dict(self.frames),
            "size": {"reference": [self.reference_tracks.width, self.reference_tracks.height],
                     "generated": [self.generated_tracks.width, self.generated_tracks.height]},
            "prompt": self.prompt, "clip_model": self.clip_model, "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
        }


def evaluate_motion(reference: Any, generated: Any, *, prompt: str | None = None, clip: ClipScorer | None = None,
                    tracker: str = "lucas_kanade", length: str = "resample", max_points: int = 600,
                    cotracker_checkpoint: str | os.PathLike | None = None, grid_size: int = 55,
                    device: str | torch.device = "cpu", memo: ReferenceMemo | None = None) -> MotionEvaluation:
    """Score ``generated`` against ``reference`` (IMAGE batches / frames ``[F,H,W,3]`` in 0..1).

    Motion fidelity always (:func:`~.fidelity.motion_fidelity`); with ``clip``: temporal consistency and
    appearance leakage of the generated video, and text alignment when ``prompt`` is given. ``memo``: the
    reference's tracks and CLIP features from earlier calls with the same reference (:class:`ReferenceMemo`)."""
    started = time.perf_counter()
    original = reference
    memo = memo if memo is not None else ReferenceMemo()
    ref, gen = _frames(reference, "reference video"), _frames(generated, "generated video")
    # the aligned reference depends only on its own frames, the generated length and the policy
    aligned = (int(ref.shape[0]), int(gen.shape[0]), length)
    counts = {"reference": int(ref.shape[0]), "generated": int(gen.shape[0])}
    ref, gen, notes = align_lengths(ref, gen, length)
    counts["compared"] = int(ref.shape[0])
    options = dict(tracker=tracker, max_points=max_points, cotracker_checkpoint=cotracker_checkpoint,
                   grid_size=grid_size, device=device)
    ref_tracks = memo.get(original, ("tracks", aligned, tuple(sorted((k, str(v)) for k, v in options.items()))),
                          lambda: track_points(ref, what="reference video", **options))
    gen_tracks = track_points(gen, what="generated video", **options)
    fidelity = motion_fidelity(ref_tracks, gen_tracks)
    if gen_tracks.count == 0:
        notes.append("no point could be tracked in the generated video (flat frames): scored as no motion")
    text = consistency = leakage = None
    text_prompt = str(prompt).strip() if prompt is not None and str(prompt).strip() else None
    if clip is not None:
        gen_features = clip.image_features(gen)
        ref_features = memo.get(original, ("clip", id(clip), aligned), lambda: clip.image_features(ref))
        consistency = clip.temporal_consistency(gen, gen_features)
        leakage = clip.appearance_leakage(gen, ref, gen_features, ref_features)
        if text_prompt is not None:
            text = clip.text_alignment(gen, text_prompt, gen_features)
        else:
            notes.append("no prompt given: text alignment (CLIP-T) not computed")
    else:
        notes.append("no CLIP model given: text alignment, temporal consistency and appearance leakage not computed")
    return MotionEvaluation(
        motion_fidelity=fidelity.score, text_alignment=text, temporal_consistency=consistency,
        appearance_leakage=leakage, reference_tracks=ref_tracks, generated_tracks=gen_tracks, fidelity=fidelity,
        reference_frames=ref, generated_frames=gen, prompt=text_prompt,
        clip_model=clip.name if clip is not None else None, notes=notes, frames=counts,
        seconds=time.perf_counter() - started)
