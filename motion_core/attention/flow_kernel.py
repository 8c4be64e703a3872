"""Per-frame attention statistics of 3D (frames x positions) self-attention, in O(N * frames) memory.

In a video DiT (Wan, CogVideoX) one self-attention mixes every token of every latent frame: a query sees
``N = F * S`` keys (``S = h * w`` positions per latent frame). "Temporal attention" in the MotionClone
sense is the *cross-frame part* of that attention. For a query token ``i`` and a key frame ``f`` this
module computes, from the queries ``q`` and keys ``k`` of one attention layer:

* ``lse[i, f] = log sum_{j in f} exp(s_ij)``, ``s_ij = scale * q_i . k_j`` -- the per-frame log partition;
  from it the **attention mass** per key frame of the full-row softmax,
  ``mass[i, f] = sum_{j in f} softmax_j(s_i)[j] = softmax_f(lse[i, :])[f]`` (sums to 1 over frames);
* ``position[i, f] = sum_{j in f} p^f_ij * (x_j, y_j)`` with the per-frame softmax
  ``p^f_ij = exp(s_ij - lse[i, f])`` -- the attention-weighted expected position of query ``i`` in frame ``f``,
  the differentiable *attention motion flow* of DiTFlow (arXiv 2412.07776; reference/motion_clone.md s17);
* ``argmax[i, f] = argmax_{j in f} s_ij`` -- the best-matching key position in frame ``f`` (flat index
  ``y * width + x``), DiTFlow's argmax displacement used for the reference video (not differentiable).

The full ``N x N`` attention map is never materialised. Both implementations run an online softmax over
key blocks: per query and per key frame a running maximum, a running sum of ``exp(s - max)`` and running
coordinate sums, rescaled whenever the maximum grows.

* :func:`frame_attention_stats` with ``backend="torch"`` -- chunks of queries against all keys (one
  ``[chunk, N]`` score block at a time, the chunk sized from ``max_chunk_elements``); used on the CPU and
  as the reference. Differentiable through a custom autograd function whose backward recomputes the
  scores chunk by chunk (memory O(N * F + chunk * N), never O(N^2)).
* ``backend="triton"`` -- a Triton kernel (``flow_kernel_triton.py``): one program per (batch*head, query
  block), looping over key frames and key blocks inside a frame. Forward only; its backward is the same
  chunked PyTorch recomputation. ``backend="auto"`` picks Triton for CUDA tensors when Triton is
  installed, PyTorch otherwise. On a CPU the Triton kernel runs only under ``TRITON_INTERPRET=1`` (the
  tests compare it with the PyTorch path that way).

Token order is frame-major, as Wan's patch embedding flattens ``(F, h, w)``: key ``j`` lies in frame
``j // S`` at ``(x, y) = (j % S % width, j % S // width)``.

Gradients: with ``p^f`` the per-frame softmax, ``d lse[i,f] / d s_ij = p^f_ij`` and
``d position[i,f] / d s_ij = p^f_ij (c_j - position[i,f])`` for ``j`` in ``f`` (0 otherwise), so
``ds_ij = p^f_ij (g_lse[i,f] + G[i,f] . (c_j - position[i,f]))``; ``dq = scale * ds k``,
``dk = scale * ds^T q``. The mass is a plain softmax of ``lse`` over frames, differentiated by autograd.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import InputError

__all__ = [
    "FrameAttentionStats",
    "frame_attention_stats",
    "naive_frame_attention_stats",
    "triton_available",
]

Backend = Literal["auto", "torch", "triton"]

#: default budget of one chunk's score block (elements of a [B, H, chunk, N] float32 tensor): 2^24 = 64 MiB
DEFAULT_MAX_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class FrameAttentionStats:
    """Per query token and per key frame statistics of one attention layer (see the module docstring).

    Shapes: ``lse``/``mass``/``argmax`` ``[B, H, Nq, F]``; ``position`` ``[B, H, Nq, F, 2]`` as ``(x, y)`` in
    token-grid units (0..width-1, 0..height-1).
    """

    lse: torch.Tensor
    position: torch.Tensor
    argmax: torch.Tensor
    frames: int
    height: int
    width: int

    @property
    def mass(self) -> torch.Tensor:
        """Attention mass per key frame of the full-row softmax: ``softmax`` of ``lse`` over frames."""
        return torch.softmax(self.lse, dim=-1)

    @property
    def argmax_position(self) -> torch.Tensor:
        """The best-matching key position per frame as ``(x, y)`` floats ``[B, H, Nq, F, 2]``."""
        return torch.stack([(self.argmax % self.width), (self.argmax // self.width)], dim=-1).to(
            self.position.dtype)

    def mean_over_heads(self) -> "FrameAttentionStats":
        """Head-averaged statistics (DiTFlow averages heads), head axis kept with size 1.

        ``mass`` becomes the mean of the heads' masses (``lse`` is replaced by its log, which has the same
        softmax over frames); ``argmax`` cannot be averaged and becomes the grid cell nearest to the
        head-averaged ``position``."""
        position = self.position.mean(dim=1, keepdim=True)
        lse = self.mass.mean(dim=1, keepdim=True).clamp_min(torch.finfo(self.lse.dtype).tiny).log()
        x = position[..., 0].round().clamp(0, self.width - 1).long()
        y = position[..., 1].round().clamp(0, self.height - 1).long()
        return FrameAttentionStats(lse=lse, position=position, argmax=y * self.width + x,
                                   frames=self.frames, height=self.height, width=self.width)


# --------------------------------------------------------------------------------------------- checks
def _check_inputs(q: torch.Tensor, k: torch.Tensor, frames: int, height: int, width: int) -> None:
    if not (torch.is_tensor(q) and torch.is_tensor(k)) or q.dim() != 4 or k.dim() != 4:
        raise InputError("frame_attention_stats expects q and k of shape [B, heads, N, head_dim].")
    if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or q.shape[3] != k.shape[3]:
        raise InputError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch, heads or head_dim.")
    if frames < 1 or height < 1 or width < 1:
        raise InputError(f"frames, height and width must be positive (got {frames}, {height}, {width}).")
    if k.shape[2] != frames * height * width:
        raise InputError(
            f"k has {k.shape[2]} tokens but {frames} frames of {height}x{width} positions make "
            f"{frames * height * width}; pass only the video tokens (frame-major), without text tokens.")
    if q.device != k.device:
        raise InputError(f"q is on {q.device} and k on {k.device}.")


def _compute_dtype(q: torch.Tensor) -> torch.dtype:
    # float64 stays float64 (gradcheck); half types are upcast: softmax statistics in float32
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _coords(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``[S, 2]`` (x, y) of every position of a frame, row-major."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                            torch.arange(width, device=device, dtype=dtype), indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)


def _chunk_size(batch_heads: int, n_keys: int, n_queries: int, max_elements: int) -> int:
    return max(1, min(n_queries, max_elements // max(1, batch_heads * n_keys)))


# --------------------------------------------------------------------------------------------- torch path
@torch.no_grad()
def _torch_forward(q: torch.Tensor, k: torch.Tensor, scale: float, frames: int, height: int, width: int,
                   max_chunk_elements: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, h, nq, _ = q.shape
    s_per_frame = height * width
    dtype = _compute_dtype(q)
    coords = _coords(height, width, q.device, dtype)
    kt = k.to(dtype).transpose(-1, -2)
    lse = torch.empty(b, h, nq, frames, device=q.device, dtype=dtype)
    position = torch.empty(b, h, nq, frames, 2, device=q.device, dtype=dtype)
    argmax = torch.empty(b, h, nq, frames, device=q.device, dtype=torch.long)
    chunk = _chunk_size(b * h, k.shape[2], nq, max_chunk_elements)
    for start in range(0, nq, chunk):
        stop = min(nq, start + chunk)
        scores = (q[:, :, start:stop].to(dtype) @ kt).mul_(scale)
        scores = scores.view(b, h, stop - start, frames, s_per_frame)
        best, where = scores.max(dim=-1)
        weights = scores.sub_(best.unsqueeze(-1)).exp_()  # in place: the chunk's only big buffer
        total = weights.sum(dim=-1)
        lse[:, :, start:stop] = best + total.log()
        position[:, :, start:stop] = (weights @ coords) / total.unsqueeze(-1)
        argmax[:, :, start:stop] = where
    return lse, position, argmax


@torch.no_grad()
def _torch_backward(q: torch.Tensor, k: torch.Tensor, scale: float, frames: int, height: int, width: int,
                    lse: torch.Tensor, position: torch.Tensor, grad_lse: torch.Tensor | None,
                    grad_position: torch.Tensor | None, max_chunk_elements: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    b, h, nq, d = q.shape
    s_per_frame = height * width
    dtype = _compute_dtype(q)
    coords = _coords(height, width, q.device, dtype)
    kd = k.to(dtype)
    grad_q = torch.zeros(b, h, nq, d, device=q.device, dtype=dtype)
    grad_k = torch.zeros_like(kd)
    chunk = _chunk_size(b * h, k.shape[2], nq, max_chunk_elements)
    for start in range(0, nq, chunk):
        stop = min(nq, start + chunk)
        qc = q[:, :, start:stop].to(dtype)
        scores = (qc @ kd.transpose(-1, -2)).mul_(scale).view(b, h, stop - start, frames, s_per_frame)
        probs = scores.sub_(lse[:, :, start:stop].unsqueeze(-1)).exp_()  # per-frame softmax p^f
        weight = torch.zeros(b, h, stop - start, frames, 1, device=q.device, dtype=dtype)
        if grad_lse is not None:
            weight = weight + grad_lse[:, :, start:stop].to(dtype).unsqueeze(-1)
        if grad_position is not None:
            g = grad_position[:, :, start:stop].to(dtype)  # [b, h, c, F, 2]
            centred = (g * position[:, :, start:stop]).sum(-1, keepdim=True)
            weight = (g @ coords.T) - centred + weight  # G . c_j - G . pos
        grad_scores = probs.mul_(weight).view(b, h, stop - start, frames * s_per_frame)
        grad_q[:, :, start:stop] = (grad_scores @ kd) * scale
        grad_k += (grad_scores.transpose(-1, -2) @ qc) * scale
    return grad_q, grad_k


class _FrameStatsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, scale, frames, height, width, backend, max_chunk_elements):  # type: ignore[override]
        if backend == "triton":
            from .flow_kernel_triton import triton_frame_stats

            lse, position, argmax = triton_frame_stats(q, k, scale, frames, height, width)
        else:
            lse, position, argmax = _torch_forward(q, k, scale, frames, height, width, max_chunk_elements)
        ctx.save_for_backward(q, k, lse, position)
        ctx.config = (scale, frames, height, width, max_chunk_elements)
        ctx.mark_non_differentiable(argmax)
        return lse, position, argmax

    @staticmethod
    def backward(ctx, grad_lse, grad_position, _grad_argmax):  # type: ignore[override]
        q, k, lse, position = ctx.saved_tensors
        scale, frames, height, width, max_chunk_elements = ctx.config
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return (None,) * 8
        grad_q, grad_k = _torch_backward(q, k, scale, frames, height, width, lse, position, grad_lse,
                                         grad_position, max_chunk_elements)
        return (grad_q.to(q.dtype) if ctx.needs_input_grad[0] else None,
                grad_k.to(k.dtype) if ctx.needs_input_grad[1] else None, None, None, None, None, None, None)


# --------------------------------------------------------------------------------------------- public
def triton_available() -> bool:
    """True when Triton imports (a CUDA device or ``TRITON_INTERPRET=1`` is still needed to run it)."""
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the environment
        return False
    return True


def _resolve_backend(backend: Backend, q: torch.Tensor) -> str:
    if backend not in ("auto", "torch", "triton"):
        raise InputError(f"unknown backend {backend!r}; use 'auto', 'torch' or 'triton'.")
    if backend == "auto":
        return "triton" if q.is_cuda and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise InputError("backend='triton' needs the triton package (pip install triton).")
        if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise InputError("The Triton kernel runs on CUDA tensors (or on the CPU with TRITON_INTERPRET=1).")
    return backend


def frame_attention_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    frames: int,
    height: int,
    width: int,
    scale: float | None = None,
    backend: Backend = "auto",
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
) -> FrameAttentionStats:
    """Per-frame attention statistics of queries ``q`` ``[B, H, Nq, d]`` against the video keys ``k``
    ``[B, H, frames*height*width, d]`` (frame-major), without materialising the attention map.

    ``scale`` defaults to ``d ** -0.5`` (what the attention layer itself uses); pass ``scale / T`` for a
    temperature ``T`` (DiTFlow uses 2). Differentiable w.r.t. ``q`` and ``k`` (``lse``/``mass`` and
    ``position``). ``Nq`` may differ from ``N`` (e.g. the queries of a subset of frames).
    """
    _check_inputs(q, k, frames, height, width)
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    chosen = _resolve_backend(backend, q)
    lse, position, argmax = _FrameStatsFunction.apply(q, k, scale, int(frames), int(height), int(width),
                                                      chosen, int(max_chunk_elements))
    return FrameAttentionStats(lse=lse, position=position, argmax=argmax, frames=int(frames),
                               height=int(height), width=int(width))


def naive_frame_attention_stats(q: torch.Tensor, k: torch.Tensor, *, frames: int, height: int, width: int,
                                scale: float | None = None) -> FrameAttentionStats:
    """The same statistics from the full ``[Nq, N]`` score matrix (plain autograd). O(N^2) memory: the
    reference for tests and the baseline of ``bench/bench_flow_kernel.py`` only."""
    _check_inputs(q, k, frames, height, width)
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    b, h, nq, _ = q.shape
    dtype = _compute_dtype(q)
    scores = (q.to(dtype) @ k.to(dtype).transpose(-1, -2)) * scale
    scores = scores.view(b, h, nq, frames, height * width)
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.softmax(scores, dim=-1)
    position = probs @ _coords(height, width, q.device, dtype)
    return FrameAttentionStats(lse=lse, position=position, argmax=scores.argmax(dim=-1), frames=frames,
                               height=height, width=width)
