"""MotionKit's Wan LoRA key table against ComfyUI's own Wan DiT class, in the dev venv.

ComfyUI's ``comfy/ldm/wan/model.py`` (``../shared/comfyui``) imports here (its LoRA code does not: it needs
torchvision), so a child process builds ComfyUI's ``WanModel`` on the meta device for the tiny config the host
check uses and for the real Wan 2.1 T2V 1.3B / 14B, I2V 14B and Wan 2.2 TI2V 5B configs, and reports its weight
names and shapes.
Against them: every parameter of MotionKit's diffusers ``WanTransformer3DModel`` renamed by ``wan_keys`` is one
of ComfyUI's weights with the same shape (one to one: the table covers the whole model, the norm2/norm3 swap
included), and every key of an export in both formats names a ComfyUI weight of the LoRA's shape under ComfyUI's
two generic Wan key forms (``diffusion_model.<path>`` and ``lora_unet_<path with _>``).

The full proof -- ComfyUI's own key map, ``load_lora``, ``LoraLoaderModelOnly`` and weight patching on real
tensors, patched - base == MotionKit's delta -- runs in the host venv: ``tests/host_wan_lora_check.py`` (run by
``tests/comfyui_host.py`` in CI).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from motion_core.adapters.wan_keys import diffusers_to_original, export_comfy_wan_lora

REPO = Path(__file__).resolve().parent.parent
COMFYUI = Path(os.environ.get("MOTIONKIT_COMFYUI", REPO.parent / "shared" / "comfyui"))
COMMON = dict(model_type="t2v", patch_size=[1, 2, 2], in_dim=16, out_dim=16, text_dim=4096, freq_dim=256)
CONFIGS = {
    "tiny": dict(dim=256, ffn_dim=512, num_layers=2, num_heads=2),
    "1.3B": dict(dim=1536, ffn_dim=8960, num_layers=30, num_heads=12),
    "14B": dict(dim=5120, ffn_dim=13824, num_layers=40, num_heads=40),
    "14B-i2v": dict(dim=5120, ffn_dim=13824, num_layers=40, num_heads=40, model_type="i2v", in_dim=36),
    "5B": dict(dim=3072, ffn_dim=14336, num_layers=30, num_heads=24, in_dim=48, out_dim=48),
}

_CHILD = r"""
import json, sys
sys.dont_write_bytecode = True
sys.path.insert(0, sys.argv[1])
import comfy.cli_args
comfy.cli_args.args.cpu = True  # as the host runs here: no CUDA
import comfy.ops
from comfy.ldm.wan.model import WanModel
out = {}
for name, config in json.loads(sys.argv[2]).items():
    model = WanModel(**config, device="meta", operations=comfy.ops.disable_weight_init)
    out[name] = {k: list(v.shape) for k, v in model.state_dict().items()}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def comfy_weights(tmp_path_factory) -> dict[str, dict[str, tuple[int, ...]]]:
    """``{config: {ComfyUI weight name: shape}}`` from ComfyUI's own WanModel (a child process: the comfy
    package stays out of this test session)."""
    if not (COMFYUI / "comfy" / "ldm" / "wan" / "model.py").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"ComfyUI's source is not at {COMFYUI} (set MOTIONKIT_COMFYUI)")
        pytest.skip(f"ComfyUI's source is not at {COMFYUI} (set MOTIONKIT_COMFYUI)")
    configs = {name: {**COMMON, **config} for name, config in CONFIGS.items()}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(COMFYUI), json.dumps(configs)],
                          cwd=tmp_path_factory.mktemp("comfy_wan"), capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    line = [x for x in done.stdout.splitlines() if x.startswith("{")][-1]
    return {name: {k: tuple(v) for k, v in weights.items()} for name, weights in json.loads(line).items()}


def motionkit_dit(name: str) -> nn.Module:
    """MotionKit's diffusers Wan DiT of the same config, on the meta device."""
    from diffusers import WanTransformer3DModel

    config = {**COMMON, **CONFIGS[name]}
    image = config["model_type"] == "i2v"
    with torch.device("meta"):
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=config["num_heads"],
            attention_head_dim=config["dim"] // config["num_heads"], in_channels=config["in_dim"], out_channels=config["out_dim"],
            text_dim=4096, freq_dim=256, ffn_dim=config["ffn_dim"], num_layers=config["num_layers"],
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280 if image else None,
            added_kv_proj_dim=config["dim"] if image else None)


def original_parameter(name: str) -> str:
    """A diffusers parameter name in the original Wan names, by MotionKit's table (``scale_shift_table`` is a
    parameter named like a module; the others are ``<module>.weight`` / ``.bias``)."""
    try:
        return diffusers_to_original(name)
    except KeyError:
        module, leaf = name.rsplit(".", 1)
        return f"{diffusers_to_original(module)}.{leaf}"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_diffusers_weight_is_one_comfyui_weight(comfy_weights, name):
    comfy = comfy_weights[name]
    renamed = {original_parameter(n): tuple(p.shape) for n, p in motionkit_dit(name).named_parameters()}
    assert len(renamed) == len(dict(motionkit_dit(name).named_parameters()))  # no two renamed alike
    assert set(renamed) == set(comfy), (sorted(set(renamed) - set(comfy))[:5], sorted(set(comfy) - set(renamed))[:5])
    assert {k: v for k, v in renamed.items() if comfy[k] != v} == {}
    # the norm swap: diffusers' affine norm2 (before the text cross-attention) is the original's affine norm3
    assert "blocks.0.norm3.weight" in comfy and "blocks.0.norm2.weight" not in comfy


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("fmt", ["comfy", "kohya"])
def test_an_export_of_every_linear_names_comfyui_weights_of_its_shape(comfy_weights, name, fmt):
    comfy = comfy_weights[name]
    # ComfyUI's generic Wan key forms (comfy/lora.py model_lora_keys_unet): per weight, both spellings
    key_map = {}
    for weight in comfy:
        if weight.endswith(".weight"):
            path = weight[: -len(".weight")]
            key_map["diffusion_model." + path] = key_map["lora_unet_" + path.replace(".", "_")] = weight
    dit = motionkit_dit(name)
    linears = {n: m for n, m in dit.named_modules() if type(m) is nn.Linear}
    peft = {}
    for n, m in linears.items():
        peft[f"{n}.lora_A.weight"] = torch.empty(2, m.in_features, device="meta")
        peft[f"{n}.lora_B.weight"] = torch.empty(m.out_features, 2, device="meta")
    exported = export_comfy_wan_lora(peft, rank=2, alpha=1.0, format=fmt)
    down, up = (".lora_A.weight", ".lora_B.weight") if fmt == "comfy" else (".lora_down.weight", ".lora_up.weight")
    prefixes = {k[: -len(".alpha")] for k in exported if k.endswith(".alpha")}
    assert len(prefixes) == len(linears) and len(exported) == 3 * len(linears)
    targets = {}
    for prefix in prefixes:
        assert prefix in key_map, prefix
        weight = key_map[prefix]
        assert comfy[weight] == (exported[prefix + up].shape[0], exported[prefix + down].shape[1]), prefix
        assert float(exported[prefix + ".alpha"]) == 1.0
        targets[prefix] = weight
    assert len(set(targets.values())) == len(linears)  # one ComfyUI weight per adapted layer


@pytest.mark.parametrize("name, per_block", [("1.3B", 6), ("14B", 6), ("5B", 6)])
def test_motiondirector_targets_on_the_real_configs_are_comfyui_weights(comfy_weights, name, per_block):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from motion_core.backbones.wan import WanVideoModel

    model = WanVideoModel(denoiser=motionkit_dit(name), vae=None, text_encoder=None, tokenizer=None,
                          scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), base_model=f"Wan {name} (meta)")
    for role in ("temporal", "spatial"):
        targets = model.motion_lora_targets(role)
        assert len(targets) == per_block * CONFIGS[name]["num_layers"]
        assert all(f"{diffusers_to_original(t)}.weight" in comfy_weights[name] for t in targets)
