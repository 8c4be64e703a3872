"""``python -m motion_core <command>`` -- the same jobs as the nodes, headless.

Every command works offline: without ``--model`` it builds a tiny random model of the chosen family
(and a synthetic reference clip where one is needed), runs the whole path on it and says plainly that
this was a smoke test and how to point it at real weights.

Options may also come from a YAML file (``--config run.yaml``): its keys are the long option names with
``-`` or ``_``; options given on the command line win.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import MotionKitError

log = logging.getLogger("motion_core")

SMOKE_BANNER = (
    "SMOKE TEST: no --model was given, so this ran on a tiny randomly initialised {family} model built "
    "on the fly (no weights, no network). The output is noise-like by design; it only proves the whole "
    "path works.\nTo use real weights, pass a diffusers folder or a hub id, e.g.\n"
    "  --model /path/to/ComfyUI/models/diffusers/zeroscope_v2_576w   (or --model cerspense/zeroscope_v2_576w)\n"
    "  --model /path/to/stable-diffusion-v1-5 --motion-adapter /path/to/animatediff-motion-adapter-v1-5-3"
)

DEFAULT_PROMPT = "a red square sliding to the right on a dark background"

# Sizes for the built-in tiny model: small enough for a 2-core CPU in seconds.
SMOKE_DEFAULTS = {"width": 64, "height": 64, "frames": 8, "steps": 10}

#: subcommand name -> (help, add_arguments(parser), run(args) -> exit code). Method issues register here.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    def register(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (help, add_arguments, run)
        return run
    return register


# --------------------------------------------------------------------------------------------- shared
def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help="diffusers model folder or hub id (a hub id downloads only when the "
                   "network is there). Omit it for an offline smoke test on a tiny built-in model.")
    g.add_argument("--family", default="auto", choices=["auto", "unet3d", "animatediff", "wan"],
                   help="model family; 'auto' reads it from the folder's config (default: auto). Also the "
                   "family of the built-in smoke-test model when --model is omitted (auto = unet3d).")
    g.add_argument("--motion-adapter", help="AnimateDiff MotionAdapter folder or hub id, when --model is a "
                   "plain Stable Diffusion 1.5 folder")
    g.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="weights dtype; auto = fp16 on CUDA, fp32 on CPU (default: auto)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps ... (default: auto)")


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    from .sampling import SCHEDULERS

    g = p.add_argument_group("sampling")
    g.add_argument("--prompt", action="append", help="text prompt; repeat the option for several videos "
                   f"(default: '{DEFAULT_PROMPT}')")
    g.add_argument("--negative-prompt", default="", help="negative prompt for classifier-free guidance")
    g.add_argument("--steps", type=int, help="denoising steps (default 25; 10 for the smoke test)")
    g.add_argument("--cfg", type=float, default=9.0, help="classifier-free guidance scale, diffusers "
                   "convention: 1 = off (default 9)")
    g.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same video")
    g.add_argument("--width", type=int, help="width in pixels, a multiple of the model's size multiple "
                   "(default: the model's own size)")
    g.add_argument("--height", type=int, help="height in pixels (default: the model's own size)")
    g.add_argument("--frames", type=int, help="number of frames (default: the model's default, 16)")
    g.add_argument("--scheduler", default="ddim", choices=sorted(SCHEDULERS), help="sampler (default ddim)")
    g.add_argument("--fps", type=float, default=8.0, help="frame rate of the written mp4 (default 8)")
    g.add_argument("--out", default="clip.mp4", help="output .mp4 path; with several prompts/videos, "
                   "'_<n>' is added before the extension")


def fit_smoke_frames(model: Any, args: argparse.Namespace) -> None:
    """Smoke tests only: round a default frame count up to one the tiny model accepts (Wan: 4k+1)."""
    frames = getattr(args, "frames", None)
    limits = getattr(model, "frame_limits", None)
    if not isinstance(frames, int) or limits is None or limits.step <= 1:
        return
    while (frames - limits.offset) % limits.step:
        frames += 1
    args.frames = frames


def load_model_from_args(args: argparse.Namespace):
    """(VideoModel, smoke) from --model/--family/... ; builds the tiny model when --model is absent."""
    from .backbones import load_video_model
    from .tiny import ensure_tiny_model

    smoke = not args.model
    if smoke:
        family = "unet3d" if args.family == "auto" else args.family
        source = ensure_tiny_model(family)
        print(SMOKE_BANNER.format(family=family), file=sys.stderr)
        for key, value in SMOKE_DEFAULTS.items():
            if getattr(args, key, "absent") is None:
                setattr(args, key, value)
        model = load_video_model(source, family=family, dtype=args.dtype, device=args.device)
        fit_smoke_frames(model, args)
        return model, True
    model = load_video_model(args.model, family=args.family, dtype=args.dtype, device=args.device,
                             motion_adapter=args.motion_adapter)
    return model, smoke


def print_progress(prefix: str) -> Callable[[int, int, dict], None]:
    started = time.perf_counter()

    def progress(step: int, total: int, info: dict) -> None:
        elapsed = time.perf_counter() - started
        eta = elapsed / step * (total - step) if step else 0.0
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items()
                         if k in ("timestep", "loss", "label"))
        print(f"\r{prefix} {step}/{total} {extra} eta {eta:5.1f}s", end="" if step < total else "\n",
              file=sys.stderr, flush=True)
    return progress


def prompt_list(value: str | list[str] | None) -> list[str]:
    if not value:
        return [DEFAULT_PROMPT]
    return [value] if isinstance(value, str) else [str(v) for v in value]


def output_paths(out: str | Path, count: int) -> list[Path]:
    out = Path(out)
    if out.suffix.lower() != ".mp4":
        out = out.with_suffix(".mp4")
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(count)]


def write_videos(frames, out: str | Path, fps: float) -> list[Path]:
    from .video import write_video

    paths = output_paths(out, frames.shape[0])
    for video, path in zip(frames, paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, video, fps)
    return paths


# --------------------------------------------------------------------------------------------- sample
def _sample_arguments(p: argparse.ArgumentParser) -> None:
    from .adapters import add_adapter_arguments

    add_model_arguments(p)
    add_sampling_arguments(p)
    add_adapter_arguments(p)


@command("sample", "generate a video from a prompt (text-to-video)", _sample_arguments)
def run_sample(args: argparse.Namespace) -> int:
    from .adapters import apply_adapter_arguments
    from .sampling import SampleRequest, sample

    model, smoke = load_model_from_args(args)
    model = apply_adapter_arguments(model, args)  # --adapter / --noise-prior (MotionDirector issue)
    prompts = prompt_list(args.prompt)
    request = SampleRequest(prompt=prompts, negative_prompt=args.negative_prompt, width=args.width,
                            height=args.height, num_frames=args.frames, steps=args.steps or 25,
                            cfg=args.cfg, seed=args.seed, scheduler=args.scheduler)
    result = sample(model, request, progress=print_progress("sampling"))
    paths = write_videos(result.frames, args.out, args.fps)
    for path in paths:
        print(f"wrote {path} ({result.info['num_frames']} frames, {result.info['width']}x"
              f"{result.info['height']}, {result.info['seconds']:.1f}s)")
    if smoke:
        print("(smoke test on the built-in tiny model -- see the note above to use real weights)")
    return 0


# --------------------------------------------------------------------------------------------- main
def _import_commands() -> None:
    import importlib
    import pkgutil

    from . import commands

    for info in pkgutil.iter_modules(commands.__path__):
        importlib.import_module(f"{commands.__name__}.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    _import_commands()
    parser = argparse.ArgumentParser(
        prog="python -m motion_core",
        description="MotionKit: customize the motion of video diffusion models, headless. Every command "
        "runs offline on a tiny built-in model when --model is omitted (a smoke test).",
    )
    parser.add_argument("--config", help="YAML file with option values (keys = long option names)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", help="YAML file with option values (keys = long option names)")
        add_arguments(p)
        p.set_defaults(run=run)
    return parser


def _apply_config(parser: argparse.ArgumentParser, argv: Sequence[str], args: argparse.Namespace) -> None:
    if not getattr(args, "config", None):
        return
    import yaml

    path = Path(args.config)
    if not path.is_file():
        raise MotionKitError(f"Config file {path} does not exist.")
    data: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise MotionKitError(f"Config file {path} must hold a mapping of option names to values.")
    given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if not hasattr(args, dest):
            raise MotionKitError(f"Config file {path}: unknown option '{key}'.")
        if dest not in given:
            setattr(args, dest, value)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        _apply_config(parser, argv, args)
        return int(args.run(args) or 0)
    except MotionKitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
