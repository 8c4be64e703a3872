"""MotionDirector nodes: train motion LoRAs, load / apply / export motion adapters, noise prior.

Thin declarations over :mod:`motion_core.methods.motion_director`, :mod:`motion_core.training`,
:mod:`motion_core.adapters` and :mod:`motion_core.noise_prior`.
"""

from __future__ import annotations

from motion_core.errors import InputError

from . import host, model_files
from . import training_common as common
from .video_input import ReferenceFrames, pick_reference, reference_video_input

NO_ADAPTERS = "(no motion adapters found)"
EXPORT_FORMATS = ["animatediff_evolved", "diffusers", "peft", "comfyui_wan"]


def _adapter_choices() -> list[str]:
    return model_files.list_motion_adapter_files() or [NO_ADAPTERS]


def _no_adapters_message() -> str:
    return (f"There are no motion adapters in {host.motion_adapters_dir()} yet: train one with a Train node (e.g. "
            "Train MotionDirector), or put a file there and refresh the node list (press 'r').")


class MotionKitTrainMotionDirector:
    DESCRIPTION = (
        "Trains a MotionDirector motion adapter from one reference video (or up to four): per-video spatial LoRAs "
        "absorb the appearance from single frames, a shared temporal LoRA learns the motion with the "
        "appearance-debiased loss. Saves the adapter (with the noise prior of the reference) to "
        "models/motion_adapters/<save_name>.safetensors and checkpoints to output/motionkit_training/. The progress "
        "bar shows the step and a live loss curve; Cancel stops after the current step and keeps the adapter so far."
    )
    CATEGORY = "MotionKit/MotionDirector"
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("MOTION_ADAPTER", "IMAGE", "IMAGE")
    RETURN_NAMES = ("adapter", "loss_curve", "preview")
    OUTPUT_TOOLTIPS = (
        "The trained motion adapter (temporal LoRA + spatial LoRAs + stored noise prior). Connect it to Apply "
        "Motion Adapter and/or Noise Prior.",
        "The training loss over the steps (temporal, spatial and their parts), as an image.",
        "The last validation sample (frames of the first preview prompt) made with the temporal LoRA alone; a "
        "black frame when previews are off.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": common.model_input("unet3d: ZeroScope/ModelScope; animatediff; or wan"),
                "prompt": common.prompt_input(
                    "a car is running on the road",
                    "What the reference video shows (subject and motion). With several videos, one line per "
                    "video gives each its own caption; otherwise the text is used for all."),
                "steps": common.steps_input(150, "150 for one video, about 2-5 minutes on an A5000-class GPU, and "
                                                 "300-1000 for several videos"),
                "learning_rate": common.learning_rate_input(
                    5e-4, "of every LoRA (reference: 5e-4). Lower it (with more steps) for smoother results"),
                "rank": common.rank_input(32),
                "frames": common.frames_input(16, "(reference: 16 at 8 fps). The video must have at least this many "
                                                  "frames; reduce it if memory is short."),
                "width": common.width_input(384, "Must be a multiple of the model's size multiple."),
                "height": common.height_input(384),
                "checkpoint_every": common.checkpoint_every_input(50),
                "save_name": common.save_name_input("motiondirector"),
                "seed": common.seed_input("noise, timesteps, frame choices, LoRA init"),
                "resume_from": common.resume_input(),
            },
            "optional": {
                "video": common.video_input("The reference video", "It is cut into windows of 'frames' frames; each "
                                                                   "window is one training clip."),
                "video_2": ("IMAGE", {"tooltip": "A second reference video of the same motion (optional)."}),
                "video_3": ("IMAGE", {"tooltip": "A third reference video (optional)."}),
                "video_4": ("IMAGE", {"tooltip": "A fourth reference video (optional)."}),
                "video_fps": common.video_fps_input("0 = they are already at the training frame rate."),
                "training_fps": common.training_fps_input(8.0, "when the video's fps is known (reference: 8)"),
                "preview_every": common.preview_every_input(50),
                "preview_prompt": common.preview_prompt_input(),
                "preview_steps": common.preview_steps_input(30, "reference: 30, cfg 12"),
                "noise_prior_steps": common.noise_prior_steps_input(50),
                "weight_decay": common.weight_decay_input(
                    -1.0, minimum=-1.0,
                    note="AdamW weight decay; -1 = the reference's (0.01 for one video, 0.0001 for several)."),
                "mixed_precision": common.mixed_precision_input(),
                "gradient_checkpointing": common.gradient_checkpointing_input(),
                "core_video": common.core_video_input(),
                **common.scoring_inputs(),
                **common.speed_inputs(),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, save_name=None, resume_from=None):
        return common.training_problem(save_name, resume_from)

    def train(self, model, prompt, steps, learning_rate, rank, frames, width, height, checkpoint_every, save_name,
              seed, resume_from, video=None, video_2=None, video_3=None, video_4=None, video_fps=0.0,
              training_fps=8.0, preview_every=50, preview_prompt="", preview_steps=30, noise_prior_steps=50,
              weight_decay=-1.0, mixed_precision="auto", gradient_checkpointing=True, core_video=None, score_checkpoints=False, keep_best=False,
              clip=None, checkpointing="auto", compile=False):
        from motion_core.methods.motion_director import MotionDirector, MotionDirectorConfig
        from motion_core.motion_model import MotionModel
        from motion_core.training import VideoSource, train
        from motion_core.video import from_comfy_image

        name = host.safe_filename(save_name)
        base = MotionModel.wrap(model).base
        first = pick_reference(video, core_video, video_fps, image_name="video", video_name="core_video")
        images = [first] + [ReferenceFrames(v, float(video_fps) or None) for v in (video_2, video_3, video_4)
                            if v is not None]
        fps = any(r.fps for r in images)
        sources = [VideoSource(frames=from_comfy_image(r.frames), fps=r.fps) for r in images]
        lines = [line.strip() for line in str(prompt).splitlines() if line.strip()]
        prompts: str | list[str] = lines if len(images) > 1 and len(lines) == len(images) else str(prompt).strip()
        if not prompts:
            raise InputError("The prompt is empty: describe what the reference video shows.")
        method = MotionDirector(MotionDirectorConfig(
            rank=int(rank), learning_rate=float(learning_rate), noise_prior_steps=int(noise_prior_steps),
            weight_decay=None if float(weight_decay) < 0 else float(weight_decay)))
        config = common.training_config(
            name, **common.scoring_options(score_checkpoints, keep_best, clip), steps=steps, seed=seed, frames=frames, fps=float(training_fps) if fps else None, width=width,
            height=height, checkpoint_every=checkpoint_every, preview_every=preview_every,
            preview_prompt=preview_prompt, preview_steps=preview_steps, mixed_precision=mixed_precision,
            gradient_checkpointing=common.checkpointing_choice(gradient_checkpointing, checkpointing),
            compile="on" if compile else "off", preview_noise_prior=method.default_noise_prior(len(sources)))
        resume = common.resolve_resume(name, resume_from)

        def run(progress, cancel):
            return train(base, method, sources, prompts, config, resume=resume, progress=progress,
                           cancel=cancel)

        return common.run_training("Train MotionDirector", int(steps), int(width), int(height), run)


class MotionKitLoadMotionAdapter:
    DESCRIPTION = (
        "Loads a motion adapter from models/motion_adapters: MotionKit .safetensors files (MotionDirector LoRAs and "
        "other methods' adapters), MotionDirector reference .pt files (temporal or spatial LoRA lists, matched to "
        "the model's layers when applied) and AnimateDiff-Evolved motion LoRAs."
    )
    CATEGORY = "MotionKit/Adapters"
    FUNCTION = "load"
    RETURN_TYPES = ("MOTION_ADAPTER", "STRING")
    RETURN_NAMES = ("adapter", "info")
    OUTPUT_TOOLTIPS = (
        "The motion adapter. Connect it to Apply Motion Adapter (and Noise Prior for a stored noise prior).",
        "What the file holds: method, family, base model, LoRA sets, ranks, steps, stored noise prior.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "adapter_name": (_adapter_choices(), {
                    "tooltip": "A motion adapter file in ComfyUI/models/motion_adapters (the Train nodes save "
                               "there): MotionKit LoRAs and motion embeddings, MotionDirector reference .pt "
                               "files, AnimateDiff-Evolved motion LoRAs. MotionClone motion representations "
                               "are listed by Load Motion Representation instead."}),
            }
        }

    # Taking adapter_name makes the host skip its combo check: the placeholder, a missing file and a file
    # of the other kind are refused here, when the prompt is queued.
    @classmethod
    def VALIDATE_INPUTS(cls, adapter_name=None):
        if adapter_name is None:
            return True
        if adapter_name == NO_ADAPTERS:
            return _no_adapters_message()
        return model_files.motion_file_problem(adapter_name, model_files.ADAPTER)

    @classmethod
    def IS_CHANGED(cls, adapter_name, **_):
        try:
            return host.file_fingerprint(host.motion_adapter_path(adapter_name))
        except Exception:
            return float("nan")

    def load(self, adapter_name):
        from motion_core.adapters.files import load_adapter

        if adapter_name == NO_ADAPTERS:
            raise InputError(_no_adapters_message())
        adapter = load_adapter(host.motion_adapter_path(adapter_name))
        info = adapter.describe() if hasattr(adapter, "describe") else type(adapter).__name__
        return (adapter, str(info))


class MotionKitApplyMotionAdapter:
    DESCRIPTION = (
        "Applies a motion adapter to a video model for sampling and returns a new MOTION_MODEL (the input model is "
        "not changed, so several adapters can be chained and branches stay independent). For MotionDirector only "
        "the temporal (motion) LoRA is used by default; the appearance LoRA of a training video can be added with "
        "its own strength."
    )
    CATEGORY = "MotionKit/Adapters"
    FUNCTION = "apply"
    RETURN_TYPES = ("MOTION_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the adapter applied; connect it to Motion Sampler (or chain more adapters).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MOTION_MODEL", {"tooltip": "The video model (from Load Video Model or another apply node)."}),
                "adapter": ("MOTION_ADAPTER", {
                    "tooltip": "The motion adapter (from Load Motion Adapter or Train MotionDirector)."}),
                "strength": ("FLOAT", {
                    "default": 1.0, "min": -4.0, "max": 4.0, "step": 0.05,
                    "tooltip": "Strength of the motion LoRA (1 = as trained; the reference's lora_scale)."}),
                "appearance_strength": ("FLOAT", {
                    "default": 0.0, "min": -4.0, "max": 4.0, "step": 0.05,
                    "tooltip": "Strength of the adapter's appearance (spatial) LoRA. 0 = motion only (the "
                               "reference's inference); >0 also copies the training video's look."}),
            },
            "optional": {
                "appearance_video": ("INT", {
                    "default": 0, "min": 0, "max": 1024,
                    "tooltip": "Which training video's appearance LoRA to use (0 = the first)."}),
                "check_base_model": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "Refuse an adapter trained on another base model. Turn off to try it on a model "
                               "with the same layout (e.g. ZeroScope <-> ModelScope); the family must match."}),
                "strength_schedule": ("STRING", {
                    "default": "", "multiline": False,
                    "tooltip": "Strength over the denoising timesteps: empty = the adapter's own (MotionMatcher "
                               "adapters: only while t >= 500; others constant); 'constant' = at every step; "
                               "'t>=500' = only while t >= 500; '0:0,500:1,999:1' = linear between points."}),
                "strategy": (["default", "camera", "object", "hybrid", "vanilla"], {
                    "default": "default",
                    "tooltip": "Motion embeddings (Motion Inversion) only: camera = drop the Value embeddings "
                               "(camera motion), object / hybrid = frame-differenced Value embeddings (object "
                               "motion; the reference treats both alike), vanilla = as trained, default = the "
                               "adapter's own. Ignored for LoRA adapters."}),
                "resample": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Motion embeddings only: allow another width/height or more frames than trained by "
                               "resampling the embeddings (bilinear over the grid, linear over frames). Off = "
                               "such a generation is refused with an error."}),
            },
        }

    def apply(self, model, adapter, strength, appearance_strength, appearance_video=0, check_base_model=True,
              strength_schedule="", strategy="default", resample=False):
        from motion_core.adapters.lora import MotionLoRA, StrengthSchedule
        from motion_core.motion_model import MotionModel

        motion = MotionModel.wrap(model)
        text = str(strength_schedule).strip()
        schedule = StrengthSchedule.parse(text)
        if schedule is None:  # empty: keep the adapter's own schedule; 'constant': none, whatever it stores
            schedule = "keep" if not text else None
        if isinstance(adapter, MotionLoRA):
            appearance = None
            if float(appearance_strength) != 0.0:
                names = [s.name for s in adapter.appearance_sets]
                if not names and not any(s.ordered for s in adapter.sets):
                    raise InputError("This adapter has no appearance LoRA; set appearance_strength to 0.")
                wanted = f"spatial_{int(appearance_video)}"
                if names and wanted not in names:
                    raise InputError(f"appearance_video {appearance_video}: this adapter has appearance LoRAs "
                                     f"{', '.join(names)}.")
                appearance = wanted if names else None
            configured = adapter.with_strength(float(strength), appearance_strength=float(appearance_strength),
                                               appearance_set=appearance,
                                               schedule=schedule,
                                               check_base_model=bool(check_base_model))
        elif getattr(adapter, "kind", "") == "weight_delta":  # Customizing Motion: W_base + strength·Δ
            configured = adapter.with_strength(float(strength),
                                               schedule=schedule,
                                               check_base_model=bool(check_base_model))
        elif hasattr(adapter, "with_strategy"):  # motion embeddings
            configured = adapter.with_strategy(None if str(strategy) == "default" else str(strategy),
                                               strength=float(strength), resample=bool(resample),
                                               check_base_model=bool(check_base_model))
        elif hasattr(adapter, "with_strength"):
            configured = adapter.with_strength(float(strength))
        else:
            configured = adapter
        if hasattr(configured, "check_compatible"):
            configured.check_compatible(motion.base)
        note = f"{getattr(adapter, 'method', 'adapter')} x{float(strength):g}"
        return (motion.with_adapter(configured, note=note),)


class MotionKitNoisePrior:
    DESCRIPTION = (
        "MotionDirector's noise prior: sampling starts from sqrt(p) x the DDIM-inverted reference latents + "
        "sqrt(1-p) x noise, which carries the reference's layout and motion into the new video. Uses the inversion "
        "stored in the adapter (computed once at training), or inverts a reference video here. p = 0.1-0.5 suits "
        "single-video adapters; 0 keeps plain noise."
    )
    CATEGORY = "MotionKit/Sampling"
    FUNCTION = "apply"
    RETURN_TYPES = ("MOTION_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the noise prior; Motion Sampler starts from it. Generate the same number "
                       "of frames as the reference.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MOTION_MODEL", {"tooltip": "The video model (usually after Apply Motion Adapter)."}),
                "p": ("FLOAT", {
                    "default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                    "tooltip": "Weight of the inverted reference: 0 = plain noise, 1 = the inversion alone "
                               "(reference README: 0.1-0.5 for one training video, 0 for several)."}),
            },
            "optional": {
                "adapter": ("MOTION_ADAPTER", {
                    "tooltip": "An adapter that stores a noise prior (Train MotionDirector computes it)."}),
                "reference_video": ("IMAGE", {
                    "tooltip": "A reference video to invert instead (used when no adapter with a stored prior "
                               "is connected). Its size should be a multiple of the model's size multiple."}),
                "inversion_steps": ("INT", {
                    "default": 50, "min": 1, "max": 1000,
                    "tooltip": "DDIM inversion steps for reference_video (reference: 50)."}),
                "clip_index": ("INT", {
                    "default": 0, "min": 0, "max": 1024,
                    "tooltip": "Which stored training clip's inversion to use (0 = the first)."}),
                "core_video": reference_video_input("the reference video to invert (instead of reference_video)"),
            },
        }

    def apply(self, model, p, adapter=None, reference_video=None, inversion_steps=50, clip_index=0,
              core_video=None):
        from motion_core.motion_model import MotionModel
        from motion_core.noise_prior import NoisePrior, check_p
        from motion_core.video import fit_size, from_comfy_image, resize_and_crop

        motion = MotionModel.wrap(model)
        p = check_p(p)
        stored = getattr(adapter, "noise_prior", ()) if adapter is not None else ()
        reference = pick_reference(reference_video, core_video, image_name="reference_video",
                                   video_name="core_video", required=False)
        if stored:
            if not 0 <= int(clip_index) < len(stored):
                raise InputError(f"clip_index {clip_index}: the adapter stores {len(stored)} clip(s).")
            if hasattr(adapter, "check_compatible"):
                adapter.check_compatible(motion.base)
            prior = NoisePrior(stored[int(clip_index)], p, source=str(getattr(adapter, "source", "adapter")))
        elif reference is not None:
            frames = from_comfy_image(reference.frames)
            m = motion.base.size_multiple
            h, w = int(frames.shape[1]), int(frames.shape[2])
            if w % m or h % m:
                w, h = fit_size(w, h, multiple=m)
                frames = resize_and_crop(frames, w, h)
            host.free_host_memory()
            bar = host.Progress(int(inversion_steps), label="Noise prior (inversion)")
            with host.cancellation(), motion.activated():
                prior = NoisePrior.from_frames(motion.base, frames, p, steps=int(inversion_steps), progress=bar,
                                               cancel=host.cancel_requested)
        else:
            raise InputError("Noise Prior needs an adapter that stores a noise prior, or a reference video to invert "
                             "(IMAGE on reference_video or VIDEO on core_video).")
        return (motion.with_noise_prior(prior, note=f"noise prior p={p:g}"),)


class MotionKitExportMotionAdapter:
    DESCRIPTION = (
        "Writes a LoRA motion adapter in another tool's format: animatediff_evolved (AnimateDiff-Evolved's motion "
        "LoRA keys, into models/animatediff_motion_lora, for AnimateDiff adapters), diffusers "
        "(unet.<layer>.lora_A/B, loadable by diffusers' load_lora_weights) or peft (with its LoraConfig), both into "
        "output/MotionKit/exports. comfyui_wan (Wan adapters): ComfyUI's native Wan LoRA keys (diffusion_model.<Wan "
        "module>.lora_A/lora_B + alpha) into models/loras, for the core LoraLoaderModelOnly on a Wan MODEL."
    )
    CATEGORY = "MotionKit/Adapters"
    FUNCTION = "export"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("Where the exported file was written.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "adapter": ("MOTION_ADAPTER", {"tooltip": "A LoRA motion adapter (e.g. from Train MotionDirector)."}),
                "format": (EXPORT_FORMATS, {
                    "default": "animatediff_evolved",
                    "tooltip": "animatediff_evolved: for AnimateDiff-Evolved's Load AnimateDiff LoRA; diffusers: "
                               "diffusers pipelines; peft: peft's inject_adapter_in_model; "
                               "comfyui_wan: a Wan LoRA for ComfyUI's own LoraLoaderModelOnly (into models/loras)."}),
                "filename": ("STRING", {
                    "default": "motion_lora",
                    "tooltip": "File name (a plain name; .safetensors is added)."}),
            },
            "optional": {
                "model": ("MOTION_MODEL", {
                    "tooltip": "Only needed for adapters imported from MotionDirector reference .pt files (their "
                               "layer names come from the model)."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, filename=None):
        return common.save_name_problem(filename)

    def export(self, adapter, format, filename, model=None):
        from motion_core.adapters.files import export_adapter_files
        from motion_core.motion_model import MotionModel

        name = host.safe_filename(filename)
        if not name.lower().endswith(".safetensors"):
            name += ".safetensors"
        if format == "animatediff_evolved":
            folder = host.model_save_dir("animatediff_motion_lora")
        elif format == "comfyui_wan":
            folder = host.model_save_dir("loras")
        else:
            folder = host.output_dir() / "MotionKit" / "exports"
        base = MotionModel.wrap(model).base if model is not None else None
        # Wan 2.2 A14B adapters become a high-noise / low-noise pair; the output is the first (high-noise) file
        paths = export_adapter_files(adapter, folder / name, str(format), model=base)
        return {"ui": {"text": [str(p) for p in paths]}, "result": (str(paths[0]),)}


NODE_CLASS_MAPPINGS = {
    "MotionKitTrainMotionDirector": MotionKitTrainMotionDirector,
    "MotionKitLoadMotionAdapter": MotionKitLoadMotionAdapter,
    "MotionKitApplyMotionAdapter": MotionKitApplyMotionAdapter,
    "MotionKitNoisePrior": MotionKitNoisePrior,
    "MotionKitExportMotionAdapter": MotionKitExportMotionAdapter,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "MotionKitTrainMotionDirector": "Train MotionDirector (MotionKit)",
    "MotionKitLoadMotionAdapter": "Load Motion Adapter (MotionKit)",
    "MotionKitApplyMotionAdapter": "Apply Motion Adapter (MotionKit)",
    "MotionKitNoisePrior": "Noise Prior (MotionKit)",
    "MotionKitExportMotionAdapter": "Export Motion Adapter (MotionKit)",
}
