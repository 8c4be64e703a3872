"""What users keep and share: LoRA sets, motion embeddings, motion representations (.safetensors + metadata).

* :mod:`.lora` -- named LoRA sets on a denoiser (peft) and :class:`MotionLoRA`, the MOTION_ADAPTER of
  LoRA methods, with strengths, a strength schedule over timesteps and a stored noise prior;
* :mod:`.files` -- MotionKit's adapter files, the MotionDirector reference's ``.pt`` import, exports to
  diffusers / peft / AnimateDiff-Evolved;
* :mod:`.representation` -- MotionClone's motion representation.

Also the CLI glue every sampling command shares: :func:`add_adapter_arguments` /
:func:`apply_adapter_arguments` (``--adapter``, ``--adapter-strength``, ``--noise-prior``, ...).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .files import export_adapter, import_reference_lora, load_adapter, save_adapter, save_named_adapter
from .lora import LoraSet, MotionLoRA, StrengthSchedule

if TYPE_CHECKING:  # pragma: no cover
    from ..motion_model import MotionModel

__all__ = [
    "LoraSet",
    "MotionLoRA",
    "StrengthSchedule",
    "add_adapter_arguments",
    "apply_adapter_arguments",
    "export_adapter",
    "import_reference_lora",
    "load_adapter",
    "save_adapter",
    "save_named_adapter",
]


def add_adapter_arguments(p: argparse.ArgumentParser) -> None:
    """Options to apply trained motion adapters and a noise prior when sampling."""
    g = p.add_argument_group("motion adapters")
    g.add_argument("--adapter", action="append", help="motion adapter to apply: a .safetensors file (or a name in "
                   "the motion adapters folder, or a MotionDirector reference .pt); repeat to chain several")
    g.add_argument("--adapter-strength", action="append", type=float, help="strength of each --adapter, in order "
                   "(one value applies to all; default: the strength stored in the file, 1 for MotionDirector)")
    g.add_argument("--appearance-strength", type=float, default=None, help="also apply the adapter's appearance "
                   "(spatial) LoRA at this strength (default 0: motion only, as MotionDirector's inference)")
    g.add_argument("--adapter-schedule", default="", help="adapter strength over timesteps, e.g. 't>=500' (only "
                   "while t >= 500) or '0:0,500:1,999:1' (linear), 'constant' = every step; default: the adapter's own "
                   "(MotionMatcher adapters: t>=500; others constant)")
    g.add_argument("--no-base-model-check", action="store_true", help="apply an adapter trained on another base "
                   "model of the same family and layout (e.g. ZeroScope <-> ModelScope)")
    g.add_argument("--noise-prior", type=float, default=0.0, help="MotionDirector's noise prior p in [0, 1]: start "
                   "from sqrt(p)*inverted reference + sqrt(1-p)*noise (default 0 = plain noise; 0.1-0.5 for "
                   "single-video adapters). Uses the inversion stored in the adapter, or --noise-prior-video")
    g.add_argument("--noise-prior-video", help="reference video to invert for the noise prior (when the adapter "
                   "stores none)")
    g.add_argument("--noise-prior-clip", type=int, default=0, help="which stored training clip's inversion to use "
                   "(default 0)")
    g.add_argument("--inversion-steps", type=int, default=50, help="DDIM inversion steps for --noise-prior-video "
                   "(default 50)")
    g.add_argument("--strategy", choices=["camera", "object", "hybrid", "vanilla"], default=None,
                   help="motion embeddings (Motion Inversion): camera = drop the Value embeddings, object / hybrid = "
                   "frame-differenced Value embeddings, vanilla = as trained (default: the adapter's own)")
    g.add_argument("--resample", action="store_true", help="motion embeddings: allow another size or more frames "
                   "than trained by resampling them (default: refuse)")


def apply_adapter_arguments(model: Any, args: argparse.Namespace) -> "MotionModel":
    """The model with every ``--adapter`` applied (in order) and the ``--noise-prior``."""
    from ..errors import InputError
    from ..motion_model import MotionModel
    from ..noise_prior import NoisePrior, check_p

    motion = MotionModel.wrap(model)
    names = list(getattr(args, "adapter", None) or [])
    strengths = list(getattr(args, "adapter_strength", None) or [])
    if strengths and len(strengths) not in (1, len(names)):
        raise InputError(f"{len(strengths)} --adapter-strength values for {len(names)} adapters: give one, or one "
                         "per adapter.")
    schedule_text = str(getattr(args, "adapter_schedule", "") or "").strip()
    schedule = StrengthSchedule.parse(schedule_text)
    adapters = []
    for i, name in enumerate(names):
        adapter = load_adapter(name)
        strength = strengths[i if len(strengths) > 1 else 0] if strengths else None
        if isinstance(adapter, MotionLoRA):
            adapter = adapter.with_strength(strength, appearance_strength=getattr(args, "appearance_strength", None),
                                            schedule=schedule if schedule is not None else (
                                                "keep" if not schedule_text else None),
                                            check_base_model=not getattr(args, "no_base_model_check", False))
        elif hasattr(adapter, "with_strategy"):  # motion embeddings
            adapter = adapter.with_strategy(getattr(args, "strategy", None), strength=strength,
                                            resample=bool(getattr(args, "resample", False)),
                                            check_base_model=not getattr(args, "no_base_model_check", False))
        elif getattr(adapter, "kind", "") == "weight_delta":  # Customizing Motion: W_base + strength·Δ
            adapter = adapter.with_strength(strength, schedule=schedule if schedule is not None else (
                                                "keep" if not schedule_text else None),
                                            check_base_model=not getattr(args, "no_base_model_check", False))
        elif strength is not None and hasattr(adapter, "with_strength"):
            adapter = adapter.with_strength(strength)
        if hasattr(adapter, "check_compatible"):
            adapter.check_compatible(motion.base)
        adapters.append(adapter)
        motion = motion.with_adapter(adapter, note=f"adapter {name}")
    p = check_p(getattr(args, "noise_prior", 0.0) or 0.0)
    if p > 0:
        video = getattr(args, "noise_prior_video", None)
        if video:
            from ..video import load_video

            frames_n = getattr(args, "frames", None) or motion.base.frame_limits.default
            w, h = motion.base.default_size
            clip = load_video(video, num_frames=frames_n, width=getattr(args, "width", None) or w,
                              height=getattr(args, "height", None) or h, fps=8.0)
            with motion.activated():
                prior = NoisePrior.from_frames(motion.base, clip.frames, p,
                                               steps=getattr(args, "inversion_steps", 50))
        else:
            stored = [a for a in adapters if getattr(a, "noise_prior", ())]
            if not stored:
                raise InputError("--noise-prior needs an inverted reference: none of the adapters stores one (train "
                                 "with noise prior steps > 0), so give --noise-prior-video.")
            clips = stored[0].noise_prior
            index = getattr(args, "noise_prior_clip", 0)
            if not 0 <= index < len(clips):
                raise InputError(f"--noise-prior-clip {index}: the adapter stores {len(clips)} clip(s).")
            prior = NoisePrior(clips[index], p, source=str(getattr(stored[0], "source", "")))
        motion = motion.with_noise_prior(prior, note=f"noise prior p={p:g}")
    return motion
