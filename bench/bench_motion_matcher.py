"""MotionMatcher's training step vs MotionDirector's, and what its extra frozen passes cost.

    python bench/bench_motion_matcher.py [--frames 8] [--size 64] [--rank 8] [--repeat 3]

On the CPU each process uses one thread (MOTIONKIT_BENCH_THREADS to change it).

The model is a randomly initialised UNet3D with ZeroScope's topology at a small width (spec C:
``block_out_channels (32, 64, 128, 128)``, 2 layers per block), so MotionMatcher reads its maps from
``down_blocks.2`` at 1/4 of the latent size and stops its extractor there, as on the real model. Every
candidate runs in its own process (peak memory is its own) with gradient checkpointing as training uses it.

Printed side by side:

1. one MotionMatcher step vs one MotionDirector step (spatial + temporal path), time and peak memory;
2. MotionMatcher with and without gradient checkpointing (memory for time);
3. the cost model: a MotionMatcher step should cost what its passes need and nothing more --
   ``ε-loss step with the same LoRA`` (trainable forward + backward) ``+ extractor forward with gradient
   (+ its backward to the latent) + extractor forward without gradient`` (the ground-truth branch); the
   ratio measured / sum is printed (about 1 when nothing is recomputed beyond what checkpointing asks);
4. forward calls per step of a feature-block attention and of a decoder attention, counted with hooks.
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

from _measure import measure, mib, report, trainer_step, zeroscope_topology_model  # noqa: E402

FEATURE_LAYER = "down_blocks.2.attentions.0.transformer_blocks.0.attn2"
DECODER_LAYER = "up_blocks.1.attentions.0.transformer_blocks.0.attn2"


def _model():
    """The tiny model's text encoder / VAE / scheduler around a ZeroScope-topology UNet3D."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":  # intra-op threads spinning against other processes distort CPU timings
        torch.set_num_threads(int(os.environ.get("MOTIONKIT_BENCH_THREADS", "1")))
    return zeroscope_topology_model().to(device)


def _clip(model, frames: int, size: int):
    import torch

    from motion_core.training import CachedClip

    latent = size // model.vae_scale_factor
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, frames, latent, latent, generator=g).to(model.device)
    with torch.no_grad():
        embeds = model.encode_prompt(["a bear is walking on rocks"]).to(model.device)
    return CachedClip(index=0, video_index=0, prompt="a bear", latents=latents, prompt_embeds=embeds)


def setup_motion_matcher(frames: int, size: int, rank: int, gradient_checkpointing: bool = True):
    from motion_core.methods.motion_matcher import MotionMatcher, MotionMatcherConfig

    model = _model()
    method = MotionMatcher(MotionMatcherConfig(rank=rank, noise_prior=0.0))
    step = trainer_step(model, method, _clip(model, frames, size), checkpointing=gradient_checkpointing,
                        update=False)
    return lambda: step()


def setup_motion_director(frames: int, size: int, rank: int):
    from motion_core.methods.motion_director import MotionDirector, MotionDirectorConfig

    model = _model()
    # drop probability 0: every step runs both paths (the 20% temporal-only steps would be cheaper)
    method = MotionDirector(MotionDirectorConfig(rank=rank, noise_prior_steps=0, spatial_drop_probability=0.0))
    step = trainer_step(model, method, _clip(model, frames, size), update=False)
    return lambda: step()


def setup_eps_step(frames: int, size: int, rank: int):
    """The trainable pass alone: MotionMatcher's LoRA trained with the plain ε-loss (forward + backward)."""
    import torch

    from motion_core.adapters.lora import inject_lora, lora_parameters
    from motion_core.losses import diffusion_mse
    from motion_core.methods.motion_matcher import motion_matcher_targets
    from motion_core.training import activation_checkpointing, add_training_noise

    model = _model()
    clip = _clip(model, frames, size)
    inject_lora(model.denoiser, "motion", motion_matcher_targets(model), rank=rank, alpha=rank, dropout=0.1,
                dtype=torch.float32)
    params = lora_parameters(model.denoiser, "motion")
    for p in params:
        p.requires_grad_(True)

    def run():
        g = torch.Generator().manual_seed(1)
        noise = torch.randn(clip.latents.shape, generator=g).to(model.device)
        t = torch.randint(500, 1000, (1,), generator=g)
        z_t, target = add_training_noise(model, clip.latents, noise, t)
        with activation_checkpointing(model.denoiser, True):
            loss = diffusion_mse(model.predict(z_t, t, clip.prompt_embeds), target)
            torch.autograd.grad(loss, params)

    return run


def setup_extractor(frames: int, size: int, rank: int, with_grad: bool):
    """One frozen extractor pass (up to the feature block) with the LoRA installed but disabled; with
    ``with_grad`` also the backward of a map loss to the input latent, as the predicted branch needs."""
    import torch

    from motion_core.adapters.lora import inject_lora
    from motion_core.methods.motion_matcher import extract_motion_features, motion_matcher_targets
    from motion_core.training import activation_checkpointing

    model = _model()
    clip = _clip(model, frames, size)
    inject_lora(model.denoiser, "motion", motion_matcher_targets(model), rank=rank, alpha=rank, dtype=torch.float32)

    def run():
        x = clip.latents.clone().requires_grad_(with_grad)
        with activation_checkpointing(model.denoiser, True), torch.set_grad_enabled(with_grad):
            features = extract_motion_features(model, x, 599, clip.prompt_embeds)
            if with_grad:
                loss = features.cross_attention.pow(2).mean() + features.temporal_attention.pow(2).mean()
                torch.autograd.grad(loss, x)

    return run


def interleaved(runs: dict, rounds: int) -> dict[str, float]:
    """Median seconds per candidate, the candidates taking turns in one process (on a shared machine the
    load then hits all of them alike; each ran once before as a warm-up)."""
    import statistics
    import time

    import torch

    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()
    for _ in range(rounds):
        for name, run in runs.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def saved_for_backward(run) -> int:
    """Bytes of the distinct tensors autograd keeps for backward during ``run()`` (summed over the step's
    graphs); tensors inside checkpointed units are not kept (the checkpoint's own hooks take them), so
    this is the activation memory checkpointing leaves -- a device-independent memory measure."""
    import torch

    seen: dict[tuple, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), t.device)] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(seen.values())


def count_forwards(frames: int, size: int, rank: int) -> dict[str, dict[str, int]]:
    """Forward calls of a feature-block attention and a decoder attention in one step."""
    from motion_core.methods.motion_matcher import MotionMatcher, MotionMatcherConfig

    out = {}
    for gc in (True, False):
        model = _model()
        step = trainer_step(model, MotionMatcher(MotionMatcherConfig(rank=rank, noise_prior=0.0)),
                            _clip(model, frames, size), checkpointing=gc, update=False)
        counts = {FEATURE_LAYER: 0, DECODER_LAYER: 0}
        hooks = [model.denoiser.get_submodule(name).register_forward_pre_hook(
            lambda m, a, name=name: counts.__setitem__(name, counts[name] + 1)) for name in counts]
        step()
        for h in hooks:
            h.remove()
        out["on" if gc else "off"] = counts
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="pixels (latent = size / 4 with the tiny VAE)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    kw = dict(frames=args.frames, size=args.size, rank=args.rank)
    r = args.repeat
    mm = measure(functools.partial(setup_motion_matcher, **kw), repeat=r)
    md = measure(functools.partial(setup_motion_director, **kw), repeat=r)
    mm_off = measure(functools.partial(setup_motion_matcher, gradient_checkpointing=False, **kw), repeat=r)

    size = f"{args.frames} frames {args.size}x{args.size}, rank {args.rank}, ZeroScope topology (32,64,128,128)"
    report(f"1. one training step, gradient checkpointing on ({size})", mm, md, ("MotionMatcher", "MotionDirector"))
    report("2. MotionMatcher: checkpointing on vs off", mm, mm_off, ("checkpointing on", "checkpointing off"))

    runs = {"MotionMatcher step": setup_motion_matcher(**kw), "MotionDirector step": setup_motion_director(**kw),
            "eps-loss step, same LoRA": setup_eps_step(**kw),
            "extractor fwd+bwd (predicted)": setup_extractor(with_grad=True, **kw),
            "extractor fwd, no grad (target)": setup_extractor(with_grad=False, **kw)}
    t = interleaved(runs, max(r, 3))
    parts = sum(t[k] for k in list(runs)[2:])
    print("\n3. cost model of a MotionMatcher step (checkpointing on; candidates taking turns in one process)")
    for name in list(runs)[2:]:
        print(f"  {name:>32}: {t[name] * 1000:9.1f} ms")
    print(f"  {'sum of the passes':>32}: {parts * 1000:9.1f} ms")
    print(f"  {'MotionMatcher step':>32}: {t['MotionMatcher step'] * 1000:9.1f} ms   ratio step / sum = "
          f"{t['MotionMatcher step'] / parts:.3f}")
    print(f"  {'MotionDirector step':>32}: {t['MotionDirector step'] * 1000:9.1f} ms   ratio MotionMatcher / "
          f"MotionDirector = {t['MotionMatcher step'] / t['MotionDirector step']:.3f}")

    print("\n   activation memory kept for backward during one step")
    kept = {"MotionMatcher, checkpointing on": saved_for_backward(runs["MotionMatcher step"]),
            "MotionMatcher, checkpointing off": saved_for_backward(setup_motion_matcher(gradient_checkpointing=False,
                                                                                        **kw)),
            "MotionDirector, checkpointing on": saved_for_backward(runs["MotionDirector step"])}
    for name, value in kept.items():
        print(f"  {name:>32}: {mib(value)}")
    print(f"  ratio MotionMatcher / MotionDirector (checkpointing on): "
          f"{kept['MotionMatcher, checkpointing on'] / kept['MotionDirector, checkpointing on']:.3f}x")
    counts = count_forwards(**kw)
    print("\n4. forward calls per step (checkpointing on: forward + recomputation of the graph-carrying passes)")
    for gc, c in counts.items():
        print(f"  checkpointing {gc:>3}: feature block {c[FEATURE_LAYER]} (trainable + predicted + target), "
              f"decoder {c[DECODER_LAYER]} (trainable only; the extractor stops at the feature block)")


if __name__ == "__main__":
    main()
