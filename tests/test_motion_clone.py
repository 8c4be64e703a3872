"""MotionClone on the tiny models: schedules, ramps and step algebra against the spec's tables, extraction,
guidance (energy, bit-for-bit weight 0, a measurable motion effect), representation files, SparseCtrl,
cancel, bad input, the nodes, the workflows and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from motion_core.adapters.representation import MotionRepresentation, index_dtype_for
from motion_core.attention import AttentionCapture, attach, chain_of
from motion_core.errors import AdapterMismatchError, Cancelled, InputError
from motion_core.methods.motion_clone import (
    PRESETS,
    REFERENCE_CFG,
    MotionCloneConfig,
    MotionCloneGuidance,
    SparseCtrlCondition,
    SparseCtrlHook,
    add_noise,
    apply_motion_clone,
    extract_motion_representation,
    groupnorm_effect,
    guidance_ramp,
    guided_layers,
    motion_agreement,
    per_frame_motion_norm,
    representation_from_latents,
    uneven_timesteps,
)
from motion_core.sampling import (
    SampleRequest,
    SamplingHook,
    classifier_free_guidance,
    ddim_step,
    sample,
    seeded_noise,
)
from motion_core.video import moving_square_frames

FRAMES, SIZE, SEED = 8, 64, 5
REPO = Path(__file__).resolve().parent.parent
# a short schedule for the tiny model: 6 steps, 5 guided over the top 90% of the noise range, no ramps
QUICK = MotionCloneConfig(steps=6, guided_steps=5, guidance_fraction=0.9, warm_up=0, cool_down=0)


@pytest.fixture(scope="module")
def model(tiny_animatediff4_paths):
    from motion_core.backbones import load_video_model

    return load_video_model(tiny_animatediff4_paths.pipeline, device="cpu")


@pytest.fixture(scope="module")
def square():
    """The synthetic reference: a 16 px square moving right 4 px per frame (64x64, 16 frames)."""
    return moving_square_frames(16, SIZE, SIZE, square=16, velocity=(4, 0))


@pytest.fixture(scope="module")
def representation(model, square):
    return extract_motion_representation(model, square, num_frames=FRAMES, width=SIZE, height=SIZE, seed=SEED)


def request(**changes):
    """The sampler request (QUICK's own step count: the sampler's steps are what runs)."""
    values = dict(prompt="a cat running", num_frames=FRAMES, width=SIZE, height=SIZE, cfg=REFERENCE_CFG, seed=SEED,
                  steps=QUICK.steps)
    values.update(changes)
    return SampleRequest(**values)


class Schedule(SamplingHook):
    """Only a timestep list: plain sampling on MotionClone's schedule."""

    def __init__(self, timesteps):
        self.list = list(timesteps)

    def timesteps(self, model, request):
        return self.list


class Record(SamplingHook):
    def __init__(self):
        self.initial, self.steps = None, []

    def setup(self, state):
        self.initial = state.latents.clone()

    def after_step(self, state):
        self.steps.append((state.step, dict(state.scratch)))


def tiny_sparsectrl(model, kind="rgb", seed=0, **overrides):
    """A SparseCtrl ControlNet shaped like the tiny model's UNet (motion_core.tiny.tiny_sparsectrl)."""
    from motion_core.tiny import tiny_sparsectrl as build

    return build(model.denoiser.config, model.vae_scale_factor, kind, seed, **overrides)


# --------------------------------------------------------------------------------------------- spec tables
@pytest.mark.parametrize("preset, head, guided_end, plain_head, plain_tail", [
    ("camera", [999, 993, 987], [712, 706, 700], [699, 685, 670], [29, 14, 0]),
    ("object", [999, 997, 995], [602, 600], [599, 594, 589], [5, 0]),
    ("i2v_rgb", [999, 991, 984], [708, 700], [699, 687, 675], [12, 0]),
    ("i2v_sketch", [999, 996, 992], [603, 600], [599, 591, 584], [8, 0]),
])
def test_uneven_schedules_equal_the_spec_tables(preset, head, guided_end, plain_head, plain_tail):
    """C1 / section 5.4 for all four reference configs."""
    c = PRESETS[preset]
    ts = uneven_timesteps(c.steps, c.guided_steps, c.guidance_fraction)
    g = c.guided_steps
    assert len(ts) == c.steps and len(set(ts)) == c.steps and ts == sorted(ts, reverse=True)
    assert ts[:3] == head and ts[g - len(guided_end):g] == guided_end
    assert ts[g:g + 3] == plain_head and ts[-len(plain_tail):] == plain_tail
    assert min(ts[:g]) >= int((1 - c.guidance_fraction) * 1000) > max(ts[g:])
    assert (c.warm_up, c.cool_down, c.weight) == (10, 10, 2000.0)


def test_ramp_equals_the_spec_values():
    """C8: G = 50, W = C = 10."""
    r = [guidance_ramp(i, 50, 10, 10) for i in range(50)]
    assert r[:10] == pytest.approx([0.1 * (i + 1) for i in range(10)])
    assert r[10:41] == [1.0] * 31
    assert r[41:] == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    assert guidance_ramp(2, 4, 4, 4) == pytest.approx(0.75 * 0.5)  # overlapping windows multiply
    assert guidance_ramp(0, 5, 0, 0) == 1.0


def test_noise_constants_of_the_linear_schedule():
    """C2: ᾱ values and add_noise(400) = 0.538423·x0 + 0.842675·ε."""
    from diffusers import DDIMScheduler

    s = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", steps_offset=1, clip_sample=False)
    ac = s.alphas_cumprod
    assert [float(ac[t]) for t in (400, 700, 999)] == pytest.approx([0.2898996, 0.0352955, 0.0015790], abs=5e-8)
    x0, eps = torch.randn(2, 4, 3, 4, 4).unbind(0)
    assert torch.allclose(add_noise(s, x0, eps, 400), 0.538423 * x0 + 0.842675 * eps, atol=1e-5)


def test_guided_step_algebra_on_hand_made_tensors():
    """C7: the guided DDIM step differs from the plain one by −√((1−ᾱ_t)(1−ᾱ_t′))·g; CFG 7.5 in the
    reference's form is 8.5 in ours; the last step (ᾱ_prev = 1) returns x̂0 from the unguided ε."""
    from diffusers import DDIMScheduler

    ac = DDIMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod.double()
    g = torch.Generator().manual_seed(0)
    z, eps_c, eps_u, grad = (torch.randn(1, 4, 8, 8, 8, generator=g, dtype=torch.float64) for _ in range(4))
    eps = eps_c + 7.5 * (eps_c - eps_u)  # [LP] form
    assert torch.allclose(classifier_free_guidance(eps_u, eps_c, 8.5), eps, atol=1e-12)
    plain, x0_plain = ddim_step(z, eps, ac[999], ac[993])
    guided, x0_guided = ddim_step(z, eps, ac[999], ac[993], guidance_grad=grad)
    assert torch.allclose(guided - plain, -((1 - ac[999]) * (1 - ac[993])).sqrt() * grad, atol=1e-12)
    assert torch.equal(x0_plain, x0_guided)
    last, x0 = ddim_step(z, eps, ac[14], 1.0, guidance_grad=grad)
    assert torch.allclose(last, x0, atol=1e-12)


@pytest.mark.parametrize("args, message", [
    ((100, 50, 0.0), "fraction must be in"),
    ((100, 50, 1.5), "fraction must be in"),
    ((100, 101, 0.3), "more than the 100 steps"),
    ((400, 301, 0.3), "do not fit in the guided noise range"),
    ((800, 50, 0.3), "unguided steps do not fit"),
    ((10, 0, 0.3), "at least 1 guided step"),
])
def test_impossible_schedules_are_refused(args, message):
    with pytest.raises(InputError, match=message):
        uneven_timesteps(*args)


# --------------------------------------------------------------------------------------------- extraction
def test_extraction_shapes_dtypes_and_top1_is_argmax(model, square, representation):
    """Section 4 / C4 / C10: 6 layers of up_blocks.1, [P, heads, F, 1], fp16 values, uint8 indices equal to
    the argmax of the full maps of the same noisy forward."""
    rep = representation
    names = [r.name for r in guided_layers(model)]
    assert rep.layer_names == names and len(names) == 6
    assert all(n.startswith("up_blocks.1.motion_modules.") for n in names)
    p = (SIZE // model.vae_scale_factor // 4) ** 2
    for values, indices in rep.layers.values():
        assert values.shape == indices.shape == (p, 4, FRAMES, 1)
        assert values.dtype == torch.float16 and indices.dtype == torch.uint8
    assert (rep.family, rep.num_frames, rep.width, rep.height, rep.k, rep.timestep) == (
        "animatediff", FRAMES, SIZE, SIZE, 1, 400)
    assert rep.nbytes * FRAMES // 3 * 2 == rep.dense_nbytes  # 3 bytes per row instead of 2·F

    # the full maps of the same forward (frames spread over the clip, seeded VAE sample and noise)
    frames = square[torch.linspace(0, 15, FRAMES).long()]
    z0 = model.encode_video(frames, generator=torch.Generator().manual_seed(SEED))
    z_t = add_noise(model.scheduler, z0, seeded_noise(z0.shape, SEED), 400)
    full = AttentionCapture("probs")
    with torch.no_grad(), attach(model.denoiser, guided_layers(model), full):
        model.predict(z_t, 400, model.encode_prompt([""]))
    for name, (values, indices) in rep.layers.items():
        probs = full.last(name)
        assert torch.equal(indices[..., 0].long(), probs.argmax(-1))
        assert torch.allclose(values[..., 0].float(), probs.amax(-1), atol=1e-3)


def test_extraction_stops_after_the_last_guided_block(model, square):
    calls = []
    hook = model.denoiser.up_blocks[2].register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        rep = extract_motion_representation(model, square, num_frames=4, width=SIZE, height=SIZE, seed=1, k=2)
    finally:
        hook.remove()
    assert not calls and rep.k == 2
    assert all(v.shape[-1] == 2 and (v[..., 0] >= v[..., 1]).all() for v, _ in rep.layers.values())


def test_unet3d_guides_its_up_blocks_1_temporal_attentions(unet3d_model, square):
    rep = extract_motion_representation(unet3d_model, square, num_frames=4, width=32, height=32, seed=0)
    assert rep.layer_names == [r.name for r in unet3d_model.temporal_attention_layers()
                               if r.name.startswith("up_blocks.1.temp_attentions.")]
    assert rep.family == "unet3d" and len(rep.layer_names) == 4  # tiny: 2 temporal transformers x attn1/attn2


def test_generation_starts_from_the_extraction_noise(model, square):
    """C9 / Q5: z_T of a generation with the extraction's seed is the ε that noised the reference."""
    seen = {}
    hook = model.denoiser.register_forward_pre_hook(
        lambda m, a, k: None if seen else seen.update(z_t=a[0] if a else k["sample"]), with_kwargs=True)
    try:
        extract_motion_representation(model, square, num_frames=4, width=SIZE, height=SIZE, seed=11)
    finally:
        hook.remove()
    frames = square[torch.linspace(0, 15, 4).long()]
    z0 = model.encode_video(frames, generator=torch.Generator().manual_seed(11)).float()
    ac = model.scheduler.alphas_cumprod[400]
    eps = (seen["z_t"].float() - ac.sqrt() * z0) / (1 - ac).sqrt()

    def first_latents(seed):
        rec = Record()
        sample(model, request(num_frames=4, seed=seed, steps=1, cfg=1.0), hooks=[rec], decode=False)
        return rec.initial

    assert torch.allclose(eps, first_latents(11), atol=1e-4)
    assert not torch.allclose(eps, first_latents(12), atol=1e-1)  # another seed breaks the coupling


# --------------------------------------------------------------------------------------------- guidance
def test_weight_zero_reproduces_plain_sampling_bit_for_bit_and_guidance_changes_it(model, representation):
    from dataclasses import replace

    ts = uneven_timesteps(QUICK.steps, QUICK.guided_steps, QUICK.guidance_fraction)
    plain = sample(model, request(), hooks=[Schedule(ts)], decode=False)
    labels = []
    off = sample(apply_motion_clone(model, representation, replace(QUICK, weight=0.0)), request(), decode=False,
                 progress=lambda i, n, info: labels.append(info["guided"]))
    assert torch.equal(off.latents, plain.latents) and off.timesteps == ts and not any(labels)

    rec = Record()
    on = sample(apply_motion_clone(model, representation, replace(QUICK, weight=2000.0, warm_up=2)), request(),
                hooks=[rec], decode=False, progress=lambda i, n, info: labels.append(info["label"]))
    assert on.info["guided_steps"] == QUICK.guided_steps
    assert labels[-6:] == ["motion guidance"] * 5 + ["sampling"]
    assert not torch.allclose(on.latents, plain.latents, atol=1e-4)
    # E = λ · r(i) · L, as the sampler saw it
    for step, scratch in rec.steps[:QUICK.guided_steps]:
        ramp = guidance_ramp(step, QUICK.guided_steps, 2, 0)
        assert scratch["energy"] == pytest.approx(2000.0 * ramp * scratch["motion_loss"], rel=1e-5)
    assert all(chain_of(r.module) is None for r in model.temporal_attention_layers())


def test_guided_samples_follow_the_reference_motion_more_closely(model, representation):
    """The motion statistic: each result is noised at t = 400 with the seed's noise, as the reference was,
    and its temporal-attention top-1 pattern in the guided layers is compared with the reference's (the
    fraction of (position, head, query frame) rows that pick the same key frame). A random tiny model
    cannot draw the square, but this is exactly what MotionClone's energy steers. Its maps are nearly flat
    (top-1 ≈ 0.17 vs 0.125 uniform over 8 frames), so λ is raised to make 5 steps count."""
    from dataclasses import replace

    results = {}
    for weight in (0.0, 1.0e5):
        out = sample(apply_motion_clone(model, representation, replace(QUICK, weight=weight)), request(), decode=False)
        results[weight] = motion_agreement(representation, representation_from_latents(model, out.latents, seed=SEED))
    plain, guided = results[0.0], results[1.0e5]
    assert guided["index_agreement"] > plain["index_agreement"] + 0.005, results
    assert guided["value_abs_diff_mean"] < plain["value_abs_diff_mean"], results


def test_cancel_mid_guidance_restores_the_model(model, representation):
    flag = []
    guided = apply_motion_clone(model, representation, QUICK)
    with pytest.raises(Cancelled):
        sample(guided, request(), decode=False, progress=lambda i, n, info: flag.append(i), cancel=lambda: len(flag) >= 2)
    assert len(flag) == 2 and torch.is_grad_enabled()
    assert all(chain_of(r.module) is None for r in model.temporal_attention_layers())


# --------------------------------------------------------------------------------------------- files
def test_representation_round_trips_through_safetensors(representation, tmp_path):
    path = representation.save(tmp_path / "motion")
    assert path.name == "motion.safetensors" and not list(tmp_path.glob("*.tmp"))
    loaded = MotionRepresentation.load(path)
    assert loaded.describe() == representation.describe() and loaded.layer_names == representation.layer_names
    for name, (v, i) in representation.layers.items():
        lv, li = loaded.layers[name]
        assert torch.equal(lv, v) and torch.equal(li, i) and li.dtype == torch.uint8
    assert path.stat().st_size < representation.nbytes + 4096
    assert index_dtype_for(256) == torch.uint8 and index_dtype_for(257) == torch.int16
    assert index_dtype_for(40000) == torch.int32


def test_foreign_or_broken_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"lora.weight": torch.zeros(2)}, tmp_path / "lora.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match="not a MotionKit motion representation"):
        MotionRepresentation.load(tmp_path / "lora.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(InputError, match="not a readable"):
        MotionRepresentation.load(tmp_path / "broken.safetensors")
    with pytest.raises(InputError, match="does not exist"):
        MotionRepresentation.load(tmp_path / "missing.safetensors")


# --------------------------------------------------------------------------------------------- bad input
def test_representation_for_another_model_size_or_length_is_refused(model, unet3d_model, representation):
    guided = apply_motion_clone(model, representation, QUICK)
    for changes, message in [({"width": 96}, "extracted at 64x64"), ({"num_frames": 4}, "with 8 frames")]:
        with pytest.raises(AdapterMismatchError, match=message):
            sample(guided, request(**changes), decode=False)
    with pytest.raises(AdapterMismatchError, match="extracted with a animatediff model"):
        apply_motion_clone(unet3d_model, representation, QUICK)
    with pytest.raises(AdapterMismatchError, match="does not have"):
        renamed = MotionRepresentation(**{**representation.__dict__, "layers": {
            "up_blocks.1.nothing.attn1": next(iter(representation.layers.values()))}})
        renamed.check_compatible(model, width=SIZE, height=SIZE, num_frames=FRAMES)
    assert all(chain_of(r.module) is None for r in model.temporal_attention_layers())


@pytest.mark.parametrize("kwargs, message", [
    ({"k": 0}, "k must be between 1 and"),
    ({"k": FRAMES + 1}, "k must be between 1 and"),
    ({"timestep": 1000}, "timestep must be in"),
    ({"width": 42}, "multiples of"),
    ({"blocks": ["up_blocks.7"]}, "No temporal attention layer"),
])
def test_bad_extraction_arguments(model, square, kwargs, message):
    args = dict(num_frames=FRAMES, width=SIZE, height=SIZE, seed=0)
    args.update(kwargs)
    with pytest.raises(InputError, match=message):
        extract_motion_representation(model, square, **args)


def test_bad_guidance_settings(model, representation):
    from dataclasses import replace

    with pytest.raises(InputError, match="fraction must be in"):
        apply_motion_clone(model, representation, replace(QUICK, guidance_fraction=0.0))
    with pytest.raises(InputError, match="do not fit in the guided noise range"):
        apply_motion_clone(model, representation, replace(QUICK, guided_steps=400, steps=500, guidance_fraction=0.3))
    with pytest.raises(InputError, match="more than the 3 steps"):
        sample(apply_motion_clone(model, representation, replace(QUICK, steps=None)), request(steps=3), decode=False)
    with pytest.raises(InputError, match="Unknown MotionClone preset"):
        apply_motion_clone(model, representation, "fast")
    with pytest.raises(InputError, match="DDIM"):
        sample(apply_motion_clone(model, representation, QUICK), request(scheduler="euler"), decode=False)
    with pytest.raises(InputError, match="needs a motion representation"):
        MotionCloneGuidance("not a representation")


def test_presets_scale_to_the_sampler_steps():
    """A preset sets the schedule's shape; the sampler's steps are what runs (guided steps and ramps scale)."""
    from dataclasses import replace

    camera = PRESETS["camera"]
    assert camera.for_steps(100) == camera  # the reference's own step count: nothing changes
    assert camera.for_steps(30) == replace(camera, steps=30, guided_steps=15, warm_up=3, cool_down=3)
    assert PRESETS["object"].for_steps(30) == replace(PRESETS["object"], steps=30, guided_steps=18, warm_up=1,
                                                      cool_down=1)
    assert camera.for_steps(1).guided_steps == 1  # at least one guided step
    custom = MotionCloneConfig(steps=None, guided_steps=4, warm_up=1, cool_down=1)
    assert custom.for_steps(7) == replace(custom, steps=7)  # made for any count: taken as is
    for preset in PRESETS.values():
        for n in (10, 25, 30, 50):
            c = preset.for_steps(n)
            assert c.guidance_fraction == preset.guidance_fraction and c.weight == preset.weight
            assert abs(c.guided_steps / n - preset.guided_steps / preset.steps) <= 0.5 / n + 1e-9
            c.check(n)


def test_sampler_steps_run_with_a_preset_made_for_other_steps(model, representation, caplog):
    config = MotionCloneConfig(steps=12, guided_steps=10, guidance_fraction=0.9, warm_up=2, cool_down=0)
    guided = apply_motion_clone(model, representation, config)
    labels = []
    with caplog.at_level("INFO", logger="motion_core.methods.motion_clone"):
        out = sample(guided, request(steps=6), decode=False, progress=lambda i, n, info: labels.append(info["label"]))
    assert out.timesteps == uneven_timesteps(6, 5, 0.9) and out.info["guided_steps"] == 5
    assert labels == ["motion guidance"] * 5 + ["sampling"]
    assert "made for 12 steps (10 guided" in caplog.text and "sampler's 6 steps: 5 guided" in caplog.text
    hook = guided.hooks[-1]
    assert hook.config == config and hook.schedule(6).warm_up == 1  # the stored preset is not changed
    with pytest.raises(InputError, match="scaled to the sampler's 1000 steps .500 guided.*do not fit"):
        apply_motion_clone(model, representation, "camera").hooks[-1].timesteps(model, request(steps=1000))


def test_apply_node_preset_runs_the_sampler_node_steps(model, representation, monkeypatch):
    """The graph's steps run: camera (made for 100 steps) on a 4-step Motion Sampler guides 2 of 4 steps."""
    from nodes import host
    from nodes.nodes_motionclone import MotionKitApplyMotionClone
    from nodes.nodes_sampling import MotionKitSampler

    (guided,) = MotionKitApplyMotionClone().apply(model, representation, "camera", 2000.0, 50, 0.3, 10, 10)
    assert guided.hooks[-1].config == PRESETS["camera"]
    steps = []
    monkeypatch.setattr(host.Progress, "__call__",
                        lambda self, i, n, info=None: steps.append((i, n, (info or {}).get("label"))))
    (frames,) = MotionKitSampler().sample(guided, "a cat running", "", SEED, 4, REFERENCE_CFG, SIZE, SIZE, FRAMES,
                                          "ddim", 1)
    assert frames.shape == (FRAMES, SIZE, SIZE, 3)
    assert [n for _, n, _ in steps] == [4] * 4
    assert [label for _, _, label in steps] == ["motion guidance"] * 2 + ["sampling"] * 2


def test_sparsectrl_that_does_not_fit_is_refused(model, unet3d_model, representation, square):
    wrong = tiny_sparsectrl(model, block_out_channels=(32, 32, 64, 32))
    with pytest.raises(AdapterMismatchError, match="block_out_channels"):
        apply_motion_clone(model, representation, QUICK,
                           sparsectrl=SparseCtrlCondition(wrong, square[:1]))
    with pytest.raises(AdapterMismatchError, match="trained for AnimateDiff"):
        SparseCtrlHook(SparseCtrlCondition(tiny_sparsectrl(model), square[:1])).prepare(unet3d_model, 4, 32, 32, 0)
    with pytest.raises(InputError, match="outside the 8 frames"):
        SparseCtrlCondition(tiny_sparsectrl(model), square[:1], frame_indices=(8,)).resolved_indices(FRAMES)
    with pytest.raises(InputError, match="one image per index"):
        SparseCtrlCondition(tiny_sparsectrl(model), square[:2], frame_indices=(0, 3, 5))


# --------------------------------------------------------------------------------------------- SparseCtrl
@pytest.mark.parametrize("kind", ["rgb", "scribble"])
def test_sparsectrl_condition_tensors_and_zeroed_input(model, square, kind):
    """C12: condition non-zero only at the chosen frames, mask [1,1,F,h,w]; the residuals do not depend on
    the noisy latent (SparseCtrl zeroes it) and carry no gradient."""
    hook = SparseCtrlHook(SparseCtrlCondition(tiny_sparsectrl(model, kind), square[:1], frame_indices=(0, -1)))
    hook.prepare(model, FRAMES, SIZE, SIZE, seed=0)
    cond, mask = hook._cond, hook._mask
    h = SIZE // model.vae_scale_factor if kind == "rgb" else SIZE
    assert cond.shape == (1, 4 if kind == "rgb" else 3, FRAMES, h, h) and mask.shape == (1, 1, FRAMES, h, h)
    used = cond.abs().flatten(3).sum(-1)[0].sum(0) > 0
    assert used.tolist() == [True] + [False] * (FRAMES - 2) + [True]
    assert mask[0, 0, :, 0, 0].tolist() == [1.0] + [0.0] * (FRAMES - 2) + [1.0]
    embeds = model.encode_prompt(["x"])
    a = hook.residuals(seeded_noise(model.latent_shape(1, FRAMES, SIZE, SIZE), 1).requires_grad_(True), 500, embeds)
    b = hook.residuals(seeded_noise(model.latent_shape(1, FRAMES, SIZE, SIZE), 2), 500, embeds)
    for x, y in zip(a["down_block_additional_residuals"], b["down_block_additional_residuals"]):
        assert torch.equal(x, y) and not x.requires_grad
    assert len(a["down_block_additional_residuals"]) == 1 + 4 * 2 + 3  # conv_in, 4 levels x 2 layers, 3 downsamplers


def test_image_to_video_with_guidance_runs_and_conditions(model, square):
    condition = SparseCtrlCondition(tiny_sparsectrl(model, "rgb"), square[:1], frame_indices=(0,), strength=1.0)
    args = dict(num_frames=4, width=SIZE, height=SIZE, seed=SEED)
    rep = extract_motion_representation(model, square, sparsectrl=condition, **args)
    plain_rep = extract_motion_representation(model, square, **args)
    assert rep.extra["sparsectrl"] == {"kind": "rgb", "frames": [0], "strength": 1.0}
    assert any(not torch.equal(rep.layers[n][0], plain_rep.layers[n][0]) for n in rep.layers)
    config = MotionCloneConfig(steps=3, guided_steps=2, guidance_fraction=0.9, warm_up=0, cool_down=0)
    with_ctrl = sample(apply_motion_clone(model, rep, config, sparsectrl=condition), request(num_frames=4, steps=3),
                       decode=False)
    without = sample(apply_motion_clone(model, rep, config), request(num_frames=4, steps=3), decode=False)
    assert with_ctrl.info["guided_steps"] == 2
    assert torch.isfinite(with_ctrl.latents).all() and not torch.allclose(with_ctrl.latents, without.latents)


# --------------------------------------------------------------------------------------------- GroupNorm
def test_per_frame_norm_patch_and_its_measured_effect(model, square):
    """C11: the original per-frame GroupNorm equals diffusers' cross-frame one only when every frame has the
    same statistics; the measured effect on the representation is reported by groupnorm_effect."""
    name, module = model.temporal_modules()[0]
    x = torch.randn(2 * 4, module.norm.num_channels, 4, 4, generator=torch.Generator().manual_seed(0))
    same = x[:1].repeat(2 * 4, 1, 1, 1)
    with torch.no_grad():
        cross_x, cross_same = module(x, num_frames=4), module(same, num_frames=4)
        with per_frame_motion_norm(model) as count:
            assert count == len(model.temporal_modules())
            per_x, per_same = module(x, num_frames=4), module(same, num_frames=4)
    assert torch.allclose(cross_same, per_same, atol=1e-5) and not torch.allclose(cross_x, per_x, atol=1e-3)
    assert "forward" not in vars(module.norm)  # restored
    effect = groupnorm_effect(model, square, num_frames=4, width=SIZE, height=SIZE, seed=0)
    assert 0.0 < effect["index_changed_fraction"] < 0.5 and 0.0 < effect["value_abs_diff_mean"] < 0.05


# --------------------------------------------------------------------------------------------- nodes, CLI
def test_cli_clone_smoke_and_representation_reuse(tmp_path, capsys):
    from motion_core.cli import main
    from motion_core.video import load_video

    rep = tmp_path / "square.safetensors"
    assert main(["clone", "--out", str(tmp_path / "a.mp4"), "--steps", "3", "--frames", "4",
                 "--save-representation", str(rep)]) == 0
    err = capsys.readouterr()
    assert "SMOKE TEST" in err.err and "moving right" in err.err and "1/3 guided" not in err.out
    assert load_video(tmp_path / "a.mp4").num_frames == 4 and rep.is_file()
    assert main(["clone", "--representation", str(rep), "--out", str(tmp_path / "b.mp4"), "--steps", "3",
                 "--weight", "0"]) == 0
    assert "0/3 guided steps" in capsys.readouterr().out
    assert main(["clone", "--representation", str(rep), "--out", str(tmp_path / "c.mp4"), "--steps", "3",
                 "--frames", "6"]) == 1
    assert "with 4 frames" in capsys.readouterr().err


def _nodes():
    import nodes.nodes_motionclone as module

    return module.NODE_CLASS_MAPPINGS


def test_node_declarations():
    for name, cls in _nodes().items():
        assert name.startswith("MotionKit") and cls.CATEGORY.startswith("MotionKit/") and cls.DESCRIPTION
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for input_name, (kind, *options) in spec.get(section, {}).items():
                assert options and options[0].get("tooltip"), f"{name}.{input_name} has no tooltip"


def _workflow_prompt(name, dirs, tiny_animatediff4_paths, classes, monkeypatch, *, steps=3):
    """A shipped workflow converted to an API prompt, its checkpoint and motion module files (the names its
    loader gives) holding the tiny model, with a short schedule."""
    from workflow_convert import ui_to_api

    wf = json.loads((REPO / "workflows" / name).read_text(encoding="utf-8"))
    (loader,) = [n for n in wf["nodes"] if n["type"] == "MotionKitLoadVideoModel"]
    dirs.put_comfy_animatediff_files(loader["widgets_values"], tiny_animatediff4_paths.sd15,
                                     tiny_animatediff4_paths.motion_adapter, monkeypatch)
    prompt = ui_to_api(wf, classes)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "MotionKitSampler":
            inputs.update(steps=steps, width=SIZE, height=SIZE, frames=4)
        elif node["class_type"] == "MotionKitExtractMotionRepresentation":
            inputs.update(width=SIZE, height=SIZE, frames=4)
        elif node["class_type"] == "MotionKitLoadSparseCtrl":
            inputs.update(sparsectrl="tiny_sparsectrl_rgb")
        elif node["class_type"] == "MotionKitApplyMotionClone":
            inputs.update(preset="custom", guided_steps=steps - 1, warm_up=1, cool_down=1)
    return wf, prompt


@pytest.mark.parametrize("name", ["motionclone_camera.json", "motionclone_object.json",
                                  "motionclone_image_to_video.json"])
def test_workflows_run_end_to_end(name, tmp_path, monkeypatch, tiny_animatediff4_paths):
    from executor import STAND_INS, Executor, isolate_host
    from motion_core.video import write_moving_square_video

    import nodes as node_package

    dirs = isolate_host(tmp_path, monkeypatch)
    write_moving_square_video(dirs.input / "reference.mp4", num_frames=16, fps=8, width=SIZE, height=SIZE,
                              square=16, velocity=(4, 0))
    if "image" in name:
        from PIL import Image

        Image.fromarray((moving_square_frames(1, SIZE, SIZE)[0] * 255).byte().numpy()).save(dirs.input / "first_frame.png")
        model_dir = dirs.models / "controlnet" / "tiny_sparsectrl_rgb"
        from motion_core.backbones import load_video_model

        tiny_sparsectrl(load_video_model(tiny_animatediff4_paths.pipeline, device="cpu")).save_pretrained(model_dir)
    classes = {**STAND_INS, **node_package.NODE_CLASS_MAPPINGS, **_nodes()}
    wf, prompt = _workflow_prompt(name, dirs, tiny_animatediff4_paths, classes, monkeypatch)
    result = Executor(classes).run(prompt)
    frames = [v[0] for k, v in result.outputs.items() if prompt[k]["class_type"] == "MotionKitSampler"][0]
    assert frames.shape == (4, SIZE, SIZE, 3) and result.files()
    saved = list(dirs.motion_adapters.glob("*.safetensors"))
    if any(n["type"] == "MotionKitSaveMotionRepresentation" for n in wf["nodes"]):
        assert len(saved) == 1 and MotionRepresentation.load(saved[0]).num_frames == 4
