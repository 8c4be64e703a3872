"""``python -m motion_core evaluate``: score generated videos against their reference.

    python -m motion_core evaluate --reference ref.mp4 --video out.mp4 --prompt "a tiger running" \\
        --clip /models/clip/clip-vit-base-patch32 --out report
    python -m motion_core evaluate --reference ref.mp4 --video md.mp4 --label MotionDirector \\
        --video mc.mp4 --label MotionClone --out compare

writes ``report.json`` (every score, the tracks used, how the videos were aligned) and ``report.png`` (the tracks
side by side with the scores); with several ``--video``, ``report.json`` lists them best first and
``report.png`` is the ranking table (each video's own picture as ``report_<n>.png``). Without ``--reference``
and ``--video`` it scores a synthetic moving square against a slower one (a smoke test).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import at_least, command
from ..errors import InputError


def _arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluate")
    g.add_argument("--reference", help="the reference video (its motion is what the generations should have)")
    g.add_argument("--video", action="append", help="a generated video to score; repeat it to compare several")
    g.add_argument("--label", action="append", help="a name for each --video, in order (default: the file name)")
    g.add_argument("--prompt", help="the prompt the videos were generated from (text alignment, with --clip)")
    g.add_argument("--clip", help="a transformers CLIP model folder or hub id: adds text alignment (CLIP-T), "
                   "temporal consistency and appearance leakage")
    g.add_argument("--tracker", choices=["lucas_kanade", "cotracker"], default="lucas_kanade",
                   help="point tracker (default lucas_kanade: OpenCV, no weights)")
    g.add_argument("--cotracker-checkpoint", help="CoTracker .pth file for --tracker cotracker (never downloaded)")
    at_least(g.add_argument("--grid-size", type=int, default=55, help="cotracker grid points per side (default 55)"),
             2)
    at_least(g.add_argument("--max-points", type=int, default=600, help="lucas_kanade: most points tracked "
                            "(default 600)"), 1)
    g.add_argument("--length", choices=["resample", "trim", "refuse"], default="resample",
                   help="videos of different lengths: resample the longer to evenly spaced frames (default), trim "
                   "both to the shorter, or refuse")
    at_least(g.add_argument("--frames", type=int, help="read at most this many frames of each video (default: all)"),
             1)
    g.add_argument("--device", default="auto", help="device of the CLIP model / CoTracker (default auto)")
    g.add_argument("--out", default="report", help="report path without extension: <out>.json and <out>.png "
                   "(default: report)")


def _device(choice: str):
    import torch

    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def _read(path: str, frames: int | None, what: str):
    from ..video import load_video

    p = Path(path)
    if not p.is_file():
        raise InputError(f"The {what} {p} does not exist{' (it is a folder)' if p.is_dir() else ''}. Check the path "
                         f"(a relative path starts in {Path.cwd()}).")
    return load_video(p, num_frames=frames).frames


@command("evaluate", "score generated videos against their reference (motion fidelity, CLIP scores)", _arguments)
def run_evaluate(args: argparse.Namespace) -> int:
    from ..metrics import ReferenceMemo, evaluate_motion, load_clip_scorer
    from ..metrics.files import write_json, write_png
    from ..metrics.render import ranking, render_comparison, render_evaluation
    from ..names import check_output_path

    out = Path(args.out)
    if out.suffix.lower() in (".json", ".png"):
        out = out.with_suffix("")
    videos = list(args.video or [])
    smoke = not args.reference and not videos
    if not smoke and (not args.reference or not videos):
        raise InputError("Give both --reference (the reference video) and at least one --video (a generated video).")
    for path in [out.with_suffix(".json"), out.with_suffix(".png")] + [
            out.with_name(f"{out.name}_{i}.png") for i in range(1, len(videos) + 1) if len(videos) > 1]:
        check_output_path(path, "--out", len(".") + 8 + len(".tmp") + 1)
    labels = list(args.label or [])
    if len(labels) > len(videos) and not smoke:
        raise InputError(f"{len(labels)} --label for {len(videos)} --video: give one label per video, in order.")
    if smoke:
        from ..metrics.synthetic import moving_square

        print("SMOKE TEST: no --reference / --video given, so a synthetic square moving right is scored against "
              "one moving at half its speed.", file=sys.stderr)
        reference = moving_square(16, 64, (2.0, 0.0))
        generated = [moving_square(16, 64, (1.0, 0.0))]
        labels = ["half speed"]
    else:
        reference = _read(args.reference, args.frames, "reference video")
        generated = [_read(v, args.frames, "generated video") for v in videos]
    labels = [labels[i] if i < len(labels) and labels[i] else (Path(videos[i]).stem if not smoke else f"video {i + 1}")
              for i in range(len(generated))]
    device = _device(args.device)
    clip = load_clip_scorer(args.clip, device=device) if args.clip else None
    rows = []
    memo = ReferenceMemo()  # the reference is tracked once for all the videos
    for label, video in zip(labels, generated):
        ev = evaluate_motion(reference, video, prompt=args.prompt, clip=clip, tracker=args.tracker, length=args.length,
                             max_points=args.max_points, cotracker_checkpoint=args.cotracker_checkpoint,
                             grid_size=args.grid_size, device=device, memo=memo)
        rows.append((label, ev))
    if len(rows) == 1:
        label, ev = rows[0]
        report = {"label": label, **ev.to_json()}
        write_json(out.with_suffix(".json"), report)
        write_png(out.with_suffix(".png"), render_evaluation(ev, title=label))
    else:
        order = ranking(rows)
        report = [{"rank": place, "label": rows[i][0], **rows[i][1].to_json()} for place, i in enumerate(order, 1)]
        write_json(out.with_suffix(".json"), report)
        write_png(out.with_suffix(".png"), render_comparison(reference, rows), what="the comparison table")
        for n, (label, ev) in enumerate(rows, start=1):
            write_png(out.with_name(f"{out.name}_{n}.png"), render_evaluation(ev, title=label))
    for label, ev in (rows if len(rows) == 1 else [rows[i] for i in ranking(rows)]):
        scores = ", ".join(f"{k} {v:.4f}" for k, v in ev.scores().items() if v is not None)
        print(f"{label}: {scores}")
        for note in ev.notes:
            print(f"  note: {note}")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0
