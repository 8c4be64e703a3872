"""Loaders: a video model (-> MOTION_MODEL) and a reference video (-> IMAGE frames)."""

from __future__ import annotations

import json
from pathlib import Path

from motion_core.errors import InputError, ModelLoadError, VideoError

from . import host, model_files

HUB_ENTRY = "(hub id below)"
NO_ADAPTER = "none"
AUTO = "auto"
NO_FILE = "none"
FAMILIES = ["auto", "unet3d", "animatediff", "wan"]
DTYPES = ["auto", "fp32", "fp16", "bf16"]
DEVICES = ["auto", "cuda", "cpu"]
MAX_FRAMES = 4096
MAX_SIZE = 8192


class MotionKitLoadVideoModel:
    DESCRIPTION = (
        "Loads a text-to-video diffusion model and gives a MOTION_MODEL that MotionKit's sampler and method nodes "
        "use. ComfyUI's own files: a Wan diffusion model from models/diffusion_models (Wan 2.1 T2V 1.3B/14B, "
        "Wan 2.2 TI2V-5B, Wan 2.2 A14B as high-noise + low-noise pair) with its umt5-xxl text encoder "
        "(models/text_encoders) and VAE (models/vae); or an SD1.5 checkpoint from models/checkpoints with an "
        "AnimateDiff motion module from models/animatediff_models. Diffusers folders in models/diffusers work "
        "too (ZeroScope v2, ModelScope 1.7b, VideoCrafter2, AnimateDiff, Wan), and a Hugging Face hub id when "
        "the machine is online."
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
                "model": (model_files.list_video_models() + model_files.list_video_model_files() + [HUB_ENTRY], {
                    "tooltip": "The model. Files (names ending .safetensors / .ckpt): a Wan diffusion model from "
                               "ComfyUI/models/diffusion_models (e.g. wan2.1_t2v_1.3B_fp16.safetensors; set "
                               "text_encoder and vae below) or an SD1.5 checkpoint from models/checkpoints (set "
                               "motion_adapter). Folders: a diffusers model in models/diffusers whose "
                               "model_index.json names a model MotionKit loads (UNet3D, AnimateDiff or SD1.5, "
                               f"Wan). Other files and folders are not listed. Choose '{HUB_ENTRY}' to load the "
                               "hub id typed below instead."}),
                "hub_id": ("STRING", {
                    "default": "", "multiline": False,
                    "placeholder": "e.g. cerspense/zeroscope_v2_576w",
                    "tooltip": "A Hugging Face hub id (e.g. cerspense/zeroscope_v2_576w). When not empty it "
                               "is used instead of the folder above. Downloads need the network; offline, "
                               "only models already in the Hugging Face cache load."}),
                "family": (FAMILIES, {
                    "default": "auto",
                    "tooltip": "Model family. 'auto' reads it from the folder's config or the file's weights "
                               "(UNet3D -> unet3d; UNetMotionModel, or SD1.5 with a motion module -> "
                               "animatediff; Wan -> wan: Wan 2.1 / 2.2 TI2V-5B / 2.2 A14B)."}),
                "dtype": (DTYPES, {
                    "default": "auto",
                    "tooltip": "Weight precision. 'auto' = fp16 on a GPU, fp32 on the CPU. bf16 needs a "
                               "recent GPU; fp32 uses twice the memory of fp16. fp8 files are upcast to this "
                               "precision when they load (twice the fp8 file's size in fp16/bf16)."}),
                "device": (DEVICES, {
                    "default": "auto",
                    "tooltip": "Where the model runs. 'auto' = ComfyUI's main device (the GPU if there is "
                               "one)."}),
                "motion_adapter": ([NO_ADAPTER] + host.list_animatediff_motion_adapters()
                                   + model_files.list_motion_module_files(), {
                    "default": NO_ADAPTER,
                    "tooltip": "For AnimateDiff from an SD1.5 checkpoint or folder: the motion module -- a file "
                               "from ComfyUI/models/animatediff_models (v3_sd15_mm.ckpt, mm_sd_v15_v2.ckpt) or a "
                               "diffusers MotionAdapter folder from models/diffusers. 'none' for models that "
                               "already contain their motion module."}),
            },
            # Added after the first release: optional, so workflows saved before keep loading as they were.
            "optional": {
                "text_encoder": ([AUTO] + model_files.list_text_encoder_files(), {
                    "default": AUTO,
                    "tooltip": "Wan files only: the umt5-xxl text encoder from ComfyUI/models/text_encoders "
                               "(umt5_xxl_fp16.safetensors, or umt5_xxl_fp8_e4m3fn_scaled.safetensors). 'auto' = "
                               "the only umt5 file there. Ignored for folders and SD1.5 checkpoints."}),
                "vae": ([AUTO] + model_files.list_vae_files(), {
                    "default": AUTO,
                    "tooltip": "Wan files: the VAE from ComfyUI/models/vae (wan_2.1_vae.safetensors; "
                               "wan2.2_vae.safetensors for Wan 2.2 TI2V-5B). 'auto' = the one that fits the "
                               "model. SD1.5 checkpoint: 'auto' = the checkpoint's own VAE, or pick an SD VAE."}),
                "low_noise_model": ([NO_FILE] + model_files.list_wan_model_files(), {
                    "default": NO_FILE,
                    "tooltip": "Wan 2.2 A14B only: the low-noise expert (wan2.2_t2v_low_noise_14B_fp16."
                               "safetensors) from ComfyUI/models/diffusion_models; 'model' is then the high-noise "
                               "one. 'none' for every other model."}),
                "attention": (["native", "auto", "xformers", "flash", "sage"], {
                    "default": "native",
                    "tooltip": "Attention kernels of the denoiser and of MotionKit's capture / guidance / "
                               "embedding layers: native = PyTorch SDPA; xformers, flash (flash-attn) and sage "
                               "(SageAttention: sampling only, no training) when installed, CUDA only; auto = the "
                               "best one installed that runs here. A backend that is missing or cannot run on "
                               "the device is an error."}),
            },
        }

    # Taking the combos here makes the host skip its own check of them (execution.validate_inputs), so we check
    # them ourselves: a file or folder that vanished is reported with where we looked, one of a family MotionKit
    # cannot load says so. Linked (non-constant) inputs arrive as None.
    @classmethod
    def VALIDATE_INPUTS(cls, model=None, hub_id=None, motion_adapter=None, text_encoder=None, vae=None,
                        low_noise_model=None):
        if motion_adapter is not None and motion_adapter != NO_ADAPTER and \
                motion_adapter not in host.list_animatediff_motion_adapters() + model_files.list_motion_module_files():
            where = ", ".join(str(p) for kind in ("diffusers", host.ANIMATEDIFF_MODELS) for p in host.models_dirs(kind))
            return (f"motion_adapter '{motion_adapter}' is neither an AnimateDiff motion module file nor a "
                    f"MotionAdapter folder in {where}; pick one from the list or 'none'.")
        for value, listed, what in ((text_encoder, model_files.list_text_encoder_files, "text_encoder"),
                                    (vae, model_files.list_vae_files, "vae"),
                                    (low_noise_model, model_files.list_wan_model_files, "low_noise_model")):
            if value is not None and value not in (AUTO, NO_FILE) and value not in listed():
                kind = {"text_encoder": host.TEXT_ENCODERS, "vae": host.VAE}.get(what, host.DIFFUSION_MODELS)
                where = ", ".join(str(p) for p in host.models_dirs(kind))
                return f"{what} '{value}' was not found in {where} (or is not a file of that kind); pick one from the list."
        if model is None or hub_id is None:
            return True
        if str(hub_id).strip():
            return True
        if model == HUB_ENTRY:
            return f"Model is '{HUB_ENTRY}' but hub_id is empty: type a hub id or pick a model folder."
        if model_files.is_file_name(model):
            return cls._file_problem(model, motion_adapter, low_noise_model)
        problem = model_files.video_model_problem(model)
        if problem is not True:
            return problem
        if motion_adapter == NO_ADAPTER and model_files.video_model_kind(host.diffusers_model_path(model)).family \
                == "sd15":
            return (f"'{model}' is a Stable Diffusion 1.5 image model: pick an AnimateDiff motion module in "
                    "motion_adapter (e.g. v3_sd15_mm.ckpt or animatediff-motion-adapter-v1-5-3) to make it a video "
                    "model.")
        return True

    @staticmethod
    def _file_problem(model: str, motion_adapter, low_noise_model) -> str | bool:
        if model not in model_files.list_video_model_files():
            where = ", ".join(str(p) for kind in (host.DIFFUSION_MODELS, host.CHECKPOINTS)
                              for p in host.models_dirs(kind))
            return f"Model file '{model}' was not found in {where} (or is not a Wan or SD1.5 model)."
        kind = model_files.weights_kind(model_files.video_model_file_path(model))
        if kind is not None and kind.family == "sd15" and motion_adapter == NO_ADAPTER:
            return (f"'{model}' is a Stable Diffusion 1.5 checkpoint (an image model): pick an AnimateDiff motion "
                    "module in motion_adapter (e.g. v3_sd15_mm.ckpt from models/animatediff_models).")
        if kind is not None and kind.family == "wan" and low_noise_model is not None:
            from motion_core.backbones.wan_files import check_expert_pair

            low = None if low_noise_model == NO_FILE else host.model_file_path(host.DIFFUSION_MODELS, low_noise_model)
            try:
                check_expert_pair(model_files.video_model_file_path(model), low)
            except ModelLoadError as exc:
                return str(exc)
        return True

    def load(self, model, hub_id, family, dtype, device, motion_adapter, text_encoder=AUTO, vae=AUTO,
             low_noise_model=NO_FILE, attention="native"):
        from motion_core.backbones import load_video_model
        from motion_core.motion_model import MotionModel

        hub_id = str(hub_id).strip()
        files: dict = {}
        if hub_id:
            source: str = hub_id
        elif model == HUB_ENTRY:
            raise InputError(f"Model is '{HUB_ENTRY}' but hub_id is empty: type a hub id or pick a folder.")
        elif model_files.is_file_name(model):
            source = str(model_files.video_model_file_path(model))
            files = {
                "text_encoder": AUTO if text_encoder in (None, AUTO) else
                str(host.model_file_path(host.TEXT_ENCODERS, text_encoder)),
                "vae": AUTO if vae in (None, AUTO) else str(host.model_file_path(host.VAE, vae)),
                "low_noise_model": None if low_noise_model in (None, NO_FILE) else
                str(host.model_file_path(host.DIFFUSION_MODELS, low_noise_model)),
                "companion_folders": {"text_encoder": host.models_dirs(host.TEXT_ENCODERS),
                                      "vae": host.models_dirs(host.VAE)},
            }
        else:
            source = str(host.diffusers_model_path(model))
        adapter = None
        if motion_adapter not in (None, "", NO_ADAPTER):
            adapter = str(host.model_file_path(host.ANIMATEDIFF_MODELS, motion_adapter)
                          if model_files.is_file_name(motion_adapter) else host.diffusers_model_path(motion_adapter))
        torch_device = host.torch_device(device)
        host.free_host_memory()
        video_model = load_video_model(source, family=family, dtype=host.weight_dtype(dtype, torch_device),
                                       device=str(torch_device), motion_adapter=adapter, **files)
        if attention not in (None, "native"):
            from motion_core.attention.backends import apply_attention_backend

            apply_attention_backend(video_model, attention)
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
