"""SD1.5 checkpoints, AnimateDiff motion modules and SparseCtrl as ComfyUI files (motion_core/backbones/sd_files.py).

* tiny files written in ComfyUI's layouts load to the same weights and outputs as the same weights in diffusers
  folders (UNetMotionModel prediction, VAE, prompt embeddings);
* the writer's names and shapes are those of ComfyUI's own UNetModel / AutoencoderKL / CLIPTextModel (meta
  device, child process with ComfyUI imported) and AnimateDiff-Evolved's motion-module classes (host venv);
  ComfyUI's UNet forward on the tiny checkpoint equals the converted diffusers UNet's;
* the real SD1.5 / v2 / v3 / SparseCtrl key sets map with nothing left over (meta, shipped configs);
* bad files are refused with the file and what was expected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from motion_core.backbones import sd_files, single_file
from motion_core.backbones.loading import load_motion_adapter, load_video_model
from motion_core.errors import ModelLoadError
from motion_core import tiny

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
COMFYUI = SHARED / "comfyui"
ADE = SHARED / "comfyui_custom_nodes" / "ComfyUI-AnimateDiff-Evolved"
HOST_PYTHON = Path(os.environ.get("MOTIONKIT_HOST_PYTHON", "/work/hostvenv/bin/python"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdfiles")
    return {"v2": tiny.write_tiny_sd15_files(root / "v2", version="v2"),
            "v3": tiny.write_tiny_sd15_files(root / "v3", version="v3", suffix=".ckpt")}


def _load_pair(f):
    single = load_video_model(f.checkpoint, motion_adapter=f.motion_module, tokenizer=f.tokenizer, device="cpu")
    folder = load_video_model(f.sd15, motion_adapter=f.motion_adapter, device="cpu")
    return single, folder


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_single_files_equal_diffusers_folders(files, version):
    f = files[version]
    single, folder = _load_pair(f)
    assert single.base_model == f"tiny_sd15+tiny_mm_{version}"
    assert type(single.denoiser).__name__ == "UNetMotionModel"
    assert (version == "v2") == (single.denoiser.mid_block.motion_modules is not None
                                 if hasattr(single.denoiser.mid_block, "motion_modules") else False)
    differ = {k for k in set(single.denoiser.config) | set(folder.denoiser.config)
              if single.denoiser.config.get(k) != folder.denoiser.config.get(k)}
    assert differ <= {"sample_size", "_name_or_path"}, differ  # diffusers derives 512 px / VAE factor
    for a, b in ((single.denoiser, folder.denoiser), (single.vae, folder.vae), (single.text_encoder, folder.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert set(sa) == set(sb)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not any(t.is_meta for t in list(single.denoiser.parameters()) + list(single.denoiser.buffers()))
    with torch.no_grad():
        embeds = [m.encode_prompt(["a cat running"]) for m in (single, folder)]
        torch.testing.assert_close(embeds[0], embeds[1], rtol=1e-5, atol=1e-6)
        g = torch.Generator().manual_seed(0)
        latents = torch.randn(1, 4, 8, 8, 8, generator=g)
        preds = [m.predict(latents, 500, embeds[0]) for m in (single, folder)]
        torch.testing.assert_close(preds[0], preds[1], rtol=1e-5, atol=1e-6)
        frames = [m.decode_latents(latents[:, :, :2]) for m in (single, folder)]
        torch.testing.assert_close(frames[0], frames[1], rtol=1e-5, atol=1e-6)
    assert single.frame_limits.maximum == 32


def test_motion_adapter_accepts_a_file(files):
    adapter = load_motion_adapter(files["v3"].motion_module)
    assert type(adapter).__name__ == "MotionAdapter"
    assert adapter.config.use_motion_mid_block is False and adapter.config.motion_max_seq_length == 32
    shapes = sd_files._shapes(single_file.read_header(files["v2"].motion_module))
    assert sd_files.motion_module_variant(shapes) == "v2"


def test_tokenizer_missing_is_explained(files, monkeypatch):
    monkeypatch.setattr(sd_files, "_host_tokenizer_folder", lambda: None)
    monkeypatch.setattr(sd_files, "_cached_tokenizer_folder", lambda: None)
    f = files["v2"]
    with pytest.raises(ModelLoadError, match=r"--tokenizer DIR.*comfy/sd1_tokenizer"):
        load_video_model(f.checkpoint, motion_adapter=f.motion_module, device="cpu")


def test_host_tokenizer_found_without_importing_comfy(monkeypatch):
    if not (COMFYUI / "comfy" / "sd1_tokenizer" / "vocab.json").is_file():
        pytest.skip("no ComfyUI snapshot")
    monkeypatch.syspath_prepend(str(COMFYUI))
    before = set(sys.modules)
    assert sd_files._host_tokenizer_folder() == COMFYUI / "comfy" / "sd1_tokenizer"
    assert not any(m == "comfy" or m.startswith("comfy.") for m in set(sys.modules) - before)
    tok = sd_files.find_clip_tokenizer(None, vocab_size=49408, max_length=77)
    assert len(tok) == 49408 and tok.model_max_length == 77  # the host's config says 8192


@pytest.mark.parametrize("kind", ["rgb", "scribble"])
def test_sparsectrl_file(files, tmp_path, kind):
    from motion_core.methods.motion_clone import load_sparsectrl, sparsectrl_kind

    path = tiny.write_tiny_sparsectrl_file(tmp_path / f"sparsectrl_{kind}.ckpt", kind)
    model = load_video_model(files["v2"].checkpoint, motion_adapter=files["v2"].motion_module,
                             tokenizer=files["v2"].tokenizer, device="cpu")
    controlnet = load_sparsectrl(path, model)
    assert sparsectrl_kind(controlnet) == kind
    reference = tiny.tiny_sparsectrl(tiny.tiny_sd15_modules(0)[0].config, 4, kind, 0, motion_num_attention_heads=8)
    sa, sb = controlnet.state_dict(), reference.state_dict()
    assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert controlnet.config.concat_conditioning_mask is True


# ------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_name_the_file(files, tmp_path):
    f = files["v2"]
    # a motion module given as the model
    with pytest.raises(ModelLoadError, match=r"tiny_mm_v2\.safetensors is an AnimateDiff v2 motion module, not a video"):
        load_video_model(f.motion_module, device="cpu")
    # an SDXL checkpoint (names only: the identify rule), with an SD1.5 motion module: both named
    from safetensors.torch import save_file

    sdxl = tmp_path / "sdxl_base.safetensors"
    save_file({"model.diffusion_model.label_emb.0.0.weight": torch.zeros(2, 2),
               "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 4, 3, 3),
               "first_stage_model.encoder.conv_in.weight": torch.zeros(2, 3, 3, 3)}, str(sdxl))
    with pytest.raises(ModelLoadError, match=r"sdxl_base\.safetensors is a SDXL checkpoint and tiny_mm_v2"):
        load_video_model(sdxl, motion_adapter=f.motion_module, device="cpu")
    with pytest.raises(ModelLoadError, match=r"sdxl_base\.safetensors is a SDXL checkpoint"):
        load_video_model(sdxl, device="cpu")
    # an SDXL motion module with an SD1.5 checkpoint
    mm = {k: v for k, v in single_file.read_state_dict(f.motion_module).items()}
    sdxl_mm = {k: v for k, v in mm.items() if not k.startswith(("down_blocks.2", "up_blocks.2"))}
    sdxl_mm.update({k.replace("down_blocks.0", "down_blocks.2"): v.clone() for k, v in mm.items()
                    if k.startswith("down_blocks.0")})
    save_file(sdxl_mm, str(tmp_path / "mm_sdxl_v10_beta.safetensors"))
    with pytest.raises(ModelLoadError, match=r"mm_sdxl_v10_beta\.safetensors is an SDXL motion module.*tiny_sd15"):
        load_video_model(f.checkpoint, motion_adapter=tmp_path / "mm_sdxl_v10_beta.safetensors",
                         tokenizer=f.tokenizer, device="cpu")
    # no motion module
    with pytest.raises(ModelLoadError, match=r"tiny_sd15\.safetensors is an SD1.5 image model.*animatediff_models"):
        load_video_model(f.checkpoint, tokenizer=f.tokenizer, device="cpu")
    # a truncated .ckpt
    cut = tmp_path / "v3_sd15_mm.ckpt"
    data = files["v3"].motion_module.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"v3_sd15_mm\.ckpt"):
        load_motion_adapter(cut)
    # a .ckpt that contains code (never run: weights_only refuses it)
    evil = tmp_path / "mm_evil.ckpt"
    torch.save({"x": torch.zeros(1), "f": _Evil()}, str(evil))
    with pytest.raises(ModelLoadError, match=r"mm_evil\.ckpt was NOT loaded: it contains code"):
        load_motion_adapter(evil)
    # a UNet alone without VAE / text encoder
    unet_only = tmp_path / "sd15_unet.safetensors"
    state = single_file.read_state_dict(f.checkpoint, prefix="model.diffusion_model.")
    save_file({k: v.contiguous() for k, v in state.items()}, str(unet_only))
    with pytest.raises(ModelLoadError, match=r"sd15_unet\.safetensors is an SD1.5 UNet alone.*models/vae"):
        load_video_model(unet_only, motion_adapter=f.motion_module, tokenizer=f.tokenizer, device="cpu")
    # a motion module as SparseCtrl
    from motion_core.methods.motion_clone import load_sparsectrl

    with pytest.raises(ModelLoadError, match=r"tiny_mm_v2\.safetensors is an AnimateDiff v2 motion module, not a SparseCtrl"):
        load_sparsectrl(f.motion_module, load_video_model(f.sd15, motion_adapter=f.motion_adapter, device="cpu"))


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_unet_file_with_vae_and_text_encoder_files(files, tmp_path):
    from safetensors.torch import save_file

    f = files["v2"]
    for prefix, name in (("model.diffusion_model.", "unet.safetensors"), ("first_stage_model.", "vae.safetensors"),
                         ("cond_stage_model.transformer.", "clip_l.safetensors")):
        state = single_file.read_state_dict(f.checkpoint, prefix=prefix)
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / name))
    model = load_video_model(tmp_path / "unet.safetensors", motion_adapter=f.motion_module, vae=tmp_path / "vae.safetensors",
                             text_encoder=tmp_path / "clip_l.safetensors", tokenizer=f.tokenizer, device="cpu")
    folder = load_video_model(f.sd15, motion_adapter=f.motion_adapter, device="cpu")
    sa, sb = model.denoiser.state_dict(), folder.denoiser.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sb)


# ------------------------------------------------------------------------------------------ the host's classes
def _shapes(state):
    return {k: list(v.shape) for k, v in state.items()}


@pytest.fixture(scope="module")
def comfy_report(files, tmp_path_factory):
    if not (COMFYUI / "comfy").is_dir():
        pytest.skip("no ComfyUI snapshot in ../shared")
    out = tmp_path_factory.mktemp("comfy")
    clip = {"width": tiny.TINY_HIDDEN, "layers": 2, "vocab": tiny.TINY_VOCAB_SIZE, "positions": 77, "intermediate": 37}
    done = subprocess.run([sys.executable, str(REPO / "tests" / "sd_files_comfy_check.py"), str(COMFYUI),
                           str(files["v2"].checkpoint), str(out)], input=json.dumps({"tiny_clip": clip}),
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "report.json").read_text()), torch.load(out / "forward.pt", weights_only=True)


def test_tiny_checkpoint_names_are_comfyuis(comfy_report, files):
    report, _ = comfy_report
    unet, vae, text_encoder, _ = tiny.tiny_sd15_modules(0, version="v2")
    written = _shapes(tiny.sd15_checkpoint_state(unet, vae, text_encoder))
    on_file = {k: list(v[0]) for k, v in single_file.read_header(files["v2"].checkpoint).tensors.items()}
    assert on_file == written
    for prefix, key in (("model.diffusion_model.", "tiny_unet"), ("first_stage_model.", "tiny_vae")):
        assert {k[len(prefix):]: v for k, v in written.items() if k.startswith(prefix)} == report[key]
    clip = {k[len("cond_stage_model.transformer."):]: v for k, v in written.items() if k.startswith("cond_stage_model.")}
    host_clip = dict(report["tiny_clip"])
    host_clip.pop("text_projection.weight")  # ComfyUI adds one; SD1.5 checkpoints have none
    token = "text_model.embeddings.token_embedding.weight"
    assert host_clip.pop(token) == [49408, tiny.TINY_HIDDEN]  # ComfyUI's CLIP fixes CLIP-L's vocabulary
    assert clip.pop(token) == [tiny.TINY_VOCAB_SIZE, tiny.TINY_HIDDEN]
    assert clip == host_clip


def test_comfyui_unet_forward_equals_converted_unet(comfy_report, files):
    _, forward = comfy_report
    model = load_video_model(files["v2"].checkpoint, motion_adapter=files["v2"].motion_module,
                             tokenizer=files["v2"].tokenizer, device="cpu")
    parts = sd_files.load_sd15_components(files["v2"].checkpoint, kind=single_file.identify(files["v2"].checkpoint),
                                          dtype=torch.float32, tokenizer=files["v2"].tokenizer)
    with torch.no_grad():
        y = parts["unet"](forward["x"], forward["t"], encoder_hidden_states=forward["context"]).sample
    torch.testing.assert_close(y, forward["y"], rtol=1e-4, atol=1e-5)
    assert model is not None


def test_real_sd15_key_sets_map_both_ways(comfy_report):
    """ComfyUI's real SD1.5 classes (meta) -> diffusers' converters -> diffusers models on meta with the shipped
    configs: nothing left over either way, same shapes; and the writer gives ComfyUI's names."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    report, _ = comfy_report
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(single_file.shipped_config("sd15_unet"))
        vae = AutoencoderKL.from_config(single_file.shipped_config("sd15_vae"))
        clip = CLIPTextModel(CLIPTextConfig(**single_file.shipped_config("sd15_text_encoder")))
    meta = lambda shapes, prefix: {prefix + k: torch.empty(v, device="meta") for k, v in shapes.items()}  # noqa: E731
    host_unet = meta(report["full_unet"], "model.diffusion_model.")
    params = sd_files.unet_ldm_params({k[len("model.diffusion_model."):]: tuple(v.shape) for k, v in host_unet.items()},
                                      Path("sd15.safetensors"))
    vae_params = sd_files.vae_ldm_params({k: tuple(v) for k, v in report["full_vae"].items()}, Path("sd15.safetensors"))
    config = sd_files._unet_config(params, vae_params, host_unet)
    assert {k: config[k] for k in ("block_out_channels", "layers_per_block", "cross_attention_dim", "down_block_types",
                                   "up_block_types", "attention_head_dim", "sample_size")} == \
        {k: unet.config[k] for k in ("block_out_channels", "layers_per_block", "cross_attention_dim", "down_block_types",
                                     "up_block_types", "attention_head_dim", "sample_size")}
    assert _shapes(convert_ldm_unet_checkpoint(host_unet, config)) == _shapes(unet.state_dict())
    host_vae = meta(report["full_vae"], "first_stage_model.")
    converted = convert_ldm_vae_checkpoint(host_vae, sd_files._vae_config(vae_params, host_vae))
    assert _shapes(converted) == _shapes(vae.state_dict())
    host_clip = dict(report["full_clip"])
    host_clip.pop("text_projection.weight")
    assert {k[len("text_model."):]: v for k, v in host_clip.items()} == _shapes(clip.state_dict())
    # the writer (used for the full-size stand-ins) gives ComfyUI's names and shapes
    written = _shapes(tiny.sd15_checkpoint_state(unet, vae, clip))
    assert {k[len("model.diffusion_model."):]: v for k, v in written.items() if k.startswith("model.")} == report["full_unet"]
    assert {k[len("first_stage_model."):]: v for k, v in written.items() if k.startswith("first_stage_")} == report["full_vae"]


@pytest.mark.skipif(not HOST_PYTHON.is_file() or not ADE.is_dir(),
                    reason="needs the host venv (/work/hostvenv or $MOTIONKIT_HOST_PYTHON) and AnimateDiff-Evolved; "
                           "CI runs the same check in tests/comfyui_host.py")
def test_motion_module_names_are_animatediff_evolveds(tmp_path):
    from diffusers import MotionAdapter
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    sys.path.insert(0, str(REPO / "tests"))
    import sd_files_ade_check

    report = sd_files_ade_check.run(HOST_PYTHON, COMFYUI, ADE, tmp_path / "ade.json")
    assert sd_files_ade_check.problems(report) == []
    assert (report["full_v2_version"], report["full_v3_version"]) == ("v2", "v3")
    for version in ("v2", "v3"):
        with torch.device("meta"):
            adapter = MotionAdapter.from_config(single_file.shipped_config(f"animatediff_motion_adapter_{version}"))
        written = tiny.original_motion_state(adapter.state_dict())
        assert _shapes(written) == report[f"full_{version}"]  # the writer = ADE's names and shapes
        host = {k: torch.empty(v, device="meta") for k, v in report[f"full_{version}"].items()}
        shapes = {k: tuple(v) for k, v in report[f"full_{version}"].items()}
        config = sd_files.motion_adapter_config(shapes, Path(f"mm_{version}.ckpt"))
        assert {k: v for k, v in config.items() if k in adapter.config} == {k: adapter.config[k] for k in config
                                                                              if k in adapter.config}
        converted = sd_files._motion_state(dict(host))
        assert _shapes(converted) == _shapes(adapter.state_dict())  # nothing left over either way
        assert set(convert_animatediff_checkpoint_to_diffusers(host)) | {
            k for k in adapter.state_dict() if k.endswith("pos_embed.pe")} == set(adapter.state_dict())
    # tiny widths, ADE's fixed block structure (2 modules per down block, 3 per up block, a mid block)
    with torch.device("meta"):
        adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=2, motion_norm_num_groups=32,
                                motion_num_attention_heads=8, motion_max_seq_length=32, use_motion_mid_block=True)
    assert _shapes(tiny.original_motion_state(adapter.state_dict())) == report["tiny"]


@pytest.mark.parametrize("kind", ["rgb", "scribble"])
def test_real_sparsectrl_key_sets_map_both_ways(kind):
    """SparseCtrl at its real sizes (shipped config, meta): original layout -> the loader's config and names."""
    from diffusers import SparseControlNetModel

    with torch.device("meta"):
        controlnet = SparseControlNetModel.from_config(single_file.shipped_config(f"sparsectrl_{kind}"))
    original = tiny.sparsectrl_file_state(controlnet)
    assert any(k.endswith("temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe") for k in original)
    config, found = sd_files.sparsectrl_config({k: tuple(v.shape) for k, v in original.items()}, Path(f"{kind}.ckpt"))
    assert found == kind
    assert {k: config[k] for k in controlnet.config if k in config} == \
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in controlnet.config.items() if k in config}
    assert _shapes(sd_files._motion_state(dict(original))) == _shapes(controlnet.state_dict())
