"""MotionKit's library: motion customization of video diffusion models (no ComfyUI imports)."""

__version__ = "0.1.0"
