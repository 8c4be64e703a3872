"""MotionMatcher node: train a motion LoRA with the motion feature matching loss.

A thin declaration over :func:`motion_core.methods.motion_matcher.train_motion_matcher`. The adapter it makes
(one LoRA set that carries its own "only for t >= 500" strength schedule and a 0.3 noise prior) is applied with
Apply Motion Adapter (+ Noise Prior) and loaded back with Load Motion Adapter.
"""

from __future__ import annotations

from motion_core.errors import InputError

from . import host
from . import training_common as common
from .video_input import pick_reference


class MotionKitTrainMotionMatcher:
    DESCRIPTION = (
        "Trains a MotionMatcher motion adapter from one reference video: a rank-32 LoRA on the spatial self-attention, "
        "the temporal attention and the feed-forward layers, trained so that the frozen model's attention maps on the "
        "predicted next latent match those on the true one (cross-attention maps = camera framing, temporal "
        "self-attention maps = object movement) at high noise (t >= 500). At sampling time the adapter is active only "
        "for t >= 500 and starts from a 0.3 noise prior. Saves the adapter to models/motion_adapters/<save_name>."
        "safetensors and checkpoints to output/motionkit_training/. The progress bar shows the step and a live loss "
        "curve; Cancel stops after the current step and keeps the adapter so far. About 3 forward passes per step: "
        "slower than MotionDirector."
    )
    CATEGORY = "MotionKit/MotionMatcher"
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("MOTION_ADAPTER", "IMAGE", "IMAGE")
    RETURN_NAMES = ("adapter", "loss_curve", "preview")
    OUTPUT_TOOLTIPS = (
        "The trained motion adapter (one LoRA set, active only for t >= min_timestep, with the stored noise prior). "
        "Connect it to Apply Motion Adapter and Noise Prior (p 0.3).",
        "The training loss over the steps (total, cross-attention part, temporal-attention part), as an image.",
        "The last validation sample (frames of the preview prompt) made as at inference; a black frame when "
        "previews are off.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": common.model_input(
                    "a UNet3D model: ZeroScope, the reference's model, or ModelScope; or AnimateDiff",
                    "Models without UNet cross-attention and temporal attention (Wan) are refused."),
                "prompt": common.prompt_input(
                    "A bear is walking on rocks.",
                    "What the reference video shows (subject and motion), e.g. the reference's 'A bear is walking "
                    "on rocks.'"),
                "steps": common.steps_input(400, "400; 200 for its bear clip"),
                "learning_rate": common.learning_rate_input(5e-4, "of the LoRA (reference: 5e-4, constant)"),
                "rank": common.rank_input(32),
                "frames": common.frames_input(16, "(reference: 16). The video must have at least this many frames at "
                                                  "the training frame rate."),
                "width": common.width_input(384, "Non-square sizes work too (the reference trains square)."),
                "height": common.height_input(384),
                "checkpoint_every": common.checkpoint_every_input(50),
                "save_name": common.save_name_input("motionmatcher"),
                "seed": common.seed_input("noise, timesteps, LoRA init, dropout"),
                "resume_from": common.resume_input(),
            },
            "optional": {
                "video": common.video_input("The reference video", "Its first 'frames' frames at the training frame "
                                                                   "rate are the training clip, as in the reference."),
                "video_fps": common.video_fps_input(),
                "training_fps": common.training_fps_input(8.0, "when the video's fps is known (reference: 8)"),
                "min_timestep": ("INT", {
                    "default": 500, "min": 1, "max": 999,
                    "tooltip": "Training timesteps are drawn from [min_timestep, 1000) and the adapter is active only "
                               "for t >= min_timestep when sampling (reference: 500)."}),
                "spatial_loss_weight": ("FLOAT", {
                    "default": 2000.0, "min": 0.0, "max": 1e6, "step": 100.0,
                    "tooltip": "Weight of the cross-attention map loss (camera framing; reference 2000, its "
                               "car_roundabout example 8000)."}),
                "temporal_loss_weight": ("FLOAT", {
                    "default": 2000.0, "min": 0.0, "max": 1e6, "step": 100.0,
                    "tooltip": "Weight of the temporal self-attention map loss (object movement; reference 2000, "
                               "car_roundabout 800)."}),
                "feature_downscale": ("INT", {
                    "default": 0, "min": 0, "max": 64,
                    "tooltip": "Which down block the attention maps come from, as a divisor of the latent size: 4 = "
                               "the reference (1/4 resolution); 0 = automatic (4 where the model has cross- and "
                               "temporal attention there, else the deepest block that has both)."}),
                "preview_every": common.preview_every_input(50),
                "preview_prompt": common.preview_prompt_input(
                    "the training prompt; e.g. the reference's 'An arctic fox is walking on ice.'"),
                "preview_steps": common.preview_steps_input(30, "the reference validates with 75 steps, CFG 12"),
                "noise_prior": common.noise_prior_input(0.3, "reference: 0.3; bear 0.2. 0 = no noise prior and no "
                                                             "inversion"),
                "noise_prior_steps": common.noise_prior_steps_input(75, minimum=1),
                "weight_decay": common.weight_decay_input(0.01),
                "mixed_precision": common.mixed_precision_input(),
                "gradient_checkpointing": common.gradient_checkpointing_input(
                    "The frozen feature passes are recomputed with the LoRA off, as they ran (the reference "
                    "recomputes them with the LoRA on)."),
                "core_video": common.core_video_input(),
                **common.scoring_inputs(),
                **common.speed_inputs(),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, save_name=None, resume_from=None):
        return common.training_problem(save_name, resume_from)

    def train(self, model, prompt, steps, learning_rate, rank, frames, width, height, checkpoint_every, save_name,
              seed, resume_from, video=None, video_fps=0.0, training_fps=8.0, min_timestep=500,
              spatial_loss_weight=2000.0, temporal_loss_weight=2000.0, feature_downscale=0, preview_every=50,
              preview_prompt="", preview_steps=30, noise_prior=0.3, noise_prior_steps=75, weight_decay=0.01,
              mixed_precision="auto", gradient_checkpointing=True, core_video=None, score_checkpoints=False, keep_best=False,
              clip=None, checkpointing="auto", compile=False):
        from motion_core.methods.motion_matcher import MotionMatcherConfig, train_motion_matcher
        from motion_core.motion_model import MotionModel
        from motion_core.training import VideoSource
        from motion_core.video import from_comfy_image

        name = host.safe_filename(save_name)
        text = str(prompt).strip()
        if not text:
            raise InputError("The prompt is empty: describe what the reference video shows.")
        base = MotionModel.wrap(model).base
        reference = pick_reference(video, core_video, video_fps, image_name="video", video_name="core_video")
        fps = reference.fps
        source = VideoSource(frames=from_comfy_image(reference.frames), fps=fps)
        config = MotionMatcherConfig(
            rank=int(rank), learning_rate=float(learning_rate), weight_decay=float(weight_decay),
            min_timestep=int(min_timestep), spatial_loss_weight=float(spatial_loss_weight),
            temporal_loss_weight=float(temporal_loss_weight),
            feature_downscale=int(feature_downscale) or None, noise_prior=float(noise_prior),
            noise_prior_steps=int(noise_prior_steps))
        training = common.training_config(
            name, **common.scoring_options(score_checkpoints, keep_best, clip), steps=steps, seed=seed, frames=frames, fps=float(training_fps) if fps else None, width=width,
            height=height, checkpoint_every=checkpoint_every, preview_every=preview_every,
            preview_prompt=preview_prompt, preview_steps=preview_steps, mixed_precision=mixed_precision,
            gradient_checkpointing=common.checkpointing_choice(gradient_checkpointing, checkpointing),
            compile="on" if compile else "off", preview_noise_prior=float(noise_prior), windows="first")
        resume = common.resolve_resume(name, resume_from)

        def run(progress, cancel):
            return train_motion_matcher(base, [source], text, config=config, training=training, resume=resume,
                                          progress=progress, cancel=cancel)

        return common.run_training("Train MotionMatcher", int(steps), int(width), int(height), run)


NODE_CLASS_MAPPINGS = {
    "MotionKitTrainMotionMatcher": MotionKitTrainMotionMatcher,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "MotionKitTrainMotionMatcher": "Train MotionMatcher (MotionKit)",
}
