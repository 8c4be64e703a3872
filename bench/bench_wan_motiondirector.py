"""Wan MotionDirector training step vs a plain peft LoRA step on the same model, side by side in one run.

* **MotionDirector** -- ``motion_core.training`` with the ``motiondirector`` method on a Wan model: per step one
  appearance forward on a single latent frame + one motion forward on the clip (the appearance-debiased flow
  loss), gradients per path, one optimizer step; cached latents, gradient checkpointing per block.
* **plain LoRA** -- one peft LoRA on the same layers (self-attention q/k/v/out + feed-forward of every block),
  one forward on the clip with the flow-matching MSE, backward, AdamW: what ordinary Wan LoRA trainers do.

Both use the same cached latents, prompt embedding, rank and checkpointing. Seconds per step after a warm-up
step; the variants alternate over ``--rounds`` and the fastest step of each is reported. Memory is the
peak above the level before the measured steps (see bench_motiondirector_step.PeakMemory).

    python bench/bench_wan_motiondirector.py [--frames 9] [--size 64] [--steps 3] [--rounds 2] [--model <Wan folder>]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_motiondirector_step import PeakMemory, run_ours, sync  # noqa: E402

from motion_core.adapters.lora import inject_lora, lora_parameters, remove_lora, temporal_lora_targets  # noqa: E402
from motion_core.backbones import load_video_model  # noqa: E402
from motion_core.losses import diffusion_mse  # noqa: E402
from motion_core.tiny import ensure_tiny_model  # noqa: E402
from motion_core.training import VideoSource, activation_checkpointing, add_training_noise, build_clips  # noqa: E402
from motion_core.video import moving_square_frames  # noqa: E402

PROMPT = "a red square sliding to the right"


def run_plain_lora(model, frames, args) -> tuple[list[float], int]:
    clip = build_clips([VideoSource(frames=frames)], PROMPT, frames=args.frames, fps=None, width=args.size,
                       height=args.size)[0].frames
    with torch.no_grad():  # cached, as in ours
        z0 = model.encode_video(clip).float()
        emb = model.encode_prompt([PROMPT])
    inject_lora(model.denoiser, "plain", temporal_lora_targets(model), rank=args.rank)
    params = lora_parameters(model.denoiser, "plain")
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(0)
    meter, times = PeakMemory(model.device), []
    try:
        with activation_checkpointing(model.denoiser, True):
            for step in range(args.steps + 1):
                if step == 1:
                    meter.start()
                sync(model.device)
                t0 = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                noise = torch.randn(z0.shape, generator=generator).to(model.device)
                t = torch.randint(0, 1000, (1,), generator=generator)
                z_t, target = add_training_noise(model, z0, noise, t)[:2]
                diffusion_mse(model.predict(z_t, t, emb), target).backward()
                optimizer.step()
                sync(model.device)
                if step:
                    times.append(time.perf_counter() - t0)
    finally:
        remove_lora(model.denoiser, ["plain"])
    return times, meter.peak()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", help="a real Wan folder instead of the tiny Wan")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--tmp", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "motionkit-bench-wan"))
    args = parser.parse_args()
    PeakMemory.exact_cpu_peaks()
    model = load_video_model(args.model or ensure_tiny_model("wan"), family="wan", device=args.device,
                             dtype=args.dtype)
    frames = moving_square_frames(args.frames, args.size, args.size, square=args.size // 4, velocity=(2, 0),
                                  start=(2, args.size // 3))
    print(f"Wan training step, {model.base_model} ({sum(p.numel() for p in model.denoiser.parameters()):,} "
          f"params), {args.frames} frames at {args.size}x{args.size}, rank {args.rank}, {model.device}")
    ours, plain, mem_ours, mem_plain = [], [], 0, 0
    for _ in range(args.rounds):
        t, m = run_plain_lora(model, frames, args)
        plain, mem_plain = plain + t, max(mem_plain, m)
        t, m, _ = run_ours(model, frames, args, checkpointing=True)
        ours, mem_ours = ours + t, max(mem_ours, m)
    mib = 2**20
    print(f"  MotionDirector (appearance + motion paths): {min(ours):.3f} s/step  peak {mem_ours / mib:7.1f} MiB")
    print(f"  plain peft LoRA (one path):                 {min(plain):.3f} s/step  peak {mem_plain / mib:7.1f} MiB")
    print(f"  ratio MotionDirector / plain LoRA: time {min(ours) / min(plain):.2f}x   "
          f"peak memory {mem_ours / max(mem_plain, 1):.2f}x")


if __name__ == "__main__":
    main()
