"""MotionClone costs, measured side by side on the tiny 4-level AnimateDiff (reference/motion_clone.md 16).

    python bench/bench_motionclone.py [--size 128] [--frames 16] [--steps 4] [--threads 1]

Prints, each candidate in a fresh process (time = median of 3 runs after a warm-up; peak memory = CUDA
max allocated, or peak RSS growth on the CPU):

1. a guided step vs an unguided CFG step (goal: <= 1.5x time): whole sampling runs of ``--steps`` steps
   on the same schedule, all guided vs all plain (weight 0), divided by the step count; plus the guided
   step *without* our memory measures (full autograd graph through the blocks after up_blocks.1, and the
   energy without activation checkpointing) to show what they save;
2. extraction vs one full denoiser forward (goal: <= 0.6x): the batch-1 forward truncated after
   up_blocks.1 with top-k capture vs the same forward run to the end; and the whole extraction (VAE
   encode + prompt + forward) for information;
3. representation size vs the dense maps (tiny model, and the SD1.5 layout at 512x512x16 by formula);
4. the GroupNorm study: how many top-1 key frames and how much of the kept values change when the motion
   modules normalise per frame (original AnimateDiff) instead of across frames (diffusers).
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

from _measure import measure, mib, report  # noqa: E402


def _model():
    import torch

    if os.environ.get("MOTIONKIT_BENCH_THREADS"):  # a shared CPU: spinning OpenMP threads distort the ratios
        torch.set_num_threads(int(os.environ["MOTIONKIT_BENCH_THREADS"]))

    from motion_core.backbones import load_video_model
    from motion_core.tiny import ensure_tiny_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "fp16" if device == "cuda" else "fp32"
    return load_video_model(ensure_tiny_model("animatediff", four_level=True), device=device, dtype=dtype)


def _square(size: int):
    from motion_core.video import moving_square_frames

    return moving_square_frames(32, size, size, square=size // 4, velocity=(size / 16, 0))


def _representation(model, size: int, frames: int):
    from motion_core.methods.motion_clone import extract_motion_representation

    return extract_motion_representation(model, _square(size), num_frames=frames, width=size, height=size, seed=0)


def setup_sampling(size: int, frames: int, steps: int, weight: float, lean: bool = True):
    import torch

    from motion_core.methods.motion_clone import MotionCloneConfig, MotionCloneGuidance
    from motion_core.motion_model import MotionModel
    from motion_core.sampling import SampleRequest, sample

    model = _model()
    rep = _representation(model, size, frames)
    config = MotionCloneConfig(steps=steps, guided_steps=steps, guidance_fraction=1.0, warm_up=0, cool_down=0,
                               weight=weight)
    hook = MotionCloneGuidance(rep, config, skip_graph_after_guided=lean)
    if not lean:  # the energy keeps every layer's map for backward
        original = hook.setup

        def setup(state):
            original(state)
            if hook._energy is not None:
                hook._energy.recompute = False
        hook.setup = setup
    guided = MotionModel.wrap(model).with_hook(hook)
    req = SampleRequest(prompt="a cat running", negative_prompt="blurry", steps=steps, cfg=8.5, seed=0,
                        width=size, height=size, num_frames=frames)

    def run():
        out = sample(guided, req, decode=False)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out
    return run


def setup_forward(size: int, frames: int, truncated: bool):
    import torch

    from motion_core.attention import AttentionCapture, attach, run_until
    from motion_core.methods.motion_clone import guided_layers
    from motion_core.sampling import seeded_noise

    model = _model()
    z = seeded_noise(model.latent_shape(1, frames, size, size), 0).to(model.device)
    embeds = model.encode_prompt([""])
    layers = guided_layers(model)
    block = model.denoiser.get_submodule(layers[-1].block)

    @torch.no_grad()
    def run():
        if truncated:
            capture = AttentionCapture("topk", k=1)
            with attach(model.denoiser, layers, capture):
                run_until([block], lambda: model.predict(z, 400, embeds))
        else:
            model.predict(z, 400, embeds)
    return run


def setup_extraction(size: int, frames: int):
    model = _model()
    square = _square(size)

    def run():
        from motion_core.methods.motion_clone import extract_motion_representation

        return extract_motion_representation(model, square, num_frames=frames, width=size, height=size, seed=0)
    return run


def graph_bytes(model, rep, size: int, frames: int, lean: bool) -> int:
    """Bytes of activations autograd keeps for the backward pass of one guided conditional forward (what the
    sampler runs in a guided step), counted with saved-tensor hooks: device independent, unlike peak RSS.
    Parameters and tensors saved twice are counted once."""
    import contextlib

    import torch

    from motion_core.attention import SparseMapEnergy, attach, no_grad_after
    from motion_core.methods.motion_clone import guided_layers
    from motion_core.sampling import seeded_noise

    params = {p.data_ptr() for p in model.parameters()}
    seen: dict[tuple[int, int], int] = {}

    def pack(t):
        if t.data_ptr() not in params:
            seen[(t.data_ptr(), t.numel())] = t.numel() * t.element_size()
        return t

    z = seeded_noise(model.latent_shape(1, frames, size, size), 1).to(model.device).requires_grad_(True)
    embeds = model.encode_prompt(["a cat running"])
    energy = SparseMapEnergy(rep.layers, recompute=lean)
    with contextlib.ExitStack() as stack:
        stack.enter_context(attach(model.denoiser, guided_layers(model), energy))
        if lean:
            stack.enter_context(no_grad_after(model.denoiser, "up_blocks.1"))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))
        energy.arm()
        model.predict(z, 500, embeds)
        loss = energy.take()
    torch.autograd.grad(loss, z)
    return sum(seen.values())


def interleaved_cpu_seconds(candidates: dict, repeat: int) -> dict:
    """Median *CPU* seconds (process time) of each candidate, run alternately in this process after one
    warm-up each: on a shared machine wall-clock ratios drift with the other processes' load, CPU time much
    less (single-threaded, it is close to the work done)."""
    import statistics
    import time

    times: dict = {name: [] for name in candidates}
    for run in candidates.values():
        run()
    for _ in range(repeat):
        for name, run in candidates.items():
            start = time.process_time()
            run()
            times[name].append(time.process_time() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def per_step(result: dict, steps: int) -> dict:
    return {**result, "seconds": result["seconds"] / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per candidate (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        os.environ["MOTIONKIT_BENCH_THREADS"] = str(args.threads)
    s, f, n, r = args.size, args.frames, args.steps, args.repeat
    print(f"tiny 4-level AnimateDiff, {s}x{s}, {f} frames; sampling runs of {n} steps")

    plain = per_step(measure(functools.partial(setup_sampling, s, f, n, 0.0), r), n)
    guided = per_step(measure(functools.partial(setup_sampling, s, f, n, 2000.0), r), n)
    report("1. guided step vs unguided CFG step (per step)", guided, plain, ("guided step", "CFG step"))
    heavy = per_step(measure(functools.partial(setup_sampling, s, f, n, 2000.0, False), r), n)
    report("   guided step with vs without our memory measures (no graph after up_blocks.1, "
           "checkpointed energy)", guided, heavy, ("lean guided step", "full-graph guided step"))

    if not os.environ.get("MOTIONKIT_BENCH_THREADS") or int(os.environ["MOTIONKIT_BENCH_THREADS"]) == 1:
        import torch

        torch.set_num_threads(1)
        cpu = interleaved_cpu_seconds({"guided": setup_sampling(s, f, n, 2000.0),
                                       "plain": setup_sampling(s, f, n, 0.0),
                                       "full graph": setup_sampling(s, f, n, 2000.0, False),
                                       "extraction forward": setup_forward(s, f, True),
                                       "full forward": setup_forward(s, f, False)}, r)
        print(f"\n   CPU time, interleaved in one single-threaded process (robust to other load): guided step "
              f"{cpu['guided'] / n:.2f} s vs CFG step {cpu['plain'] / n:.2f} s -> {cpu['guided'] / cpu['plain']:.3f}x "
              f"(full-graph guided step {cpu['full graph'] / cpu['plain']:.3f}x); "
              f"extraction forward {cpu['extraction forward']:.2f} s vs full forward {cpu['full forward']:.2f} s "
              f"-> {cpu['extraction forward'] / cpu['full forward']:.3f}x")

    full = measure(functools.partial(setup_forward, s, f, False), r)
    truncated = measure(functools.partial(setup_forward, s, f, True), r)
    report("2. extraction forward (stops after up_blocks.1, top-k capture) vs one full forward", truncated, full,
           ("extraction forward", "full forward"))
    whole = measure(functools.partial(setup_extraction, s, f), r)
    print(f"   whole extraction (VAE encode + prompt + forward): {whole['seconds'] * 1000:.1f} ms = "
          f"{whole['seconds'] / full['seconds']:.2f}x one full forward")

    from motion_core.methods.motion_clone import groupnorm_effect

    model = _model()
    rep = _representation(model, s, f)
    lean_bytes, full_bytes = graph_bytes(model, rep, s, f, True), graph_bytes(model, rep, s, f, False)
    print(f"\n   activations kept for backward by one guided conditional forward: lean {mib(lean_bytes).strip()} "
          f"vs full graph {mib(full_bytes).strip()} -> {lean_bytes / full_bytes:.3f}x")
    print("\n3. representation size")
    print(f"  tiny model {s}x{s}x{f}: sparse {rep.nbytes} B vs dense fp16 maps {rep.dense_nbytes} B "
          f"-> {rep.nbytes / rep.dense_nbytes:.3f}x")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        size_on_disk = rep.save(Path(tmp) / "rep.safetensors").stat().st_size
    print(f"  file on disk: {size_on_disk} B ({size_on_disk - rep.nbytes} B header + metadata)")
    sd15 = 6 * 256 * 8 * 16
    print(f"  SD1.5 AnimateDiff 512x512x16 (6 layers x 256 positions x 8 heads x 16 frames): sparse "
          f"{mib(sd15 * 3).strip()} vs dense {mib(sd15 * 16 * 2).strip()} -> {3 / 32:.3f}x")

    print("\n4. GroupNorm: per-frame (original AnimateDiff) vs cross-frame (diffusers) on the extracted maps")
    for seed in (0, 1, 2):
        effect = groupnorm_effect(model, _square(s), num_frames=f, width=s, height=s, seed=seed)
        print(f"  seed {seed}: top-1 key frame changed in {effect['index_changed_fraction'] * 100:.1f}% of "
              f"{int(effect['rows'])} rows; kept value |diff| mean {effect['value_abs_diff_mean']:.5f}, max "
              f"{effect['value_abs_diff_max']:.4f} (mean kept value {effect['value_mean']:.4f}, uniform "
              f"{1 / f:.4f})")


if __name__ == "__main__":
    main()
