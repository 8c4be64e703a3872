"""The attention machinery (motion_core.attention) on the tiny 4-level AnimateDiff: install / remove,
idle stages change nothing, capture fidelity, top-k, the sparse energy and its gradient, composition
with each other and with peft LoRA, the injection extension point, early exit, no-graph-after."""

from __future__ import annotations

import copy

import pytest
import torch

from motion_core.attention import (
    AttentionCapture,
    AttentionStage,
    SparseMapEnergy,
    attach,
    chain_of,
    gather_probs,
    no_grad_after,
    run_until,
    sparse_map_mse,
)
from motion_core.errors import InputError
from motion_core.sampling import seeded_noise

FRAMES, SIZE = 4, 64


@pytest.fixture(scope="module")
def model(tiny_animatediff4_paths):
    from motion_core.backbones import load_video_model

    return load_video_model(tiny_animatediff4_paths.pipeline, device="cpu")


@pytest.fixture(scope="module")
def inputs(model):
    z = seeded_noise(model.latent_shape(1, FRAMES, SIZE, SIZE), 7)
    embeds = model.encode_prompt(["a cat"]).detach()
    return z, 500, embeds


def positions(model):
    """Latent positions at up_blocks.1, the 2nd decoder stage of the 4-level net (latent / 4 per side)."""
    return (SIZE // model.vae_scale_factor // 4) ** 2


def guided(model):
    return [r for r in model.temporal_attention_layers() if r.block == "up_blocks.1"]


def attention_modules(model):
    from diffusers.models.attention_processor import Attention

    return {n: m for n, m in model.denoiser.named_modules() if isinstance(m, Attention)}


class Idle(AttentionStage):
    def active(self, call):
        return False


class AddToQK(AttentionStage):
    """What Motion Inversion's Query-Key embedding does: add a tensor to the input of to_q / to_k."""

    def __init__(self, delta):
        self.delta = delta

    def modify_qk_input(self, call, hidden_states):
        return hidden_states + self.delta


@torch.no_grad()
def test_idle_stages_change_nothing_and_removal_restores_the_exact_processors(model, inputs):
    z, t, e = inputs
    before = {n: m.processor for n, m in attention_modules(model).items()}
    plain = model.predict(z, t, e)
    layers = model.temporal_attention_layers()
    with attach(model.denoiser, layers, Idle()) as handle:
        assert len(handle.layers) == len(layers) == 40
        assert all(chain_of(r.module) is not None for r in layers)
        assert torch.equal(model.predict(z, t, e), plain)  # bit for bit: the previous processor ran
    after = {n: m.processor for n, m in attention_modules(model).items()}
    assert all(after[n] is before[n] for n in before)


@torch.no_grad()
def test_active_chain_reproduces_diffusers_attention(model, inputs):
    z, t, e = inputs
    plain = model.predict(z, t, e)
    with attach(model.denoiser, model.temporal_attention_layers(), AttentionCapture("qk")):
        via_sdpa = model.predict(z, t, e)
    with attach(model.denoiser, model.temporal_attention_layers(), AttentionCapture("probs")):
        via_probs = model.predict(z, t, e)  # output = explicit probs @ V
    assert torch.allclose(via_sdpa, plain, atol=1e-5)
    assert torch.allclose(via_probs, plain, atol=1e-4)
    assert not torch.equal(via_probs, torch.zeros_like(via_probs))


@torch.no_grad()
def test_recorded_maps_reproduce_the_layer_output(model, inputs):
    """C3: probs @ V (heads merged, to_out) equals the module's own output; rows sum to 1; shape."""
    z, t, e = inputs
    ref = guided(model)[0]
    seen = {}
    hook = ref.module.register_forward_hook(
        lambda m, a, k, o: seen.update(x=a[0] if a else k["hidden_states"], y=o), with_kwargs=True)
    capture = AttentionCapture("probs")
    try:
        with attach(model.denoiser, [ref], capture):
            model.predict(z, t, e)
    finally:
        hook.remove()
    probs = capture.last(ref.name)
    attn = ref.module
    assert probs.shape == (positions(model), attn.heads, FRAMES, FRAMES)
    assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-6)
    x = seen["x"]
    v = attn.to_v(x)
    v = v.view(x.shape[0], FRAMES, attn.heads, v.shape[-1] // attn.heads).transpose(1, 2)
    out = (probs.to(v.dtype) @ v).transpose(1, 2).reshape(x.shape[0], FRAMES, -1)
    out = attn.to_out[1](attn.to_out[0](out))
    assert torch.allclose(out, seen["y"], atol=1e-5)


@torch.no_grad()
def test_top_k_is_argmax_and_values_are_the_map_entries(model, inputs):
    """C4 on every guided layer, with three captures composed on the same layers."""
    z, t, e = inputs
    layers = guided(model)
    full, top1, top2 = AttentionCapture("probs"), AttentionCapture("topk", k=1), AttentionCapture("topk", k=2)
    with attach(model.denoiser, layers, full), attach(model.denoiser, layers, top1), \
            attach(model.denoiser, layers, top2):
        assert len(chain_of(layers[0].module).stages) == 3
        model.predict(z, t, e)
    for ref in layers:
        probs = full.last(ref.name)
        v1, i1 = top1.last(ref.name)
        v2, i2 = top2.last(ref.name)
        assert torch.equal(i1[..., 0], probs.argmax(-1))
        assert torch.equal(v1, probs.gather(-1, i1))
        assert torch.equal(i2[..., :1], i1) and (v2[..., 0] >= v2[..., 1]).all()
    assert all(chain_of(r.module) is None for r in layers)


def test_stages_are_removed_in_any_order(model, inputs):
    ref = guided(model)[0]
    original = ref.module.processor
    a, b = attach(model.denoiser, [ref], Idle()), attach(model.denoiser, [ref], Idle())
    chain = chain_of(ref.module)
    a.remove()  # not the last one installed
    assert chain_of(ref.module) is chain and len(chain.stages) == 1
    b.remove()
    b.remove()  # idempotent
    assert ref.module.processor is original


def test_gather_and_sparse_mse_are_the_formula():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(6, 2, 5, 3, generator=g), torch.randn(6, 2, 5, 3, generator=g)
    probs = (q @ k.transpose(-1, -2) * 0.5).softmax(-1)
    idx = torch.randint(0, 5, (6, 2, 5, 1), generator=g)
    assert torch.allclose(gather_probs(q, k, 0.5, idx), probs.gather(-1, idx), atol=1e-7)
    values = torch.rand(3, 2, 5, 1, generator=g)  # one video of 3 positions, the call holds 2 videos
    per_video = [((probs[i * 3:(i + 1) * 3].gather(-1, idx[:3]) - values) ** 2).mean() for i in range(2)]
    got = sparse_map_mse(q, k, 0.5, values, idx[:3], batch=2)
    assert torch.allclose(got, sum(per_video), atol=1e-7)
    # C5: matching maps give 0 and a zero gradient
    qq = q[:3].clone().requires_grad_(True)
    exact = probs[:3].gather(-1, idx[:3])
    zero = sparse_map_mse(qq, k[:3], 0.5, exact, idx[:3])
    (grad,) = torch.autograd.grad(zero, qq)
    assert zero.item() < 1e-14 and grad.abs().max() < 1e-7


def test_energy_on_the_model_matches_its_formula_and_finite_differences(model, inputs):
    """C5/C6: the energy read from Q/K equals Σ_l mean((A[j*] − v)²) from the full maps, and its gradient
    w.r.t. the latents matches central differences (the model in float64)."""
    z, t, e = inputs
    layers = guided(model)
    g = torch.Generator().manual_seed(1)
    targets = {}
    for r in layers:
        p = positions(model)
        targets[r.name] = (torch.rand(p, r.module.heads, FRAMES, 1, generator=g).half(),
                           torch.randint(0, FRAMES, (p, r.module.heads, FRAMES, 1), generator=g).to(torch.uint8))
    energy, full = SparseMapEnergy(targets), AttentionCapture("probs")
    with attach(model.denoiser, layers, energy), attach(model.denoiser, layers, full), torch.no_grad():
        energy.arm()
        model.predict(z, t, e)
        total = energy.take()
    formula = sum(((full.last(n).gather(-1, i.long()) - v.float()) ** 2).mean() for n, (v, i) in targets.items())
    assert torch.allclose(total, formula, rtol=1e-5)
    assert not energy.armed and energy.take() is None

    double = copy.deepcopy(model).to(torch.float64)
    layers64 = [r for r in double.temporal_attention_layers() if r.block == "up_blocks.1"]
    energy64 = SparseMapEnergy(targets)
    z64, e64 = z.double(), e.double()

    def energy_at(latents):
        energy64.arm()
        double.predict(latents, t, e64)
        return energy64.take()

    with attach(double.denoiser, layers64, energy64):
        leaf = z64.clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(energy_at(leaf), leaf)
        with torch.no_grad():
            flat = grad.abs().flatten()
            for index in [int(flat.argmax()), int(flat.argsort()[len(flat) // 2]), 3]:
                step = torch.zeros_like(z64).flatten()
                step[index] = 1e-3
                step = step.view_as(z64)
                numeric = (energy_at(z64 + step) - energy_at(z64 - step)) / 2e-3
                assert torch.allclose(numeric, grad.flatten()[index], rtol=1e-4, atol=1e-10), index


def test_no_graph_after_the_last_guided_block_gives_the_same_gradient(model, inputs):
    """C6: blocks after up_blocks.1 run without autograd, the gradient is bitwise the full-graph one."""
    z, t, e = inputs
    layers = guided(model)
    shape = (positions(model), layers[0].module.heads, FRAMES, 1)
    targets = {r.name: (torch.full(shape, 0.5), torch.zeros(shape, dtype=torch.uint8)) for r in layers}
    energy = SparseMapEnergy(targets)

    def gradient(skip):
        leaf = z.clone().requires_grad_(True)
        with torch.enable_grad(), attach(model.denoiser, layers, energy), \
                (no_grad_after(model.denoiser, "up_blocks.1") if skip else torch.enable_grad()):
            energy.arm()
            out = model.predict(leaf, t, e)
            assert torch.is_grad_enabled()  # restored after the forward
            (grad,) = torch.autograd.grad(energy.take(), leaf)
        return grad, out.requires_grad

    full_grad, full_out_graph = gradient(False)
    skip_grad, skip_out_graph = gradient(True)
    assert full_out_graph and not skip_out_graph
    assert torch.equal(full_grad, skip_grad) and full_grad.abs().sum() > 0


@torch.no_grad()
def test_run_until_stops_right_after_the_block(model, inputs):
    z, t, e = inputs
    later = []
    hook = model.denoiser.up_blocks[2].register_forward_pre_hook(lambda *a: later.append(1))
    capture = AttentionCapture("topk", k=1)
    try:
        with attach(model.denoiser, guided(model), capture):
            run_until([model.denoiser.up_blocks[1]], lambda: model.predict(z, t, e))
    finally:
        hook.remove()
    assert not later and len(capture.records) == 6
    with pytest.raises(RuntimeError, match="without running"):
        run_until([torch.nn.Linear(1, 1)], lambda: None)


def test_stages_compose_with_peft_lora(model, inputs):
    """Processors go through to_q/to_k/to_v/to_out, so LoRA-wrapped Linears keep working underneath."""
    from peft import LoraConfig, inject_adapter_in_model

    z, t, e = inputs
    lora_model = copy.deepcopy(model)
    names = [r.name for r in guided(lora_model)]
    config = LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                        target_modules=[f"{n}.{p}" for n in names for p in ("to_q", "to_k", "to_v", "to_out.0")])
    inject_adapter_in_model(config, lora_model.denoiser)
    layers = guided(lora_model)
    with torch.no_grad():
        lora_out = lora_model.predict(z, t, e)
        capture = AttentionCapture("qk")
        with attach(lora_model.denoiser, layers, capture):
            staged = lora_model.predict(z, t, e)
        plain_capture = AttentionCapture("qk")
        with attach(model.denoiser, guided(model), plain_capture):
            model.predict(z, t, e)
    assert torch.allclose(staged, lora_out, atol=1e-5)
    assert not torch.allclose(staged, model.predict(z, t, e).detach(), atol=1e-4)
    q_lora, _ = capture.last(names[0])
    q_plain, _ = plain_capture.last(names[0])
    assert not torch.allclose(q_lora, q_plain, atol=1e-4)


@torch.no_grad()
def test_qk_injection_point_adds_before_the_projections(model, inputs):
    """The extension point Motion Inversion uses: Q changes by exactly W_q · delta; V is untouched."""
    z, t, e = inputs
    ref = guided(model)[0]
    delta = torch.randn(ref.module.to_q.in_features, generator=torch.Generator().manual_seed(3)) * 0.1
    base, shifted = AttentionCapture("qk"), AttentionCapture("qk")
    with attach(model.denoiser, [ref], base):
        plain = model.predict(z, t, e)
    with attach(model.denoiser, [ref], AddToQK(delta)), attach(model.denoiser, [ref], shifted):
        injected = model.predict(z, t, e)
    q0, k0 = base.last(ref.name)
    q1, k1 = shifted.last(ref.name)
    heads = ref.module.heads
    expected = (ref.module.to_q.weight @ delta).view(heads, -1)[None, :, None, :]
    assert torch.allclose(q1 - q0, expected.expand_as(q0), atol=1e-4)
    assert torch.allclose(k1 - k0, (ref.module.to_k.weight @ delta).view(heads, -1)[None, :, None, :].expand_as(k0),
                          atol=1e-4)
    assert not torch.allclose(injected, plain)
    with attach(model.denoiser, [ref], AddToQK(torch.zeros_like(delta))):
        assert torch.allclose(model.predict(z, t, e), plain, atol=1e-5)


def test_bad_layers_and_arguments_are_refused(model):
    ref = guided(model)[0]
    linear = f"{ref.name}.to_q"
    with pytest.raises(InputError, match="not an attention layer"):
        attach(model.denoiser, [linear], Idle())
    with pytest.raises(InputError, match="no layer named"):
        attach(model.denoiser, ["up_blocks.9.nothing"], Idle())
    assert chain_of(ref.module) is None
    with pytest.raises(InputError):
        AttentionCapture("maps")
    with pytest.raises(InputError):
        AttentionCapture("topk", k=0)
    with pytest.raises(InputError, match="larger than"), torch.no_grad():
        with attach(model.denoiser, [ref], AttentionCapture("topk", k=FRAMES + 1)):
            model.predict(seeded_noise(model.latent_shape(1, FRAMES, SIZE, SIZE), 0), 10, model.encode_prompt(""))
    assert chain_of(ref.module) is None
