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

from .errors import Cancelled, InputError, MotionKitError

log = logging.getLogger("motion_core")

SMOKE_BANNER = (
    "SMOKE TEST: no --model was given, so this ran on a tiny randomly initialised {family} model built "
    "on the fly (no weights, no network). The output is noise-like by design; it only proves the whole "
    "path works.\nTo use real weights, pass ComfyUI's model files, a diffusers folder or a hub id, e.g.\n"
    "  --model ComfyUI/models/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors   (umt5 + VAE found beside it)\n"
    "  --model ComfyUI/models/checkpoints/v1-5-pruned-emaonly.safetensors "
    "--motion-adapter ComfyUI/models/animatediff_models/v3_sd15_mm.ckpt --tokenizer ComfyUI/comfy/sd1_tokenizer\n"
    "  --model ComfyUI/models/diffusers/zeroscope_v2_576w   (or --model cerspense/zeroscope_v2_576w)"
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
    g.add_argument("--model", help="the model: a diffusers folder, a hub id (a hub id downloads only when the "
                   "network is there), or a ComfyUI model file -- a Wan diffusion model "
                   "(models/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors) or an SD1.5 checkpoint "
                   "(models/checkpoints/...) with --motion-adapter. Omit it for an offline smoke test on a tiny "
                   "built-in model.")
    g.add_argument("--family", default="auto", choices=["auto", "unet3d", "animatediff", "wan"],
                   help="model family; 'auto' reads it from the folder's config or the file's weights (default: "
                   "auto). Also the family of the built-in smoke-test model when --model is omitted (auto = unet3d).")
    g.add_argument("--motion-adapter", help="AnimateDiff motion module for a Stable Diffusion 1.5 --model: a file "
                   "(models/animatediff_models/v3_sd15_mm.ckpt) or a diffusers MotionAdapter folder / hub id")
    g.add_argument("--text-encoder", default="auto", help="Wan files: the umt5-xxl text encoder file "
                   "(models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors; fp16/bf16/fp8). auto = the one "
                   "umt5 file in the text_encoders / clip folders beside the model's folder (default: auto)")
    g.add_argument("--vae", default="auto", help="Wan files: the VAE file (models/vae/wan_2.1_vae.safetensors; "
                   "wan2.2_vae.safetensors for TI2V-5B). auto = the fitting one in the vae folder beside the model's "
                   "folder; for an SD1.5 checkpoint, auto = the checkpoint's own VAE (default: auto)")
    g.add_argument("--low-noise-model", help="Wan 2.2 A14B files: the low-noise expert "
                   "(wan2.2_t2v_low_noise_14B_fp16.safetensors); --model is then the high-noise one")
    g.add_argument("--tokenizer", help="a tokenizer folder, for model files that carry none: an SD1.5 checkpoint's "
                   "CLIP outside ComfyUI needs one, e.g. ComfyUI/comfy/sd1_tokenizer (vocab.json + merges.txt). "
                   "Wan's umt5 files carry their own")
    g.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="weights dtype; auto = fp16 on CUDA, fp32 on CPU (default: auto)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps ... (default: auto)")
    g.add_argument("--attention", default="native", choices=["native", "auto", "xformers", "flash", "sage"],
                   help="attention backend of the denoiser and MotionKit's attention layers: native = PyTorch SDPA; "
                   "xformers / flash (flash-attn) / sage (SageAttention, sampling only) when installed, CUDA only; "
                   "auto = the best one available (default: native)")


def at_least(action: argparse.Action, minimum: float, *, exclusive: bool = False) -> argparse.Action:
    """Mark an option's smallest valid value; :func:`main` refuses anything below it (from the command line or
    the YAML config) with a MotionKit error, instead of a value silently standing for something else."""
    action.minimum = (minimum, exclusive)  # type: ignore[attr-defined]
    return action


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    from .sampling import SCHEDULERS

    g = p.add_argument_group("sampling")
    g.add_argument("--prompt", action="append", help="text prompt; repeat the option for several videos "
                   f"(default: '{DEFAULT_PROMPT}')")
    g.add_argument("--negative-prompt", default="", help="negative prompt for classifier-free guidance")
    at_least(g.add_argument("--steps", type=int, help="denoising steps, at least 1 (default 25; 10 for the smoke "
                            "test)"), 1)
    g.add_argument("--cfg", type=float, default=9.0, help="classifier-free guidance scale, diffusers "
                   "convention: 1 = off (default 9)")
    g.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same video")
    at_least(g.add_argument("--width", type=int, help="width in pixels, a multiple of the model's size multiple "
                            "(default: the model's own size)"), 1)
    at_least(g.add_argument("--height", type=int, help="height in pixels (default: the model's own size)"), 1)
    at_least(g.add_argument("--frames", type=int, help="number of frames, at least 1 (default: the model's own: 16 "
                            "for ZeroScope, ModelScope and AnimateDiff, 81 for Wan 2.1 / 2.2 A14B, 121 for Wan 2.2 "
                            "TI2V-5B; 8 for the smoke test)"), 1)
    g.add_argument("--scheduler", default="ddim", choices=sorted(SCHEDULERS), help="sampler (default ddim)")
    at_least(g.add_argument("--fps", type=float, default=8.0, help="frame rate of the written mp4 (default 8)"), 0,
             exclusive=True)
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
        _attention_from_args(model, args)
        fit_smoke_frames(model, args)
        return model, True
    model = load_video_model(args.model, family=args.family, dtype=args.dtype, device=args.device,
                             motion_adapter=args.motion_adapter, text_encoder=args.text_encoder, vae=args.vae,
                             low_noise_model=args.low_noise_model, tokenizer=args.tokenizer)
    _attention_from_args(model, args)
    return model, smoke


def _attention_from_args(model: Any, args: argparse.Namespace) -> None:
    choice = getattr(args, "attention", None)
    if choice not in (None, "native"):
        from .attention.backends import apply_attention_backend

        apply_attention_backend(model, choice, training=getattr(args, "command", None) == "train")


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


#: bytes ``write_video`` adds to a file name while writing it atomically (``.<name>.<8 hex>.tmp``)
VIDEO_TEMP_BYTES = len(".." + "0" * 8 + ".tmp")


def check_out(out: str | Path, count: int) -> None:
    """InputError, before any work, when an output file name (with ``_<n>`` and the temporary's suffix added)
    cannot be written on every platform."""
    from .names import check_output_path

    for path in output_paths(out, count):
        check_output_path(path, "--out", VIDEO_TEMP_BYTES)


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

    prompts = prompt_list(args.prompt)
    check_out(args.out, len(prompts))
    model, smoke = load_model_from_args(args)
    model = apply_adapter_arguments(model, args)  # --adapter / --noise-prior (MotionDirector issue)
    request = SampleRequest(prompt=prompts, negative_prompt=args.negative_prompt, width=args.width,
                            height=args.height, num_frames=args.frames, steps=25 if args.steps is None else args.steps,
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
    parser.commands = {}  # type: ignore[attr-defined]
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # SUPPRESS: an absent sub-command --config must not hide one given before the command
        p.add_argument("--config", default=argparse.SUPPRESS,
                       help="YAML file with option values (keys = long option names)")
        add_arguments(p)
        p.set_defaults(run=run)
        parser.commands[name] = p  # type: ignore[attr-defined]
    return parser


def _given_options(command: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """Destinations of the options given on the command line (also through aliases such as ``--lr`` and
    unambiguous abbreviations argparse accepts)."""
    table = command._option_string_actions
    given = set()
    for token in argv:
        if not token.startswith("-") or token == "-":
            continue
        option = token.split("=", 1)[0]
        action = table.get(option)
        if action is None and option.startswith("--"):
            matches = {a for o, a in table.items() if o.startswith(option)}
            action = next(iter(matches)) if len(matches) == 1 else None
        if action is not None:
            given.add(action.dest)
    return given


def _config_value(action: argparse.Action, value: Any, where: str) -> Any:
    """A YAML value converted and checked as argparse converts and checks the same option on the command line."""
    option = action.option_strings[-1] if action.option_strings else action.dest

    def bad(why: str) -> InputError:
        return InputError(f"{where}: {value!r} is not a valid value for {option} ({why}).")

    if value is None:
        return action.default
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise bad("write true or false")
        return value if isinstance(action, argparse._StoreTrueAction) else not value

    def one(item: Any) -> Any:
        if isinstance(item, (list, dict)):
            raise bad("a single value is expected here")
        if action.type in (int, float) and isinstance(item, bool):
            raise bad("a number is expected")
        try:
            converted = action.type(str(item)) if action.type is not None else str(item)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            kind = {int: "a whole number", float: "a number"}.get(action.type, "another value")  # type: ignore[arg-type]
            raise bad(f"{kind} is expected: {exc}") from None
        if action.choices is not None and converted not in action.choices:
            raise bad(f"choose one of {', '.join(map(str, action.choices))}")
        return converted

    if isinstance(action, argparse._AppendAction):
        if action.dest == "option" and isinstance(value, dict):  # --option as a mapping
            return value
        return [one(v) for v in (value if isinstance(value, list) else [value])]
    return one(value)


def _apply_config(parser: argparse.ArgumentParser, argv: Sequence[str], args: argparse.Namespace) -> None:
    path_text = getattr(args, "config", None)
    if not path_text:
        return
    import yaml

    path = Path(str(path_text))
    if not path.is_file():
        raise InputError(f"Config file {path} does not exist{' (it is a folder)' if path.is_dir() else ''}. Check the "
                         f"path (a relative path starts in {Path.cwd()}), or leave out --config.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"Config file {path} is not valid YAML: {problem}{where}. Fix that line: the file holds one "
                         "'option-name: value' per line, e.g. 'steps: 300' or 'prompt: \"a car driving\"' (quote "
                         "text with ':' or '#'; close every quote and bracket).") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Config file {path} cannot be read ({exc}); it must be a UTF-8 text (YAML) file.") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise InputError(f"Config file {path} must hold a mapping of option names to values ('steps: 300' per "
                         f"line), not a {type(data).__name__}.")
    command = getattr(parser, "commands", {}).get(args.command)
    actions = {a.dest: a for a in (command._actions if command is not None else []) if a.option_strings}
    given = _given_options(command, argv) if command is not None else set()
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        action = actions.get(dest)
        if action is None or dest in ("help", "config"):
            raise InputError(f"Config file {path}: unknown option '{key}' for '{args.command}' (see "
                             f"'python -m motion_core {args.command} --help' for the option names).")
        if dest not in given:
            setattr(args, dest, _config_value(action, value, f"Config file {path}, '{key}'"))


def _check_limits(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse values below an option's minimum (:func:`at_least`) -- never read them as 'the default'."""
    command = getattr(parser, "commands", {}).get(args.command)
    for action in (command._actions if command is not None else []):
        limit = getattr(action, "minimum", None)
        value = getattr(args, action.dest, None)
        if limit is None or value is None:
            continue
        minimum, exclusive = limit
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, (int, float)) and (v < minimum or (exclusive and v == minimum)):
                bound = f"greater than {minimum:g}" if exclusive else f"at least {minimum:g}"
                raise InputError(f"{action.option_strings[0]} must be {bound}, got {v:g}. Leave it out to use the "
                                 "default (see --help).")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    args._argv = list(argv)  # a training stopped by Ctrl-C / SIGTERM prints the command that resumes it
    try:
        _apply_config(parser, argv, args)
        _check_limits(parser, args)
        return int(args.run(args) or 0)
    except Cancelled as exc:  # stopped by Ctrl-C / SIGTERM before there was anything to keep
        print(f"\nstopped: {exc}", file=sys.stderr)
        return 130
    except MotionKitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: stopped at once; only what was already saved is kept.", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk or an unwritable folder in a writer without its own check
        from .storage import storage_error

        err = storage_error(exc, str(exc.filename), what="the file") if exc.filename else None
        if err is None:
            return _bug(exc)
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - every deliberate error is a MotionKitError: the rest is a bug
        return _bug(exc)


def _bug(exc: BaseException) -> int:
    """An exception that is not a MotionKit error reached the user: a bug. Show the traceback (it is what a
    report needs) and say so, instead of letting it pass for a message about the user's input."""
    import traceback

    traceback.print_exception(exc, file=sys.stderr)
    print(f"error: this is a bug in MotionKit, not a problem with your input ({type(exc).__name__}: {exc}). "
          "Please report it with the traceback above and the command you ran.", file=sys.stderr)
    return 3
