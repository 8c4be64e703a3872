"""A MotionDirector training step at MotionKit's defaults vs the reference's settings vs the naive baseline.

Variants, each in its own fresh process (``python bench/bench_training_speed.py --variant NAME``), alternating
over ``--rounds``:

* ``defaults``  -- ``motion_core.training`` as a user runs it: gradient checkpointing ``auto`` (only what the
  device's free memory requires), fused LoRA forward, encoders released, denormals flushed on the CPU;
* ``reference`` -- the reference's settings: gradient checkpointing on for every unit, no compile;
* ``naive``     -- two separate pipelines per step, nothing cached (``bench_motiondirector_step.run_naive``);
* ``compile``   -- (``--compile``) the defaults plus regional ``torch.compile``; its first step (compile time)
  is reported separately;
* ``budget``    -- the defaults under ``MOTIONKIT_MEMORY_BUDGET=--budget``: auto recomputes only the units the
  cap requires (``--variants defaults,reference,budget``);
* ``today``     -- (``--today <checkout>``) the reference settings on MotionKit's code before issue 13.

The model is the issue's: a randomly initialised UNet3D with ZeroScope's topology at a tenth of its widths
(``block_out_channels (32, 64, 128, 128)``, 2 layers per block), 16 frames at 32x32 latents, LoRA rank 32 on the
temporal and spatial linears, fp32, 2 threads. Seconds per step: median of the measured steps (after one warm-up
step) over every round, with the range; memory: the process's peak RSS (VmHWM, the whole run: what a user
sees), the RSS before the first step, and -- on one more, untimed step -- the peak of the live C heap (glibc
``mallinfo2``; what the memory estimate predicts, without the freed memory glibc keeps mapped), each against
the memory estimate.

    python bench/bench_training_speed.py [--rounds 3] [--steps 3] [--latent 32] [--frames 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

_ROOT = os.environ.get("MOTIONKIT_BENCH_ROOT") or str(Path(__file__).resolve().parent.parent)
sys.path.insert(0, _ROOT)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # this checkout's bench helpers, also for --today

from _measure import PeakLiveHeap, live_heap_bytes, status_bytes, zeroscope_topology_model  # noqa: E402
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = "a red square sliding to the right"


def build_model(threads: int):
    import torch

    torch.set_num_threads(threads)
    return zeroscope_topology_model("bench-zeroscope-topology-w10")


def child(args: argparse.Namespace) -> dict:
    import logging

    import torch

    from motion_core.methods.motion_director import MotionDirector, MotionDirectorConfig
    from motion_core.training import TrainingConfig, VideoSource, train
    from motion_core.video import moving_square_frames

    logging.basicConfig(level=logging.INFO, format="  [%(name)s] %(message)s", stream=sys.stderr)
    rss_imports = status_bytes("VmRSS")  # python + torch + diffusers, before any model
    live_imports = live_heap_bytes()
    model = build_model(args.threads)
    size = args.latent * model.vae_scale_factor
    frames = moving_square_frames(args.frames, size, size, square=size // 4, velocity=(1, 0), start=(2, size // 3))
    rss_loaded = status_bytes("VmRSS")
    if args.variant == "naive":
        from types import SimpleNamespace

        from bench_motiondirector_step import run_naive

        ns = SimpleNamespace(rank=args.rank, frames=args.frames, size=size, steps=args.steps)
        times, _ = run_naive(model, frames, ns)
        return {"steps": times, "first": None, "rss_loaded": rss_loaded, "rss_before_first_step": None,
                "peak_rss": status_bytes("VmHWM")}
    marks: list[float] = []
    rss_first: list[int] = []

    live = PeakLiveHeap()

    class Timing:  # after the warm-up and the timed steps, one more step measures the live heap's peak
        def __call__(self, step: int, total: int, info: dict) -> None:
            marks.append(time.perf_counter())
            if step == total - 1:
                live.__enter__()
            elif step == total:
                live.__exit__(None, None, None)

    method = MotionDirector(MotionDirectorConfig(rank=args.rank, noise_prior_steps=0, spatial_drop_probability=0.0))
    checkpointing = {"defaults": "auto", "compile": "auto", "reference": "on", "off": "off", "budget": "auto"}[args.variant]
    if args.variant == "budget":  # auto under a memory cap: only part of the units recompute
        os.environ["MOTIONKIT_MEMORY_BUDGET"] = args.budget
    import dataclasses

    extra = {"compile": "on" if args.variant == "compile" else "off"}
    if "compile" not in {f.name for f in dataclasses.fields(TrainingConfig)}:  # an older MotionKit ("today")
        extra = {}
        checkpointing = checkpointing != "off"
    config = TrainingConfig(steps=args.steps + 2, frames=args.frames, width=size, height=size, fps=None,
                            checkpoint_every=0, validate_every=0, final_preview=False, write_preview_videos=False,
                            gradient_checkpointing=checkpointing, run_dir=str(Path(args.tmp) / f"run-{args.variant}-{os.getpid()}"),
                            **extra)
    from motion_core import training as training_module

    original_loop = training_module.Trainer._loop

    def loop(self, data_fp):  # the RSS right before the first step, after caching and setup
        rss_first.append(status_bytes("VmRSS"))
        marks.append(time.perf_counter())
        return original_loop(self, data_fp)

    training_module.Trainer._loop = loop
    train(model, method, [VideoSource(frames=frames)], PROMPT, config, progress=Timing())
    steps = [b - a for a, b in zip(marks, marks[1:])][:-1]  # not the live-heap step
    return {"steps": steps[1:], "first": steps[0], "rss_loaded": rss_loaded, "rss_before_first_step": rss_first[0],
            "peak_rss": status_bytes("VmHWM"), "torch_threads": torch.get_num_threads(), "rss_imports": rss_imports,
            "live_imports": live_imports, "peak_live": live.bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="measured steps per process (after 1 warm-up step)")
    parser.add_argument("--latent", type=int, default=32, help="latent width = height")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="defaults,reference,naive")
    parser.add_argument("--compile", action="store_true", help="also time the defaults with torch.compile")
    parser.add_argument("--budget", default="1.5GiB", help="MOTIONKIT_MEMORY_BUDGET of the 'budget' variant "
                        "(defaults under a memory cap)")
    parser.add_argument("--today", help="a checkout of MotionKit before issue 13: adds a 'today' variant (its code "
                        "with checkpointing on, the reference's setting) to compare against")
    parser.add_argument("--tmp", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "motionkit-bench"))
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(child(args)))
        return
    variants = args.variants.split(",") + (["compile"] if args.compile else []) + (["today"] if args.today else [])
    results: dict[str, list[dict]] = {v: [] for v in variants}
    base = [sys.executable, __file__, "--budget", args.budget, "--steps", str(args.steps), "--latent", str(args.latent), "--frames",
            str(args.frames), "--rank", str(args.rank), "--threads", str(args.threads), "--tmp", args.tmp]
    load = os.getloadavg()[0]
    for r in range(args.rounds):
        for v in variants:
            env = dict(os.environ)
            if v == "today":
                env["MOTIONKIT_BENCH_ROOT"] = args.today
            out = subprocess.run(base + ["--variant", "reference" if v == "today" else v], capture_output=True,
                                 text=True, check=False, env=env)
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"variant {v} failed")
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1]
            results[v].append(json.loads(line))
            plan = [ln for ln in out.stderr.splitlines() if "gradient checkpointing" in ln]
            totals = re.findall(r"-> total ([0-9.]+) (GiB|MiB)", out.stderr)
            if totals:
                value, unit = totals[-1]
                results[v][-1]["estimate"] = float(value) * (2**30 if unit == "GiB" else 2**20)
            print(f"round {r + 1} {v:<10} steps {['%.2f' % s for s in results[v][-1]['steps']]}"
                  f" peak RSS {results[v][-1]['peak_rss'] / 2**20:.0f} MiB" + (f"\n   {plan[0].strip()[:200]}" if plan and r == 0 else ""),
                  flush=True)
    load = (load + os.getloadavg()[0]) / 2
    mib = 2 ** 20

    def med(v: str) -> float:
        return statistics.median(s for r in results[v] for s in r["steps"])

    def rng(v: str) -> tuple[float, float]:
        per = [statistics.median(r["steps"]) for r in results[v]]
        return min(per), max(per)

    print(f"\nMotionDirector step, UNet3D ZeroScope topology /10, {args.frames} frames, {args.latent}x{args.latent} "
          f"latents, rank {args.rank}, fp32, {args.threads} threads, {args.rounds} rounds x {args.steps} steps, "
          f"load average ~{load:.1f}")
    print(f"{'variant':<11}{'s/step':>8}{'range of round medians':>26}{'peak RSS':>11}{'RSS at step 1':>15}")
    for v in variants:
        lo, hi = rng(v)
        peak = max(r["peak_rss"] for r in results[v]) / mib
        before = [r["rss_before_first_step"] for r in results[v] if r["rss_before_first_step"]]
        print(f"{v:<11}{med(v):>8.2f}{f'{lo:.2f}-{hi:.2f}':>26}{peak:>10.0f}M"
              f"{(max(before) / mib if before else float('nan')):>14.0f}M")
    if "reference" in results:
        ref_peak = max(r["peak_rss"] for r in results["reference"])
        for v in variants:
            if v == "reference":
                continue
            pairs = [statistics.median(a["steps"]) / statistics.median(b["steps"])
                     for a, b in zip(results[v], results["reference"])]
            peak = max(r["peak_rss"] for r in results[v])
            print(f"{v}/reference: time {med(v) / med('reference'):.2f}x (per round {min(pairs):.2f}-{max(pairs):.2f}),"
                  f" peak RSS {peak / ref_peak:.2f}x")
    for v in variants:
        checked = [(r["peak_rss"] - r["rss_imports"], r["peak_live"] - r["live_imports"], r["estimate"])
                   for r in results[v] if r.get("estimate") and r.get("peak_live") and r.get("live_imports")]
        if checked:
            rss, used, estimate = max(checked)
            verdict = "within" if used <= estimate else "ABOVE"
            print(f"{v}: memory estimate {estimate / mib:.0f} MiB; live heap peak above the bare process "
                  f"{used / mib:.0f} MiB ({verdict} the estimate); RSS peak above it {rss / mib:.0f} MiB "
                  f"({rss / estimate:.2f}x the estimate: glibc keeps {(rss - used) / mib:.0f} MiB of freed memory)")
    if "compile" in results:
        firsts = [r["first"] for r in results["compile"]]
        print(f"compile: first step (compilation) {statistics.median(firsts):.1f}s")


if __name__ == "__main__":
    main()
