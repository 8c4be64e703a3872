"""What each MotionKit loader lists: files and folders told apart by their headers and configs, cheaply.

Not a ``nodes_*`` module, so it registers no nodes. Both loaders of ``models/motion_adapters`` and the
video-model loader call it from ``INPUT_TYPES`` (every refresh of the node list) and ``VALIDATE_INPUTS``:

* a ``.safetensors`` file is classified by the JSON header only (the first 8 bytes give its length; no
  tensor is read): ``format = motionkit.motion_representation`` is a MotionClone motion representation,
  anything else readable (MotionKit LoRAs and motion embeddings, AnimateDiff-Evolved motion LoRAs, other
  LoRAs) is a motion adapter; a ``.pt`` file is a MotionDirector reference LoRA list. A file whose header
  cannot be read is *unknown*: listed as an adapter (never as a representation) and left to the loader,
  which says what is wrong with it;
* a model folder is classified by ``model_index.json`` and the ``<component>/config.json`` class names, as
  :func:`motion_core.backbones.loading.inspect_source` reads them, with the rules of its family detectors
  (``tests/test_model_files.py`` keeps the two in agreement) -- without importing diffusers.

Results are cached by (path, modification time, size) of what was read, so a list stays fast and follows
a file that is replaced.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from motion_core.adapters.representation import FORMAT as REPRESENTATION_FORMAT
from motion_core.errors import InputError, ModelLoadError

from . import host

ADAPTER = "adapter"
REPRESENTATION = "representation"
UNKNOWN = "unknown"
#: safetensors refuses headers above 100 MB; anything larger is not a file we wrote
MAX_HEADER_BYTES = 100_000_000
_MAX_CACHE = 4096


def _stat_key(path: Path) -> tuple[str, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path), st.st_mtime_ns, st.st_size)


def _bounded(cache: dict) -> dict:
    if len(cache) > _MAX_CACHE:
        cache.clear()
    return cache


# ------------------------------------------------------------------------------------------ motion files
def safetensors_metadata(path: str | os.PathLike) -> dict[str, str] | None:
    """The ``__metadata__`` of a ``.safetensors`` file read from its header alone ({} when it has none);
    None when the file is not a readable safetensors file."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return None
            size = int.from_bytes(head, "little")
            if not 2 <= size <= MAX_HEADER_BYTES:
                return None
            raw = f.read(size)
    except OSError:
        return None
    if len(raw) < size:
        return None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    meta = header.get("__metadata__")
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


_KINDS: dict[tuple[str, int, int], str] = {}


def motion_file_kind(path: str | os.PathLike) -> str:
    """:data:`REPRESENTATION`, :data:`ADAPTER` or :data:`UNKNOWN` (unreadable) for a file of
    ``models/motion_adapters``."""
    path = Path(path)
    key = _stat_key(path)
    if key is None:
        return UNKNOWN
    if key in _KINDS:
        return _KINDS[key]
    if path.suffix.lower() != ".safetensors":
        kind = ADAPTER  # the MotionDirector reference's .pt LoRA lists
    else:
        meta = safetensors_metadata(path)
        if meta is None:
            kind = UNKNOWN
        elif meta.get("format") == REPRESENTATION_FORMAT:
            kind = REPRESENTATION
        else:
            kind = ADAPTER
    _bounded(_KINDS)[key] = kind
    return kind


def _kind_of_name(name: str) -> str:
    try:
        return motion_file_kind(host.motion_adapter_path(name))
    except (InputError, ModelLoadError):
        return UNKNOWN


def list_motion_adapter_files() -> list[str]:
    """Files of ``models/motion_adapters`` that Load Motion Adapter offers (everything but representations)."""
    return [n for n in host.list_motion_adapters() if _kind_of_name(n) != REPRESENTATION]


def list_motion_representation_files() -> list[str]:
    """Files of ``models/motion_adapters`` that are MotionClone motion representations."""
    return [n for n in host.list_motion_adapters() if _kind_of_name(n) == REPRESENTATION]


def motion_file_problem(name: str, wanted: str) -> str | bool:
    """``VALIDATE_INPUTS`` answer for a file picked in a motion-adapter (``wanted = ADAPTER``) or
    motion-representation (``REPRESENTATION``) combo: True, or what is wrong and what to do."""
    try:
        path = host.motion_adapter_path(name)
    except (InputError, ModelLoadError) as exc:
        return str(exc)
    if not Path(path).is_file():
        return (f"'{name}' was not found in {', '.join(map(str, host.models_dirs(host.MOTION_ADAPTERS)))}. "
                "Put the file there and refresh the node list (press 'r').")
    kind = motion_file_kind(path)
    if wanted == REPRESENTATION and kind == ADAPTER:
        return (f"'{name}' is a motion adapter (LoRA or motion embeddings), not a motion representation: load it "
                "with Load Motion Adapter, or pick a file saved by Save Motion Representation.")
    if wanted == ADAPTER and kind == REPRESENTATION:
        return (f"'{name}' is a MotionClone motion representation, not a motion adapter: load it with Load "
                "Motion Representation.")
    return True


# ------------------------------------------------------------------------------------------ model folders
@dataclass(frozen=True)
class FolderKind:
    """What a model folder is: ``family`` (``unet3d``, ``animatediff``, ``wan``, or ``sd15`` = a Stable
    Diffusion 1.5 folder that becomes ``animatediff`` with a MotionAdapter), or None with ``names`` = the
    classes it declares (empty when it declares none, e.g. an empty ``model_index.json``)."""

    family: str | None
    names: tuple[str, ...] = ()

    @property
    def loadable(self) -> bool:
        return self.family is not None

    @property
    def foreign(self) -> bool:
        """It names classes, and none that MotionKit loads."""
        return self.family is None and bool(self.names)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _classify(index: dict, classes: dict[str, str], configs: dict[str, dict], subfolders: set[str]) -> FolderKind:
    """The rules of motion_core.backbones' detectors (loading._detect_unet3d / _detect_animatediff, wan.detect_wan
    and what load_wan accepts), plus which Stable Diffusion UNets an AnimateDiff MotionAdapter fits."""
    pipeline = str(index.get("_class_name") or "")
    unet, transformer = classes.get("unet", ""), classes.get("transformer", "")
    names = tuple(n for n in (pipeline, unet, transformer) if n) or tuple(sorted(set(classes.values())))
    if unet == "UNet3DConditionModel" or pipeline in ("TextToVideoSDPipeline", "VideoToVideoSDPipeline"):
        return FolderKind("unet3d", names)
    if "XL" in pipeline:  # SDXL and AnimateDiff-SDXL: other text encoders and widths
        return FolderKind(None, names)
    if unet == "UNetMotionModel" or pipeline.startswith("AnimateDiff"):
        return FolderKind("animatediff", names)
    if unet == "UNet2DConditionModel":
        config = configs.get("unet", {})
        widths = config.get("cross_attention_dim")
        widths = widths if isinstance(widths, list) else [widths]
        sd15_like = (not config.get("addition_embed_type") and config.get("in_channels", 4) in (4, None)
                     and all(w is None or (isinstance(w, int) and w <= 768) for w in widths))
        if sd15_like:  # what an AnimateDiff MotionAdapter fits: SD1.x widths, 4 latent channels
            return FolderKind("animatediff" if "motion_adapter" in subfolders else "sd15", names)
        return FolderKind(None, names)
    if transformer == "WanTransformer3DModel" and pipeline in ("", "WanPipeline", "WanImageToVideoPipeline"):
        return FolderKind("wan", names)
    return FolderKind(None, names)


_FOLDERS: dict[tuple, FolderKind] = {}


def video_model_kind(folder: str | os.PathLike) -> FolderKind:
    """What the model folder ``folder`` is (read from its JSON files; cached while they are unchanged)."""
    folder = Path(folder)
    index_path = folder / "model_index.json"
    try:
        configs = sorted(folder.glob("*/config.json"))
    except OSError:
        configs = []
    stats = tuple(_stat_key(p) for p in [index_path, *configs])
    key = (str(folder), stats)
    if key in _FOLDERS:
        return _FOLDERS[key]
    index = _read_json(index_path) if stats[0] is not None else {}
    classes: dict[str, str] = {}
    for name, value in index.items():
        if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and value[1]:
            classes[name] = str(value[1])
    component_configs: dict[str, dict] = {}
    for path in configs:
        config = _read_json(path)
        component_configs[path.parent.name] = config
        if config.get("_class_name"):
            classes[path.parent.name] = str(config["_class_name"])
    subfolders = {p.parent.name for p in configs}
    kind = _classify(index, classes, component_configs, subfolders)
    _bounded(_FOLDERS)[key] = kind
    return kind


def _kind_of_model(name: str) -> FolderKind:
    try:
        return video_model_kind(host.diffusers_model_path(name))
    except (InputError, ModelLoadError):
        return FolderKind(None)


def list_video_models() -> list[str]:
    """Folders of ``models/diffusers`` whose config names a model MotionKit loads."""
    return [n for n in host.list_diffusers_models() if _kind_of_model(n).loadable]


def video_model_problem(name: str) -> str | bool:
    """``VALIDATE_INPUTS`` answer for a folder picked in Load Video Model: True, or what is wrong. A folder
    that names no class at all is left to the loader (it reports what is missing)."""
    if name not in host.list_diffusers_models():
        where = ", ".join(str(p) for p in host.models_dirs("diffusers"))
        return f"Model folder '{name}' was not found in {where}."
    kind = _kind_of_model(name)
    if kind.foreign:
        return (f"Model folder '{name}' holds a {' / '.join(kind.names)}, which MotionKit cannot load. MotionKit "
                "loads UNet3D text-to-video models (ZeroScope, ModelScope), AnimateDiff (a Stable Diffusion 1.5 "
                "folder + a MotionAdapter, or an AnimateDiff pipeline) and Wan 2.1 / 2.2; pick one of those.")
    return True


# ------------------------------------------------------------------------------------------ model files
# ComfyUI-style single files (a Wan diffusion model, an SD1.5 checkpoint, umt5, a VAE, a motion module,
# SparseCtrl) are told apart by motion_core.backbones.single_file.identify: from the safetensors header, or for
# a .ckpt from a memory-mapped torch.load(weights_only=True) -- names and shapes only, never the weights.
_WEIGHTS: dict[tuple[str, int, int], object] = {}


def weights_kind(path: str | os.PathLike):
    """The :class:`~motion_core.backbones.single_file.WeightsKind` of a model file, or None when it cannot be
    read (a truncated or foreign file: listed, and left to the loader, which says what is wrong)."""
    from motion_core.backbones.single_file import identify

    key = _stat_key(Path(path))
    if key is None:
        return None
    if key not in _WEIGHTS:
        try:
            kind = identify(path) if _cheap_to_identify(Path(path)) else None
        except (ModelLoadError, InputError, OSError):
            kind = None
        _bounded(_WEIGHTS)[key] = kind
    return _WEIGHTS[key]


def _cheap_to_identify(path: Path) -> bool:
    """Whether the names and shapes can be read without reading the weights: a safetensors header, or a
    zip-format torch file (memory-mapped). A file in torch's old pre-zip format would be read whole -- gigabytes
    on every refresh of the lists -- so it is listed unclassified and left to the loader."""
    if path.name.lower().endswith((".safetensors", ".sft")):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _files(kind: str, accept) -> list[str]:
    names = []
    for name in host.list_model_files(kind):
        try:
            found = weights_kind(host.model_file_path(kind, name))
        except (InputError, ModelLoadError):
            continue
        if found is None or accept(found):
            names.append(name)
    return names


def _wan_dit(k) -> bool:
    return k.family == "wan" and k.role == "diffusion_model" and not k.info.get("other")


def _sd15_checkpoint(k) -> bool:
    return k.family == "sd15" and k.role == "checkpoint"


def list_video_model_files() -> list[str]:
    """Wan diffusion models of ``models/diffusion_models`` and SD1.5 checkpoints of ``models/checkpoints``."""
    return sorted(set(_files(host.DIFFUSION_MODELS, _wan_dit)) | set(_files(host.CHECKPOINTS, _sd15_checkpoint)),
                  key=str.lower)


def video_model_file_path(name: str) -> Path:
    """Where a name of :func:`list_video_model_files` is (diffusion_models first, then checkpoints)."""
    for kind in (host.DIFFUSION_MODELS, host.CHECKPOINTS):
        if name in host.list_model_files(kind):
            return host.model_file_path(kind, name)
    where = ", ".join(str(p) for kind in (host.DIFFUSION_MODELS, host.CHECKPOINTS) for p in host.models_dirs(kind))
    raise ModelLoadError(f"Model file '{name}' was not found in {where}. Put it there, or refresh the node list "
                         "(press 'r') if you just added it.")


def list_wan_model_files() -> list[str]:
    """Wan diffusion models of ``models/diffusion_models`` (the low-noise expert of a Wan 2.2 A14B pair)."""
    return _files(host.DIFFUSION_MODELS, _wan_dit)


def list_text_encoder_files() -> list[str]:
    """umt5 text encoders (Wan's) of ``models/text_encoders`` / ``models/clip``."""
    return _files(host.TEXT_ENCODERS, lambda k: k.family == "umt5")


def list_vae_files() -> list[str]:
    """Wan VAEs (2.1, 2.2) and SD VAEs of ``models/vae``."""
    return _files(host.VAE, lambda k: k.role == "vae" and k.family in ("wan", "sd"))


def list_motion_module_files() -> list[str]:
    """AnimateDiff SD1.5 motion modules (v1/v2/v3) of ``models/animatediff_models``."""
    return _files(host.ANIMATEDIFF_MODELS, lambda k: k.role == "motion_module" and k.variant != "sdxl")


def list_sparsectrl_files() -> list[str]:
    """AnimateDiff SparseCtrl files (rgb, scribble) of ``models/controlnet``."""
    return _files(host.CONTROLNET, lambda k: k.family == "animatediff" and k.role == "controlnet")


def is_file_name(name: str) -> bool:
    """Whether a combo value names a weights file (rather than a diffusers folder)."""
    return str(name).lower().endswith(host.WEIGHT_EXTENSIONS)
