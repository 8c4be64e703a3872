"""The one module that talks to the ComfyUI host.

Everything MotionKit needs from ComfyUI -- model folders, the input/output/temp folders, the progress
bar, the interrupt flag, the device, freeing host-managed memory -- goes through the functions below.
Each has a standalone fallback, so the node pack imports and runs (tests, scripts) without ComfyUI:

* folders: ``MOTIONKIT_MODELS_DIR`` (default ``<repo>/models``), ``MOTIONKIT_INPUT_DIR``
  (``<repo>/input``), ``MOTIONKIT_OUTPUT_DIR`` (``<repo>/output``), ``MOTIONKIT_TEMP_DIR``
  (``<system temp>/motionkit``), read at call time;
* progress: a log line every ~10 %;
* cancel: a module-level flag (:func:`request_cancel` / :func:`reset_cancel`), the stand-in for
  ComfyUI's "Cancel" button.

Only ``folder_paths``, ``comfy.utils`` and ``comfy.model_management`` are used, all through the V1-era
functions that have been stable for years (reference/comfyui_host_and_ecosystem.md section 1.5).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from motion_core.errors import Cancelled, InputError, ModelLoadError

log = logging.getLogger("motionkit")

try:  # pragma: no cover - only inside ComfyUI
    import folder_paths  # type: ignore[import-not-found]
except ImportError:
    folder_paths = None

try:  # pragma: no cover - only inside ComfyUI
    import comfy.model_management as model_management  # type: ignore[import-not-found]
    import comfy.utils as comfy_utils  # type: ignore[import-not-found]
except ImportError:
    model_management = None
    comfy_utils = None

PACK_DIR = Path(__file__).resolve().parent.parent

#: our own model folder (``ComfyUI/models/motion_adapters``): LoRA sets, motion embeddings and motion
#: representations that MotionKit saves and loads.
MOTION_ADAPTERS = "motion_adapters"
# ".pt": the MotionDirector reference's LoRA lists (read with torch.load(weights_only=True) only)
MOTION_ADAPTER_EXTENSIONS = frozenset({".safetensors", ".pt"})

#: what the input-video combo lists when the host cannot tell content types itself
VIDEO_EXTENSIONS = frozenset({".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v", ".gif", ".mpg", ".mpeg",
                              ".wmv", ".flv", ".ts"})

_ANNOTATIONS = ("input", "output", "temp")


def has_host() -> bool:
    """True when running inside ComfyUI (its ``folder_paths`` module imported)."""
    return folder_paths is not None


# ------------------------------------------------------------------------------------------ folders
def _env_dir(var: str, default: Path) -> Path:
    value = os.environ.get(var, "").strip()
    return Path(value).expanduser() if value else default


def models_root() -> Path:
    """Standalone only: the folder that stands in for ``ComfyUI/models``."""
    return _env_dir("MOTIONKIT_MODELS_DIR", PACK_DIR / "models")


def _register_motion_adapters_folder() -> None:
    """Make ``models/motion_adapters`` a model folder of the host (extra_model_paths.yaml may add more)."""
    if folder_paths is None:
        return
    default = os.path.join(folder_paths.models_dir, MOTION_ADAPTERS)
    table = folder_paths.folder_names_and_paths
    if MOTION_ADAPTERS in table:
        paths, extensions = table[MOTION_ADAPTERS]
        if default not in paths:
            paths.append(default)
        table[MOTION_ADAPTERS] = (paths, set(extensions) | set(MOTION_ADAPTER_EXTENSIONS))
    else:
        try:
            folder_paths.add_model_folder_path(MOTION_ADAPTERS, default, is_default=True)
        except TypeError:  # ComfyUI before is_default existed
            folder_paths.add_model_folder_path(MOTION_ADAPTERS, default)
        paths, _ = folder_paths.folder_names_and_paths[MOTION_ADAPTERS]
        table[MOTION_ADAPTERS] = (paths, set(MOTION_ADAPTER_EXTENSIONS))


_register_motion_adapters_folder()


def models_dirs(kind: str) -> list[Path]:
    """Every folder of model kind ``kind`` (``"diffusers"``, ``"motion_adapters"``, ...), default first."""
    if folder_paths is not None:
        try:
            return [Path(p) for p in folder_paths.get_folder_paths(kind)]
        except KeyError:
            return [Path(folder_paths.models_dir) / kind]
    return [models_root() / kind]


def model_save_dir(kind: str) -> Path:
    """Where MotionKit writes a file for model kind ``kind`` (an exported LoRA for ``loras`` or
    ``animatediff_motion_lora``): the folder of that kind inside ComfyUI's own models folder, never one that
    another pack registered inside its own code folder (AnimateDiff-Evolved lists its ``motion_lora`` folder
    first; files there would be lost when the pack updates)."""
    dirs = models_dirs(kind)
    if folder_paths is not None:
        models = Path(folder_paths.models_dir).resolve()
        inside = [d for d in dirs if d.resolve() == models / kind or models in d.resolve().parents]
        return inside[0] if inside else models / kind
    return dirs[0]


def _is_diffusers_model(folder: Path) -> bool:
    return (folder / "model_index.json").is_file() or (folder / "unet").is_dir() or (
        folder / "transformer").is_dir()


def _is_motion_adapter_folder(folder: Path) -> bool:
    config = folder / "config.json"
    if not config.is_file():
        return False
    try:
        head = config.read_text(encoding="utf-8", errors="replace")[:4096]
    except OSError:
        return False
    return '"MotionAdapter"' in head


def _walk_model_folders(roots: list[Path], accept, max_depth: int = 3) -> list[str]:
    """Names (relative, ``/``-separated) of folders under ``roots`` that ``accept``; no descent into them."""
    found: set[str] = set()
    for root in roots:
        if not root.is_dir():
            continue
        stack: list[tuple[Path, int]] = [(root, 0)]
        while stack:
            folder, depth = stack.pop()
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                continue
            for child in children:
                if accept(child):
                    found.add(child.relative_to(root).as_posix())
                elif depth + 1 < max_depth and not _is_diffusers_model(child):
                    stack.append((child, depth + 1))  # never list the components inside a model
    return sorted(found, key=str.lower)


def list_diffusers_models() -> list[str]:
    """Model folders in ``models/diffusers``: those with a ``model_index.json`` or a ``unet/`` or
    ``transformer/`` subfolder (AnimateDiff MotionAdapter folders are listed separately)."""
    return _walk_model_folders(models_dirs("diffusers"), _is_diffusers_model)


def list_animatediff_motion_adapters() -> list[str]:
    """Diffusers ``MotionAdapter`` folders (config.json naming ``MotionAdapter``) in ``models/diffusers``."""
    return _walk_model_folders(models_dirs("diffusers"), _is_motion_adapter_folder)


def _resolve_in(roots: list[Path], name: str, what: str) -> Path:
    rel = _safe_relative(name, what)
    for root in roots:
        candidate = root / rel
        if candidate.exists():
            return candidate
    where = ", ".join(str(r) for r in roots) or "(no folder configured)"
    raise ModelLoadError(f"{what} '{name}' was not found in {where}. Put it there, or refresh the node list "
                         "(press 'r' in ComfyUI) if you just added it.")


def diffusers_model_path(name: str) -> Path:
    """Full path of a folder listed by :func:`list_diffusers_models` or
    :func:`list_animatediff_motion_adapters`."""
    return _resolve_in(models_dirs("diffusers"), name, "Model folder")


def _is_sparsectrl_folder(folder: Path) -> bool:
    config = folder / "config.json"
    try:
        return config.is_file() and '"SparseControlNetModel"' in config.read_text(encoding="utf-8",
                                                                                  errors="replace")[:4096]
    except OSError:
        return False


def list_sparsectrl_models() -> list[str]:
    """Diffusers ``SparseControlNetModel`` folders in ``models/controlnet`` and ``models/diffusers``."""
    return _walk_model_folders(models_dirs("controlnet") + models_dirs("diffusers"), _is_sparsectrl_folder)


def sparsectrl_model_path(name: str) -> Path:
    """Full path of a folder listed by :func:`list_sparsectrl_models`."""
    return _resolve_in(models_dirs("controlnet") + models_dirs("diffusers"), name, "SparseCtrl folder")


# ComfyUI's own folders of single model files (folder_paths names), where users keep the Wan, SD1.5,
# AnimateDiff and SparseCtrl files MotionKit loads directly. ComfyUI lists models/unet under diffusion_models
# and models/clip under text_encoders; animatediff_models is registered by AnimateDiff-Evolved (without it, only
# ComfyUI/models/animatediff_models is read).
DIFFUSION_MODELS = "diffusion_models"
CHECKPOINTS = "checkpoints"
TEXT_ENCODERS = "text_encoders"
VAE = "vae"
ANIMATEDIFF_MODELS = "animatediff_models"
CONTROLNET = "controlnet"
#: file endings of model files (``folder_paths.supported_pt_extensions``)
WEIGHT_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pt2", ".pth", ".bin")


def list_model_files(kind: str) -> list[str]:
    """Weight files (relative names, ``/``-separated) in every folder of model kind ``kind``."""
    if folder_paths is not None:
        try:
            names = folder_paths.get_filename_list(kind)
        except KeyError:  # a kind nobody registered (animatediff_models without AnimateDiff-Evolved)
            names = None
        if names is not None:
            return sorted((n for n in names if n.lower().endswith(WEIGHT_EXTENSIONS)), key=str.lower)
    found: set[str] = set()
    for root in models_dirs(kind):
        if root.is_dir():
            for path in root.rglob("*"):
                if path.is_file() and path.name.lower().endswith(WEIGHT_EXTENSIONS):
                    found.add(path.relative_to(root).as_posix())
    return sorted(found, key=str.lower)


def model_file_path(kind: str, name: str) -> Path:
    """Full path of a file listed by :func:`list_model_files` for ``kind``."""
    if folder_paths is not None:
        try:
            full = folder_paths.get_full_path(kind, name)
        except KeyError:
            full = None
        if full is not None:
            return Path(full)
    what = {DIFFUSION_MODELS: "Diffusion model file", CHECKPOINTS: "Checkpoint", TEXT_ENCODERS: "Text encoder file",
            VAE: "VAE file", ANIMATEDIFF_MODELS: "Motion module file", CONTROLNET: "ControlNet file"}.get(kind, "File")
    return _resolve_in(models_dirs(kind), name, what)


def motion_adapters_dir() -> Path:
    """Where MotionKit saves motion adapters by default (the first ``motion_adapters`` folder)."""
    return models_dirs(MOTION_ADAPTERS)[0]


def list_motion_adapters() -> list[str]:
    """``.safetensors`` files in every ``models/motion_adapters`` folder (relative names)."""
    if folder_paths is not None:
        return sorted(folder_paths.get_filename_list(MOTION_ADAPTERS), key=str.lower)
    found: set[str] = set()
    for root in models_dirs(MOTION_ADAPTERS):
        if root.is_dir():
            for path in root.rglob("*"):
                if path.is_file() and path.suffix.lower() in MOTION_ADAPTER_EXTENSIONS:
                    found.add(path.relative_to(root).as_posix())
    return sorted(found, key=str.lower)


def motion_adapter_path(name: str) -> Path:
    """Full path of a motion adapter file listed by :func:`list_motion_adapters`."""
    if folder_paths is not None:
        full = folder_paths.get_full_path(MOTION_ADAPTERS, name)
        if full is None:
            raise InputError(f"Motion adapter '{name}' was not found in {MOTION_ADAPTERS} "
                             f"({', '.join(map(str, models_dirs(MOTION_ADAPTERS)))}).")
        return Path(full)
    return _resolve_in(models_dirs(MOTION_ADAPTERS), name, "Motion adapter")


def input_dir() -> Path:
    if folder_paths is not None:
        return Path(folder_paths.get_input_directory())
    return _env_dir("MOTIONKIT_INPUT_DIR", PACK_DIR / "input")


def output_dir() -> Path:
    if folder_paths is not None:
        return Path(folder_paths.get_output_directory())
    return _env_dir("MOTIONKIT_OUTPUT_DIR", PACK_DIR / "output")


def temp_dir() -> Path:
    if folder_paths is not None:
        return Path(folder_paths.get_temp_directory())
    return _env_dir("MOTIONKIT_TEMP_DIR", Path(tempfile.gettempdir()) / "motionkit")


def list_input_videos() -> list[str]:
    """Video files at the top of the input folder (what the core Load Video node lists too)."""
    folder = input_dir()
    if not folder.is_dir():
        return []
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if folder_paths is not None and hasattr(folder_paths, "filter_files_content_types"):
        return sorted(folder_paths.filter_files_content_types(files, ["video"]))
    return [f for f in files if Path(f).suffix.lower() in VIDEO_EXTENSIONS]


def _split_annotation(name: str) -> tuple[str, str]:
    """``"clip.mp4 [output]"`` -> ``("clip.mp4", "output")`` (ComfyUI's annotated file names)."""
    stripped = name.strip()
    for kind in _ANNOTATIONS:
        suffix = f" [{kind}]"
        if stripped.endswith(suffix):
            return stripped[: -len(suffix)], kind
    return stripped, "input"


def _safe_relative(name: str, what: str) -> Path:
    """A relative path that stays inside its base folder (subfolders allowed, ``..`` and absolute not)."""
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise InputError(f"{what}: empty or invalid name {name!r}.")
    rel = Path(name.strip().replace("\\", "/"))
    if rel.is_absolute() or rel.drive or any(part == ".." for part in rel.parts):
        raise InputError(f"{what} '{name}' must be a name inside its folder, not a path outside it.")
    return rel


def annotated_input_path(name: str) -> Path:
    """Full path of a file name picked in an input combo (``"clip.mp4"``, ``"sub/clip.mp4 [output]"``)."""
    base_name, kind = _split_annotation(name)
    _safe_relative(base_name, "Input file")  # the host itself does not refuse '..' here
    if folder_paths is not None:
        return Path(folder_paths.get_annotated_filepath(name))
    base = {"input": input_dir, "output": output_dir, "temp": temp_dir}[kind]()
    return base / _safe_relative(base_name, "Input file")


def file_fingerprint(path: Path | str) -> str:
    """sha256 of path, size and modification time: changes whenever the file is replaced or edited."""
    p = Path(path)
    try:
        st = p.stat()
        token = f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        token = f"{p}|missing"
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def safe_filename(name: str) -> str:
    """``name`` when it is a plain file name that can be written on every platform; :class:`InputError` for
    anything that could leave the folder it is written to (path separators, ``..``, absolute paths, drive
    letters, control characters), that Windows refuses (``CON``, ``nul.txt``, ``a?b``, a trailing dot), or that
    is too long for a file name once MotionKit adds its suffixes (``<name>_high_noise.safetensors``, the
    temporaries of atomic writes; :data:`motion_core.names.MAX_NAME_BYTES` bytes at most).

    Every node that writes a file passes its user-given name through this (Train nodes already in
    ``VALIDATE_INPUTS``, so a bad name is refused when the prompt is queued, not after training).
    """
    from motion_core.names import check_file_name

    return check_file_name(name, "File name")


# ------------------------------------------------------------------------------------------ device
def torch_device(choice: str = "auto"):
    """The torch device for ``"auto"``, ``"cuda"``, ``"cuda:1"``, ``"cpu"``, ``"mps"``.

    ``"auto"`` is the host's main device inside ComfyUI (respects ``--cpu``, ``--directml`` ...), else
    CUDA when available, else MPS, else CPU.
    """
    import torch

    choice = (choice or "auto").strip().lower()
    if choice == "auto":
        if model_management is not None:
            return model_management.get_torch_device()
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(choice)
    except (RuntimeError, ValueError):
        raise InputError(f"Unknown device '{choice}'. Use auto, cuda, cuda:<n>, mps or cpu.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was chosen but no CUDA GPU is available here. Use 'auto' or 'cpu'.")
    return device


def weight_dtype(choice: str, device) -> str:
    """``"auto"`` -> ``"fp16"`` on a GPU (CUDA/MPS), ``"fp32"`` on the CPU; other choices pass through."""
    choice = (choice or "auto").strip().lower()
    if choice != "auto":
        return choice
    return "fp16" if getattr(device, "type", str(device)) in ("cuda", "mps") else "fp32"


def free_host_memory() -> None:
    """Ask the host to unload the models it manages before MotionKit's own heavy work (our diffusers
    models are not managed by ComfyUI, so it would not evict its own for us)."""
    if model_management is None:
        return
    model_management.unload_all_models()
    model_management.soft_empty_cache()


# ------------------------------------------------------------------------------------------ grad mode
_Fn = TypeVar("_Fn", bound=Callable[..., Any])


def ordinary_tensors(value: Any) -> Any:
    """``value`` with every inference tensor in it (also inside lists, tuples and dicts, as in CONDITIONING
    or LATENT) replaced by an ordinary copy; anything else is returned as it is."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.clone() if value.is_inference() else value
    if isinstance(value, list):
        return [ordinary_tensors(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(ordinary_tensors(v) for v in value)
    if isinstance(value, dict):
        return {k: ordinary_tensors(v) for k, v in value.items()}
    return value


def node_function(function: _Fn) -> _Fn:
    """Wrap a node's ``FUNCTION`` so that MotionKit may use autograd inside the host.

    ComfyUI runs every prompt under ``torch.inference_mode()`` (``execution.py``), which
    ``torch.enable_grad()`` does not leave, and every tensor created there is an *inference tensor* that
    autograd refuses to save for backward. Our node functions therefore run under
    ``inference_mode(False)`` + ``no_grad()``: everything MotionKit creates -- the weights a loader makes
    (which the host caches and hands to later prompts), latents, representations, adapters -- is an
    ordinary tensor, and ``motion_core`` switches autograd on exactly where it needs it (the trainer, the
    guidance energy, the activation probe). Inference tensors that come from other nodes (IMAGE, MASK,
    LATENT, CONDITIONING) are copied once here. ``no_grad`` keeps the speed of inference mode for the rest
    (``bench/bench_grad_mode.py`` measures the two side by side).

    Applied to every node class by ``nodes/__init__.py``: one mechanism, not a patch per node.
    """
    if getattr(function, "__motionkit_node_function__", False):
        return function

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.inference_mode(False), torch.no_grad():
            args = tuple(ordinary_tensors(a) for a in args)
            kwargs = {k: ordinary_tensors(v) for k, v in kwargs.items()}
            return function(*args, **kwargs)

    wrapper.__motionkit_node_function__ = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ progress
class Progress:
    """A progress bar for one long job. Call it as a motion_core progress callback
    (``progress(step, total, info)``) or use :meth:`update_absolute`.

    Inside ComfyUI this is ``comfy.utils.ProgressBar``: the node's bar in the UI moves, and the host's
    progress hook raises its interrupt exception when the user pressed Cancel. Standalone it logs.
    """

    def __init__(self, total: int, label: str = "MotionKit", node_id: str | None = None) -> None:
        self.total = max(1, int(total))
        self.label = label
        self.value = 0
        self._last_log = 0.0
        self._bar = None
        if comfy_utils is not None:  # node_id is a newer keyword: pass it only when there is one
            kwargs = {"node_id": node_id} if node_id is not None else {}
            self._bar = comfy_utils.ProgressBar(self.total, **kwargs)

    def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
        if total is not None:
            self.total = max(1, int(total))
        self.value = int(value)
        if self._bar is not None:
            self._bar.update_absolute(self.value, self.total, preview)
            return
        now = time.monotonic()
        if self.value >= self.total or now - self._last_log > 2.0 or self.value == 1:
            self._last_log = now
            log.info("%s: %d/%d", self.label, self.value, self.total)

    def __call__(self, step: int, total: int, info: dict | None = None) -> None:
        # the sampler labels each step (e.g. "motion guidance" vs "sampling"): say when the phase changes
        phase = (info or {}).get("label")
        if phase and phase != getattr(self, "phase", None):
            self.phase = phase
            log.info("%s: step %d/%d: %s", self.label, step, total, phase)
        self.update_absolute(step, total)


# ------------------------------------------------------------------------------------------ cancel
_cancel_flag = threading.Event()


def cancel_requested() -> bool:
    """True when the user asked to stop (ComfyUI's Cancel button, or :func:`request_cancel`)."""
    if model_management is not None:
        return bool(model_management.processing_interrupted())
    return _cancel_flag.is_set()


def request_cancel() -> None:
    """Standalone stand-in for pressing Cancel (tests, scripts); inside ComfyUI it interrupts the host."""
    if model_management is not None:
        model_management.interrupt_current_processing(True)
    else:
        _cancel_flag.set()


def reset_cancel() -> None:
    """Clear a pending cancel (ComfyUI does this itself when a new prompt starts)."""
    if model_management is not None:
        model_management.interrupt_current_processing(False)
    _cancel_flag.clear()


def throw_if_cancelled() -> None:
    """Raise when a cancel is pending (and consume it, as the host does)."""
    if model_management is not None:
        model_management.throw_exception_if_processing_interrupted()
    elif _cancel_flag.is_set():
        _cancel_flag.clear()
        raise Cancelled("Cancelled by the user.")


@contextlib.contextmanager
def cancellation() -> Iterator[None]:
    """Wrap a long motion_core call: a :class:`Cancelled` from it consumes the pending cancel and, inside
    ComfyUI, becomes the host's own interrupt exception (the UI then reports "interrupted", not an error).
    """
    try:
        yield
    except Cancelled:
        if model_management is not None:
            model_management.interrupt_current_processing(True)
            model_management.throw_exception_if_processing_interrupted()
        _cancel_flag.clear()
        raise
