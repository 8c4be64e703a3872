"""Which checkpoint of a training run is the best: the rule, written once (README "Evaluation" quotes it)."""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["BEST_RULE", "SCORED_KEYS", "selection_score"]

#: the history keys a scored preview adds
SCORED_KEYS = ("motion_fidelity", "text_alignment")

BEST_RULE = ("best = the scored checkpoint with the highest selection score, where selection score = motion fidelity "
             "of its preview against the training clip, plus the preview's text alignment (CLIP-T) for the preview "
             "prompt when a CLIP model scores the previews; on a tie the earlier step wins (less time to copy the "
             "reference's appearance)")


def selection_score(record: Mapping[str, Any]) -> float | None:
    """The number :data:`BEST_RULE` ranks checkpoints by (None for a step that was not scored)."""
    fidelity = record.get("motion_fidelity")
    if fidelity is None:
        return None
    text = record.get("text_alignment")
    return float(fidelity) + (float(text) if text is not None else 0.0)
