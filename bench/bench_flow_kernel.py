"""Peak memory and time of the attention-motion-flow guidance energy: O(N * frames) kernel vs the full map.

    python bench/bench_flow_kernel.py [--frames 9 17 33 65] [--size 256] [--chunk-elements 1048576]

A small Wan transformer (width 128 = 2 heads x 64, ffn 512, 4 blocks, patch 1x2x2; random weights, no VAE)
runs on random latents of a ``size x size`` video (latent ``size/8``, so 16x16 = 256 tokens per latent frame
at 256) of 9, 17, 33, 65 frames (3, 5, 9, 17 latent frames). The queries and keys of block 2's
self-attention are captured and turned into per-frame statistics (attention mass per key frame and
expected position per frame, DiTFlow's attention motion flow); the energy is their squared distance to a
reference's. Two measurements per frame count, kernel (``frame_attention_stats``, chunked online softmax,
``backend="auto"``: Triton on CUDA, PyTorch on the CPU) against the naive map (``[N, N]`` scores per head,
plain autograd):

* ``stats``  -- energy + backward from the captured q/k alone (the part the kernel replaces);
* ``guided`` -- a whole guided step: transformer forward with capture, energy, gradient w.r.t. the latents.

Each candidate runs in its own spawned process. Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA;
on the CPU the growth of the peak resident set during the timed call (the peak is reset through
``/proc/self/clear_refs`` after setup and warm-up, so the timed call's own peak is what is measured; glibc's
mmap threshold is fixed at 64 KiB so freed tensors leave the RSS). Times: the fastest of ``--repeat`` calls.
The ratios per doubling of the token count N show the growth: ~2x is linear, ~4x quadratic. The kernel's
chunk budget is lowered to ``--chunk-elements`` (default 2^20 elements = 4 MiB per score block) so that the
asymptotic regime shows at bench sizes; the library default (2^24) is sized for real videos.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WIDTH_HEADS, HEAD_DIM, FFN, BLOCKS, GUIDED_BLOCK = 2, 64, 512, 4, 2


# --------------------------------------------------------------------------------------------- the workload
class _CaptureQK:
    """A Wan self-attention processor that runs the attention (SDPA) and keeps its rotated q, k."""

    def __init__(self) -> None:
        self.q = self.k = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        import torch.nn.functional as F

        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            q, k = _rope(q, *rotary_emb), _rope(k, *rotary_emb)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, N, d]
        self.q, self.k = q, k
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2).type_as(hidden_states)
        return attn.to_out[1](attn.to_out[0](out))


def _rope(x, cos, sin):
    import torch

    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos[..., 0::2] - x2 * sin[..., 1::2]
    out[..., 1::2] = x1 * sin[..., 1::2] + x2 * cos[..., 0::2]
    return out.type_as(x)


def _model_and_inputs(frames: int, size: int):
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = WanTransformer3DModel(num_attention_heads=WIDTH_HEADS, attention_head_dim=HEAD_DIM, in_channels=16,
                                  out_channels=16, text_dim=64, freq_dim=64, ffn_dim=FFN, num_layers=BLOCKS,
                                  rope_max_seq_len=256).to(device)
    model.requires_grad_(False)
    capture = _CaptureQK()
    model.blocks[GUIDED_BLOCK].attn1.set_processor(capture)
    latent_frames = (frames - 1) // 4 + 1
    shape = (1, 16, latent_frames, size // 8, size // 8)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(shape, generator=g).to(device)
    reference = torch.randn(shape, generator=g).to(device)
    embeds = torch.randn(1, 32, 64, generator=g).to(device)
    grid = (latent_frames, size // 16, size // 16)
    return model, capture, latents, reference, embeds, grid


def _stats(q, k, grid, naive: bool, chunk: int):
    from motion_core.attention.flow_kernel import frame_attention_stats, naive_frame_attention_stats

    f, h, w = grid
    if naive:
        return naive_frame_attention_stats(q, k, frames=f, height=h, width=w)
    return frame_attention_stats(q, k, frames=f, height=h, width=w, max_chunk_elements=chunk)


def _energy(stats, ref, grid) -> Any:
    _, h, w = grid
    scale = stats.position.new_tensor([w, h])
    return ((stats.mass - ref.mass) ** 2).mean() + (((stats.position - ref.position) / scale) ** 2).mean()


def setup_stats(frames: int, size: int, naive: bool, chunk: int) -> Callable[[], Any]:
    import torch

    model, capture, latents, reference, embeds, grid = _model_and_inputs(frames, size)
    t = torch.tensor([600.0], device=latents.device)
    with torch.no_grad():
        model(reference, t, embeds, return_dict=False)
        ref = _stats(capture.q, capture.k, grid, naive=False, chunk=chunk)
        model(latents, t, embeds, return_dict=False)
    q0, k0 = capture.q.detach(), capture.k.detach()
    del model

    def run():
        q, k = q0.clone().requires_grad_(), k0.clone().requires_grad_()
        energy = _energy(_stats(q, k, grid, naive, chunk), ref, grid)
        return torch.autograd.grad(energy, (q, k))

    return run


def setup_guided(frames: int, size: int, naive: bool, chunk: int) -> Callable[[], Any]:
    import torch

    model, capture, latents, reference, embeds, grid = _model_and_inputs(frames, size)
    t = torch.tensor([600.0], device=latents.device)
    with torch.no_grad():
        model(reference, t, embeds, return_dict=False)
        ref = _stats(capture.q, capture.k, grid, naive=False, chunk=chunk)

    def run():
        z = latents.clone().requires_grad_()
        model(z, t, embeds, return_dict=False)
        energy = _energy(_stats(capture.q, capture.k, grid, naive, chunk), ref, grid)
        grad = torch.autograd.grad(energy, z)[0]
        capture.q = capture.k = None
        return grad

    return run


# --------------------------------------------------------------------------------------------- measuring
def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child(setup: Callable[[], Callable[[], Any]], repeat: int, queue: "mp.Queue") -> None:
    import gc

    import torch

    if not torch.cuda.is_available():
        # one intra-op thread: on a shared CPU, OpenMP threads spinning against other work make small ops
        # (the kernel's per-chunk statistics) erratically slow, which would swamp the comparison
        torch.set_num_threads(1)
    run = setup()
    run()  # warm-up
    gc.collect()
    cuda = torch.cuda.is_available()
    times, peaks = [], []
    for _ in range(repeat):
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
                handle.write("5")  # reset the peak RSS (VmHWM) to the current RSS
            base = _status_kib("VmRSS") * 1024
        start = time.perf_counter()
        out = run()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated() if cuda else _status_kib("VmHWM") * 1024
        peaks.append(max(0, peak - base))
        del out
        gc.collect()
    # the fastest call: the least disturbed by other work on a shared machine
    queue.put({"seconds": min(times), "peak_bytes": max(peaks), "device": "cuda" if cuda else "cpu"})


def measure(setup: Callable[[], Callable[[], Any]], repeat: int) -> dict:
    # glibc serves allocations below its (adaptive, up to 32 MiB) mmap threshold from a heap it keeps after
    # a free, so a warm process reuses memory without its RSS growing; a fixed 64 KiB threshold maps (and
    # returns) every tensor-sized block, so the peak RSS follows the tensors. Read at the child's start.
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "65536")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(setup, repeat, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[9, 17, 33, 65])
    parser.add_argument("--size", type=int, default=256, help="video width = height (a multiple of 16)")
    parser.add_argument("--chunk-elements", type=int, default=1 << 20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-naive-above", type=int, default=10**9,
                        help="skip the naive map above this many tokens (it grows quadratically)")
    args = parser.parse_args()
    if args.size % 16:
        parser.error("--size must be a multiple of 16")
    per_frame = (args.size // 16) ** 2
    for what, setup in (("stats", setup_stats), ("guided", setup_guided)):
        print(f"\n== {what}: {'energy from captured q/k' if what == 'stats' else 'whole guided step'} "
              f"(size {args.size}, {per_frame} tokens per latent frame, {WIDTH_HEADS} heads)")
        print(f"{'frames':>6} {'N':>6} | {'kernel ms':>10} {'kernel MiB':>11} | {'naive ms':>10} {'naive MiB':>10} |"
              f" {'mem naive/kernel':>16}")
        rows = []
        for frames in args.frames:
            n = ((frames - 1) // 4 + 1) * per_frame
            kernel = measure(functools.partial(setup, frames, args.size, False, args.chunk_elements), args.repeat)
            naive = None
            if n <= args.skip_naive_above:
                naive = measure(functools.partial(setup, frames, args.size, True, args.chunk_elements), args.repeat)
            rows.append((frames, n, kernel, naive))
            nm = f"{naive['seconds'] * 1e3:10.1f} {naive['peak_bytes'] / 2**20:10.1f}" if naive else f"{'-':>10} {'-':>10}"
            ratio = f"{naive['peak_bytes'] / max(1, kernel['peak_bytes']):16.2f}" if naive else f"{'-':>16}"
            print(f"{frames:>6} {n:>6} | {kernel['seconds'] * 1e3:10.1f} {kernel['peak_bytes'] / 2**20:11.1f} | {nm} |"
                  f" {ratio}   ({kernel['device']})", flush=True)
        print("  per step of N (tokens ratio): kernel mem / time ratio | naive mem / time ratio")
        for (f0, n0, k0, v0), (f1, n1, k1, v1) in zip(rows, rows[1:]):
            line = (f"  {f0:>3} -> {f1:<3} (N x{n1 / n0:.2f}): kernel mem x{k1['peak_bytes'] / max(1, k0['peak_bytes']):.2f}"
                    f" time x{k1['seconds'] / k0['seconds']:.2f}")
            if v0 and v1:
                line += (f" | naive mem x{v1['peak_bytes'] / max(1, v0['peak_bytes']):.2f}"
                         f" time x{v1['seconds'] / v0['seconds']:.2f}")
            print(line)


if __name__ == "__main__":
    main()
