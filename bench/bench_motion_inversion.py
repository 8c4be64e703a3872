"""Motion Inversion (motion embeddings) vs MotionDirector (dual-path LoRA): training step time, peak memory
and saved file size on the same model and the same clip, measured side by side in one run.

    python bench/bench_motion_inversion.py [--family unet3d] [--size 64] [--frames 8] [--steps 12]
                                           [--model /path/to/diffusers/folder]

Each method trains in a fresh process (spawned as in bench/_measure.py, so peak memory is its own): a
2-step warm-up run, then a ``--steps`` run whose step times are read from the trainer's progress callback
(median of the intervals between consecutive steps, so caching the clip and installing the adapters do
not count). Peak memory is that of the measured run (CUDA: ``max_memory_allocated``; CPU: growth of the
peak RSS above the warm-up's). Both methods use their reference settings except the stored noise prior
(off: a one-off DDIM inversion, the same for both) and previews/checkpoints (off). The measured run saves
its adapter, whose file size is printed; so is the size of a 576x320 ZeroScope embeddings file computed
from the real config on the meta device. Without ``--model`` the tiny built-in model of ``--family`` is
used (no weights, no network).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _measure import _peak_rss_bytes, mib, report  # noqa: E402

PROMPT = "a red square sliding to the right"


def _model(family: str, model: str | None):
    import torch

    from motion_core.backbones import load_video_model
    from motion_core.tiny import ensure_tiny_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_video_model(model or ensure_tiny_model(family), family=family, device=device)


def _method(name: str):
    from motion_core.methods import create_method

    return create_method(name, noise_prior_steps=0)


def _config(steps: int, size: int, frames: int, save_dir: str | None = None):
    from motion_core.training import TrainingConfig

    return TrainingConfig(steps=steps, frames=frames, width=size, height=size, checkpoint_every=0, validate_every=0,
                          final_preview=False, write_preview_videos=False,
                          run_dir=tempfile.mkdtemp(prefix="motionkit-bench-"), save_name="bench" if save_dir else None,
                          adapters_dir=save_dir)


def _child(method: str, family: str, model: str | None, size: int, frames: int, steps: int,
           queue: "mp.Queue") -> None:
    import torch

    from motion_core.training import train
    from motion_core.video import moving_square_frames

    video_model = _model(family, model)
    clip = moving_square_frames(frames, size, size, square=max(4, size // 4), velocity=(2, 0), start=(2, size // 3))
    train(video_model, _method(method), [clip], PROMPT, _config(2, size, frames))  # warm-up
    cuda = video_model.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = _peak_rss_bytes()
    stamps: list[float] = []

    def progress(step: int, total: int, info: dict) -> None:
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    folder = tempfile.mkdtemp(prefix="motionkit-bench-adapters-")
    result = train(video_model, _method(method), [clip], PROMPT, _config(steps, size, frames, folder),
                   progress=progress)
    peak = torch.cuda.max_memory_allocated() if cuda else max(0, _peak_rss_bytes() - before)
    intervals = [b - a for a, b in zip(stamps, stamps[1:])]
    queue.put({"seconds": statistics.median(intervals), "peak_bytes": peak, "device": "cuda" if cuda else "cpu",
               "file_bytes": result.adapter_path.stat().st_size,
               "parameters": result.adapter.num_parameters})


def measure_training(method: str, **kw) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(method,), kwargs={**kw, "queue": queue})
    proc.start()
    result = queue.get()
    proc.join()
    return result


def zeroscope_numbers() -> tuple[int, int]:
    """(parameters, bytes as fp32) of motion embeddings on the real ZeroScope config at 576x320, 24 frames."""
    import torch
    from diffusers import UNet3DConditionModel
    from torch import nn

    from motion_core.backbones.unet3d import UNet3DVideoModel
    from motion_core.methods.motion_inversion import create_motion_embeddings

    with torch.device("meta"):
        unet = UNet3DConditionModel(
            sample_size=32, down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
            up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3, block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2, attention_head_dim=64, cross_attention_dim=1024, norm_num_groups=32)
    model = UNet3DVideoModel(denoiser=unet, vae=nn.Module(), text_encoder=nn.Module(), tokenizer=None, scheduler=None,
                             base_model="zeroscope", device="meta")
    _, qk, v, _ = create_motion_embeddings(model, 40, 72, frames=24, device="meta")
    count = sum(t.numel() for t in qk.values()) + sum(t.numel() for t in v.values())
    return count, 4 * count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="unet3d", choices=["unet3d", "animatediff"])
    parser.add_argument("--model", help="diffusers model folder (default: the tiny built-in model)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    if args.steps < 3:
        parser.error("--steps must be at least 3 (the step time is a median of step intervals)")
    kw = dict(family=args.family, model=args.model, size=args.size, frames=args.frames, steps=args.steps)
    results = {m: measure_training(m, **kw) for m in ("motion_inversion", "motiondirector")}
    report(f"training step, {args.family} ({args.model or 'tiny built-in model'}), {args.frames} frames "
           f"{args.size}x{args.size}", results["motion_inversion"], results["motiondirector"],
           ("Motion Inversion", "MotionDirector"))
    print("\nsaved adapter file (.safetensors, no stored noise prior)")
    for m, r in results.items():
        print(f"  {m:>24}: {mib(r['file_bytes'])}  ({r['file_bytes']:,} bytes, {r['parameters']:,} parameters)")
    ratio = results["motion_inversion"]["file_bytes"] / results["motiondirector"]["file_bytes"]
    print(f"  ratio motion_inversion/motiondirector: {ratio:.3f}x")
    count, nbytes = zeroscope_numbers()
    print(f"\nZeroScope 576x320 (real config, meta device): {count:,} embedding parameters -> {mib(nbytes)} as fp32")


if __name__ == "__main__":
    main()
