"""The node contract: declarations, the saved-workflow schema, the host module, and running the nodes.

Updating the golden schema (tests/golden/node_schema.json) is a deliberate act: node class names and
the order/names/types of their inputs are what saved workflows depend on. Appending a new input at the
end of a node is allowed; renaming, removing or reordering breaks users' workflows. After such a
deliberate change run

    MOTIONKIT_UPDATE_GOLDEN=1 python -m pytest tests/test_nodes.py -k golden

and commit the regenerated file together with the change (the diff is the review).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from executor import all_inputs, combo_options, input_kind, isolate_host, spec_options
from motion_core.errors import Cancelled, InputError, ModelLoadError, VideoError
from motion_core.motion_model import MotionModel
from nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, host
from nodes.nodes_model import HUB_ENTRY, MotionKitLoadReferenceVideo, MotionKitLoadVideoModel
from nodes.nodes_sampling import MotionKitSampler

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "node_schema.json"
NODE_NAMES = sorted(NODE_CLASS_MAPPINGS)
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload")


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    return isolate_host(tmp_path, monkeypatch)


@pytest.fixture
def tiny_dirs(dirs, tiny_unet3d_path, tiny_animatediff_paths):
    """Host folders whose models/diffusers holds the tiny models under readable names."""
    dirs.link_model("tiny_unet3d", tiny_unet3d_path)
    dirs.link_model("tiny_sd15", tiny_animatediff_paths.sd15)
    dirs.link_model("tiny_motion_adapter", tiny_animatediff_paths.motion_adapter)
    dirs.link_model("tiny_animatediff", tiny_animatediff_paths.pipeline)
    return dirs


def load_tiny(name="tiny_unet3d", **overrides):
    args = dict(model=name, hub_id="", family="auto", dtype="auto", device="cpu", motion_adapter="none")
    args.update(overrides)
    return MotionKitLoadVideoModel().load(**args)


SMALL = dict(prompt="a red square sliding to the right", negative_prompt="", seed=3, steps=2, cfg=7.5,
             width=32, height=32, frames=4, scheduler="ddim", batch_size=1)


@pytest.fixture
def motion_model(unet3d_model):
    """The session's tiny UNet3D as the loader node returns it (the loader itself is tested above)."""
    return MotionModel.wrap(unet3d_model)


# ------------------------------------------------------------------------------------------ declarations
def test_mappings_are_prefixed_and_named():
    assert NODE_NAMES, "no nodes registered"
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
    for name, cls in NODE_CLASS_MAPPINGS.items():
        assert name.startswith("MotionKit"), name
        assert cls.__name__ == name, "class name and node id should agree (easier to find in the code)"
        assert NODE_DISPLAY_NAME_MAPPINGS[name].endswith("(MotionKit)")


@pytest.mark.parametrize("name", NODE_NAMES)
def test_node_declaration_is_well_formed(name, dirs):
    cls = NODE_CLASS_MAPPINGS[name]
    assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 40
    assert cls.CATEGORY.startswith("MotionKit/")
    assert isinstance(cls.RETURN_TYPES, tuple) and cls.RETURN_TYPES
    assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS)
    assert all(isinstance(t, str) and t for t in cls.OUTPUT_TOOLTIPS)
    fn = getattr(cls, cls.FUNCTION, None)
    assert callable(fn), f"{name}.FUNCTION = {cls.FUNCTION!r} is not a method"
    assert not hasattr(sys.modules[cls.__module__], "comfy_entrypoint")

    declared = cls.INPUT_TYPES()
    assert set(declared) <= {"required", "optional", "hidden"} and "required" in declared
    json.dumps(declared)  # /object_info must be able to serialise it
    params = inspect.signature(fn).parameters
    for input_name, (section, spec) in all_inputs(cls).items():
        assert isinstance(spec, tuple) and 1 <= len(spec) <= 2, (input_name, spec)
        opts = spec_options(spec)
        assert isinstance(opts.get("tooltip"), str) and opts["tooltip"].strip(), f"{name}.{input_name}: no tooltip"
        assert input_name in params, f"{name}.{cls.FUNCTION} does not accept '{input_name}'"
        kind = input_kind(spec)
        if kind in ("INT", "FLOAT"):
            assert "default" in opts and "min" in opts and "max" in opts, (input_name, opts)
            assert opts["min"] <= opts["default"] <= opts["max"], (input_name, opts)
            if kind == "INT":
                assert all(isinstance(opts[k], int) for k in ("default", "min", "max"))
        elif kind == "COMBO":
            options = combo_options(spec)
            if not any(opts.get(f) for f in UPLOAD_FLAGS):  # file lists may be empty until a file exists
                assert options, f"{name}.{input_name}: empty combo"
            if "default" in opts:
                assert opts["default"] in options, (input_name, opts["default"])
        elif kind == "STRING":
            assert isinstance(opts.get("default", ""), str)
        if section == "optional":
            assert params[input_name].default is not inspect.Parameter.empty
    for p in params.values():
        if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD and p.default is inspect.Parameter.empty:
            assert p.name in declared["required"], f"{name}: parameter '{p.name}' is not a required input"


def current_schema() -> dict:
    schema = {}
    for name in NODE_NAMES:
        cls = NODE_CLASS_MAPPINGS[name]
        schema[name] = {
            "inputs": [f"{input_name}: {input_kind(spec)}" + (" (optional)" if section == "optional" else "")
                       for input_name, (section, spec) in all_inputs(cls).items()],
            "outputs": [f"{n}: {t}" for t, n in zip(cls.RETURN_TYPES, cls.RETURN_NAMES, strict=True)],
            "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        }
    return schema


def test_golden_node_schema():
    """Saved workflows depend on node ids and input order: see the module docstring to update."""
    schema = current_schema()
    if os.environ.get("MOTIONKIT_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    problems = []
    for name, old in golden.items():
        new = schema.get(name)
        if new is None:
            problems.append(f"{name}: node removed or renamed (breaks saved workflows)")
            continue
        n = len(old["inputs"])
        if new["inputs"][:n] != old["inputs"]:
            problems.append(f"{name}: inputs renamed/reordered/retyped (breaks saved workflows):\n"
                            f"    was {old['inputs']}\n    now {new['inputs']}")
        elif len(new["inputs"]) > n:
            problems.append(f"{name}: inputs appended {new['inputs'][n:]} (allowed: update the golden file)")
        if new["outputs"][:len(old["outputs"])] != old["outputs"]:
            problems.append(f"{name}: outputs changed (breaks links in saved workflows): "
                            f"was {old['outputs']}, now {new['outputs']}")
        elif new != old:
            problems.append(f"{name}: outputs appended or output_node changed (update the golden file)")
    for name in sorted(set(schema) - set(golden)):
        problems.append(f"{name}: new node (allowed: update the golden file)")
    assert not problems, "\n".join(problems) + "\n(see tests/test_nodes.py docstring for how to update)"


# ------------------------------------------------------------------------------------------ pack entry
def test_pack_root_imports_as_a_comfyui_package_without_comfyui():
    """ComfyUI imports custom_nodes/<folder>/__init__.py as a package named after the folder."""
    assert "folder_paths" not in sys.modules and "comfy" not in sys.modules
    name = "motionkit_pack_under_test"
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        assert sorted(module.NODE_CLASS_MAPPINGS) == NODE_NAMES
        assert module.NODE_DISPLAY_NAME_MAPPINGS == NODE_DISPLAY_NAME_MAPPINGS
        assert not hasattr(module, "comfy_entrypoint")
        assert sys.modules[f"{name}.nodes"].NODE_CLASS_MAPPINGS.keys() == NODE_CLASS_MAPPINGS.keys()
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


def test_shipped_code_has_no_forbidden_calls():
    import ast

    files = [REPO / "__init__.py", *sorted((REPO / "nodes").glob("*.py"))]
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not {"subprocess", "pickle"} & {str(n).split(".")[0] for n in names}, path
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec"), path


# ------------------------------------------------------------------------------------------ host module
def test_host_standalone_folders(dirs):
    d = dirs.diffusers
    (d / "with_index").mkdir()
    (d / "with_index" / "model_index.json").write_text("{}")
    (d / "unet_only" / "unet").mkdir(parents=True)
    (d / "nested" / "dit" / "transformer").mkdir(parents=True)
    (d / "not_a_model").mkdir()
    (d / "adapter").mkdir()
    (d / "adapter" / "config.json").write_text(json.dumps({"_class_name": "MotionAdapter"}))
    assert host.list_diffusers_models() == ["nested/dit", "unet_only", "with_index"]
    assert host.list_animatediff_motion_adapters() == ["adapter"]
    assert host.diffusers_model_path("with_index") == d / "with_index"
    with pytest.raises(ModelLoadError, match="not found"):
        host.diffusers_model_path("missing")
    with pytest.raises(InputError):
        host.diffusers_model_path("../outside")

    adapters = dirs.motion_adapters
    (adapters / "sub").mkdir(parents=True)
    (adapters / "a.safetensors").write_bytes(b"x")
    (adapters / "sub" / "b.safetensors").write_bytes(b"x")
    (adapters / "notes.txt").write_text("x")
    assert host.motion_adapters_dir() == adapters
    assert host.list_motion_adapters() == ["a.safetensors", "sub/b.safetensors"]
    assert host.motion_adapter_path("sub/b.safetensors") == adapters / "sub" / "b.safetensors"

    for f in ("clip.mp4", "b.webm", "c.MOV", "image.png", ".hidden.mp4"):
        (dirs.input / f).write_bytes(b"x")
    assert host.list_input_videos() == ["b.webm", "c.MOV", "clip.mp4"]
    assert host.annotated_input_path("clip.mp4") == dirs.input / "clip.mp4"
    assert host.annotated_input_path("r.mp4 [output]") == dirs.output / "r.mp4"
    for bad in ("../x.mp4", "/etc/passwd", ""):
        with pytest.raises(InputError):
            host.annotated_input_path(bad)
    assert host.input_dir() == dirs.input and host.output_dir() == dirs.output and host.temp_dir() == dirs.temp


@pytest.mark.parametrize("name", ["my_motion", "clip.v2", "Motion 01"])
def test_safe_filename_accepts_plain_names(name):
    assert host.safe_filename(f"  {name} ") == name


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", "/abs/name", "C:name", "..", ".", "", "  ",
                                  "x..y", "bad\nname"])
def test_safe_filename_rejects_paths(name):
    with pytest.raises(InputError):
        host.safe_filename(name)


def test_host_device_and_dtype_choices():
    assert host.torch_device("cpu") == torch.device("cpu")
    assert host.torch_device("auto").type in ("cpu", "cuda", "mps")
    assert host.weight_dtype("auto", torch.device("cpu")) == "fp32"
    assert host.weight_dtype("auto", torch.device("cuda")) == "fp16"
    assert host.weight_dtype("bf16", torch.device("cpu")) == "bf16"
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            host.torch_device("cuda")
    with pytest.raises(InputError):
        host.torch_device("nonsense")


def test_host_cancel_flag_standalone():
    host.reset_cancel()
    assert not host.cancel_requested()
    host.request_cancel()
    assert host.cancel_requested()
    with pytest.raises(Cancelled):
        host.throw_if_cancelled()
    assert not host.cancel_requested(), "raising consumes the cancel, as the host does"
    host.request_cancel()
    with pytest.raises(Cancelled), host.cancellation():
        raise Cancelled("stop")
    assert not host.cancel_requested()


def _fake_comfyui(tmp_path: Path) -> dict[str, types.ModuleType]:
    """Minimal ``folder_paths`` / ``comfy.utils`` / ``comfy.model_management`` with the host's signatures."""
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp_path / "models")
    fp.folder_names_and_paths = {"diffusers": ([str(tmp_path / "models" / "diffusers")], {"folder"})}
    fp.get_folder_paths = lambda name: list(fp.folder_names_and_paths[name][0])

    def add_model_folder_path(name, path, is_default=False):
        paths = fp.folder_names_and_paths.setdefault(name, ([], set()))[0]
        if path not in paths:
            paths.insert(0, path) if is_default else paths.append(path)
    fp.add_model_folder_path = add_model_folder_path

    def get_filename_list(name):
        paths, exts = fp.folder_names_and_paths[name]
        return sorted(str(p.relative_to(root)) for root in map(Path, paths) if root.is_dir()
                      for p in root.rglob("*") if p.is_file() and (not exts or p.suffix in exts))
    fp.get_filename_list = get_filename_list
    fp.get_full_path = lambda name, f: next((str(Path(r) / f) for r in fp.folder_names_and_paths[name][0]
                                            if (Path(r) / f).is_file()), None)
    fp.get_input_directory = lambda: str(tmp_path / "input")
    fp.get_output_directory = lambda: str(tmp_path / "output")
    fp.get_temp_directory = lambda: str(tmp_path / "temp")
    fp.get_annotated_filepath = lambda name: str(tmp_path / "input" / name)
    fp.filter_files_content_types = lambda files, kinds: [f for f in files if f.endswith(".mp4")]

    mm = types.ModuleType("comfy.model_management")
    mm.calls = []
    mm.flag = False

    class InterruptProcessingException(Exception):
        pass
    mm.InterruptProcessingException = InterruptProcessingException
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.unload_all_models = lambda: mm.calls.append("unload_all_models")
    mm.soft_empty_cache = lambda force=False: mm.calls.append("soft_empty_cache")
    mm.processing_interrupted = lambda: mm.flag

    def interrupt_current_processing(value=True):
        mm.flag = value
    mm.interrupt_current_processing = interrupt_current_processing

    def throw():
        if mm.flag:
            mm.flag = False
            raise InterruptProcessingException()
    mm.throw_exception_if_processing_interrupted = throw

    cu = types.ModuleType("comfy.utils")

    class ProgressBar:
        instances = []

        def __init__(self, total, node_id=None):
            self.total, self.updates = total, []
            ProgressBar.instances.append(self)

        def update_absolute(self, value, total=None, preview=None):
            self.updates.append((value, total))
    cu.ProgressBar = ProgressBar
    comfy = types.ModuleType("comfy")
    comfy.utils, comfy.model_management = cu, mm
    return {"folder_paths": fp, "comfy": comfy, "comfy.utils": cu, "comfy.model_management": mm}


def test_host_uses_comfyui_when_present(tmp_path, monkeypatch):
    """With ComfyUI's modules importable, host.py routes everything through them (a private copy of the
    module is loaded, so the rest of the test session keeps the standalone host)."""
    fakes = _fake_comfyui(tmp_path)
    for name, module in fakes.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("motionkit_host_with_comfy", REPO / "nodes" / "host.py")
    h = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(h)
    fp, mm = fakes["folder_paths"], fakes["comfy.model_management"]

    assert h.has_host()
    paths, exts = fp.folder_names_and_paths["motion_adapters"]
    # .pt: MotionDirector reference LoRA lists (loaded with torch.load(weights_only=True))
    assert paths == [str(tmp_path / "models" / "motion_adapters")] and exts == {".safetensors", ".pt"}
    (tmp_path / "models" / "motion_adapters").mkdir(parents=True)
    (tmp_path / "models" / "motion_adapters" / "m.safetensors").write_bytes(b"x")
    assert h.list_motion_adapters() == ["m.safetensors"]
    assert h.motion_adapter_path("m.safetensors") == tmp_path / "models" / "motion_adapters" / "m.safetensors"
    (tmp_path / "models" / "diffusers" / "zs").mkdir(parents=True)
    (tmp_path / "models" / "diffusers" / "zs" / "model_index.json").write_text("{}")
    assert h.list_diffusers_models() == ["zs"]
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "a.mp4").write_bytes(b"x")
    (tmp_path / "input" / "a.txt").write_bytes(b"x")
    assert h.list_input_videos() == ["a.mp4"]
    assert h.output_dir() == tmp_path / "output"

    h.free_host_memory()
    assert mm.calls == ["unload_all_models", "soft_empty_cache"]
    progress = h.Progress(4)
    progress(1, 4, {})
    assert fakes["comfy.utils"].ProgressBar.instances[-1].updates == [(1, 4)]

    assert not h.cancel_requested()
    h.request_cancel()
    assert h.cancel_requested()
    with pytest.raises(mm.InterruptProcessingException):
        with h.cancellation():
            raise Cancelled("stopped between steps")
    assert not h.cancel_requested()
    assert h.torch_device("auto") == torch.device("cpu")


# ------------------------------------------------------------------------------------------ running nodes
def test_loader_lists_and_loads_tiny_unet3d(tiny_dirs):
    options = combo_options(MotionKitLoadVideoModel.INPUT_TYPES()["required"]["model"])
    assert {"tiny_unet3d", "tiny_sd15", "tiny_animatediff"} <= set(options) and options[-1] == HUB_ENTRY
    assert "tiny_motion_adapter" not in options
    adapters = combo_options(MotionKitLoadVideoModel.INPUT_TYPES()["required"]["motion_adapter"])
    assert adapters == ["none", "tiny_motion_adapter"]

    model, info = load_tiny()
    assert isinstance(model, MotionModel)
    described = json.loads(info)
    assert described["family"] == "unet3d" and described["device"] == "cpu" and described["dtype"] == "float32"


def test_loader_builds_animatediff_from_sd15_and_motion_adapter(tiny_dirs):
    model, info = load_tiny("tiny_sd15", motion_adapter="tiny_motion_adapter")
    assert json.loads(info)["family"] == "animatediff"
    frames, = MotionKitSampler().sample(model, **SMALL)
    assert frames.shape == (4, 32, 32, 3)


def test_loader_validation_and_errors(tiny_dirs):
    assert MotionKitLoadVideoModel.VALIDATE_INPUTS(model="tiny_unet3d", hub_id="") is True
    assert "hub_id is empty" in MotionKitLoadVideoModel.VALIDATE_INPUTS(model=HUB_ENTRY, hub_id=" ")
    assert "not found" in MotionKitLoadVideoModel.VALIDATE_INPUTS(model="gone", hub_id="")
    assert MotionKitLoadVideoModel.VALIDATE_INPUTS(model="gone", hub_id="owner/name") is True
    with pytest.raises(ModelLoadError, match="not found"):
        load_tiny("gone")
    with pytest.raises(InputError, match="hub_id is empty"):
        load_tiny(HUB_ENTRY)
    (tiny_dirs.diffusers / "broken").mkdir()
    (tiny_dirs.diffusers / "broken" / "model_index.json").write_text(
        json.dumps({"_class_name": "TextToVideoSDPipeline", "unet": ["diffusers", "UNet3DConditionModel"]}))
    with pytest.raises(ModelLoadError):
        load_tiny("broken")


def test_sampler_node_outputs_an_image_batch(motion_model, monkeypatch):
    seen = []
    original = host.Progress.update_absolute
    monkeypatch.setattr(host.Progress, "update_absolute",
                        lambda self, value, total=None, preview=None: (seen.append((value, total)),
                                                                       original(self, value, total, preview)))
    frames, = MotionKitSampler().sample(motion_model, **{**SMALL, "batch_size": 2})
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == torch.float32
    assert float(frames.min()) >= 0.0 and float(frames.max()) <= 1.0
    assert seen == [(1, 2), (2, 2)], "one progress update per step"
    frames0, = MotionKitSampler().sample(motion_model, **{**SMALL, "width": 0, "height": 0, "frames": 0,
                                                          "steps": 1})
    assert frames0.shape == (16, 64, 64, 3), "0 = the model's own size and frame count"


def test_same_seed_gives_identical_frames_through_the_node(motion_model):
    a, = MotionKitSampler().sample(motion_model, **SMALL)
    b, = MotionKitSampler().sample(motion_model, **SMALL)
    c, = MotionKitSampler().sample(motion_model, **{**SMALL, "seed": 4})
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_cancel_mid_sampling_raises_and_leaves_the_model_usable(motion_model, monkeypatch):
    host.reset_cancel()
    expected, = MotionKitSampler().sample(motion_model, **{**SMALL, "steps": 3})
    original = host.Progress.update_absolute
    steps_done = []

    def cancel_after_two(self, value, total=None, preview=None):
        steps_done.append(value)
        if value == 2:
            host.request_cancel()  # the user presses Cancel while step 2 finishes
        original(self, value, total, preview)

    monkeypatch.setattr(host.Progress, "update_absolute", cancel_after_two)
    with pytest.raises(Cancelled, match="step 2"):
        MotionKitSampler().sample(motion_model, **{**SMALL, "steps": 3})
    assert steps_done == [1, 2]
    assert not host.cancel_requested(), "the cancel was consumed"
    monkeypatch.setattr(host.Progress, "update_absolute", original)
    again, = MotionKitSampler().sample(motion_model, **{**SMALL, "steps": 3})
    assert torch.equal(again, expected)


def test_sampler_rejects_a_size_the_model_cannot_take(motion_model):
    multiple = motion_model.size_multiple
    with pytest.raises(InputError, match=f"multiples of {multiple}"):
        MotionKitSampler().sample(motion_model, **{**SMALL, "width": 32 + multiple // 2})


def test_sampler_does_not_mutate_its_model(motion_model):
    before = {k: v.clone() for k, v in motion_model.base.denoiser.state_dict().items()}
    MotionKitSampler().sample(motion_model, **SMALL)
    after = motion_model.base.denoiser.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------------------------------ reference video
@pytest.fixture
def square_video(dirs):
    from motion_core.video import write_moving_square_video

    path = dirs.input / "square.mp4"
    write_moving_square_video(path, num_frames=24, fps=8)
    return path


def test_reference_video_node_loads_frames(square_video):
    assert "square.mp4" in combo_options(MotionKitLoadReferenceVideo.INPUT_TYPES()["required"]["video"])
    assert MotionKitLoadReferenceVideo.VALIDATE_INPUTS(video="square.mp4") is True
    frames, fps, count = MotionKitLoadReferenceVideo().load("square.mp4", frames=8, fps=0.0, width=0,
                                                            height=0, start_frame=0)
    assert frames.shape == (8, 64, 64, 3) and count == 8 and fps == pytest.approx(8.0)
    assert frames.dtype == torch.float32 and 0.0 <= float(frames.min()) <= float(frames.max()) <= 1.0
    frames, fps, count = MotionKitLoadReferenceVideo().load("square.mp4", frames=0, fps=4.0, width=32,
                                                            height=48, start_frame=2)
    assert frames.shape == (11, 48, 32, 3) and count == 11 and fps == pytest.approx(4.0)


def test_reference_video_bad_inputs(square_video):
    assert "not found" in MotionKitLoadReferenceVideo.VALIDATE_INPUTS(video="missing.mp4")
    assert "not a path outside" in MotionKitLoadReferenceVideo.VALIDATE_INPUTS(video="../square.mp4")
    with pytest.raises(VideoError, match="not found"):
        MotionKitLoadReferenceVideo().load("missing.mp4", 8, 0.0, 0, 0, 0)
    with pytest.raises(VideoError, match="only 24 frames"):
        MotionKitLoadReferenceVideo().load("square.mp4", 100, 0.0, 0, 0, 0)
    (square_video.parent / "not_a_video.mp4").write_bytes(b"this is text")
    with pytest.raises(VideoError):
        MotionKitLoadReferenceVideo().load("not_a_video.mp4", 8, 0.0, 0, 0, 0)


def test_reference_video_is_changed_follows_the_file(square_video):
    from motion_core.video import write_moving_square_video

    first = MotionKitLoadReferenceVideo.IS_CHANGED(video="square.mp4")
    assert first == MotionKitLoadReferenceVideo.IS_CHANGED(video="square.mp4")
    write_moving_square_video(square_video, num_frames=12, fps=8)
    assert MotionKitLoadReferenceVideo.IS_CHANGED(video="square.mp4") != first
