"""What the loaders list from ComfyUI's own model folders, and what they refuse when a prompt is queued.

The files here carry the key names and (shrunk) shapes of each family -- enough for the header-only
classification the lists use; loading real tiny files of each family is tested in test_wan_files.py and
test_sd_files.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from executor import combo_options, isolate_host
from motion_core.backbones.loading import find_companion
from motion_core.backbones.single_file import identify
from motion_core.errors import ModelLoadError
from nodes import model_files
from nodes.nodes_model import AUTO, NO_FILE, MotionKitLoadVideoModel
from nodes.nodes_motionclone import MotionKitLoadSparseCtrl


def _save(path: Path, tensors: dict[str, tuple[int, ...]]) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.zeros(shape, dtype=torch.float16) for k, shape in tensors.items()}, str(path))
    return path


def wan_dit(dim: int = 256, in_dim: int = 16, prefix: str = "") -> dict[str, tuple[int, ...]]:
    keys = {"patch_embedding.weight": (dim, in_dim, 1, 2, 2), "head.modulation": (1, 2, dim),
            "head.head.weight": (64, dim), "text_embedding.0.weight": (dim, 64)}
    for i in range(2):
        keys[f"blocks.{i}.self_attn.q.weight"] = (dim, dim)
        keys[f"blocks.{i}.ffn.0.weight"] = (2 * dim, dim)
    return {prefix + k: v for k, v in keys.items()}


UMT5 = {"shared.weight": (64, 32), "encoder.block.0.layer.0.SelfAttention.q.weight": (32, 32),
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (32, 2),
        "encoder.block.1.layer.0.SelfAttention.q.weight": (32, 32),
        "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight": (32, 2)}
T5 = {"shared.weight": (64, 32), "encoder.block.0.layer.0.SelfAttention.q.weight": (32, 32),
      "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (32, 2),
      "encoder.block.1.layer.0.SelfAttention.q.weight": (32, 32)}


def wan_vae(z: int = 16, rgb: int = 3) -> dict[str, tuple[int, ...]]:
    return {"encoder.conv1.weight": (8, rgb, 3, 3, 3), "conv1.weight": (2 * z, 2 * z, 1, 1, 1),
            "conv2.weight": (z, z, 1, 1, 1), "decoder.conv1.weight": (8, z, 3, 3, 3)}


SD15 = {"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (8, 768),
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (8, 8, 1, 1),  # SD1.x: 1x1 convolutions
        "first_stage_model.encoder.conv_in.weight": (8, 3, 3, 3),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (16, 8)}
SDXL = {"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
        "model.diffusion_model.label_emb.0.0.weight": (8, 16), "first_stage_model.encoder.conv_in.weight": (8, 3, 3, 3),
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (16, 8)}
FLUX = {"double_blocks.0.img_attn.qkv.weight": (24, 8), "img_in.weight": (8, 64)}
MOTION_MODULE = {"down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight": (8, 8),
                 "down_blocks.1.motion_modules.0.temporal_transformer.proj_in.weight": (8, 8),
                 "down_blocks.2.motion_modules.0.temporal_transformer.proj_in.weight": (8, 8),
                 "down_blocks.3.motion_modules.0.temporal_transformer.proj_in.weight": (8, 8)}
SPARSECTRL = {**MOTION_MODULE, "controlnet_cond_embedding.conv_in.weight": (8, 4, 3, 3)}
CANNY = {"input_hint_block.0.weight": (16, 3, 3, 3), "input_blocks.0.0.weight": (8, 4, 3, 3)}


@pytest.fixture
def comfy_models(tmp_path, monkeypatch):
    dirs = isolate_host(tmp_path, monkeypatch)
    m = dirs.models
    _save(m / "diffusion_models" / "wan2.1_t2v_1.3B_fp16.safetensors", wan_dit())
    _save(m / "diffusion_models" / "wan2.2_t2v_high_noise_14B_fp16.safetensors", wan_dit(prefix="model.diffusion_model."))
    _save(m / "diffusion_models" / "wan2.2_t2v_low_noise_14B_fp16.safetensors", wan_dit())
    _save(m / "diffusion_models" / "wan2.2_ti2v_5B_fp16.safetensors", wan_dit(in_dim=48))
    _save(m / "diffusion_models" / "flux1-dev.safetensors", FLUX)
    _save(m / "checkpoints" / "v1-5-pruned-emaonly.safetensors", SD15)
    _save(m / "checkpoints" / "sd_xl_base_1.0.safetensors", SDXL)
    (m / "checkpoints" / "broken.ckpt").write_bytes(b"PK\x03\x04 cut off")  # unreadable: listed, the loader explains
    _save(m / "text_encoders" / "umt5_xxl_fp16.safetensors", UMT5)
    _save(m / "text_encoders" / "t5xxl_fp16.safetensors", T5)
    _save(m / "vae" / "wan_2.1_vae.safetensors", wan_vae())
    _save(m / "vae" / "wan2.2_vae.safetensors", wan_vae(z=48, rgb=12))
    _save(m / "vae" / "ae.safetensors", {"encoder.conv_in.weight": (8, 3, 3, 3), "decoder.conv_in.weight": (8, 16, 3, 3)})
    _save(m / "animatediff_models" / "v3_sd15_mm.safetensors", MOTION_MODULE)
    _save(m / "controlnet" / "v3_sd15_sparsectrl_rgb.safetensors", SPARSECTRL)
    _save(m / "controlnet" / "control_v11p_sd15_canny.safetensors", CANNY)
    return dirs


def test_the_lists_hold_the_comfyui_files_motionkit_loads(comfy_models):
    spec = MotionKitLoadVideoModel.INPUT_TYPES()
    models = combo_options(spec["required"]["model"])
    assert [m for m in models if model_files.is_file_name(m)] == [
        "broken.ckpt", "v1-5-pruned-emaonly.safetensors", "wan2.1_t2v_1.3B_fp16.safetensors",
        "wan2.2_t2v_high_noise_14B_fp16.safetensors", "wan2.2_t2v_low_noise_14B_fp16.safetensors",
        "wan2.2_ti2v_5B_fp16.safetensors"]  # not Flux, not SDXL
    assert combo_options(spec["required"]["motion_adapter"]) == ["none", "v3_sd15_mm.safetensors"]
    assert combo_options(spec["optional"]["text_encoder"]) == [AUTO, "umt5_xxl_fp16.safetensors"]  # not Flux's T5
    assert combo_options(spec["optional"]["vae"]) == [AUTO, "wan2.2_vae.safetensors", "wan_2.1_vae.safetensors"]
    assert NO_FILE in combo_options(spec["optional"]["low_noise_model"])
    sparsectrl = combo_options(MotionKitLoadSparseCtrl.INPUT_TYPES()["required"]["sparsectrl"])
    assert "v3_sd15_sparsectrl_rgb.safetensors" in sparsectrl and "control_v11p_sd15_canny.safetensors" not in sparsectrl


def test_files_are_identified_from_names_and_shapes(comfy_models):
    m = comfy_models.models
    assert identify(m / "diffusion_models" / "wan2.2_ti2v_5B_fp16.safetensors").variant == "wan2.2-ti2v-5b"
    high = identify(m / "diffusion_models" / "wan2.2_t2v_high_noise_14B_fp16.safetensors")
    assert (high.family, high.prefix) == ("wan", "model.diffusion_model.")
    assert identify(m / "diffusion_models" / "flux1-dev.safetensors").family == "flux"
    assert identify(m / "checkpoints" / "sd_xl_base_1.0.safetensors").family == "sdxl"
    assert (identify(m / "checkpoints" / "v1-5-pruned-emaonly.safetensors").family, identify(
        m / "checkpoints" / "v1-5-pruned-emaonly.safetensors").role) == ("sd15", "checkpoint")
    assert identify(m / "text_encoders" / "t5xxl_fp16.safetensors").family == "t5"
    assert identify(m / "vae" / "wan2.2_vae.safetensors").variant == "wan2.2-vae"
    assert identify(m / "vae" / "ae.safetensors").family == "other-vae"
    assert identify(m / "controlnet" / "control_v11p_sd15_canny.safetensors").family != "animatediff"


def test_auto_picks_the_one_fitting_companion(comfy_models):
    m = comfy_models.models
    dit = m / "diffusion_models" / "wan2.1_t2v_1.3B_fp16.safetensors"
    kind = identify(dit)
    assert find_companion(dit, kind, "text_encoder").name == "umt5_xxl_fp16.safetensors"
    assert find_companion(dit, kind, "vae").name == "wan_2.1_vae.safetensors"
    five = m / "diffusion_models" / "wan2.2_ti2v_5B_fp16.safetensors"
    assert find_companion(five, identify(five), "vae").name == "wan2.2_vae.safetensors"
    _save(m / "clip" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors", UMT5)  # models/clip counts as text_encoders
    with pytest.raises(ModelLoadError, match="several text encoder files fit.*umt5_xxl_fp16.*choose one"):
        find_companion(dit, kind, "text_encoder")
    sd15 = m / "checkpoints" / "v1-5-pruned-emaonly.safetensors"
    assert find_companion(sd15, identify(sd15), "vae") is None  # the checkpoint's own


def test_queue_time_checks_name_what_is_missing(comfy_models):
    validate = MotionKitLoadVideoModel.VALIDATE_INPUTS
    ok = dict(hub_id="", motion_adapter="none", text_encoder=AUTO, vae=AUTO, low_noise_model=NO_FILE)
    assert validate(model="wan2.1_t2v_1.3B_fp16.safetensors", **ok) is True
    assert "motion module" in validate(model="v1-5-pruned-emaonly.safetensors", **ok)
    assert validate(model="v1-5-pruned-emaonly.safetensors", **{**ok, "motion_adapter": "v3_sd15_mm.safetensors"})
    assert "low-noise partner" in validate(model="wan2.2_t2v_high_noise_14B_fp16.safetensors", **ok)
    assert validate(model="wan2.2_t2v_high_noise_14B_fp16.safetensors",
                    **{**ok, "low_noise_model": "wan2.2_t2v_low_noise_14B_fp16.safetensors"}) is True
    assert "not found" in validate(model="flux1-dev.safetensors", **ok)
    assert "text_encoder 't5xxl_fp16.safetensors' was not found" in validate(
        model="wan2.1_t2v_1.3B_fp16.safetensors", **{**ok, "text_encoder": "t5xxl_fp16.safetensors"})
    # a workflow saved before the optional inputs existed validates as before
    assert validate(model="wan2.1_t2v_1.3B_fp16.safetensors", hub_id="", motion_adapter="none") is True


def test_a_file_of_another_family_is_named_in_the_error(comfy_models):
    from motion_core.backbones import load_video_model

    m = comfy_models.models
    with pytest.raises(ModelLoadError, match="flux1-dev.safetensors is a Flux diffusion model"):
        load_video_model(m / "diffusion_models" / "flux1-dev.safetensors", device="cpu")
    with pytest.raises(ModelLoadError, match="sd_xl_base_1.0.safetensors is a SDXL checkpoint"):
        load_video_model(m / "checkpoints" / "sd_xl_base_1.0.safetensors", device="cpu")
    with pytest.raises(ModelLoadError, match="is a umt5 text encoder, not a video diffusion model"):
        load_video_model(m / "text_encoders" / "umt5_xxl_fp16.safetensors", device="cpu")
    with pytest.raises(ModelLoadError, match="truncated or damaged|damaged or incomplete"):
        load_video_model(m / "checkpoints" / "broken.ckpt", device="cpu")


def test_a_sparsectrl_file_with_diffusers_controlnet_names_is_sparsectrl(tmp_path):
    """SparseCtrl files keep diffusers' ControlNet names (down_blocks.N.attentions.M.transformer_blocks...) beside
    AnimateDiff's motion modules: that must not read as a diffusers-layout DiT."""
    from motion_core.tiny import write_tiny_sparsectrl_file

    for kind in ("rgb", "scribble"):
        found = identify(write_tiny_sparsectrl_file(tmp_path / f"sparsectrl_{kind}.ckpt", kind))
        assert (found.family, found.role) == ("animatediff", "controlnet"), found
    cog = _save(tmp_path / "cogvideox.safetensors", {"patch_embed.proj.weight": (8, 16, 2, 2),
                                                     "transformer_blocks.0.attn1.to_q.weight": (8, 8)})
    assert identify(cog).family == "cogvideox"


def test_listing_never_reads_an_old_format_checkpoint_whole(comfy_models, monkeypatch):
    """A .ckpt in torch's pre-zip format cannot be memory-mapped: classifying it would read the whole file on
    every refresh. It is listed unclassified (the loader explains what it is); zip-format files are classified."""
    import motion_core.adapters.files as adapter_files

    m = comfy_models.models
    legacy = m / "checkpoints" / "old_format.ckpt"
    torch.save({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}, str(legacy),
               _use_new_zipfile_serialization=False)
    zipped = m / "checkpoints" / "flux_as_ckpt.ckpt"
    torch.save({k: torch.zeros(v) for k, v in FLUX.items()}, str(zipped))
    reads = []
    real = adapter_files.read_reference_pt
    monkeypatch.setattr(adapter_files, "read_reference_pt", lambda p, *a, **k: reads.append(Path(p).name) or real(p, *a, **k))
    models = combo_options(MotionKitLoadVideoModel.INPUT_TYPES()["required"]["model"])
    assert "old_format.ckpt" in models and "old_format.ckpt" not in reads
    assert "flux_as_ckpt.ckpt" not in models and "flux_as_ckpt.ckpt" in reads  # read (mapped), and refused
