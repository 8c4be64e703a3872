"""Customizing Motion (NewMove) node: fine-tune the temporal layers on videos of a motion named by an
identifier word, regularized by prior videos.

A thin declaration over :func:`motion_core.methods.custom_motion.train_custom_motion`. The adapter it makes
(a weight delta) is applied with Apply Motion Adapter and loaded back with Load Motion Adapter.
"""

from __future__ import annotations

from pathlib import Path

from motion_core.errors import InputError

from . import host
from . import training_common as common
from .video_input import ReferenceFrames, pick_reference

SAMPLINGS = ["high", "uniform", "low"]
DELTA_DTYPES = ["float16", "bfloat16", "float32"]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in str(text or "").splitlines() if line.strip()]


def _captioned(images: list, text: str) -> list[str]:
    """One caption per IMAGE video: line i for video i when the text has one line per video, else the whole
    text (one caption for all)."""
    lines = _lines(text)
    if len(images) > 1 and len(lines) == len(images):
        return lines
    whole = " ".join(lines)
    return [whole] * len(images)


class MotionKitTrainCustomMotion:
    DESCRIPTION = (
        "Trains a Customizing Motion (NewMove) adapter: fine-tunes the model's temporal attention, temporal "
        "convolutions and cross-attention K/V on videos of one motion whose captions name it with an identifier "
        "word (default 'sks', e.g. 'a person doing the sks gesture'), while prior videos of other motions with their "
        "own captions keep the rest of the model intact (loss = instance + 0.5 x prior). Saves the weight delta to "
        "models/motion_adapters/<save_name>.safetensors and checkpoints to output/motionkit_training/. Use the "
        "identifier in the sampling prompt. The progress bar shows the step and a live loss curve; Cancel stops "
        "after the current step and keeps the adapter so far."
    )
    CATEGORY = "MotionKit/Customizing Motion"
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("MOTION_ADAPTER", "IMAGE", "IMAGE")
    RETURN_NAMES = ("adapter", "loss_curve", "preview")
    OUTPUT_TOOLTIPS = (
        "The trained adapter (the weight delta of the fine-tuned layers). Connect it to Apply Motion Adapter; "
        "sample with the identifier word in the prompt.",
        "The training loss over the steps (total, instance and prior parts), as an image.",
        "The last validation sample (frames of the first preview prompt) with the fine-tuned weights; a black "
        "frame when no preview was made.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": common.model_input("unet3d: ZeroScope/ModelScope; or animatediff, which has no temporal "
                                            "convolutions"),
                "caption": common.prompt_input(
                    "a person doing the sks gesture",
                    "Caption of the training videos, naming the motion with the identifier word. With several "
                    "connected videos, one line per video gives each its own caption. Folder videos use "
                    "'<video>.txt' beside them when present. A caption without the identifier gets it appended "
                    "(with a warning)."),
                "identifier": ("STRING", {
                    "default": "sks",
                    "tooltip": "The rare word that names the new motion in the captions (the paper's V*; "
                               "reference: 'sks'). Use it in the sampling prompt to call the motion up."}),
                "steps": common.steps_input(3000, "3000, checkpoints at 1000-3000",
                                            "Each step trains one training clip and one prior clip together."),
                "learning_rate": common.learning_rate_input(
                    5e-6, "(reference: 5e-6 -- a full fine-tune of 40% of the model needs a small one)",
                    minimum=1e-9, step=1e-6),
                "frames": common.frames_input(16, "(reference: 16 at 24 fps). Videos must have at least this many; "
                                                  "shorter prior videos repeat their last frame."),
                "width": common.width_input(384, "Every video and prior video is brought to this size."),
                "height": common.height_input(384),
                "checkpoint_every": common.checkpoint_every_input(500),
                "save_name": common.save_name_input("custom_motion"),
                "seed": common.seed_input("noise, timesteps, prior choice"),
                "resume_from": common.resume_input(),
            },
            "optional": {
                "video": common.video_input("A training video of the motion", "Optional when video_folder is given."),
                "video_2": ("IMAGE", {"tooltip": "A second training video of the same motion (optional)."}),
                "video_3": ("IMAGE", {"tooltip": "A third training video of the same motion (optional)."}),
                "video_folder": ("STRING", {
                    "default": "",
                    "tooltip": "A folder of training videos (mp4, webm, mov, ...), used with or instead of the "
                               "connected videos; a '<video>.txt' beside a video is its caption."}),
                "prior_video": ("IMAGE", {
                    "tooltip": "A prior (regularization) video: a related, generic motion, captioned without the "
                               "identifier. Strongly recommended: without priors the fine-tune forgets other "
                               "motions. Any size; it is resized to the training size."}),
                "prior_video_2": ("IMAGE", {"tooltip": "A second prior video (optional)."}),
                "prior_folder": ("STRING", {
                    "default": "",
                    "tooltip": "A folder of prior videos (the reference uses many, e.g. other Jester gestures); "
                               "'<video>.txt' beside a video is its caption."}),
                "prior_caption": ("STRING", {
                    "default": "a person doing a gesture", "multiline": True,
                    "tooltip": "Caption of the prior videos, without the identifier (one line per connected prior "
                               "video, or one for all). Folder priors use their '.txt' captions when present."}),
                "video_fps": common.video_fps_input("0 = they are already at the training frame rate."),
                "prior_video_fps": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 240.0, "step": 0.5,
                    "tooltip": "Frame rate of the connected prior IMAGE videos. 0 = already at the training "
                               "frame rate."}),
                "training_fps": common.training_fps_input(
                    24.0, "(reference: 24) for files, VIDEO and IMAGE videos whose fps is known"),
                "prior_weight": ("FLOAT", {
                    "default": 0.5, "min": 0.0, "max": 10.0, "step": 0.05,
                    "tooltip": "Weight λ of the prior loss (reference: 0.5): loss = instance + λ x prior."}),
                "timestep_sampling": (SAMPLINGS, {
                    "default": "high",
                    "tooltip": "Noise levels trained on: high = p(t) ~ 1 - 0.5 cos(pi t/T), more high-noise steps "
                               "where motion is decided (reference); uniform; low = more low-noise steps."}),
                "preview_every": common.preview_every_input(500),
                "preview_prompt": common.preview_prompt_input("the first training caption; give the identifier"),
                "preview_steps": common.preview_steps_input(25, "reference: 25, cfg 9"),
                "weight_decay": common.weight_decay_input(1e-2),
                "max_grad_norm": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 1000.0, "step": 0.1,
                    "tooltip": "Gradient clipping over all trained tensors (reference: 1.0; 0 = off)."}),
                "delta_dtype": (DELTA_DTYPES, {
                    "default": "float16",
                    "tooltip": "Precision of the saved weight delta: float16 (half the size of float32, "
                               "negligible error on a small delta), bfloat16 or float32."}),
                "mixed_precision": common.mixed_precision_input(
                    "The trained tensors are kept in fp32. The CPU always trains in fp32."),
                "gradient_checkpointing": common.gradient_checkpointing_input(),
                "core_video": common.core_video_input(),
                **common.scoring_inputs(),
                **common.speed_inputs(),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, save_name=None, identifier=None, resume_from=None, video_folder=None,
                        prior_folder=None):
        from motion_core.methods.custom_motion import check_identifier

        problem = common.training_problem(save_name, resume_from)
        if problem is not True:
            return problem
        try:
            if identifier is not None:
                check_identifier(identifier)
        except InputError as exc:
            return str(exc)
        for label, folder in (("video_folder", video_folder), ("prior_folder", prior_folder)):
            if folder is not None and str(folder).strip() and not Path(str(folder).strip()).expanduser().is_dir():
                return f"{label} '{str(folder).strip()}' does not exist or is not a folder: give a folder of videos, " \
                       "or leave it empty."
        return True

    def train(self, model, caption, identifier, steps, learning_rate, frames, width, height, checkpoint_every,
              save_name, seed, resume_from, video=None, video_2=None, video_3=None, video_folder="",
              prior_video=None, prior_video_2=None, prior_folder="", prior_caption="a person doing a gesture",
              video_fps=0.0, prior_video_fps=0.0, training_fps=24.0, prior_weight=0.5, timestep_sampling="high",
              preview_every=500, preview_prompt="", preview_steps=25, weight_decay=1e-2, max_grad_norm=1.0,
              delta_dtype="float16", mixed_precision="auto", gradient_checkpointing=True, core_video=None, score_checkpoints=False, keep_best=False,
              clip=None, checkpointing="auto", compile=False):
        from motion_core.methods.custom_motion import CustomMotionConfig, train_custom_motion, videos_in_folder
        from motion_core.motion_model import MotionModel
        from motion_core.training import VideoSource
        from motion_core.video import from_comfy_image

        name = host.safe_filename(save_name)
        base = MotionModel.wrap(model).base
        text = " ".join(_lines(caption))
        if not text:
            raise InputError(f"The caption is empty: describe the motion with the identifier, e.g. 'a person doing "
                             f"the {str(identifier).strip() or 'sks'} gesture'.")

        first = pick_reference(video, core_video, video_fps, image_name="video", video_name="core_video",
                               required=False)
        fps = float(video_fps) or None
        images = ([first] if first is not None else []) + [ReferenceFrames(v, fps) for v in (video_2, video_3)
                                                            if v is not None]
        sources = [VideoSource(frames=from_comfy_image(r.frames), fps=r.fps, caption=c)
                   for r, c in zip(images, _captioned(images, caption))]
        if str(video_folder or "").strip():
            sources += videos_in_folder(str(video_folder).strip(), caption=text)
        if not sources:
            raise InputError("No training video: connect a video (IMAGE) or give a video_folder.")

        prior_images = [v for v in (prior_video, prior_video_2) if v is not None]
        prior_text = " ".join(_lines(prior_caption))
        prior_fps = float(prior_video_fps) or None
        priors = [VideoSource(frames=from_comfy_image(v), fps=prior_fps, caption=c or None)
                  for v, c in zip(prior_images, _captioned(prior_images, prior_caption))]
        if str(prior_folder or "").strip():
            priors += videos_in_folder(str(prior_folder).strip(), caption=prior_text or None)

        method_config = CustomMotionConfig(
            identifier=str(identifier).strip(), learning_rate=float(learning_rate), weight_decay=float(weight_decay),
            max_grad_norm=float(max_grad_norm) if float(max_grad_norm) > 0 else None, prior_weight=float(prior_weight),
            timestep_sampling=str(timestep_sampling), delta_dtype=str(delta_dtype))
        config = common.training_config(
            name, **common.scoring_options(score_checkpoints, keep_best, clip), steps=steps, seed=seed, frames=frames, fps=float(training_fps), width=width, height=height,
            checkpoint_every=checkpoint_every, preview_every=preview_every, preview_prompt=preview_prompt,
            preview_steps=preview_steps, mixed_precision=mixed_precision,
            gradient_checkpointing=common.checkpointing_choice(gradient_checkpointing, checkpointing),
            compile="on" if compile else "off", preview_cfg=9.0)
        resume = common.resolve_resume(name, resume_from)

        def run(progress, cancel):
            return train_custom_motion(base, sources, text, prior_videos=priors,
                                         prior_captions=prior_text or None, config=method_config, training=config,
                                         bucketing=False, resume=resume, progress=progress,
                                         cancel=cancel)

        return common.run_training("Train Customizing Motion", int(steps), int(width), int(height), run)


NODE_CLASS_MAPPINGS = {
    "MotionKitTrainCustomMotion": MotionKitTrainCustomMotion,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "MotionKitTrainCustomMotion": "Train Customizing Motion (MotionKit)",
}
