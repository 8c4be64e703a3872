"""Triton forward kernel of :func:`motion_core.attention.flow_kernel.frame_attention_stats`.

One program per (batch*head, block of ``BLOCK_M`` queries). For every key frame it streams the frame's keys
in blocks of ``BLOCK_N`` positions and keeps, per query, an online softmax: the running maximum ``m``
(and where it was reached: the argmax), the running sum ``l`` of ``exp(s - m)`` and the running sums of
``exp(s - m) * x`` and ``exp(s - m) * y``, all rescaled by ``exp(m_old - m_new)`` when the maximum grows.
At the end of a frame it writes ``lse = m + log l`` and the expected position ``(X / l, Y / l)``. Nothing
larger than a ``BLOCK_M x BLOCK_N`` score tile exists at any time; the outputs are O(N * F).

Only the forward runs in Triton; the backward is the chunked PyTorch recomputation in ``flow_kernel.py``
(it needs only ``lse`` and the positions this kernel writes). Importing this module needs the triton
package (``flow_kernel`` imports it only when the Triton backend is chosen); the kernel is jitted on first
use, never at import, so the interpreter mode is read when the kernel first runs; with ``TRITON_INTERPRET=1`` it runs on CPU tensors through
Triton's interpreter (slow: tests keep the sizes tiny).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_KERNELS: dict[bool, object] = {}


def _frame_stats_kernel(Q, K, LSE, POS, ARG, scale, n_queries, frame_size, frames, width,
                        stride_qb, stride_qn, stride_qd, stride_kb, stride_kn, stride_kd,
                        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < n_queries
    q = tl.load(Q + bh * stride_qb + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    out_rows = bh * n_queries * frames + offs_m * frames
    for f in range(0, frames):
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        x_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        y_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        a_i = tl.zeros([BLOCK_M], dtype=tl.int32)
        for start in range(0, frame_size, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            col_ok = offs_n < frame_size
            key_index = f * frame_size + offs_n
            k = tl.load(K + bh * stride_kb + key_index[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                        mask=col_ok[None, :] & (offs_d[:, None] < HEAD_DIM), other=0.0)
            if IEEE:
                s = tl.dot(q, k, input_precision="ieee")
            else:
                s = tl.dot(q, k)
            s = tl.where(col_ok[None, :], s * scale, float("-inf"))
            block_max = tl.max(s, axis=1)
            block_arg = tl.argmax(s, axis=1).to(tl.int32) + start
            m_new = tl.maximum(m_i, block_max)
            a_i = tl.where(block_max > m_i, block_arg, a_i)
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            xs = (offs_n % width).to(tl.float32)
            ys = (offs_n // width).to(tl.float32)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            x_i = x_i * alpha + tl.sum(p * xs[None, :], axis=1)
            y_i = y_i * alpha + tl.sum(p * ys[None, :], axis=1)
            m_i = m_new
        out = out_rows + f
        tl.store(LSE + out, m_i + tl.log(l_i), mask=row_ok)
        tl.store(POS + out * 2, x_i / l_i, mask=row_ok)
        tl.store(POS + out * 2 + 1, y_i / l_i, mask=row_ok)
        tl.store(ARG + out, a_i.to(tl.int64), mask=row_ok)


def _kernel():
    """The jitted kernel for the current mode (compiled or interpreted), built on first use."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if interpret not in _KERNELS:
        _KERNELS[interpret] = triton.jit(_frame_stats_kernel)
    return _KERNELS[interpret]


def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def triton_frame_stats(q: torch.Tensor, k: torch.Tensor, scale: float, frames: int, height: int,
                       width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(lse [B,H,Nq,F] float32, position [B,H,Nq,F,2] float32, argmax [B,H,Nq,F] int64)``."""
    b, h, nq, d = q.shape
    frame_size = height * width
    dtype = q.dtype
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        # tl.dot takes half types and float32; float64 (gradcheck) goes through float32 here
        dtype = torch.float32
    q3 = q.reshape(b * h, nq, d).to(dtype).contiguous()
    k3 = k.reshape(b * h, k.shape[2], d).to(dtype).contiguous()
    lse = torch.empty(b * h, nq, frames, device=q.device, dtype=torch.float32)
    position = torch.empty(b * h, nq, frames, 2, device=q.device, dtype=torch.float32)
    argmax = torch.empty(b * h, nq, frames, device=q.device, dtype=torch.int64)
    block_d = max(16, _next_pow2(d))
    block_m = 64 if q.is_cuda else 16
    block_n = max(16, min(64 if q.is_cuda else 32, _next_pow2(frame_size)))
    grid = (triton.cdiv(nq, block_m), b * h)
    _kernel()[grid](
        q3, k3, lse, position, argmax, float(scale), nq, frame_size, frames, width,
        q3.stride(0), q3.stride(1), q3.stride(2), k3.stride(0), k3.stride(1), k3.stride(2),
        HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, IEEE=dtype == torch.float32,
    )
    return (lse.view(b, h, nq, frames), position.view(b, h, nq, frames, 2), argmax.view(b, h, nq, frames))
