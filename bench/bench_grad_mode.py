"""Sampling the way MotionKit's nodes run it inside ComfyUI vs under the host's own inference mode.

    python bench/bench_grad_mode.py [--steps 10] [--frames 16] [--size 128] [--rounds 3]

ComfyUI runs every prompt under ``torch.inference_mode()``; MotionKit's node functions leave it for
``inference_mode(False)`` + ``no_grad()`` (``nodes/host.py: node_function``) so that training and guidance
can use autograd. This measures what that costs where no gradient is needed: the same sampling call (tiny
UNet3D and AnimateDiff, DDIM with CFG) under ``inference_mode()`` and under the node path, in alternating
fresh processes, best of ``--rounds`` each. Prints the time and peak-memory ratios (node path / inference mode).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _measure import measure, report  # noqa: E402


def setup(family: str, steps: int, frames: int, size: int, mode: str):
    import torch

    from motion_core.backbones import load_video_model
    from motion_core.sampling import SampleRequest, sample
    from motion_core.tiny import ensure_tiny_model
    from nodes.host import node_function

    with torch.inference_mode(False):
        model = load_video_model(ensure_tiny_model(family), device="cpu")
    req = SampleRequest(prompt="a square", negative_prompt="blurry", steps=steps, cfg=7.0, seed=0,
                        width=size, height=size, num_frames=frames)
    run = functools.partial(sample, model, req)
    node_path = node_function(run)

    def under_host() -> None:
        with torch.inference_mode():  # what the host wraps around every node function
            (node_path if mode == "node" else run)()

    return under_host


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for family in ("unet3d", "animatediff"):
        best: dict[str, dict] = {}
        for _ in range(args.rounds):
            for mode in ("node", "inference"):  # alternate, so drift of a shared machine hits both
                result = measure(functools.partial(setup, family, args.steps, args.frames, args.size, mode))
                if mode not in best or result["seconds"] < best[mode]["seconds"]:
                    best[mode] = result
        report(f"{family}: {args.steps} DDIM steps with CFG, {args.frames} frames {args.size}x{args.size}",
               best["node"], best["inference"], names=("inference_mode(False)+no_grad", "inference_mode"))


if __name__ == "__main__":
    main()
