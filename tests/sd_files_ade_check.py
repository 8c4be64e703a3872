"""AnimateDiff-Evolved's own motion-module classes on the meta device: state-dict names and shapes of the
SD1.5 v2 and v3 motion modules it builds (AnimateDiffModel from normalize_ad_state_dict, as its loader does),
and of its MotionModule blocks at tiny widths. Needs the host's Python (ADE imports comfy.model_base, which
needs torchvision); run by tests/test_sd_files.py and tests/comfyui_host.py as a child process:

    /work/hostvenv/bin/python tests/sd_files_ade_check.py COMFYUI_DIR ADE_DIR OUT_JSON

Reads the tiny widths / positions from stdin as JSON ({"widths": [...], "pe": 32}). :func:`run` starts it and
:func:`problems` compares its report with MotionKit's writer and loader (importable without ComfyUI).
"""

import json
import os
import subprocess
import sys
from pathlib import Path


def run(python: str | Path, comfyui: Path, pack: Path, out: Path, widths=(32, 64), pe: int = 32,
        env: dict | None = None) -> dict:
    """This script under ``python`` (the host's); returns its report."""
    done = subprocess.run([str(python), str(Path(__file__).resolve()), str(comfyui), str(pack), str(out)],
                          input=json.dumps({"widths": list(widths), "pe": pe}), capture_output=True, text=True,
                          timeout=600, env={**(env or os.environ), "PYTHONDONTWRITEBYTECODE": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"AnimateDiff-Evolved layout check failed:\n{done.stdout[-1500:]}\n{done.stderr[-3000:]}")
    return json.loads(Path(out).read_text(encoding="utf-8"))


def problems(report: dict) -> list[str]:
    """Where MotionKit's motion-module files differ from what ADE builds: names/shapes of the v2/v3 writer
    output vs ADE's AnimateDiffModel, and ADE's names through MotionKit's converter vs diffusers' MotionAdapter."""
    import torch
    from diffusers import MotionAdapter

    from motion_core.backbones import sd_files, single_file
    from motion_core.tiny import original_motion_state

    found = []
    for version in ("v2", "v3"):
        if report.get(f"full_{version}_version") != version:
            found.append(f"ADE reads the {version} probe as {report.get(f'full_{version}_version')}")
        with torch.device("meta"):
            adapter = MotionAdapter.from_config(single_file.shipped_config(f"animatediff_motion_adapter_{version}"))
        diffusers_shapes = {k: list(v.shape) for k, v in adapter.state_dict().items()}
        written = {k: list(v.shape) for k, v in original_motion_state(adapter.state_dict()).items()}
        host = report[f"full_{version}"]
        if written != host:
            odd = sorted(set(written) ^ set(host))[:5] or [k for k in host if host[k] != written.get(k)][:5]
            found.append(f"{version}: MotionKit's writer differs from ADE's AnimateDiffModel: {odd}")
        converted = sd_files._motion_state({k: torch.empty(v, device="meta") for k, v in host.items()})
        back = {k: list(v.shape) for k, v in converted.items()}
        if back != diffusers_shapes:
            found.append(f"{version}: ADE's names do not convert to diffusers' MotionAdapter: "
                         f"{sorted(set(back) ^ set(diffusers_shapes))[:5]}")
    return found


if __name__ == "__main__":
    import importlib.util

    sys.dont_write_bytecode = True  # never write into the shared snapshots
    comfyui, pack, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    tiny = json.loads(sys.stdin.read() or "{}")
    sys.argv = ["main.py", "--cpu"]
    sys.path.insert(0, str(comfyui))

    import torch  # noqa: E402

    import comfy.options  # noqa: E402

    comfy.options.enable_args_parsing()
    import comfy.cli_args  # noqa: E402

    comfy.cli_args.args.cpu = True
    spec = importlib.util.spec_from_file_location("ade", str(pack / "__init__.py"), submodule_search_locations=[str(pack)])
    ade = importlib.util.module_from_spec(spec)
    sys.modules["ade"] = ade
    spec.loader.exec_module(ade)
    from ade.animatediff.motion_module_ad import (  # noqa: E402
        AnimateDiffModel, BlockType, MotionModule, normalize_ad_state_dict)


    def shapes(module):
        return {k: list(v.shape) for k, v in module.state_dict().items()}


    def probe(mid: bool, pe: int) -> dict:
        """The few tensors ADE reads to pick the architecture (pos_encoder.pe, block names), on meta."""
        stem = ".motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.{}.pos_encoder.pe"
        state = {}
        widths = (320, 640, 1280, 1280)
        blocks = [(f"down_blocks.{i}", c) for i, c in enumerate(widths)]
        blocks += [(f"up_blocks.{i}", c) for i, c in enumerate(reversed(widths))]
        for block, width in blocks + ([("mid_block", 1280)] if mid else []):
            for a in (0, 1):
                state[block + stem.format(a)] = torch.empty(1, pe, width, device="meta")
        return state


    report = {}
    for name, file_name, mid in (("full_v2", "mm_sd_v15_v2.ckpt", True), ("full_v3", "v3_sd15_mm.ckpt", False)):
        state, info = normalize_ad_state_dict(mm_state_dict=probe(mid, 32), mm_name=file_name)
        with torch.device("meta"):
            model = AnimateDiffModel(mm_state_dict=state, mm_info=info)
        report[name] = shapes(model)
        report[name + "_version"] = str(info.mm_version)

    if tiny:
        blocks = torch.nn.Module()
        widths, pe = tiny["widths"], tiny["pe"]
        with torch.device("meta"):
            blocks.down_blocks = torch.nn.ModuleList(
                MotionModule(c, temporal_pe=True, temporal_pe_max_len=pe, block_type=BlockType.DOWN, block_idx=i)
                for i, c in enumerate(widths))
            blocks.up_blocks = torch.nn.ModuleList(
                MotionModule(c, temporal_pe=True, temporal_pe_max_len=pe, block_type=BlockType.UP, block_idx=i)
                for i, c in enumerate(reversed(widths)))
            blocks.mid_block = MotionModule(widths[-1], temporal_pe=True, temporal_pe_max_len=pe, block_type=BlockType.MID)
        report["tiny"] = shapes(blocks)
    Path(out).write_text(json.dumps(report), encoding="utf-8")
    print("ok")
