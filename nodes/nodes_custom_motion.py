"""Customizing Motion (NewMove) node: fine-tune the temporal layers on videos of a motion named by an
identifier word, regularized by prior videos.

A thin declaration over :func:`motion_core.methods.custom_motion.train_custom_motion`. The adapter it makes
(a weight delta) is applied with Apply Motion Adapter and loaded back with Load Motion Adapter.
"""

from __future__ import annotations

from motion_core.errors import InputError

from . import host
from .training_common import (
    PRECISIONS,
    checkpoint_every_input,
    resolve_resume,
    resume_input,
    run_training,
    save_name_problem,
    training_root,
)
from .nodes_motiondirector import MAX_SEED, MAX_SIZE

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
                "model": ("MOTION_MODEL", {
                    "tooltip": "The base video model from Load Video Model (unet3d: ZeroScope/ModelScope; or "
                               "animatediff, which has no temporal convolutions). Adapters already applied to it "
                               "are ignored for training."}),
                "caption": ("STRING", {
                    "default": "a person doing the sks gesture", "multiline": True,
                    "tooltip": "Caption of the training videos, naming the motion with the identifier word. With "
                               "several connected videos, one line per video gives each its own caption. Folder "
                               "videos use '<video>.txt' beside them when present. A caption without the "
                               "identifier gets it appended (with a warning)."}),
                "identifier": ("STRING", {
                    "default": "sks",
                    "tooltip": "The rare word that names the new motion in the captions (the paper's V*; "
                               "reference: 'sks'). Use it in the sampling prompt to call the motion up."}),
                "steps": ("INT", {
                    "default": 3000, "min": 1, "max": 100000,
                    "tooltip": "Training steps (reference: 3000, checkpoints at 1000-3000). Each step trains one "
                               "training clip and one prior clip together."}),
                "learning_rate": ("FLOAT", {
                    "default": 5e-6, "min": 1e-9, "max": 1.0, "step": 1e-6, "round": False,
                    "tooltip": "AdamW learning rate (reference: 5e-6 -- a full fine-tune of 40% of the model "
                               "needs a small one)."}),
                "frames": ("INT", {
                    "default": 16, "min": 1, "max": 128,
                    "tooltip": "Frames per training clip (reference: 16 at 24 fps). Videos must have at least this "
                               "many; shorter prior videos repeat their last frame."}),
                "width": ("INT", {
                    "default": 384, "min": 8, "max": MAX_SIZE, "step": 8,
                    "tooltip": "Training width in pixels (reference: 384). Every video and prior video is scaled "
                               "to cover and center-cropped to this size."}),
                "height": ("INT", {
                    "default": 384, "min": 8, "max": MAX_SIZE, "step": 8,
                    "tooltip": "Training height in pixels (reference: 384)."}),
                "checkpoint_every": checkpoint_every_input(500),
                "save_name": ("STRING", {
                    "default": "custom_motion",
                    "tooltip": "File name of the adapter in models/motion_adapters (a plain name, no folders). "
                               "An existing file of that name is replaced."}),
                "seed": ("INT", {
                    "default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                    "tooltip": "Seed of the training run (noise, timesteps, prior choice). The same seed and "
                               "settings give the same adapter."}),
                "resume_from": resume_input(),
            },
            "optional": {
                "video": ("IMAGE", {
                    "tooltip": "A training video of the motion as an IMAGE batch (e.g. from Load Reference "
                               "Video). Optional when video_folder is given."}),
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
                "video_fps": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 240.0, "step": 0.5,
                    "tooltip": "Frame rate of the connected IMAGE videos (connect Load Reference Video's fps). 0 = "
                               "they are already at the training frame rate."}),
                "prior_video_fps": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 240.0, "step": 0.5,
                    "tooltip": "Frame rate of the connected prior IMAGE videos. 0 = already at the training "
                               "frame rate."}),
                "training_fps": ("FLOAT", {
                    "default": 24.0, "min": 0.5, "max": 240.0, "step": 0.5,
                    "tooltip": "Frame rate the clips are sampled at (reference: 24) for files and for IMAGE "
                               "videos whose fps is given."}),
                "prior_weight": ("FLOAT", {
                    "default": 0.5, "min": 0.0, "max": 10.0, "step": 0.05,
                    "tooltip": "Weight λ of the prior loss (reference: 0.5): loss = instance + λ x prior."}),
                "timestep_sampling": (SAMPLINGS, {
                    "default": "high",
                    "tooltip": "Noise levels trained on: high = p(t) ~ 1 - 0.5 cos(pi t/T), more high-noise steps "
                               "where motion is decided (reference); uniform; low = more low-noise steps."}),
                "preview_every": ("INT", {
                    "default": 500, "min": 0, "max": 100000,
                    "tooltip": "Make a validation sample every N steps (0 = only one at the end). Each costs "
                               "'preview_steps' denoising steps."}),
                "preview_prompt": ("STRING", {
                    "default": "", "multiline": False,
                    "tooltip": "Prompt of the validation samples, with the identifier (empty = the first training "
                               "caption)."}),
                "preview_steps": ("INT", {
                    "default": 25, "min": 1, "max": 1000,
                    "tooltip": "Denoising steps of a validation sample (reference: 25, cfg 9)."}),
                "weight_decay": ("FLOAT", {
                    "default": 1e-2, "min": 0.0, "max": 1.0, "step": 1e-4, "round": False,
                    "tooltip": "AdamW weight decay (reference: 0.01)."}),
                "max_grad_norm": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 1000.0, "step": 0.1,
                    "tooltip": "Gradient clipping over all trained tensors (reference: 1.0; 0 = off)."}),
                "delta_dtype": (DELTA_DTYPES, {
                    "default": "float16",
                    "tooltip": "Precision of the saved weight delta: float16 (half the size of float32, "
                               "negligible error on a small delta), bfloat16 or float32."}),
                "mixed_precision": (PRECISIONS, {
                    "default": "auto",
                    "tooltip": "Autocast on the GPU: auto follows the model's dtype (fp16 uses a gradient "
                               "scaler). The trained tensors are kept in fp32. The CPU always trains in fp32."}),
                "gradient_checkpointing": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "Recompute activations in the backward pass: much less memory, about 30% "
                               "slower. The reference trains with it on."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, save_name=None, identifier=None):
        from motion_core.methods.custom_motion import check_identifier

        problem = save_name_problem(save_name)
        if problem is not True:
            return problem
        try:
            if identifier is not None:
                check_identifier(identifier)
        except InputError as exc:
            return str(exc)
        return True

    def train(self, model, caption, identifier, steps, learning_rate, frames, width, height, checkpoint_every,
              save_name, seed, resume_from, video=None, video_2=None, video_3=None, video_folder="",
              prior_video=None, prior_video_2=None, prior_folder="", prior_caption="a person doing a gesture",
              video_fps=0.0, prior_video_fps=0.0, training_fps=24.0, prior_weight=0.5, timestep_sampling="high",
              preview_every=500, preview_prompt="", preview_steps=25, weight_decay=1e-2, max_grad_norm=1.0,
              delta_dtype="float16", mixed_precision="auto", gradient_checkpointing=True):
        from motion_core.methods.custom_motion import CustomMotionConfig, train_custom_motion, videos_in_folder
        from motion_core.motion_model import MotionModel
        from motion_core.training import PreviewConfig, TrainingConfig, VideoSource
        from motion_core.video import from_comfy_image

        name = host.safe_filename(save_name)
        base = MotionModel.wrap(model).base
        text = " ".join(_lines(caption))
        if not text:
            raise InputError(f"The caption is empty: describe the motion with the identifier, e.g. 'a person doing "
                             f"the {str(identifier).strip() or 'sks'} gesture'.")

        images = [v for v in (video, video_2, video_3) if v is not None]
        fps = float(video_fps) or None
        sources = [VideoSource(frames=from_comfy_image(v), fps=fps, caption=c)
                   for v, c in zip(images, _captioned(images, caption))]
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
        run_dir = training_root() / name
        config = TrainingConfig(
            steps=int(steps), seed=int(seed), frames=int(frames), fps=float(training_fps), width=int(width),
            height=int(height), checkpoint_every=int(checkpoint_every), validate_every=int(preview_every),
            mixed_precision=str(mixed_precision), gradient_checkpointing=bool(gradient_checkpointing),
            run_dir=str(run_dir), save_name=name, adapters_dir=str(host.motion_adapters_dir()),
            preview=PreviewConfig(prompts=[str(preview_prompt).strip()] if str(preview_prompt).strip() else [],
                                  steps=int(preview_steps), cfg=9.0, seed=int(seed)))
        resume = resolve_resume(name, resume_from)

        def run(progress, cancel):
            return train_custom_motion(base, sources, text, prior_videos=priors,
                                         prior_captions=prior_text or None, config=method_config, training=config,
                                         bucketing=False, resume=resume, progress=progress,
                                         cancel=cancel)

        return run_training("Train Customizing Motion", int(steps), int(width), int(height), run)


NODE_CLASS_MAPPINGS = {
    "MotionKitTrainCustomMotion": MotionKitTrainCustomMotion,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "MotionKitTrainCustomMotion": "Train Customizing Motion (MotionKit)",
}
