"""Real-size training and guidance steps: seconds, peak memory, FLOPs and achieved TFLOP/s.

The real denoiser configurations with random weights (nothing is downloaded): ZeroScope (UNet3D, 1.41 B),
AnimateDiff v3 (SD1.5 UNet + the v3 motion module) and Wan 2.1 T2V 1.3B, at the references' sizes --
384x384x16 for the training methods on the UNets, 512x512x16 for a MotionClone guided step, 480x832x33 for
Wan -- in fp16 (UNets) / bf16 (Wan). Every training method (MotionDirector, Customizing Motion, Motion
Inversion, MotionMatcher) and one MotionClone guided denoising step, each case in a fresh process:

* seconds per step: median of ``--steps`` steps after one warm-up step;
* peak memory: ``torch.cuda.max_memory_allocated`` (CUDA) or the process's peak RSS (CPU);
* FLOPs per step from ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and attention; one
  extra counted step) and the achieved TFLOP/s = FLOPs / seconds.

The steps run as the trainer runs them: gradient checkpointing ``auto`` against the device's free memory,
the fused LoRA forward, ``--attention`` backend. Text embeddings are random tensors of the encoder's shape
and the latents are random (the VAE and text encoder play no part in a step).

    python bench/real_size.py --device cuda             # the real sizes, one H100-class GPU, < 10 minutes
    python bench/real_size.py --device cpu              # scaled down (widths / 10, small latents): minutes
    python bench/real_size.py --only zeroscope:motiondirector,wan:motiondirector
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import status_bytes  # noqa: E402
os.environ.setdefault("HF_HUB_OFFLINE", "1")

METHODS = ("motiondirector", "custom_motion", "motion_inversion", "motion_matcher", "motionclone")
FAMILIES = ("zeroscope", "animatediff", "wan")

# (frames, latent height, latent width) per family and case kind, real and CPU-scaled
REAL = {"zeroscope": {"train": (16, 48, 48), "clone": (16, 64, 64)},
        "animatediff": {"train": (16, 48, 48), "clone": (16, 64, 64)},
        "wan": {"train": (9, 60, 104), "clone": (9, 60, 104)}}  # 33 frames -> 9 latent frames
SCALED = {"zeroscope": {"train": (8, 16, 16), "clone": (8, 16, 16)},
          "animatediff": {"train": (8, 16, 16), "clone": (8, 16, 16)},
          "wan": {"train": (3, 12, 20), "clone": (3, 12, 20)}}
TEXT = {"zeroscope": (77, 1024), "animatediff": (77, 768), "wan": (512, 4096)}


def _init(module, seed: int = 0):
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() > 1:
                p.copy_((torch.randn(p.shape, generator=g) * 0.02).to(p.device, p.dtype))
    return module.requires_grad_(False).eval()


def build(family: str, device, dtype, scaled: bool):
    """(VideoModel, text (length, dim)) with the family's real denoiser config (widths / 10 when scaled)."""
    import torch

    from motion_core.backbones import load_video_model
    from motion_core.tiny import ensure_tiny_model

    w = 10 if scaled else 1
    length, dim = TEXT[family]
    if scaled:
        dim = {"zeroscope": 64, "animatediff": 64, "wan": 128}[family]
        length = min(length, 16)
    shell = load_video_model(ensure_tiny_model("wan" if family == "wan" else "unet3d" if family == "zeroscope"
                                               else "animatediff"), device="cpu")
    with torch.device(device):
        if family == "zeroscope":
            from diffusers import UNet3DConditionModel

            den = UNet3DConditionModel(
                sample_size=48, in_channels=4, out_channels=4, block_out_channels=tuple(c // w for c in (320, 640, 1280, 1280)),
                layers_per_block=2, attention_head_dim=64 if not scaled else 8, cross_attention_dim=dim, norm_num_groups=32 if not scaled else 8,
                down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
                up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3)
        elif family == "animatediff":
            from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

            channels = tuple(c // w for c in (320, 640, 1280, 1280))
            groups = 32 if not scaled else 8
            unet = UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, block_out_channels=channels,
                                        layers_per_block=2, attention_head_dim=8, cross_attention_dim=dim,
                                        norm_num_groups=groups)
            adapter = MotionAdapter(block_out_channels=channels, motion_layers_per_block=2,
                                    motion_num_attention_heads=8, motion_norm_num_groups=groups,
                                    motion_max_seq_length=32, use_motion_mid_block=False)
            den = UNetMotionModel.from_unet2d(unet, adapter)
            del unet, adapter
        else:
            from diffusers import WanTransformer3DModel

            den = WanTransformer3DModel(
                patch_size=(1, 2, 2), num_attention_heads=12 if not scaled else 2, attention_head_dim=128 // (4 if scaled else 1),
                in_channels=16, out_channels=16, text_dim=dim, freq_dim=256 // (4 if scaled else 1),
                ffn_dim=8960 // w, num_layers=30 if not scaled else 6, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
    den = _init(den.to(device=device, dtype=dtype))
    model = shell
    model.denoiser = den
    if family == "wan":
        for attr in ("transformer",):
            if hasattr(model, attr) and getattr(model, attr) is not den:
                try:
                    setattr(model, attr, den)
                except (AttributeError, TypeError):
                    pass
    model.to(torch.device(device))
    return model, (length, dim)


def _clip(model, family: str, shape, text, device, dtype):
    import torch

    from motion_core.training import CachedClip

    frames, h, w = shape
    g = torch.Generator().manual_seed(0)
    channels = 16 if family == "wan" else 4
    latents = torch.randn((1, channels, frames, h, w), generator=g).to(device)
    embeds = torch.randn((1, *text), generator=g).to(device, dtype)
    return CachedClip(index=0, video_index=0, prompt="a cat running", latents=latents, prompt_embeds=embeds)


def training_runner(model, method, clip, checkpointing: str):
    from _measure import trainer_step

    from motion_core.memory import available_memory, plan_checkpointing, unit_activations

    f, h, w = clip.latents.shape[2:]
    scale = model.vae_scale_factor
    if checkpointing == "auto":
        frames = next(n for n in range(1, 8 * f + 2) if model.latent_frames(n) == f)
        units, outside = unit_activations(model, frames, h * scale, w * scale, clip.prompt_embeds)
        free = available_memory(clip.latents.device)
        plan = plan_checkpointing("auto", units, outside, budget=None if free is None else int(0.7 * free))
    else:
        plan = plan_checkpointing(checkpointing, [], 0, budget=None)
    run = trainer_step(model, method, clip, checkpointing=plan.mode != "off",
                       units=plan.units if plan.mode == "partial" else None)
    return run, plan.describe()


def clone_runner(model, family: str, clip, text):
    import torch

    from motion_core.methods.motion_clone import MotionCloneConfig, MotionCloneGuidance, representation_from_latents
    from motion_core.motion_model import MotionModel
    from motion_core.sampling import SampleRequest, sample

    emb_dtype = clip.prompt_embeds.dtype

    def encode_prompt(prompts):
        g = torch.Generator().manual_seed(len(prompts))
        return torch.randn((len(prompts), *text), generator=g).to(clip.latents.device, emb_dtype)

    model.encode_prompt = encode_prompt  # random embeddings of the encoder's shape (no text encoder runs)
    rep = representation_from_latents(model, clip.latents, seed=0)
    config = MotionCloneConfig(steps=1, guided_steps=1, guidance_fraction=1.0, warm_up=0, cool_down=0)
    if model.family == "wan":
        from motion_core.methods.motion_clone_wan import WanMotionCloneGuidance

        hook = WanMotionCloneGuidance(rep, config)
    else:
        hook = MotionCloneGuidance(rep, config)
    guided = MotionModel.wrap(model).with_hook(hook)
    f, h, w = clip.latents.shape[2:]
    scale = model.vae_scale_factor
    frames = next(n for n in range(1, 8 * f + 2) if model.latent_frames(n) == f)
    req = SampleRequest(prompt="a cat running", negative_prompt="blurry", steps=1, cfg=7.5, seed=0,
                        width=w * scale, height=h * scale, num_frames=frames)

    def run():
        sample(guided, req, decode=False)
    return run, "one guided denoising step (CFG: 2 forwards + the energy's backward)"


def child(args) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from motion_core.methods import create_method

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    family, method_name = args.case.split(":")
    dtype = torch.float32 if device.type == "cpu" else (torch.bfloat16 if family == "wan" else torch.float16)
    scaled = device.type == "cpu" or args.scaled
    model, text = build(family, device, dtype, scaled)
    if args.attention != "native":
        from motion_core.attention.backends import apply_attention_backend

        apply_attention_backend(model, args.attention, training=method_name != "motionclone")
    sizes = (SCALED if scaled else REAL)[family]
    shape = sizes["clone" if method_name == "motionclone" else "train"]
    clip = _clip(model, family, shape, text, device, dtype)
    if method_name == "motionclone":
        run, how = clone_runner(model, family, clip, text)
    else:
        options = {"noise_prior_steps": 0} if method_name in ("motiondirector", "motion_inversion") else {}
        if method_name == "motion_matcher":
            options = {"noise_prior": 0.0}
        if scaled and method_name in ("motiondirector", "motion_matcher"):
            options["rank"] = 8  # the scaled layers are narrower than the reference rank 32
        method = create_method(method_name, **options)
        run, how = training_runner(model, method, clip, args.checkpointing)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
    run()  # warm-up
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else status_bytes("VmHWM")
    from torch.utils.checkpoint import set_checkpoint_early_stop

    counter = FlopCounterMode(display=False)
    try:
        with counter, set_checkpoint_early_stop(False):
            run()
        flops = counter.get_total_flops()
    except RuntimeError:  # the counter's hooks and an energy's autograd.grad through checkpoints: not counted
        flops = 0
    seconds = statistics.median(times)
    return {"case": args.case, "seconds": seconds, "peak_bytes": peak, "flops": flops,
            "tflops": flops / seconds / 1e12, "how": how, "shape": list(shape), "dtype": str(dtype).replace("torch.", ""),
            "params": sum(p.numel() for p in model.denoiser.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if os.environ.get("CUDA_VISIBLE_DEVICES", "x") != "" else "cpu")
    parser.add_argument("--only", help="comma-separated family:method cases (default: every case)")
    parser.add_argument("--steps", type=int, default=2, help="measured steps per case (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--checkpointing", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--attention", default="native")
    parser.add_argument("--scaled", action="store_true", help="the scaled-down models on CUDA too")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=int, default=300, help="seconds per case before it is skipped")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(child(args)))
        return
    cases = args.only.split(",") if args.only else [f"{f}:{m}" for f in FAMILIES for m in METHODS]
    started = time.perf_counter()
    rows = []
    for case in cases:
        cmd = [sys.executable, __file__, "--case", case, "--device", args.device, "--steps", str(args.steps),
               "--threads", str(args.threads), "--checkpointing", args.checkpointing, "--attention", args.attention]
        if args.scaled:
            cmd.append("--scaled")
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
        except subprocess.TimeoutExpired:
            print(f"{case:<32} skipped: over {args.timeout}s", flush=True)
            continue
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode != 0 or not lines:
            reason = (out.stderr.strip().splitlines() or ["?"])[-1][:160]
            print(f"{case:<32} failed: {reason}", flush=True)
            continue
        r = json.loads(lines[-1])
        rows.append(r)
        counted = (f"{r['flops'] / 1e9:10.1f} GFLOP/step  {r['tflops']:8.3f} TFLOP/s" if r["flops"] else
                   f"{'(FLOPs not countable: counter + checkpointed energy gradient)':>40}")
        print(f"{case:<32} {r['seconds']:8.3f} s/step  peak {r['peak_bytes'] / 2**30:7.2f} GiB  {counted}  "
              f"({r['params'] / 1e6:.0f} M params, latents {r['shape']}, {r['dtype']})", flush=True)
    mem = "peak VRAM" if args.device.startswith("cuda") else "peak RSS"
    print(f"\n{len(rows)}/{len(cases)} cases in {time.perf_counter() - started:.0f}s on {args.device} "
          f"({'real sizes' if args.device.startswith('cuda') and not args.scaled else 'scaled down'}; {mem})")


if __name__ == "__main__":
    main()
