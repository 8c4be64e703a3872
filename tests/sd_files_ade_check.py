"""AnimateDiff-Evolved's own motion-module classes on the meta device: state-dict names and shapes of the
SD1.5 v2 and v3 motion modules it builds (AnimateDiffModel from normalize_ad_state_dict, as its loader does),
and of its MotionModule blocks at tiny widths. Needs the host's Python (ADE imports comfy.model_base, which
needs torchvision); run by tests/test_sd_files.py and tests/comfyui_host.py as a child process:

    /work/hostvenv/bin/python tests/sd_files_ade_check.py COMFYUI_DIR ADE_DIR OUT_JSON

Reads the tiny widths / positions from stdin as JSON ({"widths": [...], "pe": 32}).
"""

import importlib.util
import json
import sys
from pathlib import Path

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
