"""Training losses shared by the training methods (one implementation each).

Every loss is computed in float32, whatever the dtype the denoiser ran in: under fp16/bf16 autocast the
prediction comes back in half precision, and squaring half-precision differences loses the small residuals
late in training (the references upcast the same way).

Tensor layout: latents / predictions ``[B, C, F, h, w]`` (frame axis 2), as everywhere in motion_core.
"""

from __future__ import annotations

import math

import torch

from .errors import InputError

__all__ = [
    "FRAME_DIM",
    "appearance_debiased_loss",
    "debias",
    "diffusion_mse",
    "temporal_loss",
]

#: the frame axis of ``[B, C, F, h, w]`` latents
FRAME_DIM = 2


def diffusion_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Plain denoising loss ``mean((ε̂ − ε)²)`` over every element, in float32."""
    if prediction.shape != target.shape:
        raise InputError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape.")
    return torch.mean((prediction.float() - target.float()) ** 2)


def _anchor_frames(x: torch.Tensor, anchor: int | torch.Tensor) -> torch.Tensor:
    """``x[:, :, a]`` kept as a length-1 frame axis (so it broadcasts over all frames); ``anchor`` is one
    frame index for the whole batch (the reference, batch size 1) or one per batch item ``[B]``."""
    frames = x.shape[FRAME_DIM]
    if torch.is_tensor(anchor) and anchor.dim() > 0:
        if anchor.shape[0] != x.shape[0]:
            raise InputError(f"{anchor.shape[0]} anchor frames for a batch of {x.shape[0]}.")
        if int(anchor.min()) < 0 or int(anchor.max()) >= frames:
            raise InputError(f"anchor frames {anchor.tolist()} outside 0..{frames - 1}.")
        index = anchor.to(x.device).long().view(-1, 1, 1, 1, 1).expand(-1, x.shape[1], 1, *x.shape[3:])
        return torch.gather(x, FRAME_DIM, index)
    a = int(anchor)
    if not 0 <= a < frames:
        raise InputError(f"anchor frame {a} outside 0..{frames - 1}.")
    return x[:, :, a:a + 1]


def debias(x: torch.Tensor, anchor: int | torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """MotionDirector's appearance-debiased noise ``ε_ad,i = √(β²+1)·ε_i − β·ε_anchor`` (paper eq. for the
    temporal path): subtracting a scaled anchor frame removes what all frames share (appearance), and the
    factor √(β²+1) keeps the result unit-variance for independent unit-variance frames."""
    alpha = math.sqrt(beta * beta + 1.0)
    return alpha * x - beta * _anchor_frames(x, anchor)


def appearance_debiased_loss(prediction: torch.Tensor, target: torch.Tensor, anchor: int | torch.Tensor,
                             beta: float = 1.0) -> torch.Tensor:
    """``L_ad = mean( (debias(ε̂) − debias(ε))² )`` with one random anchor frame ``a``.

    Since debiasing is linear this equals ``mean( (√(β²+1)·d_f − β·d_a)² )`` with ``d = ε̂ − ε``
    (reference/motion_director_and_custom_motion.md §1.5 step 5; β = 1, α = √2 in the reference configs).
    Motion Inversion reuses this function for its debiased option.
    """
    if prediction.shape != target.shape:
        raise InputError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape.")
    if prediction.dim() != 5:
        raise InputError(f"the appearance-debiased loss needs [B,C,F,h,w] tensors, got {tuple(prediction.shape)}.")
    d = prediction.float() - target.float()
    return torch.mean(debias(d, anchor, beta) ** 2)


def temporal_loss(prediction: torch.Tensor, target: torch.Tensor, anchor: int | torch.Tensor,
                  beta: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MotionDirector's temporal-path loss ``L_T = L_org + L_ad`` (unweighted sum, as in paper and code);
    returns the total and its two parts (for logging)."""
    l_org = diffusion_mse(prediction, target)
    l_ad = appearance_debiased_loss(prediction, target, anchor, beta)
    return l_org + l_ad, {"loss_org": l_org, "loss_ad": l_ad}
