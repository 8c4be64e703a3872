"""MotionDirector end to end on the tiny models: its losses, where gradients go, training on the moving
square, noise prior, save -> load -> sample, nodes, workflows and the CLI."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from motion_core.adapters.files import load_adapter
from motion_core.adapters.lora import MotionLoRA, lora_layers
from motion_core.errors import AdapterMismatchError, InputError
from motion_core.losses import appearance_debiased_loss, debias, diffusion_mse, temporal_loss
from motion_core.methods import create_method
from motion_core.methods.motion_director import MotionDirector, MotionDirectorConfig
from motion_core.motion_model import MotionModel
from motion_core.noise_prior import NoisePrior, blend_noise_prior, ddim_inversion
from motion_core.sampling import SampleRequest, SamplingHook, sample
from motion_core.training import (
    Batch,
    TrainingConfig,
    VideoSource,
    add_training_noise,
    build_clips,
    cache_clips,
    train,
)
from motion_core.video import moving_square_frames

REPO = Path(__file__).resolve().parent.parent


def square(frames: int = 8, side: int = 32) -> torch.Tensor:
    return moving_square_frames(frames, side, side, square=8, velocity=(1, 0), start=(4, 12))


def config(run_dir, **overrides) -> TrainingConfig:
    values = dict(steps=4, frames=8, width=32, height=32, fps=None, checkpoint_every=0, validate_every=0,
                  final_preview=False, run_dir=str(run_dir), write_preview_videos=False)
    values.update(overrides)
    return TrainingConfig(**values)


# ================================================================================================ losses
def test_appearance_debiased_loss_equals_its_formula():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 5, 3, 3, generator=g), torch.randn(2, 4, 5, 3, 3, generator=g)
    a, beta = 3, 1.0
    alpha = math.sqrt(2.0)
    # the reference's expression (spec §1.5 step 5), written out element by element
    want = torch.zeros(())
    for f in range(5):
        lhs = alpha * pred[:, :, f] - beta * pred[:, :, a]
        rhs = alpha * target[:, :, f] - beta * target[:, :, a]
        want = want + ((lhs - rhs) ** 2).sum()
    want = want / pred.numel()
    got = appearance_debiased_loss(pred, target, a, beta)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    d = pred - target  # closed form: mean((sqrt(2) d_f - d_a)^2)
    torch.testing.assert_close(got, ((math.sqrt(2) * d - d[:, :, a:a + 1]) ** 2).mean(), rtol=1e-6, atol=1e-7)
    # the temporal loss is the unweighted sum with the plain MSE
    total, parts = temporal_loss(pred, target, a)
    torch.testing.assert_close(total, diffusion_mse(pred, target) + got)
    assert set(parts) == {"loss_org", "loss_ad"}
    # beta = 0: debiasing is the identity
    torch.testing.assert_close(appearance_debiased_loss(pred, target, a, 0.0), diffusion_mse(pred, target))
    # one anchor per batch item
    per_item = appearance_debiased_loss(pred, target, torch.tensor([1, 4]))
    manual = torch.stack([((debias(d[i:i + 1], k)) ** 2).mean() for i, k in enumerate((1, 4))]).mean()
    torch.testing.assert_close(per_item, manual)
    # fp16 inputs are upcast (the loss is float32)
    assert appearance_debiased_loss(pred.half(), target.half(), a).dtype == torch.float32
    with pytest.raises(InputError):
        appearance_debiased_loss(pred, target, 5)


# ================================================================================================ defaults
def test_defaults_are_the_reference_configs():
    cfg = MotionDirectorConfig()
    assert (cfg.rank, cfg.lora_dropout, cfg.learning_rate, cfg.spatial_drop_probability, cfg.debias_beta,
            cfg.noise_prior_steps) == (32, 0.1, 5e-4, 0.2, 1.0, 50)
    method = MotionDirector()
    one, several = TrainingConfig().resolved(method, 1), TrainingConfig().resolved(method, 3)
    assert (one.steps, several.steps) == (150, 500)
    assert (one.frames, one.fps, one.width, one.height) == (16, 8.0, 384, 384)
    assert (method.weight_decay(1), method.weight_decay(3)) == (1e-2, 1e-4)
    assert (method.default_noise_prior(1), method.default_noise_prior(3)) == (0.5, 0.0)


# ================================================================================================ gradients
def _probe(groups):
    """A Batch backward that records d(loss)/d(every LoRA parameter of every group)."""
    records = []

    def backward(loss, names):
        params = {g.name: g.params for g in groups}
        grads = {}
        for name, ps in params.items():
            live = [p for p in ps if p.requires_grad]
            result = torch.autograd.grad(loss, live, allow_unused=True, retain_graph=True) if live else []
            grads[name] = [g for g in result if g is not None]
        records.append((list(names), grads))
    return records, backward


def test_each_path_updates_only_its_own_lora(unet3d_model, tmp_path):
    """Spatial loss -> the spatial LoRA of that video only; temporal loss -> the temporal LoRA only, with
    both gradients at the same weights: the trainer's gradients equal those of L_S and L_T taken at the
    step's starting weights (the reference steps the spatial LoRA between the two backward passes)."""
    model = unet3d_model
    videos = [VideoSource(frames=square()), VideoSource(frames=square().flip(2))]
    clips = build_clips(videos, "a square", frames=8, fps=None, width=32, height=32)
    seed = 5
    cached = cache_clips(model, clips, seed)
    method = MotionDirector(MotionDirectorConfig(rank=4, lora_dropout=0.0, noise_prior_steps=0,
                                                 spatial_drop_probability=0.0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        groups = method.setup(model, cached, torch.Generator())
    try:
        with torch.no_grad():  # B != 0 so that every path is live
            for g in groups:
                for p in g.params[1::2]:
                    p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
        for g in groups:
            for p in g.params:
                p.requires_grad_(True)
        records, backward = _probe(groups)
        clip = cached[0]  # video 0
        method.train_mode(model)
        batch = Batch(step=0, clip=clip, model=model, generator=torch.Generator().manual_seed(9), method=method,
                      _backward=backward)
        out = method.training_step(model, batch)
        assert [names for names, _ in records] == [["spatial_0"], ["temporal"]]
        spatial_grads, temporal_grads = records[0][1], records[1][1]
        assert len(spatial_grads["spatial_0"]) == len(groups[1].params) and not spatial_grads["temporal"]
        assert not spatial_grads["spatial_1"], "another video's spatial LoRA is not touched"
        assert all(float(g.abs().sum()) > 0 for g in spatial_grads["spatial_0"][1::2])
        assert len(temporal_grads["temporal"]) == len(groups[0].params)
        assert not temporal_grads["spatial_0"] and not temporal_grads["spatial_1"]
        assert set(out.losses) == {"spatial_0", "temporal"}
    finally:
        method.teardown(model)
    assert not lora_layers(model.denoiser)


def test_trainer_gradients_are_the_per_path_gradients_at_the_same_weights(unet3d_model, tmp_path):
    model = unet3d_model
    seed = 2
    captured = []

    def hook(optimizer, args, kwargs):
        captured.append({g["name"]: [p.grad.clone() for p in g["params"] if p.grad is not None]
                         for g in optimizer.param_groups})

    options = dict(rank=4, lora_dropout=0.0, noise_prior_steps=0, spatial_drop_probability=0.0)
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(hook)
    try:
        train(model, create_method("motiondirector", **options), [square()], "a square",
              config(tmp_path / "run", steps=1, seed=seed))
    finally:
        handle.remove()
    (trainer_grads,) = captured
    # the same step by hand: the loop's seeding (documented in motion_core.training), the per-path grads
    clips = build_clips([VideoSource(frames=square())], "a square", frames=8, fps=None, width=32, height=32)
    cached = cache_clips(model, clips, seed)
    method = MotionDirector(MotionDirectorConfig(**options))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        groups = method.setup(model, cached, torch.Generator())
    try:
        for g in groups:
            for p in g.params:
                p.requires_grad_(True)
        records, backward = _probe(groups)
        method.train_mode(model)
        method.training_step(model, Batch(step=0, clip=cached[0], model=model, generator=torch.Generator().manual_seed(seed),
                                          method=method, _backward=backward))
    finally:
        method.teardown(model)
    by_hand = {"spatial_0": records[0][1]["spatial_0"], "temporal": records[1][1]["temporal"]}
    for name in ("spatial_0", "temporal"):
        assert len(trainer_grads[name]) == len(by_hand[name])
        for a, b in zip(trainer_grads[name], by_hand[name]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_the_spatial_drop_branch_leaves_every_spatial_lora_alone(unet3d_model, tmp_path):
    result = train(unet3d_model, create_method("motiondirector", rank=4, noise_prior_steps=0,
                                               spatial_drop_probability=1.0),
                   [square()], "a square", config(tmp_path / "run", steps=2))
    spatial = result.adapter.get_set("spatial_0")
    assert all(float(b.abs().sum()) == 0 for _, b in spatial.weights.values()), "B stays at its zero init"
    temporal = result.adapter.get_set("temporal")
    assert any(float(b.abs().sum()) > 0 for _, b in temporal.weights.values())
    assert all("loss_spatial" not in h for h in result.history)


# ================================================================================================ training
def _eval_loss(model, adapter, latents, embeds) -> float:
    """Temporal loss at fixed noise and timesteps (the same for every call)."""
    g = torch.Generator().manual_seed(123)
    total = 0.0
    for t in (100, 300, 500, 700, 900):
        noise = torch.randn(latents.shape, generator=g)
        z_t, target = add_training_noise(model, latents, noise, torch.tensor([t]))
        with (adapter.activate(model) if adapter is not None else nullcontext()), torch.no_grad():
            pred = model.predict(z_t, t, embeds)
        total += float(temporal_loss(pred, target, 0)[0])
    return total / 5


def test_thirty_steps_on_the_moving_square_lower_the_loss(unet3d_model, tmp_path):
    clip = moving_square_frames(8, 24, 24, square=8, velocity=(1, 0), start=(2, 8))
    result = train(unet3d_model, create_method("motiondirector", rank=4, learning_rate=2e-3, noise_prior_steps=0),
                   [clip], "a red square sliding to the right",
                   config(tmp_path / "run", steps=30, width=24, height=24))
    clips = build_clips([VideoSource(frames=clip)], "x", frames=8, fps=None, width=24, height=24)
    latents = cache_clips(unet3d_model, clips, 0)[0].latents
    embeds = unet3d_model.encode_prompt(["a red square sliding to the right"])
    before, after = _eval_loss(unet3d_model, None, latents, embeds), _eval_loss(unet3d_model, result.adapter, latents, embeds)
    assert after < 0.97 * before, (before, after)
    first, last = result.history[:10], result.history[-10:]
    assert sum(h["loss_temporal"] for h in last) < sum(h["loss_temporal"] for h in first)


def test_training_on_animatediff(animatediff_model, tmp_path):
    result = train(animatediff_model, create_method("motiondirector", rank=4, noise_prior_steps=2), [square(8)],
                   "a square", config(tmp_path / "run", steps=2))
    adapter = result.adapter
    assert adapter.family == "animatediff" and [s.name for s in adapter.sets] == ["temporal", "spatial_0"]
    assert all(".motion_modules." in name for name in adapter.get_set("temporal").weights)
    side = 32 // animatediff_model.vae_scale_factor
    assert len(adapter.noise_prior) == 1 and adapter.noise_prior[0].shape == (1, 4, 8, side, side)
    assert not lora_layers(animatediff_model.denoiser)


# ================================================================================================ noise prior
def test_ddim_inversion_follows_the_reference_algebra(unet3d_model):
    """2 steps: timesteps (1, 501), t- = t - 500, alpha(t- < 0) = final_alpha_cumprod (spec §1.6.3)."""
    model = unet3d_model
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(1, 4, 4, 8, 8, generator=g)
    empty = model.encode_prompt([""])
    got = ddim_inversion(model, z0, steps=2, prompt_embeds=empty)
    ac = model.scheduler.alphas_cumprod
    z = z0.clone()
    for t, prev in ((1, float(model.scheduler.final_alpha_cumprod)), (501, float(ac[1]))):
        with torch.no_grad():
            eps = model.predict(z, t, empty)
        x0 = (z - math.sqrt(1 - prev) * eps) / math.sqrt(prev)
        z = math.sqrt(float(ac[t])) * x0 + math.sqrt(1 - float(ac[t])) * eps
    torch.testing.assert_close(got, z, rtol=1e-5, atol=1e-6)


class _FirstLatents(SamplingHook):
    def setup(self, state):
        self.latents = state.latents.clone()


def test_noise_prior_blend(unet3d_model):
    g = torch.Generator().manual_seed(0)
    inverted, noise = torch.randn(1, 4, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, 4, generator=g)
    assert torch.equal(blend_noise_prior(inverted, noise, 1.0), inverted.expand(2, -1, -1, -1, -1))
    assert torch.equal(blend_noise_prior(inverted, noise, 0.0), noise)
    torch.testing.assert_close(blend_noise_prior(inverted, noise, 0.3),
                               math.sqrt(0.3) * inverted + math.sqrt(0.7) * noise)
    # another latent size: per-frame bilinear resize of the inversion
    big = torch.randn(2, 4, 4, 8, 8, generator=g)
    resized = torch.nn.functional.interpolate(inverted[0].permute(1, 0, 2, 3), size=(8, 8), mode="bilinear",
                                              align_corners=False).permute(1, 0, 2, 3)[None]
    torch.testing.assert_close(blend_noise_prior(inverted, big, 1.0), resized.expand(2, -1, -1, -1, -1))
    with pytest.raises(InputError, match="4-frame clip"):
        blend_noise_prior(inverted, torch.randn(1, 4, 6, 4, 4), 0.5)
    with pytest.raises(InputError, match="between 0 and 1"):
        NoisePrior(inverted, 1.5)

    # p = 1 through the sampler: the run starts exactly at the inverted latents
    hook = _FirstLatents()
    request = SampleRequest(prompt="x", width=16, height=16, num_frames=4, steps=2, cfg=1.0)
    sample(MotionModel.wrap(unet3d_model).with_noise_prior(NoisePrior(inverted, 1.0)), request, hooks=[hook],
           decode=False)
    assert torch.equal(hook.latents, inverted)


def test_noise_prior_p1_reproduces_the_stored_inversion(unet3d_model, tmp_path):
    result = train(unet3d_model, create_method("motiondirector", rank=4, noise_prior_steps=3), [square(8)],
                   "a square", config(tmp_path / "run", steps=1))
    (stored,) = result.adapter.noise_prior
    clips = build_clips([VideoSource(frames=square(8))], "x", frames=8, fps=None, width=32, height=32)
    latents = cache_clips(unet3d_model, clips, 0)[0].latents
    assert torch.equal(stored, ddim_inversion(unet3d_model, latents, steps=3))  # base model, empty prompt
    hook = _FirstLatents()
    request = SampleRequest(prompt="x", width=32, height=32, num_frames=8, steps=2, cfg=1.0)
    motion = MotionModel.wrap(unet3d_model).with_adapter(result.adapter).with_noise_prior(NoisePrior(stored, 1.0))
    sample(motion, request, hooks=[hook], decode=False)
    assert torch.equal(hook.latents, stored)


# ================================================================================================ files
def test_save_load_sample_reproduces(unet3d_model, tmp_path):
    adapters = tmp_path / "adapters"
    result = train(unet3d_model, create_method("motiondirector", rank=4, noise_prior_steps=2), [square(8)],
                   "a square", config(tmp_path / "run", steps=3, save_name="square", adapters_dir=str(adapters)))
    assert result.adapter_path == adapters / "square.safetensors"
    loaded = load_adapter("square", adapters)
    assert loaded.steps == 3 and loaded.method == "motiondirector" and loaded.rank == 4
    assert loaded.training_config["method_config"]["rank"] == 4
    request = SampleRequest(prompt="a square", width=32, height=32, num_frames=8, steps=3, cfg=7.5, seed=4)

    def run(adapter):
        motion = MotionModel.wrap(unet3d_model).with_adapter(adapter).with_noise_prior(
            NoisePrior(adapter.noise_prior[0], 0.5))
        return sample(motion, request).frames

    assert torch.equal(run(result.adapter), run(loaded))


# ================================================================================================ nodes
@pytest.fixture
def dirs(tmp_path, monkeypatch):
    from executor import isolate_host

    return isolate_host(tmp_path, monkeypatch)


def _train_node_args(model, **overrides):
    args = dict(model=model, video=square(8), prompt="a square", steps=3, learning_rate=5e-4, rank=4, frames=8,
                width=32, height=32, checkpoint_every=0, save_name="node_square", seed=0, resume_from="none",
                preview_every=0, preview_steps=2, noise_prior_steps=2)
    args.update(overrides)
    return args


def test_train_node_outputs_and_files(unet3d_model, dirs):
    from nodes.nodes_motiondirector import MotionKitTrainMotionDirector

    node = MotionKitTrainMotionDirector()
    adapter, curve, preview = node.train(**_train_node_args(MotionModel.wrap(unet3d_model)))
    assert isinstance(adapter, MotionLoRA) and adapter.steps == 3
    assert curve.shape[0] == 1 and curve.shape[-1] == 3
    assert preview.shape == (8, 32, 32, 3)  # the final preview: the temporal LoRA alone
    assert (dirs.motion_adapters / "node_square.safetensors").is_file()
    with pytest.raises(InputError, match="must not contain"):
        node.train(**_train_node_args(MotionModel.wrap(unet3d_model), save_name="../escape"))
    assert MotionKitTrainMotionDirector.VALIDATE_INPUTS(save_name="a/b") != True  # noqa: E712


def test_train_node_cancel_keeps_the_adapter_and_resume_latest_finishes(unet3d_model, dirs, monkeypatch):
    from nodes import host
    from nodes.nodes_motiondirector import MotionKitTrainMotionDirector

    class CancelAtStep2(host.Progress):
        def update_absolute(self, value, total=None, preview=None):
            super().update_absolute(value, total, preview)
            if value == 2:
                host.request_cancel()  # the user presses Cancel during step 2

    plain_progress = host.Progress
    monkeypatch.setattr(host, "Progress", CancelAtStep2)
    node = MotionKitTrainMotionDirector()
    adapter, _, _ = node.train(**_train_node_args(MotionModel.wrap(unet3d_model), steps=5, checkpoint_every=0))
    assert adapter.steps == 2 and (dirs.motion_adapters / "node_square.safetensors").is_file()
    assert (dirs.output / "motionkit_training" / "node_square" / "checkpoint-000002").is_dir()
    host.reset_cancel()
    monkeypatch.setattr(host, "Progress", plain_progress)
    adapter, _, _ = node.train(**_train_node_args(MotionModel.wrap(unet3d_model), steps=5, resume_from="latest"))
    assert adapter.steps == 5
    assert not lora_layers(unet3d_model.denoiser)


def test_apply_node_refuses_an_adapter_of_another_family(unet3d_model, animatediff_model, tmp_path):
    from nodes.nodes_motiondirector import MotionKitApplyMotionAdapter

    result = train(unet3d_model, create_method("motiondirector", rank=4, noise_prior_steps=0), [square(8)],
                   "a square", config(tmp_path / "run", steps=1))
    node = MotionKitApplyMotionAdapter()
    (applied,) = node.apply(MotionModel.wrap(unet3d_model), result.adapter, 0.7, 0.5)
    assert isinstance(applied, MotionModel) and applied is not unet3d_model
    configured = applied.adapters[0]
    assert (configured.strength, configured.appearance_strength, configured.appearance_set) == (0.7, 0.5, "spatial_0")
    assert result.adapter.strength == 1.0  # the input adapter is not changed
    with pytest.raises(AdapterMismatchError, match="unet3d family"):
        node.apply(MotionModel.wrap(animatediff_model), result.adapter, 1.0, 0.0)
    with pytest.raises(InputError, match="appearance_video 3"):
        node.apply(MotionModel.wrap(unet3d_model), result.adapter, 1.0, 1.0, appearance_video=3)


# ================================================================================================ workflows
def _workflow(name):
    return json.loads((REPO / "workflows" / name).read_text(encoding="utf-8"))


def _by_type(wf, node_type):
    return [n for n in wf["nodes"] if n["type"] == node_type]


def test_motiondirector_workflows_run_end_to_end(dirs, tiny_unet3d_path):
    """Both shipped workflows, converted as the frontend would and run as the host would; the only changes:
    the tiny model, a moving-square clip, small sizes and few steps."""
    from executor import STAND_INS, Executor
    from nodes import NODE_CLASS_MAPPINGS
    from workflow_convert import ui_to_api

    from motion_core.video import write_moving_square_video

    classes = {**STAND_INS, **NODE_CLASS_MAPPINGS}
    dirs.link_model("tiny_unet3d", tiny_unet3d_path)
    write_moving_square_video(dirs.input / "car-turn.mp4", num_frames=16, fps=8, width=32, height=32, square=8,
                              velocity=(1, 0), start=(4, 12))

    wf = _workflow("motiondirector_single_video.json")
    _by_type(wf, "MotionKitLoadVideoModel")[0]["widgets_values"][0] = "tiny_unet3d"
    video = _by_type(wf, "MotionKitLoadReferenceVideo")[0]["widgets_values"]
    video[1:5] = [8, 8.0, 32, 32]
    (trainer,) = _by_type(wf, "MotionKitTrainMotionDirector")
    w = trainer["widgets_values"]
    # prompt, steps, lr, rank, frames, width, height, checkpoint_every, save_name, seed, control, resume_from,
    # video_fps, training_fps, preview_every, preview_prompt, preview_steps, noise_prior_steps, ...
    w[1], w[3], w[4], w[5], w[6], w[7], w[14], w[16], w[17] = 3, 4, 8, 32, 32, 0, 0, 2, 2
    for sampler in _by_type(wf, "MotionKitSampler"):
        sampler["widgets_values"][4] = 2  # steps
        sampler["widgets_values"][6:9] = [32, 32, 8]
    prompt = ui_to_api(wf, classes)
    result = Executor().run(prompt)
    saved = sorted(p.name for p in result.files())
    assert any(n.startswith("motiondirector_tiger") for n in saved) and any(n.startswith("motiondirector_train")
                                                                              for n in saved)
    adapter_file = dirs.motion_adapters / "motiondirector_car_turn.safetensors"
    assert adapter_file.is_file()
    samplers = [str(n["id"]) for n in _by_type(wf, "MotionKitSampler")]
    a, b = (result.outputs[s][0] for s in samplers)
    assert a.shape == b.shape == (8, 32, 32, 3) and not torch.equal(a, b)

    wf = _workflow("motiondirector_apply.json")
    _by_type(wf, "MotionKitLoadVideoModel")[0]["widgets_values"][0] = "tiny_unet3d"
    (sampler,) = _by_type(wf, "MotionKitSampler")
    sampler["widgets_values"][4] = 2
    sampler["widgets_values"][6:9] = [32, 32, 8]
    result2 = Executor().run(ui_to_api(wf, classes))
    frames = result2.outputs[str(sampler["id"])][0]
    assert frames.shape == (8, 32, 32, 3)
    # the saved adapter reproduces the trained one: same prompt/seed as the first workflow's tiger sampler
    assert torch.equal(frames, a)


# ================================================================================================ CLI
def test_cli_train_and_sample_with_adapter_and_noise_prior(tmp_path, monkeypatch, capsys):
    from motion_core.cli import main
    from motion_core.video import load_video, write_moving_square_video

    monkeypatch.setenv("MOTIONKIT_ADAPTERS_DIR", str(tmp_path / "adapters"))
    video = write_moving_square_video(tmp_path / "square.mp4", num_frames=16, fps=8, width=32, height=32, square=8,
                                      velocity=(1, 0), start=(4, 12))
    yaml_config = tmp_path / "run.yaml"
    yaml_config.write_text(f"video: [{video}]\nprompt: a square\nsteps: 3\nframes: 8\nwidth: 32\nheight: 32\n"
                           f"noise-prior-steps: 2\nrun-dir: {tmp_path / 'run'}\nsave-name: cli_square\n"
                           "option: {spatial_drop_probability: 0.5}\n")
    assert main(["train", "--method", "motiondirector", "--config", str(yaml_config), "--rank", "4"]) == 0
    out = capsys.readouterr().out
    assert "trained 3/3 steps" in out and (tmp_path / "adapters" / "cli_square.safetensors").is_file()
    assert (tmp_path / "run" / "loss_curve.png").is_file()
    adapter = load_adapter(tmp_path / "adapters" / "cli_square.safetensors")
    assert adapter.training_config["method_config"]["spatial_drop_probability"] == 0.5
    assert adapter.rank == 4

    clip = tmp_path / "out.mp4"
    assert main(["sample", "--adapter", "cli_square", "--adapter-strength", "0.8", "--noise-prior", "0.5",
                 "--width", "32", "--height", "32", "--frames", "8", "--steps", "2", "--out", str(clip)]) == 0
    assert load_video(clip).frames.shape == (8, 32, 32, 3)
    assert main(["sample", "--adapter", "missing", "--out", str(clip)]) == 1
    assert "was not found" in capsys.readouterr().err
    assert main(["sample", "--adapter", "cli_square", "--noise-prior", "2", "--out", str(clip)]) == 1


def test_cli_export_adapter(unet3d_model, tmp_path, capsys):
    from safetensors.torch import load_file

    from motion_core.cli import main

    result = train(unet3d_model, create_method("motiondirector", rank=4, noise_prior_steps=0), [square(8)],
                   "a square", config(tmp_path / "run", steps=1, save_name="x", adapters_dir=str(tmp_path)))
    out = tmp_path / "exported.safetensors"
    assert main(["export-adapter", "--adapter", str(result.adapter_path), "--format", "diffusers",
                 "--out", str(out)]) == 0
    keys = load_file(str(out))
    assert len(keys) == 2 * 50 and all(k.startswith("unet.") for k in keys)
    assert main(["export-adapter", "--adapter", str(result.adapter_path), "--format", "animatediff_evolved",
                 "--out", str(tmp_path / "ade.safetensors")]) == 1
    assert "animatediff" in capsys.readouterr().err
