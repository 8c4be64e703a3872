"""The shared training loop (motion_core.training): data, caching, exact resume, NaN guard, cancel,
checkpoint files, gradient checkpointing, accelerate, loss curve -- on the tiny UNet3D with real methods.

Sizes: 32x32 clips (16x16 latents), 8 frames, rank 4: a step is a fraction of a second on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from motion_core.adapters.lora import (
    MotionLoRA,
    inject_lora,
    lora_layers,
    lora_parameters,
    lora_weights,
    load_lora_weights,
    remove_lora,
    temporal_lora_targets,
)
from motion_core.errors import InputError, TrainingError, VideoError
from motion_core.losses import diffusion_mse
from motion_core.methods import create_method, get_method, method_names
from motion_core.training import (
    ParamGroup,
    StepOutput,
    TrainingConfig,
    TrainingMethod,
    VideoSource,
    activation_checkpointing,
    build_clips,
    find_checkpoint,
    render_loss_curve,
    train,
)
from motion_core.video import moving_square_frames

REPO = Path(__file__).resolve().parent.parent


def square(frames: int = 16, side: int = 32) -> torch.Tensor:
    return moving_square_frames(frames, side, side, square=8, velocity=(1, 0), start=(4, 12))


def small_config(run_dir, **overrides) -> TrainingConfig:
    values = dict(steps=4, frames=8, width=32, height=32, fps=None, checkpoint_every=0, validate_every=0,
                  final_preview=False, run_dir=str(run_dir), write_preview_videos=False)
    values.update(overrides)
    return TrainingConfig(**values)


def motiondirector(**options):
    return create_method("motiondirector", **{"rank": 4, "noise_prior_steps": 0, **options})


class PlainLoRA(TrainingMethod):
    """A minimal real method (one temporal LoRA, plain denoising MSE, only high-noise timesteps): shows that
    the loop is method-agnostic and that a method can replace the timestep sampler."""

    name = "plain_lora_test"

    def setup(self, model, clips, generator):
        inject_lora(model.denoiser, "motion", temporal_lora_targets(model), rank=2, dtype=torch.float32)
        return [ParamGroup("motion", lora_parameters(model.denoiser, "motion"), lr=1e-3)]

    def sample_timesteps(self, model, batch_size, generator):
        self.seen = getattr(self, "seen", []) + [None]
        t = torch.randint(900, 1000, (batch_size,), generator=generator)
        self.seen[-1] = int(t[0])
        return t

    def training_step(self, model, batch):
        noisy = batch.noisy_latents()
        return StepOutput(losses={"motion": diffusion_mse(model.predict(noisy.z_t, noisy.t, batch.prompt_embeds),
                                                          noisy.target)})

    def state_tensors(self, model):
        return {f"{k}.{i}": v for k, (a, b) in lora_weights(model.denoiser, "motion").items() for i, v in enumerate((a, b))}

    def load_state_tensors(self, model, tensors):
        load_lora_weights(model.denoiser, "motion", {k: (tensors[f"{k}.0"], tensors[f"{k}.1"])
                                                     for k in {n.rsplit(".", 1)[0] for n in tensors}})

    def build_adapter(self, model, *, steps, training_config, clips):
        return lora_weights(model.denoiser, "motion")

    def teardown(self, model):
        remove_lora(model.denoiser, ["motion"])


# ================================================================================================ data
def test_clip_windows_fps_and_captions(tmp_path):
    from motion_core.video import write_video

    long = square(20)
    clips = build_clips([VideoSource(frames=long, fps=16.0)], "a square", frames=4, fps=8.0, width=16, height=16)
    # 20 frames at 16 fps -> stride 2 -> 10 frames -> two full 4-frame windows (the partial third is dropped)
    assert [(c.video_index, c.window) for c in clips] == [(0, 0), (0, 1)]
    assert clips[0].frames.shape == (4, 16, 16, 3)
    torch.testing.assert_close(clips[1].frames[0], build_clips([VideoSource(frames=long[8:9])], "x", frames=1,
                                                               fps=None, width=16, height=16)[0].frames[0])
    path = write_video(tmp_path / "clip.mp4", square(16), 8)
    clips = build_clips([VideoSource(path=path), VideoSource(frames=square(8), caption="own caption")],
                        ["first", "second"], frames=8, fps=8.0, width=32, height=32, windows="first")
    assert [(c.video_index, c.prompt) for c in clips] == [(0, "first"), (1, "own caption")]
    with pytest.raises(VideoError, match="shorter than the 8-frame training window"):
        build_clips([VideoSource(frames=square(6))], "x", frames=8, fps=None, width=32, height=32)
    with pytest.raises(InputError, match="2 prompts for 3 videos"):
        build_clips([VideoSource(frames=square(8))] * 3, ["a", "b"], frames=8, fps=None, width=32, height=32)
    bad = square(8).clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        build_clips([VideoSource(frames=bad)], "x", frames=8, fps=None, width=32, height=32)


def test_each_clip_is_encoded_once_and_each_prompt_once(unet3d_model, tmp_path, monkeypatch):
    calls = {"video": 0, "prompt": 0}
    encode_video, encode_prompt = unet3d_model.encode_video, unet3d_model.encode_prompt

    def count_video(*a, **k):
        calls["video"] += 1
        return encode_video(*a, **k)

    def count_prompt(*a, **k):
        calls["prompt"] += 1
        return encode_prompt(*a, **k)

    monkeypatch.setattr(unet3d_model, "encode_video", count_video)
    monkeypatch.setattr(unet3d_model, "encode_prompt", count_prompt)
    train(unet3d_model, motiondirector(), [square(16)], "a square", small_config(tmp_path / "run", steps=6))
    assert calls == {"video": 2, "prompt": 1}  # 2 windows, 6 steps, one prompt


# ================================================================================================ the loop
def test_method_registry():
    assert "motiondirector" in method_names()
    assert get_method("MotionDirector") is get_method("motion-director")
    with pytest.raises(InputError, match="Unknown training method"):
        get_method("nope")
    with pytest.raises(InputError, match="Unknown option"):
        create_method("motiondirector", rnak=4)


def test_a_method_can_bring_its_own_timestep_sampler(unet3d_model, tmp_path):
    method = PlainLoRA()
    result = train(unet3d_model, method, [square(8)], "a square", small_config(tmp_path / "run", steps=3))
    assert len(method.seen) == 3 and all(900 <= t < 1000 for t in method.seen)
    assert result.steps == 3 and not lora_layers(unet3d_model.denoiser)


def test_interrupted_and_resumed_training_follows_the_same_trajectory(unet3d_model, tmp_path):
    """Dropout on (0.1), two clips, every RNG in play: a run cancelled after step 3 and resumed from its
    checkpoint produces the same losses at every step and the same final weights, bit for bit."""
    def run(run_dir, **kw):
        return train(unet3d_model, motiondirector(lora_dropout=0.1, noise_prior_steps=2), [square(16)], "a square",
                     small_config(run_dir, steps=6, checkpoint_every=3), **kw)

    full = run(tmp_path / "full")
    steps_done = {"n": 0}
    partial = run(tmp_path / "cut", cancel=lambda: steps_done["n"] >= 3,
                  progress=lambda step, total, info: steps_done.update(n=step))
    assert partial.cancelled and partial.steps == 3 and partial.checkpoint.name == "checkpoint-000003"
    resumed = run(tmp_path / "cut", resume=tmp_path / "cut")
    assert resumed.steps == 6 and not resumed.cancelled
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert [h["step"] for h in resumed.history] == list(range(1, 7))
    for s_full, s_res in zip(full.adapter.sets, resumed.adapter.sets):
        for layer in s_full.weights:
            assert torch.equal(s_full.weights[layer][0], s_res.weights[layer][0])
            assert torch.equal(s_full.weights[layer][1], s_res.weights[layer][1])
    assert all(torch.equal(a, b) for a, b in zip(full.adapter.noise_prior, resumed.adapter.noise_prior))


def test_checkpoints_are_safetensors_and_json_only(unet3d_model, tmp_path):
    result = train(unet3d_model, motiondirector(), [square(8)], "a square",
                   small_config(tmp_path / "run", steps=4, checkpoint_every=1, keep_checkpoints=2))
    checkpoints = sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-000003", "checkpoint-000004"]  # older ones pruned
    files = sorted(p.name for p in result.checkpoint.iterdir())
    assert files == ["cache.safetensors", "optimizer.safetensors", "rng_rank0.json", "rng_rank0.safetensors",
                     "trainable.safetensors", "trainer_state.json"]
    state = json.loads((result.checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["fingerprint_inputs"]["method"] == "motiondirector"
    assert [g["name"] for g in state["optimizer"]["param_groups"]] == ["temporal", "spatial_0"]
    assert find_checkpoint(tmp_path / "run") == result.checkpoint
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")], "no partial checkpoint left"


def test_resume_refuses_another_method_or_config(unet3d_model, tmp_path):
    run_dir = tmp_path / "run"
    train(unet3d_model, motiondirector(), [square(8)], "a square", small_config(run_dir, checkpoint_every=2))
    with pytest.raises(TrainingError, match="method settings"):
        train(unet3d_model, motiondirector(rank=2), [square(8)], "a square", small_config(run_dir, steps=6),
              resume=run_dir)
    with pytest.raises(TrainingError, match="run settings"):
        train(unet3d_model, motiondirector(), [square(8)], "a square", small_config(run_dir, steps=6, seed=1),
              resume=run_dir)
    with pytest.raises(TrainingError, match="training videos or prompts"):
        train(unet3d_model, motiondirector(), [square(8)], "another prompt", small_config(run_dir, steps=6),
              resume=run_dir)
    with pytest.raises(TrainingError, match="plain_lora_test"):
        train(unet3d_model, PlainLoRA(), [square(8)], "a square", small_config(run_dir, steps=6), resume=run_dir)
    with pytest.raises(TrainingError, match="No training checkpoint"):
        train(unet3d_model, motiondirector(), [square(8)], "a square", small_config(run_dir), resume=tmp_path)
    assert not lora_layers(unet3d_model.denoiser)


def test_nan_losses_are_skipped_then_stop_the_run(unet3d_model, tmp_path):
    """A learning rate of 1e8 blows the LoRA up after the first step: the following losses are not finite,
    the steps are skipped and reported, and after max_bad_steps in a row the run stops with a clear error,
    leaving no adapter file and the base model restored."""
    adapters = tmp_path / "adapters"
    with pytest.raises(TrainingError, match="NaN/inf 3 steps in a row"):
        train(unet3d_model, motiondirector(learning_rate=1e8), [square(8)], "a square",
              small_config(tmp_path / "run", steps=20, max_bad_steps=3, save_name="exploded",
                           adapters_dir=str(adapters)))
    assert not adapters.exists() or not any(adapters.iterdir())
    assert not lora_layers(unet3d_model.denoiser)


def test_cancel_keeps_the_work(unet3d_model, tmp_path):
    adapters = tmp_path / "adapters"
    seen = {"n": 0}
    result = train(unet3d_model, motiondirector(), [square(8)], "a square",
                   small_config(tmp_path / "run", steps=10, save_name="partial", adapters_dir=str(adapters)),
                   cancel=lambda: seen["n"] >= 2, progress=lambda s, t, i: seen.update(n=s))
    assert result.cancelled and result.steps == 2 and result.checkpoint.name == "checkpoint-000002"
    assert isinstance(result.adapter, MotionLoRA) and result.adapter.steps == 2
    assert (adapters / "partial.safetensors").is_file()


def test_progress_reports_step_loss_and_eta(unet3d_model, tmp_path):
    seen = []
    train(unet3d_model, motiondirector(), [square(8)], "a square", small_config(tmp_path / "run", steps=3),
          progress=lambda step, total, info: seen.append((step, total, info)))
    assert [(s, t) for s, t, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    assert all(torch.isfinite(torch.tensor(i["loss"])) and i["eta"] >= 0 for _, _, i in seen)
    assert seen[-1][2]["eta"] == 0 and "loss_temporal" in seen[0][2]["losses"]


def test_validation_previews(unet3d_model, tmp_path):
    config = small_config(tmp_path / "run", steps=2, validate_every=1, write_preview_videos=True, final_preview=True)
    config.preview.steps = 2
    previews = []
    result = train(unet3d_model, motiondirector(), [square(8)], "a square", config,
                   progress=lambda s, t, i: previews.append(i["preview"]))
    assert previews[0] is not None and previews[0].shape == (1, 8, 32, 32, 3)
    assert result.preview is not None and result.preview.shape == (1, 8, 32, 32, 3)
    assert sorted(p.name for p in (tmp_path / "run" / "previews").iterdir()) == ["final_0.mp4", "step-000001_0.mp4"]


# ================================================================================================ pieces
def test_gradient_checkpointing_gives_the_same_gradients(unet3d_model):
    den = unet3d_model.denoiser
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 4, 8, 8, generator=g)
    emb = unet3d_model.encode_prompt(["x"])
    inject_lora(den, "t", temporal_lora_targets(unet3d_model), rank=2, dtype=torch.float32)
    try:
        params = lora_parameters(den, "t")
        with torch.no_grad():
            for p in params:
                p.normal_(0, 0.1, generator=g)
                p.requires_grad_(True)
        grads = []
        for enabled in (False, True):
            with activation_checkpointing(den, enabled) as how:
                out = unet3d_model.predict(z, 500, emb)
                grads.append(torch.autograd.grad(out.pow(2).mean(), params))
            assert how == ("units" if enabled else "off")
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        assert "forward" not in den.transformer_in.__dict__  # wrappers removed
    finally:
        remove_lora(den, ["t"])


def test_loss_curve_image():
    history = [{"step": i, "loss": 4 - i * 0.1, "loss_temporal": 4 - i * 0.1, "loss_spatial": 1 + 0.01 * i}
               for i in range(1, 21)]
    history[5]["skipped"] = 1.0
    image = render_loss_curve(history, width=320, height=160)
    assert image.shape == (1, 160, 320, 3) and image.dtype == torch.float32
    assert 0 <= float(image.min()) and float(image.max()) <= 1 and float(image.std()) > 0.05
    empty = render_loss_curve([], width=64, height=32)
    assert empty.shape == (1, 32, 64, 3)


def test_training_config_is_validated(unet3d_model, tmp_path):
    with pytest.raises(InputError, match="steps"):
        train(unet3d_model, motiondirector(), [square(8)], "x", small_config(tmp_path, steps=0))
    with pytest.raises(InputError, match="must not contain"):
        train(unet3d_model, motiondirector(), [square(8)], "x", small_config(tmp_path, save_name="../x"))
    with pytest.raises(InputError, match="multiples of 4"):
        train(unet3d_model, motiondirector(), [square(8)], "x", small_config(tmp_path, width=30))
    with pytest.raises(InputError, match="positive integer"):
        motiondirector(rank=0)
    with pytest.raises(InputError, match="larger than the layer"):
        train(unet3d_model, motiondirector(rank=64), [square(8)], "x", small_config(tmp_path))
    assert not lora_layers(unet3d_model.denoiser)


# ================================================================================================ accelerate
def test_the_loop_under_accelerate_in_process(unet3d_model, tmp_path):
    """An ``accelerate.Accelerator(cpu=True)`` drives the loop (one process): same trajectory as without."""
    from accelerate import Accelerator

    plain = train(unet3d_model, motiondirector(), [square(16)], "a square", small_config(tmp_path / "a", steps=3))
    accelerated = train(unet3d_model, motiondirector(), [square(16)], "a square",
                        small_config(tmp_path / "b", steps=3, checkpoint_every=3), accelerator=Accelerator(cpu=True))
    assert [h["loss"] for h in accelerated.history] == [h["loss"] for h in plain.history]
    assert (accelerated.checkpoint / "rng_rank0.safetensors").is_file()


def test_accelerate_launch_two_processes(tmp_path, monkeypatch):
    """``accelerate launch --multi_gpu --num_processes 2 -m motion_core train`` on the CPU (gloo): both
    processes train, gradients are averaged (rank 0's first loss equals a single-process run's, its weights
    do not), every process saves its own RNG state into the shared checkpoint."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "MOTIONKIT_ADAPTERS_DIR": str(tmp_path / "adapters")}
    args = ["train", "--steps", "2", "--device", "cpu", "--checkpoint-every", "2", "--validate-every", "0",
            "--seed", "3"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "motion_core"]
    two = subprocess.run(launch + args + ["--run-dir", str(tmp_path / "two"), "--save-name", "two"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    from motion_core.cli import main  # the single-process reference, in this process

    monkeypatch.setenv("MOTIONKIT_ADAPTERS_DIR", str(tmp_path / "adapters"))
    assert main(args + ["--run-dir", str(tmp_path / "one"), "--save-name", "one"]) == 0
    ckpt = tmp_path / "two" / "checkpoint-000002"
    assert (ckpt / "rng_rank0.safetensors").is_file() and (ckpt / "rng_rank1.safetensors").is_file()
    state_two = json.loads((ckpt / "trainer_state.json").read_text())
    state_one = json.loads((tmp_path / "one" / "checkpoint-000002" / "trainer_state.json").read_text())
    assert state_two["fingerprint_inputs"]["world_size"] == 2
    assert state_two["history"][0]["loss"] == state_one["history"][0]["loss"]
    from motion_core.adapters.files import load_adapter

    a, b = load_adapter(tmp_path / "adapters" / "two.safetensors"), load_adapter(tmp_path / "adapters" / "one.safetensors")
    layer = next(iter(a.sets[0].weights))
    assert not torch.equal(a.sets[0].weights[layer][1], b.sets[0].weights[layer][1])
