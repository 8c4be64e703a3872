"""Peak memory and time of one MotionClone-on-Wan guided step: the O(N * frames) kernel energy vs the full map.

    python bench/bench_wan_motionclone.py [--frames 9 17 33 65] [--size 256] [--chunk-elements 1048576]

The real machinery of :mod:`motion_core.methods.motion_clone_wan` on a small Wan transformer (2 heads x 64,
ffn 512, 4 blocks, guided blocks 1-3 = the default mid-depth choice for 4 blocks; random weights): the
reference representation is extracted with :class:`AttentionFlowCapture` (chunked, head-averaged argmax),
then one guided step runs -- transformer forward with the :class:`AttentionFlowEnergy` stage on the guided
layers (through :class:`~motion_core.attention.wan_processor.WanStageChainProcessor`: post-RoPE q/k), no
autograd after the last guided block, energy, gradient w.r.t. the latents. The ``naive`` candidate is the
same stage computing the statistics from the full ``[N, N]`` map (``naive_frame_attention_stats``).

Peak memory and times are measured by ``bench_flow_kernel.measure`` (own spawned process per candidate;
CUDA: ``max_memory_allocated``; CPU: peak RSS growth of the timed call). Ratios per step of the token count
N: ~2x per doubling is linear, ~4x quadratic. ``--chunk-elements`` lowers the kernel's score block so the
asymptotic regime shows at bench sizes (the library default 2^24 is sized for real videos).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

HEADS, HEAD_DIM, FFN, BLOCKS = 2, 64, 512, 4


def _naive_stage_class():
    from motion_core.attention.flow_kernel import naive_frame_attention_stats
    from motion_core.methods.motion_clone_wan import AttentionFlowEnergy, attention_flow_energy

    class NaiveFlowEnergy(AttentionFlowEnergy):
        """The same energy from the full N x N map (plain autograd): the O(N^2) baseline."""

        def on_qk(self, call, query, key):
            f, h, w = self.grid
            ref_mass, ref_argmax = self.targets[call.layer]
            stats = naive_frame_attention_stats(query, key, frames=f, height=h, width=w,
                                                scale=call.scale / self.temperature)
            self.terms[call.layer] = attention_flow_energy(stats.position.mean(1), stats.mass.mean(1), ref_mass,
                                                           ref_argmax, frames=f, height=h, width=w)

    return NaiveFlowEnergy


def setup_guided(frames: int, size: int, naive: bool, chunk: int) -> Callable[[], Any]:
    import torch
    from diffusers import WanTransformer3DModel

    from motion_core.attention import attach, no_grad_after
    from motion_core.methods.motion_clone_wan import AttentionFlowCapture, AttentionFlowEnergy

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = WanTransformer3DModel(num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=16,
                                  out_channels=16, text_dim=64, freq_dim=64, ffn_dim=FFN, num_layers=BLOCKS,
                                  rope_max_seq_len=256).to(device).requires_grad_(False)
    layers = [f"blocks.{i}.attn1" for i in (1, 2, 3)]
    lf = (frames - 1) // 4 + 1
    shape = (1, 16, lf, size // 8, size // 8)
    grid = (lf, size // 16, size // 16)
    g = torch.Generator().manual_seed(1)
    latents, reference = torch.randn(shape, generator=g).to(device), torch.randn(shape, generator=g).to(device)
    embeds = torch.randn(1, 32, 64, generator=g).to(device)
    t = torch.tensor([600.0], device=device)
    capture = AttentionFlowCapture(grid)
    with torch.no_grad(), attach(model, layers, capture):
        model(reference, t, embeds, return_dict=False)
    targets = {n: (m[0].half(), a[0].short()) for n, (m, a) in capture.records.items()}
    if naive:
        stage = _naive_stage_class()(targets, grid)
    else:
        stage = AttentionFlowEnergy(targets, grid, max_chunk_elements=chunk)  # bench-size chunks (docstring)
    attach(model, layers, stage)
    skip = no_grad_after(model, "blocks.3")
    skip.__enter__()

    def run():
        z = latents.clone().requires_grad_()
        stage.arm()
        model(z, t, embeds, return_dict=False)
        energy = stage.take()
        return torch.autograd.grad(energy, z)[0]

    return run


def main() -> None:
    from bench_flow_kernel import measure

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
    print(f"== MotionClone on Wan, one guided step, 3 guided layers (size {args.size}, {per_frame} tokens per "
          f"latent frame, {HEADS} heads)")
    print(f"{'frames':>6} {'N':>6} | {'kernel ms':>10} {'kernel MiB':>11} | {'naive ms':>10} {'naive MiB':>10} |"
          f" {'mem naive/kernel':>16}")
    rows = []
    for frames in args.frames:
        n = ((frames - 1) // 4 + 1) * per_frame
        kernel = measure(functools.partial(setup_guided, frames, args.size, False, args.chunk_elements), args.repeat)
        naive = None
        if n <= args.skip_naive_above:
            naive = measure(functools.partial(setup_guided, frames, args.size, True, args.chunk_elements), args.repeat)
        rows.append((frames, n, kernel, naive))
        nm = f"{naive['seconds'] * 1e3:10.1f} {naive['peak_bytes'] / 2**20:10.1f}" if naive else f"{'-':>10} {'-':>10}"
        ratio = f"{naive['peak_bytes'] / max(1, kernel['peak_bytes']):16.2f}" if naive else f"{'-':>16}"
        print(f"{frames:>6} {n:>6} | {kernel['seconds'] * 1e3:10.1f} {kernel['peak_bytes'] / 2**20:11.1f} | {nm} |"
              f" {ratio}   ({kernel['device']})", flush=True)
    print("  per step of N: kernel mem / time ratio | naive mem / time ratio")
    for (f0, n0, k0, v0), (f1, n1, k1, v1) in zip(rows, rows[1:]):
        line = (f"  {f0:>3} -> {f1:<3} (N x{n1 / n0:.2f}): kernel mem x{k1['peak_bytes'] / max(1, k0['peak_bytes']):.2f}"
                f" time x{k1['seconds'] / k0['seconds']:.2f}")
        if v0 and v1:
            line += (f" | naive mem x{v1['peak_bytes'] / max(1, v0['peak_bytes']):.2f}"
                     f" time x{v1['seconds'] / v0['seconds']:.2f}")
        print(line)


if __name__ == "__main__":
    main()
