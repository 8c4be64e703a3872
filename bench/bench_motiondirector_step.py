"""MotionDirector training step: the shared trainer vs. a naive loop, measured side by side in one run.

* **ours** -- ``motion_core.training`` as shipped: each clip VAE-encoded once and the prompt text-encoded
  once before training (cached), then per step one single-frame spatial forward + one full-clip temporal
  forward on the cached latents, gradients per path, one optimizer step; gradient checkpointing on.
* **naive** -- the same LoRA training without caching and without sharing work between the two paths:
  every step re-encodes the clip through the VAE and the prompt through the text encoder for the temporal
  path, and the spatial path encodes its frame and the prompt again on its own (two separate pipelines).
* **ours, no checkpointing** -- for reference: the memory/time trade of gradient checkpointing.

Time: seconds per step after one warm-up step; the variants alternate over several rounds and the fastest
step of each is reported (robust to other load on a shared machine), the median beside it. Memory is the peak resident memory *above the
level before the measured steps* (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``, with glibc told to
return freed blocks to the system so that the resident size follows what is live; on CUDA the allocator's
peak). Run:

    python bench/bench_motiondirector_step.py [--frames 16] [--size 32] [--steps 4] [--rounds 2] [--device cpu]

It builds the tiny UNet3D (reference/environment_notes.md) if needed; no network, no weights.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from motion_core.adapters.lora import set_active_lora  # noqa: E402
from motion_core.backbones import load_video_model  # noqa: E402
from motion_core.losses import diffusion_mse, temporal_loss  # noqa: E402
from motion_core.methods.motion_director import MotionDirector, MotionDirectorConfig  # noqa: E402
from motion_core.tiny import ensure_tiny_model  # noqa: E402
from motion_core.training import (  # noqa: E402
    TrainingConfig,
    VideoSource,
    activation_checkpointing,
    add_training_noise,
    build_clips,
    train,
)
from motion_core.video import moving_square_frames  # noqa: E402

PROMPT = "a red square sliding to the right"


# ------------------------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory above a starting level: CUDA allocator stats, else Linux VmHWM (resettable)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    @staticmethod
    def exact_cpu_peaks() -> None:
        """glibc keeps freed blocks for reuse, so the resident size would lag behind what is live; serving
        every block of 64 KiB or more by mmap returns it to the system on free and makes VmHWM the real peak
        of what the step held (tensors of any size that matters are above 64 KiB)."""
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
            libc.mallopt(-1, 64 * 1024)  # M_TRIM_THRESHOLD
            PeakMemory._trim = libc.malloc_trim
        except (OSError, AttributeError):
            PeakMemory._trim = None

    _trim = None

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        if PeakMemory._trim is not None:
            PeakMemory._trim(0)
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # resets VmHWM to the current RSS
        self.base = self._status("VmRSS")

    def peak(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        return self._status("VmHWM") - self.base


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------- ours
def run_ours(model, frames, args, checkpointing: bool) -> tuple[list[float], int, float]:
    meter = PeakMemory(model.device)
    marks: list[float] = []

    def progress(step: int, total: int, info: dict) -> None:
        sync(model.device)
        marks.append(time.perf_counter())
        if step == 1:  # the first step is the warm-up; measure the rest
            meter.start()

    method = MotionDirector(MotionDirectorConfig(rank=args.rank, noise_prior_steps=0, spatial_drop_probability=0.0))
    config = TrainingConfig(steps=args.steps + 1, frames=args.frames, width=args.size, height=args.size, fps=None,
                            checkpoint_every=0, validate_every=0, final_preview=False, write_preview_videos=False,
                            gradient_checkpointing=checkpointing, run_dir=str(Path(args.tmp) / "ours"))
    started = time.perf_counter()
    train(model, method, [VideoSource(frames=frames)], PROMPT, config, progress=progress)
    steps = [b - a for a, b in zip(marks, marks[1:])]
    return steps, meter.peak(), marks[0] - started


# ------------------------------------------------------------------------------------------- naive
def run_naive(model, frames, args) -> tuple[list[float], int]:
    """The same training, nothing cached and nothing shared between the two paths."""
    device = model.device
    clips = build_clips([VideoSource(frames=frames)], PROMPT, frames=args.frames, fps=None, width=args.size,
                        height=args.size)
    clip_frames = clips[0].frames
    method = MotionDirector(MotionDirectorConfig(rank=args.rank, noise_prior_steps=0, spatial_drop_probability=0.0))
    from types import SimpleNamespace

    groups = method.setup(model, [SimpleNamespace(video_index=0)], torch.Generator())  # temporal + spatial_0
    temporal, spatial = groups[0].params, groups[1].params
    for p in spatial + temporal:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW([{"params": temporal}, {"params": spatial}], lr=5e-4, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(0)
    meter = PeakMemory(device)
    times = []
    method.train_mode(model)
    # the same precision as the trainer: autocast in the model's half dtype on CUDA, fp32 on the CPU
    half = model.device.type == "cuda" and model.dtype in (torch.float16, torch.bfloat16)
    autocast = (lambda: torch.autocast("cuda", dtype=model.dtype)) if half else nullcontext
    scaler = torch.amp.GradScaler("cuda") if model.device.type == "cuda" and model.dtype == torch.float16 else None
    try:
        with activation_checkpointing(model.denoiser, True), autocast():
            for step in range(args.steps + 1):
                if step == 1:
                    meter.start()
                sync(device)
                t0 = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                noise = torch.randn((1, model.latent_channels, args.frames, args.size // model.vae_scale_factor,
                                     args.size // model.vae_scale_factor), generator=generator).to(device)
                t = torch.randint(0, 1000, (1,), generator=generator)
                i = int(torch.randint(0, args.frames, (), generator=generator))
                # spatial pipeline: encode its own frame and prompt
                with torch.no_grad():
                    z_frame = model.encode_video(clip_frames[i:i + 1], generator=generator).float()
                    emb = model.encode_prompt([PROMPT])
                z_t, target = add_training_noise(model, z_frame, noise[:, :, i:i + 1], t)
                set_active_lora(model.denoiser, ["spatial_0"])
                with model.single_frame_mode():
                    loss_s = diffusion_mse(model.predict(z_t, t, emb), target)
                for p, g in zip(spatial, torch.autograd.grad(scaler.scale(loss_s) if scaler else loss_s, spatial)):
                    p.grad = g
                # temporal pipeline: encode the whole clip and the prompt again
                with torch.no_grad():
                    z0 = model.encode_video(clip_frames, generator=generator).float()
                    emb = model.encode_prompt([PROMPT])
                z_t, target = add_training_noise(model, z0, noise, t)
                set_active_lora(model.denoiser, ["temporal", "spatial_0"])
                loss_t, _ = temporal_loss(model.predict(z_t, t, emb), target, i)
                for p, g in zip(temporal, torch.autograd.grad(scaler.scale(loss_t) if scaler else loss_t, temporal)):
                    p.grad = g
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                sync(device)
                if step:
                    times.append(time.perf_counter() - t0)
    finally:
        method.teardown(model)
    return times, meter.peak()


def encoder_seconds(model, frames, args, repeats: int = 3) -> float:
    """The per-step encoder work of the naive loop alone (fastest of ``repeats``)."""
    clip = build_clips([VideoSource(frames=frames)], PROMPT, frames=args.frames, fps=None, width=args.size,
                       height=args.size)[0].frames
    best = float("inf")
    for _ in range(repeats):
        sync(model.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            model.encode_video(clip)
            model.encode_video(clip[:1])
            model.encode_prompt([PROMPT])
            model.encode_prompt([PROMPT])
        sync(model.device)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=32, help="clip width = height in pixels (latents: size / 2 on "
                        "the tiny VAE)")
    parser.add_argument("--steps", type=int, default=4, help="measured steps per round (after 1 warm-up step)")
    parser.add_argument("--rounds", type=int, default=2, help="the variants alternate this many times")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", help="a real model folder (e.g. ZeroScope) instead of the tiny UNet3D; with "
                        "--device cuda --size 384 this measures the reference's setting")
    parser.add_argument("--family", default="unet3d")
    parser.add_argument("--dtype", default="fp32", help="model dtype (fp16 on CUDA for a real model)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--tmp", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "motionkit-bench"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    PeakMemory.exact_cpu_peaks()
    source = args.model or ensure_tiny_model("unet3d")
    model = load_video_model(source, family=args.family, device=args.device, dtype=args.dtype)
    frames = moving_square_frames(args.frames, args.size, args.size, square=args.size // 4, velocity=(1, 0),
                                  start=(2, args.size // 3))
    print(f"MotionDirector training step, {model.base_model} ({sum(p.numel() for p in model.denoiser.parameters()):,} "
          f"denoiser params), {args.frames} frames at {args.size}x{args.size}, rank {args.rank}, device "
          f"{model.device}, {torch.get_num_threads()} threads, {args.steps} measured steps")
    # the variants alternate for --rounds rounds; the fastest step of each is reported (robust to other load on
    # the machine) with the median beside it; memory is the largest peak seen
    results: dict[str, tuple[list[float], int]] = {"ours": ([], 0), "naive": ([], 0), "nock": ([], 0)}
    first_step = 0.0
    for _ in range(args.rounds):
        t, m = run_naive(model, frames, args)
        results["naive"] = (results["naive"][0] + t, max(results["naive"][1], m))
        t, m, first_step = run_ours(model, frames, args, checkpointing=True)
        results["ours"] = (results["ours"][0] + t, max(results["ours"][1], m))
        t, m, _ = run_ours(model, frames, args, checkpointing=False)
        results["nock"] = (results["nock"][0] + t, max(results["nock"][1], m))
    mib = 1024 * 1024

    def best(key: str) -> float:
        return min(results[key][0])

    def median(key: str) -> float:
        values = sorted(results[key][0])
        return values[len(values) // 2]

    print(f"{'variant':<34}{'s/step (min)':>14}{'(median)':>10}{'peak MiB':>11}")
    for key, label in (("ours", "ours (cached, checkpointing)"), ("naive", "naive (no cache, 2 pipelines)"),
                       ("nock", "ours without checkpointing")):
        print(f"{label:<34}{best(key):>14.3f}{median(key):>10.3f}{results[key][1] / mib:>11.1f}")
    print(f"time ratio naive/ours: {best('naive') / best('ours'):.2f}x (medians {median('naive') / median('ours'):.2f}x)"
          f"   peak-memory ratio naive/ours: {results['naive'][1] / max(results['ours'][1], 1):.2f}x")
    print(f"gradient checkpointing: {best('ours') / best('nock'):.2f}x the time, "
          f"{results['ours'][1] / max(results['nock'][1], 1):.2f}x the peak memory of no checkpointing")
    print(f"our loop's time to its first step (clip + prompt caching, adapter setup, 1 step): {first_step:.2f}s")
    print(f"encoder work the cache removes from every step (VAE: clip + frame, text: 2 prompts): "
          f"{encoder_seconds(model, frames, args):.3f}s")

if __name__ == "__main__":
    main()
