"""Loaders: a video model (-> MOTION_MODEL) and a reference video (-> IMAGE frames)."""

from __future__ import annotations

import json
from pathlib import Path

from motion_core.errors import InputError, VideoError

from . import host, model_files

HUB_ENTRY = "(hub id below)"
NO_ADAPTER = "none"
FAMILIES = ["auto", "unet3d", "animatediff", "wan"]
DTYPES = ["auto", "fp32", "fp16", "bf16"]
DEVICES = ["auto", "cuda", "cpu"]
MAX_FRAMES = 4096
MAX_SIZE = 8192


class MotionKitLoadVideoModel:
    DESCRIPTION = (
        "Loads a text-to-video diffusion model in diffusers layout and gives a MOTION_MODEL that MotionKit's "
        "sampler and method nodes use. Families: unet3d (ZeroScope v2, ModelScope 1.7b, VideoCrafter2), "
        "animatediff (an SD1.5 model + an AnimateDiff MotionAdapter) and wan (Wan 2.1 T2V 1.3B/14B, Wan 2.2 "
        "TI2V-5B and A14B in diffusers layout). Models are folders in "
        "ComfyUI/models/diffusers; a Hugging Face hub id works too when the machine is online."
    )
    CATEGORY = "MotionKit/Loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("MOTION_MODEL", "STRING")
    RETURN_NAMES = ("model", "info")
    OUTPUT_TOOLTIPS = (
        "The loaded video model. Connect it to Motion Sampler or to a MotionKit method node.",
        "What was loaded (family, size multiple, default size, frame limits, dtype, device) as JSON text.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (model_files.list_video_models() + [HUB_ENTRY], {
                    "tooltip": "A model folder from ComfyUI/models/diffusers whose model_index.json names a "
                               "model MotionKit loads (UNet3D, AnimateDiff or Stable Diffusion 1.5, Wan); other "
                               f"folders are not listed. Choose '{HUB_ENTRY}' to load the hub id typed below "
                               "instead."}),
                "hub_id": ("STRING", {
                    "default": "", "multiline": False,
                    "placeholder": "e.g. cerspense/zeroscope_v2_576w",
                    "tooltip": "A Hugging Face hub id (e.g. cerspense/zeroscope_v2_576w). When not empty it "
                               "is used instead of the folder above. Downloads need the network; offline, "
                               "only models already in the Hugging Face cache load."}),
                "family": (FAMILIES, {
                    "default": "auto",
                    "tooltip": "Model family. 'auto' reads it from the model's config (UNet3D -> unet3d; "
                               "UNetMotionModel or an SD1.5 UNet with a motion adapter -> animatediff; "
                               "WanTransformer3DModel -> wan: Wan 2.1 / 2.2 TI2V-5B / 2.2 A14B)."}),
                "dtype": (DTYPES, {
                    "default": "auto",
                    "tooltip": "Weight precision. 'auto' = fp16 on a GPU, fp32 on the CPU. bf16 needs a "
                               "recent GPU; fp32 uses twice the memory of fp16."}),
                "device": (DEVICES, {
                    "default": "auto",
                    "tooltip": "Where the model runs. 'auto' = ComfyUI's main device (the GPU if there is "
                               "one)."}),
                "motion_adapter": ([NO_ADAPTER] + host.list_animatediff_motion_adapters(), {
                    "default": NO_ADAPTER,
                    "tooltip": "For AnimateDiff from a plain SD1.5 folder: an AnimateDiff MotionAdapter "
                               "folder (v2 or v3, diffusers layout) from ComfyUI/models/diffusers. "
                               "'none' for models that already contain their motion module."}),
            }
        }

    # Taking `model` and `motion_adapter` here makes the host skip its own combo check for them
    # (execution.validate_inputs), so we check them ourselves: a folder that vanished is reported with where
    # we looked, one of a family MotionKit cannot load says so. Linked (non-constant) inputs arrive as None.
    @classmethod
    def VALIDATE_INPUTS(cls, model=None, hub_id=None, motion_adapter=None):
        if motion_adapter is not None and motion_adapter != NO_ADAPTER and \
                motion_adapter not in host.list_animatediff_motion_adapters():
            where = ", ".join(str(p) for p in host.models_dirs("diffusers"))
            return (f"motion_adapter '{motion_adapter}' is not an AnimateDiff MotionAdapter folder in {where} "
                    "(a folder whose config.json names MotionAdapter); pick one from the list or 'none'.")
        if model is None or hub_id is None:
            return True
        if str(hub_id).strip():
            return True
        if model == HUB_ENTRY:
            return f"Model is '{HUB_ENTRY}' but hub_id is empty: type a hub id or pick a model folder."
        problem = model_files.video_model_problem(model)
        if problem is not True:
            return problem
        if motion_adapter == NO_ADAPTER and model_files.video_model_kind(host.diffusers_model_path(model)).family \
                == "sd15":
            return (f"'{model}' is a Stable Diffusion 1.5 image model: pick an AnimateDiff MotionAdapter folder in "
                    "motion_adapter (e.g. animatediff-motion-adapter-v1-5-3) to make it a video model.")
        return True

    def load(self, model, hub_id, family, dtype, device, motion_adapter):
        from motion_core.backbones import load_video_model
        from motion_core.motion_model import MotionModel

        hub_id = str(hub_id).strip()
        if hub_id:
            source: str = hub_id
        elif model == HUB_ENTRY:
            raise InputError(f"Model is '{HUB_ENTRY}' but hub_id is empty: type a hub id or pick a folder.")
        else:
            source = str(host.diffusers_model_path(model))
        adapter = None if motion_adapter in (None, "", NO_ADAPTER) else str(
            host.diffusers_model_path(motion_adapter))
        torch_device = host.torch_device(device)
        host.free_host_memory()
        video_model = load_video_model(source, family=family, dtype=host.weight_dtype(dtype, torch_device),
                                       device=str(torch_device), motion_adapter=adapter)
        info = json.dumps(video_model.describe(), indent=1)
        return (MotionModel.wrap(video_model), info)


class MotionKitLoadReferenceVideo:
    DESCRIPTION = (
        "Loads a reference video from ComfyUI's input folder (upload one with the button) as IMAGE frames, "
        "optionally re-timed to a target fps and resized + center-cropped. Any other IMAGE batch (e.g. from "
        "VideoHelperSuite or core Load Video -> Get Video Components) works as a reference too."
    )
    CATEGORY = "MotionKit/Loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "FLOAT", "INT")
    RETURN_NAMES = ("frames", "fps", "frame_count")
    OUTPUT_TOOLTIPS = (
        "The selected frames as an IMAGE batch [frames, height, width, 3] in 0..1.",
        "Frame rate of the returned frames (the file's rate divided by the frame stride).",
        "Number of frames returned.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                # "video_upload": the V1 spelling of what the core Load Video node declares as
                # Combo(upload=UploadType.video): the frontend adds an upload button that stores the file in
                # the input folder and refreshes this list.
                "video": (host.list_input_videos(), {
                    "video_upload": True,
                    "tooltip": "A video file in ComfyUI's input folder. Use the upload button to add one."}),
                "frames": ("INT", {
                    "default": 16, "min": 0, "max": MAX_FRAMES, "step": 1,
                    "tooltip": "How many frames to take. 0 = every frame (after the fps stride). Too few "
                               "frames in the file is an error that says how many there are."}),
                "fps": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 240.0, "step": 0.5,
                    "tooltip": "Target frame rate: every round(file fps / fps)-th frame is taken. "
                               "0 = the file's own rate (every frame)."}),
                "width": ("INT", {
                    "default": 0, "min": 0, "max": MAX_SIZE, "step": 8,
                    "tooltip": "Output width in pixels; the frames are scaled to cover it and center-"
                               "cropped. 0 = keep the file's width (or follow the height's aspect ratio)."}),
                "height": ("INT", {
                    "default": 0, "min": 0, "max": MAX_SIZE, "step": 8,
                    "tooltip": "Output height in pixels (scale to cover + center crop). 0 = keep the file's "
                               "height (or follow the width's aspect ratio)."}),
                "start_frame": ("INT", {
                    "default": 0, "min": 0, "max": 1_000_000, "step": 1,
                    "tooltip": "First frame of the file to use (0 = the beginning)."}),
            }
        }

    @classmethod
    def IS_CHANGED(cls, video, **_):
        try:
            return host.file_fingerprint(host.annotated_input_path(video))
        except InputError:
            return float("nan")

    @classmethod
    def VALIDATE_INPUTS(cls, video=None):
        if video is None:
            return True
        try:
            path = host.annotated_input_path(video)
        except InputError as exc:
            return str(exc)
        if not Path(path).is_file():
            return f"Video file not found: {video} (looked in {Path(path).parent})."
        return True

    def load(self, video, frames, fps, width, height, start_frame):
        from motion_core.video import load_video, to_comfy_image

        path = host.annotated_input_path(video)
        if not Path(path).is_file():
            raise VideoError(f"Video file not found: {video} (looked in {Path(path).parent}).")
        clip = load_video(path, num_frames=int(frames) or None, fps=float(fps) or None,
                          start=int(start_frame), width=int(width) or None, height=int(height) or None)
        return (to_comfy_image(clip.frames), float(clip.fps), int(clip.num_frames))


NODE_CLASS_MAPPINGS = {
    "MotionKitLoadVideoModel": MotionKitLoadVideoModel,
    "MotionKitLoadReferenceVideo": MotionKitLoadReferenceVideo,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "MotionKitLoadVideoModel": "Load Video Model (MotionKit)",
    "MotionKitLoadReferenceVideo": "Load Reference Video (MotionKit)",
}
