"""MotionClone nodes: extract / save / load a motion representation, apply its guidance, SparseCtrl.

Chain: Load Video Model -> Extract Motion Representation (reference IMAGE) -> Apply MotionClone Guidance
-> Motion Sampler. For image/sketch-to-video: Load SparseCtrl -> SparseCtrl Condition -> into both the
extraction and the guidance node. The sampler's progress names each step ("motion guidance" or
"sampling") and Cancel stops between steps (also while guiding).
"""

from __future__ import annotations

import json

from motion_core.errors import InputError

from . import host, model_files
from .video_input import pick_reference, reference_video_input

MAX_SEED = 0xFFFF_FFFF_FFFF_FFFF
MAX_SIZE = 8192
PRESETS = ["camera", "object", "i2v_rgb", "i2v_sketch", "custom"]
HUB_ENTRY = "(hub id below)"
NO_FILES = "(none saved yet)"


class MotionKitExtractMotionRepresentation:
    DESCRIPTION = (
        "MotionClone step 1: reads the motion of a reference video in one noisy forward pass. The frames are "
        "spread over the whole clip, resized to the generation's size, noised at the given timestep with the "
        "seed's noise, and the model's temporal attention in the guided layers is kept as a sparse map (the "
        "top-k key frames of every row). Use the SAME frames, width, height and seed in the Motion Sampler: "
        "the representation is tied to that size, and with the same seed the generation starts from the "
        "very noise used here, as in the reference implementation."
    )
    CATEGORY = "MotionKit/MotionClone"
    FUNCTION = "extract"
    RETURN_TYPES = ("MOTION_REPRESENTATION", "STRING")
    RETURN_NAMES = ("representation", "info")
    OUTPUT_TOOLTIPS = (
        "The motion representation: connect it to Apply MotionClone Guidance or Save Motion Representation.",
        "What was extracted (family, size, frames, layers, k, timestep, bytes) as JSON text.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MOTION_MODEL", {
                    "tooltip": "The video model that will generate (AnimateDiff or UNet3D). Adapters it carries "
                               "are active during extraction, as they will be during guidance."}),
                "frames": ("INT", {
                    "default": 16, "min": 0, "max": 1024, "step": 1,
                    "tooltip": "Frames of the generation (and of the representation), spread uniformly over "
                               "the whole reference. 0 = the model's default (16). Must equal the sampler's "
                               "frames."}),
                "width": ("INT", {
                    "default": 512, "min": 0, "max": MAX_SIZE, "step": 8,
                    "tooltip": "Generation width in pixels (the reference is scaled to cover it and center-"
                               "cropped). 0 = the model's own size. Must equal the sampler's width."}),
                "height": ("INT", {
                    "default": 512, "min": 0, "max": MAX_SIZE, "step": 8,
                    "tooltip": "Generation height in pixels. 0 = the model's own size. Must equal the "
                               "sampler's height."}),
                "seed": ("INT", {
                    "default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                    "tooltip": "Seed of the extraction noise (and of the VAE sample). Use the Motion "
                               "Sampler's seed: the generation then starts from this exact noise, as the "
                               "reference implementation does."}),
                "timestep": ("INT", {
                    "default": 400, "min": 0, "max": 999, "step": 1,
                    "tooltip": "Noise level of the single extraction pass (t_alpha). 400 is the reference "
                               "value: noisy enough to drop appearance, clean enough to keep the layout. Wan "
                               "(flow matching, noise level t/1000): use 600, the same signal-to-noise ratio."}),
                "k": ("INT", {
                    "default": 1, "min": 1, "max": 1024, "step": 1,
                    "tooltip": "Key frames kept per attention row (top-k). 1 = the paper's sparse mask; "
                               "must not exceed the frame count."}),
            },
            "optional": {
                "reference_video": ("IMAGE", {
                    "tooltip": "The reference clip as an IMAGE batch (e.g. from Load Reference Video with "
                               "frames = 0 to keep them all); its motion is what gets cloned. Or connect a "
                               "VIDEO to core_video instead."}),
                "sparsectrl": ("SPARSECTRL_CONDITION", {
                    "tooltip": "For image/sketch-to-video: the SparseCtrl condition used for generation. "
                               "Extraction runs its ControlNet on the reference's own frames at the same "
                               "frame indices, as the reference implementation does."}),
                "core_video": reference_video_input("the reference clip (instead of reference_video)"),
            },
        }

    def extract(self, model, frames, width, height, seed, timestep, k, reference_video=None, sparsectrl=None,
                core_video=None):
        from motion_core.methods.motion_clone import extract_motion_representation
        from motion_core.video import from_comfy_image

        reference = pick_reference(reference_video, core_video, image_name="reference_video",
                                   video_name="core_video")
        host.free_host_memory()
        representation = extract_motion_representation(
            model, from_comfy_image(reference.frames), num_frames=int(frames) or None, width=int(width) or None,
            height=int(height) or None, seed=int(seed), timestep=int(timestep), k=int(k), sparsectrl=sparsectrl,
            source="reference_video")
        return (representation, json.dumps(representation.describe(), indent=1))


class MotionKitSaveMotionRepresentation:
    DESCRIPTION = (
        "Saves a motion representation as a .safetensors file in ComfyUI/models/motion_adapters, so the same "
        "motion can be reused in any number of generations (Load Motion Representation)."
    )
    CATEGORY = "MotionKit/MotionClone"
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("file_name",)
    OUTPUT_TOOLTIPS = ("The saved file's name inside the motion_adapters folder.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "representation": ("MOTION_REPRESENTATION", {
                    "tooltip": "The motion representation from Extract Motion Representation."}),
                "file_name": ("STRING", {
                    "default": "motionclone_motion",
                    "tooltip": "A plain file name (no folders); '.safetensors' is added. An existing file of "
                               "that name is replaced."}),
            }
        }

    def save(self, representation, file_name):
        name = host.safe_filename(str(file_name))
        if not name.endswith(".safetensors"):
            name += ".safetensors"
        path = representation.save(host.motion_adapters_dir() / name)
        return {"ui": {"text": [str(path.name)]}, "result": (path.name,)}


class MotionKitLoadMotionRepresentation:
    DESCRIPTION = (
        "Loads a motion representation saved by Save Motion Representation (from ComfyUI/models/"
        "motion_adapters). It only guides generations with the family, size and frame count it was extracted "
        "for; the info output says which."
    )
    CATEGORY = "MotionKit/MotionClone"
    FUNCTION = "load"
    RETURN_TYPES = ("MOTION_REPRESENTATION", "STRING")
    RETURN_NAMES = ("representation", "info")
    OUTPUT_TOOLTIPS = (
        "The motion representation: connect it to Apply MotionClone Guidance.",
        "What the file holds (family, size, frames, layers, k, timestep) as JSON text.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "representation": (model_files.list_motion_representation_files() or [NO_FILES], {
                    "tooltip": "A motion representation in ComfyUI/models/motion_adapters saved by Save Motion "
                               "Representation (only those are listed; LoRAs and motion embeddings there are "
                               "for Load Motion Adapter)."}),
            }
        }

    @classmethod
    def IS_CHANGED(cls, representation, **_):
        try:
            return host.file_fingerprint(host.motion_adapter_path(representation))
        except InputError:
            return float("nan")

    # Taking `representation` makes the host skip its combo check: the placeholder, a missing file and a
    # file of another kind are refused here, when the prompt is queued.
    @classmethod
    def VALIDATE_INPUTS(cls, representation=None):
        if representation is None:
            return True
        if representation == NO_FILES:
            return ("No motion representation in models/motion_adapters yet: save one with Save Motion "
                    "Representation first (then press 'r' to refresh the list).")
        return model_files.motion_file_problem(representation, model_files.REPRESENTATION)

    def load(self, representation):
        from motion_core.adapters.representation import MotionRepresentation

        if representation == NO_FILES:
            raise InputError("No motion representation saved yet: save one with Save Motion Representation first.")

        loaded = MotionRepresentation.load(host.motion_adapter_path(representation))
        return (loaded, json.dumps(loaded.describe(), indent=1))


class MotionKitApplyMotionClone:
    DESCRIPTION = (
        "MotionClone step 2: returns a MOTION_MODEL whose sampling is guided by the motion representation "
        "(gradient of the temporal-attention mismatch, applied in the first, noisiest steps). Presets are "
        "the reference settings: camera = 100 steps with 50 guided over the top 30% of the noise range, "
        "object = 300 steps with 180 guided over the top 40% (i2v_rgb 100/40/0.3, i2v_sketch 200/120/0.4). "
        "The Motion Sampler's steps are always the steps that run: on another step count a preset's guided "
        "steps and ramps are scaled in proportion (camera on 30 steps: 15 guided), and the log says so; set "
        "the sampler to the preset's steps for the reference's exact schedule. 'custom' uses the widgets "
        "below. Use the DDIM scheduler and cfg 8.5 (= the reference's 7.5) in the Motion Sampler."
    )
    CATEGORY = "MotionKit/MotionClone"
    FUNCTION = "apply"
    RETURN_TYPES = ("MOTION_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with MotionClone guidance: connect it to the Motion Sampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MOTION_MODEL", {
                    "tooltip": "The video model to guide (the same one the representation was extracted "
                               "with)."}),
                "representation": ("MOTION_REPRESENTATION", {
                    "tooltip": "The motion to clone, from Extract or Load Motion Representation."}),
                "preset": (PRESETS, {
                    "default": "camera",
                    "tooltip": "Schedule: camera (made for 100 steps, 50 guided, fraction 0.3) for camera moves, "
                               "object (300, 180, 0.4) for object motion, i2v_rgb / i2v_sketch for SparseCtrl; "
                               "custom = the widgets below. The sampler's steps run: a preset's guided steps "
                               "scale with them (camera on 30 steps guides 15). On Wan: camera = 50 steps, 20 "
                               "guided over noise 0.6-1; object = 60 steps, 30 guided over 0.5-1."}),
                "weight": ("FLOAT", {
                    "default": 2000.0, "min": 0.0, "max": 1.0e7, "step": 100.0,
                    "tooltip": "Guidance strength λ (reference: 2000). 0 = no guidance (plain sampling on the "
                               "preset's schedule). Always used, also with a preset."}),
                "guided_steps": ("INT", {
                    "default": 50, "min": 1, "max": 1000, "step": 1,
                    "tooltip": "custom only: how many of the first steps are guided (at most the sampler's "
                               "steps and 1000 x guidance fraction)."}),
                "guidance_fraction": ("FLOAT", {
                    "default": 0.3, "min": 0.01, "max": 1.0, "step": 0.01,
                    "tooltip": "custom only: the top share of the noise range the guided steps cover (0.3 = "
                               "t from 700 to 999). Not a CFG weight."}),
                "warm_up": ("INT", {
                    "default": 10, "min": 0, "max": 1000, "step": 1,
                    "tooltip": "custom only: guided steps over which the strength ramps up linearly."}),
                "cool_down": ("INT", {
                    "default": 10, "min": 0, "max": 1000, "step": 1,
                    "tooltip": "custom only: last guided steps over which the strength ramps down linearly."}),
            },
            "optional": {
                "sparsectrl": ("SPARSECTRL_CONDITION", {
                    "tooltip": "Image/sketch-to-video: condition frames for the generation (from SparseCtrl "
                               "Condition). AnimateDiff only."}),
            },
        }

    def apply(self, model, representation, preset, weight, guided_steps, guidance_fraction, warm_up, cool_down,
              sparsectrl=None):
        from dataclasses import replace

        from motion_core.methods.motion_clone import MotionCloneConfig, apply_motion_clone, presets_for
        from motion_core.motion_model import MotionModel

        family = MotionModel.wrap(model).base.family
        configs = presets_for(family)
        if preset == "custom":
            config = MotionCloneConfig(steps=None, guided_steps=int(guided_steps),
                                       guidance_fraction=float(guidance_fraction), warm_up=int(warm_up),
                                       cool_down=int(cool_down), weight=float(weight))
        elif preset in configs:
            config = replace(configs[preset], weight=float(weight))
        else:
            label = {"wan": "Wan", "unet3d": "UNet3D", "animatediff": "AnimateDiff"}.get(family, family)
            raise InputError(f"Preset {preset!r} is not available on {label}; use {', '.join(configs)} or custom.")
        return (apply_motion_clone(model, representation, config, sparsectrl=sparsectrl),)


class MotionKitLoadSparseCtrl:
    DESCRIPTION = (
        "Loads a SparseCtrl ControlNet (rgb for image-to-video, scribble for sketch-to-video) for an "
        "AnimateDiff model, in the model's precision and device, and checks that it fits the model: a file from "
        "ComfyUI/models/controlnet (v3_sd15_sparsectrl_rgb.ckpt, v3_sd15_sparsectrl_scribble.ckpt) or a diffusers "
        "SparseControlNetModel folder."
    )
    CATEGORY = "MotionKit/MotionClone"
    FUNCTION = "load"
    RETURN_TYPES = ("SPARSECTRL",)
    RETURN_NAMES = ("sparsectrl",)
    OUTPUT_TOOLTIPS = ("The SparseCtrl model: connect it to SparseCtrl Condition.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MOTION_MODEL", {
                    "tooltip": "The AnimateDiff model SparseCtrl will condition (sets dtype and device, and "
                               "is checked for fit)."}),
                "sparsectrl": (host.list_sparsectrl_models() + model_files.list_sparsectrl_files() + [HUB_ENTRY], {
                    "tooltip": "A SparseCtrl file in ComfyUI/models/controlnet (v3_sd15_sparsectrl_rgb.ckpt / "
                               "_scribble.ckpt; other ControlNets are not listed) or a SparseControlNetModel "
                               f"folder in models/controlnet or models/diffusers. Choose '{HUB_ENTRY}' to load "
                               "the hub id typed below."}),
                "hub_id": ("STRING", {
                    "default": "", "multiline": False, "placeholder": "e.g. guoyww/animatediff-sparsectrl-rgb",
                    "tooltip": "A Hugging Face hub id (guoyww/animatediff-sparsectrl-rgb or -scribble). When "
                               "not empty it is used instead of the folder above; downloads need the network."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, sparsectrl=None, hub_id=None):
        if sparsectrl is None or hub_id is None or str(hub_id).strip():
            return True
        if sparsectrl == HUB_ENTRY:
            return f"SparseCtrl is '{HUB_ENTRY}' but hub_id is empty: type a hub id or pick a folder."
        if model_files.is_file_name(sparsectrl):
            if sparsectrl not in model_files.list_sparsectrl_files():
                where = ", ".join(str(p) for p in host.models_dirs(host.CONTROLNET))
                return f"SparseCtrl file '{sparsectrl}' was not found in {where} (or is not a SparseCtrl model)."
        elif sparsectrl not in host.list_sparsectrl_models():
            return f"SparseCtrl folder '{sparsectrl}' was not found in models/controlnet or models/diffusers."
        return True

    def load(self, model, sparsectrl, hub_id):
        from motion_core.methods.motion_clone import load_sparsectrl

        hub_id = str(hub_id).strip()
        if hub_id:
            source = hub_id
        elif sparsectrl == HUB_ENTRY:
            raise InputError(f"SparseCtrl is '{HUB_ENTRY}' but hub_id is empty: type a hub id or pick a folder.")
        elif model_files.is_file_name(sparsectrl):
            source = str(host.model_file_path(host.CONTROLNET, sparsectrl))
        else:
            source = str(host.sparsectrl_model_path(sparsectrl))
        return (load_sparsectrl(source, model),)


class MotionKitSparseCtrlCondition:
    DESCRIPTION = (
        "Image-to-video / sketch-to-video condition for MotionClone: the given images (rgb SparseCtrl) or "
        "sketches (scribble SparseCtrl) are placed at the chosen frames of the generation."
    )
    CATEGORY = "MotionKit/MotionClone"
    FUNCTION = "condition"
    RETURN_TYPES = ("SPARSECTRL_CONDITION",)
    RETURN_NAMES = ("sparsectrl",)
    OUTPUT_TOOLTIPS = ("The condition: connect it to Apply MotionClone Guidance (and to Extract Motion "
                       "Representation, as the reference implementation does).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "sparsectrl": ("SPARSECTRL", {"tooltip": "The SparseCtrl model from Load SparseCtrl."}),
                "images": ("IMAGE", {
                    "tooltip": "Condition images (rgb) or sketches (scribble, white strokes on black): one "
                               "per frame index, or one image for all of them. Resized and center-cropped "
                               "to the generation's size."}),
                "frame_indices": ("STRING", {
                    "default": "0",
                    "tooltip": "Comma-separated frames to condition, e.g. '0' (first frame) or '0, 15'; "
                               "negative numbers count from the end (-1 = last frame)."}),
                "strength": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 4.0, "step": 0.05,
                    "tooltip": "ControlNet conditioning scale (reference: 1.0)."}),
            }
        }

    def condition(self, sparsectrl, images, frame_indices, strength):
        from motion_core.methods.motion_clone import SparseCtrlCondition
        from motion_core.video import from_comfy_image

        try:
            indices = tuple(int(part) for part in str(frame_indices).replace(";", ",").split(",") if part.strip())
        except ValueError:
            raise InputError(f"frame_indices must be whole numbers separated by commas (got {frame_indices!r}).") from None
        return (SparseCtrlCondition(controlnet=sparsectrl, images=from_comfy_image(images), frame_indices=indices,
                                    strength=float(strength)),)


NODE_CLASS_MAPPINGS = {
    "MotionKitExtractMotionRepresentation": MotionKitExtractMotionRepresentation,
    "MotionKitSaveMotionRepresentation": MotionKitSaveMotionRepresentation,
    "MotionKitLoadMotionRepresentation": MotionKitLoadMotionRepresentation,
    "MotionKitApplyMotionClone": MotionKitApplyMotionClone,
    "MotionKitLoadSparseCtrl": MotionKitLoadSparseCtrl,
    "MotionKitSparseCtrlCondition": MotionKitSparseCtrlCondition,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "MotionKitExtractMotionRepresentation": "MotionClone: Extract Motion Representation (MotionKit)",
    "MotionKitSaveMotionRepresentation": "MotionClone: Save Motion Representation (MotionKit)",
    "MotionKitLoadMotionRepresentation": "MotionClone: Load Motion Representation (MotionKit)",
    "MotionKitApplyMotionClone": "Apply MotionClone Guidance (MotionKit)",
    "MotionKitLoadSparseCtrl": "Load SparseCtrl (MotionKit)",
    "MotionKitSparseCtrlCondition": "SparseCtrl Condition (MotionKit)",
}
