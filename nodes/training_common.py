"""What every training node shares: its common inputs, run folders, resume choices, the live progress bar,
the outputs.

Not a ``nodes_*`` module, so it registers no nodes. The Train nodes (MotionDirector, Motion Embeddings,
Customizing Motion, MotionMatcher; the Wan models train through the same nodes) declare their common
inputs with the ``*_input`` functions below -- one declaration each, the method's reference default passed
in, so every node keeps its own defaults and widget order -- and call :func:`run_training` around their
method's ``train`` function so that progress, the live loss-curve preview, cancel and the (adapter, loss
curve, preview) outputs behave the same everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from motion_core.errors import InputError
from motion_core.names import MAX_NAME_BYTES
from motion_core.video import to_comfy_image

from . import host

MAX_SEED = 0xFFFF_FFFF_FFFF_FFFF
MAX_SIZE = 8192
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
                if (ckpt / "trainer_state.json").is_file() and _inside(ckpt, root):
                    found.append(f"{run.name}/{ckpt.name}")
    return found


def resume_choices() -> list[str]:
    return [NONE, LATEST] + checkpoint_choices()


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` -- symlinks resolved -- is ``root`` or lies inside it (also resolved)."""
    try:
        path.resolve().relative_to(root.resolve())
    except (OSError, RuntimeError, ValueError):  # outside, or a symlink loop
        return False
    return True


def resolve_resume(name: str, resume_from: str | None) -> Path | None:
    """The checkpoint folder a ``resume_from`` choice names (``latest`` = the newest of this save name).

    Only checkpoints inside the training folder are accepted: a choice is a ``<save name>/checkpoint-N`` name
    relative to it, never an absolute path, a ``..`` or a symlink that leads elsewhere (it is typed into a
    workflow that may come from someone else)."""
    root = training_root()
    if resume_from == LATEST:
        run_dir = root / name
        if run_dir.is_dir() and not _inside(run_dir, root):
            raise InputError(f"resume_from 'latest': the run folder {run_dir} leads outside the training folder {root} "
                             "(a symbolic link); only checkpoints inside it are resumed. Pick 'none' to start a new "
                             "run.")
        if run_dir.is_dir() and any((c / "trainer_state.json").is_file() for c in run_dir.glob("checkpoint-*")):
            return run_dir
        raise InputError(f"resume_from 'latest': there is no checkpoint of '{name}' in {run_dir} yet (no earlier "
                         "run of this save_name was interrupted or checkpointed). Pick 'none' to start a new run, or "
                         "the save_name of the run to continue.")
    if resume_from in (None, "", NONE):
        return None
    text = str(resume_from).strip().replace("\\", "/")
    rel = Path(text)
    if rel.is_absolute() or rel.drive or text.startswith("/") or text[1:2] == ":" or ".." in rel.parts:
        raise InputError(f"Checkpoint '{resume_from}' is not inside the training folder {root}: resume_from takes "
                         "only checkpoints listed there (<save name>/checkpoint-N), not a path elsewhere. Move the "
                         "run folder into it, or pick 'none' to start a new run.")
    resume = root / rel
    if not resume.is_dir():
        raise InputError(f"Checkpoint '{resume_from}' was not found in {root}. Pick one that is listed, 'latest', "
                         "or 'none' to start a new run.")
    if not _inside(resume, root):
        raise InputError(f"Checkpoint '{resume_from}' leads outside the training folder {root} (a symbolic link): "
                         "resume_from takes only checkpoints inside it. Pick 'none' to start a new run.")
    if not (resume / "trainer_state.json").is_file() and not any(
            (c / "trainer_state.json").is_file() for c in resume.glob("checkpoint-*")):
        raise InputError(f"'{resume_from}' in {root} is not a MotionKit training checkpoint (it has no "
                         "trainer_state.json). Pick a <save name>/checkpoint-N folder, or 'none' to start a new run.")
    return resume


def training_config(save_name: str, *, steps: int, seed: int, frames: int, fps: float | None, width: int,
                    height: int, checkpoint_every: int, preview_every: int, preview_prompt: str, preview_steps: int,
                    mixed_precision: str, gradient_checkpointing: bool | str, preview_cfg: float = 12.0,
                    preview_noise_prior: float = 0.0, **options: Any):
    """The ``TrainingConfig`` of a Train node's run: checkpoints in output/motionkit_training/<save_name>, the
    adapter in models/motion_adapters, previews with the run's seed (``options``: other TrainingConfig fields,
    e.g. ``windows``)."""
    from motion_core.training import PreviewConfig, TrainingConfig

    prompt = str(preview_prompt).strip()
    # checkpoint_every 0 means what its tooltip says: one checkpoint at the end (the trainer reads 0 as "none")
    every = int(checkpoint_every) or int(steps)
    return TrainingConfig(
        steps=int(steps), seed=int(seed), frames=int(frames), fps=fps, width=int(width), height=int(height),
        checkpoint_every=every, validate_every=int(preview_every),
        mixed_precision=str(mixed_precision), gradient_checkpointing=gradient_checkpointing if isinstance(
            gradient_checkpointing, str) else bool(gradient_checkpointing),
        run_dir=str(training_root() / save_name), save_name=save_name, adapters_dir=str(host.motion_adapters_dir()),
        preview=PreviewConfig(prompts=[prompt] if prompt else [], steps=int(preview_steps), cfg=float(preview_cfg),
                              seed=int(seed), noise_prior=float(preview_noise_prior)), **options)


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


# ------------------------------------------------------------------------------------------ inputs
def _with(tooltip: str, note: str = "") -> str:
    return f"{tooltip} {note}".strip() if note else tooltip


def model_input(models: str, note: str = "") -> tuple:
    """The ``model`` socket: ``models`` says which families the method trains on."""
    return ("MOTION_MODEL", {
        "tooltip": _with(f"The base video model from Load Video Model ({models}). Adapters already applied to it "
                         "are ignored for training.", note)})


def video_input(what: str, note: str = "") -> tuple:
    """The ``video`` IMAGE socket of a reference / training video (``core_video`` is its VIDEO alternative)."""
    return ("IMAGE", {
        "tooltip": _with(f"{what} as an IMAGE batch (e.g. from Load Reference Video); or connect a VIDEO to "
                         "core_video instead.", note)})


def prompt_input(default: str, tooltip: str) -> tuple:
    """The training ``prompt`` (or caption): multi-line text with the method's reference example."""
    return ("STRING", {"default": default, "multiline": True, "tooltip": tooltip})


def steps_input(default: int, reference: str, note: str = "") -> tuple:
    return ("INT", {"default": int(default), "min": 1, "max": 100000,
                    "tooltip": _with(f"Training steps (reference: {reference}).", note)})


def learning_rate_input(default: float, reference: str, *, minimum: float = 1e-7, maximum: float = 1.0,
                        step: float = 1e-5) -> tuple:
    return ("FLOAT", {"default": default, "min": minimum, "max": maximum, "step": step, "round": False,
                      "tooltip": f"AdamW learning rate {reference}."})


def rank_input(default: int = 32) -> tuple:
    return ("INT", {"default": int(default), "min": 1, "max": 512,
                    "tooltip": f"LoRA rank (reference: {default}). Higher learns more detail and makes larger "
                               "files; it cannot exceed the smallest layer size (the error says the limit)."})


def frames_input(default: int, note: str) -> tuple:
    return ("INT", {"default": int(default), "min": 1, "max": 128,
                    "tooltip": _with("Frames per training clip", note)})


def width_input(default: int, note: str = "") -> tuple:
    return ("INT", {"default": int(default), "min": 8, "max": MAX_SIZE, "step": 8,
                    "tooltip": _with(f"Training width in pixels (reference: {default}). Frames are scaled to "
                                     "cover and center-cropped.", note)})


def height_input(default: int) -> tuple:
    return ("INT", {"default": int(default), "min": 8, "max": MAX_SIZE, "step": 8,
                    "tooltip": f"Training height in pixels (reference: {default})."})


def checkpoint_every_input(default: int) -> tuple:
    """The ``checkpoint_every`` widget every Train node declares (``default`` = the method's reference)."""
    return ("INT", {
        "default": int(default), "min": 0, "max": 100000,
        "tooltip": "Save a resumable checkpoint every N steps into output/motionkit_training/<save_name> "
                   "(0 = only at the end or on Cancel)."})


def save_name_input(default: str) -> tuple:
    return ("STRING", {
        "default": default,
        "tooltip": "File name of the adapter in models/motion_adapters (a plain name, no folders; at most "
                   f"{MAX_NAME_BYTES} bytes; names Windows reserves such as CON or NUL are refused on every system). "
                   "An existing file of that name is replaced."})


def seed_input(what: str) -> tuple:
    return ("INT", {
        "default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
        "tooltip": f"Seed of the training run ({what}). The same seed and settings give the same adapter."})


def resume_input() -> tuple:
    """The ``resume_from`` widget every Train node declares."""
    return (resume_choices(), {
        "default": NONE,
        "tooltip": "Continue an interrupted run instead of starting over: 'latest' = the newest checkpoint of "
                   "this save_name, or pick a checkpoint folder from output/motionkit_training/. The settings "
                   "must match the interrupted run (it is refused otherwise)."})


def video_fps_input(note: str = "0 = it is already at the training frame rate.") -> tuple:
    return ("FLOAT", {
        "default": 0.0, "min": 0.0, "max": 240.0, "step": 0.5,
        "tooltip": _with("Frame rate of the input IMAGE batch (connect Load Reference Video's fps; a VIDEO on "
                         "core_video brings its own).", note)})


def training_fps_input(default: float, note: str, *, minimum: float = 0.5) -> tuple:
    return ("FLOAT", {"default": float(default), "min": minimum, "max": 240.0, "step": 0.5,
                      "tooltip": f"Frame rate the clips are sampled at {note}."})


def preview_every_input(default: int) -> tuple:
    return ("INT", {
        "default": int(default), "min": 0, "max": 100000,
        "tooltip": "Make a validation sample every N steps (0 = only one at the end). Each costs "
                   "'preview_steps' denoising steps."})


def preview_prompt_input(note: str = "the training prompt") -> tuple:
    return ("STRING", {"default": "", "multiline": False,
                       "tooltip": f"Prompt of the validation samples (empty = {note})."})


def preview_steps_input(default: int, reference: str) -> tuple:
    return ("INT", {"default": int(default), "min": 1, "max": 1000,
                    "tooltip": f"Denoising steps of a validation sample ({reference})."})


def noise_prior_input(default: float, note: str) -> tuple:
    return ("FLOAT", {"default": float(default), "min": 0.0, "max": 1.0, "step": 0.05,
                      "tooltip": f"Noise prior p stored in the adapter and used by the previews ({note})."})


def noise_prior_steps_input(default: int, *, minimum: int = 0) -> tuple:
    none = "; 0 = store none" if minimum == 0 else ""
    return ("INT", {"default": int(default), "min": minimum, "max": 1000,
                    "tooltip": f"DDIM inversion steps of the noise prior stored in the adapter (reference: "
                               f"{default}{none}). Computed once before training."})


def weight_decay_input(default: float = 0.01, *, minimum: float = 0.0, note: str = "") -> tuple:
    return ("FLOAT", {"default": default, "min": minimum, "max": 1.0, "step": 1e-4, "round": False,
                      "tooltip": note or f"AdamW weight decay (reference: {default:g})."})


def mixed_precision_input(note: str = "") -> tuple:
    return (PRECISIONS, {
        "default": "auto",
        "tooltip": _with("Autocast on the GPU: auto follows the model's dtype (fp16 uses a gradient scaler).",
                         note or "The CPU always trains in fp32.")})


def gradient_checkpointing_input(note: str = "The reference trains with it on.") -> tuple:
    return ("BOOLEAN", {
        "default": True,
        "tooltip": _with("Recompute activations in the backward pass to save memory. On: as 'checkpointing' says "
                         "(auto = only as much as the device's free memory requires, none when everything fits; "
                         "all = every block); off: never.", note)})


def speed_inputs() -> dict:
    """The optional speed inputs every Train node declares after the scoring inputs."""
    return {
        "checkpointing": (["auto", "all"], {
            "default": "auto",
            "tooltip": "With gradient_checkpointing on: auto = recompute only the blocks the device's free memory "
                       "requires, the ones with the largest activations first (none when everything fits: fastest); "
                       "all = every block, as the references train (least memory). The choice and the memory "
                       "estimate are printed when the run starts."}),
        "compile": ("BOOLEAN", {
            "default": False,
            "tooltip": "torch.compile every repeated block (regional). The first step takes longer (the compile "
                       "time is printed); it pays only over long runs, mostly on a GPU."}),
    }


def checkpointing_choice(enabled: bool, units: str | None) -> str:
    """The trainer's gradient_checkpointing from the node's switch and its ``checkpointing`` input."""
    if not enabled:
        return "off"
    return "on" if str(units) == "all" else "auto"


def core_video_input() -> tuple:
    """The optional VIDEO alternative to a Train node's ``video`` IMAGE input (always its last input)."""
    from .video_input import reference_video_input

    return reference_video_input("the reference video (stands in for the video input)")


# ------------------------------------------------------------------------------------------ validation
def save_name_problem(save_name: str | None) -> str | bool:
    """``VALIDATE_INPUTS`` answer for a save name: True, or the message of why it cannot be a file name on every
    platform with every suffix a run adds (:func:`host.safe_filename`), so a bad name is refused when the prompt
    is queued, not after the last training step."""
    if save_name is not None:
        try:
            host.safe_filename(save_name)
        except InputError as exc:
            return str(exc)
    return True


def training_problem(save_name: str | None, resume_from: str | None) -> str | bool:
    """``VALIDATE_INPUTS`` answer for a Train node's save name and resume choice (taking ``resume_from``
    makes the host skip its combo check, so a vanished checkpoint or 'latest' without one is caught here,
    when the prompt is queued)."""
    problem = save_name_problem(save_name)
    if problem is not True or resume_from is None:
        return problem
    if save_name is None and resume_from == LATEST:
        return True  # linked save name: known only at run time
    try:
        resolve_resume(host.safe_filename(save_name) if save_name is not None else "", resume_from)
    except InputError as exc:
        return str(exc)
    return True


# ------------------------------------------------------------------------------------------ checkpoint scores
def scoring_inputs() -> dict:
    """The optional checkpoint-scoring inputs every Train node declares last (``motion_core.metrics``)."""
    return {
        "score_checkpoints": ("BOOLEAN", {
            "default": False,
            "tooltip": "Make a preview at every checkpoint and score it against the training clip: motion fidelity "
                       "(and CLIP-T for the preview prompt when a CLIP model is connected). The scores are drawn "
                       "beside the loss curve."}),
        "keep_best": ("BOOLEAN", {
            "default": False,
            "tooltip": "Also keep the best scored checkpoint as models/motion_adapters/<save_name>_best.safetensors "
                       "(its step in the metadata), beside the last one; turns score_checkpoints on. Best = highest "
                       "motion fidelity (+ CLIP-T with a CLIP model), the earlier step on a tie."}),
        "clip": ("CLIP_SCORER", {"tooltip": "A CLIP model from Load CLIP Scorer: adds CLIP-T to the checkpoint scores."}),
    }


def scoring_options(score_checkpoints: bool, keep_best: bool, clip: Any) -> dict:
    """TrainingConfig fields of the scoring inputs (the CLIP model by its folder or hub id: the trainer loads it
    on the training device)."""
    return {"score_previews": bool(score_checkpoints or keep_best), "select_best": bool(keep_best),
            "score_clip": getattr(clip, "source", None) or None if clip is not None else None}
