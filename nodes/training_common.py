"""What every training node shares: run folders, resume choices, the live progress bar, the outputs.

Not a ``nodes_*`` module, so it registers no nodes; the Train nodes (MotionDirector, Motion Embeddings,
Customizing Motion, MotionMatcher) call :func:`run_training` around their method's ``train`` function so
that progress, the live loss-curve preview, cancel and the (adapter, loss curve, preview) outputs behave
the same everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from motion_core.errors import InputError
from motion_core.video import to_comfy_image

from . import host

NONE = "none"
LATEST = "latest"
TRAINING_FOLDER = "motionkit_training"
PRECISIONS = ["auto", "no", "fp16", "bf16"]
#: steps between two loss-curve pictures on the progress bar (rendering one costs a few ms)
PROGRESS_PREVIEW_EVERY = 10


def training_root() -> Path:
    """``<ComfyUI output>/motionkit_training``: one run folder (checkpoints, previews) per save name."""
    return host.output_dir() / TRAINING_FOLDER


def checkpoint_choices() -> list[str]:
    """``<save name>/checkpoint-N`` folders of earlier runs in the output folder."""
    root = training_root()
    found = []
    if root.is_dir():
        for run in sorted(p for p in root.iterdir() if p.is_dir()):
            for ckpt in sorted(run.glob("checkpoint-*")):
                if (ckpt / "trainer_state.json").is_file():
                    found.append(f"{run.name}/{ckpt.name}")
    return found


def resume_choices() -> list[str]:
    return [NONE, LATEST] + checkpoint_choices()


def resolve_resume(name: str, resume_from: str | None) -> Path | None:
    """The checkpoint folder a ``resume_from`` choice names (``latest`` = the newest of this save name)."""
    run_dir = training_root() / name
    if resume_from == LATEST:
        if run_dir.is_dir() and any(run_dir.glob("checkpoint-*")):
            return run_dir
        raise InputError(f"resume_from 'latest': there is no checkpoint of '{name}' in {run_dir} yet.")
    if resume_from in (None, "", NONE):
        return None
    resume = training_root() / Path(str(resume_from))
    if ".." in Path(str(resume_from)).parts or not resume.is_dir():
        raise InputError(f"Checkpoint '{resume_from}' was not found in {training_root()}.")
    return resume


def loss_curve_preview(history: list[dict]) -> tuple[str, Any, int]:
    """The loss curve so far as a progress-bar preview (ComfyUI's ``(format, PIL image, max size)``)."""
    import numpy as np
    from PIL import Image

    from motion_core.training import render_loss_curve

    image = render_loss_curve(history, width=512, height=256)
    return ("JPEG", Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)), 512)


def run_training(label: str, steps: int, width: int, height: int,
                 train: Callable[[Callable[[int, int, dict], None], Callable[[], bool]], Any]
                 ) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Run ``train(progress, cancel)`` with the host's progress bar (loss in the label, the live loss curve as
    its preview) and cancel check; returns the node outputs (adapter, loss-curve IMAGE, preview IMAGE).

    A cancel after the first step returns the adapter trained so far (the trainer saved a checkpoint); one
    before it has nothing to keep and becomes the host's interrupt.
    """
    host.free_host_memory()
    bar = host.Progress(int(steps), label=label)
    history: list[dict] = []

    def progress(step: int, total: int, info: dict) -> None:
        bar.label = f"{label} (loss {info.get('loss', float('nan')):.4g})"
        history.append({"step": step, "loss": info.get("loss", float("nan")), **info.get("losses", {})})
        preview = loss_curve_preview(history) if step == total or step % PROGRESS_PREVIEW_EVERY == 0 else None
        bar.update_absolute(step, total, preview)

    with host.cancellation():
        result = train(progress, host.cancel_requested)
    if result.preview is not None:
        preview = to_comfy_image(result.preview[0])
    else:  # previews were off: a black frame keeps the output's type
        preview = torch.zeros(1, int(height), int(width), 3)
    return (result.adapter, result.loss_curve(), preview)


def resume_input() -> tuple:
    """The ``resume_from`` widget every Train node declares."""
    return (resume_choices(), {
        "default": NONE,
        "tooltip": "Continue an interrupted run instead of starting over: 'latest' = the newest checkpoint of "
                   "this save_name, or pick a checkpoint folder from output/motionkit_training/. The settings "
                   "must match the interrupted run (it is refused otherwise)."})


def checkpoint_every_input(default: int) -> tuple:
    """The ``checkpoint_every`` widget every Train node declares (``default`` = the method's reference)."""
    return ("INT", {
        "default": int(default), "min": 0, "max": 100000,
        "tooltip": "Save a resumable checkpoint every N steps into output/motionkit_training/<save_name> "
                   "(0 = only at the end or on Cancel)."})


def save_name_problem(save_name: str | None) -> str | bool:
    """``VALIDATE_INPUTS`` answer for a save name: True, or the message of why it cannot be a file name."""
    if save_name is not None:
        try:
            host.safe_filename(save_name)
        except InputError as exc:
            return str(exc)
    return True
