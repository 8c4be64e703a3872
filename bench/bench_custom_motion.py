"""Customizing Motion's training step vs MotionDirector's, on the same model and clip, side by side.

    python bench/bench_custom_motion.py [--frames 8] [--size 64] [--repeat 3] [--rank 32]
    MOTIONKIT_BENCH_THREADS=2 python bench/bench_custom_motion.py     # CPU threads per candidate (default 1)

The model is a randomly initialised UNet3D with ZeroScope's topology at a small width (``block_out_channels
(32, 64, 128, 128)``, 2 layers per block, perturbed weights) around the tiny model's text encoder, VAE and
scheduler; on CUDA it runs in fp16 under fp16 autocast with fp32 trained tensors, as training does. Every
candidate runs in its own process (bench/_measure.py: peak memory is its own), with gradient checkpointing
on, as the trainer runs it. A "step" is what the trainer does per step: the method's forward(s) and
gradients, gradient clipping and the AdamW update (no data loading: the clip is already encoded).

Printed side by side:

1. a Customizing Motion step (training clip + prior clip in one batch of 2) vs a MotionDirector step
   (spatial path on one frame + temporal path on the clip, every step -- no 20% skip), time and peak memory;
2. the same without prior videos (batch of 1): what the prior term costs;
3. trained parameters and the memory their fp32 copy, gradients and AdamW moments take, here and on the
   real ZeroScope config (meta device, no weights).
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

PROMPT = "a square doing the sks slide"


def _threads() -> None:
    """CPU runs use ``MOTIONKIT_BENCH_THREADS`` intra-op threads (default 1): on a shared machine spinning
    OpenMP threads of several processes distort the comparison more than one thread slows it."""
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(int(os.environ.get("MOTIONKIT_BENCH_THREADS", "1")))


def _model():
    import torch

    _threads()
    cuda = torch.cuda.is_available()
    model = zeroscope_topology_model()
    return model.to(torch.device("cuda") if cuda else torch.device("cpu"), torch.float16 if cuda else torch.float32)


def _video(frames: int, size: int, down: bool = False):
    from motion_core.video import moving_square_frames

    velocity, start = ((0, 2), (size // 3, 2)) if down else ((2, 0), (2, size // 3))
    return moving_square_frames(frames, size, size, square=size // 4, velocity=velocity, start=start)


def _clip(model, frames: int, size: int):
    import torch

    from motion_core.training import CachedClip

    g = torch.Generator().manual_seed(0)
    latents = model.encode_video(_video(frames, size), generator=g).float()
    with torch.no_grad():
        embeds = model.encode_prompt([PROMPT])
    return CachedClip(index=0, video_index=0, prompt=PROMPT, latents=latents, prompt_embeds=embeds)


def setup_custom_motion(frames: int, size: int, rank: int, priors: bool = True):
    from motion_core.methods.custom_motion import CustomMotion
    from motion_core.training import TrainingConfig, VideoSource

    model = _model()
    method = CustomMotion(prior_videos=[_video(frames, size, down=True)] if priors else [],
                          prior_prompt="a square sliding down")
    config = TrainingConfig(steps=1, frames=frames, fps=None, width=size, height=size).resolved(method, 1)
    method.prepare(config, [VideoSource(frames=_video(frames, size))], PROMPT)
    return trainer_step(model, method, _clip(model, frames, size))


def setup_motion_director(frames: int, size: int, rank: int):
    from motion_core.methods.motion_director import MotionDirector, MotionDirectorConfig

    model = _model()
    method = MotionDirector(MotionDirectorConfig(rank=rank, noise_prior_steps=0, spatial_drop_probability=0.0))
    return trainer_step(model, method, _clip(model, frames, size))


def _state_bytes(count: int) -> int:
    """fp32 trained copy + fp32 gradient + two fp32 AdamW moments per trained parameter."""
    return count * 4 * 4


def _trained_counts() -> tuple[int, int, int, int]:
    import torch
    from diffusers import UNet3DConditionModel
    from torch import nn

    from motion_core.adapters.lora import spatial_lora_targets, temporal_lora_targets
    from motion_core.backbones.unet3d import UNet3DVideoModel
    from motion_core.methods.custom_motion import trainable_parameters

    def lora_params(model, names, rank):
        layers = dict(model.denoiser.named_modules())
        return sum(rank * (layers[n].in_features + layers[n].out_features) for n in names)

    small = _model()
    with torch.device("meta"):
        unet = UNet3DConditionModel(
            block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=64,
            cross_attention_dim=1024, down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
            up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3)
    real = UNet3DVideoModel(denoiser=unet, vae=nn.Identity(), text_encoder=nn.Identity(), tokenizer=None,
                            scheduler=None, base_model="cerspense/zeroscope_v2_576w")
    out = []
    for model in (small, real):
        out.append(sum(p.numel() for g in trainable_parameters(model).values() for p in g.values()))
        # MotionDirector with one training video: the temporal LoRA + one spatial LoRA (r = 32)
        out.append(lora_params(model, temporal_lora_targets(model), 32)
                   + lora_params(model, spatial_lora_targets(model), 32))
    return tuple(out)  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rank", type=int, default=32, help="MotionDirector's LoRA rank (reference: 32)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    kw = dict(frames=args.frames, size=args.size, rank=args.rank)

    cm = measure(functools.partial(setup_custom_motion, **kw), args.repeat)
    md = measure(functools.partial(setup_motion_director, **kw), args.repeat)
    alone = measure(functools.partial(setup_custom_motion, priors=False, **kw), args.repeat)
    print(f"model: UNet3D with ZeroScope's topology at width (32, 64, 128, 128); {args.frames} frames at "
          f"{args.size}x{args.size}; gradient checkpointing on; step = gradients + clipping + AdamW update")
    report("1. Customizing Motion step (clip + prior clip) vs MotionDirector step (spatial + temporal path)",
           cm, md, ("custom_motion", "motiondirector"))
    report("2. Customizing Motion with vs without a prior clip (what the prior term costs)",
           cm, alone, ("with prior", "without prior"))
    cm_small, md_small, cm_real, md_real = _trained_counts()
    print("\n3. trained parameters and their training state (fp32 copy + gradient + 2 AdamW moments)")
    for where, c, m in (("this model", cm_small, md_small), ("ZeroScope (meta)", cm_real, md_real)):
        print(f"  {where:>18}: custom_motion {c:>13,} ({mib(_state_bytes(c)).strip()})   motiondirector r32 "
              f"{m:>11,} ({mib(_state_bytes(m)).strip()})   ratio {c / m:.1f}x")


if __name__ == "__main__":
    main()
