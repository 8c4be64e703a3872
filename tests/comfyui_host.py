"""Run MotionKit's shipped workflows in the real ComfyUI, as a user runs them (``../shared/HOST.md``).

    python tests/comfyui_host.py --comfyui ../shared/comfyui --packs ../shared/comfyui_custom_nodes/* \\
        [--work DIR] [--only NAME ...] [--timeout 600]

Run it with the *host's* Python (a venv with ComfyUI's requirements and the pack's, see ``.ci/run``). It

1. copies ComfyUI into a temporary folder and puts the pack under test (this checkout, as
   ``custom_nodes/comfyui-motionkit``) and the other packs beside it in ``custom_nodes``;
2. writes the tiny test models under the model names the workflows use, in ComfyUI's own model folders
   (``models/diffusers``, ``models/controlnet``), and the reference clips / images they name into the
   input folder;
3. starts the server on 127.0.0.1 as users start it, loading only these packs
   (``--disable-all-custom-nodes --whitelist-custom-nodes``);
4. fails when the log shows an import failure of the pack or a node of ``tests/golden/node_schema.json``
   is missing from ``/object_info``;
5. for every workflow in ``workflows/`` (those that load what another one writes go last): converts it
   from UI to API format as the frontend does, from the server's own ``/object_info``; lowers sizes,
   frame counts and steps (:func:`shrink`); posts it to ``/prompt``; waits on ``/history``; and fails if
   it is refused, errors, times out, or writes no output file.

It prints one line per workflow (seconds, files written) and exits non-zero on any failure. Nothing
here is part of the pack: it is a test tool, so it may start processes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from workflow_convert import is_link, ui_to_api, ui_classes_from_object_info  # noqa: E402

PACK_NAME = "comfyui-motionkit"
#: what of this checkout is not copied into custom_nodes (build outputs, standalone folders, venvs)
PACK_IGNORE = (".git", ".venv", ".venv-ci", "models", "input", "output", "tmp", "out", "__pycache__",
               "*.egg-info", ".pytest_cache")

#: model names the shipped workflows use -> the tiny model that stands in for them
TINY_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "zeroscope_v2_576w": ("unet3d", {}),
    "Wan2.1-T2V-1.3B-Diffusers": ("wan", {"variant": "2.1"}),
}
#: ComfyUI's own model files the shipped workflows name -> (models subfolder, family, what builds it). The Wan
#: files are tiny (ComfyUI's loaders derive Wan's sizes from the weights). The SD1.5 checkpoint, v3 motion module
#: and SparseCtrl are random weights at SD1.5's real sizes: AnimateDiff-Evolved's motion-module loader and
#: CheckpointLoaderSimple accept only the real architecture (HOST.md), and MotionKit reads the same files.
COMFY_FILES: dict[str, tuple[str, str, str]] = {
    "wan2.1_t2v_1.3B_fp16.safetensors": ("diffusion_models", "wan", "wan"),
    "umt5_xxl_fp8_e4m3fn_scaled.safetensors": ("text_encoders", "wan", "wan-fp8-scaled"),
    "wan_2.1_vae.safetensors": ("vae", "wan", "wan"),
    "v1-5-pruned-emaonly.safetensors": ("checkpoints", "animatediff", "sd15-full"),
    "v3_sd15_mm.ckpt": ("animatediff_models", "animatediff", "sd15-full"),
    "v3_sd15_sparsectrl_rgb.ckpt": ("controlnet", "animatediff", "sd15-full"),
}
FULL_SD15 = "v1-5-pruned-emaonly.safetensors"
FULL_AD_MOTION_MODULE = "v3_sd15_mm.ckpt"

#: per model family: (width = height, frames) the workflows are lowered to
SMALL = {"unet3d": (32, 8), "animatediff": (64, 8), "wan": (32, 5)}
#: inputs lowered in every MotionKit node that has them (training and sampling steps, inversions, previews)
FEW_STEPS = {"steps": 2, "preview_steps": 2, "noise_prior_steps": 2, "inversion_steps": 2}


# ------------------------------------------------------------------------------------------ the host
def prepare_host(work: Path, comfyui: Path, packs: list[Path]) -> Path:
    """A copy of ComfyUI under ``work`` with this checkout and ``packs`` in its custom_nodes."""
    root = work / "comfyui"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(comfyui, root, ignore=shutil.ignore_patterns(".git", "__pycache__"))
    custom = root / "custom_nodes"
    custom.mkdir(exist_ok=True)
    shutil.copytree(REPO, custom / PACK_NAME, ignore=shutil.ignore_patterns(*PACK_IGNORE))
    for pack in packs:
        shutil.copytree(pack, custom / pack.name, ignore=shutil.ignore_patterns(".git", "__pycache__"))
    for kind in ("diffusers", "controlnet", "motion_adapters", "animatediff_motion_lora", "loras"):
        (root / "models" / kind).mkdir(parents=True, exist_ok=True)
    for folder in ("input", "output", "temp", "user"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    return root


def host_environment() -> dict[str, str]:
    """The environment of the host's processes: offline hub, unbuffered output, and no PYTHONPATH (the host
    imports the pack as a user's ComfyUI does, from custom_nodes)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A ComfyUI server started from ``root`` with its folders under ``work``."""

    root: Path
    work: Path
    packs: list[str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.work / "comfyui.log"

    def start(self, timeout: float = 180.0) -> None:
        w = self.work
        command = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                   "--disable-auto-launch", "--output-directory", str(w / "output"),
                   "--input-directory", str(w / "input"), "--temp-directory", str(w / "temp"),
                   "--user-directory", str(w / "user"), "--database-url", f"sqlite:///{w / 'comfyui.db'}",
                   "--disable-all-custom-nodes", "--whitelist-custom-nodes", *self.packs]
        env = host_environment()
        log = self.log_path.open("w", encoding="utf-8")
        self.process = subprocess.Popen(command, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode} while starting:\n{self.log_tail()}")
            try:
                self.get("/object_info/KSampler", timeout=5)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(1.0)
        raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def get(self, path: str, timeout: float = 30.0) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))

    def post_prompt(self, prompt: dict) -> str:
        body = json.dumps({"prompt": prompt, "client_id": uuid.uuid4().hex}).encode("utf-8")
        request = urllib.request.Request(self.url + "/prompt", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read().decode("utf-8"))["prompt_id"]
        except urllib.error.HTTPError as exc:  # 400: validation failed, node_errors says why
            detail = exc.read().decode("utf-8", errors="replace")
            raise WorkflowFailed(f"refused by /prompt ({exc.code}): {detail[:4000]}") from None

    def wait(self, prompt_id: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise WorkflowFailed(f"ComfyUI died (exit {self.process.returncode}):\n{self.log_tail()}")
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"].get("status_str") in ("success", "error")):
                return entry
            time.sleep(1.0)
        self.interrupt()
        raise WorkflowFailed(f"timed out after {timeout:.0f} s")

    def interrupt(self) -> None:
        request = urllib.request.Request(self.url + "/interrupt", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except OSError:
            pass


class WorkflowFailed(Exception):
    pass


# ------------------------------------------------------------------------------------------ checks
def pack_import_problems(log_text: str) -> list[str]:
    """Lines of the host's log that say the pack failed to import (ComfyUI prints 'IMPORT FAILED')."""
    return [line for line in log_text.splitlines() if "IMPORT FAILED" in line and PACK_NAME in line]


def missing_nodes(object_info: dict) -> list[str]:
    """Nodes the golden schema declares that the live host does not list."""
    golden = json.loads((REPO / "tests" / "golden" / "node_schema.json").read_text(encoding="utf-8"))
    return sorted(set(golden) - set(object_info))


# ------------------------------------------------------------------------------------------ models and inputs
def provide_models(root: Path, workflows: list[dict], work: Path) -> list[str]:
    """Tiny models under every model name the workflows use (diffusers folders in models/diffusers, ComfyUI
    files in their folders); returns the names."""
    from motion_core.tiny import build_tiny_model

    built: dict[tuple, Path] = {}
    comfy: dict[str, dict[str, Path]] = {}

    def tiny(family: str, options: dict) -> Path:
        key = (family, tuple(sorted(options.items())))
        if key not in built:
            built[key] = build_tiny_model(family, work / "tiny" / "-".join(map(str, key[0:1] + key[1])), seed=0,
                                          **options)
        return built[key]

    def comfy_file(name: str) -> None:
        folder, _, maker = COMFY_FILES[name]
        target = root / "models" / folder / name
        if target.exists():
            return
        if maker not in comfy:
            comfy[maker] = make_comfy_files(maker, root, work)
        role = {"diffusion_models": "diffusion_model", "text_encoders": "text_encoder", "vae": "vae"}.get(folder)
        source = comfy[maker].get(role) if role else None
        if source is not None and source != target:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source)
        if not target.exists():
            raise SystemExit(f"could not provide {folder}/{name} (built: {comfy[maker]})")

    names = []
    for wf in workflows:
        for node in wf["nodes"]:
            values = node.get("widgets_values") or []
            for value in values:
                if isinstance(value, str) and value in COMFY_FILES:
                    comfy_file(value)
                    names.append(value)
            if node["type"] == "MotionKitLoadVideoModel" and values and values[0] not in COMFY_FILES:
                name = values[0]
                if name not in TINY_MODELS:
                    raise SystemExit(f"workflow model '{name}' has no tiny stand-in: add it to TINY_MODELS or "
                                     f"COMFY_FILES")
                target = root / "models" / "diffusers" / name
                folder = tiny(*TINY_MODELS[name])
                if not target.exists():
                    target.symlink_to(folder, target_is_directory=True)
                names.append(name)
    return sorted(set(names))


def make_comfy_files(maker: str, root: Path, work: Path) -> dict[str, Path]:
    """Build one set of ComfyUI-layout files: ``wan`` (tiny Wan 2.1: diffusion model, umt5, VAE), ``wan-fp8-scaled``
    (the same with the umt5 in ComfyUI's scaled-fp8 form) or ``sd15-full`` (written straight into models/)."""
    from motion_core.tiny import write_full_size_sd15_files
    from motion_core.tiny_wan import save_comfy_wan_files

    if maker == "wan":
        return save_comfy_wan_files(work / "tiny" / "comfy-wan", seed=0)
    if maker == "wan-fp8-scaled":
        return save_comfy_wan_files(work / "tiny" / "comfy-wan-fp8", seed=0, fp8="scaled")
    if maker == "sd15-full":
        return write_full_size_sd15_files(root / "models", seed=0, checkpoint=FULL_SD15,
                                          motion_module=FULL_AD_MOTION_MODULE,
                                          sparsectrl={"rgb": "v3_sd15_sparsectrl_rgb.ckpt"})
    raise SystemExit(f"unknown ComfyUI file set {maker!r}")


def provide_inputs(input_dir: Path, prompt: dict, families: dict[str, str]) -> None:
    """The reference clips and images a prompt names, written as the synthetic moving square."""
    from PIL import Image

    from motion_core.video import moving_square_frames, write_moving_square_video

    for nid, node in prompt.items():
        inputs, kind = node["inputs"], node["class_type"]
        size, frames = SMALL[families.get(nid, "unet3d")]
        if kind in ("MotionKitLoadReferenceVideo", "VHS_LoadVideo", "LoadVideo"):
            name = inputs.get("video") or inputs.get("file")
            fps = float(inputs.get("fps") or inputs.get("force_rate") or 8.0) or 8.0
            if isinstance(name, str) and not (input_dir / name).exists():
                write_moving_square_video(input_dir / name, num_frames=3 * frames + 4, fps=fps, width=size,
                                          height=size, square=max(4, size // 4), velocity=(1, 0), start=(2, size // 3))
        if kind == "LoadImage" and isinstance(inputs.get("image"), str) and not (input_dir / inputs["image"]).exists():
            first = moving_square_frames(1, width=size, height=size, square=max(4, size // 4))[0]
            Image.fromarray((first.numpy() * 255).round().astype("uint8")).save(input_dir / inputs["image"])


# ------------------------------------------------------------------------------------------ lowering
def model_families(prompt: dict) -> dict[str, str]:
    """Node id -> family of the tiny model it works with (through its MOTION_MODEL links)."""
    cache: dict[str, str] = {}

    def family(nid: str, seen: frozenset = frozenset()) -> str | None:
        if nid in cache:
            return cache[nid]
        node = prompt[nid]
        if node["class_type"] == "MotionKitLoadVideoModel":
            name = node["inputs"].get("model")
            found = COMFY_FILES[name][1] if name in COMFY_FILES else TINY_MODELS.get(name, ("unet3d", {}))[0]
        else:
            found = None
            for value in node["inputs"].values():
                if is_link(value) and value[0] in prompt and value[0] not in seen:
                    found = family(value[0], seen | {nid})
                    if found:
                        break
        if found:
            cache[nid] = found
        return found

    out = {}
    for nid in prompt:
        f = family(nid)
        if f:
            out[nid] = f
    # nodes upstream of a model node (reference loaders) take the family of what they feed
    for nid, node in prompt.items():
        for value in node["inputs"].values():
            if is_link(value) and value[0] in prompt and value[0] not in out and nid in out:
                out[value[0]] = out[nid]
    return out


def shrink(prompt: dict, families: dict[str, str]) -> dict:
    """The same graph at tiny sizes: every MotionKit node's width/height/frames and step counts lowered
    (a 0 that means "the model's own size" or "every frame" stays 0), and the same for the core sampling
    nodes of the other packs' workflows; everything else as saved."""
    for nid, node in prompt.items():
        inputs, kind = node["inputs"], node["class_type"]
        if kind in ("KSampler", "KSamplerAdvanced"):
            inputs["steps"] = FEW_STEPS["steps"]
        if kind == "EmptyLatentImage":
            size, frames = SMALL["animatediff"]
            inputs.update(width=size, height=size, batch_size=frames)
        if not kind.startswith("MotionKit") and kind != "VHS_LoadVideo":
            continue
        size, frames = SMALL[families.get(nid, "unet3d")]
        for name in ("width", "height", "custom_width", "custom_height"):
            if isinstance(inputs.get(name), int) and inputs[name]:
                inputs[name] = size
        for name in ("frames", "frame_load_cap"):
            if isinstance(inputs.get(name), int) and inputs[name]:
                inputs[name] = frames
        for name, value in FEW_STEPS.items():
            if isinstance(inputs.get(name), int) and inputs[name]:
                inputs[name] = value
        if isinstance(inputs.get("preview_every"), int) and inputs["preview_every"]:
            inputs["preview_every"] = FEW_STEPS["steps"]
        if isinstance(inputs.get("checkpoint_every"), int) and inputs["checkpoint_every"]:
            inputs["checkpoint_every"] = 1
        if kind == "MotionKitApplyMotionClone":
            inputs.update(guided_steps=1, warm_up=0, cool_down=0)
    return prompt


def run_order(paths: list[Path]) -> list[Path]:
    """Workflows that only load what another one writes (a motion adapter, a representation, an exported
    LoRA) run after the others."""
    loaders = ("MotionKitLoadMotionAdapter", "MotionKitLoadMotionRepresentation", "ADE_AnimateDiffLoRALoader")

    def consumer(path: Path) -> bool:
        wf = json.loads(path.read_text(encoding="utf-8"))
        return any(n["type"] in loaders and n.get("mode", 0) == 0 for n in wf["nodes"])

    return sorted(paths, key=lambda p: (consumer(p), p.name))


def ade_motion_loras(path: Path) -> list[tuple[str, str]]:
    """(motion LoRA, motion module) pairs an AnimateDiff-Evolved workflow loads together."""
    wf = json.loads(path.read_text(encoding="utf-8"))
    loras = [n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "ADE_AnimateDiffLoRALoader"]
    modules = [n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "ADE_AnimateDiffLoaderGen1"]
    return [(lora, module) for lora in loras for module in modules]


def output_files(entry: dict, work: Path) -> list[Path]:
    """Files the output nodes of a finished prompt report, that exist."""
    found = []
    for out in (entry.get("outputs") or {}).values():
        for key in ("images", "gifs", "videos", "animated", "audio"):
            for item in out.get(key) or []:
                if isinstance(item, dict) and "filename" in item:
                    base = work / ("temp" if item.get("type") == "temp" else item.get("type", "output"))
                    path = base / item.get("subfolder", "") / item["filename"]
                    if item.get("type") == "temp" and not path.exists():
                        path = work / "temp" / "temp" / item.get("subfolder", "") / item["filename"]
                    if path.is_file():
                        found.append(path)
    return found


def error_of(entry: dict) -> str:
    for kind, data in (entry.get("status") or {}).get("messages") or []:
        if kind == "execution_error":
            return (f"{data.get('node_type')} (node {data.get('node_id')}): {data.get('exception_type')}: "
                    f"{data.get('exception_message')}\n" + "".join(data.get("traceback") or [])[-3000:])
    return json.dumps(entry.get("status"))[:2000]


#: run by the host's Python inside the ComfyUI copy: AnimateDiff-Evolved's own code turns the LoRA file into
#: patches (load_motion_lora_as_patches) for the motion module it builds from the motion-module file
#: (normalize_ad_state_dict + AnimateDiffModel, on the meta device); prints the patch keys that match no weight.
_ADE_KEY_CHECK = r"""
import importlib.util, json, sys
import torch
sys.path.insert(0, ".")
import comfy.cli_args
comfy.cli_args.args.cpu = True  # as the server runs (--cpu): no CUDA here
import comfy.utils, folder_paths
pack = "custom_nodes/ComfyUI-AnimateDiff-Evolved"
spec = importlib.util.spec_from_file_location("ade", pack + "/__init__.py", submodule_search_locations=[pack])
ade = importlib.util.module_from_spec(spec); sys.modules["ade"] = ade; spec.loader.exec_module(ade)
from ade.animatediff.model_injection import load_motion_lora_as_patches
from ade.animatediff.motion_lora import MotionLoraInfo
from ade.animatediff.motion_module_ad import AnimateDiffModel, normalize_ad_state_dict
lora_name, mm_name = sys.argv[1], sys.argv[2]
state = comfy.utils.load_torch_file(folder_paths.get_full_path("animatediff_models", mm_name), safe_load=True)
state, info = normalize_ad_state_dict(mm_state_dict=state, mm_name=mm_name)
with torch.device("meta"):
    model = AnimateDiffModel(mm_state_dict=state, mm_info=info)
weights = {k: tuple(v.shape) for k, v in model.state_dict().items()}
class Recorder:
    def __init__(self, model): self.model, self.patches = model, {}
    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0): self.patches.update(patches)
recorder = Recorder(model)
load_motion_lora_as_patches(recorder, MotionLoraInfo(name=lora_name, strength=1.0))
unmatched = sorted(k for k in recorder.patches if k not in weights)
wrong = sorted(k for k, (delta,) in recorder.patches.items() if k in weights and tuple(delta.shape) != weights[k])
print(json.dumps({"patches": len(recorder.patches), "unmatched": unmatched, "wrong_shape": wrong,
                  "motion_module": info.mm_version, "weights": len(weights)}))
"""


def ade_lora_key_check(root: Path, lora_name: str, mm_name: str) -> dict:
    """AnimateDiff-Evolved's own verdict on a motion LoRA file: how many patches its loader makes and which of
    them match no weight (or the wrong shape) of the motion module -- ADE drops those silently."""
    done = subprocess.run([sys.executable, "-c", _ADE_KEY_CHECK, lora_name, mm_name], cwd=root, env=host_environment(),
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise WorkflowFailed(f"AnimateDiff-Evolved key check failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def wan_lora_check(root: Path, work: Path) -> dict:
    """ComfyUI's own LoRA code on MotionKit's Wan motion LoRAs (``tests/host_wan_lora_check.py``, run by the host's
    Python in the ComfyUI copy): its report, ``{"results": [...], "failed": [...]}``."""
    done = subprocess.run([sys.executable, str(REPO / "tests" / "host_wan_lora_check.py"), "--comfyui", str(root),
                           "--work", str(work / "wan_lora"), "--json"], cwd=root, env=host_environment(),
                          capture_output=True, text=True, timeout=1200)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise WorkflowFailed(f"the Wan LoRA check failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def run_workflow(server: Server, path: Path, object_info: dict, timeout: float) -> tuple[float, list[Path]]:
    wf = json.loads(path.read_text(encoding="utf-8"))
    prompt = ui_to_api(wf, ui_classes_from_object_info(object_info))
    families = model_families(prompt)
    shrink(prompt, families)
    provide_inputs(server.work / "input", prompt, families)
    (server.work / "prompts").mkdir(exist_ok=True)
    (server.work / "prompts" / path.name).write_text(json.dumps(prompt, indent=1), encoding="utf-8")
    started = time.monotonic()
    before = {p for p in (server.work / "output").rglob("*") if p.is_file()}
    entry = server.wait(server.post_prompt(prompt), timeout)
    seconds = time.monotonic() - started
    if entry["status"].get("status_str") != "success":
        raise WorkflowFailed(error_of(entry))
    files = [p for p in output_files(entry, server.work) if p not in before]
    written = [p for p in (server.work / "output").rglob("*") if p.is_file() and p not in before]
    if not files and not written:
        raise WorkflowFailed("finished but wrote no output file")
    return seconds, sorted(set(files) | set(written))


def check_in_frontend(server: Server, paths: list[Path], playwright_dir: Path) -> list[str]:
    """Load the workflows in the real frontend (after the run, so inputs and outputs exist) and report nodes
    whose boxes, as the frontend draws them once previews loaded, meet (title bars included)."""
    from workflow_layout import TITLE, boxes_meeting

    out = server.work / "frontend"
    out.mkdir(exist_ok=True)
    script = REPO / "tests" / "frontend" / "load_workflows.mjs"
    shutil.copy(script, playwright_dir / script.name)  # node resolves playwright-core beside the script
    done = subprocess.run(["node", str(playwright_dir / script.name), server.url, str(out), *map(str, paths)],
                          cwd=playwright_dir, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        return [f"frontend check failed: {done.stderr[-2000:]}"]
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))["report"]
    problems = []
    for name, info in report.items():
        met = boxes_meeting([(n["type"], (n["pos"][0], n["pos"][1] - TITLE, n["pos"][0] + n["size"][0],
                                          n["pos"][1] + n["size"][1])) for n in info["nodes"]])
        tallest = max(((n["type"], round(n["size"][1])) for n in info["nodes"]), key=lambda x: x[1])
        print(f"     frontend: {name}: zoom {info['scale']}, {len(info['nodes'])} nodes, tallest {tallest}, "
              f"{len(met)} overlapping", flush=True)
        if met:
            problems.append(f"{name}.json: nodes overlap in the frontend: {met}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", type=Path, default=REPO.parent / "shared" / "comfyui")
    parser.add_argument("--packs", type=Path, nargs="*", default=sorted(
        (REPO.parent / "shared" / "comfyui_custom_nodes").glob("*")))
    parser.add_argument("--work", type=Path, default=None, help="keep everything here (default: a temp folder)")
    parser.add_argument("--only", nargs="*", default=None, help="workflow file names (default: all)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per workflow")
    parser.add_argument("--frontend", type=Path, default=None,
                        help="also load every workflow in the real frontend with headless Chromium: a folder with "
                             "node_modules/playwright-core (npm i playwright-core; Debian's chromium); screenshots "
                             "and the measured node boxes go to WORK/frontend")
    args = parser.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="motionkit-host-"))
    work.mkdir(parents=True, exist_ok=True)
    paths = sorted((REPO / "workflows").glob("*.json"))
    if args.only:
        paths = [p for p in paths if p.name in args.only or p.stem in args.only]
    paths = run_order(paths)
    print(f"== ComfyUI from {args.comfyui} in {work}; packs: {PACK_NAME} + {', '.join(p.name for p in args.packs)}",
          flush=True)
    root = prepare_host(work, args.comfyui, args.packs)
    names = provide_models(root, [json.loads(p.read_text(encoding="utf-8")) for p in paths], work)
    print(f"== tiny models as: {', '.join(names)}", flush=True)
    server = Server(root, work, [PACK_NAME] + [p.name for p in args.packs])
    failures: list[str] = []
    try:
        started = time.monotonic()
        server.start()
        print(f"== ComfyUI answers on {server.url} after {time.monotonic() - started:.1f} s", flush=True)
        object_info = server.get("/object_info", timeout=120)
        problems = pack_import_problems(server.log_path.read_text(encoding="utf-8", errors="replace"))
        if problems:
            failures.append("pack import failed: " + "; ".join(problems))
        missing = missing_nodes(object_info)
        if missing:
            failures.append(f"declared nodes missing from /object_info: {', '.join(missing)}")
        for path in paths:
            try:
                seconds, files = run_workflow(server, path, object_info, args.timeout)
            except WorkflowFailed as exc:
                failures.append(f"{path.name}: {exc}")
                print(f"FAIL {path.name}: {exc}", flush=True)
                continue
            shown = ", ".join(str(f.relative_to(work)) for f in files[:6]) + (" ..." if len(files) > 6 else "")
            print(f"ok   {path.name}: {seconds:.1f} s, {len(files)} files: {shown}", flush=True)
            for name, mm in ade_motion_loras(path):
                try:
                    report = ade_lora_key_check(root, name, mm)
                except WorkflowFailed as exc:
                    failures.append(f"{path.name}: {exc}")
                    print(f"FAIL {path.name}: {exc}", flush=True)
                    continue
                print(f"     AnimateDiff-Evolved on {name} + {mm} ({report['motion_module']}): {report['patches']} "
                      f"patches, {len(report['unmatched'])} unmatched, {len(report['wrong_shape'])} of the wrong shape",
                      flush=True)
                if report["unmatched"] or report["wrong_shape"] or not report["patches"]:
                    failures.append(f"{path.name}: ADE does not apply all of {name}: {report}")
        try:
            wan = wan_lora_check(root, work)
            tiny = [r for r in wan["results"] if "max_error" in r]
            meta = [r for r in wan["results"] if "wrong_shape" in r]
            print(f"     ComfyUI's LoRA code on MotionKit's Wan LoRAs: {len(tiny)} files on its WAN21 with tiny weights "
                  f"({sum(r['keys_in_file'] for r in tiny)} keys, {sum(r['patches'] for r in tiny)} patches, "
                  f"{sum(len(r['unmatched']) for r in tiny)} unmatched, max |patched - base - delta| "
                  f"{max([r['max_error'] for r in tiny] or [float('nan')]):.1e}); {len(meta)} on real configs (meta): "
                  f"{sum(r['exported_layers'] for r in meta)} layers exported, {sum(r['patches'] for r in meta)} "
                  f"patched, {sum(len(r['unmatched']) + len(r['wrong_shape']) for r in meta)} unmatched or misshapen; "
                  f"{len(wan['failed'])} of {len(wan['results'])} checks failed", flush=True)
            for r in wan["results"]:
                if not r["ok"]:
                    print(f"FAIL ComfyUI's LoRA code, {r['case']}: {json.dumps(r)[:1500]}", flush=True)
            failures.extend(f"ComfyUI's LoRA code on MotionKit's Wan LoRA: {case}" for case in wan["failed"])
        except (WorkflowFailed, subprocess.TimeoutExpired) as exc:
            failures.append(str(exc))
        try:  # MotionKit's SD1.5 motion-module files vs AnimateDiff-Evolved's own classes (tests/test_sd_files.py)
            import sd_files_ade_check

            ade = [p for p in args.packs if p.name == "ComfyUI-AnimateDiff-Evolved"]
            if ade:
                found = sd_files_ade_check.problems(sd_files_ade_check.run(
                    sys.executable, root, ade[0], work / "sd_files_ade.json", env=host_environment()))
                print(f"     AnimateDiff-Evolved's motion-module classes vs MotionKit's v2/v3 files: "
                      f"{len(found)} problems", flush=True)
                failures.extend(f"motion-module layout: {p}" for p in found)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            failures.append(str(exc))
        if args.frontend is not None:
            failures.extend(check_in_frontend(server, paths, args.frontend))
    finally:
        server.stop()
    if failures:
        print(f"\n{len(failures)} problem(s) in the real host; its log: {server.log_path}", flush=True)
        print(server.log_tail(40))
        for failure in failures:
            print(f"  - {failure.splitlines()[0]}")
        return 1
    print(f"== {len(paths)} workflows ran in the real ComfyUI", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
