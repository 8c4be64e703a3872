"""A small stand-in for ComfyUI's prompt executor, so graphs run in tests without the host.

It does what ``execution.py`` does for classic (V1) nodes, in the same order:

validation (``validate_prompt``)
    every node's ``class_type`` exists; the graph has output nodes; for each node reachable from an
    output node: required inputs present, links ``[node_id, output_index]`` point at an existing node and
    output whose type matches the input's type, constants convert to INT/FLOAT/STRING/BOOLEAN, numbers
    within min/max and combo values in the list -- except for inputs that the node's ``VALIDATE_INPUTS``
    takes as parameters (the host then leaves those to it, as ComfyUI does) -- and ``VALIDATE_INPUTS`` is
    called with the constant inputs it names (linked inputs are left out) and must return ``True``.
execution
    only nodes reachable from output nodes, dependencies first; ``FUNCTION`` called on a fresh instance
    with inputs as keyword arguments (optional inputs only when given, hidden ``PROMPT``/``UNIQUE_ID``/
    ``EXTRA_PNGINFO`` when declared) inside ``torch.inference_mode()``, as the host runs every prompt (so
    a node that needs autograd fails here as it would in ComfyUI); the result is a tuple, or a dict with ``"result"`` and/or ``"ui"``,
    and must have one value per ``RETURN_TYPES`` entry. Outputs of non-output nodes are cached between
    runs of one :class:`Executor` by input signature plus ``IS_CHANGED``, like the host's default cache
    (output nodes always run here).

The pending cancel is cleared when a prompt starts (the host does the same with its interrupt flag).

Core ComfyUI nodes that our workflows end in (``SaveAnimatedWEBP``, ``CreateVideo`` + ``SaveVideo``,
``PreviewImage``) do not exist here, so :data:`STAND_INS` provides small stand-ins with the *same*
inputs in the same order (checked against ComfyUI's ``comfy_extras/nodes_images.py`` and
``nodes_video.py``): they check what they receive (IMAGE ``[B,H,W,3]`` float 0..1, fps) and write a real
file into the output folder so a test can assert it exists.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from nodes import host

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


class PromptError(Exception):
    """The prompt failed validation (``errors`` lists every problem found, as the host reports them)."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("Prompt failed validation:\n  " + "\n  ".join(errors))
        self.errors = errors


class NodeExecutionError(Exception):
    """A node raised while executing; the original exception is ``__cause__`` and ``.original``."""

    def __init__(self, node_id: str, class_type: str, original: BaseException) -> None:
        super().__init__(f"node {node_id} ({class_type}) failed: {type(original).__name__}: {original}")
        self.node_id, self.class_type, self.original = node_id, class_type, original


def is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def input_kind(spec: tuple) -> str:
    """``"COMBO"`` for list (legacy) or ``("COMBO", {"options": ...})`` inputs, else the type string."""
    t = spec[0]
    if isinstance(t, (list, tuple)):
        return "COMBO"
    return str(t)


def combo_options(spec: tuple) -> list:
    t = spec[0]
    if isinstance(t, (list, tuple)):
        return list(t)
    return list(spec[1].get("options", [])) if len(spec) > 1 else []


def spec_options(spec: tuple) -> dict:
    return dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec: tuple) -> bool:
    """Inputs the frontend shows as widgets (and stores in ``widgets_values``); the rest are sockets."""
    return input_kind(spec) in WIDGET_TYPES and not spec_options(spec).get("forceInput", False)


def all_inputs(cls: type) -> dict[str, tuple[str, tuple]]:
    """name -> (section, spec) in declaration order (required first, then optional)."""
    declared = cls.INPUT_TYPES()
    out: dict[str, tuple[str, tuple]] = {}
    for section in ("required", "optional"):
        for name, spec in (declared.get(section) or {}).items():
            out[name] = (section, spec)
    return out


def types_match(received: str, expected: str) -> bool:
    if received == "*" or expected == "*":
        return True
    got, want = set(received.split(",")), set(expected.split(","))
    return bool(got & want)


# ---------------------------------------------------------------------------------------- validation
def _convert(kind: str, value: Any) -> Any:
    if kind == "INT":
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value} is not an integer")
        return int(value)
    if kind == "FLOAT":
        return float(value)
    if kind == "STRING":
        return str(value)
    if kind == "BOOLEAN":
        return bool(value)
    return value


def _validate_function_params(cls: type) -> tuple[list[str], bool]:
    fn = getattr(cls, "VALIDATE_INPUTS", None)
    if fn is None:
        return [], False
    sig = inspect.signature(fn)
    names = [n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    has_kwargs = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    return names, has_kwargs


def reachable_from_outputs(prompt: dict, classes: dict[str, type]) -> list[str]:
    """Node ids needed by the output nodes, dependencies first (a topological order)."""
    outputs = [nid for nid, node in prompt.items()
               if getattr(classes.get(node.get("class_type")), "OUTPUT_NODE", False)]
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(nid: str, path: tuple[str, ...]) -> None:
        if state.get(nid) == 2:
            return
        if state.get(nid) == 1:
            raise PromptError([f"the graph has a cycle: {' -> '.join(path + (nid,))}"])
        state[nid] = 1
        for value in prompt[nid].get("inputs", {}).values():
            if is_link(value) and value[0] in prompt:
                visit(value[0], path + (nid,))
        state[nid] = 2
        order.append(nid)

    for nid in sorted(outputs, key=_id_key):
        visit(nid, ())
    return order


def _id_key(nid: str) -> tuple:
    return (0, int(nid), "") if str(nid).isdigit() else (1, 0, str(nid))


def validate_prompt(prompt: dict, classes: dict[str, type]) -> list[str]:
    """Every problem with ``prompt`` (empty list = valid), mirroring ``execution.validate_prompt``."""
    errors: list[str] = []
    for nid, node in prompt.items():
        if "class_type" not in node:
            errors.append(f"node {nid}: no class_type")
        elif node["class_type"] not in classes:
            errors.append(f"node {nid}: unknown node type '{node['class_type']}' (is its pack installed?)")
    if errors:
        return errors
    order = reachable_from_outputs(prompt, classes)
    if not order:
        return ["Prompt has no outputs (no output node such as a save node)."]
    for nid in order:
        errors.extend(_validate_node(nid, prompt, classes))
    return errors


def _validate_node(nid: str, prompt: dict, classes: dict[str, type]) -> list[str]:
    node = prompt[nid]
    cls = classes[node["class_type"]]
    where = f"node {nid} ({node['class_type']})"
    inputs = node.get("inputs", {})
    declared = all_inputs(cls)
    errors: list[str] = []
    vf_params, vf_kwargs = _validate_function_params(cls)
    constants: dict[str, Any] = {}

    # Inputs the node does not declare are ignored, as the host does (a newer workflow may carry them).
    for name, (section, spec) in declared.items():
        if name not in inputs:
            if section == "required":
                errors.append(f"{where}: required input '{name}' is missing")
            continue
        value = inputs[name]
        kind = input_kind(spec)
        opts = spec_options(spec)
        if is_link(value):
            src_id, src_index = value
            if src_id not in prompt:
                errors.append(f"{where}: input '{name}' links to missing node {src_id}")
                continue
            src_cls = classes[prompt[src_id]["class_type"]]
            if src_index >= len(src_cls.RETURN_TYPES):
                errors.append(f"{where}: input '{name}' links to output {src_index} of node {src_id}, "
                              f"which has {len(src_cls.RETURN_TYPES)} outputs")
                continue
            received = src_cls.RETURN_TYPES[src_index]
            expected = "COMBO" if kind == "COMBO" else kind
            if kind == "COMBO":
                ok = received in ("COMBO", "*") or isinstance(received, list)
            else:
                ok = types_match(str(received), expected)
            if not ok:
                errors.append(f"{where}: input '{name}' expects {expected} but is linked to a {received} output")
            continue
        if kind not in WIDGET_TYPES:
            errors.append(f"{where}: input '{name}' of type {kind} must be linked, got the constant {value!r}")
            continue
        try:
            value = _convert(kind, value)
        except (TypeError, ValueError) as exc:
            errors.append(f"{where}: input '{name}': cannot convert {value!r} to {kind} ({exc})")
            continue
        constants[name] = value
        if name in vf_params or vf_kwargs:
            continue
        if kind in ("INT", "FLOAT"):
            if "min" in opts and value < opts["min"]:
                errors.append(f"{where}: input '{name}' = {value} is smaller than min {opts['min']}")
            if "max" in opts and value > opts["max"]:
                errors.append(f"{where}: input '{name}' = {value} is bigger than max {opts['max']}")
        if kind == "COMBO" and value not in combo_options(spec):
            errors.append(f"{where}: input '{name}' = {value!r} is not in the list {combo_options(spec)}")

    if hasattr(cls, "VALIDATE_INPUTS") and (vf_params or vf_kwargs):
        args = {k: v for k, v in constants.items() if vf_kwargs or k in vf_params}
        try:
            ret = cls.VALIDATE_INPUTS(**args)
        except Exception as exc:  # the host reports an exception here as a validation failure
            ret = f"VALIDATE_INPUTS raised {type(exc).__name__}: {exc}"
        if ret is not True:
            errors.append(f"{where}: {ret}")
    return errors


# ---------------------------------------------------------------------------------------- execution
@dataclass
class RunResult:
    """What one prompt produced: every executed node's outputs and the ``ui`` dicts of output nodes."""

    outputs: dict[str, tuple] = field(default_factory=dict)
    ui: dict[str, dict] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)

    def files(self) -> list[Path]:
        """Files that output nodes reported in their ``ui`` (images/animated/videos entries)."""
        paths = []
        for ui in self.ui.values():
            for key in ("images", "videos", "gifs"):
                for item in ui.get(key, []) or []:
                    base = {"output": host.output_dir(), "temp": host.temp_dir(),
                            "input": host.input_dir()}[item.get("type", "output")]
                    paths.append(base / item.get("subfolder", "") / item["filename"])
        return paths


class Executor:
    """Runs API-format prompts against node classes (``NODE_CLASS_MAPPINGS`` + :data:`STAND_INS`)."""

    def __init__(self, node_classes: dict[str, type] | None = None, *, stand_ins: bool = True,
                 cache: bool = True) -> None:
        if node_classes is None:
            from nodes import NODE_CLASS_MAPPINGS as node_classes  # noqa: N811
        classes = dict(STAND_INS) if stand_ins else {}
        classes.update(node_classes)
        self.classes = classes
        self.cache_enabled = cache
        self._cache: dict[str, tuple[Any, tuple]] = {}

    def validate(self, prompt: dict) -> None:
        errors = validate_prompt(prompt, self.classes)
        if errors:
            raise PromptError(errors)

    def run(self, prompt: dict, extra_pnginfo: dict | None = None) -> RunResult:
        prompt = json.loads(json.dumps(prompt))  # the host works on its own copy of the prompt
        host.reset_cancel()
        self.validate(prompt)
        result = RunResult()
        signatures: dict[str, Any] = {}
        for nid in reachable_from_outputs(prompt, self.classes):
            node = prompt[nid]
            cls = self.classes[node["class_type"]]
            kwargs, signature = self._inputs(nid, node, cls, prompt, result, signatures, extra_pnginfo)
            signatures[nid] = signature
            cached = self._cache.get(nid)
            if (self.cache_enabled and cached is not None and cached[0] == signature
                    and not getattr(cls, "OUTPUT_NODE", False)):
                result.outputs[nid] = cached[1]
                result.cached.append(nid)
                continue
            outputs, ui = self._call(nid, node, cls, kwargs)
            result.outputs[nid] = outputs
            result.executed.append(nid)
            if ui is not None:
                result.ui[nid] = ui
            self._cache[nid] = (signature, outputs)
        return result

    def _inputs(self, nid, node, cls, prompt, result, signatures, extra_pnginfo):
        declared = all_inputs(cls)
        kwargs: dict[str, Any] = {}
        sig_parts: list[Any] = [node["class_type"]]
        for name, (_section, spec) in declared.items():
            if name not in node.get("inputs", {}):
                continue
            value = node["inputs"][name]
            if is_link(value):
                kwargs[name] = result.outputs[value[0]][value[1]]
                sig_parts.append((name, "link", signatures[value[0]], value[1]))
            else:
                kwargs[name] = _convert(input_kind(spec), value)
                sig_parts.append((name, repr(kwargs[name])))
        hidden = cls.INPUT_TYPES().get("hidden") or {}
        for name, what in hidden.items():
            if what == "PROMPT":
                kwargs[name] = prompt
            elif what == "UNIQUE_ID":
                kwargs[name] = nid
            elif what == "EXTRA_PNGINFO":
                kwargs[name] = extra_pnginfo
        changed = getattr(cls, "IS_CHANGED", None)
        if changed is not None:
            constant = {k: v for k, v in kwargs.items() if k in declared}
            marker = changed(**constant)
            sig_parts.append(("IS_CHANGED", "nan" if isinstance(marker, float) and math.isnan(marker)
                              else repr(marker)))
            if isinstance(marker, float) and math.isnan(marker):
                sig_parts.append(object())  # never equal: always re-run
        return kwargs, tuple(sig_parts)

    def _call(self, nid, node, cls, kwargs):
        for flag in ("INPUT_IS_LIST", "OUTPUT_IS_LIST"):
            if getattr(cls, flag, False):
                raise NotImplementedError(f"{node['class_type']}: {flag} is not supported by the test executor")
        fn = getattr(cls(), cls.FUNCTION)
        try:
            with torch.inference_mode():  # as execution.py runs every prompt
                ret = fn(**kwargs)
        except Exception as exc:
            raise NodeExecutionError(nid, node["class_type"], exc) from exc
        ui = None
        if isinstance(ret, dict):
            ui = ret.get("ui")
            ret = ret.get("result", ())
        if not isinstance(ret, tuple):
            raise TypeError(f"node {nid} ({node['class_type']}) returned {type(ret).__name__}, not a tuple")
        if len(ret) != len(cls.RETURN_TYPES):
            raise TypeError(f"node {nid} ({node['class_type']}) returned {len(ret)} values for "
                            f"{len(cls.RETURN_TYPES)} RETURN_TYPES")
        return ret, ui


def run_prompt(prompt: dict, node_classes: dict[str, type] | None = None) -> RunResult:
    return Executor(node_classes).run(prompt)


# ---------------------------------------------------------------------------------------- stand-ins
def check_image(images: Any, what: str = "images") -> torch.Tensor:
    """Assert ``images`` is a ComfyUI IMAGE: float32 ``[B,H,W,3]`` in 0..1, B >= 1."""
    assert isinstance(images, torch.Tensor), f"{what}: IMAGE must be a torch.Tensor, got {type(images)}"
    assert images.ndim == 4 and images.shape[-1] == 3, f"{what}: IMAGE must be [B,H,W,3], got {tuple(images.shape)}"
    assert images.shape[0] >= 1, f"{what}: empty IMAGE batch"
    assert images.dtype == torch.float32, f"{what}: IMAGE must be float32, got {images.dtype}"
    assert torch.isfinite(images).all(), f"{what}: IMAGE has NaN/inf"
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0, f"{what}: IMAGE values outside 0..1"
    return images


def _save_path(prefix: str, extension: str) -> tuple[Path, str, str]:
    """Like ``folder_paths.get_save_image_path``: ``prefix`` may hold subfolders but must stay inside the
    output folder; a counter makes the name unique. Returns (path, filename, subfolder)."""
    out = host.output_dir().resolve()
    prefix = prefix.replace("\\", "/")
    subfolder, _, base = prefix.rpartition("/")
    folder = (out / subfolder).resolve()
    if out != folder and out not in folder.parents:
        raise ValueError(f"Saving image outside the output folder is not allowed: {prefix}")
    folder.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(base) + r"_(\d{5})_")
    counters = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))]
    name = f"{base}_{max(counters, default=0) + 1:05}_.{extension}"
    return folder / name, name, subfolder


class SaveAnimatedWEBP:
    """Stand-in for core ``SaveAnimatedWEBP`` (comfy_extras/nodes_images.py): same inputs and order."""

    METHODS = {"default": 4, "fastest": 0, "slowest": 6}
    CATEGORY = "image/animation"
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    FUNCTION = "save_images"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "filename_prefix": ("STRING", {"default": "ComfyUI"}),
                "fps": ("FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}),
                "lossless": ("BOOLEAN", {"default": True}),
                "quality": ("INT", {"default": 80, "min": 0, "max": 100}),
                "method": (list(cls.METHODS),),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def save_images(self, images, filename_prefix, fps, lossless, quality, method, prompt=None,
                    extra_pnginfo=None):
        from PIL import Image

        check_image(images)
        assert fps > 0, "fps must be positive"
        frames = [Image.fromarray((img.clamp(0, 1) * 255).round().to(torch.uint8).numpy()) for img in images]
        path, name, subfolder = _save_path(filename_prefix, "webp")
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000.0 / fps), loop=0,
                       lossless=bool(lossless), quality=int(quality), method=self.METHODS[method])
        return {"ui": {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}],
                       "animated": (True,)}}


def _input_files() -> list[str]:
    """Files at the top of the input folder: what the core loaders list (they filter by content type)."""
    folder = host.input_dir()
    return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


class _VideoFromComponents:
    """What ``CreateVideo`` returns (a VIDEO): frames + frame rate, read back by ``get_components()`` as
    ``VideoComponents(images, audio, frame_rate)`` (comfy_api/latest/_input_impl/video_types.py)."""

    def __init__(self, images: torch.Tensor, frame_rate: Fraction) -> None:
        self.images, self.frame_rate = images, frame_rate

    def get_dimensions(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[1])

    def get_components(self):
        from types import SimpleNamespace

        return SimpleNamespace(images=self.images, audio=None, frame_rate=self.frame_rate)


class _VideoFromFile(_VideoFromComponents):
    """What core ``LoadVideo`` returns: a VIDEO decoded when ``get_components()`` is called (every frame)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get_components(self):
        from motion_core.video import load_video

        clip = load_video(self.path)
        self.images, self.frame_rate = clip.frames, Fraction(clip.fps).limit_denominator(1001)
        return super().get_components()


class LoadVideo:
    """Stand-in for core ``LoadVideo`` (comfy_extras/nodes_video.py, a schema node): ``file`` from the input
    folder (with an upload button) -> VIDEO."""

    CATEGORY = "image/video"
    RETURN_TYPES = ("VIDEO",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"file": (_input_files(), {"video_upload": True})}}

    def execute(self, file):
        return (_VideoFromFile(host.input_dir() / file),)


class CreateVideo:
    """Stand-in for core ``CreateVideo`` (comfy_extras/nodes_video.py): images, fps, optional audio."""

    CATEGORY = "image/video"
    RETURN_TYPES = ("VIDEO",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images to create a video from."}),
                "fps": ("FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0, "step": 1.0}),
            },
            "optional": {"audio": ("AUDIO", {"tooltip": "The audio to add to the video."})},
        }

    def execute(self, images, fps, audio=None):
        check_image(images)
        return (_VideoFromComponents(images, Fraction(fps).limit_denominator(1001)),)


class SaveVideo:
    """Stand-in for core ``SaveVideo``: video, filename_prefix, format, codec (writes an mp4)."""

    CATEGORY = "image/video"
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "video": ("VIDEO", {"tooltip": "The video to save."}),
                "filename_prefix": ("STRING", {"default": "video/ComfyUI"}),
                "format": (["auto", "mp4"], {"default": "auto"}),
                "codec": (["auto", "h264"], {"default": "auto"}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def execute(self, video, filename_prefix, format, codec, prompt=None, extra_pnginfo=None):
        from motion_core.video import write_video

        assert isinstance(video, _VideoFromComponents), f"VIDEO expected, got {type(video)}"
        path, name, subfolder = _save_path(filename_prefix, "mp4")
        write_video(path, video.images, float(video.frame_rate))
        return {"ui": {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}],
                       "animated": (True,)}}


class PreviewImage:
    """Stand-in for core ``PreviewImage``: checks the IMAGE and writes the first frame as PNG to temp."""

    CATEGORY = "image"
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    FUNCTION = "save_images"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def save_images(self, images, prompt=None, extra_pnginfo=None):
        from PIL import Image

        check_image(images)
        folder = host.temp_dir()
        folder.mkdir(parents=True, exist_ok=True)
        name = f"preview_{len(list(folder.glob('preview_*.png'))) + 1:05}.png"
        Image.fromarray((images[0] * 255).round().to(torch.uint8).numpy()).save(folder / name)
        return {"ui": {"images": [{"filename": name, "subfolder": "", "type": "temp"}]}}


class LoadImage:
    """Stand-in for core ``LoadImage`` (nodes.py): an image from the input folder -> IMAGE ``[1,H,W,3]`` and
    MASK ``[1,H,W]`` (inverted alpha, zeros without one), same inputs and outputs."""

    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (_input_files(), {"image_upload": True})}}

    def load_image(self, image):
        import numpy as np
        from PIL import Image

        with Image.open(host.input_dir() / image) as im:
            rgba = im.convert("RGBA")
            arr = np.asarray(rgba, dtype=np.float32) / 255.0
        pixels = torch.from_numpy(arr[..., :3].copy())[None]
        mask = 1.0 - torch.from_numpy(arr[..., 3].copy())[None]
        return (pixels, mask)


STAND_INS: dict[str, type] = {
    "SaveAnimatedWEBP": SaveAnimatedWEBP,
    "CreateVideo": CreateVideo,
    "SaveVideo": SaveVideo,
    "PreviewImage": PreviewImage,
    "LoadImage": LoadImage,
    "LoadVideo": LoadVideo,
}


# ---------------------------------------------------------------------------------------- test host
@dataclass
class HostDirs:
    """The folders an isolated standalone host uses (stand-ins for ComfyUI's models/input/output/temp)."""

    models: Path
    input: Path
    output: Path
    temp: Path

    @property
    def diffusers(self) -> Path:
        return self.models / "diffusers"

    @property
    def motion_adapters(self) -> Path:
        return self.models / host.MOTION_ADAPTERS

    def link_model(self, name: str, target: Path) -> Path:
        """Make ``target`` appear as ``models/diffusers/<name>`` (a symlink, as users often do)."""
        link = self.diffusers / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(target).resolve(), target_is_directory=True)
        return link

    def put_comfy_wan_files(self, loader_widgets: list, work: Path) -> dict[str, Path]:
        """A tiny Wan 2.1 as ComfyUI's three files under the names a Load Video Model node's widgets give
        (model, text_encoder, vae), in models/diffusion_models, text_encoders and vae; the umt5 in ComfyUI's
        scaled-fp8 form when its name says fp8."""
        from motion_core.tiny_wan import save_comfy_wan_files

        files = save_comfy_wan_files(work / "comfy_wan", seed=0)
        if "fp8" in loader_widgets[6]:
            files["text_encoder"] = save_comfy_wan_files(work / "comfy_wan_fp8", seed=0, fp8="scaled")["text_encoder"]
        placed = {}
        for role, index, folder in (("diffusion_model", 0, "diffusion_models"), ("text_encoder", 6, "text_encoders"),
                                    ("vae", 7, "vae")):
            placed[role] = self.models / folder / loader_widgets[index]
            placed[role].parent.mkdir(parents=True, exist_ok=True)
            placed[role].symlink_to(files[role])
        return placed

    def put_comfy_animatediff_files(self, loader_widgets: list, sd15: Path, motion_adapter: Path, monkeypatch) -> None:
        """Tiny SD1.5 + motion adapter folders written as ComfyUI's checkpoint and motion module files under the
        names a Load Video Model node's widgets give (model, motion_adapter); their CLIP tokenizer stands in for
        the one the real host has (ComfyUI/comfy/sd1_tokenizer: an SD1.5 checkpoint carries none)."""
        import motion_core.backbones.sd_files as sd_files
        from motion_core.tiny import save_comfy_animatediff_files

        save_comfy_animatediff_files(sd15, motion_adapter, self.models / "checkpoints" / loader_widgets[0],
                                     self.models / "animatediff_models" / loader_widgets[5])
        monkeypatch.setattr(sd_files, "_host_tokenizer_folder", lambda: Path(sd15) / "tokenizer")


def isolate_host(root: Path, monkeypatch) -> HostDirs:
    """Point the standalone host's folders at fresh folders under ``root`` and clear any pending cancel."""
    dirs = HostDirs(models=root / "models", input=root / "input", output=root / "output", temp=root / "temp")
    for var, path in (("MOTIONKIT_MODELS_DIR", dirs.models), ("MOTIONKIT_INPUT_DIR", dirs.input),
                      ("MOTIONKIT_OUTPUT_DIR", dirs.output), ("MOTIONKIT_TEMP_DIR", dirs.temp)):
        path.mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(var, str(path))
    dirs.diffusers.mkdir(parents=True, exist_ok=True)
    host.reset_cancel()
    return dirs
