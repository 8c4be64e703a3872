"""``python -m motion_core clone``: MotionClone from the command line.

    python -m motion_core clone --model /models/animatediff --video ref.mp4 --prompt "a tiger walking" \\
        --preset camera --out clip.mp4 --save-representation ref_motion.safetensors
    python -m motion_core clone --model /models/animatediff --representation ref_motion.safetensors \\
        --prompt "a robot walking" --out robot.mp4

Without ``--model`` (and ``--video``) it runs offline on a tiny random 4-level AnimateDiff and the
synthetic moving-square clip, with a short schedule, and says it was a smoke test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ..cli import (
    SMOKE_BANNER,
    add_model_arguments,
    add_sampling_arguments,
    at_least,
    check_out,
    command,
    print_progress,
    prompt_list,
    write_videos,
)
from ..errors import InputError, VideoError

PRESET_CHOICES = ("camera", "object", "i2v_rgb", "i2v_sketch", "custom")
# offline smoke test on the tiny model: small and short, every stage still runs (guided + plain steps)
SMOKE = {"width": 32, "height": 32, "frames": 8, "steps": 6, "guided_steps": 3, "guidance_fraction": 0.5}


def _arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_sampling_arguments(p)
    from ..methods.motion_clone import REFERENCE_NEGATIVE_PROMPT

    p.set_defaults(cfg=8.5, negative_prompt=REFERENCE_NEGATIVE_PROMPT)  # the reference configs' values
    for action in p._actions:
        if action.dest == "cfg":
            action.help = ("classifier-free guidance scale, diffusers convention (default 8.5 = the reference's "
                           "7.5, which it writes as e_c + s(e_c - e_u))")
        elif action.dest == "negative_prompt":
            action.help = "negative prompt (default: the reference configs' list of artefacts)"
        elif action.dest == "steps":
            action.help = ("sampling steps (default: the preset's own, e.g. 100 for camera; 100 for custom); a "
                           "preset's guided steps and ramps scale with them")
    g = p.add_argument_group("MotionClone")
    g.add_argument("--video", help="reference video whose motion is cloned (default for the smoke test: a "
                   "synthetic moving square)")
    g.add_argument("--representation", help="use a saved motion representation (.safetensors) instead of "
                   "extracting one from --video")
    g.add_argument("--save-representation", help="also save the extracted representation to this "
                   ".safetensors file (reuse it with --representation)")
    g.add_argument("--preset", choices=PRESET_CHOICES, default=None,
                   help="schedule preset: camera (100 steps, 50 guided, fraction 0.3), object (300, 180, 0.4), "
                   "i2v_rgb (100, 40, 0.3), i2v_sketch (200, 120, 0.4), custom (= --steps with the options "
                   "below); default camera")
    at_least(g.add_argument("--weight", type=float, default=2000.0, help="guidance strength λ (default 2000; 0 = "
                            "off)"), 0)
    at_least(g.add_argument("--guided-steps", type=int, default=50, help="custom: guided steps (default 50)"), 0)
    at_least(g.add_argument("--guidance-fraction", type=float, default=0.3,
                            help="custom: top share of the noise range that is guided (default 0.3)"), 0)
    at_least(g.add_argument("--warm-up", type=int, default=10, help="custom: warm-up steps (default 10)"), 0)
    at_least(g.add_argument("--cool-down", type=int, default=10, help="custom: cool-down steps (default 10)"), 0)
    at_least(g.add_argument("--timestep", type=int, default=None, help="extraction timestep t_alpha (default 400; "
                            "Wan: 600, i.e. noise level sigma = 0.6)"), 0)
    at_least(g.add_argument("--k", type=int, default=1, help="key frames kept per attention row (default 1)"), 1)
    g.add_argument("--sparsectrl", help="SparseCtrl for image/sketch-to-video (AnimateDiff): a file "
                   "(models/controlnet/v3_sd15_sparsectrl_rgb.ckpt or _scribble) or a diffusers folder / hub id")
    g.add_argument("--condition-image", action="append", help="condition image file for SparseCtrl; repeat "
                   "for several frames")
    g.add_argument("--condition-frames", default="0", help="frames the condition images go to, comma-"
                   "separated (default 0; -1 = last)")
    g.add_argument("--condition-strength", type=float, default=1.0, help="SparseCtrl conditioning scale")


def _config(args: argparse.Namespace, smoke: bool, family: str = ""):
    from dataclasses import replace

    from ..methods.motion_clone import MotionCloneConfig, presets_for

    PRESETS = presets_for(family)  # noqa: N806 - the family's named presets

    preset = args.preset or ("custom" if smoke else "camera")
    if preset == "custom":
        guided = SMOKE["guided_steps"] if smoke and args.preset is None else args.guided_steps
        fraction = SMOKE["guidance_fraction"] if smoke and args.preset is None else args.guidance_fraction
        ramp = 1 if smoke and args.preset is None else None
        return preset, MotionCloneConfig(steps=None, guided_steps=guided, guidance_fraction=fraction,
                                         warm_up=ramp if ramp is not None else args.warm_up,
                                         cool_down=ramp if ramp is not None else args.cool_down,
                                         weight=args.weight)
    if preset not in PRESETS:
        raise InputError(f"Preset {preset!r} is not available for {family or 'this'} models; choose one of "
                         f"{', '.join(PRESETS)} or custom.")
    return preset, replace(PRESETS[preset], weight=args.weight)


def _load_images(paths: list[str]):
    import numpy as np
    import torch
    from PIL import Image

    frames = []
    for path in paths:
        if not Path(path).is_file():
            raise InputError(f"Condition image {path} does not exist.")
        with Image.open(path) as im:
            frames.append(torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0))
    sizes = {tuple(f.shape) for f in frames}
    if len(sizes) > 1:
        raise InputError("All condition images must have the same size.")
    return torch.stack(frames)


@command("clone", "MotionClone: clone the motion of a reference video into a new video (training-free)", _arguments)
def run_clone(args: argparse.Namespace) -> int:
    from ..adapters.representation import MotionRepresentation
    from ..backbones import load_video_model
    from ..cli import load_model_from_args
    from ..methods.motion_clone import (
        SparseCtrlCondition,
        apply_motion_clone,
        extract_motion_representation,
        load_sparsectrl,
    )
    from ..sampling import SampleRequest, sample
    from ..tiny import ensure_tiny_model

    # files and names are checked before the model loads
    if args.video and args.representation:
        raise InputError("Give either --video (extract) or --representation (reuse), not both.")
    if args.video and not Path(args.video).is_file():
        folder = " (it is a folder)" if Path(args.video).is_dir() else ""
        raise VideoError(f"Reference video {args.video} does not exist{folder}. Check the path (a relative path starts "
                         f"in {Path.cwd()}).")
    if args.representation and not Path(args.representation).is_file():
        raise InputError(f"Motion representation {args.representation} does not exist. Check the path, or extract "
                         "one from a video with --video (and --save-representation to keep it).")
    for image in args.condition_image or []:
        if not Path(image).is_file():
            raise InputError(f"Condition image {image} does not exist. Check the path.")
    if args.save_representation:
        from ..names import check_output_path

        check_output_path(args.save_representation, "--save-representation", len(".safetensors..00000000.tmp"))
    check_out(args.out, len(prompt_list(args.prompt)))
    given = {key: getattr(args, key) for key in ("width", "height", "frames")}
    smoke = not args.model
    if smoke:
        family = "animatediff" if args.family == "auto" else args.family
        options = {"four_level": True} if family == "animatediff" else {}
        print(SMOKE_BANNER.format(family=family), file=sys.stderr)
        for key in ("width", "height", "frames", "steps"):
            if getattr(args, key) is None:
                # Wan: 4k+1 frames
                setattr(args, key, 9 if (key == "frames" and family == "wan") else SMOKE[key])
        model = load_video_model(ensure_tiny_model(family, **options), family=family, dtype=args.dtype,
                                 device=args.device)
    else:
        model, _ = load_model_from_args(args)

    preset, config = _config(args, smoke, model.family)
    condition = None
    if args.sparsectrl:
        if not args.condition_image:
            raise InputError("--sparsectrl needs at least one --condition-image.")
        frames_idx = tuple(int(x) for x in str(args.condition_frames).split(",") if x.strip())
        condition = SparseCtrlCondition(controlnet=load_sparsectrl(args.sparsectrl, model),
                                        images=_load_images(args.condition_image), frame_indices=frames_idx,
                                        strength=args.condition_strength)

    with tempfile.TemporaryDirectory(prefix="motionkit-clone-") as tmp:
        if args.representation:
            if args.video:
                raise InputError("Give either --video (extract) or --representation (reuse), not both.")
            representation = MotionRepresentation.load(args.representation)
            # its own size unless asked otherwise (then the mismatch is reported)
            width = given["width"] or representation.width
            height = given["height"] or representation.height
            frames = given["frames"] or representation.num_frames
            print(f"loaded {representation}", file=sys.stderr)
        else:
            video = args.video
            if video is None:
                if not smoke:
                    raise InputError("Give a reference video with --video (or a saved --representation).")
                from ..video import write_moving_square_video

                video = str(write_moving_square_video(Path(tmp) / "moving_square.mp4", num_frames=24, fps=8))
                print("reference: a synthetic square moving right (smoke test)", file=sys.stderr)
            w, h = model.default_size
            width, height = args.width or w, args.height or h
            frames = args.frames or model.frame_limits.default
            representation = extract_motion_representation(
                model, video, num_frames=frames, width=width, height=height, seed=args.seed,
                timestep=args.timestep, k=args.k, sparsectrl=condition)
            print(f"extracted {representation} ({representation.nbytes} bytes)", file=sys.stderr)
            if args.save_representation:
                path = representation.save(args.save_representation)
                print(f"wrote {path}")

        guided = apply_motion_clone(model, representation, config, sparsectrl=condition)
        request = SampleRequest(prompt=prompt_list(args.prompt), negative_prompt=args.negative_prompt,
                                width=width, height=height, num_frames=frames,
                                steps=args.steps if args.steps is not None else config.total_steps(100), cfg=args.cfg,
                                seed=args.seed, scheduler=args.scheduler)
        result = sample(guided, request, progress=print_progress(f"MotionClone ({preset})"))
    paths = write_videos(result.frames, args.out, args.fps)
    for path in paths:
        print(f"wrote {path} ({result.info['num_frames']} frames, {result.info['width']}x{result.info['height']}, "
              f"{result.info['guided_steps']}/{result.info['steps']} guided steps, {result.info['seconds']:.1f}s)")
    if smoke:
        print("(smoke test on the built-in tiny model -- see the note above to use real weights)")
    return 0
