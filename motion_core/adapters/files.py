"""Motion adapter files: MotionKit's ``.safetensors`` format, the reference's ``.pt`` lists, exports.

MotionKit format (``format = motionkit.motion_adapter``), one file per trained adapter, written atomically:

* tensors: ``lora.<set>.<layer>.lora_A.weight`` ``[r, in]`` and ``lora.<set>.<layer>.lora_B.weight``
  ``[out, r]`` (float32; ``<layer>`` is the full module name in the diffusers denoiser), plus
  ``noise_prior.<i>`` ``[1, C, F, h, w]``: the DDIM-inverted latents of training clip ``i`` (optional);
* metadata (all strings, as safetensors requires): ``format``, ``format_version``, ``kind`` (``lora``; other
  adapter kinds register a loader with :func:`register_adapter_kind`), ``method``, ``family``, ``base_model``,
  ``rank``, ``steps``, ``training_config`` (JSON), ``sets`` (JSON: name, role, rank, alpha, layer count, in
  file order), ``default_strength``, ``default_appearance_strength``, ``strength_schedule`` (JSON or empty),
  ``noise_prior`` (JSON: default p, inversion steps, clip shapes), ``extra`` (JSON), ``motionkit_version``,
  ``created``.

Imports: the MotionDirector reference saves ``torch.save(list)`` files ``[up_0, down_0, up_1, down_1, ...]``
with no keys (spec §1.3). :func:`import_reference_lora` reads them with ``torch.load(weights_only=True)``
and keeps them *ordered*: layer ``i`` of the file is matched at activation to the ``i``-th target layer of
the model in the reference's module order (``mid_block`` last), with a shape check on every layer.

Exports (:func:`export_adapter`; an adapter trained on Wan 2.2 A14B -- layer names prefixed by the expert,
``extra["experts"] = ["high_noise", "low_noise"]`` -- is written as a pair ``<stem>_high_noise`` /
``<stem>_low_noise``, one file per expert in the chosen format, :func:`export_adapter_files`):

* ``"diffusers"`` -- ``unet.<layer>.lora_A.weight`` / ``lora_B.weight``, what diffusers'
  ``load_lora_weights`` reads for UNet pipelines (AnimateDiffPipeline; UNet3DConditionModel has no LoRA
  loader in diffusers, load those with peft); ``alpha/r`` folded into ``lora_B``;
* ``"peft"`` -- ``<layer>.lora_A.weight`` / ``lora_B.weight`` (``get_peft_model_state_dict`` layout) with the
  ``LoraConfig`` as JSON metadata ``peft_config``: ``inject_adapter_in_model`` + ``set_peft_model_state_dict``;
* ``"animatediff_evolved"`` -- AnimateDiff-Evolved's motion LoRA keys (original AnimateDiff module names,
  ``…motion_modules.M.temporal_transformer.transformer_blocks.K.attention_blocks.{0,1}.processor.to_q_lora.
  down.weight``; ``ff.net.0.proj_lora.down.weight``), ``alpha/r`` folded into ``up``; motion sets of
  ``animatediff`` adapters only (reference/comfyui_host_and_ecosystem.md §4.2, §5.4).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..errors import AdapterMismatchError, InputError
from .lora import ROLE_APPEARANCE, ROLE_MOTION, LoraSet, MotionLoRA, StrengthSchedule

__all__ = [
    "EXPORT_FORMATS",
    "FORMAT",
    "FORMAT_VERSION",
    "adapter_path",
    "check_save_name",
    "default_adapters_dir",
    "export_adapter",
    "export_adapter_files",
    "expert_export_path",
    "import_animatediff_evolved",
    "import_reference_lora",
    "list_adapters",
    "load_adapter",
    "read_adapter_file",
    "read_reference_pt",
    "register_adapter_kind",
    "register_reference_importer",
    "safetensors_error",
    "save_adapter",
    "save_named_adapter",
    "write_safetensors",
]

FORMAT = "motionkit.motion_adapter"
FORMAT_VERSION = 1
ADAPTER_EXTENSIONS = (".safetensors", ".pt", ".pth")
EXPORT_FORMATS = ("diffusers", "peft", "animatediff_evolved", "comfyui_wan")

#: ``kind`` metadata value -> ``loader(tensors, metadata, path) -> adapter`` (other adapter kinds register)
ADAPTER_KINDS: dict[str, Callable[[dict[str, torch.Tensor], dict[str, str], Path], Any]] = {}


def register_adapter_kind(kind: str, loader: Callable[[dict[str, torch.Tensor], dict[str, str], Path], Any]) -> None:
    """Let :func:`load_adapter` read files whose ``kind`` metadata is ``kind`` (e.g. motion embeddings)."""
    ADAPTER_KINDS[kind] = loader


#: ``importer(path) -> adapter or None`` for reference ``.pt`` files other than MotionDirector's LoRA lists
#: (e.g. Motion Inversion's ``motion_embed.pt``); tried in order before :func:`import_reference_lora`
REFERENCE_IMPORTERS: list[Callable[[Path], Any]] = []


def register_reference_importer(importer: Callable[[Path], Any]) -> None:
    """Let :func:`load_adapter` read another reference ``.pt`` format (the importer returns None for files
    that are not its format)."""
    if importer not in REFERENCE_IMPORTERS:
        REFERENCE_IMPORTERS.append(importer)


def _load_method_kinds() -> None:
    """Import every method module: methods register their adapter kinds and importers when imported."""
    from ..methods import method_names

    method_names()


# ============================================================================================ folders, names
def default_adapters_dir() -> Path:
    """``$MOTIONKIT_ADAPTERS_DIR``, else ``$MOTIONKIT_MODELS_DIR/motion_adapters``, else the pack's
    ``models/motion_adapters`` -- the same folder the nodes use outside ComfyUI."""
    env = os.environ.get("MOTIONKIT_ADAPTERS_DIR", "").strip()
    if env:
        return Path(env).expanduser()
    models = os.environ.get("MOTIONKIT_MODELS_DIR", "").strip()
    root = Path(models).expanduser() if models else Path(__file__).resolve().parents[2] / "models"
    return root / "motion_adapters"


def check_save_name(name: str) -> str:
    """A plain file name that every platform can write with every suffix MotionKit adds (no folders, no
    ``..``, no control characters, nothing Windows reserves, not too long: :mod:`motion_core.names`) or
    InputError."""
    from ..names import check_file_name

    return check_file_name(name, "Save name")


def adapter_path(name: str, folder: str | os.PathLike | None = None) -> Path:
    """``<folder>/<name>.safetensors`` for a checked save name."""
    name = check_save_name(name)
    if not name.lower().endswith(".safetensors"):
        name += ".safetensors"
    return Path(folder if folder is not None else default_adapters_dir()) / name


def list_adapters(folder: str | os.PathLike | None = None) -> list[str]:
    """Adapter files (relative names) under ``folder``."""
    root = Path(folder if folder is not None else default_adapters_dir())
    if not root.is_dir():
        return []
    return sorted((p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in ADAPTER_EXTENSIONS), key=str.lower)


# ============================================================================================ raw files
def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
                      *, what: str = "the adapter file") -> Path:
    """Write atomically: a temporary name in the same folder, then ``os.replace`` (never a half file).

    A full disk (checked before writing, and caught while writing) or an unwritable folder raises a
    :class:`~motion_core.errors.StorageError` naming the folder and the bytes the file needs; an existing
    file at ``path`` is then left as it was.
    """
    from safetensors.torch import save_file

    from ..storage import safetensors_bytes, write_atomically

    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in metadata.items()}
    return write_atomically(path, lambda tmp: save_file(data, str(tmp), metadata=meta), what=what,
                            needed=safetensors_bytes(data, meta))


def safetensors_error(path: str | os.PathLike, exc: BaseException, what: str = "a MotionKit file") -> InputError:
    """The InputError for a ``.safetensors`` file safetensors cannot open: what is wrong with it (cut off,
    not a safetensors file at all) and what to do."""
    path = Path(path)
    detail = str(exc).strip() or type(exc).__name__
    try:
        size = path.stat().st_size
    except OSError:
        size = -1
    low = detail.lower()
    if 0 <= size < 8 or "too small" in low:
        why = f"it is empty or almost ({size} bytes)"
    elif "incomplete" in low or "not fully covered" in low or "invalid header length" in low or "eof" in low:
        why = "it is incomplete: the file was cut off (an interrupted download, copy or save)"
    else:
        why = "it does not start with a safetensors header: it is another kind of file, or damaged"
    return InputError(f"{path.name} is not a readable .safetensors file: {why} (safetensors: {detail}). Get or copy "
                      f"the file again, or save it again with the tool that made it; {what} is written by MotionKit's "
                      "nodes or 'python -m motion_core'.")


def read_adapter_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"Motion adapter file {path} does not exist. Check the path, or give the name of a file in "
                         f"the motion adapters folder ({default_adapters_dir()}).")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise safetensors_error(path, exc, "a motion adapter") from None
    return tensors, metadata


def _foreign_file_message(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """Why a readable ``.safetensors`` without MotionKit's adapter metadata is not a motion adapter, and what
    it probably is."""
    keys = sorted(tensors)
    fmt = metadata.get("format", "")
    example = f" (tensors like {keys[0]!r})" if keys else ""
    if fmt == "motionkit.motion_representation":
        what = ("a MotionClone motion representation, not a motion adapter: load it with Load Motion Representation "
                "(CLI: 'clone --representation')")
    elif fmt == "motionkit.training_checkpoint" or path.name in (
            "trainable.safetensors", "optimizer.safetensors", "cache.safetensors") or path.name.startswith("rng_rank"):
        what = ("part of a MotionKit training checkpoint, not an adapter: continue that run with resume_from "
                "(CLI: 'train --resume <run folder>'); the finished adapter is models/motion_adapters/<save name>."
                "safetensors")
    elif metadata.get("source_format") == FORMAT:
        what = (f"a MotionKit adapter exported to the '{fmt or 'unknown'}' format for other tools: load the original "
                "MotionKit file (models/motion_adapters/<save name>.safetensors) instead")
    elif not keys:
        what = "a .safetensors file that holds no tensors and no MotionKit metadata"
    elif any("lora" in k.lower() for k in keys):
        what = (f"a LoRA of another tool{example}, without MotionKit's metadata: an image or video LoRA for ComfyUI "
                "belongs in models/loras and its own Load LoRA node")
    elif any(k.startswith(("model.diffusion_model.", "diffusion_model.", "first_stage_model.")) for k in keys):
        what = f"a model checkpoint{example}: it belongs in models/checkpoints or models/diffusion_models"
    else:
        what = f"a .safetensors file of another tool{example}, with {len(keys)} tensor(s) and no MotionKit metadata"
    return (f"{path.name} is not a MotionKit motion adapter: it is {what}. A motion adapter is a file saved by a "
            "MotionKit Train node or 'python -m motion_core train' (metadata format 'motionkit.motion_adapter'), a "
            "MotionDirector reference .pt, or an AnimateDiff-Evolved motion LoRA.")


def read_reference_pt(path: str | os.PathLike, what: str, *, mmap: bool = False) -> Any:
    """The content of a reference ``.pt`` read with ``torch.load(weights_only=True)`` -- never anything that
    runs code. InputError in MotionKit's words when the file is refused: a pickle that would run code (or build
    objects other than tensors) is named as such and was not loaded; a damaged file is called damaged.
    ``mmap``: map the tensors from the file instead of reading them (large checkpoints; files in torch's old
    pre-zip format cannot be mapped and are read)."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist. Check the path, or put the file in the motion adapters folder.")
    try:
        if mmap:
            try:
                return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:  # "mmap can only be used with files saved with torch.save(_use_new_zipfile...)"
                if "zipfile" not in str(exc):
                    raise
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL\s+([\w.$<>]+)", str(exc))
        holds = what[:1].upper() + what[1:]
        if found:
            raise InputError(
                f"{path.name} was NOT loaded: it contains code -- a pickle reference to {found.group(1)} that would be "
                "called when the file is unpickled. MotionKit reads .pt files only as plain tensors, so nothing in it "
                f"ran. {holds} holds tensors only: unless you know who made this file and why, delete it, and get "
                "the original file (or a .safetensors version of it) from its source.") from None
        raise InputError(f"{path.name} was not loaded: it is not a PyTorch file of plain tensors (damaged, or another "
                         f"format). {holds} holds tensors only: get the original file again.") from None
    except Exception as exc:  # zip errors of a cut-off file, I/O errors
        raise InputError(f"{path.name} cannot be read as {what}: the file is damaged or incomplete (an interrupted "
                         f"download or copy?) or not a PyTorch file ({type(exc).__name__}). Get it again.") from None


# ============================================================================================ MotionKit format
def _lora_to_file(adapter: MotionLoRA) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors: dict[str, torch.Tensor] = {}
    for s in adapter.sets:
        for layer, (a, b) in s.weights.items():
            tensors[f"lora.{s.name}.{layer}.lora_A.weight"] = a.float()
            tensors[f"lora.{s.name}.{layer}.lora_B.weight"] = b.float()
    for i, z in enumerate(adapter.noise_prior):
        tensors[f"noise_prior.{i}"] = z.float()
    info = adapter.metadata()
    import motion_core

    metadata = {
        "format": FORMAT, "format_version": str(FORMAT_VERSION), "kind": "lora",
        "method": adapter.method, "family": adapter.family, "base_model": adapter.base_model,
        "rank": str(adapter.rank), "steps": str(adapter.steps),
        "training_config": json.dumps(info["training_config"], sort_keys=True, default=str),
        "sets": json.dumps(info["sets"]),
        "default_strength": repr(float(adapter.strength)),
        "default_appearance_strength": repr(float(adapter.appearance_strength)),
        "strength_schedule": json.dumps(info["strength_schedule"]) if info["strength_schedule"] else "",
        "noise_prior": json.dumps(info["noise_prior"], default=str),
        "extra": json.dumps(info["extra"], default=str),
        "motionkit_version": getattr(motion_core, "__version__", ""),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return tensors, metadata


def metadata_json(metadata: Mapping[str, str], key: str, default: Any) -> Any:
    """A JSON-valued metadata entry of an adapter file (``default`` when absent; a clear error if corrupt)."""
    text = metadata.get(key, "")
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError as exc:
        raise AdapterMismatchError(f"adapter metadata {key!r} is not valid JSON ({exc}).") from exc


def _lora_from_file(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> MotionLoRA:
    sets_info = metadata_json(metadata, "sets", [])
    if not sets_info:
        raise AdapterMismatchError(f"{path.name} holds no LoRA sets.")
    by_set: dict[str, dict[str, list[torch.Tensor | None]]] = {s["name"]: {} for s in sets_info}
    pattern = re.compile(r"^lora\.([A-Za-z][A-Za-z0-9_]*)\.(.+)\.lora_([AB])\.weight$")
    prior: dict[int, torch.Tensor] = {}
    for key, value in tensors.items():
        m = pattern.match(key)
        if m:
            name, layer, which = m.groups()
            if name not in by_set:
                raise AdapterMismatchError(f"{path.name}: tensor {key!r} belongs to no declared LoRA set.")
            slot = by_set[name].setdefault(layer, [None, None])
            slot[0 if which == "A" else 1] = value.float()
        elif key.startswith("noise_prior."):
            prior[int(key.split(".", 1)[1])] = value.float()
        else:
            raise AdapterMismatchError(f"{path.name}: unexpected tensor {key!r}.")
    sets = []
    for info in sets_info:
        layers = by_set[info["name"]]
        broken = [layer for layer, (a, b) in layers.items() if a is None or b is None]
        if broken:
            raise AdapterMismatchError(f"{path.name}: layer {broken[0]!r} of set {info['name']!r} lacks lora_A or lora_B.")
        if len(layers) != int(info.get("layers", len(layers))):
            raise AdapterMismatchError(f"{path.name}: set {info['name']!r} declares {info['layers']} layers but holds "
                                       f"{len(layers)}: the file is damaged.")
        sets.append(LoraSet(name=info["name"], role=info["role"], rank=int(info["rank"]), alpha=float(info["alpha"]),
                            weights={k: (v[0], v[1]) for k, v in layers.items()}, ordered=bool(info.get("ordered"))))
    return MotionLoRA(
        sets=tuple(sets), method=metadata.get("method", ""), family=metadata.get("family", ""),
        base_model=metadata.get("base_model", ""), steps=int(metadata.get("steps", "0") or 0),
        training_config=metadata_json(metadata, "training_config", {}),
        strength=float(metadata.get("default_strength", "1.0") or 1.0),
        appearance_strength=float(metadata.get("default_appearance_strength", "0.0") or 0.0),
        strength_schedule=StrengthSchedule.from_json(metadata_json(metadata, "strength_schedule", None)),
        noise_prior=tuple(prior[i] for i in sorted(prior)), noise_prior_info=metadata_json(metadata, "noise_prior", {}),
        source=str(path), extra=metadata_json(metadata, "extra", {}),
    )


register_adapter_kind("lora", _lora_from_file)


def save_adapter(adapter: Any, path: str | os.PathLike) -> Path:
    """Write ``adapter`` to ``path`` (atomic). LoRA adapters use the format above; other kinds provide
    ``to_file() -> (tensors, metadata)``."""
    if isinstance(adapter, MotionLoRA):
        tensors, metadata = _lora_to_file(adapter)
    elif hasattr(adapter, "to_file"):
        tensors, metadata = adapter.to_file()
    else:
        raise InputError(f"cannot save a {type(adapter).__name__} as a motion adapter.")
    return write_safetensors(path, tensors, metadata)


def save_named_adapter(adapter: Any, name: str, folder: str | os.PathLike | None = None) -> Path:
    """Save under a user-given name in the motion adapters folder (the name is checked)."""
    return save_adapter(adapter, adapter_path(name, folder))


def load_adapter(name_or_path: str | os.PathLike, folder: str | os.PathLike | None = None) -> Any:
    """Load a motion adapter: an existing path, or a name in ``folder`` (default: the motion adapters
    folder; ``.safetensors`` may be omitted). ``.pt``/``.pth`` files are the reference's list format."""
    path = Path(name_or_path)
    if not path.is_file():
        root = Path(folder if folder is not None else default_adapters_dir())
        rel = str(name_or_path)
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise InputError(f"Motion adapter {rel!r} does not exist. Check the path, or give the name of a file in "
                             f"the motion adapters folder ({root}).")
        candidates = [root / rel] + [root / (rel + ext) for ext in ADAPTER_EXTENSIONS]
        path = next((c for c in candidates if c.is_file()), None)  # type: ignore[assignment]
        if path is None:
            raise InputError(f"Motion adapter {rel!r} was not found in {root}. Train one first, or put the file "
                             "there.")
    if path.suffix.lower() in (".pt", ".pth"):
        # a file that would run code, or a damaged one, is refused here in MotionKit's words before any importer
        read_reference_pt(path, "a reference .pt (a MotionDirector LoRA list, a Motion Inversion motion_embed.pt)")
        _load_method_kinds()
        for importer in REFERENCE_IMPORTERS:
            imported = importer(path)
            if imported is not None:
                return imported
        return import_reference_lora(path)
    tensors, metadata = read_adapter_file(path)
    if metadata.get("format") != FORMAT:
        if any(".motion_modules." in k and "_lora." in k for k in tensors):
            return import_animatediff_evolved(path)
        raise AdapterMismatchError(_foreign_file_message(path, tensors, metadata))
    version = int(metadata.get("format_version", "0") or 0)
    if version > FORMAT_VERSION:
        raise AdapterMismatchError(f"{path.name} was written by a newer MotionKit (format version {version}); "
                                   "update MotionKit to load it.")
    kind = metadata.get("kind", "lora")
    if kind not in ADAPTER_KINDS:
        _load_method_kinds()
    loader = ADAPTER_KINDS.get(kind)
    if loader is None:
        raise AdapterMismatchError(f"{path.name} is a '{kind}' adapter, which this MotionKit cannot load.")
    return loader(tensors, metadata, path)


# ============================================================================================ reference .pt
def import_reference_lora(path: str | os.PathLike, role: str | None = None) -> MotionLoRA:
    """A MotionDirector reference checkpoint (``…/temporal/lora/<step>_unet.pt`` or ``…/spatial/…``).

    The file is a list ``[up_0, down_0, up_1, down_1, …]`` read with ``torch.load(weights_only=True)``.
    ``role``: ``"motion"`` (temporal file) or ``"appearance"`` (spatial file); by default read from the path
    (``spatial`` in it -> appearance, else motion). A spatial file of N training videos holds N nested LoRAs
    per layer; it is split into ``spatial_0..spatial_{N-1}`` when the model is known (activation).
    """
    path = Path(path)
    data = read_reference_pt(path, "a MotionDirector .pt LoRA list")
    if not isinstance(data, (list, tuple)) or not data or len(data) % 2 or not all(torch.is_tensor(t) for t in data):
        raise AdapterMismatchError(
            f"{path.name} is not a MotionDirector list-format LoRA (expected a list [up, down, up, down, ...] of "
            "tensors).")
    if role is None:
        role = ROLE_APPEARANCE if "spatial" in path.as_posix().lower() else ROLE_MOTION
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    rank = None
    for i in range(0, len(data), 2):
        up, down = data[i].detach().float(), data[i + 1].detach().float()
        if up.dim() != 2 or down.dim() != 2 or up.shape[1] != down.shape[0]:
            raise AdapterMismatchError(f"{path.name}: entries {i}/{i + 1} are not an (up, down) LoRA pair "
                                       f"({tuple(up.shape)}, {tuple(down.shape)}).")
        rank = rank or down.shape[0]
        weights[f"#{i // 2}"] = (down.clone(), up.clone())
    name = "temporal" if role == ROLE_MOTION else "spatial"
    lora_set = LoraSet(name=name, role=role, rank=int(rank), alpha=float(rank), weights=weights, ordered=True)
    return MotionLoRA(sets=(lora_set,), method="motiondirector", family="unet3d", base_model="",
                      source=str(path), extra={"imported_from": "MotionDirector reference .pt"})


# ============================================================================================ exports
def _resolved_set(adapter: MotionLoRA, set_name: str | None, model: Any) -> LoraSet:
    if any(s.ordered for s in adapter.sets):
        if model is None:
            raise InputError("This adapter was imported from a reference .pt file; its layer names are only known "
                             "against a model. Pass the model to export it.")
        adapter = adapter.resolved(model)
    if set_name is None:
        motion = adapter.motion_sets
        if not motion:
            raise InputError("This adapter has no motion LoRA set; name the set to export.")
        return motion[0]
    return adapter.get_set(set_name)


def _folded(lora_set: LoraSet) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    scale = lora_set.alpha / lora_set.rank
    return {k: (a.float(), b.float() * scale) for k, (a, b) in lora_set.weights.items()}


#: diffusers UNetMotionModel motion-module names -> original AnimateDiff names (what ADE patches)
_DIFFUSERS_TO_AD = (
    (re.compile(r"\.motion_modules\.(\d+)\.transformer_blocks\."), r".motion_modules.\1.temporal_transformer.transformer_blocks."),
    (re.compile(r"\.attn1\.(to_q|to_k|to_v|to_out\.0)$"), r".attention_blocks.0.\1"),
    (re.compile(r"\.attn2\.(to_q|to_k|to_v|to_out\.0)$"), r".attention_blocks.1.\1"),
)


def animatediff_evolved_key(layer: str) -> str:
    """LoRA key stem (without ``.down.weight``) in AnimateDiff-Evolved's motion LoRA format for a diffusers
    UNetMotionModel layer name."""
    name = layer
    for pattern, repl in _DIFFUSERS_TO_AD:
        name = pattern.sub(repl, name)
    if ".temporal_transformer." not in name:
        raise InputError(f"layer {layer!r} is not inside an AnimateDiff motion module.")
    m = re.search(r"\.attention_blocks\.(\d)\.(to_q|to_k|to_v|to_out\.0)$", name)
    if m:
        proj = "to_out" if m.group(2) == "to_out.0" else m.group(2)
        return name[: m.start()] + f".attention_blocks.{m.group(1)}.processor.{proj}_lora"
    return name + "_lora"


def _expert_names(adapter: MotionLoRA, lora_set: LoraSet) -> list[str]:
    """The experts a set spans (Wan 2.2 A14B: ``["high_noise", "low_noise"]``), from the adapter's metadata;
    ``[]`` for a single-denoiser adapter."""
    experts = [str(e) for e in (adapter.extra.get("experts") or [])]
    if len(experts) < 2:
        return []
    if not all(layer.split(".", 1)[0] in experts for layer in lora_set.weights):
        raise AdapterMismatchError(f"LoRA set {lora_set.name!r} lists experts {experts} but has layers outside them.")
    return experts


def expert_export_path(path: str | os.PathLike, expert: str) -> Path:
    """Where one expert's file of a two-expert export goes: ``<stem>_<expert><suffix>`` beside ``path``."""
    p = Path(path)
    suffix = p.suffix or ".safetensors"
    return p.with_name(f"{p.stem if p.suffix else p.name}_{expert}{suffix}")


def export_adapter_files(adapter: MotionLoRA, path: str | os.PathLike, fmt: str = "diffusers", *,
                         set_name: str | None = None, model: Any = None) -> list[Path]:
    """:func:`export_adapter`, returning every file written: one, or for an adapter trained on a two-expert
    model (Wan 2.2 A14B) one per expert -- ``<stem>_high_noise`` for ``transformer`` and ``<stem>_low_noise``
    for ``transformer_2``, each with the expert's layer names (the pair ComfyUI's Wan 2.2 workflows load
    with one LoraLoader per expert model)."""
    if not isinstance(adapter, MotionLoRA):
        raise InputError(f"only LoRA adapters can be exported to LoRA formats, not a {type(adapter).__name__}.")
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}.")
    lora_set = _resolved_set(adapter, set_name, model)
    experts = _expert_names(adapter, lora_set)
    if not experts:
        return [export_adapter(adapter, path, fmt, set_name=set_name, model=model)]
    out: list[Path] = []
    for expert in experts:
        head = expert + "."
        part = replace(lora_set, weights={k[len(head):]: v for k, v in lora_set.weights.items() if k.startswith(head)})
        single = replace(adapter, sets=(part,), appearance_set=None,
                         extra={**{k: v for k, v in adapter.extra.items() if k != "experts"}, "expert": expert})
        out.append(export_adapter(single, expert_export_path(path, expert), fmt, set_name=part.name))
    return out


def export_adapter(adapter: MotionLoRA, path: str | os.PathLike, fmt: str = "diffusers", *,
                   set_name: str | None = None, model: Any = None) -> Path:
    """Write one LoRA set (default: the motion set) in another tool's format; see the module docstring.

    An adapter trained on a two-expert model (Wan 2.2 A14B) is written as a pair of files, one per expert
    (:func:`export_adapter_files`); this returns the first (high-noise) one."""
    if not isinstance(adapter, MotionLoRA):
        raise InputError(f"only LoRA adapters can be exported to LoRA formats, not a {type(adapter).__name__}.")
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}.")
    lora_set = _resolved_set(adapter, set_name, model)
    if _expert_names(adapter, lora_set):
        return export_adapter_files(adapter, path, fmt, set_name=set_name, model=model)[0]
    base_meta = {"source_format": FORMAT, "method": adapter.method, "family": adapter.family,
                 "base_model": adapter.base_model, "rank": str(lora_set.rank), "lora_set": lora_set.name,
                 "steps": str(adapter.steps)}
    if adapter.extra.get("expert"):
        base_meta["expert"] = str(adapter.extra["expert"])
    tensors: dict[str, torch.Tensor] = {}
    if fmt == "diffusers":
        # diffusers names the denoiser of a DiT pipeline (Wan) "transformer", of a UNet pipeline "unet"
        prefix = "transformer" if adapter.family == "wan" else "unet"
        for layer, (a, b) in _folded(lora_set).items():
            tensors[f"{prefix}.{layer}.lora_A.weight"] = a
            tensors[f"{prefix}.{layer}.lora_B.weight"] = b
        return write_safetensors(path, tensors, {**base_meta, "format": "diffusers_lora"},
                                 what="the exported LoRA file")
    if fmt == "comfyui_wan":
        # ComfyUI's native LoraLoader keys for Wan: original Wan module names under "diffusion_model.",
        # lora_A/lora_B + alpha (motion_core.adapters.wan_keys holds the key table)
        if adapter.family != "wan":
            raise InputError(f"the ComfyUI Wan LoRA format is for Wan adapters; this one is for {adapter.family}. "
                             "Export it as 'diffusers' or 'peft'.")
        from .wan_keys import export_comfy_wan_lora

        peft_sd: dict[str, torch.Tensor] = {}
        for layer, (a, b) in lora_set.weights.items():
            peft_sd[f"{layer}.lora_A.weight"] = a.float()
            peft_sd[f"{layer}.lora_B.weight"] = b.float()
        tensors = export_comfy_wan_lora(peft_sd, rank=lora_set.rank, alpha=float(lora_set.alpha))
        return write_safetensors(path, tensors, {**base_meta, "format": "comfyui_wan_lora"},
                                 what="the exported LoRA file")
    if fmt == "peft":
        for layer, (a, b) in lora_set.weights.items():
            tensors[f"{layer}.lora_A.weight"] = a.float()
            tensors[f"{layer}.lora_B.weight"] = b.float()
        config = {"peft_type": "LORA", "r": lora_set.rank, "lora_alpha": lora_set.alpha, "lora_dropout": 0.0,
                  "target_modules": list(lora_set.weights), "bias": "none", "init_lora_weights": True}
        return write_safetensors(path, tensors, {**base_meta, "format": "pt", "peft_config": json.dumps(config)},
                                 what="the exported LoRA file")
    # animatediff_evolved
    if adapter.family != "animatediff":
        raise InputError(f"the AnimateDiff-Evolved motion LoRA format is for animatediff adapters; this one is for "
                         f"{adapter.family}. Export it as 'diffusers' or 'peft'.")
    if lora_set.role != ROLE_MOTION:
        raise InputError("AnimateDiff-Evolved loads motion LoRAs only (temporal keys); export the motion set.")
    for layer, (a, b) in _folded(lora_set).items():
        stem = animatediff_evolved_key(layer)
        tensors[f"{stem}.down.weight"] = a
        tensors[f"{stem}.up.weight"] = b
    return write_safetensors(path, tensors, {**base_meta, "format": "animatediff_motion_lora"},
                             what="the exported LoRA file")


def _ad_key_to_diffusers(stem: str) -> str:
    name = stem
    m = re.search(r"\.attention_blocks\.(\d)\.processor\.(to_q|to_k|to_v|to_out)_lora$", name)
    if m:
        proj = "to_out.0" if m.group(2) == "to_out" else m.group(2)
        name = name[: m.start()] + f".attn{int(m.group(1)) + 1}.{proj}"
    elif name.endswith("_lora"):
        name = name[: -len("_lora")]
    else:
        raise AdapterMismatchError(f"unexpected AnimateDiff motion LoRA key {stem!r}.")
    return name.replace(".temporal_transformer.", ".")


def import_animatediff_evolved(path: str | os.PathLike, *, base_model: str = "") -> MotionLoRA:
    """Read an AnimateDiff-Evolved motion LoRA (original AnimateDiff names, ``…_lora.down/up.weight``) as a
    motion set on diffusers UNetMotionModel layer names (alpha folded in: rank = alpha)."""
    tensors, metadata = read_adapter_file(path)
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, down in tensors.items():
        if not key.endswith(".down.weight"):
            continue
        stem = key[: -len(".down.weight")]
        up = tensors.get(f"{stem}.up.weight")
        if up is None:
            raise AdapterMismatchError(f"{Path(path).name}: {key!r} has no matching up weight.")
        weights[_ad_key_to_diffusers(stem)] = (down.float(), up.float())
    if not weights:
        raise AdapterMismatchError(f"{Path(path).name} holds no motion LoRA (…_lora.down.weight) tensors.")
    rank = next(iter(weights.values()))[0].shape[0]
    lora_set = LoraSet(name="temporal", role=ROLE_MOTION, rank=int(rank), alpha=float(rank), weights=weights)
    return MotionLoRA(sets=(lora_set,), method=metadata.get("method", "motion_lora"), family="animatediff",
                      base_model=base_model or metadata.get("base_model", ""), source=str(path),
                      extra={"imported_from": "AnimateDiff-Evolved motion LoRA"})


# adapter kinds defined in their own modules register their loaders on import
from . import weight_delta as _weight_delta  # noqa: E402,F401  (kind "weight_delta": Customizing Motion)
