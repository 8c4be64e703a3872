"""Issue 13: the speed and memory levers change no maths.

* the fused LoRA forward gives peft's outputs and LoRA gradients (several sets active; dropout off, and on
  with the same masks), its keep masks are dropout's distribution; frame-only Conv3d as conv2d is the same;
* gradient checkpointing auto / on / off (and a partial plan) give the same gradients and the same trained
  adapter;
* the plan: none when everything fits, the largest units first when not, all when nothing else fits;
* the idle encoders leave and come back bit-identical, previews still work while they are away;
* attention backends: clear errors where one cannot run, the dispatcher path equals SDPA.
"""

from __future__ import annotations

import logging

import pytest
import torch

from motion_core.adapters.lora import inject_lora, lora_parameters, remove_lora, set_active_lora
from motion_core.adapters.lora import spatial_lora_targets, temporal_lora_targets
from motion_core.adapters.lora_fast import fused_lora, keep_mask, quantized_drop_probability
from motion_core.errors import InputError
from motion_core.temporal_conv import is_frame_only_conv, temporal_convs_as_2d
from motion_core.memory import UnitActivations, checkpointing_mode, plan_checkpointing, unit_activations
from motion_core.training import activation_checkpointing, checkpoint_units, train

from test_training import motiondirector, small_config, square


def _lora_model(model, generator):
    den = model.denoiser
    inject_lora(den, "t", temporal_lora_targets(model), rank=2, dtype=torch.float32, dropout=0.1)
    inject_lora(den, "s", spatial_lora_targets(model), rank=2, alpha=4.0, dtype=torch.float32, dropout=0.1)
    params = lora_parameters(den, "t") + lora_parameters(den, "s")
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.1, generator=generator)
            p.requires_grad_(True)
    set_active_lora(den, ["t", "s"])
    for m in den.modules():  # LoRA dropout on, as while training
        if type(m).__name__ == "ModuleDict":
            for d in m.values():
                if isinstance(d, torch.nn.Dropout):
                    d.train()
    return params


class _RecordedDropout(torch.nn.Module):
    """peft's dropout replaced by the masks the fused path drew, in the same order (inverted scaling)."""

    def __init__(self, masks: list, p: float):
        super().__init__()
        self.masks, self.scale = masks, 1.0 / (1.0 - quantized_drop_probability(p))

    def forward(self, x):
        return x * self.masks.pop(0).view(x.shape).to(x.dtype) * self.scale


def test_fused_lora_forward_equals_peft(unet3d_model, monkeypatch):
    """The fused sets give peft's outputs and gradients: without dropout as they are, with dropout given the
    same keep masks (the fused path's are recorded and fed to peft's layers in the same order)."""
    from motion_core.adapters import lora_fast

    den = unet3d_model.denoiser
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 4, 8, 8, generator=g)
    emb = unet3d_model.encode_prompt(["x"])
    params = _lora_model(unet3d_model, g)
    drawn: list[torch.Tensor] = []
    draw = lora_fast.keep_mask

    def recording(shape, p, device):
        drawn.append(draw(shape, p, device))
        return drawn[-1]

    monkeypatch.setattr(lora_fast, "keep_mask", recording)
    dropouts = [(d, key) for m in den.modules() if type(m).__name__ == "ModuleDict"
                for key, d in m.items() if isinstance(d, torch.nn.Dropout)]
    try:
        for dropout_on in (False, True):
            for d, _ in dropouts:
                d.train(dropout_on)
            results = []
            for fused in (True, False):
                with fused_lora(den, fused) as n:
                    if not fused and dropout_on:
                        masks = list(drawn)
                        for m in den.modules():
                            if type(m).__name__ == "ModuleDict":
                                for key, d in list(m.items()):
                                    if isinstance(d, torch.nn.Dropout):
                                        m[key] = _RecordedDropout(masks, d.p)
                    drawn.clear() if fused else None
                    out = unet3d_model.predict(z, 500, emb)
                    loss = out.pow(2).mean()
                    results.append((out.detach(), loss.detach(), torch.autograd.grad(loss, params)))
                assert n == (len(temporal_lora_targets(unet3d_model)) + len(spatial_lora_targets(unet3d_model))
                             if fused else 0)
            assert len(drawn) == (len(dropouts) if dropout_on else 0)  # one mask per set and call
            if dropout_on:
                assert not masks  # peft's path used every recorded mask
            (o1, l1, g1), (o2, l2, g2) = results
            torch.testing.assert_close(o1, o2, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(l1, l2, rtol=1e-5, atol=0)
            for a, b in zip(g1, g2):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
            # the masks matter: the dropout-on output is not the dropout-off one
            if dropout_on:
                assert (o1 - off_output).abs().max() > 1e-4
            off_output = o1
        assert all("forward" not in m.__dict__ for m in den.modules() if type(m).__name__ == "Linear")
    finally:
        remove_lora(den, ["t", "s"])


def test_keep_mask_is_dropout():
    """Kept with probability 1 - p (p rounded to 1/65536), independent draws, replayed by the torch seed."""
    n = 1 << 20
    for p in (0.1, 0.5, 0.9):
        torch.manual_seed(0)
        a = keep_mask((n // 64, 64), p, torch.device("cpu"))
        b = keep_mask((n // 64, 64), p, torch.device("cpu"))
        torch.manual_seed(0)
        again = keep_mask((n // 64, 64), p, torch.device("cpu"))
        assert a.dtype == torch.uint8 and set(a.unique().tolist()) <= {0, 1}
        kept = a.double().mean().item()
        assert abs(kept - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5  # five standard deviations
        assert torch.equal(a, again) and not torch.equal(a, b)
        # neighbours (one 64-bit draw gives four elements) are independent
        pairs = (a.view(-1)[0::2].double() * a.view(-1)[1::2].double()).mean().item()
        assert abs(pairs - (1 - p) ** 2) < 5 * ((1 - p) ** 2 / (n / 2)) ** 0.5
    assert quantized_drop_probability(0.1) == 6554 / 65536
    assert keep_mask((3, 5), 0.5, torch.device("cpu")).shape == (3, 5)  # sizes not divisible by four


def test_temporal_convs_as_2d(unet3d_model):
    den = unet3d_model.denoiser
    convs = [m for m in den.modules() if is_frame_only_conv(m)]
    assert convs and len(convs) == sum(isinstance(m, torch.nn.Conv3d) for m in den.modules())
    g = torch.Generator().manual_seed(2)
    z = torch.randn(1, 4, 4, 8, 8, generator=g)
    emb = unet3d_model.encode_prompt(["x"])
    results = []
    for enabled in (False, True):
        x = z.clone().requires_grad_(True)
        with temporal_convs_as_2d(den, enabled) as n:
            out = unet3d_model.predict(x, 500, emb)
            results.append((out.detach(), torch.autograd.grad(out.pow(2).mean(), x)[0]))
        assert n == (len(convs) if enabled else 0)
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-8)
    assert all("forward" not in m.__dict__ for m in convs)
    # one that is not frame-only keeps Conv3d's own forward
    assert not is_frame_only_conv(torch.nn.Conv3d(2, 2, (3, 3, 3), padding=1))


def test_partial_checkpointing_gives_the_same_gradients(unet3d_model):
    den = unet3d_model.denoiser
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, 4, 4, 8, 8, generator=g)
    emb = unet3d_model.encode_prompt(["x"])
    params = _lora_model(unet3d_model, g)
    names = [n for n, _ in checkpoint_units(den)]
    try:
        grads = []
        for units, enabled in ((None, False), (None, True), (names[::2], True), ([], True)):
            with activation_checkpointing(den, enabled, units=units) as how:
                torch.manual_seed(3)
                out = unet3d_model.predict(z, 500, emb)
                grads.append(torch.autograd.grad(out.pow(2).mean(), params))
            assert how == ("off" if not enabled or units == [] else "units")
        for other in grads[1:]:
            for a, b in zip(grads[0], other):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        assert all("forward" not in m.__dict__ for _, m in checkpoint_units(den))
    finally:
        remove_lora(den, ["t", "s"])


def test_checkpointing_plan():
    units = [UnitActivations("a", 100, 10), UnitActivations("b", 200, 10), UnitActivations("c", 400, 10)]
    assert checkpointing_mode(True) == "on" and checkpointing_mode(False) == "off"
    assert checkpointing_mode("auto") == "auto"
    with pytest.raises(InputError):
        checkpointing_mode("sometimes")
    fits = plan_checkpointing("auto", units, 50, budget=10_000)
    assert fits.mode == "off" and fits.units == [] and fits.activations == 750
    # the largest first: c alone frees nothing (its recompute comes first in backward, with a and b still
    # held: 50 + 100 + 200 + 400), c and b do: max(50+100+10+10, 50+100+200, 50+100+10+400) = 560
    part = plan_checkpointing("auto", units, 50, budget=700)
    assert part.mode == "partial" and part.units == ["b", "c"] and part.activations == 560
    assert plan_checkpointing("auto", units, 50, budget=500).mode == "on"  # all three: 470
    tight = plan_checkpointing("auto", units, 50, budget=1)
    assert tight.mode == "on" and "may not fit" in tight.reason
    assert plan_checkpointing("on", units, 50, budget=10_000).mode == "on"
    assert plan_checkpointing("off", units, 50, budget=1).mode == "off"
    assert "largest activations first" in part.describe()


def test_unit_activations_cover_every_unit(unet3d_model):
    units, outside = unit_activations(unet3d_model, 8, 32, 32)
    assert [u.name for u in units] == [n for n, _ in checkpoint_units(unet3d_model.denoiser)]
    assert all(u.saved > 0 and u.inputs > 0 for u in units) and outside >= 0
    # checkpointing every unit keeps far less than none
    assert plan_checkpointing("on", units, outside, budget=None).activations < \
        plan_checkpointing("off", units, outside, budget=None).activations


def _trained(unet3d_model, tmp_path, name, **overrides):
    config = small_config(tmp_path / name, steps=2, **overrides)
    result = train(unet3d_model, motiondirector(lora_dropout=0.1), [square(8)], "a square", config)
    return {s.name: s for s in result.adapter.sets}


@pytest.mark.parametrize("budget", [None, 1])
def test_checkpointing_auto_on_off_train_the_same_adapter(unet3d_model, tmp_path, monkeypatch, caplog, budget):
    import motion_core.memory as memory

    if budget is not None:  # a device too small for the activations: auto checkpoints units
        def available(device):
            return budget
        monkeypatch.setattr(memory, "available_memory", available)
        monkeypatch.setenv("MOTIONKIT_SKIP_MEMORY_CHECK", "1")
    with caplog.at_level(logging.INFO, logger="motion_core.training"):
        auto = _trained(unet3d_model, tmp_path, "auto", gradient_checkpointing="auto")
    assert "gradient checkpointing auto ->" in caplog.text
    assert "Training memory estimate" in caplog.text
    on = _trained(unet3d_model, tmp_path, "on", gradient_checkpointing="on")
    off = _trained(unet3d_model, tmp_path, "off", gradient_checkpointing=False)
    for other in (on, off):
        assert auto.keys() == other.keys()
        for name in auto:
            for layer, (a, b) in auto[name].weights.items():
                oa, ob = other[name].weights[layer]
                torch.testing.assert_close(a, oa, rtol=1e-5, atol=1e-7)
                torch.testing.assert_close(b, ob, rtol=1e-5, atol=1e-7)


def test_encoders_leave_during_training_and_come_back(unet3d_model, tmp_path):
    from motion_core.offload import ComponentStash

    before = {n: t.clone() for n, t in unet3d_model.text_encoder.state_dict().items()}
    vae_before = {n: t.clone() for n, t in unet3d_model.vae.state_dict().items()}
    seen = []

    def progress(step, total, info):
        seen.append(sum(p.numel() for p in unet3d_model.text_encoder.parameters()) +
                    sum(p.numel() for p in unet3d_model.vae.parameters()))

    config = small_config(tmp_path / "run", steps=2, validate_every=1, final_preview=True)
    config.preview.steps = 2
    result = train(unet3d_model, motiondirector(), [square(8)], "a square", config, progress=progress)
    assert result.preview is not None and torch.isfinite(result.preview).all()  # previews had the encoders
    assert seen and all(n == 0 for n in seen)  # away during the steps
    for n, t in unet3d_model.text_encoder.state_dict().items():
        assert torch.equal(t, before[n]), n
    for n, t in unet3d_model.vae.state_dict().items():
        assert torch.equal(t, vae_before[n]), n
    stash = ComponentStash(unet3d_model, ["vae"])
    with stash:
        assert stash.released == ["vae"] and stash.released_bytes > 0
        with stash.back():
            assert sum(p.numel() for p in unet3d_model.vae.parameters()) > 0
        assert sum(p.numel() for p in unet3d_model.vae.parameters()) == 0
    assert all(torch.equal(t, vae_before[n]) for n, t in unet3d_model.vae.state_dict().items())


def test_attention_backends(unet3d_model):
    from diffusers.models.attention_processor import AttnProcessor2_0

    from motion_core.attention.backends import apply_attention_backend, available_backends, resolve_backend
    from motion_core.attention.processors import DispatchAttnProcessor

    assert resolve_backend("auto", "cpu") == "native" and available_backends("cpu") == ["native"]
    for name in ("xformers", "flash", "sage"):
        with pytest.raises(InputError, match="not installed|only on CUDA"):
            resolve_backend(name, "cpu", torch.float32)
    with pytest.raises(InputError, match="one of"):
        resolve_backend("fast", "cpu")
    assert apply_attention_backend(unet3d_model, "auto") == "native"
    assert unet3d_model.attention_backend == "native"
    # the dispatcher path (diffusers' own math backend) computes what AttnProcessor2_0 computes
    attn = unet3d_model.denoiser.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    assert isinstance(attn.processor, AttnProcessor2_0)
    x = torch.randn(2, 16, attn.query_dim)
    ctx = torch.randn(2, 5, attn.cross_attention_dim)
    with torch.no_grad():
        reference = attn(x, encoder_hidden_states=ctx)
        previous = attn.processor
        attn.set_processor(DispatchAttnProcessor("_native_math", previous))
        try:
            dispatched = attn(x, encoder_hidden_states=ctx)
        finally:
            attn.set_processor(previous)
    torch.testing.assert_close(dispatched, reference, rtol=1e-5, atol=1e-6)


def test_memory_budget_and_compile_settings(unet3d_model, monkeypatch):
    from motion_core.training import TrainingConfig, _memory_cap, compiled_units

    monkeypatch.setenv("MOTIONKIT_MEMORY_BUDGET", "1.5GiB")
    assert _memory_cap() == 1.5 * 2**30
    monkeypatch.setenv("MOTIONKIT_MEMORY_BUDGET", "800MB")
    assert _memory_cap() == 800_000_000
    monkeypatch.setenv("MOTIONKIT_MEMORY_BUDGET", "lots")
    with pytest.raises(InputError, match="MOTIONKIT_MEMORY_BUDGET"):
        _memory_cap()
    cfg = TrainingConfig(steps=1, frames=8, width=32, height=32, checkpoint_every=0, validate_every=0, compile=True,
                         gradient_checkpointing=True)
    cfg.validate()
    assert cfg.compile == "on" and cfg.gradient_checkpointing == "on"
    assert TrainingConfig().gradient_checkpointing == "auto" and TrainingConfig().compile == "off"
    with pytest.raises(InputError, match="compile"):
        TrainingConfig(steps=1, frames=8, width=32, height=32, checkpoint_every=0, validate_every=0,
                       compile="max").validate()
    units = [u for _, u in checkpoint_units(unet3d_model.denoiser)]
    with compiled_units(unet3d_model) as what:  # compiles lazily: nothing runs here
        assert what and all(u._compiled_call_impl is not None for u in units)
    assert all(u._compiled_call_impl is None for u in units)


def test_fused_lora_under_autocast_keeps_fp32_masters():
    """Under autocast (how CUDA trains in fp16 / bf16; here the CPU's bf16) the fused sets run their matmuls in
    autocast's dtype like peft's, and the fp32 LoRA weights get fp32 gradients."""
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 24)).requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["0"], init_lora_weights="gaussian"), net)
    params = [p for n, p in net.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
        torch.nn.init.normal_(p.data, 0, 0.3)
    x = torch.randn(5, 7, 16)
    results = []
    for fused in (False, True):
        with fused_lora(net, fused), torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x)
        assert out.dtype == torch.bfloat16
        grads = torch.autograd.grad(out.float().pow(2).sum(), params)
        assert all(g.dtype == torch.float32 for g in grads)
        results.append((out.float(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=2e-2, atol=2e-2)
    for a, b in zip(results[0][1], results[1][1]):  # bf16 rounding differs element-wise; the whole agrees
        assert (a - b).norm() < 2e-2 * a.norm()
