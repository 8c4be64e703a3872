"""Loading a model folder (or hub id) as a :class:`~motion_core.backbones.base.VideoModel`.

``load_video_model(source)`` finds the family (``detect_family``), checks that the folder is complete and
builds the family's VideoModel with every component frozen (``requires_grad=False``) and in eval mode.

Sources
    * a local diffusers folder (``model_index.json`` + ``unet/ vae/ text_encoder/ tokenizer/ scheduler/``);
    * a hub id (``owner/name``), tried only when ``source`` is not an existing path. Components are loaded
      with each library's ``from_pretrained``, which uses the Hugging Face cache.

Offline
    ``local_files_only=None`` means "offline if ``HF_HUB_OFFLINE`` is set" (read from the environment at
    call time, and from huggingface_hub's own setting). Then every hub access is made with
    ``local_files_only=True``: a hub id that is not in the local cache fails at once with a
    :class:`ModelLoadError` instead of waiting on a closed network. On a machine without network, set
    ``HF_HUB_OFFLINE=1`` (or pass ``local_files_only=True``).

Precision and device
    ``dtype``: ``"fp32"``, ``"fp16"``, ``"bf16"`` (or their long names, or a ``torch.dtype``). On the CPU
    fp16 is refused with a warning and fp32 is used instead: many CPU kernels lack fp16 and the ones that
    exist are slow; bf16 and fp32 work on the CPU. ``device="auto"`` is CUDA when available, else the CPU.

Families
    :data:`FAMILIES` maps a family name to its VideoModel subclass. A new family plugs in with
    :func:`register_family` (a detector looking at :class:`ModelInfo`, and a loader taking a
    :class:`LoadRequest`); the built-in ones are ``unet3d`` and ``animatediff``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ModelLoadError
from .animatediff import AnimateDiffVideoModel
from .base import VideoModel
from .unet3d import UNet3DVideoModel

logger = logging.getLogger(__name__)

__all__ = [
    "FAMILIES",
    "LoadRequest",
    "ModelInfo",
    "check_components",
    "detect_family",
    "find_companion",
    "load_video_model",
    "register_family",
    "register_single_file_family",
    "resolve_device",
    "resolve_dtype",
]

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TRUE = {"1", "on", "yes", "true"}


# --------------------------------------------------------------------------------------------- sources
@dataclass
class ModelInfo:
    """What is known about a source before loading it (what family detectors look at)."""

    #: the source as given (folder path or hub id)
    source: str
    #: the local folder, or None for a hub id
    folder: Path | None
    #: the hub id, or None for a local folder
    repo_id: str | None
    #: ``model_index.json`` ({} when there is none)
    model_index: dict[str, Any]
    #: component name -> class name (from model_index.json, overridden by ``<component>/config.json``)
    component_classes: dict[str, str]
    #: the ``motion_adapter`` argument of :func:`load_video_model` (None when not given)
    motion_adapter: Any = None
    local_files_only: bool = False

    @property
    def pipeline_class(self) -> str | None:
        return self.model_index.get("_class_name")

    @property
    def name(self) -> str:
        """A stable identifier of the base weights: the hub id, or the folder's name."""
        return self.repo_id or (self.folder.name if self.folder else self.source)

    @property
    def pretrained(self) -> str:
        """What to pass to ``from_pretrained``: the folder path or the hub id."""
        return str(self.folder) if self.folder is not None else str(self.repo_id)

    def class_of(self, component: str) -> str | None:
        return self.component_classes.get(component)

    def has_subfolder(self, component: str) -> bool:
        if self.folder is not None:
            return (self.folder / component).is_dir()
        return component in self.model_index


@dataclass
class LoadRequest:
    """Everything a family loader needs."""

    info: ModelInfo
    dtype: torch.dtype
    device: torch.device
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def local_files_only(self) -> bool:
        return self.info.local_files_only


Detector = Callable[[ModelInfo], bool]
Loader = Callable[[LoadRequest], VideoModel]

FAMILIES: dict[str, type[VideoModel]] = {}
_DETECTORS: dict[str, Detector] = {}
_LOADERS: dict[str, Loader] = {}


def register_family(name: str, model_class: type[VideoModel], *, load: Loader,
                    detect: Detector | None = None) -> None:
    """Make ``name`` loadable: ``load(request)`` builds the VideoModel; ``detect(info)`` says whether a
    source belongs to this family (without a detector the family is only used when asked by name).
    Registering a name again replaces it. Detectors run in registration order; the first match wins."""
    if not (isinstance(model_class, type) and issubclass(model_class, VideoModel)):
        raise TypeError(f"{model_class!r} is not a VideoModel subclass")
    FAMILIES[name] = model_class
    _LOADERS[name] = load
    if detect is not None:
        _DETECTORS[name] = detect
    else:
        _DETECTORS.pop(name, None)


def _offline(local_files_only: bool | None) -> bool:
    if local_files_only is not None:
        return bool(local_files_only)
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub always comes with diffusers
        return False


def _looks_like_path(source: str) -> bool:
    return (source.startswith(("/", ".", "~", "\\")) or "\\" in source or source.count("/") > 1
            or bool(re.match(r"^[A-Za-z]:", source)))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object.")
    return data


def _hub_json(repo_id: str, filename: str, local_files_only: bool) -> dict[str, Any] | None:
    """A JSON file of a hub repo (None when the repo has no such file)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        path = hf_hub_download(repo_id, filename, local_files_only=local_files_only)
    except LocalEntryNotFoundError as exc:  # (a subclass of EntryNotFoundError: test it first)
        if local_files_only:
            if filename == "model_index.json":
                raise ModelLoadError(
                    f"{repo_id!r} is not a local folder and is not in the Hugging Face cache; working offline "
                    f"(HF_HUB_OFFLINE is set or local_files_only=True), so it was not downloaded. Give the "
                    f"path of a model folder, or download it first.") from exc
            return None
        raise ModelLoadError(f"cannot download {filename} of {repo_id!r}: {exc}") from exc
    except EntryNotFoundError:
        return None
    except RepositoryNotFoundError as exc:
        raise ModelLoadError(f"{repo_id!r} is neither a local folder nor a model on the hub.") from exc
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot get {filename} of {repo_id!r}: {exc}") from exc
    return _read_json(Path(path))


def inspect_source(source: str | os.PathLike, *, motion_adapter: Any = None,
                   local_files_only: bool | None = None) -> ModelInfo:
    """Read what a folder / hub id contains (model_index.json and the component configs)."""
    text = os.fspath(source)
    offline = _offline(local_files_only)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{text} is a file; give the model's folder (the one with model_index.json), or "
                                 f"load it with load_video_model, which takes single files too.")
        index = _read_json(path / "model_index.json") if (path / "model_index.json").is_file() else {}
        classes: dict[str, str] = {}
        for key, value in index.items():
            if not key.startswith("_") and isinstance(value, list) and len(value) == 2 and value[1]:
                classes[key] = str(value[1])
        for config in sorted(path.glob("*/config.json")):
            try:
                name = json.loads(config.read_text(encoding="utf-8")).get("_class_name")
            except (OSError, ValueError, AttributeError):
                name = None
            if name:
                classes[config.parent.name] = str(name)
        return ModelInfo(source=text, folder=path.resolve(), repo_id=None, model_index=index,
                         component_classes=classes, motion_adapter=motion_adapter, local_files_only=offline)
    if _looks_like_path(text) or not _HUB_ID.match(text):
        raise ModelLoadError(f"model folder not found: {text}")
    index = _hub_json(text, "model_index.json", offline)
    if index is None:
        raise ModelLoadError(f"{text!r} has no model_index.json: it is not a diffusers pipeline repository.")
    classes = {k: str(v[1]) for k, v in index.items()
               if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[1]}
    for component in ("unet", "transformer"):
        if component in classes:
            config = _hub_json(text, f"{component}/config.json", offline)
            if config and config.get("_class_name"):
                classes[component] = str(config["_class_name"])
    return ModelInfo(source=text, folder=None, repo_id=text, model_index=index, component_classes=classes,
                     motion_adapter=motion_adapter, local_files_only=offline)


# --------------------------------------------------------------------------------------------- checks
_MODEL_FILES = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
#: component -> alternatives of required file patterns (every pattern of one alternative must match)
CLIP_UNET_COMPONENTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "unet": (("config.json", "*.safetensors"), ("config.json", "*.bin")),
    "vae": (("config.json", "*.safetensors"), ("config.json", "*.bin")),
    "text_encoder": (("config.json", "*.safetensors"), ("config.json", "*.bin")),
    "tokenizer": (("vocab.json", "merges.txt"), ("tokenizer.json",)),
    "scheduler": (("scheduler_config.json",),),
}


def check_components(info: ModelInfo, required: dict[str, tuple[tuple[str, ...], ...]]) -> None:
    """Raise a ModelLoadError naming every missing or incomplete component of a local folder
    (``"vae/ is missing from <folder>"``). Hub sources are checked by their loaders."""
    if info.folder is None:
        missing = [c for c in required if c not in info.model_index]
        if missing:
            raise ModelLoadError(f"{info.source} lacks {', '.join(missing)} (not in its model_index.json).")
        return
    problems = []
    for component, alternatives in required.items():
        sub = info.folder / component
        if not sub.is_dir():
            problems.append(f"{component}/ is missing from {info.folder}")
            continue
        if not any(all(any(sub.glob(pattern)) for pattern in alt) for alt in alternatives):
            wanted = " or ".join(" + ".join(alt) for alt in alternatives)
            problems.append(f"{component}/ in {info.folder} is incomplete (needs {wanted})")
    if problems:
        raise ModelLoadError("; ".join(problems) + ".")


# --------------------------------------------------------------------------------------------- options
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
           "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for but CUDA is not available here.")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif str(dtype).strip().lower() == "auto":
        # Half precision where it is fast and safe (CUDA), full precision elsewhere.
        resolved = torch.float16 if device.type == "cuda" else torch.float32
    else:
        resolved = _DTYPES.get(str(dtype).strip().lower().replace("torch.", ""))
        if resolved is None:
            raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, fp32, fp16 or bf16.")
    if resolved not in (torch.float32, torch.float16, torch.bfloat16):
        raise ModelLoadError(f"dtype {resolved} is not supported; use fp32, fp16 or bf16.")
    if resolved == torch.float16 and device.type == "cpu":
        warnings.warn("fp16 is not supported on the CPU (missing or slow kernels); loading in fp32 instead "
                      "(bf16 works on the CPU).", stacklevel=3)
        resolved = torch.float32
    return resolved


# --------------------------------------------------------------------------------------------- loading
def _load(what: str, info: ModelInfo, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load {what} from {info.source}: {exc}") from exc


def _scheduler_class(name: str | None):
    import diffusers
    from diffusers import DDIMScheduler
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

    candidate = getattr(diffusers, name, None) if name else None
    if isinstance(candidate, type) and issubclass(candidate, SchedulerMixin):
        return candidate
    return DDIMScheduler


def load_clip_vae_components(request: LoadRequest) -> dict[str, Any]:
    """VAE, CLIP text encoder, tokenizer and scheduler of an SD-style folder, in the requested dtype."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    info = request.info
    src, lfo, dtype = info.pretrained, info.local_files_only, request.dtype
    vae = _load("vae", info, lambda: AutoencoderKL.from_pretrained(
        src, subfolder="vae", torch_dtype=dtype, local_files_only=lfo))
    text_encoder = _load("text_encoder", info, lambda: CLIPTextModel.from_pretrained(
        src, subfolder="text_encoder", dtype=dtype, local_files_only=lfo))
    tokenizer = _load("tokenizer", info, lambda: CLIPTokenizer.from_pretrained(
        src, subfolder="tokenizer", local_files_only=lfo))
    # transformers 5 can return a degenerate tokenizer (2 tokens) instead of failing on bad files
    if len(tokenizer) < 256:
        raise ModelLoadError(f"the tokenizer of {info.source} loaded with only {len(tokenizer)} tokens: its "
                             f"files are missing or unreadable (a CLIP tokenizer needs vocab.json + merges.txt).")
    scheduler_cls = _scheduler_class(info.class_of("scheduler"))
    scheduler = _load("scheduler", info, lambda: scheduler_cls.from_pretrained(
        src, subfolder="scheduler", local_files_only=lfo))
    return {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


@contextlib.contextmanager
def _diffusers_errors_only():
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(level)


def _finish(model: VideoModel, request: LoadRequest) -> VideoModel:
    model.to(device=request.device, dtype=request.dtype)
    model.requires_grad_(False)
    model.train(False)
    return model


def _detect_unet3d(info: ModelInfo) -> bool:
    return (info.class_of("unet") == "UNet3DConditionModel"
            or info.pipeline_class in ("TextToVideoSDPipeline", "VideoToVideoSDPipeline"))


def _has_motion_adapter(info: ModelInfo) -> bool:
    return info.motion_adapter is not None or info.has_subfolder("motion_adapter")


def _detect_animatediff(info: ModelInfo) -> bool:
    unet = info.class_of("unet")
    if unet == "UNetMotionModel" or (info.pipeline_class or "").startswith("AnimateDiff"):
        return True
    return unet == "UNet2DConditionModel" and _has_motion_adapter(info)


def _load_unet3d(request: LoadRequest) -> VideoModel:
    from diffusers import UNet3DConditionModel

    info = request.info
    check_components(info, CLIP_UNET_COMPONENTS)
    unet = _load("unet", info, lambda: UNet3DConditionModel.from_pretrained(
        info.pretrained, subfolder="unet", torch_dtype=request.dtype, local_files_only=info.local_files_only))
    parts = load_clip_vae_components(request)
    model = UNet3DVideoModel(denoiser=unet, base_model=info.name, device=request.device, dtype=request.dtype,
                             **parts)
    return _finish(model, request)


def load_motion_adapter(motion_adapter: Any, *, dtype: torch.dtype = torch.float32,
                        local_files_only: bool | None = None):
    """A ``MotionAdapter`` from an instance, a local folder (config.json + weights), a hub id, or a motion
    module file in the original AnimateDiff layout (``models/animatediff_models``: ``v3_sd15_mm.ckpt``,
    ``mm_sd_v15_v2.ckpt``, ``.safetensors`` too; see :mod:`motion_core.backbones.sd_files`)."""
    from diffusers import MotionAdapter

    if isinstance(motion_adapter, MotionAdapter):
        return motion_adapter
    if isinstance(motion_adapter, nn.Module):
        raise ModelLoadError(f"motion_adapter is a {type(motion_adapter).__name__}, not a MotionAdapter.")
    text = os.fspath(motion_adapter)
    path = Path(text).expanduser()
    offline = _offline(local_files_only)
    if path.is_file():
        from . import sd_files

        return sd_files.load_motion_module_file(path, dtype=dtype)
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelLoadError(f"motion adapter {text} is not a diffusers MotionAdapter folder "
                                 f"(config.json + diffusion_pytorch_model.safetensors).")
        pretrained = str(path)
    elif _looks_like_path(text) or not _HUB_ID.match(text):
        raise ModelLoadError(f"motion adapter folder not found: {text}")
    else:
        pretrained = text
    try:
        adapter = MotionAdapter.from_pretrained(pretrained, torch_dtype=dtype, local_files_only=offline)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        hint = ""
        if offline and not path.exists():
            hint = " (working offline: it must already be in the Hugging Face cache)"
        raise ModelLoadError(f"cannot load the motion adapter {text}{hint}: {exc}") from exc
    if not isinstance(adapter, MotionAdapter):
        raise ModelLoadError(f"{text} holds a {type(adapter).__name__}, not a MotionAdapter.")
    return adapter


def _load_animatediff(request: LoadRequest) -> VideoModel:
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    info = request.info
    check_components(info, CLIP_UNET_COMPONENTS)
    unet_class = info.class_of("unet")
    src, lfo = info.pretrained, info.local_files_only
    adapter_source = info.motion_adapter
    adapter = None
    if adapter_source is not None:
        adapter = load_motion_adapter(adapter_source, dtype=request.dtype, local_files_only=lfo)
    base_model = info.name
    if adapter is not None:  # the motion weights are part of what adapters are trained against
        adapter_name = adapter_source if not isinstance(adapter_source, nn.Module) else \
            adapter.config.get("_name_or_path")
        if adapter_name:
            adapter_name = os.fspath(adapter_name)
            base_model += "+" + (adapter_name if _HUB_ID.match(adapter_name) and not Path(adapter_name).exists()
                                 else Path(adapter_name).name)

    if unet_class == "UNetMotionModel":
        unet = _load("unet", info, lambda: UNetMotionModel.from_pretrained(
            src, subfolder="unet", torch_dtype=request.dtype, local_files_only=lfo))
        if adapter is not None:
            _load("the motion adapter's modules", info, lambda: unet.load_motion_modules(adapter))
    elif unet_class == "UNet2DConditionModel":
        if adapter is None:
            if not info.has_subfolder("motion_adapter"):
                raise ModelLoadError(_needs_adapter_message(info))
            if info.folder is not None:
                adapter = load_motion_adapter(info.folder / "motion_adapter", dtype=request.dtype,
                                              local_files_only=lfo)
            else:
                adapter = _load("motion_adapter", info, lambda: MotionAdapter.from_pretrained(
                    src, subfolder="motion_adapter", torch_dtype=request.dtype, local_files_only=lfo))
        unet2d = _load("unet", info, lambda: UNet2DConditionModel.from_pretrained(
            src, subfolder="unet", torch_dtype=request.dtype, local_files_only=lfo))
        try:
            with _diffusers_errors_only():  # from_unet2d logs a misleading "kept in float32: []" warning
                unet = UNetMotionModel.from_unet2d(unet2d, adapter)
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"the motion adapter does not fit the UNet of {info.source}: {exc}") from exc
        del unet2d
    else:
        raise ModelLoadError(f"{info.source}: unet/ is a {unet_class}; AnimateDiff needs a UNet2DConditionModel "
                             f"(+ motion adapter) or a UNetMotionModel.")
    parts = load_clip_vae_components(request)
    model = AnimateDiffVideoModel(denoiser=unet, base_model=base_model, device=request.device,
                                  dtype=request.dtype, **parts)
    return _finish(model, request)


def _needs_adapter_message(info: ModelInfo) -> str:
    return (f"{info.source} is a Stable Diffusion (image) model, not a video model. To use it with "
            f"AnimateDiff, also give a motion adapter (motion_adapter=<MotionAdapter folder or hub id>, e.g. "
            f"guoyww/animatediff-motion-adapter-v1-5-3).")


register_family("unet3d", UNet3DVideoModel, load=_load_unet3d, detect=_detect_unet3d)
register_family("animatediff", AnimateDiffVideoModel, load=_load_animatediff, detect=_detect_animatediff)


def _detect(info: ModelInfo) -> str:
    for name, detect in _DETECTORS.items():
        if detect(info):
            return name
    if info.class_of("unet") == "UNet2DConditionModel":
        raise ModelLoadError(_needs_adapter_message(info))
    if info.folder is not None and not info.model_index and not info.component_classes:
        if (info.folder / "config.json").is_file():
            raise ModelLoadError(f"{info.source} looks like a single component (config.json at its top); give "
                                 f"the model's folder, the one with model_index.json.")
        raise ModelLoadError(f"{info.source} is not a diffusers model folder (no model_index.json).")
    found = info.pipeline_class or info.class_of("unet") or info.class_of("transformer") or "nothing known"
    raise ModelLoadError(f"cannot tell the model family of {info.source} (found {found}); supported families: "
                         f"{', '.join(sorted(FAMILIES))}.")


def detect_family(source: str | os.PathLike, *, motion_adapter: Any = None,
                  local_files_only: bool | None = None) -> str:
    """The family name of a folder / hub id (``"unet3d"``, ``"animatediff"``, ...).

    A Stable Diffusion folder is ``animatediff`` only with a motion adapter (given, or a ``motion_adapter/``
    subfolder); without one this raises a ModelLoadError saying to give one."""
    return _detect(inspect_source(source, motion_adapter=motion_adapter, local_files_only=local_files_only))


# --------------------------------------------------------------------------------------------- single files
@dataclass
class SingleFileRequest:
    """A model given as ComfyUI-style files (see :mod:`motion_core.backbones.single_file`)."""

    #: the diffusion model / checkpoint file (``source`` of :func:`load_video_model`)
    path: Path
    #: what :func:`single_file.identify` read from it
    kind: Any
    dtype: torch.dtype
    device: torch.device
    #: Wan: the umt5 file; None = not given
    text_encoder: Path | None = None
    #: Wan: the VAE file; SD1.5: an optional VAE replacing the checkpoint's
    vae: Path | None = None
    #: Wan 2.2 A14B: the low-noise expert (``path`` is then the high-noise one)
    low_noise_model: Path | None = None
    #: AnimateDiff: a motion module file (or a MotionAdapter folder / hub id / instance)
    motion_adapter: Any = None
    #: a tokenizer folder to use instead of the one found in the files / the host
    tokenizer: Path | None = None


SingleFileLoader = Callable[[SingleFileRequest], VideoModel]
_SINGLE_FILE_LOADERS: dict[str, SingleFileLoader] = {}


def register_single_file_family(family: str, load: SingleFileLoader) -> None:
    """Make files that :func:`single_file.identify` calls ``family`` loadable by :func:`load_video_model`."""
    _SINGLE_FILE_LOADERS[family] = load


def _optional_path(value: Any, what: str) -> Path | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    path = Path(os.fspath(value)).expanduser()
    if not path.exists():
        raise ModelLoadError(f"{what} not found: {path}")
    return path


AUTO = "auto"
#: ComfyUI's model folders where a companion file of each role lives (``folder_paths`` names; ComfyUI lists
#: ``models/clip`` under ``text_encoders`` too)
COMPANION_FOLDERS: dict[str, tuple[str, ...]] = {"text_encoder": ("text_encoders", "clip"), "vae": ("vae",)}


def _sibling_folders(path: Path, role: str) -> list[Path]:
    """Outside ComfyUI: the companion folders beside the model's own folder (``models/diffusion_models/x`` ->
    ``models/text_encoders``, ``models/clip``, ``models/vae``)."""
    models = path.parent.parent
    return [models / name for name in COMPANION_FOLDERS[role] if (models / name).is_dir()]


def find_companion(path: Path, kind: Any, role: str, folders: list[Path] | None = None) -> Path | None:
    """The one file of ``role`` ("text_encoder" / "vae") in ``folders`` (default: :func:`_sibling_folders`) that
    fits the model file ``path`` identified as ``kind``: for Wan, an umt5 text encoder and the VAE of the model's
    generation (2.2 for TI2V-5B, else 2.1). None when there is none; a ModelLoadError naming the candidates
    when several fit (the caller must choose)."""
    from . import single_file

    if kind.family != "wan":
        return None  # an SD1.5 checkpoint carries its own text encoder and VAE
    wanted = ({"umt5"} if role == "text_encoder" else
              {"wan2.2-vae" if kind.info.get("in_dim") == 48 else "wan2.1-vae"})
    found: list[Path] = []
    for folder in folders if folders is not None else _sibling_folders(path, role):
        if not folder.is_dir():
            continue
        for candidate in sorted(folder.rglob("*")):
            if not candidate.name.lower().endswith(single_file.WEIGHT_SUFFIXES) or not candidate.is_file():
                continue
            try:
                other = single_file.identify(candidate)
            except ModelLoadError:
                continue
            if (other.family if role == "text_encoder" else other.variant) in wanted and other.role == role:
                found.append(candidate)
    if len(found) > 1:
        raise ModelLoadError(f"several {role.replace('_', ' ')} files fit {path.name}: "
                             f"{', '.join(p.name for p in found)}; choose one.")
    return found[0] if found else None


def _load_single_file(path: Path, *, family: str, dtype: torch.dtype, device: torch.device, text_encoder: Any,
                      vae: Any, low_noise_model: Any, motion_adapter: Any, tokenizer: Any,
                      companion_folders: dict[str, list[Path]] | None = None) -> VideoModel:
    from . import single_file

    kind = single_file.identify(path)
    companions = {"text_encoder": text_encoder, "vae": vae}
    for role, value in companions.items():
        if isinstance(value, str) and value.strip().lower() == AUTO:
            companions[role] = find_companion(path, kind, role, (companion_folders or {}).get(role))
    text_encoder, vae = companions["text_encoder"], companions["vae"]
    name = kind.family
    if name == "sd15":
        name = "animatediff"  # an SD1.5 image model is a video model with a motion module
        from . import sd_files  # noqa: F401  (registers the animatediff single-file loader)
    if kind.family in ("sdxl", "sd2", "sd") and isinstance(motion_adapter, (str, os.PathLike)):
        module = Path(os.fspath(motion_adapter)).expanduser()
        if single_file.is_weights_file(module):  # name both files: the pair is what does not fit
            raise ModelLoadError(
                f"{path.name} is {kind.describe()} and {module.name} is {single_file.identify(module).describe()}: "
                f"MotionKit's AnimateDiff loads an SD1.5 checkpoint (models/checkpoints) with an SD1.5 motion "
                f"module (models/animatediff_models, e.g. v3_sd15_mm.ckpt).")
    if family not in (None, "", "auto") and family != name:
        raise ModelLoadError(f"{path.name} is {kind.describe()}, not a {family} model; pick family 'auto' or "
                             f"a {family} file.")
    loader = _SINGLE_FILE_LOADERS.get(name)
    if loader is None or kind.role not in ("diffusion_model", "checkpoint"):
        loadable = "a Wan diffusion model (models/diffusion_models) or an SD1.5 checkpoint (models/checkpoints)"
        if kind.role in ("text_encoder", "vae", "motion_module", "controlnet", "lora"):
            raise ModelLoadError(f"{path.name} is {kind.describe()}, not a video diffusion model: give {loadable} "
                                 f"as the model, and this file as its {kind.role.replace('_', ' ')}.")
        what = kind.describe() if kind.family != "unknown" else "no model MotionKit recognises"
        raise ModelLoadError(f"{path.name} is {what}: MotionKit loads {loadable}, or a diffusers folder "
                             f"(ZeroScope / ModelScope, AnimateDiff, Wan).")
    request = SingleFileRequest(
        path=path, kind=kind, dtype=dtype, device=device,
        text_encoder=_optional_path(text_encoder, "text encoder file"), vae=_optional_path(vae, "VAE file"),
        low_noise_model=_optional_path(low_noise_model, "low-noise model file"),
        motion_adapter=motion_adapter, tokenizer=_optional_path(tokenizer, "tokenizer folder"))
    logger.info("loading %s (%s) as %s (%s, %s)", path, kind.variant, name, dtype, device)
    model = loader(request)
    if not isinstance(model, FAMILIES[name]):
        raise ModelLoadError(f"the {name} file loader returned a {type(model).__name__}")
    return model


def load_video_model(
    source: str | os.PathLike,
    *,
    family: str = "auto",
    dtype: str | torch.dtype = "fp32",
    device: str | torch.device = "auto",
    motion_adapter: Any = None,
    local_files_only: bool | None = None,
    text_encoder: str | os.PathLike | None = AUTO,
    vae: str | os.PathLike | None = AUTO,
    low_noise_model: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
    companion_folders: dict[str, list[Path]] | None = None,
) -> VideoModel:
    """Load a video diffusion model as a :class:`VideoModel` (frozen, eval mode, on ``device``).

    ``source``: a diffusers folder, a hub id, or a single file as ComfyUI keeps it -- a Wan diffusion model
    (``models/diffusion_models``; then ``text_encoder`` = the umt5-xxl file and ``vae`` = the Wan VAE file, and
    for Wan 2.2 A14B ``source`` = the high-noise expert and ``low_noise_model`` = the low-noise one) or an SD1.5
    checkpoint (``models/checkpoints``; then ``motion_adapter`` = an AnimateDiff motion module file, and
    ``vae`` optionally replaces the checkpoint's VAE). ``tokenizer``: a tokenizer folder, for files that carry
    none (SD1.5's CLIP outside ComfyUI). ``text_encoder`` / ``vae`` = ``"auto"``: the one fitting file in
    ``companion_folders[role]`` (default: ComfyUI's ``text_encoders`` / ``clip`` / ``vae`` folders beside the
    model file's folder; see :func:`find_companion`).

    ``motion_adapter`` (AnimateDiff): a MotionAdapter folder, hub id or instance, or a motion module file;
    required for a plain Stable Diffusion folder, optional for an AnimateDiff folder (it then replaces the
    motion modules).
    """
    target_device = resolve_device(device)
    target_dtype = resolve_dtype(dtype, target_device)
    path = Path(os.fspath(source)).expanduser()
    if path.is_file():
        return _load_single_file(path, family=family, dtype=target_dtype, device=target_device,
                                 text_encoder=text_encoder, vae=vae, low_noise_model=low_noise_model,
                                 motion_adapter=motion_adapter, tokenizer=tokenizer,
                                 companion_folders=companion_folders)
    for value, what in ((text_encoder, "text_encoder"), (vae, "vae"), (low_noise_model, "low_noise_model")):
        if value not in (None, "", AUTO):
            raise ModelLoadError(f"{what} is for a model given as single files; {source} is a folder / hub id that "
                                 f"brings its own {what.replace('_', ' ')}.")
    info = inspect_source(source, motion_adapter=motion_adapter, local_files_only=local_files_only)
    if family in (None, "", "auto"):
        name = _detect(info)
    elif family in FAMILIES:
        name = family
    else:
        raise ModelLoadError(f"unknown model family {family!r}; supported families: {', '.join(sorted(FAMILIES))} "
                             f"(or 'auto').")
    logger.info("loading %s as %s (%s, %s)", info.source, name, target_dtype, target_device)
    model = _LOADERS[name](LoadRequest(info=info, dtype=target_dtype, device=target_device))
    if not isinstance(model, FAMILIES[name]):
        raise ModelLoadError(f"the {name} loader returned a {type(model).__name__}")
    return model
