"""Measuring motion: motion fidelity from point tracks, CLIP text alignment, temporal consistency and
appearance leakage, and the pictures that show them (see README, "Evaluation").

Motion fidelity needs OpenCV (the ``metrics`` extra); the CLIP scores need a CLIP model the user has. Both are
imported lazily, so ``motion_core`` imports without them.
"""

from __future__ import annotations

from .clip import ClipScorer, is_clip_folder, load_clip_scorer
from .evaluate import LENGTH_POLICIES, SCORE_KEYS, MotionEvaluation, ReferenceMemo, align_lengths, evaluate_motion
from .fidelity import FidelityResult, motion_fidelity, step_similarity, track_similarity
from .tracks import TRACKERS, Tracks, track_points

__all__ = ["LENGTH_POLICIES", "SCORE_KEYS", "TRACKERS", "ClipScorer", "FidelityResult", "MotionEvaluation",
           "ReferenceMemo", "Tracks",
           "align_lengths", "evaluate_motion", "is_clip_folder", "load_clip_scorer", "motion_fidelity",
           "step_similarity", "track_points", "track_similarity"]
