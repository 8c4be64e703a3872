"""Customizing Motion (NewMove): trainable set, timestep sampler, prior-preservation loss, identifier policy,
training on the moving square, the weight-delta adapter (strength, exact restore, files), resume, bad input,
the node, the workflow and the CLI.

Counts on the real ZeroScope config come from the reference (spec §2.2, §6.1); the tiny config's from spec §6.3.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from motion_core.adapters.files import load_adapter, read_adapter_file, save_named_adapter
from motion_core.adapters.lora import StrengthSchedule
from motion_core.adapters.weight_delta import WeightDelta, denoiser_parameters
from motion_core.errors import AdapterMismatchError, InputError, TrainingError
from motion_core.methods import get_method
from motion_core.methods.custom_motion import (
    CustomMotion,
    CustomMotionConfig,
    add_identifier,
    apply_identifier,
    bucket_size,
    has_identifier,
    prior_preservation_loss,
    train_custom_motion,
    trainable_parameters,
)
from motion_core.motion_model import MotionModel
from motion_core.sampling import SampleRequest, sample
from motion_core.timesteps import CosineTimesteps, UniformTimesteps, make_timestep_sampler
from motion_core.training import TrainingConfig, VideoSource
from motion_core.video import moving_square_frames

REPO = Path(__file__).resolve().parent.parent
SIDE, FRAMES = 32, 8


def _counts(parts):
    return {k: sum(p.numel() for p in v.values()) for k, v in parts.items()}


def _reference_rule_names(denoiser: nn.Module) -> set[str]:
    """The reference's ``handle_trainable_modules`` (spec §2.2): name rules over ``named_modules()``."""
    names = set()
    for mname, module in denoiser.named_modules():
        cross = "attn2" in mname and ("to_k" in mname or "to_v" in mname) and \
            "transformer_in" not in mname and "temp_attentions" not in mname
        temporal = "temp_attentions" in mname or "transformer_in" in mname
        if cross or temporal or "temp_convs" in mname:
            names.update(f"{mname}.{p}" for p, _ in module.named_parameters(recurse=False))
    return names


# ================================================================================== trainable set
def test_trainable_set_on_the_real_zeroscope_config_on_meta():
    from diffusers import UNet3DConditionModel

    from motion_core.backbones.unet3d import UNet3DVideoModel

    with torch.device("meta"):
        unet = UNet3DConditionModel(
            block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=64,
            cross_attention_dim=1024, down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
            up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3)
    model = UNet3DVideoModel(denoiser=unet, vae=nn.Identity(), text_encoder=nn.Identity(), tokenizer=None,
                             scheduler=None, base_model="cerspense/zeroscope_v2_576w")
    parts = trainable_parameters(model)
    assert _counts(parts) == {"temporal": 278_431_616, "temp_convs": 266_891_520, "cross_kv": 25_559_040}
    assert sum(_counts(parts).values()) == 570_882_176
    assert sum(p.numel() for p in unet.parameters()) == 1_411_233_860
    names = {n for v in parts.values() for n in v}
    assert names == _reference_rule_names(unet)
    assert len(parts["cross_kv"]) == 32 and all(re.search(r"\.attentions\.\d+\..*attn2\.to_[kv]\.weight$", n)
                                                for n in parts["cross_kv"])


def test_trainable_set_on_the_tiny_models(unet3d_model, animatediff_model):
    parts = trainable_parameters(unet3d_model)
    assert _counts(parts) == {"temporal": 248_320, "temp_convs": 287_616, "cross_kv": 10_240}  # spec §4.11
    assert {n for v in parts.values() for n in v} == _reference_rule_names(unet3d_model.denoiser)
    assert _counts(trainable_parameters(unet3d_model, ["cross"])) == {"cross_kv": 10_240}
    # AnimateDiff: the motion modules are the temporal transformers; there are no temporal convolutions
    ad = trainable_parameters(animatediff_model)
    assert ad["temp_convs"] == {} and ad["temporal"] and ad["cross_kv"]
    assert all(".motion_modules." in n for n in ad["temporal"])
    motion = {n for n, _ in animatediff_model.denoiser.named_parameters() if ".motion_modules." in n}
    assert set(ad["temporal"]) == motion


# ================================================================================== timestep sampler
def test_high_noise_timestep_sampler_matches_the_reference_distribution():
    sampler = make_timestep_sampler("high")
    p = sampler.probabilities(1000)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert p[0].item() == pytest.approx(5.0025e-4, rel=1e-4) and p[999].item() == pytest.approx(1.50075e-3, rel=1e-4)
    assert bool((p[1:] > p[:-1]).all())  # more weight the more noise
    assert sampler.mean(1000) == pytest.approx(600.87, abs=0.01)
    assert p[500:].sum().item() == pytest.approx(0.659, abs=1e-3)
    draws = sampler.sample(200_000, 1000, torch.Generator().manual_seed(0))
    assert draws.dtype == torch.int64 and int(draws.min()) >= 0 and int(draws.max()) <= 999
    assert draws.float().mean().item() == pytest.approx(600.9, abs=2.0)
    assert (draws >= 500).float().mean().item() == pytest.approx(0.659, abs=0.005)
    # the generator decides every draw (resume exactness)
    again = sampler.sample(200_000, 1000, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)


def test_uniform_and_low_samplers():
    uniform = make_timestep_sampler("uniform").sample(50_000, 1000, torch.Generator().manual_seed(1)).float()
    assert uniform.mean().item() == pytest.approx(499.5, abs=5)
    low = make_timestep_sampler("low-level")
    t = torch.arange(1000, dtype=torch.float64)
    w = 1 + 0.5 * torch.cos(torch.pi * t / 1000)  # the reference's "low-level": more low-noise steps
    assert low.mean(1000) == pytest.approx(float((t * w).sum() / w.sum()), abs=1e-9) and low.mean(1000) < 400
    late = UniformTimesteps(low=500).sample(10_000, 1000, torch.Generator().manual_seed(2))
    assert int(late.min()) >= 500 and int(late.max()) <= 999
    assert CosineTimesteps(0.0).probabilities(10).allclose(torch.full((10,), 0.1, dtype=torch.float64))
    with pytest.raises(InputError, match="Unknown timestep sampling"):
        make_timestep_sampler("mid")
    with pytest.raises(InputError, match="amplitude"):
        CosineTimesteps(1.5)


# ================================================================================== loss
def test_prior_loss_weighting_on_hand_made_tensors():
    shape = (1, 4, 2, 3, 3)
    target = torch.zeros(shape)
    pred_inst = torch.full(shape, 1.0)  # MSE 1
    pred_prior = torch.full(shape, 2.0, requires_grad=True)  # MSE 4
    total, parts = prior_preservation_loss(pred_inst, target, pred_prior, target, prior_weight=0.5)
    assert parts["loss_instance"].item() == 1.0 and parts["loss_prior"].item() == 4.0
    assert total.item() == pytest.approx(1.0 + 0.5 * 4.0)
    (grad,) = torch.autograd.grad(total, pred_prior)
    # d(0.5·mean((x−0)²))/dx = 0.5·2x/N
    assert torch.allclose(grad, torch.full(shape, 0.5 * 2 * 2.0 / target.numel()))
    assert prior_preservation_loss(pred_inst, target)[0].item() == 1.0  # no prior: the instance term only
    half = prior_preservation_loss(pred_inst.half(), target.half(), pred_prior.half(), target.half())[0]
    assert half.dtype == torch.float32  # computed in fp32 whatever the prediction's dtype


# ================================================================================== data helpers
def test_bucket_size_keeps_the_orientation():
    assert bucket_size(1920, 1080) == (384, 256)  # the reference's swap gives 256 wide x 384 high
    assert bucket_size(1080, 1920) == (256, 384)
    assert bucket_size(640, 480) == (384, 320)
    assert bucket_size(500, 500) == (384, 384)
    assert bucket_size(64, 36, 64, 64, 8) == (64, 32)


def test_identifier_in_captions(caplog):
    assert has_identifier("A woman doing the sks sign.", "sks") and has_identifier("SKS wave", "sks")
    assert not has_identifier("asks for a wave", "sks")
    assert add_identifier("a person waving.", "sks") == "a person waving sks."
    with caplog.at_level(logging.WARNING):
        fixed = apply_identifier(["a dog doing the sks jump", "a cat jumping"], "sks")
    assert fixed == ["a dog doing the sks jump", "a cat jumping sks"]
    assert "'a cat jumping' lacks the identifier word 'sks'" in caplog.text
    with pytest.raises(InputError, match="does not contain the identifier word 'sks'"):
        apply_identifier(["a cat jumping"], "sks", "error")
    for bad in ("", "two words", " "):
        with pytest.raises(InputError, match="identifier"):
            CustomMotionConfig(identifier=bad).validate()


# ================================================================================== training
@pytest.fixture(scope="module")
def model(tiny_unet3d_path):
    """A model of our own (training patches its weights; the shared fixture must stay untouched)."""
    from motion_core.backbones import load_video_model

    return load_video_model(tiny_unet3d_path, device="cpu")


def _video() -> torch.Tensor:
    return moving_square_frames(FRAMES, SIDE, SIDE, square=8, velocity=(2, 0), start=(2, 12))


def _prior() -> torch.Tensor:
    # another motion, another size (48x40): resized to the training size, not an error
    return moving_square_frames(FRAMES, 48, 40, square=10, velocity=(0, 2), start=(18, 2))


def _training(tmp_path, steps, **kw) -> TrainingConfig:
    return TrainingConfig(steps=steps, frames=FRAMES, width=SIDE, height=SIDE, validate_every=0, final_preview=False,
                          gradient_checkpointing=False, checkpoint_every=0, run_dir=str(tmp_path / "run"), **kw)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.denoiser.state_dict().items()}


@torch.no_grad()
def _fixed_loss(model, latents, embeds) -> float:
    """ε-MSE over fixed noise at fixed timesteps: the training objective without its sampling noise."""
    from motion_core.training import add_training_noise

    g = torch.Generator().manual_seed(123)
    total = 0.0
    for t in (200, 400, 600, 800, 950):
        noise = torch.randn(latents.shape, generator=g)
        tt = torch.tensor([t])
        z_t, target = add_training_noise(model, latents, noise, tt)
        total += torch.mean((model.predict(z_t, tt, embeds) - target) ** 2).item()
    return total / 5


def test_training_lowers_the_loss_and_the_adapter_applies_with_strength(model, tmp_path, caplog):
    before = _state(model)
    caption = "a square doing the sks slide"
    # lr 1e-3 instead of the reference's 5e-6: 12 steps must move a random tiny model measurably
    with caplog.at_level(logging.WARNING):
        result = train_custom_motion(model, [_video()], caption, prior_videos=[_prior()],
                                     prior_captions="a square sliding down",
                                     config=CustomMotionConfig(learning_rate=1e-3, delta_dtype="float32"),
                                     training=_training(tmp_path, 12, seed=3))
    assert "without prior videos" not in caplog.text
    history = result.history
    assert len(history) == 12 and all("loss_prior" in h and "loss_instance" in h for h in history)
    assert all(h["loss"] == pytest.approx(h["loss_instance"] + 0.5 * h["loss_prior"], rel=1e-5) for h in history)
    # the run restored the base model bit for bit, trainability included
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in model.denoiser.parameters())

    adapter = result.adapter
    assert isinstance(adapter, WeightDelta) and adapter.steps == 12 and adapter.num_parameters == 546_176
    assert Counter({g: len(v) for g, v in adapter.groups.items()}) == Counter(temporal=130, temp_convs=128, cross_kv=8)
    assert adapter.extra["identifier"] == "sks" and adapter.extra["prior_videos"] == 1

    latents = model.encode_video(_video(), generator=torch.Generator().manual_seed(0))
    embeds = model.encode_prompt([caption])
    base_loss = _fixed_loss(model, latents, embeds)
    with MotionModel(model).with_adapter(adapter).activated():
        tuned_loss = _fixed_loss(model, latents, embeds)
    assert tuned_loss < 0.95 * base_loss, (base_loss, tuned_loss)

    # strength s: W = W_base + s·Δ while active; exactly W_base afterwards
    params = denoiser_parameters(model.denoiser)
    name = next(iter(adapter.groups["temp_convs"]))
    for s in (0.0, 0.5, 1.0, -1.0):
        with adapter.with_strength(s).activate(model):
            expected = before[name] + s * adapter.deltas[name]
            assert torch.allclose(params[name], expected, atol=1e-7)
            if s == 0.0:
                assert torch.equal(params[name], before[name])
        assert torch.equal(params[name], before[name])
    assert all(torch.equal(before[k], v) for k, v in model.denoiser.state_dict().items())

    # saved as the delta of the trained tensors only, with metadata; loads back by name
    path = save_named_adapter(adapter, "cm_test", tmp_path / "adapters")
    tensors, meta = read_adapter_file(path)
    assert len(tensors) == 266 and all(k.startswith("delta.") for k in tensors)
    assert meta["kind"] == "weight_delta" and meta["method"] == "custom_motion" and meta["delta_dtype"] == "float32"
    assert json.loads(meta["extra"])["identifier"] == "sks"
    loaded = load_adapter("cm_test", tmp_path / "adapters")
    assert isinstance(loaded, WeightDelta) and all(torch.equal(loaded.deltas[k], v) for k, v in adapter.deltas.items())
    half = load_adapter(adapter.save(tmp_path / "half.safetensors", dtype="float16"))
    assert next(iter(half.deltas.values())).dtype == torch.float16
    assert all(torch.allclose(half.deltas[k].float(), v, rtol=1e-3, atol=1e-7) for k, v in adapter.deltas.items())


def test_weight_delta_through_the_sampler_restores_the_base(unet3d_model):
    model = unet3d_model
    before = _state(model)
    params = denoiser_parameters(model.denoiser)
    g = torch.Generator().manual_seed(0)
    names = [n for n in params if ".temp_attentions." in n][:6] + [n for n in params if "attn2.to_k" in n][:2]
    deltas = {n: 0.05 * torch.randn(params[n].shape, generator=g) for n in names}
    adapter = WeightDelta(deltas=deltas, method="custom_motion", family=model.family, base_model=model.base_model)
    request = SampleRequest(prompt="a sks square", width=32, height=32, num_frames=4, steps=2, cfg=3.0, seed=1)
    base = sample(MotionModel(model), request).frames
    same = sample(MotionModel(model).with_adapter(adapter.with_strength(0.0)), request).frames
    tuned = sample(MotionModel(model).with_adapter(adapter), request).frames
    assert torch.equal(base, same) and not torch.allclose(base, tuned)
    # a schedule switches the delta on only for t >= 500 (patched from the exact base copy)
    seen = []
    from motion_core.sampling import SamplingHook

    class Spy(SamplingHook):
        def before_step(self, state):
            seen.append((state.timestep, torch.equal(params[names[0]], before[names[0]])))

    scheduled = adapter.with_strength(1.0, schedule=StrengthSchedule.from_timestep(500))
    sample(MotionModel(model).with_adapter(scheduled).with_hook(Spy()), SampleRequest(
        prompt="x", width=32, height=32, num_frames=4, steps=4, cfg=1.0))
    assert [base_like for t, base_like in seen] == [t < 500 for t, _ in seen] and {b for _, b in seen} == {True, False}
    # an error inside the run still restores the base
    with pytest.raises(RuntimeError, match="boom"):
        with adapter.activate(model):
            raise RuntimeError("boom")
    assert all(torch.equal(before[k], v) for k, v in model.denoiser.state_dict().items())
    # adapters for another model are refused before anything is patched
    with pytest.raises(AdapterMismatchError, match="trained on 'other'"):
        with adapter.__class__(deltas=deltas, method="x", family=model.family, base_model="other").activate(model):
            pass
    with pytest.raises(AdapterMismatchError, match="animatediff family"):
        WeightDelta(deltas=deltas, method="x", family="animatediff", base_model="").check_compatible(model)
    wrong = dict(deltas, **{names[0]: torch.zeros(3, 3)})
    with pytest.raises(AdapterMismatchError, match="another size"):
        with WeightDelta(deltas=wrong, method="x", family=model.family, base_model="").activate(model):
            pass
    with pytest.raises(AdapterMismatchError, match="do not exist"):
        with WeightDelta(deltas={"nope.weight": torch.zeros(1)}, method="x", family="", base_model="").activate(model):
            pass
    assert all(torch.equal(before[k], v) for k, v in model.denoiser.state_dict().items())


def test_resume_matches_an_uninterrupted_run(model, tmp_path):
    def run(folder, steps, resume=None):
        method = CustomMotion(CustomMotionConfig(learning_rate=1e-3, delta_dtype="float32"),
                              prior_videos=[_prior()], prior_prompt="a square sliding down")
        from motion_core.training import train

        cfg = _training(folder, steps, seed=5)
        cfg.checkpoint_every = 2
        return train(model, method, [_video()], "a square doing the sks slide", cfg, resume=resume)

    full = run(tmp_path / "a", 4)
    first = run(tmp_path / "b", 2)
    resumed = run(tmp_path / "c", 4, resume=first.checkpoint)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert all(torch.equal(resumed.adapter.deltas[k], v) for k, v in full.adapter.deltas.items())
    with pytest.raises(TrainingError, match="different"):  # other prior videos: another run
        method = CustomMotion(CustomMotionConfig(learning_rate=1e-3), prior_videos=[_video()],
                              prior_prompt="a square sliding down")
        from motion_core.training import train

        train(model, method, [_video()], "a square doing the sks slide", _training(tmp_path / "d", 4, seed=5),
              resume=first.checkpoint)


def test_animatediff_trains_motion_modules_and_cross_kv(animatediff_model, tmp_path):
    model = animatediff_model
    before = _state(model)
    cfg = TrainingConfig(steps=1, frames=4, width=16, height=16, validate_every=0, final_preview=False,
                         gradient_checkpointing=True, checkpoint_every=0, run_dir=str(tmp_path / "run"))
    result = train_custom_motion(model, [_video()[:4]], "a sks square", prior_videos=[_prior()[:4]],
                                 prior_captions="a square", config=CustomMotionConfig(learning_rate=1e-3),
                                 training=cfg)
    assert set(result.adapter.groups) == {"temporal", "cross_kv"} and result.adapter.family == "animatediff"
    assert any(float(d.abs().max()) > 0 for d in result.adapter.deltas.values())
    assert all(torch.equal(before[k], v) for k, v in model.denoiser.state_dict().items())


def test_training_without_priors_works_with_a_warning(model, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        result = train_custom_motion(model, [_video()], "a square sliding right", training=_training(tmp_path, 2))
    assert "without prior videos" in caplog.text
    assert "lacks the identifier word 'sks'" in caplog.text  # appended, as documented
    assert result.steps == 2 and all("loss_prior" not in h for h in result.history)
    assert result.adapter.extra["prompts"] == ["a square sliding right sks"]


def test_bad_inputs(model, tmp_path):
    cfg = _training(tmp_path, 1)
    for lr in (0.0, -1e-5, float("nan")):
        with pytest.raises(InputError, match="learning rate must be a positive number"):
            CustomMotion(CustomMotionConfig(learning_rate=lr))
    with pytest.raises(InputError, match="trainable_modules"):
        CustomMotionConfig(trainable_modules=("spatial",)).validate()
    with pytest.raises(InputError, match="does not contain the identifier"):
        CustomMotion(CustomMotionConfig(missing_identifier="error")).prepare(
            cfg, [VideoSource(frames=_video())], "a square sliding right")
    with pytest.raises(InputError, match="prior video 1 has no caption"):
        CustomMotion(prior_videos=[_prior()]).prepare(cfg, [VideoSource(frames=_video())], "a sks square")
    with pytest.raises(InputError, match="2 prior captions for 1 prior videos"):
        CustomMotion(prior_videos=[_prior()], prior_prompt=["a", "b"])
    # a prior of another size is resized, a short one padded with its last frame
    short = _prior()[:5]
    method = CustomMotion(prior_videos=[_prior(), VideoSource(frames=short, caption="a square")], prior_prompt="down")
    videos, _ = method.prepare(cfg, [VideoSource(frames=_video())], "a sks square")
    assert [tuple(c.frames.shape) for c in method.prior_clips] == [(FRAMES, SIDE, SIDE, 3)] * 2
    assert torch.equal(method.prior_clips[1].frames[5], method.prior_clips[1].frames[-1])
    assert [c.prompt for c in method.prior_clips] == ["down", "a square"] and videos[0].caption == "a sks square"
    assert get_method("NewMove") is CustomMotion


def test_videos_in_folder_reads_sidecar_captions(tmp_path):
    from motion_core.methods.custom_motion import videos_in_folder
    from motion_core.video import write_video

    write_video(tmp_path / "b.mp4", _video(), 8.0)
    write_video(tmp_path / "a.mp4", _video(), 8.0)
    (tmp_path / "a.txt").write_text("a square doing\nthe sks slide\n")
    (tmp_path / "notes.md").write_text("not a video")
    found = videos_in_folder(tmp_path, caption="fallback sks")
    assert [Path(v.path).name for v in found] == ["a.mp4", "b.mp4"]
    assert [v.caption for v in found] == ["a square doing the sks slide", "fallback sks"]
    with pytest.raises(InputError, match="holds no video files"):
        videos_in_folder(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        videos_in_folder(tmp_path / "missing")


# ================================================================================== node, workflow, CLI
@pytest.fixture
def dirs(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "tests"))
    from executor import isolate_host

    return isolate_host(tmp_path, monkeypatch)


def test_workflow_runs_end_to_end(dirs, tiny_unet3d_path):
    from executor import STAND_INS, Executor
    from nodes import NODE_CLASS_MAPPINGS
    from workflow_convert import ui_to_api

    from motion_core.video import write_video

    wf = json.loads((REPO / "workflows" / "custom_motion.json").read_text(encoding="utf-8"))
    by_type = {}
    for node in wf["nodes"]:
        by_type.setdefault(node["type"], []).append(node)
    dirs.link_model("tiny_unet3d", tiny_unet3d_path)
    by_type["MotionKitLoadVideoModel"][0]["widgets_values"][0] = "tiny_unet3d"
    instance, prior = by_type["MotionKitLoadReferenceVideo"]
    write_video(dirs.input / instance["widgets_values"][0], moving_square_frames(12, 64, 64, 16), 8.0)
    write_video(dirs.input / prior["widgets_values"][0], moving_square_frames(12, 64, 48, 12, velocity=(0, 2)), 8.0)
    for ref in (instance, prior):  # frames, fps, width, height
        ref["widgets_values"][1:5] = [FRAMES, 8.0, SIDE, SIDE]
    (train,) = by_type["MotionKitTrainCustomMotion"]
    values = train["widgets_values"]
    values[2], values[4], values[5], values[6], values[7] = 2, FRAMES, SIDE, SIDE, 0  # steps, frames, w, h, ckpt
    values[17] = 8.0  # training_fps (after seed's control value, resume_from, folders, captions, fps inputs)
    values[22] = 2  # preview_steps
    (sampler,) = by_type["MotionKitSampler"]
    sampler["widgets_values"][4:9] = [2, 9.0, SIDE, SIDE, FRAMES]  # steps, cfg, width, height, frames

    prompt = ui_to_api(wf, {**STAND_INS, **NODE_CLASS_MAPPINGS})
    result = Executor().run(prompt)
    adapter, curve, preview = result.outputs[str(train["id"])]
    assert isinstance(adapter, WeightDelta) and adapter.steps == 2 and adapter.extra["prior_videos"] == 1
    assert curve.shape[0] == 1 and curve.shape[-1] == 3 and preview.shape == (FRAMES, SIDE, SIDE, 3)
    assert (dirs.motion_adapters / "custom_motion_gesture.safetensors").is_file()
    frames = result.outputs[str(sampler["id"])][0]
    assert frames.shape == (FRAMES, SIDE, SIDE, 3) and torch.isfinite(frames).all()
    assert any(p.suffix == ".webp" and p.is_file() for p in result.files())


def test_train_node_cancel_keeps_the_adapter_so_far(dirs, tiny_unet3d_path, monkeypatch):
    from nodes import host
    from nodes.nodes_custom_motion import MotionKitTrainCustomMotion

    from motion_core.backbones import load_video_model
    from motion_core.video import to_comfy_image

    class CancelAfterFirstStep(host.Progress):
        def update_absolute(self, value, total=None, preview=None):
            super().update_absolute(value, total, preview)
            if value >= 1:
                host.request_cancel()

    monkeypatch.setattr(host, "Progress", CancelAfterFirstStep)
    node = MotionKitTrainCustomMotion()
    assert "identifier" in MotionKitTrainCustomMotion.VALIDATE_INPUTS(identifier="two words")
    base = load_video_model(tiny_unet3d_path, device="cpu")
    adapter, curve, preview = node.train(
        MotionModel(base), "a square doing the sks slide", "sks", 5, 1e-3, FRAMES, SIDE, SIDE, 0, "cm_cancel", 0,
        "none", video=to_comfy_image(_video()), prior_video=to_comfy_image(_prior()),
        prior_caption="a square sliding down", preview_every=0, preview_steps=1)
    assert adapter.steps == 1 and (dirs.motion_adapters / "cm_cancel.safetensors").is_file()
    with pytest.raises(InputError, match="No training video"):
        host.reset_cancel()
        node.train(MotionModel(base), "a sks square", "sks", 1, 1e-3, FRAMES, SIDE, SIDE, 0, "x", 0, "none")


def test_cli_trains_custom_motion_offline(tmp_path, capsys):
    from motion_core.cli import main

    code = main(["train", "--method", "custom_motion", "--steps", "2", "--frames", "4", "--width", "16",
                 "--height", "16", "--preview-steps", "1", "--save-name", "cm_cli", "--adapters-dir",
                 str(tmp_path / "adapters"), "--run-dir", str(tmp_path / "run")])
    assert code == 0
    out = capsys.readouterr().out
    assert "trained 2/2 steps" in out and "smoke test" in out
    adapter = load_adapter(tmp_path / "adapters" / "cm_cli.safetensors")
    assert isinstance(adapter, WeightDelta) and adapter.extra["prior_videos"] == 1  # the synthetic prior
    out_video = tmp_path / "sks.mp4"
    assert main(["sample", "--adapter", str(tmp_path / "adapters" / "cm_cli.safetensors"), "--adapter-strength",
                 "0.5", "--adapter-schedule", "t>=500", "--prompt", "a square doing the sks slide", "--steps", "2",
                 "--frames", "4", "--width", "16", "--height", "16", "--out", str(out_video)]) == 0
    assert out_video.is_file()
    assert main(["train", "--method", "motiondirector", "--prior-video", str(tmp_path / "x.mp4")]) == 1
    assert "takes no prior videos" in capsys.readouterr().err
