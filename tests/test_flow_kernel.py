"""The O(N * frames) attention statistics kernel (motion_core/attention/flow_kernel.py).

The chunked PyTorch path must equal the naive full-map computation (values and float64 gradients, with
chunks small enough that every query block and frame boundary is exercised), and the Triton kernel -- run
on the CPU through Triton's interpreter -- must equal the PyTorch path. Sizes are tiny: the interpreter
executes the kernel in Python.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from motion_core.attention.flow_kernel import (
    FrameAttentionStats,
    frame_attention_stats,
    naive_frame_attention_stats,
)
from motion_core.errors import InputError


def _qk(b=1, h=2, frames=3, height=3, width=4, d=16, nq=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = frames * height * width
    q = torch.randn(b, h, n if nq is None else nq, d, generator=g, dtype=dtype)
    k = torch.randn(b, h, n, d, generator=g, dtype=dtype)
    return q, k


def _close(a: FrameAttentionStats, b: FrameAttentionStats, atol: float) -> None:
    torch.testing.assert_close(a.lse, b.lse.to(a.lse.dtype), atol=atol, rtol=0)
    torch.testing.assert_close(a.mass, b.mass.to(a.mass.dtype), atol=atol, rtol=0)
    torch.testing.assert_close(a.position, b.position.to(a.position.dtype), atol=atol, rtol=0)
    assert torch.equal(a.argmax, b.argmax)


@pytest.mark.parametrize("chunk", [1 << 20, 100])  # one chunk; one query per chunk (100 // (2 * 36))
def test_torch_path_equals_naive_values(chunk):
    q, k = _qk(frames=3, height=3, width=4)
    # a sharper softmax (scale 1) makes positions far from uniform, so errors in the per-frame sums show
    ref = naive_frame_attention_stats(q, k, frames=3, height=3, width=4, scale=1.0)
    got = frame_attention_stats(q, k, frames=3, height=3, width=4, scale=1.0, backend="torch",
                                max_chunk_elements=chunk)
    _close(got, ref, atol=2e-5)
    # the full-row softmax mass per frame sums to one, and equals the brute-force sum of the softmax
    assert torch.allclose(got.mass.sum(-1), torch.ones(()), atol=1e-5)
    probs = torch.softmax((q @ k.transpose(-1, -2)), dim=-1).view(1, 2, 36, 3, 12).sum(-1)
    assert torch.allclose(got.mass, probs, atol=1e-5)
    # expected positions lie inside the frame; argmax positions are grid cells
    assert got.position[..., 0].min() >= 0 and got.position[..., 0].max() <= 3
    assert got.position[..., 1].min() >= 0 and got.position[..., 1].max() <= 2
    assert got.argmax.max() < 12


def test_queries_subset_and_batch():
    q, k = _qk(b=2, h=3, frames=2, height=2, width=3, nq=5, d=8)
    ref = naive_frame_attention_stats(q, k, frames=2, height=2, width=3)
    got = frame_attention_stats(q, k, frames=2, height=2, width=3, backend="torch", max_chunk_elements=13)
    _close(got, ref, atol=2e-6)


def test_torch_path_gradients_equal_naive_float64():
    q, k = _qk(frames=3, height=2, width=3, d=8, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    w_mass = torch.randn(1, 2, 18, 3, generator=g, dtype=torch.float64)
    w_pos = torch.randn(1, 2, 18, 3, 2, generator=g, dtype=torch.float64)

    def energy(fn, q, k, **kw):
        s = fn(q, k, frames=3, height=2, width=3, scale=0.7, **kw)
        return (s.mass * w_mass).sum() + (s.position * w_pos).sum() + (s.lse * w_mass).sum()

    qa, ka = q.clone().requires_grad_(), k.clone().requires_grad_()
    ga = torch.autograd.grad(energy(naive_frame_attention_stats, qa, ka), (qa, ka))
    qb, kb = q.clone().requires_grad_(), k.clone().requires_grad_()
    gb = torch.autograd.grad(energy(frame_attention_stats, qb, kb, backend="torch", max_chunk_elements=40), (qb, kb))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-9)
        assert a.abs().max() > 1e-3  # the energy really depends on q and k


def test_gradcheck_small():
    q, k = _qk(b=1, h=1, frames=2, height=2, width=2, d=4, dtype=torch.float64, seed=3)
    q.requires_grad_()
    k.requires_grad_()

    def fn(q, k):
        s = frame_attention_stats(q, k, frames=2, height=2, width=2, backend="torch", max_chunk_elements=8)
        return s.mass, s.position, s.lse

    assert torch.autograd.gradcheck(fn, (q, k), eps=1e-6, atol=1e-7)


def test_half_precision_inputs_are_upcast():
    q, k = _qk(frames=2, height=2, width=4)
    ref = frame_attention_stats(q, k, frames=2, height=2, width=4, backend="torch")
    got = frame_attention_stats(q.bfloat16(), k.bfloat16(), frames=2, height=2, width=4, backend="torch")
    assert got.lse.dtype == torch.float32
    torch.testing.assert_close(got.mass, ref.mass, atol=3e-2, rtol=0)
    qh = q.bfloat16().requires_grad_()
    frame_attention_stats(qh, k.bfloat16(), frames=2, height=2, width=4).mass.sum().backward()
    assert qh.grad.dtype == torch.bfloat16


def test_mean_over_heads():
    q, k = _qk(h=3)
    s = frame_attention_stats(q, k, frames=3, height=3, width=4)
    m = s.mean_over_heads()
    assert m.mass.shape == (1, 1, 36, 3)
    torch.testing.assert_close(m.mass[:, 0], s.mass.mean(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(m.position[:, 0], s.position.mean(1))
    assert m.argmax_position.shape == (1, 1, 36, 3, 2)


def test_bad_inputs():
    q, k = _qk()
    with pytest.raises(InputError, match="text tokens"):
        frame_attention_stats(q, k, frames=3, height=3, width=5)
    with pytest.raises(InputError, match="disagree"):
        frame_attention_stats(q[:, :1], k, frames=3, height=3, width=4)
    with pytest.raises(InputError, match="backend"):
        frame_attention_stats(q, k, frames=3, height=3, width=4, backend="cuda")
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(InputError):
            frame_attention_stats(q, k, frames=3, height=3, width=4, backend="triton")


# --------------------------------------------------------------------------------------------- Triton
# TRITON_INTERPRET is read when triton.language defines its own jitted helpers (tl.max, tl.sum, ...), i.e. at
# import time -- and peft imports triton long before these tests run. So the interpreter checks run in a fresh
# Python process started with TRITON_INTERPRET=1 (one process for all of them: it pays the imports once).
_TRITON_CHECKS = r"""
import json, torch
from motion_core.attention.flow_kernel import frame_attention_stats, naive_frame_attention_stats
report = []
def qk(b, h, frames, height, width, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = frames * height * width
    return torch.randn(b, h, n, d, generator=g), torch.randn(b, h, n, d, generator=g)
for shape in ([1, 2, 3, 3, 5, 16], [2, 1, 2, 6, 7, 24]):   # frame size 15: one partial key block;
    b, h, f, hh, ww, d = shape                             # 42: two key blocks, head_dim padded to 32
    q, k = qk(*shape)
    ref = frame_attention_stats(q, k, frames=f, height=hh, width=ww, scale=0.5, backend="torch")
    got = frame_attention_stats(q, k, frames=f, height=hh, width=ww, scale=0.5, backend="triton")
    report.append({"shape": shape,
                   "lse": (got.lse - ref.lse).abs().max().item(),
                   "mass": (got.mass - ref.mass).abs().max().item(),
                   "position": (got.position - ref.position).abs().max().item(),
                   "argmax_equal": bool(torch.equal(got.argmax, ref.argmax))})
q, k = qk(1, 2, 2, 3, 4, 16)
qa, ka = q.clone().requires_grad_(), k.clone().requires_grad_()
s = frame_attention_stats(qa, ka, frames=2, height=3, width=4, backend="triton")
(s.mass.square().sum() + s.position.sum()).backward()
qb, kb = q.clone().requires_grad_(), k.clone().requires_grad_()
r = naive_frame_attention_stats(qb, kb, frames=2, height=3, width=4)
(r.mass.square().sum() + r.position.sum()).backward()
report.append({"grad_q": (qa.grad - qb.grad).abs().max().item(), "grad_k": (ka.grad - kb.grad).abs().max().item(),
               "grad_scale": qb.grad.abs().max().item()})
print("RESULT " + json.dumps(report))
"""


def test_triton_interpreter_equals_torch():
    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", _TRITON_CHECKS], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    *shapes, grads = json.loads(lines[-1][len("RESULT "):])
    for r in shapes:
        assert r["argmax_equal"], r
        assert max(r["lse"], r["mass"], r["position"]) < 2e-5, r
    # Triton forward + chunked PyTorch backward == autograd through the naive map
    assert grads["grad_scale"] > 1e-3
    assert max(grads["grad_q"], grads["grad_k"]) < 1e-5, grads
