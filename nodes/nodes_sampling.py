"""Motion Sampler: text-to-video with a MOTION_MODEL (and whatever adapters/guidance it carries)."""

from __future__ import annotations

from . import host

MAX_SEED = 0xFFFF_FFFF_FFFF_FFFF
MAX_SIZE = 8192
DEFAULT_PROMPT = "a red square sliding to the right on a dark background"


def _scheduler_names() -> list[str]:
    from motion_core.sampling import SCHEDULERS

    return list(SCHEDULERS)


class MotionKitSampler:
    DESCRIPTION = (
        "Generates videos from a prompt with a MOTION_MODEL: MotionKit's own denoising loop with "
        "classifier-free guidance, applying every adapter, guidance and noise prior the model carries. "
        "Shows progress and stops between steps when you press Cancel. Same seed and settings give the "
        "same frames."
    )
    CATEGORY = "MotionKit/Sampling"
    FUNCTION = "sample"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = (
        "The generated frames as an IMAGE batch [videos x frames, height, width, 3]: the frames of the first "
        "video, then those of the next one. Connect a video/animation save node (e.g. Save Animated WEBP).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        schedulers = _scheduler_names()
        return {
            "required": {
                "model": ("MOTION_MODEL", {
                    "tooltip": "The video model from Load Video Model (optionally through MotionKit "
                               "method nodes that add motion adapters or guidance)."}),
                "prompt": ("STRING", {
                    "default": DEFAULT_PROMPT, "multiline": True, "dynamicPrompts": True,
                    "tooltip": "What the video shows. Text beyond the model's token limit (77 for CLIP) is "
                               "cut off with a warning."}),
                "negative_prompt": ("STRING", {
                    "default": "", "multiline": True, "dynamicPrompts": True,
                    "tooltip": "What the video should not show (the unconditional side of classifier-free "
                               "guidance). Empty = the plain unconditional prediction."}),
                "seed": ("INT", {
                    "default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                    "tooltip": "Random seed of the starting noise. The same seed and settings give the same "
                               "video on the same device."}),
                "steps": ("INT", {
                    "default": 25, "min": 1, "max": 1000, "step": 1,
                    "tooltip": "Denoising steps. More is slower and usually cleaner; 25-50 is typical."}),
                "cfg": ("FLOAT", {
                    "default": 9.0, "min": 1.0, "max": 30.0, "step": 0.1, "round": 0.01,
                    "tooltip": "Classifier-free guidance scale (diffusers convention): 1 = off, higher = "
                               "follows the prompt more closely. ZeroScope/ModelScope like ~9, AnimateDiff "
                               "~7.5."}),
                "width": ("INT", {
                    "default": 0, "min": 0, "max": MAX_SIZE, "step": 8,
                    "tooltip": "Video width in pixels. 0 = the model's own size (e.g. 576 for ZeroScope v2 "
                               "576w, 512 for AnimateDiff). Must be a multiple of the model's size multiple "
                               "(8 or more; the error names the nearest valid sizes)."}),
                "height": ("INT", {
                    "default": 0, "min": 0, "max": MAX_SIZE, "step": 8,
                    "tooltip": "Video height in pixels. 0 = the model's own size (e.g. 320 for ZeroScope v2 "
                               "576w). Must be a multiple of the model's size multiple."}),
                "frames": ("INT", {
                    "default": 0, "min": 0, "max": 1024, "step": 1,
                    "tooltip": "Frames per video. 0 = the model's default (16). The loader's info output "
                               "lists the frame counts the model accepts."}),
                "scheduler": (schedulers, {
                    "default": "ddim" if "ddim" in schedulers else schedulers[0],
                    "tooltip": "Sampler. ddim is the reference samplers' choice and the only one that "
                               "guidance methods (MotionClone) support."}),
                "batch_size": ("INT", {
                    "default": 1, "min": 1, "max": 64, "step": 1,
                    "tooltip": "Videos to generate from the prompt in one run (each from its own noise)."}),
            }
        }

    def sample(self, model, prompt, negative_prompt, seed, steps, cfg, width, height, frames, scheduler,
               batch_size=1):
        from motion_core.sampling import SampleRequest, sample
        from motion_core.video import to_comfy_image

        request = SampleRequest(
            prompt=str(prompt), negative_prompt=str(negative_prompt), width=int(width) or None,
            height=int(height) or None, num_frames=int(frames) or None, steps=int(steps), cfg=float(cfg),
            seed=int(seed), scheduler=str(scheduler), videos_per_prompt=int(batch_size),
        )
        host.free_host_memory()
        progress = host.Progress(int(steps), label="Motion Sampler")
        with host.cancellation():
            result = sample(model, request, progress=progress, cancel=host.cancel_requested)
        return (to_comfy_image(result.frames),)


NODE_CLASS_MAPPINGS = {
    "MotionKitSampler": MotionKitSampler,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "MotionKitSampler": "Motion Sampler (MotionKit)",
}
