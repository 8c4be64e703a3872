"""The training methods on a tiny Wan (a DiT): MotionDirector's two LoRA paths on the joint self-attention
and feed-forward, the memory check before the first step, the noise prior through the flow inversion, the
ComfyUI-native export read back by diffusers' Wan LoRA loader, MotionDirector on the two-expert Wan 2.2
A14B (both experts trained, saved, activated and exported as a high/low pair), and clear refusals."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from motion_core.adapters.files import export_adapter, load_adapter
from motion_core.adapters.lora import lora_layers
from motion_core.backbones import load_video_model
from motion_core.errors import AdapterMismatchError, InputError
from motion_core.losses import temporal_loss
from motion_core.memory import InsufficientMemoryError
from motion_core.methods import create_method
from motion_core.motion_model import MotionModel
from motion_core.noise_prior import NoisePrior
from motion_core.sampling import SampleRequest, sample
from motion_core.tiny_wan import build_tiny_wan
from motion_core.training import TrainingConfig, VideoSource, add_training_noise, build_clips, cache_clips, train
from motion_core.video import moving_square_frames

PROMPT = "a red square sliding to the right"
SELF_ATTN_AND_FFN = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ffn.net.0.proj", "ffn.net.2")


@pytest.fixture(scope="module")
def wan_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_wan_methods")
    return {v: build_tiny_wan(root / v.replace(".", "_"), seed=0, variant=v) for v in ("2.1", "2.2-5b", "2.2-a14b")}


@pytest.fixture(scope="module")
def wan(wan_paths):
    return load_video_model(wan_paths["2.1"], device="cpu")


def clip(frames: int = 5, side: int = 32) -> torch.Tensor:
    return moving_square_frames(frames, side, side, square=8, velocity=(3, 0), start=(2, 12))


def config(run_dir, **overrides) -> TrainingConfig:
    values = dict(steps=4, frames=5, width=32, height=32, fps=None, checkpoint_every=0, validate_every=0,
                  final_preview=False, run_dir=str(run_dir), write_preview_videos=False)
    values.update(overrides)
    return TrainingConfig(**values)


@pytest.fixture(scope="module")
def trained(wan, tmp_path_factory):
    """MotionDirector on the tiny Wan: 30 steps on a 5-frame (2 latent frames) moving square."""
    run = tmp_path_factory.mktemp("md_wan")
    return train(wan, create_method("motiondirector", rank=4, learning_rate=5e-3, noise_prior_steps=4,
                                    spatial_drop_probability=0.0),
                 [clip()], PROMPT, config(run / "run", steps=30))


def _eval_loss(model, adapter, latents, embeds) -> float:
    """Temporal (debiased) loss on the flow target at fixed noise and timesteps."""
    g = torch.Generator().manual_seed(123)
    total = 0.0
    for t in (200, 400, 600, 800):
        noise = torch.randn(latents.shape, generator=g)
        noisy = add_training_noise(model, latents, noise, torch.tensor([t]))
        z_t, target = noisy[0], noisy[1]
        with (adapter.activate(model) if adapter is not None else torch.no_grad()), torch.no_grad():
            pred = model.predict(z_t, t, embeds)
        total += float(temporal_loss(pred, target, 0)[0])
    return total / 4


# ================================================================================================ MotionDirector
def test_motiondirector_lora_placement_on_the_dit(wan, trained):
    adapter = trained.adapter
    assert adapter.family == "wan" and [s.name for s in adapter.sets] == ["temporal", "spatial_0"]
    temporal, spatial = adapter.get_set("temporal"), adapter.get_set("spatial_0")
    blocks = len(wan.denoiser.blocks)
    expected = [f"blocks.{i}.{leaf}" for i in range(blocks) for leaf in SELF_ATTN_AND_FFN]
    # both paths on the same layers (self-attention q/k/v/out + feed-forward), never the text cross-attention
    assert list(temporal.weights) == expected and list(spatial.weights) == expected
    for lora_set in (temporal, spatial):
        assert all(torch.isfinite(a).all() and torch.isfinite(b).all() for a, b in lora_set.weights.values())
        assert any(b.abs().max() > 0 for _, b in lora_set.weights.values())  # B started at 0: it trained
    # the two paths learnt different things
    assert any(not torch.equal(temporal.weights[k][1], spatial.weights[k][1]) for k in expected)
    assert all(torch.isfinite(torch.tensor(h["loss_temporal"])) for h in trained.history)
    assert not lora_layers(wan.denoiser)  # training removed its LoRAs: the shared model is the base again


def test_motiondirector_on_wan_lowers_the_flow_loss(wan, trained):
    clips = build_clips([VideoSource(frames=clip())], PROMPT, frames=5, fps=None, width=32, height=32)
    latents = cache_clips(wan, clips, 0)[0].latents
    embeds = wan.encode_prompt([PROMPT])
    before, after = _eval_loss(wan, None, latents, embeds), _eval_loss(wan, trained.adapter, latents, embeds)
    assert after < 0.97 * before, (before, after)


def test_sampling_uses_the_motion_adapter_only(wan, trained):
    adapter = trained.adapter
    assert adapter.appearance_strength == 0.0
    req = SampleRequest(prompt=PROMPT, steps=3, cfg=1.0, width=32, height=32, num_frames=5, seed=3)
    base = sample(wan, req, decode=False).latents
    with_motion = sample(MotionModel.wrap(wan).with_adapter(adapter), req, decode=False).latents
    import dataclasses

    temporal_only = dataclasses.replace(adapter, sets=(adapter.get_set("temporal"),))
    only = sample(MotionModel.wrap(wan).with_adapter(temporal_only), req, decode=False).latents
    assert (with_motion - base).abs().max() > 1e-4  # the motion LoRA acts
    assert torch.equal(with_motion, only)  # and it is all that acts (appearance LoRA off by default)
    assert not lora_layers(wan.denoiser)


def test_noise_prior_on_wan_uses_the_flow_inversion(wan, trained):
    adapter = trained.adapter
    assert adapter.noise_prior_info["scheduler"] == "flow"
    assert adapter.noise_prior[0].shape == (1, 16, 2, 8, 8)
    # the Noise Prior node's path: invert a reference video on the Wan model, blend
    frames = clip()
    prior = NoisePrior.from_frames(wan, frames, 1.0, steps=4)
    req = SampleRequest(prompt="", steps=4, cfg=1.0, width=32, height=32, num_frames=5, seed=0)
    motion = MotionModel.wrap(wan).with_noise_prior(prior)
    out = sample(motion, req, decode=False).latents
    # the latents from_frames inverted (the VAE posterior sampled with its seed, 0)
    latents = wan.encode_video(frames, generator=torch.Generator().manual_seed(0)).float()
    # p = 1: sampling (same steps, empty prompt, no guidance) starts from the inverted reference and comes back
    error = (out - latents).norm() / latents.norm()
    assert error < 0.05, float(error)
    assert (prior.inverted - latents).norm() / latents.norm() > 0.3  # it really went to the noise end


def test_export_comfyui_wan_loads_in_diffusers_wan_loader(wan, trained, tmp_path):
    from diffusers import WanPipeline

    adapter = trained.adapter
    path = export_adapter(adapter, tmp_path / "motion.safetensors", "comfyui_wan")
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    assert all(k.startswith("diffusion_model.blocks.") for k in tensors)
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in tensors
    assert "diffusion_model.blocks.1.ffn.2.lora_B.weight" in tensors
    assert float(tensors["diffusion_model.blocks.0.self_attn.q.alpha"]) == adapter.get_set("temporal").alpha
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 16, 2, 8, 8, generator=g)
    embeds = wan.encode_prompt([PROMPT])
    with adapter.activate(wan), torch.no_grad():
        expected = wan.predict(z, 500, embeds)
    loaded = copy.deepcopy(wan.denoiser)
    WanPipeline.load_lora_into_transformer(WanPipeline.lora_state_dict(dict(tensors)), transformer=loaded)
    with torch.no_grad():
        got = loaded(hidden_states=z, timestep=torch.tensor([500.0]), encoder_hidden_states=embeds,
                     return_dict=False)[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the diffusers format names the DiT "transformer"
    diffusers_file = load_file(str(export_adapter(adapter, tmp_path / "d.safetensors", "diffusers")))
    assert all(k.startswith("transformer.blocks.") for k in diffusers_file)
    # a UNet adapter cannot be written as a Wan LoRA
    import dataclasses

    with pytest.raises(InputError, match="Wan adapters"):
        export_adapter(dataclasses.replace(adapter, family="unet3d"), tmp_path / "x.safetensors", "comfyui_wan")


def test_save_load_and_another_wan_variant_is_refused(wan, wan_paths, trained, tmp_path):
    path = trained.adapter.save(str(tmp_path / "md_wan.safetensors"))
    loaded = load_adapter(path)
    assert loaded.family == "wan" and loaded.base_model == wan.base_model
    other = load_video_model(wan_paths["2.2-5b"], device="cpu")
    req = SampleRequest(prompt=PROMPT, steps=2, cfg=1.0, width=32, height=32, num_frames=5, seed=0)
    with pytest.raises(AdapterMismatchError) as info:
        sample(MotionModel.wrap(other).with_adapter(loaded), req, decode=False)
    assert wan.base_model in str(info.value) or "base model" in str(info.value)
    assert not lora_layers(other.denoiser)


# ================================================================================================ refusals
class _BothExperts:
    """MotionDirector whose training timesteps fall on either side of A14B's boundary (t = 875) with equal
    odds, so a few steps train both experts; drawn from the trainer's generator, so resume stays exact."""

    def __new__(cls, **kw):
        method = create_method("motiondirector", **kw)
        boundary = 875

        def sample_timesteps(model, batch_size, generator):
            t = torch.randint(0, 1000, (batch_size,), generator=generator)
            high = torch.rand(batch_size, generator=generator) < 0.5
            return torch.where(high, boundary + t % (1000 - boundary), t % boundary)

        method.sample_timesteps = sample_timesteps
        return method


def _a14b_run(model, folder, steps, resume=None, **overrides):
    return train(model, _BothExperts(rank=2, learning_rate=5e-3, noise_prior_steps=0, spatial_drop_probability=0.0),
                 [clip()], PROMPT, config(folder, steps=steps, seed=3, gradient_checkpointing=True, **overrides),
                 resume=resume)


@pytest.fixture(scope="module")
def a14b(wan_paths):
    return load_video_model(wan_paths["2.2-a14b"], device="cpu")


@pytest.fixture(scope="module")
def a14b_trained(a14b, tmp_path_factory):
    return _a14b_run(a14b, tmp_path_factory.mktemp("md_a14b") / "run", 4, checkpoint_every=2)


def test_motiondirector_trains_both_experts_of_a14b(a14b, a14b_trained):
    adapter = a14b_trained.adapter
    assert adapter.extra["experts"] == ["high_noise", "low_noise"]
    per_expert = {e.name: model_targets for e, model_targets in
                  ((e, a14b.motion_lora_targets("temporal", expert=e.name)) for e in a14b.experts)}
    for lora_set in adapter.sets:
        # the same set names and layers on both experts
        assert sorted(lora_set.weights) == sorted(f"{e}.{t}" for e, ts in per_expert.items() for t in ts)
        for expert in ("high_noise", "low_noise"):  # each expert's half learned (B starts at zero)
            assert any(float(b.abs().max()) > 0 for k, (_, b) in lora_set.weights.items() if k.startswith(expert + "."))
    assert not lora_layers(a14b.denoiser) and not lora_layers(a14b.denoiser_2)  # training left the base as it was
    assert all(math.isfinite(h["loss"]) for h in a14b_trained.history)


def test_a14b_adapter_saves_loads_and_activates_on_both_experts(a14b, a14b_trained, tmp_path):
    adapter = a14b_trained.adapter
    loaded = load_adapter(adapter.save(str(tmp_path / "a14b.safetensors")))
    assert loaded.extra["experts"] == ["high_noise", "low_noise"]
    assert {s.name: sorted(s.weights) for s in loaded.sets} == {s.name: sorted(s.weights) for s in adapter.sets}
    # 3 steps from t=1000: the first runs on the high-noise expert, the last on the low-noise one
    req = SampleRequest(prompt=PROMPT, steps=3, cfg=1.0, width=32, height=32, num_frames=5, seed=1)
    plain = sample(MotionModel.wrap(a14b), req, decode=False).latents
    direct = sample(MotionModel.wrap(a14b).with_adapter(adapter), req, decode=False).latents
    reloaded = sample(MotionModel.wrap(a14b).with_adapter(loaded), req, decode=False).latents
    assert torch.allclose(direct, reloaded, atol=1e-6)
    assert not torch.allclose(direct, plain, atol=1e-4)
    z = torch.randn(1, a14b.latent_channels, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    embeds = a14b.encode_prompt([PROMPT])
    for expert in ("high_noise", "low_noise"):  # the adapter changes each expert's own prediction
        with torch.no_grad():
            base = a14b.predict(z, 500, embeds, expert=expert)
            with loaded.activate(a14b):
                adapted = a14b.predict(z, 500, embeds, expert=expert)
        assert not torch.allclose(base, adapted, atol=1e-5), expert
    assert not lora_layers(a14b.denoiser) and not lora_layers(a14b.denoiser_2)


def test_a14b_comfyui_export_is_a_high_low_pair(a14b, a14b_trained, tmp_path, capsys):
    from safetensors.torch import load_file

    from motion_core.adapters.files import export_adapter_files
    from motion_core.adapters.wan_keys import import_wan_lora

    adapter = a14b_trained.adapter
    temporal = adapter.get_set("temporal")
    paths = export_adapter_files(adapter, tmp_path / "motion.safetensors", "comfyui_wan")
    assert [p.name for p in paths] == ["motion_high_noise.safetensors", "motion_low_noise.safetensors"]
    assert export_adapter(adapter, tmp_path / "again.safetensors", "comfyui_wan").name == "again_high_noise.safetensors"
    for path, expert in zip(paths, a14b.experts):
        tensors = load_file(str(path))
        assert all(k.startswith("diffusion_model.") for k in tensors)
        peft, _ = import_wan_lora(tensors)
        layers = {k[: -len(".lora_A.weight")] for k in peft if k.endswith(".lora_A.weight")}
        assert layers == set(a14b.motion_lora_targets("temporal", expert=expert.name))
        modules = dict(expert.module.named_modules())
        for layer in layers:  # every key maps to a Linear of that expert, with the expert's own weights
            a, b = temporal.weights[f"{expert.name}.{layer}"]
            assert peft[f"{layer}.lora_A.weight"].shape[1] == modules[layer].in_features
            assert torch.allclose(peft[f"{layer}.lora_B.weight"].float() @ peft[f"{layer}.lora_A.weight"].float(),
                                  b @ a, atol=1e-5)
    # the CLI writes (and names) the same pair
    from motion_core.cli import main

    saved = adapter.save(str(tmp_path / "a14b.safetensors"))
    assert main(["export-adapter", "--adapter", str(saved), "--format", "comfyui_wan",
                 "--out", str(tmp_path / "cli.safetensors")]) == 0
    assert "cli_high_noise.safetensors" in capsys.readouterr().out
    for expert in ("high_noise", "low_noise"):
        assert load_file(str(tmp_path / f"cli_{expert}.safetensors")).keys() == \
            load_file(str(tmp_path / f"motion_{expert}.safetensors")).keys()


def test_a14b_export_node_writes_the_pair_into_loras(a14b_trained, tmp_path, monkeypatch):
    from executor import isolate_host

    from nodes import host
    from nodes.nodes_motiondirector import MotionKitExportMotionAdapter

    isolate_host(tmp_path, monkeypatch)
    out = MotionKitExportMotionAdapter().export(a14b_trained.adapter, "comfyui_wan", "a14b_motion")
    folder = host.models_dirs("loras")[0]
    assert [str(folder / f"a14b_motion_{e}.safetensors") for e in ("high_noise", "low_noise")] == out["ui"]["text"]
    assert out["result"] == (out["ui"]["text"][0],)
    assert all((folder / f"a14b_motion_{e}.safetensors").is_file() for e in ("high_noise", "low_noise"))


def test_a14b_resume_matches_an_uninterrupted_run(a14b, a14b_trained, tmp_path):
    first = _a14b_run(a14b, tmp_path / "b", 2, checkpoint_every=2)
    resumed = _a14b_run(a14b, tmp_path / "c", 4, resume=first.checkpoint, checkpoint_every=2)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in a14b_trained.history]
    for full_set, resumed_set in zip(a14b_trained.adapter.sets, resumed.adapter.sets):
        for layer, (a, b) in full_set.weights.items():
            assert torch.equal(resumed_set.weights[layer][0], a) and torch.equal(resumed_set.weights[layer][1], b)


def test_methods_without_a14b_support_refuse_it_clearly(a14b, tmp_path):
    with pytest.raises(InputError, match="two-expert"):
        train(a14b, create_method("motion_inversion"), [clip()], PROMPT, config(tmp_path / "run", steps=1))
    assert not lora_layers(a14b.denoiser) and not lora_layers(a14b.denoiser_2)
    assert all(not p.requires_grad for e in a14b.experts for p in e.module.parameters())


def test_a_run_that_cannot_fit_is_refused_before_the_first_step(wan, tmp_path, monkeypatch):
    import motion_core.memory as memory

    monkeypatch.setattr(memory, "available_memory", lambda device: 64 << 20)  # pretend 64 MiB are free
    with pytest.raises(InsufficientMemoryError, match="free on cpu"):
        train(wan, create_method("motiondirector", rank=2, noise_prior_steps=0), [clip()], PROMPT,
              config(tmp_path / "run", steps=1))
    assert not lora_layers(wan.denoiser)


# ================================================================================================ Motion Inversion
def _mi_adapter(model, *, frames=2, size=32, seed=None, scale=0.3, **kw):
    from motion_core.methods.motion_inversion import MotionEmbeddings, create_motion_embeddings

    f = model.vae_scale_factor
    _, qk, v, grids = create_motion_embeddings(model, size // f, size // f, frames=frames, device="cpu")
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        qk = {k: scale * torch.randn(t.shape, generator=g) for k, t in qk.items()}
        v = {k: scale * torch.randn(t.shape, generator=g) for k, t in v.items()}
    return MotionEmbeddings(qk=qk, v=v, grids=grids, frames=frames, family=model.family, base_model=model.base_model,
                            width=size, height=size, latent_size=(size // f, size // f), **kw)


def _predict(model, z, embeds, adapter=None):
    with torch.no_grad(), (adapter.activate(model) if adapter is not None else torch.no_grad()):
        return model.predict(z, 500, embeds)


def test_motion_inversion_blocks_and_zero_embeddings_are_the_identity_on_wan(wan):
    from motion_core.methods.motion_inversion import MotionInversion, select_blocks

    blocks = select_blocks(wan)
    assert [b.block for b in blocks] == ["blocks.0", "blocks.1"] and all(b.attentions == (f"{b.block}.attn1",)
                                                                        for b in blocks)
    adapter = _mi_adapter(wan)
    width = wan.denoiser.blocks[0].attn1.to_q.in_features
    assert adapter.qk["blocks.0"].shape == (1, 32, width)  # one row per latent frame (32 = the reference length)
    assert adapter.v["blocks.0.attn1"].shape == (16, 32, width)  # one row per (position, frame): 4x4 tokens
    z = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    embeds = wan.encode_prompt([PROMPT])
    plain = _predict(wan, z, embeds)
    processors = {n: m.processor for n, m in wan.denoiser.named_modules() if hasattr(m, "processor")}
    for strategy in ("camera", "object", "hybrid", "vanilla"):
        assert torch.equal(_predict(wan, z, embeds, _mi_adapter(wan, strategy=strategy)), plain)
    method = MotionInversion()
    method.setup(wan, [type("Clip", (), {"latents": z})()], torch.Generator())
    try:
        with torch.no_grad():
            assert torch.equal(wan.predict(z, 500, embeds), plain)
    finally:
        method.teardown(wan)
    after = {n: m.processor for n, m in wan.denoiser.named_modules() if hasattr(m, "processor")}
    assert all(after[n] is processors[n] for n in processors)


def test_motion_inversion_on_wan_adds_the_embeddings_where_the_equation_says(wan):
    """m_QK (one row per latent frame, broadcast over positions) into the inputs of to_q and to_k, m_V (one row
    per position and frame) into the input of to_v -- checked against hooks on the projections under diffusers'
    own Wan attention processor."""
    adapter = _mi_adapter(wan, seed=3, strategy="vanilla")
    z = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    embeds = wan.encode_prompt([PROMPT])
    got = _predict(wan, z, embeds, adapter)
    frames, positions = 2, 16

    def add(e_tokens):
        return lambda module, args: (args[0] + e_tokens.to(args[0].dtype),)

    handles = []
    for i, block in enumerate(wan.denoiser.blocks):
        qk = adapter.qk[f"blocks.{i}"][0, :frames]  # (F, C)
        v = adapter.v[f"blocks.{i}.attn1"][:, :frames]  # (P, F, C)
        qk_tokens = qk[:, None, :].expand(frames, positions, -1).reshape(1, frames * positions, -1)
        v_tokens = v.transpose(0, 1).reshape(1, frames * positions, -1)
        handles += [block.attn1.to_q.register_forward_pre_hook(add(qk_tokens)),
                    block.attn1.to_k.register_forward_pre_hook(add(qk_tokens)),
                    block.attn1.to_v.register_forward_pre_hook(add(v_tokens))]
    try:
        expected = _predict(wan, z, embeds)
    finally:
        for h in handles:
            h.remove()
    assert (got - _predict(wan, z, embeds)).abs().max() > 1e-3
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_motion_inversion_trains_and_samples_on_wan(wan, wan_paths, tmp_path):
    result = train(wan, create_method("motion_inversion", learning_rate=0.05, noise_prior_steps=2), [clip()], PROMPT,
                   config(tmp_path / "run", steps=6))
    adapter = result.adapter
    assert adapter.family == "wan" and adapter.frames == 2  # latent frames of a 5-frame clip
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert any(t.abs().max() > 0 for t in adapter.qk.values()) and any(t.abs().max() > 0 for t in adapter.v.values())
    assert adapter.noise_prior_info["scheduler"] == "flow"
    req = SampleRequest(prompt=PROMPT, steps=2, cfg=1.0, width=32, height=32, num_frames=5, seed=0)
    base = sample(wan, req, decode=False).latents
    out = sample(MotionModel.wrap(wan).with_adapter(adapter), req, decode=False).latents
    assert (out - base).abs().max() > 1e-5
    with pytest.raises(AdapterMismatchError, match="2 latent frames .5 video frames"):  # 9 > 5 frames
        sample(MotionModel.wrap(wan).with_adapter(adapter),
               SampleRequest(prompt=PROMPT, steps=1, cfg=1.0, width=32, height=32, num_frames=9, seed=0),
               decode=False)
    # embeddings of another Wan variant (other width) are refused with a clear error
    other = load_video_model(wan_paths["2.2-5b"], device="cpu")
    with pytest.raises(AdapterMismatchError):
        sample(MotionModel.wrap(other).with_adapter(adapter),
               SampleRequest(prompt=PROMPT, steps=1, cfg=1.0, width=32, height=32, num_frames=5, seed=0),
               decode=False)


# ================================================================================================ CLI
def test_cli_wan_smoke_train_sample_and_comfy_export(tmp_path, monkeypatch, capsys):
    """Without --model, --family wan trains on the tiny Wan (the default 8 frames become 9 = 4k+1); the adapter
    samples with the flow noise prior and exports in ComfyUI's Wan format."""
    from safetensors.torch import load_file

    from motion_core.cli import main
    from motion_core.video import load_video

    monkeypatch.setenv("MOTIONKIT_ADAPTERS_DIR", str(tmp_path / "adapters"))
    assert main(["train", "--method", "motiondirector", "--family", "wan", "--steps", "2", "--rank", "2",
                 "--run-dir", str(tmp_path / "run"), "--save-name", "wan_smoke"]) == 0
    captured = capsys.readouterr()
    assert "SMOKE TEST" in captured.err and "trained 2/2 steps" in captured.out
    adapter = load_adapter(tmp_path / "adapters" / "wan_smoke.safetensors")
    assert adapter.family == "wan" and adapter.noise_prior[0].shape[2] == 3  # 9 frames -> 3 latent frames
    clip_path = tmp_path / "out.mp4"
    assert main(["sample", "--family", "wan", "--adapter", "wan_smoke", "--noise-prior", "0.5", "--width", "32",
                 "--height", "32", "--frames", "9", "--steps", "2", "--out", str(clip_path)]) == 0
    assert load_video(clip_path).frames.shape == (9, 32, 32, 3)
    out = tmp_path / "wan_lora.safetensors"
    assert main(["export-adapter", "--adapter", "wan_smoke", "--format", "comfyui_wan", "--out", str(out)]) == 0
    keys = load_file(str(out))
    assert keys and all(k.startswith("diffusion_model.blocks.") for k in keys)
    modules = {k[: -len(".alpha")].split(".", 3)[3] for k in keys if k.endswith(".alpha")}
    assert modules == {"self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "ffn.0", "ffn.2"}
