"""MotionMatcher: LoRA placement, the motion features and their loss, clean gradients through the frozen
extractor (also under gradient checkpointing), the inference gate at t = 500, training on the moving square,
exact resume, the node / workflow / CLI, and the errors users can run into.

Everything runs on the tiny UNet3D (and the real ZeroScope config on the meta device).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from motion_core.adapters.files import load_adapter, save_adapter
from motion_core.adapters.lora import (
    reference_order,
    MotionLoRA,
    StrengthSchedule,
    inject_lora,
    lora_layers,
    lora_parameters,
    set_active_lora,
    set_lora_strength,
    spatial_lora_targets,
    temporal_lora_targets,
)
from motion_core.errors import AdapterMismatchError, InputError, VideoError
from motion_core.methods import get_method
from motion_core.methods.motion_matcher import (
    MOTION,
    MotionMatcher,
    MotionMatcherConfig,
    check_backbone,
    extract_motion_features,
    import_reference_lora,
    motion_feature_layers,
    motion_feature_loss,
    motion_matcher_targets,
    motion_matching_loss,
    next_latents,
    train_motion_matcher,
)
from motion_core.motion_model import MotionModel
from motion_core.sampling import SampleRequest, SamplingHook, sample
from motion_core.training import (
    Batch,
    CachedClip,
    TrainingConfig,
    activation_checkpointing,
    add_training_noise,
    recompute_context,
)
from motion_core.video import moving_square_frames, write_moving_square_video

SQUARE = dict(width=32, height=32, square=8, start=(4, 12))


def _zeroscope_on_meta():
    from diffusers import UNet3DConditionModel

    from motion_core.backbones.unet3d import UNet3DVideoModel

    with torch.device("meta"):
        unet = UNet3DConditionModel(
            block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=64,
            cross_attention_dim=1024, down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
            up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3)
    return UNet3DVideoModel(denoiser=unet, vae=nn.Identity(), text_encoder=nn.Identity(), tokenizer=None,
                            scheduler=None, base_model="cerspense/zeroscope_v2_576w")


def _cached_square(model) -> CachedClip:
    """The moving square (4 frames, 32x32 -> 8x8 latents) as a cached training clip."""
    frames = moving_square_frames(4, **SQUARE)
    with torch.no_grad():
        latents = model.encode_video(frames, generator=torch.Generator().manual_seed(0)).float()
        embeds = model.encode_prompt(["a red square sliding to the right"])
    return CachedClip(index=0, video_index=0, prompt="a red square sliding to the right", latents=latents,
                      prompt_embeds=embeds)


@pytest.fixture
def clip(unet3d_model):
    return _cached_square(unet3d_model)


@contextlib.contextmanager
def installed(model, clip, **options):
    """A MotionMatcher set up on ``model`` with random (non-zero) LoRA B matrices; always torn down."""
    method = MotionMatcher(MotionMatcherConfig(rank=4, noise_prior=0.0, **options))
    groups = method.setup(model, [clip], torch.Generator().manual_seed(0))
    try:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for layer in lora_layers(model.denoiser).values():
                weight = layer.lora_B[MOTION].weight
                weight.copy_(0.05 * torch.randn(weight.shape, generator=generator))
        for p in groups[0].params:
            p.requires_grad_(True)
        method.train_mode(model)
        for layer in lora_layers(model.denoiser).values():
            layer.lora_dropout.eval()  # deterministic comparisons
        yield method, groups[0].params
    finally:
        method.teardown(model)


def _step_gradients(method, model, clip, params, checkpointing: bool, count: tuple[str, ...] = ()):
    """One training step as the trainer runs it; returns (loss, gradients of the LoRA parameters) and, for
    the layers named in ``count``, how often each ran forward (also inside checkpoint recomputations)."""
    seen = {}
    calls = dict.fromkeys(count, 0)
    hooks = [model.denoiser.get_submodule(name).register_forward_pre_hook(
        lambda module, args, name=name: calls.__setitem__(name, calls[name] + 1)) for name in count]

    def backward(loss, names):
        seen["loss"] = loss.detach()
        seen["grads"] = torch.autograd.grad(loss, params, allow_unused=True)

    batch = Batch(step=0, clip=clip, model=model, generator=torch.Generator().manual_seed(3), method=method,
                  _backward=backward)
    try:
        with activation_checkpointing(model.denoiser, checkpointing) as how:
            assert how in (("units", "diffusers") if checkpointing else ("off",))
            method.training_step(model, batch)
    finally:
        for hook in hooks:
            hook.remove()
    return (seen["loss"], seen["grads"], calls) if count else (seen["loss"], seen["grads"])


def _relative(a, b) -> float:
    num = sum(float(((x - y) ** 2).sum()) for x, y in zip(a, b))
    return (num / sum(float((x ** 2).sum()) for x in a)) ** 0.5


# ============================================================================================ placement
def test_lora_and_feature_layers_on_the_real_zeroscope_config_on_meta():
    model = _zeroscope_on_meta()
    targets = motion_matcher_targets(model)
    # spec B.1: 16 Transformer2DModel x 6 (attn1 q/k/v/out, ff.net.0.proj, ff.net.2) + 17 temporal x 10
    assert len(targets) == 266 and targets[:96] == spatial_lora_targets(model)
    assert targets[96:] == temporal_lora_targets(model) and targets[96].startswith("transformer_in.")
    assert not any(".attn2." in t for t in targets[:96]), "the text cross-attention is not adapted"
    assert all(".attentions." in t for t in targets[:96])
    inject_lora(model.denoiser, MOTION, targets, rank=32, alpha=32)
    assert len(lora_layers(model.denoiser)) == 266
    assert sum(p.numel() for p in lora_parameters(model.denoiser, MOTION)) == 12_472_320 + 8_785_920
    layers = motion_feature_layers(model)
    # spec B.2: the 1/4-resolution down block, its 2 spatial cross-attentions (20 heads) and 4 temporal maps
    assert (layers.block, layers.downscale) == ("down_blocks.2", 4)
    assert [r.name for r in layers.cross_attention] == [
        f"down_blocks.2.attentions.{i}.transformer_blocks.0.attn2" for i in (0, 1)]
    assert [r.name for r in layers.temporal_attention] == [
        f"down_blocks.2.temp_attentions.{i}.transformer_blocks.0.attn{j}" for i in (0, 1) for j in (1, 2)]
    assert {int(r.module.heads) for r in layers.cross_attention + layers.temporal_attention} == {20}


def test_lora_and_feature_layers_on_the_tiny_model(unet3d_model):
    refs = unet3d_model.layers()
    spatial = {r.transformer for r in refs if not r.temporal}
    temporal = {r.transformer for r in refs if r.temporal}
    assert len(motion_matcher_targets(unet3d_model)) == 6 * len(spatial) + 10 * len(temporal) == 74
    # the tiny UNet has cross-attention only in its first down block: the automatic choice falls back to it,
    # an explicit request for the reference's 1/4 is refused with the usable choices
    layers = motion_feature_layers(unet3d_model)
    assert (layers.block, layers.downscale) == ("down_blocks.0", 1)
    with pytest.raises(InputError, match=r"usable feature downscales are \[1\]"):
        motion_feature_layers(unet3d_model, 4)


# ============================================================================================ features
def test_features_ddim_identity_and_zero_loss_for_a_perfect_prediction(unet3d_model, clip):
    model = unet3d_model
    z0, embeds = clip.latents, clip.prompt_embeds
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([700])
    z_t, target = add_training_noise(model, z0, noise, t)
    eps_hat = target + 0.3 * torch.randn(z0.shape, generator=torch.Generator().manual_seed(6))
    predicted, true = next_latents(model, z_t, eps_hat, t, t - 1), next_latents(model, z_t, target, t, t - 1)
    # spec B.3 / C.2.4: x̂ − x = c_t (ε̂ − ε), c_700 = −0.003836 on the scaled-linear schedule
    ac = model.scheduler.alphas_cumprod.double()
    c_t = float((1 - ac[699]).sqrt() - (ac[699] * (1 - ac[700]) / ac[700]).sqrt())
    assert c_t == pytest.approx(-0.003836, abs=2e-6)
    torch.testing.assert_close(predicted - true, c_t * (eps_hat - target), atol=1e-6, rtol=0)
    # the true next latent is the forward process at t − 1
    torch.testing.assert_close(true, ac[699].sqrt().float() * z0 + (1 - ac[699]).sqrt().float() * noise,
                               atol=1e-5, rtol=0)

    features = extract_motion_features(model, true, t - 1, embeds)
    frames = z0.shape[2]
    assert features.cross_attention.shape == (1, frames, 8, 8, 77)
    assert features.temporal_attention.shape == (1, 64, frames, frames)
    for maps in (features.cross_attention, features.temporal_attention):
        torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]))
    # ε̂ = ε: both branches see the same latent, the loss is exactly zero; any error gives a positive loss
    same = extract_motion_features(model, next_latents(model, z_t, target.clone(), t, t - 1), t - 1, embeds)
    loss, parts = motion_feature_loss(same, features)
    assert float(loss) == 0.0 and all(float(v) == 0.0 for v in parts.values())
    loss, parts = motion_feature_loss(extract_motion_features(model, predicted, t - 1, embeds), features)
    assert float(parts["loss_spatial"]) > 0 and float(parts["loss_temporal"]) > 0
    # any aspect ratio (the reference only finds square maps): 8x12 latents -> 8x12 cross-attention grid
    wide = extract_motion_features(model, torch.randn(1, 4, 3, 8, 12), 600, embeds)
    assert wide.cross_attention.shape == (1, 3, 8, 12, 77) and wide.temporal_attention.shape == (1, 96, 3, 3)


# ============================================================================================ gradients
def test_gradient_reaches_only_the_lora_through_a_frozen_extractor(unet3d_model, clip):
    model = unet3d_model
    lora_ids = None
    with installed(model, clip) as (method, params):
        lora_ids = {id(p) for p in params}
        frozen = [p for p in model.denoiser.parameters() if id(p) not in lora_ids]
        assert frozen and not any(p.requires_grad for p in frozen), "no base weight is trainable"

        # the extractor is the base model: its maps equal those of the model without any LoRA active,
        # while the LoRA does change the prediction
        z = torch.randn(clip.latents.shape, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            with_lora = extract_motion_features(model, z, 600, clip.prompt_embeds)
            pred_on = model.predict(z, 600, clip.prompt_embeds)
            set_active_lora(model.denoiser, [])
            base = extract_motion_features(model, z, 600, clip.prompt_embeds)
            pred_off = model.predict(z, 600, clip.prompt_embeds)
            set_active_lora(model.denoiser, [MOTION])
        assert torch.equal(with_lora.cross_attention, base.cross_attention)
        assert torch.equal(with_lora.temporal_attention, base.temporal_attention)
        assert not torch.allclose(pred_on, pred_off)

        layers = tuple(f"{block}.attentions.0.transformer_blocks.0.attn2"  # the feature block first
                       for block in ("down_blocks.0", "mid_block", "up_blocks.1"))
        loss_off, plain, calls_off = _step_gradients(method, model, clip, params, False, layers)
        loss_on, checkpointed, calls_on = _step_gradients(method, model, clip, params, True, layers)
        # no pass beyond what the loss needs: the feature block runs in the trainable pass and the two
        # extractor passes, later blocks only in the trainable pass (the extractor stops at the feature
        # block); checkpointing adds exactly one recomputation of each graph-carrying pass
        assert list(calls_off.values()) == [3, 1, 1]
        assert list(calls_on.values()) == [5, 2, 2]
        assert all(g is not None for g in plain) and sum(float(g.abs().sum()) for g in plain) > 0
        assert float(loss_on) == float(loss_off) > 0
        # checkpointed extractor units are recomputed with the LoRA off, as they ran: the same gradient
        assert _relative(plain, checkpointed) < 1e-6
        assert all(p.grad is None for p in frozen)

        # a clean reference: the loss written out with the LoRA prediction and a LoRA-free extractor
        gen = torch.Generator().manual_seed(3)
        noise = torch.randn(clip.latents.shape, generator=gen)
        t = method.sample_timesteps(model, 1, gen)
        prediction = model.predict(add_training_noise(model, clip.latents, noise, t)[0], t, clip.prompt_embeds)
        z_t, target = add_training_noise(model, clip.latents, noise, t)
        x_hat, x_true = next_latents(model, z_t, prediction, t, t - 1), next_latents(model, z_t, target, t, t - 1)
        set_active_lora(model.denoiser, [])
        feats_hat = extract_motion_features(model, x_hat, t - 1, clip.prompt_embeds)
        with torch.no_grad():
            feats_true = extract_motion_features(model, x_true, t - 1, clip.prompt_embeds)
        set_active_lora(model.denoiser, [MOTION])
        manual, _ = motion_feature_loss(feats_hat, feats_true)
        assert float(manual.detach()) == pytest.approx(float(loss_off), rel=1e-6)
        assert _relative(torch.autograd.grad(manual, params), plain) < 1e-5

        # the reference's bug (B.9.1), emulated: extractor at LoRA scale 0 but recomputed at scale 1 --
        # a different gradient, which the two equalities above rule out for ours
        import motion_core.methods.motion_matcher as mm

        capture = method._capture

        @contextlib.contextmanager
        def scale_zero(denoiser, layers=None):
            set_lora_strength(denoiser, MOTION, 0.0)
            try:
                yield
            finally:
                set_lora_strength(denoiser, MOTION, 1.0)

        @contextlib.contextmanager
        def capture_only():
            capture.enabled, capture.recording = True, False
            try:
                yield
            finally:
                capture.enabled, capture.recording = False, True

        saved = (mm.lora_disabled, mm.recompute_context)
        mm.lora_disabled, mm.recompute_context = scale_zero, lambda factory: recompute_context(capture_only)
        try:
            _, buggy = _step_gradients(method, model, clip, params, checkpointing=True)
        finally:
            mm.lora_disabled, mm.recompute_context = saved
        assert _relative(plain, buggy) > 1e-2


# ============================================================================================ inference gate
class _RecordStrength(SamplingHook):
    def __init__(self, layer: str, set_name: str | None = None) -> None:
        self.layer, self.set_name, self.seen = layer, set_name, []

    def before_step(self, state) -> None:
        layer = state.model.denoiser.get_submodule(self.layer)
        scales = [float(v) for k, v in layer.scaling.items() if self.set_name in (None, k)]
        self.seen.append((state.timestep, scales))


def test_adapter_is_active_exactly_from_t_500(unet3d_model, clip, tmp_path):
    model = unet3d_model
    request = SampleRequest(prompt="a cat", width=16, height=16, num_frames=4, steps=75, cfg=1.0)
    with installed(model, clip) as (method, _):
        adapter = method.build_adapter(model, steps=1, training_config={}, clips=[clip])
        # the trainer's previews gate the live LoRA the same way
        layer = motion_matcher_targets(model)[0]
        preview = _RecordStrength(layer, MOTION)
        with method.preview_context(model):
            sample(MotionModel.wrap(model), SampleRequest(prompt="a cat", width=16, height=16, num_frames=2,
                                                          steps=10, cfg=1.0),
                   hooks=method.preview_hooks(model) + [preview], decode=False)
        assert [(t, s[0]) for t, s in preview.seen] == [(t, 1.0 if t >= 500 else 0.0) for t in range(901, 0, -100)]
    assert isinstance(adapter, MotionLoRA) and adapter.strength_schedule == StrengthSchedule.from_timestep(500)
    reloaded = load_adapter(save_adapter(adapter, tmp_path / "mm.safetensors"))
    assert reloaded.strength_schedule == adapter.strength_schedule and reloaded.method == "motionmatcher"

    recorder = _RecordStrength(motion_matcher_targets(model)[0])
    sample(MotionModel.wrap(model).with_adapter(reloaded), request, hooks=[recorder], decode=False)
    on = [t for t, s in recorder.seen if s == [1.0]]
    off = [t for t, s in recorder.seen if s == [0.0]]
    assert len(on) + len(off) == 75
    # spec C.2.8: 75 DDIM steps (leading spacing, offset 1) -> on for 963 ... 508, off from 495 down
    assert on[0] == 963 and on[-1] == 508 and off[0] == 495 and min(on) >= 500 > max(off)
    assert not lora_layers(model.denoiser), "the adapter is removed after sampling"


def test_reference_lora_file_imports_in_the_reference_order(unet3d_model, tmp_path):
    """spec B.1 / C.2.7: [B, A, ...], all Transformer2DModel LoRAs first, then the temporal ones, each group
    in module order with mid_block last; scale 1. Applied, it equals the merged weights W + B A."""
    import copy

    model = unet3d_model
    order = reference_order(spatial_lora_targets(model)) + reference_order(temporal_lora_targets(model))
    modules = dict(model.denoiser.named_modules())
    gen = torch.Generator().manual_seed(4)
    entries, merged = [], copy.deepcopy(model.denoiser)
    for name in order:
        linear = modules[name]
        b = 0.05 * torch.randn(linear.out_features, 4, generator=gen)
        a = torch.randn(4, linear.in_features, generator=gen)
        entries += [b, a]
        with torch.no_grad():
            merged.get_submodule(name).weight += b @ a
    torch.save(entries, tmp_path / "400_unet.pt")
    adapter = import_reference_lora(tmp_path / "400_unet.pt", model)
    assert adapter.strength_schedule == StrengthSchedule.from_timestep(500) and adapter.rank == 4
    z, embeds = torch.randn(1, 4, 2, 8, 8, generator=gen), torch.randn(1, 77, 32, generator=gen)
    with adapter.with_strength(schedule=None).activate(model), torch.no_grad():
        ours = model.predict(z, 700, embeds)
    with torch.no_grad():
        reference = merged(z, 700, encoder_hidden_states=embeds).sample
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    torch.save(entries[:-2], tmp_path / "short.pt")
    with pytest.raises(AdapterMismatchError, match="another architecture"):
        import_reference_lora(tmp_path / "short.pt", model)


# ============================================================================================ training
def test_training_lowers_the_loss_and_resume_matches(unet3d_model, tmp_path):
    model = unet3d_model
    video = write_moving_square_video(tmp_path / "square.mp4", 8, 8.0, **SQUARE)
    config = MotionMatcherConfig(rank=4, learning_rate=1e-2, noise_prior_steps=2)

    def run(steps, run_dir, resume=None, checkpoint_every=0):
        training = TrainingConfig(steps=steps, frames=4, fps=8.0, width=32, height=32, windows="first",
                                  checkpoint_every=checkpoint_every, validate_every=0, final_preview=False,
                                  gradient_checkpointing=False, run_dir=str(run_dir))
        return train_motion_matcher(model, [str(video)], "a red square sliding to the right", config=config,
                                    training=training, resume=resume)

    full = run(12, tmp_path / "a", checkpoint_every=6)
    resumed = run(12, tmp_path / "b", resume=tmp_path / "a" / "checkpoint-000006")
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    ours, theirs = full.adapter.get_set(MOTION).weights, resumed.adapter.get_set(MOTION).weights
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k][0], theirs[k][0]) and torch.equal(ours[k][1], theirs[k][1]) for k in ours)
    assert {"loss_motion", "loss_spatial", "loss_temporal"} <= set(full.history[0])

    # the adapter carries what inference needs: the t >= 500 gate and the 0.3 noise prior of the clip
    adapter = full.adapter
    assert adapter.method == "motionmatcher" and len(adapter.get_set(MOTION).weights) == 74
    assert adapter.noise_prior_info["p"] == 0.3 and adapter.noise_prior[0].shape == (1, 4, 4, 8, 8)

    # lower loss on fixed (ε, t) draws, LoRA at every timestep vs the untrained model
    frames = moving_square_frames(4, **SQUARE)
    with torch.no_grad():
        z0 = model.encode_video(frames, generator=torch.Generator().manual_seed(0)).float()
        embeds = model.encode_prompt(["a red square sliding to the right"])
    gen = torch.Generator().manual_seed(11)
    draws = [(torch.randn(z0.shape, generator=gen), torch.randint(500, 1000, (1,), generator=gen)) for _ in range(6)]

    def evaluate(motion):
        with motion.activated(), torch.no_grad():
            return sum(float(motion_matching_loss(model, z0, embeds, n, t, config)[0]) for n, t in draws) / len(draws)

    before = evaluate(MotionModel.wrap(model))
    after = evaluate(MotionModel.wrap(model).with_adapter(adapter.with_strength(schedule=None)))
    assert after < 0.95 * before, (before, after)


# ============================================================================================ node, workflow, CLI
def test_workflow_trains_applies_and_samples(tmp_path, monkeypatch, tiny_unet3d_path):
    from executor import STAND_INS, Executor, isolate_host
    from nodes import NODE_CLASS_MAPPINGS
    from workflow_convert import ui_to_api

    dirs = isolate_host(tmp_path, monkeypatch)
    dirs.link_model("tiny_unet3d", tiny_unet3d_path)
    write_moving_square_video(dirs.input / "bear.mp4", 8, 8.0, **SQUARE)
    wf = json.loads((Path(__file__).resolve().parent.parent / "workflows" / "motionmatcher.json").read_text())
    by_type = {n["type"]: n for n in wf["nodes"]}
    by_type["MotionKitLoadVideoModel"]["widgets_values"][0] = "tiny_unet3d"
    by_type["MotionKitLoadVideoModel"]["widgets_values"][4] = "cpu"
    by_type["MotionKitLoadReferenceVideo"]["widgets_values"][1:5] = [4, 8.0, 32, 32]
    train = by_type["MotionKitTrainMotionMatcher"]["widgets_values"]
    # prompt, steps, lr, rank, frames, width, height, checkpoint_every, save_name, seed, control, resume_from,
    # video_fps, training_fps, min_timestep, w_s, w_t, downscale, preview_every, preview_prompt, preview_steps,
    # noise_prior, noise_prior_steps, ...
    train[1:8] = [2, 5e-4, 4, 4, 32, 32, 0]
    train[18], train[20], train[22] = 0, 2, 2
    sampler = [n for n in wf["nodes"] if n["type"] == "MotionKitSampler"][0]["widgets_values"]
    sampler[4], sampler[6:9] = 3, [32, 32, 4]
    prompt = ui_to_api(wf, {**STAND_INS, **NODE_CLASS_MAPPINGS})
    result = Executor().run(prompt)
    adapter, curve, preview = result.outputs[str(by_type["MotionKitTrainMotionMatcher"]["id"])]
    assert isinstance(adapter, MotionLoRA) and adapter.strength_schedule == StrengthSchedule.from_timestep(500)
    assert adapter.noise_prior and adapter.noise_prior_info["p"] == 0.3
    assert (dirs.motion_adapters / "motionmatcher_bear.safetensors").is_file()
    assert curve.dim() == 4 and curve.shape[-1] == 3
    assert preview.shape == (4, 32, 32, 3), "the final preview is made even with preview_every 0"
    frames = result.outputs[str([n for n in wf["nodes"] if n["type"] == "MotionKitSampler"][0]["id"])][0]
    assert frames.shape == (4, 32, 32, 3) and torch.isfinite(frames).all()
    assert any(p.suffix == ".webp" for p in result.files())


def test_cli_trains_motionmatcher_as_a_smoke_test(tmp_path, capsys):
    from motion_core.cli import main

    code = main(["train", "--method", "motionmatcher", "--steps", "2", "--frames", "4", "--rank", "4",
                 "--validate-every", "0", "--preview-steps", "2", "--noise-prior-steps", "2",
                 "--run-dir", str(tmp_path / "run"), "--adapters-dir", str(tmp_path / "adapters"),
                 "--save-name", "mm"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "smoke test" in out.lower()
    adapter = load_adapter(tmp_path / "adapters" / "mm.safetensors")
    assert adapter.method == "motionmatcher" and adapter.strength_schedule == StrengthSchedule.from_timestep(500)
    assert get_method("motion-matcher") is MotionMatcher


# ============================================================================================ bad input
def test_backbone_without_unet_attention_maps_is_refused():
    from motion_core.backbones.wan import WanVideoModel
    from motion_core.tiny_wan import _tiny_transformer

    with torch.device("meta"):
        dit = _tiny_transformer(4)
    wan = WanVideoModel(denoiser=dit, vae=nn.Identity(), text_encoder=nn.Identity(), tokenizer=None, scheduler=None,
                        base_model="tiny-wan")
    with pytest.raises(InputError, match="cross-attention maps and the temporal self-attention maps"):
        check_backbone(wan)
    with pytest.raises(InputError, match="MotionMatcher cannot train"):
        train_motion_matcher(wan, [torch.zeros(4, 32, 32, 3)], "a square")


@pytest.mark.parametrize("options, message", [
    ({"rank": 0}, "rank"),
    ({"min_timestep": 0}, "min timestep"),
    ({"spatial_loss_weight": 0.0, "temporal_loss_weight": 0.0}, "loss weight"),
    ({"feature_downscale": 3}, "power of two"),
    ({"learning_rate": -1.0}, "learning rate"),
    ({"noise_prior": 1.5}, "noise prior"),
])
def test_bad_settings_are_clear_errors(options, message):
    with pytest.raises(InputError, match=message):
        MotionMatcher(MotionMatcherConfig(**options))


def test_bad_node_and_video_input(unet3d_model, tmp_path, monkeypatch):
    from executor import isolate_host
    from nodes.nodes_motion_matcher import MotionKitTrainMotionMatcher

    isolate_host(tmp_path, monkeypatch)
    node = MotionKitTrainMotionMatcher()
    assert isinstance(MotionKitTrainMotionMatcher.VALIDATE_INPUTS(save_name="../evil"), str)
    video = torch.rand(4, 32, 32, 3)
    args = dict(model=MotionModel.wrap(unet3d_model), video=video, steps=1, learning_rate=5e-4, rank=4,
                frames=4, width=32, height=32, checkpoint_every=0, save_name="mm", seed=0, resume_from="none")
    with pytest.raises(InputError, match="prompt is empty"):
        node.train(prompt="  ", **args)
    with pytest.raises(InputError, match="no checkpoint"):
        node.train(prompt="a square", **{**args, "resume_from": "latest"})
    with pytest.raises(VideoError, match="shorter than the 8-frame"):
        node.train(prompt="a square", **{**args, "frames": 8})
    assert not lora_layers(unet3d_model.denoiser)


def test_checkpointed_gradient_is_clean_on_animatediff(animatediff_model):
    """AnimateDiff checkpoints through diffusers' own gradient checkpointing: the extractor's units are
    recomputed with the LoRA off there too."""
    model = animatediff_model
    clip = _cached_square(model)
    layers = motion_feature_layers(model)
    assert layers.block == "down_blocks.0" and any(".motion_modules." in n for n in layers.names)
    with installed(model, clip) as (method, params):
        loss_off, plain = _step_gradients(method, model, clip, params, checkpointing=False)
        loss_on, checkpointed = _step_gradients(method, model, clip, params, checkpointing=True)
        assert model.denoiser.is_gradient_checkpointing is False, "the trainer's checkpointing is switched off again"
    assert float(loss_on) == float(loss_off) > 0
    assert sum(float(g.abs().sum()) for g in plain) > 0 and _relative(plain, checkpointed) < 1e-6
