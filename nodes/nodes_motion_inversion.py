"""Motion Inversion node: train motion embeddings (Query-Key + Value) from a reference video.

Thin declaration over :mod:`motion_core.methods.motion_inversion` and :mod:`motion_core.training`. The
trained embeddings are a MOTION_ADAPTER: Load / Apply Motion Adapter (strategy camera / object / hybrid,
strength, resampling) and Noise Prior take them like any other adapter, and they combine with LoRAs.
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

MAX_SEED = 0xFFFF_FFFF_FFFF_FFFF
MAX_SIZE = 8192
LOSSES = ["mse", "debiased"]
STRATEGIES = ["hybrid", "object", "camera", "vanilla"]




class MotionKitTrainMotionEmbeddings:
    DESCRIPTION = (
        "Motion Inversion: learns motion embeddings from one reference video on the frozen model -- a Query-Key "
        "embedding per selected temporal block (when things move) and a Value embedding per temporal attention "
        "(where they move). Saves them (with the reference's noise prior) to models/motion_adapters/"
        "<save_name>.safetensors and checkpoints to output/motionkit_training/. Apply them with Apply Motion "
        "Adapter (strategy camera / object / hybrid). The progress bar shows the step and a live loss curve; "
        "Cancel stops after the current step and keeps the embeddings so far."
    )
    CATEGORY = "MotionKit/Motion Inversion"
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("MOTION_ADAPTER", "IMAGE", "IMAGE")
    RETURN_NAMES = ("adapter", "loss_curve", "preview")
    OUTPUT_TOOLTIPS = (
        "The trained motion embeddings (+ stored noise prior). Connect to Apply Motion Adapter and Noise Prior.",
        "The training loss over the steps, as an image.",
        "The last validation sample (first preview prompt) made with the default strategy; a black frame when "
        "there was none.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MOTION_MODEL", {
                    "tooltip": "The base video model from Load Video Model (unet3d: ZeroScope / ModelScope / "
                               "VideoCrafter2; or animatediff). Adapters already applied to it are ignored."}),
                "video": ("IMAGE", {
                    "tooltip": "The reference video as an IMAGE batch (e.g. from Load Reference Video), cut into "
                               "windows of 'frames' frames; each window is one training clip."}),
                "prompt": ("STRING", {
                    "default": "A car turnaround in a city street", "multiline": True,
                    "tooltip": "What the reference video shows (the reference trains with a plain description "
                               "of the clip)."}),
                "steps": ("INT", {
                    "default": 400, "min": 1, "max": 100000,
                    "tooltip": "Training steps (reference: 400; 'under 10 minutes' on a large GPU)."}),
                "learning_rate": ("FLOAT", {
                    "default": 0.02, "min": 1e-7, "max": 10.0, "step": 1e-4, "round": False,
                    "tooltip": "AdamW learning rate of the embeddings (reference: 0.02, weight decay 0.01). "
                               "Must be > 0."}),
                "loss": (LOSSES, {
                    "default": "mse",
                    "tooltip": "mse = plain noise-prediction MSE (the reference default); debiased = MSE + "
                               "MotionDirector's appearance-debiased temporal loss (the reference suggests it "
                               "for strongly deforming objects)."}),
                "frames": ("INT", {
                    "default": 24, "min": 1, "max": 128,
                    "tooltip": "Frames per training clip (reference: 24). Sampling later uses at most this many "
                               "frames unless resampling is on in Apply Motion Adapter."}),
                "width": ("INT", {
                    "default": 576, "min": 8, "max": MAX_SIZE, "step": 8,
                    "tooltip": "Training width in pixels (reference: 576 for ZeroScope). The Value embeddings are "
                               "tied to this size: sample at the same size (or turn on resampling)."}),
                "height": ("INT", {
                    "default": 320, "min": 8, "max": MAX_SIZE, "step": 8,
                    "tooltip": "Training height in pixels (reference: 320)."}),
                "save_name": ("STRING", {
                    "default": "motion_embeddings",
                    "tooltip": "File name in models/motion_adapters (a plain name, no folders). An existing file "
                               "of that name is replaced."}),
                "seed": ("INT", {
                    "default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                    "tooltip": "Seed of the run (noise, timesteps, dropout). The same seed and settings give the "
                               "same embeddings."}),
                "resume_from": resume_input(),
            },
            "optional": {
                "strategy": (STRATEGIES, {
                    "default": "hybrid",
                    "tooltip": "Default inference strategy stored in the file (and used for previews): hybrid / "
                               "object = frame-differenced Value embeddings, camera = Query-Key only, vanilla = "
                               "as trained. Apply Motion Adapter can override it."}),
                "video_fps": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 240.0, "step": 0.5,
                    "tooltip": "Frame rate of the input IMAGE batch (connect Load Reference Video's fps). Only "
                               "used with training_fps."}),
                "training_fps": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 240.0, "step": 0.5,
                    "tooltip": "Frame rate to sample the clips at when video_fps is known; 0 = every frame (the "
                               "reference)."}),
                "checkpoint_every": checkpoint_every_input(50),
                "preview_every": ("INT", {
                    "default": 100, "min": 0, "max": 100000,
                    "tooltip": "Make a validation sample every N steps (0 = only one at the end)."}),
                "preview_prompt": ("STRING", {
                    "default": "", "multiline": False,
                    "tooltip": "Prompt of the validation samples (empty = the training prompt; the reference "
                               "previews 'A skateboard slides along a city lane')."}),
                "preview_steps": ("INT", {
                    "default": 30, "min": 1, "max": 1000,
                    "tooltip": "Denoising steps of a validation sample (reference: 30, cfg 12)."}),
                "noise_prior": ("FLOAT", {
                    "default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                    "tooltip": "Default noise prior p stored in the file and used for previews (reference: 0.5 "
                               "blend with the DDIM-inverted reference)."}),
                "noise_prior_steps": ("INT", {
                    "default": 50, "min": 0, "max": 1000,
                    "tooltip": "DDIM inversion steps of the stored noise prior (reference: 50; 0 = none)."}),
                "weight_decay": ("FLOAT", {
                    "default": 0.01, "min": 0.0, "max": 1.0, "step": 1e-4, "round": False,
                    "tooltip": "AdamW weight decay (reference: 0.01)."}),
                "blocks": ("STRING", {
                    "default": "", "multiline": False,
                    "tooltip": "Temporal blocks to embed, comma separated (e.g. 'down_blocks.2, up_blocks.1' or "
                               "the reference's 'down:1280, up:1280'). Empty = the coarsest cross-attention down "
                               "and up blocks (the reference's choice)."}),
                "mixed_precision": (PRECISIONS, {
                    "default": "auto",
                    "tooltip": "Autocast on the GPU: auto follows the model's dtype. The embeddings stay fp32; "
                               "the CPU trains in fp32."}),
                "gradient_checkpointing": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "Recompute activations in the backward pass: much less memory, slower. The "
                               "reference trains with it on."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, save_name=None, learning_rate=None):
        problem = save_name_problem(save_name)
        if problem is not True:
            return problem
        if learning_rate is not None and not float(learning_rate) > 0:
            return f"learning_rate must be > 0, got {learning_rate}."
        return True

    def train(self, model, video, prompt, steps, learning_rate, loss, frames, width, height, save_name, seed,
              resume_from, strategy="hybrid", video_fps=0.0, training_fps=0.0, checkpoint_every=50,
              preview_every=100, preview_prompt="", preview_steps=30, noise_prior=0.5, noise_prior_steps=50,
              weight_decay=0.01, blocks="", mixed_precision="auto", gradient_checkpointing=True):
        from motion_core.methods.motion_inversion import MotionInversion, MotionInversionConfig
        from motion_core.motion_model import MotionModel
        from motion_core.training import TrainingConfig, VideoSource, train
        from motion_core.video import from_comfy_image

        name = host.safe_filename(save_name)
        base = MotionModel.wrap(model).base
        text = str(prompt).strip()
        if not text:
            raise InputError("The prompt is empty: describe what the reference video shows.")
        method = MotionInversion(MotionInversionConfig(
            learning_rate=float(learning_rate), weight_decay=float(weight_decay), loss=str(loss),
            strategy=str(strategy), noise_prior=float(noise_prior), noise_prior_steps=int(noise_prior_steps),
            blocks=str(blocks) if str(blocks).strip() else None))
        source = VideoSource(frames=from_comfy_image(video), fps=float(video_fps) or None)
        run_dir = training_root() / name
        use_fps = float(training_fps) if (float(video_fps) and float(training_fps)) else None
        config = TrainingConfig(
            steps=int(steps), seed=int(seed), frames=int(frames), fps=use_fps, width=int(width), height=int(height),
            checkpoint_every=int(checkpoint_every), validate_every=int(preview_every),
            mixed_precision=str(mixed_precision), gradient_checkpointing=bool(gradient_checkpointing),
            run_dir=str(run_dir), save_name=name, adapters_dir=str(host.motion_adapters_dir()))
        config.preview.prompts = [str(preview_prompt)] if str(preview_prompt).strip() else []
        config.preview.steps = int(preview_steps)
        config.preview.seed = int(seed)
        config.preview.noise_prior = method.default_noise_prior(1)
        resume = resolve_resume(name, resume_from)

        def run(progress, cancel):
            return train(base, method, [source], text, config, resume=resume, progress=progress,
                           cancel=cancel)

        return run_training("Train Motion Embeddings", int(steps), int(width), int(height), run)


NODE_CLASS_MAPPINGS = {
    "MotionKitTrainMotionEmbeddings": MotionKitTrainMotionEmbeddings,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "MotionKitTrainMotionEmbeddings": "Train Motion Embeddings (MotionKit)",
}
