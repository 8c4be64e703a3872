"""Motion Inversion node: train motion embeddings (Query-Key + Value) from a reference video.

Thin declaration over :mod:`motion_core.methods.motion_inversion` and :mod:`motion_core.training`. The
trained embeddings are a MOTION_ADAPTER: Load / Apply Motion Adapter (strategy camera / object / hybrid,
strength, resampling) and Noise Prior take them like any other adapter, and they combine with LoRAs.
"""

from __future__ import annotations

from motion_core.errors import InputError

from . import host
from . import training_common as common
from .video_input import pick_reference

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
                "model": common.model_input("unet3d: ZeroScope / ModelScope / VideoCrafter2; animatediff; or wan"),
                "prompt": common.prompt_input(
                    "A car turnaround in a city street",
                    "What the reference video shows (the reference trains with a plain description of the clip)."),
                "steps": common.steps_input(400, "400; 'under 10 minutes' on a large GPU"),
                "learning_rate": common.learning_rate_input(
                    0.02, "of the embeddings (reference: 0.02, weight decay 0.01). Must be > 0", maximum=10.0,
                    step=1e-4),
                "loss": (LOSSES, {
                    "default": "mse",
                    "tooltip": "mse = plain noise-prediction MSE (the reference default); debiased = MSE + "
                               "MotionDirector's appearance-debiased temporal loss (the reference suggests it "
                               "for strongly deforming objects)."}),
                "frames": common.frames_input(24, "(reference: 24). Sampling later uses at most this many frames "
                                                  "unless resampling is on in Apply Motion Adapter."),
                "width": common.width_input(576, "The Value embeddings are tied to this size (reference: 576 for "
                                                 "ZeroScope): sample at the same size, or turn on resampling."),
                "height": common.height_input(320),
                "save_name": common.save_name_input("motion_embeddings"),
                "seed": common.seed_input("noise, timesteps, dropout"),
                "resume_from": common.resume_input(),
            },
            "optional": {
                "video": common.video_input("The reference video", "It is cut into windows of 'frames' frames; each "
                                                                   "window is one training clip."),
                "strategy": (STRATEGIES, {
                    "default": "hybrid",
                    "tooltip": "Default inference strategy stored in the file (and used for previews): hybrid / "
                               "object = frame-differenced Value embeddings, camera = Query-Key only, vanilla = "
                               "as trained. Apply Motion Adapter can override it."}),
                "video_fps": common.video_fps_input("Only used with training_fps."),
                "training_fps": common.training_fps_input(
                    0.0, "when the video's fps is known; 0 = every frame (the reference)", minimum=0.0),
                "checkpoint_every": common.checkpoint_every_input(50),
                "preview_every": common.preview_every_input(100),
                "preview_prompt": common.preview_prompt_input(
                    "the training prompt; the reference previews 'A skateboard slides along a city lane'"),
                "preview_steps": common.preview_steps_input(30, "reference: 30, cfg 12"),
                "noise_prior": common.noise_prior_input(0.5, "reference: 0.5 blend with the DDIM-inverted reference"),
                "noise_prior_steps": common.noise_prior_steps_input(50),
                "weight_decay": common.weight_decay_input(0.01),
                "blocks": ("STRING", {
                    "default": "", "multiline": False,
                    "tooltip": "Temporal blocks to embed, comma separated (e.g. 'down_blocks.2, up_blocks.1' or "
                               "the reference's 'down:1280, up:1280'). Empty = the coarsest cross-attention down "
                               "and up blocks (the reference's choice)."}),
                "mixed_precision": common.mixed_precision_input("The embeddings stay fp32; the CPU trains in fp32."),
                "gradient_checkpointing": common.gradient_checkpointing_input(),
                "core_video": common.core_video_input(),
                **common.scoring_inputs(),
                **common.speed_inputs(),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, save_name=None, learning_rate=None, resume_from=None):
        problem = common.training_problem(save_name, resume_from)
        if problem is not True:
            return problem
        if learning_rate is not None and not float(learning_rate) > 0:
            return f"learning_rate must be > 0, got {learning_rate}."
        return True

    def train(self, model, prompt, steps, learning_rate, loss, frames, width, height, save_name, seed,
              resume_from, strategy="hybrid", video_fps=0.0, training_fps=0.0, checkpoint_every=50,
              preview_every=100, preview_prompt="", preview_steps=30, noise_prior=0.5, noise_prior_steps=50,
              weight_decay=0.01, blocks="", mixed_precision="auto", gradient_checkpointing=True, video=None,
              core_video=None, score_checkpoints=False, keep_best=False,
              clip=None, checkpointing="auto", compile=False):
        from motion_core.methods.motion_inversion import MotionInversion, MotionInversionConfig
        from motion_core.motion_model import MotionModel
        from motion_core.training import VideoSource, train
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
        reference = pick_reference(video, core_video, video_fps, image_name="video", video_name="core_video")
        source = VideoSource(frames=from_comfy_image(reference.frames), fps=reference.fps)
        use_fps = float(training_fps) if (reference.fps and float(training_fps)) else None
        config = common.training_config(
            name, **common.scoring_options(score_checkpoints, keep_best, clip), steps=steps, seed=seed, frames=frames, fps=use_fps, width=width, height=height,
            checkpoint_every=checkpoint_every, preview_every=preview_every, preview_prompt=preview_prompt,
            preview_steps=preview_steps, mixed_precision=mixed_precision,
            gradient_checkpointing=common.checkpointing_choice(gradient_checkpointing, checkpointing),
            compile="on" if compile else "off", preview_noise_prior=method.default_noise_prior(1))
        resume = common.resolve_resume(name, resume_from)

        def run(progress, cancel):
            return train(base, method, [source], text, config, resume=resume, progress=progress,
                           cancel=cancel)

        return common.run_training("Train Motion Embeddings", int(steps), int(width), int(height), run)


NODE_CLASS_MAPPINGS = {
    "MotionKitTrainMotionEmbeddings": MotionKitTrainMotionEmbeddings,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "MotionKitTrainMotionEmbeddings": "Train Motion Embeddings (MotionKit)",
}
