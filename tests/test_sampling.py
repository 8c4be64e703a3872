"""The shared denoising loop: parity with diffusers, determinism, hooks, cancel, bad input."""

from __future__ import annotations

import pytest
import torch

from motion_core.errors import Cancelled, InputError
from motion_core.motion_model import MotionModel
from motion_core.sampling import (
    SCHEDULERS,
    SampleRequest,
    SamplingHook,
    ddim_step,
    make_scheduler,
    sample,
    seeded_noise,
)

SMALL = dict(width=64, height=64, num_frames=4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_step_equals_diffusers_step(prediction_type):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              steps_offset=1, set_alpha_to_one=False, clip_sample=False,
                              prediction_type=prediction_type)
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 3, 8, 8, generator=g)
    timesteps = [int(t) for t in scheduler.timesteps]
    for i, t in enumerate(timesteps):
        out = torch.randn(z.shape, generator=g)
        expected = scheduler.step(out, t, z).prev_sample
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        alpha_prev = scheduler.alphas_cumprod[t_prev] if t_prev >= 0 else scheduler.final_alpha_cumprod
        ours, _ = ddim_step(z, out, scheduler.alphas_cumprod[t], alpha_prev, prediction_type=prediction_type)
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
        z = expected


def test_ddim_guidance_moves_along_minus_gradient_on_direction_term_only():
    # z_prev(guided) - z_prev(plain) = -sqrt((1-a_t)(1-a_prev)) * g ; x0 unchanged (motion_clone.md §5.2)
    g = torch.Generator().manual_seed(1)
    z, eps, grad = (torch.randn(1, 4, 2, 4, 4, generator=g) for _ in range(3))
    a_t, a_prev = torch.tensor(0.0015790), torch.tensor(0.0035)
    plain, x0_plain = ddim_step(z, eps, a_t, a_prev)
    guided, x0_guided = ddim_step(z, eps, a_t, a_prev, guidance_grad=grad)
    torch.testing.assert_close(x0_plain, x0_guided)
    torch.testing.assert_close(guided - plain, -((1 - a_t) * (1 - a_prev)).sqrt() * grad, rtol=1e-5, atol=1e-6)


def test_seeded_noise_is_reproducible_and_seed_dependent():
    a, b, c = seeded_noise((2, 3), 5), seeded_noise((2, 3), 5), seeded_noise((2, 3), 6)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("family", ["unet3d", "animatediff"])
def test_sampler_equals_diffusers_pipeline(family, request):
    """Same components, same initial latents, DDIM + CFG: our loop gives the pipeline's latents."""
    from diffusers import AnimateDiffPipeline, TextToVideoSDPipeline

    model = request.getfixturevalue(f"{family}_model")
    req = SampleRequest(prompt="a square", negative_prompt="blurry", steps=3, cfg=7.0, seed=3, **SMALL)
    ours = sample(model, req, decode=False).latents
    components = dict(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                      unet=model.denoiser, scheduler=make_scheduler(model, "ddim"))
    if family == "unet3d":
        pipe = TextToVideoSDPipeline(**components)
    else:
        pipe = AnimateDiffPipeline(motion_adapter=None, **components)
    pipe.set_progress_bar_config(disable=True)
    noise = seeded_noise(model.latent_shape(1, 4, 64, 64), 3)
    out = pipe(prompt="a square", negative_prompt="blurry", num_inference_steps=3, guidance_scale=7.0,
               height=64, width=64, num_frames=4, latents=noise.clone(), output_type="latent")
    theirs = out.frames if hasattr(out, "frames") else out[0]
    theirs = torch.as_tensor(theirs)
    if theirs.shape != ours.shape:  # some pipelines return (B, F, C, h, w)
        theirs = theirs.permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-4, atol=1e-5)


def test_same_seed_same_frames_other_seed_other_frames(unet3d_model):
    req = SampleRequest(prompt="a square", steps=2, cfg=5.0, seed=11, **SMALL)
    first, second = sample(unet3d_model, req), sample(unet3d_model, req)
    assert first.frames.shape == (1, 4, 64, 64, 3)
    assert first.frames.dtype == torch.float32 and 0.0 <= first.frames.min() and first.frames.max() <= 1.0
    assert torch.equal(first.frames, second.frames)
    other = sample(unet3d_model, SampleRequest(prompt="a square", steps=2, cfg=5.0, seed=12, **SMALL))
    assert not torch.equal(first.frames, other.frames)


def test_negative_prompt_and_cfg_change_the_result(unet3d_model):
    base = dict(prompt="a square", steps=2, seed=1, **SMALL)
    plain = sample(unet3d_model, SampleRequest(cfg=1.0, **base), decode=False).latents
    cfg = sample(unet3d_model, SampleRequest(cfg=6.0, **base), decode=False).latents
    neg = sample(unet3d_model, SampleRequest(cfg=6.0, negative_prompt="noise", **base), decode=False).latents
    assert not torch.allclose(plain, cfg) and not torch.allclose(cfg, neg)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_runs(unet3d_model, name):
    result = sample(unet3d_model, SampleRequest(prompt="x", steps=3, cfg=3.0, scheduler=name, **SMALL),
                    decode=False)
    assert torch.isfinite(result.latents).all()
    assert len(result.timesteps) >= 3


def test_several_prompts_and_videos_per_prompt(unet3d_model):
    req = SampleRequest(prompt=["a", "b"], videos_per_prompt=2, steps=1, cfg=1.0, **SMALL)
    result = sample(unet3d_model, req)
    assert result.frames.shape[0] == 4
    assert not torch.equal(result.frames[0], result.frames[1])  # same prompt, different noise


class Recorder(SamplingHook):
    def __init__(self, timesteps=None, fail_at=None):
        self.custom, self.fail_at, self.calls = timesteps, fail_at, []

    def timesteps(self, model, request):
        return self.custom

    def setup(self, state):
        self.calls.append(("setup", None))

    def before_step(self, state):
        self.calls.append(("before", state.timestep))
        if self.fail_at is not None and state.step == self.fail_at:
            raise RuntimeError("boom")

    def after_step(self, state):
        self.calls.append(("after", state.timestep))

    def teardown(self, state):
        self.calls.append(("teardown", None))


def test_hooks_see_custom_timesteps_in_order_and_always_tear_down(unet3d_model):
    hook = Recorder(timesteps=[900, 500, 100])
    result = sample(unet3d_model, SampleRequest(prompt="x", steps=50, cfg=1.0, **SMALL), hooks=[hook],
                    decode=False)
    assert result.timesteps == [900, 500, 100]
    assert hook.calls == [("setup", None), ("before", 900), ("after", 900), ("before", 500),
                          ("after", 500), ("before", 100), ("after", 100), ("teardown", None)]
    failing = Recorder(fail_at=1)
    with pytest.raises(RuntimeError):
        sample(unet3d_model, SampleRequest(prompt="x", steps=3, cfg=1.0, **SMALL), hooks=[failing])
    assert failing.calls[-1] == ("teardown", None)


def test_custom_timesteps_need_ddim_and_must_decrease(unet3d_model):
    with pytest.raises(InputError, match="DDIM"):
        sample(unet3d_model, SampleRequest(prompt="x", scheduler="euler", **SMALL), hooks=[Recorder([900, 100])])
    with pytest.raises(InputError, match="decreasing"):
        sample(unet3d_model, SampleRequest(prompt="x", **SMALL), hooks=[Recorder([100, 900])])


def test_cancel_between_steps_stops_cleanly_and_model_stays_usable(unet3d_model):
    seen = []

    def progress(step, total, info):
        seen.append((step, total, info["timestep"]))

    with pytest.raises(Cancelled, match="step 2 of 5"):
        sample(unet3d_model, SampleRequest(prompt="x", steps=5, cfg=1.0, **SMALL), progress=progress,
               cancel=lambda: len(seen) >= 2)
    assert [s[0] for s in seen] == [1, 2] and all(s[1] == 5 for s in seen)
    after = sample(unet3d_model, SampleRequest(prompt="x", steps=1, cfg=1.0, **SMALL))
    assert torch.isfinite(after.frames).all()


def test_noise_prior_hook_receives_seeded_noise_and_sets_the_start(unet3d_model):
    class Prior:
        def __init__(self):
            self.noise = None

        def initial_latents(self, noise, model, request):
            self.noise = noise
            return torch.zeros_like(noise)

    prior = Prior()
    req = SampleRequest(prompt="x", steps=2, cfg=1.0, seed=4, **SMALL)
    with_prior = sample(MotionModel.wrap(unet3d_model).with_noise_prior(prior), req, decode=False)
    assert torch.equal(prior.noise, seeded_noise(unet3d_model.latent_shape(1, 4, 64, 64), 4))
    plain = sample(unet3d_model, req, decode=False)
    assert not torch.allclose(with_prior.latents, plain.latents)
    zeros = sample(unet3d_model, req, decode=False,
                   initial_latents=torch.zeros(unet3d_model.latent_shape(1, 4, 64, 64)))
    torch.testing.assert_close(zeros.latents, with_prior.latents)


def test_adapters_are_active_only_during_the_run(unet3d_model):
    events = []

    class Adapter:
        def activate(self, model):
            import contextlib

            @contextlib.contextmanager
            def cm():
                events.append("on")
                yield
                events.append("off")
            return cm()

        def sampling_hook(self):
            return None

    chained = MotionModel.wrap(unet3d_model).with_adapter(Adapter()).with_adapter(Adapter())
    assert MotionModel.wrap(unet3d_model).adapters == ()  # the input of an apply step is not mutated
    sample(chained, SampleRequest(prompt="x", steps=1, cfg=1.0, **SMALL), decode=False)
    assert events == ["on", "on", "off", "off"]


def test_bad_sizes_and_frames_are_refused_before_any_work(unet3d_model):
    m = unet3d_model.size_multiple
    with pytest.raises(InputError, match=f"multiples of {m}"):
        sample(unet3d_model, SampleRequest(prompt="x", width=m * 4 + 1, height=64, num_frames=4))
    with pytest.raises(InputError, match="frames"):
        sample(unet3d_model, SampleRequest(prompt="x", width=64, height=64, num_frames=10_000))
    with pytest.raises(InputError, match="scheduler"):
        sample(unet3d_model, SampleRequest(prompt="x", scheduler="nope", **SMALL))


def test_bf16_model_samples_finite_frames(tiny_unet3d_path):
    from motion_core.backbones import load_video_model

    model = load_video_model(tiny_unet3d_path, dtype="bf16", device="cpu")
    result = sample(model, SampleRequest(prompt="x", steps=2, cfg=4.0, **SMALL))
    assert torch.isfinite(result.frames).all()
    assert result.latents.dtype == torch.float32
