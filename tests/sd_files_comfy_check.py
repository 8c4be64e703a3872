"""ComfyUI's own SD1.5 classes (UNetModel, AutoencoderKL, CLIPTextModel) on the meta device: their state-dict
names and shapes for the tiny SD1.5 config of ``motion_core.tiny.tiny_sd15_modules`` and for SD1.5's real
config, and ComfyUI's UNet forward on the tiny checkpoint's weights. Run by tests/test_sd_files.py as a child
process (importing ComfyUI sets its argument parser and globals, which must not leak into the test process):

    python tests/sd_files_comfy_check.py COMFYUI_DIR TINY_CHECKPOINT OUT_DIR

Writes OUT_DIR/report.json and OUT_DIR/forward.pt (input and output of ComfyUI's UNet).
"""

import json
import sys
from pathlib import Path

sys.dont_write_bytecode = True  # never write into the shared ComfyUI snapshot
comfyui, checkpoint, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
sys.argv = ["main.py", "--cpu"]
sys.path.insert(0, str(comfyui))

import torch  # noqa: E402

import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import comfy.ops  # noqa: E402
from comfy.clip_model import CLIPTextModel  # noqa: E402
from comfy.ldm.models.autoencoder import AutoencoderKL  # noqa: E402
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: E402

OPS = comfy.ops.disable_weight_init


def unet_kwargs(model_channels, channel_mult, num_res_blocks, attention_levels, context_dim):
    """ComfyUI's SD15 unet_config (comfy/supported_models.py SD15: use_linear_in_transformer False, num_heads 8,
    num_head_channels -1) with the per-block transformer depths comfy/model_detection.py derives."""
    levels = len(channel_mult)
    depth = [1 if level in attention_levels else 0 for level in range(levels) for _ in range(num_res_blocks)]
    # UNetModel pops the output depths from the end while it builds the decoder deepest level first
    depth_out = [1 if level in attention_levels else 0 for level in range(levels) for _ in range(num_res_blocks + 1)]
    return dict(image_size=32, in_channels=4, model_channels=model_channels, out_channels=4,
                num_res_blocks=[num_res_blocks] * levels, channel_mult=channel_mult, dropout=0.0,
                use_spatial_transformer=True, transformer_depth=depth, transformer_depth_output=depth_out,
                transformer_depth_middle=1, context_dim=context_dim, num_heads=8, num_head_channels=-1,
                legacy=False, use_linear_in_transformer=False, adm_in_channels=None, use_temporal_attention=False,
                dtype=torch.float32, operations=OPS)


def vae_kwargs(ch, ch_mult, num_res_blocks):
    return dict(embed_dim=4, ddconfig={"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3,
                                       "out_ch": 3, "ch": ch, "ch_mult": ch_mult, "num_res_blocks": num_res_blocks,
                                       "attn_resolutions": [], "dropout": 0.0})


def clip_config(width, layers, vocab, positions, intermediate):
    config = json.loads((comfyui / "comfy" / "sd1_clip_config.json").read_text(encoding="utf-8"))
    config.update(hidden_size=width, num_hidden_layers=layers, vocab_size=vocab, max_position_embeddings=positions,
                  intermediate_size=intermediate, num_attention_heads=max(1, width // 64))
    return config


def shapes(module):
    return {k: list(v.shape) for k, v in module.state_dict().items()}


report = {}
with torch.device("meta"):
    report["tiny_unet"] = shapes(UNetModel(**unet_kwargs(32, (1, 2), 1, {0}, 32), device="meta"))
    report["full_unet"] = shapes(UNetModel(**unet_kwargs(320, (1, 2, 4, 4), 2, {0, 1, 2}, 768), device="meta"))
    report["tiny_vae"] = shapes(AutoencoderKL(**vae_kwargs(32, (1, 1, 2), 1)))
    report["full_vae"] = shapes(AutoencoderKL(**vae_kwargs(128, (1, 2, 4, 4), 2)))
    tiny_clip = json.loads(sys.stdin.read() or "{}").get("tiny_clip") or {}
    if tiny_clip:
        report["tiny_clip"] = shapes(CLIPTextModel(clip_config(**tiny_clip), torch.float32, "meta", OPS))
    report["full_clip"] = shapes(CLIPTextModel(clip_config(768, 12, 49408, 77, 3072), torch.float32, "meta", OPS))

# ComfyUI's UNet with the tiny checkpoint's weights, on a fixed input
from safetensors.torch import load_file  # noqa: E402

prefix = "model.diffusion_model."
weights = {k[len(prefix):]: v for k, v in load_file(str(checkpoint)).items() if k.startswith(prefix)}
unet = UNetModel(**unet_kwargs(32, (1, 2), 1, {0}, 32), device="cpu")
missing, unexpected = unet.load_state_dict(weights, strict=False)
report["forward_load"] = {"missing": sorted(missing), "unexpected": sorted(unexpected)}
generator = torch.Generator().manual_seed(0)
x = torch.randn(2, 4, 16, 16, generator=generator)
t = torch.tensor([10.0, 700.0])
context = torch.randn(2, 7, 32, generator=generator)
with torch.no_grad():
    y = unet(x, timesteps=t, context=context)
out.mkdir(parents=True, exist_ok=True)
torch.save({"x": x, "t": t, "context": context, "y": y}, str(out / "forward.pt"))
(out / "report.json").write_text(json.dumps(report), encoding="utf-8")
print("ok")
