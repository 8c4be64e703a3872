"""Model families: tiny models round-trip through the real loader; layer discovery on tiny models and on
the real configs (meta device); single-frame mode; encoders; errors users can cause."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter

import pytest
import torch
from torch import nn

from motion_core.backbones import (
    FAMILIES,
    AnimateDiffVideoModel,
    LayerRef,
    UNet3DVideoModel,
    VideoModel,
    detect_family,
    load_video_model,
    register_family,
)
from motion_core.backbones.animatediff import animatediff_layers
from motion_core.backbones.unet3d import unet3d_layers
from motion_core.errors import InputError, ModelLoadError
from motion_core.tiny import TINY_MODEL_MAX_LENGTH, TINY_VOCAB_SIZE, ensure_tiny_model, write_tiny_clip_tokenizer

KINDS = ("temporal_attention", "spatial_self_attention", "cross_attention", "feed_forward")


def _kind_counts(refs: list[LayerRef]) -> dict[str, int]:
    counts = Counter(r.kind for r in refs)
    return {k: counts.get(k, 0) for k in KINDS}


def _latents(model: VideoModel, frames: int, size: int = 64, batch: int = 1, seed: int = 0) -> torch.Tensor:
    shape = model.latent_shape(batch, frames, size, size)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ================================================================================== tiny models + loading
def test_tiny_clip_tokenizer(tmp_path):
    tokenizer = write_tiny_clip_tokenizer(tmp_path / "tok")
    assert len(tokenizer) == TINY_VOCAB_SIZE
    assert tokenizer.model_max_length == TINY_MODEL_MAX_LENGTH
    ids = tokenizer("the cat").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["<|startoftext|>", "the</w>", "cat</w>", "<|endoftext|>"]


def test_unet3d_folder_round_trip(tiny_unet3d_path, unet3d_model):
    index = json.loads((tiny_unet3d_path / "model_index.json").read_text())
    assert index["_class_name"] == "TextToVideoSDPipeline"
    for component in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_unet3d_path / component).is_dir()
    assert list((tiny_unet3d_path / "unet").glob("*.safetensors"))
    assert detect_family(tiny_unet3d_path) == "unet3d"

    model = unet3d_model
    assert isinstance(model, UNet3DVideoModel) and model.family == "unet3d"
    assert len(model.tokenizer) == TINY_VOCAB_SIZE
    assert sum(p.numel() for p in model.denoiser.parameters()) == 1_328_900  # spec section 6.3
    assert not any(p.requires_grad for p in model.parameters())
    assert not any(m.training for m in model.modules())
    assert model.prediction_type == "epsilon"
    cfg = model.scheduler.config
    assert (cfg.beta_schedule, cfg.beta_start, cfg.beta_end, cfg.steps_offset, cfg.set_alpha_to_one,
            cfg.clip_sample) == ("scaled_linear", 0.00085, 0.012, 1, False, False)
    assert model.vae.config.scaling_factor == pytest.approx(0.18215)
    assert model.vae_scale_factor == 4 and model.size_multiple == 4
    assert model.default_size == (64, 64) and model.latent_channels == 4
    info = model.describe()
    assert info["family"] == "unet3d" and info["temporal_attention_layers"] == 10
    json.dumps(info)


def test_animatediff_folders_round_trip(tiny_animatediff_paths, animatediff_model):
    paths = tiny_animatediff_paths
    assert json.loads((paths.pipeline / "model_index.json").read_text())["_class_name"] == "AnimateDiffPipeline"
    sd_index = json.loads((paths.sd15 / "model_index.json").read_text())
    assert sd_index["_class_name"] == "StableDiffusionPipeline" and sd_index["safety_checker"] == [None, None]
    assert (paths.motion_adapter / "config.json").is_file()
    assert list(paths.motion_adapter.glob("*.safetensors"))

    assert detect_family(paths.pipeline) == "animatediff"
    assert detect_family(paths.sd15, motion_adapter=paths.motion_adapter) == "animatediff"
    model = animatediff_model
    assert isinstance(model, AnimateDiffVideoModel)
    assert len(model.tokenizer) == TINY_VOCAB_SIZE
    assert model.frame_limits.maximum == 32 and model.frame_limits.default == 16
    assert model.size_multiple == 4 and model.default_size == (64, 64)
    assert not any(p.requires_grad for p in model.parameters())

    # SD folder + separate adapter == combined pipeline folder (same weights, same output)
    separate = load_video_model(paths.sd15, motion_adapter=paths.motion_adapter, device="cpu")
    assert separate.base_model == "sd15+motion_adapter"
    z = _latents(model, 4)
    emb = model.encode_prompt("the cat")
    with torch.no_grad():
        torch.testing.assert_close(separate.predict(z, 500, emb), model.predict(z, 500, emb))


def test_tiny_folders_load_in_diffusers(tiny_unet3d_path, tiny_animatediff_paths):
    """The folders are real diffusers layouts (what users could also open with diffusers itself)."""
    from diffusers import AnimateDiffPipeline, StableDiffusionPipeline, TextToVideoSDPipeline

    TextToVideoSDPipeline.from_pretrained(tiny_unet3d_path)
    AnimateDiffPipeline.from_pretrained(tiny_animatediff_paths.pipeline)
    StableDiffusionPipeline.from_pretrained(tiny_animatediff_paths.sd15, safety_checker=None)


def test_ensure_tiny_model_caches_and_is_deterministic(tmp_path, tiny_unet3d_path):
    from safetensors.torch import load_file

    first = ensure_tiny_model("unet3d", tmp_path)
    marker = next(tmp_path.glob("*/motionkit_tiny.json"))
    stamp = marker.stat().st_mtime_ns
    assert ensure_tiny_model("unet3d", tmp_path) == first
    assert marker.stat().st_mtime_ns == stamp
    assert detect_family(first) == "unet3d"
    a = load_file(next((first / "unet").glob("*.safetensors")))
    b = load_file(next((tiny_unet3d_path / "unet").glob("*.safetensors")))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no staging folder left behind


# ================================================================================== layer discovery (tiny)
def test_unet3d_layers_tiny(unet3d_model):
    model = unet3d_model
    refs = model.layers()
    names = [n for n, _ in model.denoiser.named_modules()]
    assert [r.name for r in refs] == sorted((r.name for r in refs), key=names.index)  # named_modules order
    # temporal transformers: transformer_in, down_blocks.0, mid_block, up_blocks.1 x2 -> 5; spatial: 4
    assert _kind_counts(refs) == {"temporal_attention": 10, "spatial_self_attention": 4, "cross_attention": 4,
                                  "feed_forward": 9}
    assert len({r.transformer for r in refs if r.temporal}) == 5
    assert len({r.transformer for r in refs if not r.temporal}) == 4
    first = refs[0]
    assert (first.name, first.block, first.transformer, first.kind, first.temporal) == (
        "transformer_in.transformer_blocks.0.attn1", "transformer_in", "transformer_in", "temporal_attention", True)
    assert first.module is model.denoiser.get_submodule(first.name)
    down = [r for r in model.temporal_attention_layers() if r.block == "down_blocks.0"]
    assert [r.name for r in down] == ["down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1",
                                      "down_blocks.0.temp_attentions.0.transformer_blocks.0.attn2"]
    cross = model.cross_attention_layers()
    assert all(".attentions." in r.name and r.name.endswith("attn2") and not r.temporal for r in cross)
    assert all(r.module.is_cross_attention for r in cross)
    assert not any(r.module.is_cross_attention for r in model.temporal_attention_layers())
    assert len(model.feed_forward_layers(temporal=True)) == 5 and len(model.feed_forward_layers(temporal=False)) == 4
    # temporal modules: 5 temporal transformers + 8 temporal convolutions
    kinds = Counter(type(m).__name__ for _, m in model.temporal_modules())
    assert kinds == {"TransformerTemporalModel": 5, "TemporalConvLayer": 8}
    with pytest.raises(InputError):
        model.layers("bogus")


def test_animatediff_layers_tiny(animatediff_model, tiny_animatediff4_paths):
    refs = animatediff_model.layers()
    # motion modules: down 2x1 + up 2x2 + mid 1 = 7 -> 14 temporal attention layers
    assert _kind_counts(refs) == {"temporal_attention": 14, "spatial_self_attention": 4, "cross_attention": 4,
                                  "feed_forward": 11}
    assert len(animatediff_model.temporal_modules()) == 7
    assert all(".motion_modules." in r.transformer for r in refs if r.temporal)
    assert [r.name for r in animatediff_model.temporal_attention_layers() if r.block == "mid_block"] == [
        "mid_block.motion_modules.0.transformer_blocks.0.attn1",
        "mid_block.motion_modules.0.transformer_blocks.0.attn2"]

    four = load_video_model(tiny_animatediff4_paths.pipeline, device="cpu")
    temporal = four.temporal_attention_layers()
    assert len(four.temporal_modules()) == 4 * 2 + 4 * 3 == 20 and len(temporal) == 40
    up1 = [r.name for r in temporal if r.block == "up_blocks.1"]
    assert up1 == [f"up_blocks.1.motion_modules.{i}.transformer_blocks.0.attn{j}" for i in range(3) for j in (1, 2)]
    assert not any(r.block == "mid_block" for r in temporal)
    assert four.size_multiple == 4


# ================================================================================== real configs on meta
def _zeroscope_unet_on_meta():
    from diffusers import UNet3DConditionModel

    with torch.device("meta"):
        return UNet3DConditionModel(
            block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=64,
            cross_attention_dim=1024,
            down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
            up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
        )


def test_zeroscope_config_on_meta():
    unet = _zeroscope_unet_on_meta()
    assert next(unet.parameters()).is_meta
    assert sum(p.numel() for p in unet.parameters()) == 1_411_233_860  # spec section 0.1 / 6.1
    refs = unet3d_layers(unet)
    assert _kind_counts(refs) == {"temporal_attention": 34, "spatial_self_attention": 16, "cross_attention": 16,
                                  "feed_forward": 33}
    assert len({r.transformer for r in refs if r.temporal}) == 17
    assert len({r.transformer for r in refs if not r.temporal}) == 16
    # registration order: mid_block comes after up_blocks (spec section 0.1)
    blocks = list(dict.fromkeys(r.block for r in refs))
    assert blocks == ["transformer_in", "down_blocks.0", "down_blocks.1", "down_blocks.2", "up_blocks.1",
                      "up_blocks.2", "up_blocks.3", "mid_block"]
    # the same through the VideoModel (no weights needed for discovery)
    model = UNet3DVideoModel(denoiser=unet, vae=nn.Identity(), text_encoder=nn.Identity(), tokenizer=None,
                             scheduler=None, base_model="cerspense/zeroscope_v2_576w")
    expected = [r.name for r in refs if r.kind == "temporal_attention"]
    assert [r.name for r in model.temporal_attention_layers()] == expected
    kinds = Counter(type(m).__name__ for _, m in model.temporal_modules())
    assert kinds == {"TransformerTemporalModel": 17, "TemporalConvLayer": 3 * 2 + 2 + 2 + 4 * 3}
    assert model.default_size == (576, 320)


@pytest.mark.parametrize("version,mid", [("v2", True), ("v3", False)])
def test_animatediff_config_on_meta(version, mid):
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    channels, layers = (320, 640, 1280, 1280), 2
    with torch.device("meta"):
        unet2d = UNet2DConditionModel(block_out_channels=channels, layers_per_block=layers, cross_attention_dim=768,
                                      attention_head_dim=8, sample_size=64)
        adapter = MotionAdapter(block_out_channels=channels, motion_layers_per_block=layers,
                                use_motion_mid_block=mid)
        unet = UNetMotionModel.from_unet2d(unet2d, adapter, load_weights=False)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(unet2d) == 859_520_964  # SD1.5 UNet
    assert count(unet) == count(unet2d) + count(adapter)  # the motion UNet = SD UNet + motion modules
    # down: layers per block, up: layers+1 per block, mid: 1 if the adapter has a mid-block module
    expected_modules = len(channels) * layers + len(channels) * (layers + 1) + int(mid)
    assert expected_modules == (21 if mid else 20)
    refs = animatediff_layers(unet)
    counts = _kind_counts(refs)
    assert counts == {"temporal_attention": 2 * expected_modules, "spatial_self_attention": 16,
                      "cross_attention": 16, "feed_forward": expected_modules + 16}
    assert len({r.transformer for r in refs if r.temporal}) == expected_modules
    up1 = [r for r in refs if r.block == "up_blocks.1" and r.kind == "temporal_attention"]
    assert len(up1) == 6
    model = AnimateDiffVideoModel(denoiser=unet, vae=nn.Identity(), text_encoder=nn.Identity(), tokenizer=None,
                                  scheduler=None, base_model=f"sd15+{version}")
    assert len(model.temporal_modules()) == expected_modules
    assert model.frame_limits.maximum == 32


# ================================================================================== single-frame mode
def _perturb_temporal(model: VideoModel) -> None:
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for _, module in model.temporal_modules():
            for p in module.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("family", ["unet3d", "animatediff"])
def test_single_frame_mode_ignores_temporal_weights(family, tiny_unet3d_path, tiny_animatediff_paths):
    path = tiny_unet3d_path if family == "unet3d" else tiny_animatediff_paths.pipeline
    model = load_video_model(path, device="cpu")  # own copy: its weights get perturbed
    z = _latents(model, 1)
    emb = model.encode_prompt("the cat")
    with torch.no_grad():
        with model.single_frame_mode():
            bypassed = model.predict(z, 300, emb)
        plain = model.predict(z, 300, emb)
        _perturb_temporal(model)
        with model.single_frame_mode():
            bypassed_after = model.predict(z, 300, emb)
        plain_after = model.predict(z, 300, emb)
    assert torch.equal(bypassed, bypassed_after)  # a pure image model: temporal weights play no part
    assert (plain - plain_after).abs().max() > 1e-3  # stock diffusers runs temporal modules at F == 1
    assert (bypassed - plain).abs().max() > 1e-3


def test_single_frame_mode_is_the_sd_image_unet(animatediff_model, tiny_animatediff_paths):
    from diffusers import UNet2DConditionModel

    unet2d = UNet2DConditionModel.from_pretrained(tiny_animatediff_paths.sd15, subfolder="unet").eval()
    z = _latents(animatediff_model, 1)
    emb = animatediff_model.encode_prompt("a dog running")
    with torch.no_grad():
        with animatediff_model.single_frame_mode():
            video = animatediff_model.predict(z, 700, emb)
        image = unet2d(z[:, :, 0], 700, encoder_hidden_states=emb).sample
    torch.testing.assert_close(video[:, :, 0], image, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fixture", ["unet3d_model", "animatediff_model"])
def test_single_frame_mode_treats_frames_independently(fixture, request):
    model = request.getfixturevalue(fixture)
    z = _latents(model, 3)
    emb = model.encode_prompt("the cat")
    with torch.no_grad(), model.single_frame_mode():
        together = model.predict(z, 500, emb)
        alone = model.predict(z[:, :, 1:2], 500, emb)
    torch.testing.assert_close(together[:, :, 1:2], alone, rtol=1e-5, atol=1e-5)


def test_single_frame_mode_restores_on_exit_and_error(unet3d_model):
    modules = [m for _, m in unet3d_model.temporal_modules()]
    with unet3d_model.single_frame_mode():
        assert all("forward" in vars(m) for m in modules)
    assert not any("forward" in vars(m) for m in modules)
    with pytest.raises(RuntimeError, match="boom"):
        with unet3d_model.single_frame_mode():
            raise RuntimeError("boom")
    assert not any("forward" in vars(m) for m in modules)
    # a forward wrapper installed before (e.g. by accelerate) comes back
    sentinel = modules[0].forward
    modules[0].forward = sentinel
    try:
        with unet3d_model.single_frame_mode():
            assert modules[0].forward is not sentinel
        assert modules[0].forward is sentinel
    finally:
        del modules[0].forward


def test_temporal_transformer_identity_honours_return_dict(unet3d_model):
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModelOutput

    module = unet3d_model.denoiser.transformer_in
    x = torch.randn(2, 32, 4, 4)
    with unet3d_model.single_frame_mode():
        assert module(x, num_frames=2, return_dict=False)[0] is x
        out = module(x, num_frames=2)
        assert isinstance(out, TransformerTemporalModelOutput) and out.sample is x
        conv = dict(unet3d_model.temporal_modules())["down_blocks.0.temp_convs.0"]
        assert conv(x, num_frames=2) is x


# ================================================================================== encoders + predict
def test_encode_prompt(unet3d_model, caplog):
    with caplog.at_level(logging.WARNING, logger="motion_core"):
        emb = unet3d_model.encode_prompt(["the cat", "a dog"])
    assert emb.shape == (2, TINY_MODEL_MAX_LENGTH, 32)
    assert not caplog.records
    assert unet3d_model.encode_prompt("the cat").shape == (1, TINY_MODEL_MAX_LENGTH, 32)
    with pytest.raises(InputError):
        unet3d_model.encode_prompt([])


def test_prompt_truncation_warns(unet3d_model, caplog):
    prompt = "the cat " * 60
    total = len(unet3d_model.tokenizer(prompt, verbose=False).input_ids)
    with caplog.at_level(logging.WARNING, logger="motion_core"):
        emb = unet3d_model.encode_prompt(["a dog", prompt])
    assert emb.shape[1] == TINY_MODEL_MAX_LENGTH
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert f"last {total - TINY_MODEL_MAX_LENGTH} token(s) were dropped" in messages[0]
    assert "Prompt 1" in messages[0]


@pytest.mark.parametrize("fixture", ["unet3d_model", "animatediff_model"])
def test_encode_decode_video(fixture, request):
    model = request.getfixturevalue(fixture)
    frames = torch.rand(2, 5, 64, 48, 3)
    z = model.encode_video(frames, generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, 4, 5, 16, 12) and z.dtype == torch.float32
    again = model.encode_video(frames, generator=torch.Generator().manual_seed(0))
    assert torch.equal(z, again)
    mean = model.encode_video(frames, sample=False)
    assert not torch.equal(z, mean)
    one_clip = model.encode_video(frames[0], sample=False)
    assert one_clip.shape == (1, 4, 5, 16, 12)
    torch.testing.assert_close(one_clip[0], mean[0], rtol=1e-4, atol=1e-5)
    model.vae_slicing = True
    try:
        sliced = model.encode_video(frames, generator=torch.Generator().manual_seed(0))
        decoded_sliced = model.decode_latents(z)
    finally:
        model.vae_slicing = False
    torch.testing.assert_close(sliced, z, rtol=1e-4, atol=1e-5)
    decoded = model.decode_latents(z)
    assert decoded.shape == (2, 5, 64, 48, 3) and decoded.dtype == torch.float32
    assert decoded.device.type == "cpu" and 0.0 <= decoded.min() and decoded.max() <= 1.0
    torch.testing.assert_close(decoded_sliced, decoded, rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError):
        model.encode_video(torch.rand(5, 62, 64, 3))  # not a multiple of the VAE factor
    with pytest.raises(InputError):
        model.encode_video(torch.rand(5, 3, 64, 64))  # channels first
    with pytest.raises(InputError):
        model.decode_latents(torch.randn(1, 4, 16, 16))


@pytest.mark.parametrize("fixture", ["unet3d_model", "animatediff_model"])
def test_predict(fixture, request):
    model = request.getfixturevalue(fixture)
    z = _latents(model, 4, batch=2)
    emb = model.encode_prompt(["the cat", "a dog"])
    with torch.no_grad():
        out = model.predict(z, torch.tensor(999), emb)
        assert out.shape == z.shape and out.dtype == z.dtype
        torch.testing.assert_close(model.predict(z, torch.tensor([999, 999]), emb), out)
        broadcast = model.predict(z, 999, emb[:1])  # one prompt for the whole batch
        torch.testing.assert_close(broadcast[:1], out[:1])
        half = model.predict(z.double(), 999, emb)
        assert half.dtype == torch.float64
        # family-specific conditioning is passed through (ControlNet-style residuals)
        b, _, f, h, w = z.shape
        mid_channels = model.denoiser.config.block_out_channels[-1]
        downs = len(model.denoiser.config.block_out_channels) - 1
        zero = torch.zeros(b * f, mid_channels, h // 2 ** downs, w // 2 ** downs)
        torch.testing.assert_close(model.predict(z, 999, emb, mid_block_additional_residual=zero), out)
        assert (model.predict(z, 999, emb, mid_block_additional_residual=zero + 1) - out).abs().max() > 1e-4
    with pytest.raises(InputError):
        model.predict(z, 999, torch.cat([emb, emb, emb]))
    with pytest.raises(TypeError):
        model.predict(z, 999, emb, bogus=1)


def test_size_and_frame_limits(unet3d_model, animatediff_model):
    assert unet3d_model.latent_shape(1, 8, 64, 64) == (1, 4, 8, 16, 16)
    unet3d_model.check_size(60, 68)  # odd latent sides are fine: the UNet passes upsample sizes itself
    with pytest.raises(InputError, match="multiples of 4"):
        unet3d_model.check_size(62, 64)
    with pytest.raises(InputError):
        unet3d_model.latent_shape(1, 8, 0, 64)
    with pytest.raises(InputError):
        unet3d_model.frame_limits.check(0)
    with pytest.raises(InputError):
        unet3d_model.frame_limits.check(65)
    unet3d_model.frame_limits.check(64)
    animatediff_model.frame_limits.check(32)
    with pytest.raises(InputError, match="1..32"):
        animatediff_model.latent_shape(1, 33, 64, 64)


def test_bf16_on_cpu(tiny_unet3d_path):
    model = load_video_model(tiny_unet3d_path, dtype="bf16", device="cpu")
    assert model.dtype == torch.bfloat16
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    emb = model.encode_prompt("the cat")
    z = model.encode_video(torch.rand(2, 32, 32, 3))
    assert z.dtype == torch.bfloat16 and z.shape == (1, 4, 2, 8, 8)
    with torch.no_grad():
        out = model.predict(z.float(), 500, emb)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert model.decode_latents(z).dtype == torch.float32


def test_fp16_on_cpu_falls_back_to_fp32(tiny_unet3d_path):
    with pytest.warns(UserWarning, match="fp16"):
        model = load_video_model(tiny_unet3d_path, dtype="fp16", device="cpu")
    assert model.dtype == torch.float32 and next(model.denoiser.parameters()).dtype == torch.float32
    with pytest.raises(ModelLoadError, match="dtype"):
        load_video_model(tiny_unet3d_path, dtype="int8", device="cpu")


# ================================================================================== errors
def test_incomplete_folder_names_missing_component(tiny_unet3d_path, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_unet3d_path, broken)
    shutil.rmtree(broken / "vae")
    (broken / "tokenizer" / "merges.txt").unlink()
    with pytest.raises(ModelLoadError) as err:
        load_video_model(broken, device="cpu")
    assert f"vae/ is missing from {broken}" in str(err.value)
    assert "tokenizer/" in str(err.value)


def test_unknown_family_lists_supported(tmp_path):
    folder = tmp_path / "flux"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]}))
    (folder / "transformer" / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel"}))
    with pytest.raises(ModelLoadError, match="supported families: animatediff, unet3d"):
        load_video_model(folder, device="cpu")
    with pytest.raises(ModelLoadError, match="FluxPipeline"):
        detect_family(folder)
    with pytest.raises(ModelLoadError, match="unknown model family 'bogus'"):
        load_video_model(folder, family="bogus", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_video_model(tmp_path / "empty", device="cpu")


def test_sd_folder_without_motion_adapter(tiny_animatediff_paths):
    with pytest.raises(ModelLoadError, match="motion adapter"):
        detect_family(tiny_animatediff_paths.sd15)
    with pytest.raises(ModelLoadError, match="motion adapter"):
        load_video_model(tiny_animatediff_paths.sd15, device="cpu")
    with pytest.raises(ModelLoadError, match="motion adapter folder not found"):
        load_video_model(tiny_animatediff_paths.sd15, motion_adapter="/nonexistent/adapter", device="cpu")


def test_missing_sources_fail_fast(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_video_model(tmp_path / "nope", device="cpu")
    # a hub id that is not cached, offline: a clear error, no network wait
    with pytest.raises(ModelLoadError, match="offline"):
        load_video_model("motionkit-tests/not-a-cached-model", device="cpu")
    with pytest.raises(ModelLoadError, match="offline"):
        load_video_model("motionkit-tests/not-a-cached-model", device="cpu", local_files_only=True)
    with pytest.raises(ModelLoadError, match="device"):
        load_video_model(tmp_path, device="tpu-ish")


def test_register_family_plugs_in(tmp_path, tiny_unet3d_path):
    class DummyVideoModel(UNet3DVideoModel):
        family = "dummy"

    def detect(info):
        return info.pipeline_class == "DummyVideoPipeline"

    def load(request):
        real = load_video_model(tiny_unet3d_path, family="unet3d", device=request.device)
        return DummyVideoModel(denoiser=real.denoiser, vae=real.vae, text_encoder=real.text_encoder,
                               tokenizer=real.tokenizer, scheduler=real.scheduler, base_model=request.info.name)

    folder = tmp_path / "dummy"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DummyVideoPipeline"}))
    register_family("dummy", DummyVideoModel, load=load, detect=detect)
    try:
        assert detect_family(folder) == "dummy"
        model = load_video_model(folder, device="cpu")
        assert isinstance(model, DummyVideoModel) and model.base_model == "dummy"
        assert detect_family(tiny_unet3d_path) == "unet3d"
    finally:
        from motion_core.backbones import loading

        FAMILIES.pop("dummy")
        loading._LOADERS.pop("dummy")
        loading._DETECTORS.pop("dummy")
    assert "dummy" not in FAMILIES and {"unet3d", "animatediff"} <= set(FAMILIES)
