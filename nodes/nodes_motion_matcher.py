"""MotionMatcher node: train a motion LoRA with the motion feature matching loss.

A thin declaration over :func:`motion_core.methods.motion_matcher.train_motion_matcher`. The adapter it makes
(one LoRA set that carries its own "only for t >= 500" strength schedule and a 0.3 noise prior) is applied with
Apply Motion Adapter (+ Noise Prior) and loaded back with Load Motion Adapter.
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
                "model": ("MOTION_MODEL", {
                    "tooltip": "The base video model from Load Video Model: a UNet3D model (ZeroScope, the reference's "
                               "model, or ModelScope) or AnimateDiff. Adapters already applied to it are ignored for "
                               "training. Models without UNet cross-attention and temporal attention (Wan) are "
                               "refused."}),
                "video": ("IMAGE", {
                    "tooltip": "The reference video as an IMAGE batch (e.g. from Load Reference Video). Its first "
                               "'frames' frames at the training frame rate are the training clip, as in the "
                               "reference."}),
                "prompt": ("STRING", {
                    "default": "A bear is walking on rocks.", "multiline": True,
                    "tooltip": "What the reference video shows (subject and motion), e.g. the reference's "
                               "'A bear is walking on rocks.'"}),
                "steps": ("INT", {
                    "default": 400, "min": 1, "max": 100000,
                    "tooltip": "Training steps. The reference uses 400 (200 for its bear clip)."}),
                "learning_rate": ("FLOAT", {
                    "default": 5e-4, "min": 1e-7, "max": 1.0, "step": 1e-5, "round": False,
                    "tooltip": "AdamW learning rate of the LoRA (reference: 5e-4, constant)."}),
                "rank": ("INT", {
                    "default": 32, "min": 1, "max": 512,
                    "tooltip": "LoRA rank (reference: 32). It cannot exceed the smallest layer size (the error "
                               "says the limit)."}),
                "frames": ("INT", {
                    "default": 16, "min": 1, "max": 128,
                    "tooltip": "Frames of the training clip (reference: 16). The video must have at least this many "
                               "frames at the training frame rate."}),
                "width": ("INT", {
                    "default": 384, "min": 8, "max": MAX_SIZE, "step": 8,
                    "tooltip": "Training width in pixels (reference: 384, square). Frames are scaled to cover and "
                               "center-cropped. Non-square sizes work too."}),
                "height": ("INT", {
                    "default": 384, "min": 8, "max": MAX_SIZE, "step": 8,
                    "tooltip": "Training height in pixels (reference: 384)."}),
                "checkpoint_every": checkpoint_every_input(50),
                "save_name": ("STRING", {
                    "default": "motionmatcher",
                    "tooltip": "File name of the adapter in models/motion_adapters (a plain name, no folders). An "
                               "existing file of that name is replaced."}),
                "seed": ("INT", {
                    "default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                    "tooltip": "Seed of the training run (noise, timesteps, LoRA init, dropout). The same seed and "
                               "settings give the same adapter."}),
                "resume_from": resume_input(),
            },
            "optional": {
                "video_fps": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 240.0, "step": 0.5,
                    "tooltip": "Frame rate of the input IMAGE batch (connect Load Reference Video's fps). 0 = it is "
                               "already at the training frame rate."}),
                "training_fps": ("FLOAT", {
                    "default": 8.0, "min": 0.5, "max": 240.0, "step": 0.5,
                    "tooltip": "Frame rate the clip is sampled at when video_fps is known (reference: 8)."}),
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
                "preview_every": ("INT", {
                    "default": 50, "min": 0, "max": 100000,
                    "tooltip": "Make a validation sample every N steps (0 = only one at the end). Each costs "
                               "'preview_steps' denoising steps."}),
                "preview_prompt": ("STRING", {
                    "default": "", "multiline": False,
                    "tooltip": "Prompt of the validation samples (empty = the training prompt), e.g. the "
                               "reference's 'An arctic fox is walking on ice.'"}),
                "preview_steps": ("INT", {
                    "default": 30, "min": 1, "max": 1000,
                    "tooltip": "Denoising steps of a validation sample (the reference validates with 75 steps, "
                               "CFG 12)."}),
                "noise_prior": ("FLOAT", {
                    "default": 0.3, "min": 0.0, "max": 1.0, "step": 0.05,
                    "tooltip": "Noise prior p stored in the adapter and used by the previews (reference: 0.3; bear "
                               "0.2). 0 = no noise prior (and no inversion)."}),
                "noise_prior_steps": ("INT", {
                    "default": 75, "min": 1, "max": 1000,
                    "tooltip": "DDIM inversion steps of the stored noise prior (reference: 75). Computed once "
                               "before training."}),
                "weight_decay": ("FLOAT", {
                    "default": 0.01, "min": 0.0, "max": 1.0, "step": 1e-4, "round": False,
                    "tooltip": "AdamW weight decay (reference: 0.01)."}),
                "mixed_precision": (PRECISIONS, {
                    "default": "auto",
                    "tooltip": "Autocast on the GPU: auto follows the model's dtype (fp16 uses a gradient scaler). "
                               "The CPU always trains in fp32."}),
                "gradient_checkpointing": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "Recompute activations in the backward pass: much less memory, slower. The frozen "
                               "feature passes are recomputed with the LoRA off, as they ran (the reference "
                               "recomputes them with the LoRA on)."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, save_name=None, resume_from=None):
        return save_name_problem(save_name)

    def train(self, model, video, prompt, steps, learning_rate, rank, frames, width, height, checkpoint_every,
              save_name, seed, resume_from, video_fps=0.0, training_fps=8.0, min_timestep=500,
              spatial_loss_weight=2000.0, temporal_loss_weight=2000.0, feature_downscale=0, preview_every=50,
              preview_prompt="", preview_steps=30, noise_prior=0.3, noise_prior_steps=75, weight_decay=0.01,
              mixed_precision="auto", gradient_checkpointing=True):
        from motion_core.methods.motion_matcher import MotionMatcherConfig, train_motion_matcher
        from motion_core.motion_model import MotionModel
        from motion_core.training import PreviewConfig, TrainingConfig, VideoSource
        from motion_core.video import from_comfy_image

        name = host.safe_filename(save_name)
        text = str(prompt).strip()
        if not text:
            raise InputError("The prompt is empty: describe what the reference video shows.")
        base = MotionModel.wrap(model).base
        fps = float(video_fps) or None
        source = VideoSource(frames=from_comfy_image(video), fps=fps)
        config = MotionMatcherConfig(
            rank=int(rank), learning_rate=float(learning_rate), weight_decay=float(weight_decay),
            min_timestep=int(min_timestep), spatial_loss_weight=float(spatial_loss_weight),
            temporal_loss_weight=float(temporal_loss_weight),
            feature_downscale=int(feature_downscale) or None, noise_prior=float(noise_prior),
            noise_prior_steps=int(noise_prior_steps))
        run_dir = training_root() / name
        training = TrainingConfig(
            steps=int(steps), seed=int(seed), frames=int(frames), fps=float(training_fps) if fps else None,
            width=int(width), height=int(height), windows="first", checkpoint_every=int(checkpoint_every),
            validate_every=int(preview_every), mixed_precision=str(mixed_precision),
            gradient_checkpointing=bool(gradient_checkpointing), run_dir=str(run_dir), save_name=name,
            adapters_dir=str(host.motion_adapters_dir()),
            preview=PreviewConfig(prompts=[str(preview_prompt)] if str(preview_prompt).strip() else [],
                                  steps=int(preview_steps), cfg=12.0, seed=int(seed), noise_prior=float(noise_prior)))
        resume = resolve_resume(name, resume_from)

        def run(progress, cancel):
            return train_motion_matcher(base, [source], text, config=config, training=training, resume=resume,
                                          progress=progress, cancel=cancel)

        return run_training("Train MotionMatcher", int(steps), int(width), int(height), run)


NODE_CLASS_MAPPINGS = {
    "MotionKitTrainMotionMatcher": MotionKitTrainMotionMatcher,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "MotionKitTrainMotionMatcher": "Train MotionMatcher (MotionKit)",
}
