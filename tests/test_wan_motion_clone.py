"""MotionClone on Wan (attention motion flow, motion_core.methods.motion_clone_wan) on the tiny Wan model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from motion_core.adapters.representation import MotionRepresentation
from motion_core.attention import AttentionCapture, attach, chain_of
from motion_core.attention.flow_kernel import frame_attention_stats
from motion_core.errors import AdapterMismatchError, InputError
from motion_core.methods.motion_clone import (
    MotionCloneConfig,
    apply_motion_clone,
    extract_motion_representation,
    uneven_timesteps,
)
from motion_core.methods.motion_clone_wan import (
    WAN_PRESETS,
    attention_flow_energy,
    reference_attention_flow,
    wan_guided_blocks,
)
from motion_core.sampling import SampleRequest, SamplingHook, sample
from motion_core.video import moving_square_frames

REPO = Path(__file__).resolve().parent.parent
SIZE, FRAMES = 32, 9  # tiny Wan: 3 latent frames of 4x4 tokens (N = 48)
QUICK = MotionCloneConfig(steps=6, guided_steps=3, guidance_fraction=0.5, warm_up=1, cool_down=0, weight=2000.0)


@pytest.fixture(scope="module")
def wan():
    from motion_core.backbones import load_video_model
    from motion_core.tiny import ensure_tiny_model

    return load_video_model(ensure_tiny_model("wan"), family="wan", device="cpu")


@pytest.fixture(scope="module")
def square():
    return moving_square_frames(num_frames=17, width=SIZE, height=SIZE)


@pytest.fixture(scope="module")
def representation(wan, square):
    return extract_motion_representation(wan, square, num_frames=FRAMES, width=SIZE, height=SIZE, seed=3)


def request(**kw):
    base = dict(prompt=["a square"], negative_prompt="", width=SIZE, height=SIZE, num_frames=FRAMES, steps=6,
                cfg=4.0, seed=3)
    return SampleRequest(**{**base, **kw})


class Schedule(SamplingHook):
    def __init__(self, timesteps):
        self.list = list(timesteps)

    def timesteps(self, model, request):
        return self.list


def naive_reference(q, k, grid, scale):
    """Head-averaged per-frame softmax from the full [N, N] map: mass per key frame and argmax."""
    f, h, w = grid
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale  # [B, H, N, N]
    b, heads, n, _ = scores.shape
    per_frame = scores.view(b, heads, n, f, h * w)
    mass = torch.softmax(scores, dim=-1).view(b, heads, n, f, h * w).sum(-1).mean(1)
    argmax = torch.softmax(per_frame, dim=-1).mean(1).argmax(-1)
    return mass, argmax


# ------------------------------------------------------------------------------------------ processor
def test_wan_chain_processor_reproduces_the_attention_and_sees_post_rope_qk(wan):
    """An installed stage must not change the layer output (same math as WanAttnProcessor: norms, RoPE,
    SDPA), and the q/k it sees are the rotated ones the real attention multiplies."""
    torch.manual_seed(0)
    z = torch.randn(1, wan.latent_channels, 3, 8, 8)
    embeds = wan.encode_prompt(["x"])
    with torch.no_grad():
        plain = wan.predict(z, 500, embeds)
        capture = AttentionCapture("qk")
        refs = wan.temporal_attention_layers()
        inputs = {}
        hook = refs[0].module.register_forward_pre_hook(
            lambda m, args: inputs.update({refs[0].name: args[0].detach()}))  # returns None: args untouched
        with attach(wan.denoiser, refs, capture):
            staged = wan.predict(z, 500, embeds)
        hook.remove()
    assert torch.allclose(plain, staged, atol=1e-5, rtol=1e-5)
    assert all(chain_of(r.module) is None for r in refs)
    q, k = capture.last(refs[0].name)
    assert q.shape == (1, 2, 48, 16) and k.shape == q.shape
    # the stage saw the rotated q: RoPE changes the vectors but keeps every (token, head) norm
    x = inputs[refs[0].name]
    attn = refs[0].module
    pre = attn.norm_q(attn.to_q(x)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
    assert not torch.allclose(pre, q, atol=1e-3)
    assert torch.allclose(pre.norm(dim=-1), q.norm(dim=-1), atol=1e-5)


# ------------------------------------------------------------------------------------------ extraction
def test_extraction_shapes_dtypes_metadata(wan, representation):
    rep = representation
    assert rep.family == "wan" and rep.is_attention_flow and rep.timestep == 600
    assert rep.extra["grid"] == [3, 4, 4] and rep.extra["variant"] == wan.variant
    assert rep.extra["blocks"] == wan_guided_blocks(wan) == ["blocks.0", "blocks.1"]
    assert rep.layer_names == ["blocks.0.attn1", "blocks.1.attn1"]
    for mass, argmax in rep.layers.values():
        assert mass.shape == (48, 3) and mass.dtype == torch.float16
        assert argmax.shape == (48, 3) and argmax.dtype == torch.int16
        assert torch.allclose(mass.float().sum(-1), torch.ones(48), atol=2e-3)
        assert int(argmax.min()) >= 0 and int(argmax.max()) < 16
    assert rep.nbytes == 2 * 48 * 3 * 4 and rep.dense_nbytes == 2 * 48 * 48 * 2


def test_stored_argmax_equals_the_naive_full_map_argmax(wan, square):
    """The extraction's chunked statistics equal the full N x N map's (same forward, q/k captured)."""
    capture = AttentionCapture("qk")
    refs = wan.temporal_attention_layers()
    with attach(wan.denoiser, refs, capture):
        rep = extract_motion_representation(wan, square, num_frames=FRAMES, width=SIZE, height=SIZE, seed=3)
    for name, (mass, argmax) in rep.layers.items():
        q, k = capture.last(name)
        naive_mass, naive_argmax = naive_reference(q, k, (3, 4, 4), (16 ** -0.5) / 2.0)
        assert torch.equal(argmax.long(), naive_argmax[0])
        assert torch.allclose(mass.float(), naive_mass[0].float(), atol=1e-3)


def test_reference_statistics_in_small_chunks_equal_the_naive_map():
    torch.manual_seed(1)
    q, k = torch.randn(2, 3, 60, 8), torch.randn(2, 3, 60, 8)
    mass, argmax = reference_attention_flow(q, k, frames=3, height=4, width=5, scale=0.3, max_chunk_elements=200)
    naive_mass, naive_argmax = naive_reference(q, k, (3, 4, 5), 0.3)
    assert torch.equal(argmax, naive_argmax) and torch.allclose(mass.double(), naive_mass, atol=1e-6)


def test_extraction_refuses_bad_input(wan, square):
    with pytest.raises(InputError, match="4k"):
        extract_motion_representation(wan, square, num_frames=8, width=SIZE, height=SIZE)
    with pytest.raises(InputError, match="k = 1"):
        extract_motion_representation(wan, square, num_frames=FRAMES, width=SIZE, height=SIZE, k=2)
    with pytest.raises(InputError, match="timestep"):
        extract_motion_representation(wan, square, num_frames=FRAMES, width=SIZE, height=SIZE, timestep=1000)


# ------------------------------------------------------------------------------------------ energy
def test_energy_gradient_matches_finite_differences():
    """float64 gradcheck of the energy through the kernel (q and k), both terms, heads averaged."""
    torch.manual_seed(2)
    f, h, w = 3, 2, 3
    n = f * h * w
    q = torch.randn(1, 2, n, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, n, 4, dtype=torch.float64, requires_grad=True)
    ref_mass = torch.softmax(torch.randn(n, f, dtype=torch.float64), -1)
    ref_argmax = torch.randint(0, h * w, (n, f))

    def energy(q, k):
        stats = frame_attention_stats(q, k, frames=f, height=h, width=w, scale=0.4, backend="torch")
        return attention_flow_energy(stats.position.mean(1), stats.mass.mean(1), ref_mass, ref_argmax,
                                     frames=f, height=h, width=w)

    assert torch.autograd.gradcheck(energy, (q, k), eps=1e-6, atol=1e-6)


def test_energy_gradient_through_the_model_matches_finite_differences(representation):
    """Directional derivative of E(z) through the whole tiny Wan (float64), both terms: checks that the
    processor's q/k (norms, RoPE) and the kernel's backward give the true gradient w.r.t. the latent. The
    tolerance covers diffusers' RMSNorm, which computes its variance in float32 even in a float64 model."""
    from motion_core.backbones import load_video_model
    from motion_core.methods.motion_clone_wan import AttentionFlowEnergy
    from motion_core.tiny import ensure_tiny_model

    model = load_video_model(ensure_tiny_model("wan"), family="wan", device="cpu")
    model.denoiser.to(torch.float64)
    stage = AttentionFlowEnergy(representation.layers, (3, 4, 4))
    embeds = model.encode_prompt(["a square"]).double()
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, 16, 3, 8, 8, dtype=torch.float64, generator=gen)
    d = torch.randn(z.shape, dtype=torch.float64, generator=gen)

    def energy(latents):
        stage.arm()
        model.predict(latents, 800, embeds)
        return stage.take()

    with attach(model.denoiser, representation.layer_names, stage):
        x = z.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(energy(x), x)
        eps = 1e-3
        with torch.no_grad():
            fd = float(energy(z + eps * d) - energy(z - eps * d)) / (2 * eps)
    analytic = float((g * d).sum())
    assert abs(fd) > 1e-6 and analytic == pytest.approx(fd, rel=2e-2)


def test_energy_terms_are_masked_and_zero_at_the_reference():
    f, h, w = 2, 2, 2
    n = f * h * w
    ref_argmax = torch.randint(0, 4, (n, f))
    pos = torch.stack([ref_argmax % w, ref_argmax // w], -1).double()[None]
    mass = torch.softmax(torch.randn(1, n, f, dtype=torch.float64), -1)
    zero = attention_flow_energy(pos, mass, mass[0], ref_argmax, frames=f, height=h, width=w)
    assert float(zero) == 0.0
    # a displacement inside a token's own frame is not motion: masked out of the flow term
    moved = pos.clone()
    for i in range(n):
        moved[0, i, i // (h * w)] += 1.0
    assert float(attention_flow_energy(moved, mass, mass[0], ref_argmax, frames=f, height=h, width=w,
                                       terms="flow")) == 0.0
    moved[0, 0, 1] += 1.0  # a cross-frame pair
    assert float(attention_flow_energy(moved, mass, mass[0], ref_argmax, frames=f, height=h, width=w,
                                       terms="flow")) > 0.0
    with pytest.raises(InputError):
        attention_flow_energy(pos, mass, mass[0], ref_argmax, frames=f, height=h, width=w, terms="nope")


# ------------------------------------------------------------------------------------------ guidance
def test_weight_zero_is_plain_sampling_bit_for_bit_and_guidance_changes_the_output(wan, representation):
    ts = uneven_timesteps(QUICK.steps, QUICK.guided_steps, QUICK.guidance_fraction)
    plain = sample(wan, request(), hooks=[Schedule(ts)], decode=False)
    off = sample(apply_motion_clone(wan, representation, replace(QUICK, weight=0.0)), request(), decode=False)
    assert torch.equal(off.latents, plain.latents) and off.timesteps == ts

    labels: list[str] = []
    guided = apply_motion_clone(wan, representation, QUICK)
    hook = guided.hooks[-1]
    on = sample(guided, request(), decode=False, progress=lambda i, n, info: labels.append(info["label"]))
    assert on.info["guided_steps"] == 3 and labels[:3] == ["motion guidance"] * 3
    assert not torch.allclose(on.latents, plain.latents, atol=1e-4)
    assert len(hook.last_energies) == 3 and all(e > 0 for e in hook.last_energies)
    assert all(chain_of(r.module) is None for r in wan.temporal_attention_layers())


def test_guidance_lowers_the_motion_energy(wan, representation):
    """The guided step reduces the energy it follows: E after vs before one guided update, same latent."""
    from motion_core.methods.motion_clone_wan import AttentionFlowEnergy
    from motion_core.sampling import seeded_noise

    z = seeded_noise(wan.latent_shape(1, FRAMES, SIZE, SIZE), 3)
    embeds = wan.encode_prompt(["a square"])
    stage = AttentionFlowEnergy(representation.layers, (3, 4, 4))

    def energy(latents):
        stage.arm()
        wan.predict(latents, 900, embeds)
        return stage.take()

    with attach(wan.denoiser, representation.layer_names, stage):
        x = z.clone().requires_grad_(True)
        e0 = energy(x)
        (g,) = torch.autograd.grad(e0, x)
        with torch.no_grad():
            e1 = energy(z - 0.5 * g / g.norm() * z.norm() * 0.01)
    assert float(e1) < float(e0.detach())


def test_presets_and_mismatch_are_refused(wan, representation):
    hook = apply_motion_clone(wan, representation, "camera").hooks[-1]
    assert hook.config == WAN_PRESETS["camera"]
    with pytest.raises(InputError, match="i2v_rgb"):
        apply_motion_clone(wan, representation, "i2v_rgb")
    for kw in (dict(width=40), dict(num_frames=13)):
        with pytest.raises(AdapterMismatchError):
            sample(apply_motion_clone(wan, representation, QUICK), request(**kw), decode=False)


# ------------------------------------------------------------------------------------------ files
def test_representation_round_trips_and_mismatches_are_refused(wan, representation, tmp_path):
    path = representation.save(tmp_path / "wan_motion")
    loaded = MotionRepresentation.load(path)
    assert loaded.is_attention_flow and loaded.extra == json.loads(json.dumps(representation.extra))
    for name, (mass, argmax) in representation.layers.items():
        lm, la = loaded.layers[name]
        assert torch.equal(lm, mass) and torch.equal(la, argmax) and la.dtype == torch.int16
    loaded.check_compatible(wan, width=SIZE, height=SIZE, num_frames=FRAMES)
    with pytest.raises(AdapterMismatchError, match="32x32"):
        loaded.check_compatible(wan, width=SIZE, height=SIZE + 8, num_frames=FRAMES)
    with pytest.raises(AdapterMismatchError, match="frames"):
        loaded.check_compatible(wan, width=SIZE, height=SIZE, num_frames=13)
    other = MotionRepresentation(**{**loaded.__dict__, "extra": {**loaded.extra, "variant": "wan2.1-t2v-14b"}})
    with pytest.raises(AdapterMismatchError, match="14b"):
        other.check_compatible(wan, width=SIZE, height=SIZE, num_frames=FRAMES)
    with pytest.raises(InputError, match="tokens"):
        MotionRepresentation(**{**loaded.__dict__, "extra": {**loaded.extra, "grid": [3, 4, 5]}})


# ------------------------------------------------------------------------------------------ nodes / workflow
def test_wan_motionclone_workflow_runs_end_to_end(tmp_path, monkeypatch):
    from executor import STAND_INS, Executor, isolate_host
    from workflow_convert import ui_to_api

    import nodes as node_package
    from motion_core.video import write_moving_square_video

    dirs = isolate_host(tmp_path, monkeypatch)
    write_moving_square_video(dirs.input / "reference.mp4", num_frames=16, fps=8, width=SIZE, height=SIZE,
                              square=8, velocity=(2, 0))
    wf = json.loads((REPO / "workflows" / "wan_motionclone.json").read_text(encoding="utf-8"))
    (loader,) = [n for n in wf["nodes"] if n["type"] == "MotionKitLoadVideoModel"]
    dirs.put_comfy_wan_files(loader["widgets_values"], tmp_path)  # the three files the workflow names
    classes = {**STAND_INS, **node_package.NODE_CLASS_MAPPINGS}
    prompt = ui_to_api(wf, classes)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "MotionKitSampler":
            inputs.update(steps=4, width=SIZE, height=SIZE, frames=FRAMES)
        elif node["class_type"] == "MotionKitExtractMotionRepresentation":
            inputs.update(width=SIZE, height=SIZE, frames=FRAMES)
            assert inputs["timestep"] == 600
        elif node["class_type"] == "MotionKitApplyMotionClone":
            inputs.update(preset="custom", guided_steps=2, warm_up=1, cool_down=1)
    result = Executor(classes).run(prompt)
    frames = [v[0] for k, v in result.outputs.items() if prompt[k]["class_type"] == "MotionKitSampler"][0]
    assert frames.shape == (FRAMES, SIZE, SIZE, 3) and result.files()
    saved = list(dirs.motion_adapters.glob("*.safetensors"))
    # ComfyUI-layout Wan files carry the real VAE layout: 8x spatial compression, then 2x2 patches
    assert len(saved) == 1 and MotionRepresentation.load(saved[0]).extra["grid"] == [3, SIZE // 16, SIZE // 16]


def test_cli_clone_wan_smoke(tmp_path, capsys):
    from motion_core.cli import main

    out = tmp_path / "clone.mp4"
    assert main(["clone", "--family", "wan", "--steps", "4", "--out", str(out),
                 "--save-representation", str(tmp_path / "rep")]) == 0
    err = capsys.readouterr().err
    assert "SMOKE TEST" in err and "MotionRepresentation(wan, 32x32x9" in err and "t=600" in err
    assert out.is_file() and MotionRepresentation.load(tmp_path / "rep.safetensors").is_attention_flow


def test_apply_node_uses_the_wan_presets(wan, representation):
    from nodes.nodes_motionclone import MotionKitApplyMotionClone

    node = MotionKitApplyMotionClone()
    (guided,) = node.apply(wan, representation, "object", 1500.0, 50, 0.3, 10, 10)
    assert guided.hooks[-1].config == replace(WAN_PRESETS["object"], weight=1500.0)
    with pytest.raises(InputError, match="not available on Wan"):
        node.apply(wan, representation, "i2v_rgb", 2000.0, 50, 0.3, 10, 10)


def test_guidance_runs_in_bfloat16(square):
    """Half-precision model: statistics and energy are computed in float32 from the bf16 q/k."""
    from motion_core.backbones import load_video_model
    from motion_core.tiny import ensure_tiny_model

    model = load_video_model(ensure_tiny_model("wan"), family="wan", device="cpu", dtype="bf16")
    rep = extract_motion_representation(model, square, num_frames=FRAMES, width=SIZE, height=SIZE, seed=3)
    assert all(m.dtype == torch.float16 and torch.isfinite(m.float()).all() for m, _ in rep.layers.values())
    guided = apply_motion_clone(model, rep, QUICK)
    out = sample(guided, request(), decode=False)
    assert torch.isfinite(out.latents).all() and all(e > 0 for e in guided.hooks[-1].last_energies)
