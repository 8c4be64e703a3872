"""``python -m motion_core train --method <name> ...`` and ``python -m motion_core export-adapter ...``.

Training, headless. Every option may come from a YAML file (``--config run.yaml``; keys = the long option
names). Method-specific hyper-parameters without their own flag go through ``--option KEY=VALUE``
(repeatable; in YAML a mapping ``option: {spatial_drop_probability: 0.2}``).

Without ``--model`` (and without ``--video``) it trains on the built-in tiny model and the synthetic
moving-square clip and says it was a smoke test.

Multi-GPU: ``accelerate launch -m motion_core train ...`` (see docs/accelerate.md): every process trains
on its own clips and noise and gradients are averaged before each step.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

from ..cli import (
    DEFAULT_PROMPT,
    add_model_arguments,
    at_least,
    command,
    fit_smoke_frames,
    load_model_from_args,
    print_progress,
)
from ..errors import InputError, TrainingError
from ..names import MAX_NAME_BYTES

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".gif")
#: the smoke test's sizes on the tiny model (a few seconds on a 2-core CPU)
SMOKE_TRAIN = {"width": 32, "height": 32, "frames": 8, "steps": 10, "preview_steps": 3, "noise_prior_steps": 5}


def _train_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    g = p.add_argument_group("training")
    g.add_argument("--method", default="motiondirector", help="training method (default: motiondirector)")
    g.add_argument("--video", action="append", help="training video file; repeat for several videos")
    g.add_argument("--video-folder", help="folder of training videos (sorted by name); a '<video>.txt' beside a "
                   "video is its caption")
    g.add_argument("--prompt", action="append", help="prompt describing the training video(s); one for all, or "
                   "one per video in order (an empty prompt is refused, as in the Train nodes)")
    at_least(g.add_argument("--steps", type=int, help="optimization steps, at least 1 (default: the method's, "
                            "MotionDirector 150 for one video, 500 for several)"), 1)
    at_least(g.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float,
                            help="learning rate (default: the method's, MotionDirector 5e-4)"), 0, exclusive=True)
    at_least(g.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: the method's)"), 0)
    at_least(g.add_argument("--rank", type=int, help="LoRA rank (LoRA methods; MotionDirector default 32)"), 1)
    at_least(g.add_argument("--frames", type=int, help="frames per training clip (default 16)"), 1)
    at_least(g.add_argument("--fps", type=float, help="frame rate the clips are sampled at (default 8)"), 0,
             exclusive=True)
    at_least(g.add_argument("--width", type=int, help="training width (default 384)"), 1)
    at_least(g.add_argument("--height", type=int, help="training height (default 384)"), 1)
    g.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same run")
    g.add_argument("--windows", choices=["all", "first"], default="all", help="train on every full window of "
                   "each video (all) or only its first (default all)")
    at_least(g.add_argument("--noise-prior-steps", type=int, help="DDIM inversion steps of the noise prior stored in "
                            "the adapter (MotionDirector default 50; 0 = none)"), 0)
    g.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other method setting, e.g. --option spatial_drop_probability=0.1")
    g.add_argument("--prior-video", action="append", help="prior (regularization) video of a related, generic "
                   "motion (Customizing Motion); repeatable")
    g.add_argument("--prior-folder", help="folder of prior videos (Customizing Motion); a '<video>.txt' beside a "
                   "video is its caption")
    g.add_argument("--prior-prompt", action="append", help="caption of the prior videos, without the identifier; one "
                   "for all, or one per --prior-video in order")
    o = p.add_argument_group("run")
    o.add_argument("--save-name", default=None, help="file name of the trained adapter in the motion adapters "
                   "folder and of its run folder (default: <method>_<first video name>); a plain name of at most "
                   f"{MAX_NAME_BYTES} bytes, no Windows device name (CON, NUL, COM1...), checked before training")
    o.add_argument("--adapters-dir", help="motion adapters folder (default: $MOTIONKIT_ADAPTERS_DIR or the pack's "
                   "models/motion_adapters)")
    o.add_argument("--run-dir", help="folder for checkpoints, previews and the loss curve (default: "
                   "$MOTIONKIT_OUTPUT_DIR/motionkit_training/<save name>, MOTIONKIT_OUTPUT_DIR defaulting to "
                   "<repo>/output: the folder the Train nodes use outside ComfyUI)")
    o.add_argument("--resume", help="continue an interrupted run: a checkpoint-N folder, a run folder (its latest "
                   "checkpoint), or 'latest' (the latest checkpoint in this save name's run folder); refused before "
                   "the model loads when there is none")
    at_least(o.add_argument("--checkpoint-every", type=int, help="save a resumable checkpoint every N steps; 0 = "
                            "one checkpoint at the end only (a cancelled run always writes one; default: the "
                            "method's)"), 0)
    at_least(o.add_argument("--keep-checkpoints", type=int, default=2, help="checkpoints kept on disk (default 2)"), 1)
    at_least(o.add_argument("--validate-every", type=int, help="preview sample every N steps (0 = only at the end)"),
             0)
    o.add_argument("--preview-prompt", action="append", help="prompt of the preview samples (default: the "
                   "training prompt); repeatable")
    at_least(o.add_argument("--preview-steps", type=int, default=30, help="denoising steps of a preview (default "
                            "30)"), 1)
    o.add_argument("--preview-cfg", type=float, default=12.0, help="CFG scale of a preview (default 12)")
    o.add_argument("--preview-noise-prior", type=float, default=None, help="noise prior p of previews (default: "
                   "the method's default for this number of videos)")
    o.add_argument("--score-checkpoints", action="store_true", help="make a preview at every checkpoint and score "
                   "it against the training clip (motion fidelity; CLIP-T with --score-clip); the scores are drawn "
                   "beside the loss curve")
    o.add_argument("--select-best", action="store_true", help="also keep the best scored checkpoint as "
                   "<save name>_best.safetensors beside the last adapter (its step in the metadata); implies "
                   "--score-checkpoints. Best = highest motion fidelity (+ CLIP-T with --score-clip), earlier step on "
                   "a tie")
    o.add_argument("--score-clip", help="CLIP model folder or hub id for the checkpoint scores' CLIP-T")
    o.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"], default="auto",
                   help="autocast on CUDA (auto: the model's dtype, bf16 for fp32 models when supported); the CPU "
                   "always trains in fp32")
    o.add_argument("--gradient-checkpointing", choices=["auto", "on", "off"], default="auto",
                   help="recompute activations in backward: auto = only the units the device's free memory requires "
                   "(largest activations first; none when everything fits), on = every unit (the references' "
                   "setting), off = none (default: auto; the choice and the memory estimate are printed at the start)")
    o.add_argument("--no-gradient-checkpointing", action="store_true", help="the same as --gradient-checkpointing off")
    o.add_argument("--compile", choices=["off", "on"], default="off", help="torch.compile every repeated block "
                   "(regional; the first step includes the compile time, which is printed). Off by default: it pays "
                   "only over long runs on a GPU")
    o.add_argument("--accelerate", action="store_true", help="use an accelerate.Accelerator even in a single "
                   "process (set automatically under 'accelerate launch')")


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _method_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    raw = args.option
    if isinstance(raw, dict):
        options.update(raw)
    else:
        for item in raw or []:
            if "=" not in str(item):
                raise InputError(f"--option {item!r} must look like KEY=VALUE.")
            key, value = str(item).split("=", 1)
            options[key.strip()] = _parse_value(value)
    for flag in ("learning_rate", "weight_decay", "rank", "noise_prior_steps"):
        value = getattr(args, flag, None)
        if value is not None:
            options.setdefault(flag, value)
    return options


def _videos(args: argparse.Namespace) -> list[tuple[Path, str | None]]:
    paths = [Path(v) for v in (args.video or [])]
    if args.video_folder:
        folder = Path(args.video_folder)
        if not folder.is_dir():
            raise InputError(f"--video-folder {folder} is not a folder. Check the path (a relative path starts in "
                             f"{Path.cwd()}).")
        # sorted: the reference's glob order is filesystem dependent (spec §1.9.7)
        paths += sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        if not paths:
            raise InputError(f"--video-folder {folder} holds no video files ({', '.join(VIDEO_SUFFIXES)}).")
    out = []
    for path in paths:
        if not path.is_file():
            folder = " (it is a folder: use --video-folder)" if path.is_dir() else ""
            raise InputError(f"Training video {path} does not exist{folder}. Check the path (a relative path starts in "
                             f"{Path.cwd()}).")
        caption_file = path.with_suffix(".txt")
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else None
        out.append((path, caption or None))
    return out


def default_run_dir(save_name: str) -> Path:
    """``$MOTIONKIT_OUTPUT_DIR/motionkit_training/<save name>`` (``MOTIONKIT_OUTPUT_DIR`` defaults to
    ``<repo>/output``): the run folder the Train nodes use outside ComfyUI, so the CLI and the nodes resume each
    other's runs and nothing is kept in the system's temporary folder."""
    env = os.environ.get("MOTIONKIT_OUTPUT_DIR", "").strip()
    root = Path(env).expanduser() if env else Path(__file__).resolve().parents[2] / "output"
    return root / "motionkit_training" / save_name


def _prompts(args: argparse.Namespace) -> list[str]:
    """The --prompt values; an empty one is refused (the Train nodes refuse it too)."""
    raw = args.prompt
    prompts = [str(p) for p in raw] if isinstance(raw, list) else ([str(raw)] if raw is not None else [])
    if any(not p.strip() for p in prompts):
        raise InputError("--prompt is empty: describe what the training video(s) show, e.g. --prompt \"a car driving "
                         "along a road\" (or leave it out and put a '<video>.txt' caption beside each video).")
    return [p.strip() for p in prompts]


def _save_name(args: argparse.Namespace, method_name: str, first_name: str) -> str:
    """--save-name, or ``<method>_<first video name>``, checked as a file name on every platform with every
    suffix a run adds (:mod:`motion_core.names`)."""
    from ..adapters.files import check_save_name

    if args.save_name is not None:
        return check_save_name(args.save_name)
    name = f"{method_name}_{first_name}"
    try:
        return check_save_name(name)
    except InputError as exc:
        raise InputError(f"The default save name (<method>_<first video name>) cannot be used: {exc} Give a name "
                         "with --save-name.") from None


def _resume_point(value: Any, run_dir: Path, save_name: str) -> Path | None:
    """The checkpoint folder --resume names, or InputError before anything loads when there is none."""
    from ..training import find_checkpoint

    if value is None or not str(value).strip():
        return None
    if str(value).strip().lower() == "latest":
        try:
            return find_checkpoint(run_dir)
        except TrainingError:
            raise InputError(f"--resume latest: there is no checkpoint of '{save_name}' in {run_dir} yet (no earlier "
                             "run of this save name was checkpointed or interrupted). Leave out --resume to start a "
                             "new run, or give the --save-name (or --run-dir) of the run to continue.") from None
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise InputError(f"--resume {path}: there is no such folder. Give a checkpoint-N folder, the run folder that "
                         f"holds them (for this save name: {run_dir}) or 'latest'; leave out --resume to start a new "
                         "run.")
    try:
        return find_checkpoint(path)
    except TrainingError:
        raise InputError(f"--resume {path} holds no training checkpoint (a checkpoint-N folder with a "
                         "trainer_state.json). Give a checkpoint folder, the run folder that holds them, or 'latest'; "
                         "leave out --resume to start a new run.") from None


def _accepts(method_name: str, option: str) -> bool:
    """Whether the method's config has a field ``option``."""
    from ..methods import get_method

    config_class = getattr(get_method(method_name), "config_class", None)
    return config_class is None or option in {f.name for f in dataclasses.fields(config_class)}


def _set_priors(args: argparse.Namespace, method: Any, synthetic: bool) -> None:
    """Prior (regularization) videos for methods that take them (Customizing Motion: ``set_priors``); the smoke
    test uses a square moving down as the prior of the square moving right."""
    from ..training import VideoSource

    paths = [Path(v) for v in (getattr(args, "prior_video", None) or [])]
    folder = getattr(args, "prior_folder", None)
    if folder:
        if not Path(folder).is_dir():
            raise InputError(f"--prior-folder {folder} is not a folder.")
        found = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        if not found:
            raise InputError(f"--prior-folder {folder} holds no video files ({', '.join(VIDEO_SUFFIXES)}).")
        paths += found
    prompts = getattr(args, "prior_prompt", None)
    prompts = list(prompts) if isinstance(prompts, list) else ([prompts] if prompts else [])
    if not hasattr(method, "set_priors"):
        if paths or prompts:
            raise InputError(f"--prior-video / --prior-folder / --prior-prompt: {method.name} takes no prior videos "
                             "(Customizing Motion does).")
        return
    sources = []
    for path in paths:
        if not path.is_file():
            raise InputError(f"Prior video {path} does not exist. Check the path (a relative path starts in "
                             f"{Path.cwd()}).")
        caption_file = path.with_suffix(".txt")
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else None
        sources.append(VideoSource(path=str(path), caption=caption or None))
    if not sources and synthetic:
        from ..video import moving_square_frames

        side = args.width or SMOKE_TRAIN["width"]
        height = args.height or side
        frames = moving_square_frames(2 * (args.frames or 8), side, height, square=max(4, side // 4),
                                      velocity=(0, 1), start=(side // 3, 2))
        sources, prompts = [VideoSource(frames=frames, fps=8.0)], prompts or ["a red square sliding down"]
    if sources:
        method.set_priors(sources, prompts if len(prompts) > 1 else (prompts[0] if prompts else None))


def _accelerator(args: argparse.Namespace):
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    if not (launched or args.accelerate):
        return None
    from accelerate import Accelerator

    return Accelerator(cpu=str(args.device).startswith("cpu"))


@command("train", "train a motion adapter from reference video(s) (MotionDirector, ...)", _train_arguments)
def run_train(args: argparse.Namespace) -> int:
    from ..methods import create_method, get_method
    from ..training import TrainingConfig, VideoSource, train

    # what the user typed is checked before the model loads: a bad name, resume point, prompt or video is
    # refused now, not after the last training step
    videos = _videos(args)
    prompts = _prompts(args)
    if not videos and args.model:
        raise InputError("Give training video(s) with --video or --video-folder.")
    save_name = _save_name(args, get_method(args.method).name, videos[0][0].stem if videos else "moving_square")
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(save_name)
    resume = _resume_point(args.resume, run_dir, save_name)
    given = {k: getattr(args, k) for k in SMOKE_TRAIN}
    accelerator = _accelerator(args)
    if accelerator is not None:
        args.device = str(accelerator.device)
    model, smoke = load_model_from_args(args)
    options = _method_options(args)
    if smoke:
        for key, value in SMOKE_TRAIN.items():
            if given[key] is None and key not in ("preview_steps", "noise_prior_steps"):
                setattr(args, key, value)
        if args.preview_steps == 30:
            args.preview_steps = SMOKE_TRAIN["preview_steps"]
        fit_smoke_frames(model, args)  # e.g. 8 -> 9 for the tiny Wan (4k+1 frames)
        if _accepts(args.method, "noise_prior_steps"):
            options.setdefault("noise_prior_steps", SMOKE_TRAIN["noise_prior_steps"])
    if not videos:
        if not smoke:
            raise InputError("Give training video(s) with --video or --video-folder.")
        from ..video import moving_square_frames

        side = args.width or SMOKE_TRAIN["width"]
        frames = moving_square_frames(2 * (args.frames or 8), side, args.height or side, square=max(4, side // 4),
                                      velocity=(1, 0), start=(2, (args.height or side) // 3))
        sources = [VideoSource(frames=frames, fps=8.0, caption=None)]
        prompts = prompts or [DEFAULT_PROMPT]
    else:
        sources = [VideoSource(path=str(p), caption=c) for p, c in videos]
        if not prompts and not all(c for _, c in videos):
            raise InputError("Give a --prompt describing the video(s) (or a '<video>.txt' caption beside each).")
        prompts = prompts or [""]  # every video has its caption
    method = create_method(args.method, **options)
    _set_priors(args, method, smoke and not videos)
    config = TrainingConfig(
        steps=args.steps, seed=args.seed, frames=args.frames, fps=args.fps, width=args.width, height=args.height,
        windows=args.windows, checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
        validate_every=args.validate_every, mixed_precision=args.mixed_precision,
        gradient_checkpointing="off" if args.no_gradient_checkpointing else args.gradient_checkpointing,
        compile=args.compile, run_dir=str(run_dir), save_name=save_name,
        adapters_dir=args.adapters_dir, score_previews=bool(args.score_checkpoints or args.select_best),
        select_best=bool(args.select_best), score_clip=args.score_clip or None)
    if args.checkpoint_every == 0:  # as documented: one checkpoint at the end (the trainer reads 0 as "none")
        config.checkpoint_every = config.resolved(method, len(sources)).steps
    config.preview.prompts = list(args.preview_prompt or [])
    config.preview.steps = args.preview_steps
    config.preview.cfg = args.preview_cfg
    config.preview.seed = args.seed
    if args.preview_noise_prior is not None:
        config.preview.noise_prior = args.preview_noise_prior
    elif hasattr(method, "default_noise_prior"):
        config.preview.noise_prior = method.default_noise_prior(len(sources))
    progress = print_progress("training") if accelerator is None or accelerator.is_main_process else None
    from ..interrupts import StopSignals, stopped_training_report

    with StopSignals() as stop:  # Ctrl-C / SIGTERM: stop after the current step and keep the work (as Cancel)
        result = train(model, method, sources, prompts if len(prompts) > 1 else prompts[0], config, resume=resume,
                       progress=progress, cancel=stop, accelerator=accelerator)
    if accelerator is not None and not accelerator.is_main_process:
        return 0
    curve = Path(result.run_dir) / "loss_curve.png"
    _save_png(result.loss_curve(), curve)
    first, last = result.history[0]["loss"] if result.history else float("nan"), (
        result.history[-1]["loss"] if result.history else float("nan"))
    print(f"trained {result.steps}/{result.total_steps} steps in {result.seconds:.1f}s "
          f"(loss {first:.4f} -> {last:.4f}, {result.skipped_steps} skipped)")
    if result.adapter_path:
        print(f"wrote {result.adapter_path}")
    if result.checkpoint:
        print(f"checkpoint {result.checkpoint}")
    print(f"loss curve {curve}")
    if result.best_step is not None:
        print(f"best checkpoint: step {result.best_step}" + (f", wrote {result.best_adapter_path}"
                                                            if result.best_adapter_path else ""))
    if result.run_dir and (Path(result.run_dir) / "previews").is_dir():
        print(f"previews in {Path(result.run_dir) / 'previews'}")
    if smoke:
        print("(smoke test on the built-in tiny model -- see the note above to use real weights)")
    if result.cancelled:
        print(stopped_training_report(result, stop, getattr(args, "_argv", None)))
        return stop.exit_code
    return 0


def _save_png(image, path: Path) -> None:
    import numpy as np
    from PIL import Image

    from ..storage import write_atomically

    picture = Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8))
    write_atomically(path, lambda tmp: picture.save(tmp, format="PNG"), what="the picture")


# ============================================================================================== export
def _export_arguments(p: argparse.ArgumentParser) -> None:
    from ..adapters.files import EXPORT_FORMATS

    p.add_argument("--adapter", required=True, help="motion adapter file (or name in the motion adapters folder), "
                   "or a MotionDirector reference .pt")
    p.add_argument("--format", required=True, choices=list(EXPORT_FORMATS) + ["motionkit"],
                   help="diffusers (unet.<layer>.lora_A/B; transformer.<layer>... for Wan), peft "
                   "(get_peft_model_state_dict layout + LoraConfig), animatediff_evolved (AnimateDiff-Evolved "
                   "motion LoRA, animatediff adapters), comfyui_wan (ComfyUI's native Wan LoRA keys "
                   "diffusion_model.<Wan module>.lora_A/lora_B + alpha, Wan adapters: put the file in "
                   "ComfyUI/models/loras), motionkit (convert a reference .pt to MotionKit's format)")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--set", dest="set_name", help="LoRA set to export (default: the motion/temporal set)")
    p.add_argument("--model", help="model folder, needed only for reference .pt files (their layer names come from "
                   "the model)")
    p.add_argument("--family", default="auto", choices=["auto", "unet3d", "animatediff", "wan"],
                   help="model family")
    p.add_argument("--base-model", help="base model name to record when converting a reference .pt")


@command("export-adapter", "convert a motion adapter to diffusers / peft / AnimateDiff-Evolved / MotionKit files",
         _export_arguments)
def run_export(args: argparse.Namespace) -> int:
    from ..adapters.files import export_adapter_files, load_adapter, save_adapter
    from ..names import check_output_path

    # the longest name written: the temporary of a Wan 2.2 A14B pair's '<stem>_high_noise.safetensors'
    added = len("_high_noise" + "." + "." + "0" * 32 + ".tmp") + (0 if Path(args.out).suffix else len(".safetensors"))
    check_output_path(args.out, "--out", added)
    adapter = load_adapter(args.adapter)
    model = None
    if args.model:
        from ..backbones import load_video_model

        model = load_video_model(args.model, family=args.family, device="cpu")
    out = Path(args.out)
    if args.format == "motionkit":
        if any(s.ordered for s in getattr(adapter, "sets", ())):
            if model is None:
                raise InputError("Converting a reference .pt needs --model (its layer names come from the model).")
            adapter = dataclasses.replace(adapter.resolved(model), base_model=args.base_model or model.base_model)
        path = save_adapter(adapter, out)
    else:
        paths = export_adapter_files(adapter, out, args.format, set_name=args.set_name, model=model)
        if len(paths) > 1:  # a two-expert model (Wan 2.2 A14B): one file per expert
            for p in paths:
                print(f"wrote {p}")
            return 0
        path = paths[0]
    print(f"wrote {path}")
    return 0


