"""Workflows in workflows/ (UI format) convert to API prompts and run end to end; the executor and the
converter behave as ComfyUI does."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from executor import (
    STAND_INS,
    all_inputs,
    spec_options,
    Executor,
    NodeExecutionError,
    PromptError,
    isolate_host,
    validate_prompt,
)
from motion_core.errors import InputError, VideoError
from nodes import NODE_CLASS_MAPPINGS, model_files
from workflow_layout import overlaps, relayout
from workflow_convert import UPLOAD_FLAGS, WorkflowError, map_widgets_values, ui_to_api, widget_plan

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
ALL_CLASSES = {**STAND_INS, **NODE_CLASS_MAPPINGS}


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    return isolate_host(tmp_path, monkeypatch)


def load_workflow(name: str) -> dict:
    return json.loads((REPO / "workflows" / name).read_text(encoding="utf-8"))


def nodes_of(workflow: dict, node_type: str) -> list[dict]:
    return [n for n in workflow["nodes"] if n["type"] == node_type]


# ------------------------------------------------------------------------------------------ the files
def test_there_are_workflows():
    assert "text_to_video.json" in [p.name for p in WORKFLOWS]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_is_a_consistent_ui_format_file(path):
    wf = json.loads(path.read_text(encoding="utf-8"))
    for key in ("last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra", "version"):
        assert key in wf, key
    assert wf["version"] == 0.4
    ids = [n["id"] for n in wf["nodes"]]
    assert len(ids) == len(set(ids)) and wf["last_node_id"] >= max(ids)
    assert wf["last_link_id"] >= max((link[0] for link in wf["links"]), default=0)
    by_id = {n["id"]: n for n in wf["nodes"]}
    for node in wf["nodes"]:
        for key in ("id", "type", "pos", "size", "flags", "order", "mode", "properties", "widgets_values"):
            assert key in node, (node["id"], key)
        if node["type"] not in ("Note", "MarkdownNote"):
            assert node["properties"].get("Node name for S&R") == node["type"]
    for link_id, src, src_slot, dst, dst_slot, typ in wf["links"]:
        out = by_id[src]["outputs"][src_slot]
        inp = by_id[dst]["inputs"][dst_slot]
        assert link_id in (out.get("links") or []) and inp["link"] == link_id
        assert out["type"] == inp["type"] == typ
    assert nodes_of(wf, "Note") or nodes_of(wf, "MarkdownNote"), "every workflow explains itself in a Note"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_widgets_match_the_node_declarations(path, dirs):
    """Every widget value sits in the right slot and passes the host's validation (with the model and
    input files it names present)."""
    wf = json.loads(path.read_text(encoding="utf-8"))
    foreign = set()
    for node in wf["nodes"]:
        cls = ALL_CLASSES.get(node["type"])
        if cls is None:
            if node["type"] not in ("Note", "MarkdownNote"):
                assert node["type"] in OTHER_PACK_NODES, f"unknown node type {node['type']}"
                foreign.add(node["type"])
            continue
        plan = widget_plan(cls)
        # saved as the current frontend saves it: with the upload button's value where there is one
        assert len(node["widgets_values"]) == sum(1 + c + u for _, c, u in plan), (
            f"{path.name}: node {node['id']} ({node['type']}) has {len(node['widgets_values'])} widget values "
            f"for widgets {[n for n, _, _ in plan]}")
        for inp in node.get("inputs", []):
            assert inp["name"] in [n for n, _ in cls.INPUT_TYPES()["required"].items()] + list(
                (cls.INPUT_TYPES().get("optional") or {}))
    if foreign:
        return  # nodes of other packs: this workflow is validated (and run) by the real host, tests/comfyui_host.py
    prompt = ui_to_api(wf, ALL_CLASSES)
    provide_files_named_by(prompt, dirs)
    assert validate_prompt(prompt, ALL_CLASSES) == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_layout_has_room_for_previews_and_opens_readable(path):
    """Nothing overlaps once video previews load and output nodes show their results, and the canvas
    opens at a zoom where LiteGraph still draws widget values (>= 0.6)."""
    wf = json.loads(path.read_text(encoding="utf-8"))
    assert overlaps(wf) == []
    assert wf["extra"]["ds"]["scale"] >= 0.6


def test_layout_finds_a_preview_that_covers_the_node_below():
    wf = {"nodes": [{"id": 1, "type": "MotionKitLoadReferenceVideo", "pos": [0, 0], "size": [380, 220]},
                    {"id": 2, "type": "Note", "pos": [0, 300], "size": [380, 200]}]}
    assert overlaps(wf) == [(1, 2)]  # the saved sizes do not meet; the loaded preview does
    assert overlaps(relayout(wf)) == []


def _other_pack_nodes() -> set[str]:
    """Node ids that ComfyUI itself and the community packs beside it register, read from their source (not
    imported: the host needs its own venv). Workflows using them are validated by the real host."""
    import re

    shared = REPO.parent / "shared"
    sources = [shared / "comfyui" / "nodes.py", *(shared / "comfyui" / "comfy_extras").glob("nodes_*.py"),
               *(shared / "comfyui_custom_nodes").rglob("*.py")]
    names = set()
    for source in sources:
        text = source.read_text(encoding="utf-8", errors="replace")
        names.update(re.findall(r'^\s*"([A-Za-z][A-Za-z0-9_]+)"\s*:\s*[A-Za-z_][A-Za-z0-9_.]*,', text, re.M))
        names.update(re.findall(r'node_id="([A-Za-z][A-Za-z0-9_]+)"', text))  # schema (V3) nodes
    return names - set(ALL_CLASSES)


OTHER_PACK_NODES = _other_pack_nodes()


def provide_files_named_by(prompt: dict, dirs) -> None:
    """Create stand-ins for the model folders and input files a workflow names, so that validation (which
    checks they exist) can pass. A workflow that names another kind of file adds its case here."""
    for node in prompt.values():
        cls = ALL_CLASSES[node["class_type"]]
        inputs = node["inputs"]
        if node["class_type"] == "MotionKitLoadVideoModel":
            for key in ("model", "motion_adapter", "text_encoder", "vae", "low_noise_model"):
                value = inputs.get(key)
                if isinstance(value, str) and model_files.is_file_name(value):  # a ComfyUI model file
                    folder = {"model": "checkpoints" if not value.startswith("wan") else "diffusion_models",
                              "motion_adapter": "animatediff_models", "text_encoder": "text_encoders", "vae": "vae",
                              "low_noise_model": "diffusion_models"}[key]
                    (dirs.models / folder).mkdir(parents=True, exist_ok=True)
                    (dirs.models / folder / value).write_bytes(b"")  # unreadable: listed, the loader would explain
                    continue
                if key in ("text_encoder", "vae", "low_noise_model"):
                    continue
                if inputs.get(key) not in (None, "none", "(hub id below)") and not isinstance(inputs[key], list):
                    folder = dirs.diffusers / inputs[key]
                    folder.mkdir(parents=True, exist_ok=True)
                    if key == "model":
                        (folder / "model_index.json").write_text("{}")
                    else:
                        (folder / "config.json").write_text(json.dumps({"_class_name": "MotionAdapter"}))
        if node["class_type"] == "MotionKitLoadMotionAdapter" and isinstance(inputs.get("adapter_name"), str):
            dirs.motion_adapters.mkdir(parents=True, exist_ok=True)
            (dirs.motion_adapters / inputs["adapter_name"]).write_bytes(b"")
        if node["class_type"] == "MotionKitLoadSparseCtrl" and isinstance(inputs.get("sparsectrl"), str) \
                and model_files.is_file_name(inputs["sparsectrl"]):
            (dirs.models / "controlnet").mkdir(parents=True, exist_ok=True)
            (dirs.models / "controlnet" / inputs["sparsectrl"]).write_bytes(b"")
        elif node["class_type"] == "MotionKitLoadSparseCtrl" and isinstance(inputs.get("sparsectrl"), str) \
                and inputs["sparsectrl"] != "(hub id below)":
            folder = dirs.models / "controlnet" / inputs["sparsectrl"]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.json").write_text(json.dumps({"_class_name": "SparseControlNetModel"}))
        if node["class_type"] == "MotionKitLoadMotionRepresentation" and isinstance(inputs.get("representation"), str):
            dirs.motion_adapters.mkdir(parents=True, exist_ok=True)
            (dirs.motion_adapters / inputs["representation"]).write_bytes(b"")
        for name, (_section, spec) in all_inputs(cls).items():
            uploads = any(spec_options(spec).get(flag) for flag in UPLOAD_FLAGS)
            if uploads and isinstance(inputs.get(name), str):
                (dirs.input / inputs[name]).write_bytes(b"")


def test_text_to_video_workflow_ends_in_a_core_save_node():
    wf = load_workflow("text_to_video.json")
    (save,) = nodes_of(wf, "SaveAnimatedWEBP")
    assert save["widgets_values"][0].startswith("MotionKit/")
    chain = [n["type"] for n in sorted(wf["nodes"], key=lambda n: n["order"]) if n["type"] != "Note"]
    assert chain == ["MotionKitLoadVideoModel", "MotionKitSampler", "SaveAnimatedWEBP"]


def test_text_to_video_workflow_runs_end_to_end(dirs, tiny_unet3d_path):
    """The shipped workflow, converted as the frontend would and run as the host would. The only changes:
    its model folder is the tiny model, and 2 steps instead of 25 (speed)."""
    from PIL import Image

    wf = load_workflow("text_to_video.json")
    (loader,) = nodes_of(wf, "MotionKitLoadVideoModel")
    (sampler,) = nodes_of(wf, "MotionKitSampler")
    dirs.link_model("tiny_unet3d", tiny_unet3d_path)
    loader["widgets_values"][0] = "tiny_unet3d"
    sampler["widgets_values"][4] = 2  # steps (widgets: prompt, negative, seed, control, steps, ...)

    prompt = ui_to_api(wf, ALL_CLASSES)
    assert prompt[str(sampler["id"])]["inputs"]["model"] == [str(loader["id"]), 0]
    assert prompt[str(sampler["id"])]["inputs"]["steps"] == 2
    assert "4" not in prompt, "the Note node is not sent to the host"
    result = Executor().run(prompt)
    assert sorted(result.executed) == ["1", "2", "3"]
    frames = result.outputs[str(sampler["id"])][0]
    assert frames.shape == (16, 64, 64, 3)
    (path,) = result.files()
    assert path.is_file() and path.parent == dirs.output / "MotionKit" and path.suffix == ".webp"
    with Image.open(path) as im:
        assert im.n_frames == 16 and im.size == (64, 64)


def test_graph_with_reference_video_and_mp4_save(dirs, tiny_unet3d_path):
    """Load Reference Video -> core Create Video -> Save Video; Load Video Model -> Sampler -> Preview."""
    from motion_core.video import load_video, write_moving_square_video

    write_moving_square_video(dirs.input / "ref.mp4", num_frames=16, fps=8)
    dirs.link_model("tiny_unet3d", tiny_unet3d_path)
    prompt = {
        "1": {"class_type": "MotionKitLoadReferenceVideo",
              "inputs": {"video": "ref.mp4", "frames": 8, "fps": 0.0, "width": 32, "height": 32, "start_frame": 0}},
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": ["1", 1]}},
        "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": "video/ref",
                                                     "format": "auto", "codec": "auto"}},
        "4": {"class_type": "MotionKitLoadVideoModel",
              "inputs": {"model": "tiny_unet3d", "hub_id": "", "family": "auto", "dtype": "auto",
                         "device": "cpu", "motion_adapter": "none"}},
        "5": {"class_type": "MotionKitSampler",
              "inputs": {"model": ["4", 0], "prompt": "a square", "negative_prompt": "", "seed": 1, "steps": 2,
                         "cfg": 7.0, "width": 32, "height": 32, "frames": 4, "scheduler": "euler",
                         "batch_size": 1}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
        "7": {"class_type": "MotionKitLoadReferenceVideo",  # not reachable from an output: never runs
              "inputs": {"video": "ref.mp4", "frames": 999, "fps": 0.0, "width": 0, "height": 0, "start_frame": 0}},
    }
    executor = Executor()
    result = executor.run(prompt)
    assert "7" not in result.executed
    mp4 = [p for p in result.files() if p.suffix == ".mp4"]
    assert len(mp4) == 1 and mp4[0].parent == dirs.output / "video"
    assert load_video(mp4[0]).num_frames == 8

    # the host's cache: nothing changed -> loaders and sampler are not re-run; a new file -> re-run
    again = executor.run(prompt)
    assert {"1", "4", "5"} <= set(again.cached)
    write_moving_square_video(dirs.input / "ref.mp4", num_frames=12, fps=8)
    third = executor.run(prompt)
    assert "1" in third.executed and "4" in third.cached


# ------------------------------------------------------------------------------------------ validation
def _sampler_prompt(**changes):
    inputs = {"model": ["1", 0], "prompt": "p", "negative_prompt": "", "seed": 0, "steps": 2, "cfg": 7.0,
              "width": 32, "height": 32, "frames": 4, "scheduler": "ddim", "batch_size": 1}
    inputs.update(changes)
    return {
        "1": {"class_type": "MotionKitLoadVideoModel",
              "inputs": {"model": "tiny_unet3d", "hub_id": "", "family": "auto", "dtype": "auto", "device": "cpu",
                         "motion_adapter": "none"}},
        "2": {"class_type": "MotionKitSampler", "inputs": {k: v for k, v in inputs.items() if v is not None}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }


@pytest.mark.parametrize("changes, message", [
    ({"steps": 0}, "smaller than min"),
    ({"cfg": 1000.0}, "bigger than max"),
    ({"scheduler": "nope"}, "not in the list"),
    ({"prompt": None}, "required input 'prompt' is missing"),
    ({"model": ["9", 0]}, "missing node 9"),
    ({"model": ["1", 1]}, "expects MOTION_MODEL but is linked to a STRING"),
    ({"model": "tiny_unet3d"}, "must be linked"),
    ({"steps": "many"}, "cannot convert"),
])
def test_validation_errors(dirs, changes, message):
    (dirs.diffusers / "tiny_unet3d").mkdir()
    (dirs.diffusers / "tiny_unet3d" / "model_index.json").write_text("{}")
    with pytest.raises(PromptError) as info:
        Executor().run(_sampler_prompt(**changes))
    assert any(message in e for e in info.value.errors), info.value.errors


def test_validation_calls_validate_inputs_and_needs_outputs(dirs):
    prompt = _sampler_prompt()
    errors = validate_prompt(prompt, ALL_CLASSES)
    assert any("Model folder 'tiny_unet3d' was not found" in e for e in errors), errors
    del prompt["3"]
    assert validate_prompt(prompt, ALL_CLASSES) == ["Prompt has no outputs (no output node such as a save node)."]
    prompt["3"] = {"class_type": "NoSuchNode", "inputs": {}}
    assert "unknown node type 'NoSuchNode'" in validate_prompt(prompt, ALL_CLASSES)[0]
    missing = {"1": {"class_type": "MotionKitLoadReferenceVideo",
                     "inputs": {"video": "gone.mp4", "frames": 8, "fps": 0.0, "width": 0, "height": 0,
                                "start_frame": 0}},
               "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    assert any("Video file not found: gone.mp4" in e for e in validate_prompt(missing, ALL_CLASSES))


def test_node_errors_carry_the_motion_core_error(dirs, tiny_unet3d_path):
    from motion_core.video import write_moving_square_video

    write_moving_square_video(dirs.input / "short.mp4", num_frames=6, fps=8)
    prompt = {"1": {"class_type": "MotionKitLoadReferenceVideo",
                    "inputs": {"video": "short.mp4", "frames": 10, "fps": 0.0, "width": 0, "height": 0,
                               "start_frame": 0}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    with pytest.raises(NodeExecutionError) as info:
        Executor().run(prompt)
    assert isinstance(info.value.original, VideoError) and "only 6 frames" in str(info.value.original)

    dirs.link_model("tiny_unet3d", tiny_unet3d_path)
    with pytest.raises(NodeExecutionError) as info:
        Executor().run(_sampler_prompt(width=34))
    assert isinstance(info.value.original, InputError) and "multiple" in str(info.value.original)


def test_executor_checks_what_a_node_returns(dirs):
    class Bad:
        CATEGORY, FUNCTION, RETURN_TYPES, OUTPUT_NODE = "test", "run", ("IMAGE",), True

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}

        def run(self):
            return (1, 2)

    with pytest.raises(TypeError, match="2 values for 1 RETURN_TYPES"):
        Executor({"Bad": Bad}).run({"1": {"class_type": "Bad", "inputs": {}}})


def test_executor_clears_a_stale_cancel_when_a_prompt_starts(dirs, tiny_unet3d_path):
    from nodes import host

    dirs.link_model("tiny_unet3d", tiny_unet3d_path)
    host.request_cancel()
    result = Executor().run(_sampler_prompt())
    assert result.outputs["2"][0].shape == (4, 32, 32, 3)


# ------------------------------------------------------------------------------------------ UI -> API
class _Widgets:
    """A node with every widget kind the converter must place: seed control, upload combo, socket."""

    FUNCTION, RETURN_TYPES, CATEGORY = "run", ("IMAGE",), "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"video": (["a.mp4", "b.mp4"], {"video_upload": True}),
                             "image": ("IMAGE",),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 10, "control_after_generate": True}),
                             "text": ("STRING", {"default": "x"}),
                             "count": ("INT", {"default": 1, "min": 0, "max": 9, "forceInput": True})},
                "optional": {"strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0})}}


def test_widget_plan_skips_sockets_and_counts_extra_values():
    # the upload button's value follows the last *required* widget (frontend 1.27: Comfy.UploadImage)
    assert widget_plan(_Widgets) == [("video", 0, 0), ("seed", 1, 0), ("text", 0, 1), ("strength", 0, 0)]


@pytest.mark.parametrize("values, expected", [
    (["b.mp4", 7, "randomize", "hi", "image", 0.5], {"video": "b.mp4", "seed": 7, "text": "hi", "strength": 0.5}),
    (["b.mp4", 7, "fixed", "hi", 0.5], {"video": "b.mp4", "seed": 7, "text": "hi", "strength": 0.5}),
    (["b.mp4", 7, "fixed", "hi"], {"video": "b.mp4", "seed": 7, "text": "hi"}),  # older: strength defaults
    ({"video": "a.mp4", "seed": 2}, {"video": "a.mp4", "seed": 2}),
])
def test_widgets_values_map_positionally(values, expected):
    assert map_widgets_values(_Widgets, values, "n") == expected


def test_too_many_widget_values_is_an_error():
    with pytest.raises(WorkflowError, match="newer version"):
        map_widgets_values(_Widgets, ["b.mp4", 7, "fixed", "hi", "image", 0.5, "extra"], "n")


def test_ui_to_api_follows_links_reroutes_bypass_and_skips_virtual_nodes():
    classes = {**ALL_CLASSES, "W": _Widgets}
    wf = {
        "nodes": [
            {"id": 1, "type": "MotionKitLoadReferenceVideo", "mode": 0, "inputs": [],
             "outputs": [{"name": "frames", "type": "IMAGE", "links": [1]}],
             "widgets_values": ["a.mp4", 8, 0, 0, 0, 0, "image"]},
            {"id": 2, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 1}],
             "outputs": [{"name": "", "type": "IMAGE", "links": [2]}]},
            {"id": 3, "type": "W", "mode": 4,  # bypassed: its IMAGE input passes through
             "inputs": [{"name": "image", "type": "IMAGE", "link": 2}],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [3]}],
             "widgets_values": ["a.mp4", 1, "fixed", "t", 1.0]},
            {"id": 4, "type": "W", "mode": 0,
             "inputs": [{"name": "image", "type": "IMAGE", "link": 3},
                        {"name": "count", "type": "INT", "link": 4},
                        {"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": 5}],
             "outputs": [], "widgets_values": ["b.mp4", 5, "increment", "hello", 1.5]},
            {"id": 5, "type": "MotionKitLoadReferenceVideo", "mode": 0, "inputs": [],
             "outputs": [{"name": "frames", "type": "IMAGE"}, {"name": "fps", "type": "FLOAT"},
                         {"name": "frame_count", "type": "INT", "links": [4, 5]}],
             "widgets_values": ["b.mp4", 8, 0, 0, 0, 0, "image"]},
            {"id": 6, "type": "Note", "mode": 0, "widgets_values": ["hello"]},
            {"id": 7, "type": "PreviewImage", "mode": 2, "inputs": [{"name": "images", "type": "IMAGE", "link": None}],
             "widgets_values": []},
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 1, "IMAGE"], [3, 3, 0, 4, 1, "IMAGE"],
                  {"id": 4, "origin_id": 5, "origin_slot": 2, "target_id": 4, "target_slot": 4, "type": "INT"},
                  [5, 5, 2, 4, 2, "INT"]],
    }
    prompt = ui_to_api(wf, classes)
    assert set(prompt) == {"1", "4", "5"}
    assert prompt["4"]["inputs"] == {"video": "b.mp4", "image": ["1", 0], "count": ["5", 2], "seed": ["5", 2],
                                     "text": "hello", "strength": 1.5}
    assert prompt["1"]["inputs"] == {"video": "a.mp4", "frames": 8, "fps": 0, "width": 0, "height": 0,
                                     "start_frame": 0}
    broken = copy.deepcopy(wf)
    broken["nodes"][3]["type"] = "Unknown"
    with pytest.raises(WorkflowError, match="unknown node type"):
        ui_to_api(broken, classes)


def test_stand_ins_check_their_inputs(dirs):
    bad = torch.full((2, 8, 8, 3), 2.0)
    with pytest.raises(AssertionError, match="outside 0..1"):
        STAND_INS["SaveAnimatedWEBP"]().save_images(bad, "x", 8.0, True, 80, "default")
    with pytest.raises(AssertionError, match=r"\[B,H,W,3\]"):
        STAND_INS["PreviewImage"]().save_images(torch.zeros(8, 8, 3))


# ------------------------------------------------------------------------------------------ Wan MotionDirector
def test_wan_motiondirector_workflow_runs_end_to_end(dirs, tmp_path):
    """workflows/wan_motiondirector.json on a tiny Wan 2.1 written as ComfyUI's three files, under the file names
    the workflow uses (the umt5 in the scaled-fp8 form): only the clip, sizes, dtype and step counts change.
    Trains, applies the motion LoRA with the flow noise prior, samples, and exports the LoRA in ComfyUI's native
    Wan format into models/loras."""
    from safetensors.torch import load_file

    from motion_core.video import write_moving_square_video

    wf = load_workflow("wan_motiondirector.json")
    (loader,) = nodes_of(wf, "MotionKitLoadVideoModel")
    assert loader["widgets_values"][2] == "wan"
    dirs.put_comfy_wan_files(loader["widgets_values"], tmp_path)
    write_moving_square_video(dirs.input / "car-turn.mp4", num_frames=5, fps=16, width=32, height=32, square=8,
                              velocity=(3, 0), start=(2, 12))
    loader["widgets_values"][3] = "fp32"
    nodes_of(wf, "MotionKitLoadReferenceVideo")[0]["widgets_values"][1:5] = [5, 16.0, 32, 32]
    (trainer,) = nodes_of(wf, "MotionKitTrainMotionDirector")
    w = trainer["widgets_values"]
    assert (w[4] - 1) % 4 == 0  # Wan frame counts are 4k+1
    w[1], w[3], w[4], w[5], w[6], w[7], w[14], w[16], w[17] = 3, 4, 5, 32, 32, 0, 0, 2, 2
    nodes_of(wf, "MotionKitNoisePrior")[0]["widgets_values"][1] = 2
    for sampler in nodes_of(wf, "MotionKitSampler"):
        assert (sampler["widgets_values"][8] - 1) % 4 == 0
        sampler["widgets_values"][4] = 2
        sampler["widgets_values"][6:9] = [32, 32, 5]
    result = Executor().run(ui_to_api(wf, ALL_CLASSES))
    assert (dirs.motion_adapters / "wan_motiondirector_car_turn.safetensors").is_file()
    a, b = (result.outputs[str(s["id"])][0] for s in nodes_of(wf, "MotionKitSampler"))
    assert a.shape == b.shape == (5, 32, 32, 3) and not torch.equal(a, b)
    saved = sorted(p.name for p in result.files())
    assert any(n.startswith("wan_motiondirector_tiger") for n in saved)
    (export,) = nodes_of(wf, "MotionKitExportMotionAdapter")
    path = Path(result.outputs[str(export["id"])][0])
    assert path.parent.name == "loras" and path.name == "wan_motiondirector_car_turn.safetensors"
    keys = load_file(str(path))
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in keys and "diffusion_model.blocks.0.self_attn.q.alpha" in keys
