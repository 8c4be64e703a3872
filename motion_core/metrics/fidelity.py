"""Motion fidelity: how closely the point tracks of a generated video follow those of the reference.

Written once here; every surface (nodes, CLI, training's checkpoint scores) calls :func:`motion_fidelity`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from .tracks import Tracks

__all__ = ["DIRECTION_FLOOR", "STATIC_SPEED", "STILL", "FidelityResult", "motion_fidelity", "step_similarity",
           "track_similarity"]

#: per-frame displacement (fraction of the frame size) below which a point counts as still: the softening
#: constant of the similarity (0.5 px per frame at 512 px)
STILL = 1e-3
#: the share of a step's similarity kept when the directions are opposite (see :func:`step_similarity`)
DIRECTION_FLOOR = 0.1
#: a reference whose fastest track moves less than this (fraction of the frame per frame) is too static
STATIC_SPEED = 1e-3
#: rows of the track-similarity matrix computed at once (bounds memory at ~N x 256 x T floats)
_CHUNK = 256


def step_similarity(a: torch.Tensor, b: torch.Tensor, eps: float = STILL) -> torch.Tensor:
    """Similarity in [0, 1] of displacement vectors ``a`` and ``b`` (``[..., 2]``, broadcast):
    ``rho * (f + (1 - f) * (1 + cos) / 2)`` with

    * ``rho = (2|a||b| + e^2) / (|a|^2 + |b|^2 + e^2)`` -- speed agreement: 1 for equal speeds, 0.8 for a
      factor of 2, about 0 when one point is still and the other moves; 1 when both are still;
    * ``cos = (a.b + e^2) / (|a||b| + e^2)`` -- the DMT cosine of the two directions, softened by ``e`` so still
      points (where DMT's unit vectors are NaN) count as agreeing in direction;
    * ``f`` = :data:`DIRECTION_FLOOR`: a reversed motion at the right speed keeps 0.1, so it ranks above no
      motion at all (0) but far below a motion in the right direction.

    It is symmetric, and 1 exactly when ``a == b``."""
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    e2 = eps * eps
    rho = (2 * na * nb + e2) / (na * na + nb * nb + e2)
    cos = ((a * b).sum(-1) + e2) / (na * nb + e2)
    return rho * (DIRECTION_FLOOR + (1 - DIRECTION_FLOOR) * (1 + cos) / 2)


def track_similarity(da: torch.Tensor, db: torch.Tensor, eps: float = STILL) -> torch.Tensor:
    """``[N, M]`` time-mean :func:`step_similarity` of displacement sequences ``da [N, T, 2]`` and ``db [M, T, 2]``."""
    rows = []
    for start in range(0, da.shape[0], _CHUNK):
        chunk = da[start:start + _CHUNK]
        rows.append(step_similarity(chunk[:, None], db[None], eps).mean(dim=-1))
    return torch.cat(rows) if rows else da.new_zeros(0, db.shape[0])


@dataclass
class FidelityResult:
    score: float
    #: for each reference track, the similarity of its best match among the generated tracks (and vice versa)
    reference_best: torch.Tensor
    generated_best: torch.Tensor
    reference_speed: torch.Tensor
    generated_speed: torch.Tensor


def _displacements(tracks: Tracks) -> torch.Tensor:
    p = tracks.normalized()
    return p[:, 1:] - p[:, :-1]


def motion_fidelity(reference: Tracks, generated: Tracks, eps: float = STILL) -> FidelityResult:
    """Motion fidelity in [0, 1] of two sets of tracks with the same number of frames (1 = the same motion).

    Source: the tracklet score of Yatim et al., "Space-Time Diffusion Features for Zero-Shot Text-Driven Motion
    Transfer" (DMT, CVPR 2024; ``motion_fidelity_score.py`` of diffusion-motion-transfer), used by MotionClone,
    Motion Inversion and MotionMatcher (MotionDirector's evaluation): for every track of one video, its
    best-matching track of the other by the time-mean similarity of their frame-to-frame displacements, and
    the mean of those best matches, taken both ways. As in DMT, tracks are matched wherever they are (a
    generated subject may be elsewhere in the frame).

    MotionKit's deliberate differences, so the score ranks what users ask about:

    * the per-step similarity is :func:`step_similarity` -- DMT's cosine of unit displacements ignores speed
      (150 steps that learned half the speed would score as the reference) and is NaN for still points;
    * the mean over tracks is weighted by each track's own mean speed, and the two directions are pooled,
      ``(sum_i w_i max_j S_ij + sum_j w_j max_i S_ij) / (sum_i w_i + sum_j w_j)``: a still background matches
      any still background perfectly and would otherwise hide a missing motion (a static output of a moving
      reference scores ~0, not the share of still points);
    * DMT's one-way mean and its identity subtraction (which drops the co-located grid track) are not used:
      the score is symmetric, and identical videos score exactly 1.

    Coordinates are fractions of each video's width and height, so videos of different sizes compare.
    """
    if reference.frames != generated.frames:
        raise InputError(f"Tracks of {reference.frames} and {generated.frames} frames cannot be compared: align the "
                         "videos' lengths first (evaluate_motion does).")
    da, db = _displacements(reference), _displacements(generated)
    wa, wb = da.norm(dim=-1).mean(dim=-1), db.norm(dim=-1).mean(dim=-1)
    if reference.count == 0 or float(wa.max()) < STATIC_SPEED:
        fastest = 0.0 if reference.count == 0 else float(wa.max()) * max(reference.width, reference.height)
        raise InputError(
            "The reference video is too static to measure motion fidelity: "
            + ("no point could be tracked through it (flat or featureless frames)" if reference.count == 0 else
               f"its fastest tracked point moves {fastest:.2f} px per frame")
            + ". Use a reference clip with visible motion (and texture to follow), or more frames of it.")
    if generated.count == 0:  # nothing to follow in the output: no motion at all
        zeros = torch.zeros(reference.count)
        return FidelityResult(0.0, zeros, torch.zeros(0), wa, wb)
    sim = track_similarity(da, db, eps)
    best_ref, best_gen = sim.max(dim=1).values, sim.max(dim=0).values
    score = (float((wa * best_ref).sum()) + float((wb * best_gen).sum())) / (float(wa.sum()) + float(wb.sum()))
    return FidelityResult(min(1.0, max(0.0, score)), best_ref, best_gen, wa, wb)
