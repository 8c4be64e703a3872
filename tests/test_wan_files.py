"""Wan from the files ComfyUI users have (models/diffusion_models + text_encoders + vae), not a diffusers folder.

* tiny Wans written in ComfyUI's layout (``tiny_wan.save_comfy_wan_files``) load through ``load_video_model`` and
  give what the same weights give from a diffusers folder: denoiser prediction, VAE encode/decode, prompt
  embeddings and token ids (2.1, 2.2 TI2V-5B, 2.2 A14B pair, fp8, scaled fp8, bf16, no prefix);
* the tiny files' names and shapes are those of ComfyUI's own classes (``comfy.ldm.wan.model.WanModel``,
  ``comfy.text_encoders.t5.T5``, ``comfy.ldm.wan.vae`` / ``vae2_2`` ``WanVAE``) for the same tiny config, and
  ComfyUI's WanModel run on the file's weights predicts what MotionKit's converted diffusers model predicts;
* the real architectures on the meta device: ComfyUI's classes with the real configs -> MotionKit's config
  derivation (= the shipped configs) and diffusers' converters -> diffusers modules with nothing missing or
  left over, shapes equal (Wan 2.1 1.3B / 14B, Wan 2.2 TI2V-5B, umt5-xxl, Wan 2.1 / 2.2 VAE);
* bad inputs (another family's file, a text encoder that is not umt5, a VAE of another family or generation,
  an A14B expert alone, a truncated file, a text encoder without tokenizer) are ModelLoadErrors naming the
  file and what was expected, raised before any weight is loaded.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from motion_core.backbones import load_video_model
from motion_core.backbones import single_file, wan_files
from motion_core.backbones.spm_proto import parse_model_proto, serialize_model_proto
from motion_core.errors import ModelLoadError
from motion_core.tiny_wan import save_comfy_wan_files, tiny_spiece_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
COMFYUI = Path(__file__).resolve().parents[2] / "shared" / "comfyui"
PROMPTS = ["a red square moving right", "the ｃａｔ  on the left,  camera up!", ""]


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """ComfyUI-layout tiny Wans with their diffusers twins: name -> (files, diffusers folder)."""
    root = tmp_path_factory.mktemp("comfy_wan")
    out = {}
    for name, kwargs in {"2.1": {}, "2.2-5b": {"variant": "2.2-5b"}, "2.2-a14b": {"variant": "2.2-a14b"},
                         "scaled": {"fp8": "scaled"}, "e4m3fn": {"fp8": "e4m3fn", "prefix": ""}}.items():
        twin = root / f"{name}_diffusers"
        out[name] = (save_comfy_wan_files(root / name / "models", seed=3, diffusers_folder=twin, **kwargs), twin)
    return out


def _load(paths, **kwargs):
    return load_video_model(paths["diffusion_model"], text_encoder=paths["text_encoder"], vae=paths["vae"],
                            low_noise_model=paths.get("low_noise_model"), device="cpu", **kwargs)


@pytest.fixture(scope="module")
def comfy():
    """ComfyUI's own model classes (``--cpu``), imported in this process."""
    if not (COMFYUI / "comfy" / "ldm" / "wan" / "model.py").is_file():
        pytest.skip("ComfyUI source not found")
    if str(COMFYUI) not in sys.path:
        sys.path.append(str(COMFYUI))
    argv, sys.argv = sys.argv, ["x", "--cpu"]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.ldm.wan.model as wan_model
        import comfy.ldm.wan.vae as vae21
        import comfy.ldm.wan.vae2_2 as vae22
        import comfy.ops
        import comfy.text_encoders.t5 as t5
    finally:
        sys.argv = argv
    return {"WanModel": wan_model.WanModel, "VAE21": vae21.WanVAE, "VAE22": vae22.WanVAE, "T5": t5.T5,
            "ops": comfy.ops.disable_weight_init, "umt5_config": COMFYUI / "comfy/text_encoders/umt5_config_xxl.json"}


def _shapes(state) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _file_shapes(path: Path, prefix: str = "") -> dict[str, tuple[int, ...]]:
    header = single_file.read_header(path)
    return {k[len(prefix):]: s for k, (s, _) in header.tensors.items() if k.startswith(prefix)}


def _header(state, path="x.safetensors") -> single_file.WeightsHeader:
    return single_file.WeightsHeader(Path(path), {k: (tuple(v.shape), "float32") for k, v in state.items()})


# --------------------------------------------------------------------------------------------- equal to the folder
@pytest.mark.parametrize("name", ["2.1", "2.2-5b", "2.2-a14b", "scaled", "e4m3fn"])
def test_files_load_like_the_diffusers_folder(files, name):
    paths, twin = files[name]
    model, folder = _load(paths), load_video_model(twin, device="cpu")
    assert type(model) is type(folder) and model.family == "wan"
    assert (model.variant, model.boundary_ratio, model.expand_timesteps, model.latent_channels) == \
        (folder.variant, folder.boundary_ratio, folder.expand_timesteps, folder.latent_channels)
    assert model.base_model == "+".join(Path(paths[r]).stem for r in ("diffusion_model", "low_noise_model")
                                        if r in paths)
    assert model.flow_shift == (5.0 if name == "2.2-5b" else 3.0)
    assert not any(p.requires_grad for p in model.parameters()) and not model.denoiser.training
    # tokenizer: the same ids as transformers' own T5Tokenizer built from the same pieces and charsmap
    for text in PROMPTS:
        assert model.tokenizer(text).input_ids == folder.tokenizer(text).input_ids
    assert model.tokenizer("the ｃａｔ").input_ids == model.tokenizer("the cat").input_ids  # the charsmap (NFKC)
    embeds = model.encode_prompt(PROMPTS)
    torch.testing.assert_close(embeds, folder.encode_prompt(PROMPTS), rtol=1e-5, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, model.latent_channels, 2, 4, 4, generator=g)
    for t in (950.0, 300.0):  # A14B: one step on each expert
        torch.testing.assert_close(model.predict(z, t, embeds[:1]), folder.predict(z, t, embeds[:1]),
                                   rtol=1e-5, atol=1e-5)
    video = torch.rand(1, 3, 5, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        a, b = model.vae.encode(video).latent_dist.mode(), folder.vae.encode(video).latent_dist.mode()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.vae.decode(a).sample, folder.vae.decode(b).sample, rtol=1e-5, atol=1e-5)


def test_companions_found_beside_the_model(files):
    """text_encoder / vae "auto" (the default): the one fitting file in models/text_encoders and models/vae."""
    paths, _ = files["2.2-5b"]
    model = load_video_model(paths["diffusion_model"], device="cpu")
    assert model.variant == "wan2.2-ti2v-5b" and model.latent_channels == 48


def test_bf16_dtypes_match_the_folder(files):
    paths, twin = files["2.1"]
    model, folder = _load(paths, dtype="bf16"), load_video_model(twin, device="cpu", dtype="bf16")
    for mine, theirs in ((model.denoiser, folder.denoiser), (model.text_encoder, folder.text_encoder),
                         (model.vae, folder.vae)):
        theirs_dtypes = {k: v.dtype for k, v in theirs.state_dict().items()}
        assert {k: v.dtype for k, v in mine.state_dict().items()} == theirs_dtypes
    assert model.denoiser.scale_shift_table.dtype == torch.float32 and model.denoiser.proj_out.weight.dtype == torch.bfloat16
    assert next(model.vae.parameters()).dtype == torch.float32
    # the token embedding stays tied after assign-loading
    assert model.text_encoder.encoder.embed_tokens.weight is model.text_encoder.shared.weight


def test_scaled_fp8_weights_are_scale_times_fp8(files):
    paths, _ = files["scaled"]
    model = _load(paths)
    name = "model.diffusion_model.blocks.1.self_attn.q"
    with safe_open(str(paths["diffusion_model"]), "pt") as f:
        assert f.get_tensor(name + ".weight").dtype == torch.float8_e4m3fn
        expected = f.get_tensor(name + ".weight").float() * f.get_tensor(name + ".scale_weight").float()
        assert "model.diffusion_model.scaled_fp8" in f.keys()
    assert torch.equal(model.denoiser.blocks[1].attn1.to_q.weight, expected)
    with safe_open(str(paths["text_encoder"]), "pt") as f:
        w = f.get_tensor("encoder.block.0.layer.0.SelfAttention.q.weight").float() * \
            f.get_tensor("encoder.block.0.layer.0.SelfAttention.q.scale_weight").float()
    assert torch.equal(model.text_encoder.encoder.block[0].layer[0].SelfAttention.q.weight, w)


def test_a14b_pair_two_experts_and_boundary(files):
    model = _load(files["2.2-a14b"][0])
    assert [e.name for e in model.experts] == ["high_noise", "low_noise"]
    assert model.boundary_timestep == pytest.approx(875.0) and model.variant == "wan2.2-a14b"
    assert not torch.equal(model.denoiser.proj_out.weight, model.denoiser_2.proj_out.weight)


def test_spiece_model_round_trip_and_tokenizer_folder(files, tmp_path):
    spm = parse_model_proto(tiny_spiece_model())
    assert serialize_model_proto(spm) == tiny_spiece_model()
    assert spm.pieces[:3] == [("<pad>", 0.0, 3), ("</s>", 0.0, 3), ("<unk>", 0.0, 2)] and spm.unk_id == 2
    assert spm.precompiled_charsmap and spm.add_dummy_prefix
    # a text encoder without an embedded tokenizer: refused with what to give, loaded with a tokenizer folder
    paths, twin = files["2.1"]
    with safe_open(str(paths["text_encoder"]), "pt") as f:
        bare = {k: f.get_tensor(k) for k in f.keys() if k != "spiece_model"}
    te = tmp_path / "umt5_no_tokenizer.safetensors"
    save_file(bare, str(te))
    with pytest.raises(ModelLoadError, match=r"umt5_no_tokenizer\.safetensors carries no tokenizer.*tokenizer="):
        load_video_model(paths["diffusion_model"], text_encoder=te, vae=paths["vae"], device="cpu")
    model = load_video_model(paths["diffusion_model"], text_encoder=te, vae=paths["vae"], device="cpu",
                             tokenizer=twin / "tokenizer")
    assert model.tokenizer(PROMPTS[1]).input_ids == _load(paths).tokenizer(PROMPTS[1]).input_ids


# --------------------------------------------------------------------------------------------- ComfyUI's classes
def _comfy_tiny_wan(comfy, in_dim=16, device="meta"):
    return comfy["WanModel"](model_type="t2v", dim=256, ffn_dim=64, num_heads=2, num_layers=2, in_dim=in_dim,
                             out_dim=in_dim, text_dim=32, freq_dim=256, operations=comfy["ops"], device=device,
                             dtype=torch.float32)


def _comfy_umt5(comfy, **config):
    import json

    cfg = json.loads(comfy["umt5_config"].read_text())
    cfg.update(config)
    with torch.device("meta"):
        return comfy["T5"](cfg, torch.float32, "meta", comfy["ops"])


@pytest.mark.parametrize("name", ["2.1", "2.2-5b"])
def test_tiny_files_have_comfyui_names_and_shapes(files, comfy, name):
    paths, _ = files[name]
    in_dim = 48 if name == "2.2-5b" else 16
    with torch.device("meta"):
        wan = _comfy_tiny_wan(comfy, in_dim)
        vae = (comfy["VAE22"](dim=8, dec_dim=16, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                              temperal_downsample=[False, True, True]) if name == "2.2-5b" else
               comfy["VAE21"](dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                              temperal_downsample=[False, True, True]))
    assert _file_shapes(paths["diffusion_model"], "model.diffusion_model.") == _shapes(wan.state_dict())
    assert _file_shapes(paths["vae"]) == _shapes(vae.state_dict())
    umt5 = _comfy_umt5(comfy, vocab_size=143, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    te = _file_shapes(paths["text_encoder"])
    assert te.pop("spiece_model") == (len(tiny_spiece_model()),)
    assert te == _shapes(umt5.state_dict())


def test_comfyui_wanmodel_predicts_what_motionkit_predicts(files, comfy):
    """The strongest proof of the conversion: ComfyUI's own Wan forward on the file's weights."""
    paths, _ = files["2.1"]
    model = _load(paths)
    wan = _comfy_tiny_wan(comfy, device="cpu")
    state = single_file.read_state_dict(paths["diffusion_model"], prefix="model.diffusion_model.")
    wan.load_state_dict(state, strict=True)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, 16, 3, 4, 6, generator=g)
    context = model.encode_prompt(PROMPTS[0])
    t = torch.tensor([700.0])
    with torch.no_grad():
        theirs = wan(z, t, context)
    torch.testing.assert_close(model.predict(z, t, context), theirs, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------- real sizes, meta
REAL_WAN = {"wan2.1_t2v_1.3b_transformer": dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, in_dim=16),
            "wan2.1_t2v_14b_transformer": dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=16),
            "wan2.2_t2v_a14b_transformer": dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=16),
            "wan2.2_ti2v_5b_transformer": dict(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_dim=48)}


@pytest.mark.parametrize("config_name", sorted(REAL_WAN))
def test_real_wan_keys_map_both_ways(comfy, config_name):
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    arch = REAL_WAN[config_name]
    with torch.device("meta"):
        wan = comfy["WanModel"](model_type="t2v", out_dim=arch["in_dim"], operations=comfy["ops"], device="meta", **arch)
    comfy_state = {"model.diffusion_model." + k: v for k, v in wan.state_dict().items()}
    kind = single_file.identify(_header(comfy_state))
    config = wan_files.wan_transformer_config_from_header(_header(comfy_state), kind.prefix, config_name)
    shipped = single_file.shipped_config(config_name)
    shipped.pop("_class_name")
    assert config == shipped  # the shapes give back the shipped (published) config
    with torch.device("meta"):
        diffusers_model = WanTransformer3DModel.from_config(config)
    converted = convert_wan_transformer_to_diffusers({k[len("model.diffusion_model."):]: v
                                                      for k, v in comfy_state.items()})
    assert _shapes(converted) == _shapes(diffusers_model.state_dict())


def test_real_umt5_xxl_keys_map_both_ways(comfy):
    from transformers import UMT5Config, UMT5EncoderModel

    state = _comfy_umt5(comfy).state_dict()
    config = wan_files.umt5_config_from_header(_header(state))
    assert config == single_file.shipped_config("umt5_xxl")
    with torch.device("meta"):
        encoder = UMT5EncoderModel(UMT5Config(**config))
    expected = _shapes(encoder.state_dict())
    assert expected.pop("encoder.embed_tokens.weight") == (256384, 4096)  # tied to shared.weight
    assert _shapes(state) == expected


@pytest.mark.parametrize("variant", ["wan2.1-vae", "wan2.2-vae"])
def test_real_wan_vae_keys_map_both_ways(comfy, variant):
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    with torch.device("meta"):
        vae = (comfy["VAE22"](dim=160, dec_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                              temperal_downsample=[False, True, True]) if variant == "wan2.2-vae" else
               comfy["VAE21"](dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                              temperal_downsample=[False, True, True]))
    state = vae.state_dict()
    kind = single_file.identify(_header(state))
    assert (kind.family, kind.role, kind.variant) == ("wan", "vae", variant)
    config = wan_files.wan_vae_config_from_header(_header(state), "", variant)
    shipped = single_file.shipped_config(variant.replace("-", "_"))
    shipped.pop("_class_name")
    assert config == shipped
    with torch.device("meta"):
        diffusers_vae = AutoencoderKLWan.from_config(config)
    convert = wan_files.convert_wan22_vae_to_diffusers if variant == "wan2.2-vae" else convert_wan_vae_to_diffusers
    assert _shapes(convert(dict(state))) == _shapes(diffusers_vae.state_dict())


# --------------------------------------------------------------------------------------------- bad input
def _synthetic(path: Path, names: dict[str, tuple[int, ...]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.zeros(shape) for k, shape in names.items()}, str(path))
    return path


@pytest.fixture()
def no_weights_read(monkeypatch):
    """Fails a test if any weights are read (errors must come from headers, before loading)."""
    def refuse(*args, **kwargs):
        raise AssertionError("weights were read before the inputs were checked")

    monkeypatch.setattr(wan_files, "load_wan_transformer_file", refuse)
    monkeypatch.setattr(wan_files, "load_umt5_file", refuse)
    monkeypatch.setattr(wan_files, "load_wan_vae_file", refuse)


OTHER_DIFFUSION = {
    "flux1-dev.safetensors": ({"double_blocks.0.img_attn.qkv.weight": (3, 2)}, "Flux"),
    "hunyuan_video_t2v_720p_bf16.safetensors": ({"double_blocks.0.img_attn.qkv.weight": (3, 2),
                                                  "txt_in.individual_token_refiner.blocks.0.norm1.weight": (2,)},
                                                 "HunyuanVideo"),
    "ltx-video-2b-v0.9.safetensors": ({"adaln_single.linear.weight": (2, 2)}, "LTX"),
    "sd_xl_base_1.0.safetensors": ({"conditioner.embedders.0.transformer.text_model.embeddings.position_ids": (1, 2)},
                                   "SDXL"),
}


@pytest.mark.parametrize("file_name", sorted(OTHER_DIFFUSION))
def test_diffusion_file_of_another_family(tmp_path, files, file_name, no_weights_read):
    names, family = OTHER_DIFFUSION[file_name]
    path = _synthetic(tmp_path / file_name, names)
    paths, _ = files["2.1"]
    with pytest.raises(ModelLoadError, match=rf"{file_name}.*{family}.*Wan diffusion model"):
        load_video_model(path, text_encoder=paths["text_encoder"], vae=paths["vae"], device="cpu")


OTHER_TEXT = {
    "t5xxl_fp16.safetensors": ({"encoder.block.0.layer.0.SelfAttention.q.weight": (4, 4),
                                "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (32, 2),
                                "encoder.block.1.layer.0.SelfAttention.q.weight": (4, 4), "shared.weight": (32128, 1)},
                               "t5.*Flux"),
    "clip_l.safetensors": ({"text_model.encoder.layers.0.self_attn.q_proj.weight": (4, 4)}, "CLIP"),
    "qwen_2.5_vl_7b.safetensors": ({"model.layers.0.self_attn.q_proj.weight": (4, 4)}, "LLM"),
}


@pytest.mark.parametrize("file_name", sorted(OTHER_TEXT))
def test_text_encoder_not_umt5(tmp_path, files, file_name, no_weights_read):
    names, what = OTHER_TEXT[file_name]
    te = _synthetic(tmp_path / file_name, names)
    paths, _ = files["2.1"]
    with pytest.raises(ModelLoadError, match=rf"{file_name} is .*{what}.*umt5-xxl \(umt5_xxl_fp16"):
        load_video_model(paths["diffusion_model"], text_encoder=te, vae=paths["vae"], device="cpu")


def test_vae_of_another_family_or_generation(tmp_path, files, no_weights_read):
    paths, _ = files["2.1"]
    paths_5b, _ = files["2.2-5b"]
    sd_vae = _synthetic(tmp_path / "vae-ft-mse-840000.safetensors",
                        {"encoder.conv_in.weight": (8, 3, 3, 3), "decoder.conv_in.weight": (8, 4, 3, 3)})
    flux_vae = _synthetic(tmp_path / "ae.safetensors",
                          {"encoder.conv_in.weight": (8, 3, 3, 3), "decoder.conv_in.weight": (8, 16, 3, 3)})
    cases = [(paths, sd_vae, r"vae-ft-mse-840000\.safetensors is a sd-vae VAE, not a Wan VAE.*wan_2\.1_vae"),
             (paths, flux_vae, r"ae\.safetensors is a vae with 16 latent channels.*not a Wan VAE.*wan_2\.1_vae"),
             (paths_5b, paths["vae"], r"wan_2\.1_vae_tiny\.safetensors is the Wan 2\.1 VAE; Wan 2\.2 TI2V 5B uses the "
                                      r"Wan 2\.2 VAE \(wan2\.2_vae\.safetensors"),
             (paths, paths_5b["vae"], r"wan2\.2_vae_tiny\.safetensors is the Wan 2\.2 VAE; Wan 2\.1 T2V 1\.3B uses "
                                      r"the Wan 2\.1 VAE")]
    for model_paths, vae, message in cases:
        with pytest.raises(ModelLoadError, match=message):
            load_video_model(model_paths["diffusion_model"], text_encoder=paths["text_encoder"], vae=vae,
                             device="cpu")


def test_a14b_expert_alone_or_swapped(files, no_weights_read):
    paths, _ = files["2.2-a14b"]
    common = dict(text_encoder=paths["text_encoder"], vae=paths["vae"], device="cpu")
    with pytest.raises(ModelLoadError, match=r"wan2\.2_t2v_high_noise_tiny_fp32\.safetensors is the high-noise expert"
                                             r".*wan2\.2_t2v_low_noise_tiny_fp32\.safetensors.*low_noise_model"):
        load_video_model(paths["diffusion_model"], **common)
    with pytest.raises(ModelLoadError, match=r"low_noise_tiny_fp32\.safetensors is the low-noise expert.*high-noise"):
        load_video_model(paths["low_noise_model"], **common)
    with pytest.raises(ModelLoadError, match=r"swap"):
        load_video_model(paths["low_noise_model"], low_noise_model=paths["diffusion_model"], **common)
    other, _ = files["2.2-5b"]
    with pytest.raises(ModelLoadError, match=r"is not the partner of wan2\.2_t2v_high_noise"):
        load_video_model(paths["diffusion_model"], low_noise_model=other["diffusion_model"], **common)


def test_missing_companions_and_truncated_file(tmp_path, files, no_weights_read):
    paths, _ = files["2.1"]
    with pytest.raises(ModelLoadError, match=r"wan2\.1_t2v_tiny_fp32\.safetensors \(Wan 2\.1 T2V 1\.3B\) needs its "
                                             r"text encoder.*umt5_xxl_fp16"):
        load_video_model(paths["diffusion_model"], text_encoder=None, vae=paths["vae"], device="cpu")
    with pytest.raises(ModelLoadError, match=r"needs its VAE.*wan_2\.1_vae\.safetensors"):
        load_video_model(paths["diffusion_model"], text_encoder=paths["text_encoder"], vae=None, device="cpu")
    cut = tmp_path / "wan2.1_t2v_1.3B_fp16.safetensors"
    data = Path(paths["diffusion_model"]).read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"wan2\.1_t2v_1\.3B_fp16\.safetensors is truncated"):
        load_video_model(cut, text_encoder=paths["text_encoder"], vae=paths["vae"], device="cpu")
    te_cut = tmp_path / "umt5_xxl_fp16.safetensors"
    data = Path(paths["text_encoder"]).read_bytes()
    te_cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelLoadError, match=r"umt5_xxl_fp16\.safetensors is truncated"):
        load_video_model(paths["diffusion_model"], text_encoder=te_cut, vae=paths["vae"], device="cpu")


def test_file_that_does_not_fit_its_architecture(tmp_path, files):
    """A damaged file (a tensor dropped) loads nothing: the loader names what is missing."""
    paths, _ = files["2.1"]
    with safe_open(str(paths["diffusion_model"]), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys() if not k.endswith("blocks.1.ffn.2.weight")}
    broken = tmp_path / "wan_broken.safetensors"
    save_file(state, str(broken))
    with pytest.raises(ModelLoadError, match=r"wan_broken\.safetensors does not fit a Wan transformer.*"
                                             r"blocks\.1\.ffn\.net\.2\.weight"):
        load_video_model(broken, text_encoder=paths["text_encoder"], vae=paths["vae"], device="cpu")


def test_sampling_end_to_end_from_files(files):
    """The sampler runs on a file-loaded Wan (shipped UniPC flow scheduler) and decodes through the file's VAE."""
    from motion_core.sampling import SampleRequest, sample

    model = _load(files["2.1"][0])
    base = dict(prompt="a red square moving right", steps=2, cfg=2.0, width=32, height=32, num_frames=5, seed=1)
    for scheduler in ("ddim", "unipc"):
        result = sample(model, SampleRequest(scheduler=scheduler, **base))
        assert result.frames.shape == (1, 5, 32, 32, 3) and torch.isfinite(result.frames).all()
