"""LoRA sets, MotionLoRA (the MOTION_ADAPTER of LoRA methods), adapter files, imports and exports.

Everything runs on the tiny models of both families (and the real ZeroScope config on the meta device);
LoRA weights are random (B != 0) so that a wrong layer mapping changes the output.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
from torch import nn

from motion_core.adapters.files import (
    export_adapter,
    import_animatediff_evolved,
    import_reference_lora,
    load_adapter,
    read_adapter_file,
    save_adapter,
    save_named_adapter,
)
from motion_core.adapters.lora import (
    ROLE_APPEARANCE,
    ROLE_MOTION,
    LoraSet,
    MotionLoRA,
    StrengthSchedule,
    inject_lora,
    lora_layers,
    lora_parameters,
    reference_order,
    remove_lora,
    set_active_lora,
    set_lora_strength,
    spatial_lora_targets,
    temporal_lora_targets,
)
from motion_core.errors import AdapterMismatchError, InputError
from motion_core.motion_model import MotionModel
from motion_core.sampling import SampleRequest, SamplingHook, sample

# spec §3.1: the reference's target sets as regexes over full module names (UNet3D)
TEMPORAL_RE = re.compile(
    r"^(transformer_in|(down_blocks|up_blocks)\.\d+\.temp_attentions\.\d+|mid_block\.temp_attentions\.\d+)"
    r"\.transformer_blocks\.\d+\.(attn1\.(to_q|to_k|to_v|to_out\.0)|attn2\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj|ff\.net\.2)$")
SPATIAL_RE = re.compile(
    r"^((down_blocks|up_blocks)\.\d+|mid_block)\.attentions\.\d+\.transformer_blocks\.\d+\."
    r"(attn1\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj|ff\.net\.2)$")
# the AnimateDiff equivalent: every motion module's attention and feed-forward
MOTION_RE = re.compile(
    r"^((down_blocks|up_blocks)\.\d+|mid_block)\.motion_modules\.\d+\.transformer_blocks\.\d+\."
    r"(attn1\.(to_q|to_k|to_v|to_out\.0)|attn2\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj|ff\.net\.2)$")


def _matching(denoiser: nn.Module, pattern: re.Pattern) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in denoiser.named_modules() if pattern.match(n) and isinstance(m, nn.Linear)]


def _random_adapter(model, rank: int = 4, sets=("temporal", "spatial_0"), seed: int = 0, **kw) -> MotionLoRA:
    """A MotionLoRA with random A and B (B != 0, so it changes the output) on the model's real targets."""
    g = torch.Generator().manual_seed(seed)
    layers = dict(model.denoiser.named_modules())
    out = []
    for name in sets:
        targets = temporal_lora_targets(model) if name == "temporal" else spatial_lora_targets(model)
        weights = {t: (torch.randn(rank, layers[t].in_features, generator=g) / rank,
                       0.05 * torch.randn(layers[t].out_features, rank, generator=g)) for t in targets}
        out.append(LoraSet(name=name, role=ROLE_MOTION if name == "temporal" else ROLE_APPEARANCE, rank=rank,
                           alpha=float(rank), weights=weights))
    return MotionLoRA(sets=tuple(out), method="motiondirector", family=model.family, base_model=model.base_model,
                      steps=7, **kw)


def _predict(model, seed: int = 1, frames: int = 4, size: int = 8, t: int = 400):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(1, 4, frames, size, size, generator=g)
    with torch.no_grad():
        return model.predict(z, t, model.encode_prompt(["the cat"]))


# ======================================================================================== placement and counts
def test_lora_targets_and_counts_on_tiny_unet3d(unet3d_model):
    den = unet3d_model.denoiser
    temporal, spatial = temporal_lora_targets(unet3d_model), spatial_lora_targets(unet3d_model)
    assert temporal == [n for n, _ in _matching(den, TEMPORAL_RE)]
    assert spatial == [n for n, _ in _matching(den, SPATIAL_RE)]
    assert not any(".attn2." in n for n in spatial), "cross-attention is not adapted"
    try:
        inject_lora(den, "t", temporal, rank=4)
        inject_lora(den, "s", spatial, rank=4)
        # spec §6.3: tiny temporal 50 layers / 26,880 params, spatial 24 / 14,080 at r = 4
        assert len(temporal) == 50 and sum(p.numel() for p in lora_parameters(den, "t")) == 26_880
        assert len(spatial) == 24 and sum(p.numel() for p in lora_parameters(den, "s")) == 14_080
    finally:
        remove_lora(den, ["t", "s"])


def test_lora_targets_and_counts_on_tiny_animatediff(animatediff_model):
    den = animatediff_model.denoiser
    temporal, spatial = temporal_lora_targets(animatediff_model), spatial_lora_targets(animatediff_model)
    expected_t, expected_s = _matching(den, MOTION_RE), _matching(den, SPATIAL_RE)
    assert temporal == [n for n, _ in expected_t] and spatial == [n for n, _ in expected_s]
    modules = {n.split(".transformer_blocks.")[0] for n in temporal}
    assert len(temporal) == 10 * len(modules) == 10 * len(animatediff_model.temporal_modules())
    rank = 4
    try:
        inject_lora(den, "t", temporal, rank=rank)
        inject_lora(den, "s", spatial, rank=rank)
        for name, expected in (("t", expected_t), ("s", expected_s)):
            want = sum(rank * (m.in_features + m.out_features) for _, m in expected)
            assert sum(p.numel() for p in lora_parameters(den, name)) == want
    finally:
        remove_lora(den, ["t", "s"])


def test_lora_counts_on_the_real_zeroscope_config_on_meta():
    from diffusers import UNet3DConditionModel

    from motion_core.backbones.unet3d import UNet3DVideoModel

    with torch.device("meta"):
        unet = UNet3DConditionModel(
            block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=64,
            cross_attention_dim=1024, down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
            up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3)
    model = UNet3DVideoModel(denoiser=unet, vae=nn.Identity(), text_encoder=nn.Identity(), tokenizer=None,
                             scheduler=None, base_model="cerspense/zeroscope_v2_576w")
    temporal, spatial = temporal_lora_targets(model), spatial_lora_targets(model)
    assert temporal == [n for n, _ in _matching(unet, TEMPORAL_RE)]
    assert spatial == [n for n, _ in _matching(unet, SPATIAL_RE)]
    inject_lora(unet, "temporal", temporal, rank=32, alpha=32)
    inject_lora(unet, "spatial_0", spatial, rank=32, alpha=32)
    # spec §1.2 / §6.1: 170 layers / 12,472,320 params and 96 / 8,785,920 per video at r = 32
    assert len(temporal) == 170 and sum(p.numel() for p in lora_parameters(unet, "temporal")) == 12_472_320
    assert len(spatial) == 96 and sum(p.numel() for p in lora_parameters(unet, "spatial_0")) == 8_785_920
    # the reference's module order (mid_block last) is also the diffusers registration order here
    assert reference_order(temporal) == temporal and temporal[-10].startswith("mid_block.")


def test_rank_must_be_positive_and_fit_every_layer(unet3d_model):
    den = unet3d_model.denoiser
    targets = temporal_lora_targets(unet3d_model)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(InputError, match="positive integer"):
            inject_lora(den, "t", targets, rank=bad)
    # the smallest temporal Linear of the tiny model is 32 wide
    with pytest.raises(InputError, match="larger than the layer"):
        inject_lora(den, "t", targets, rank=33)
    assert not lora_layers(den)


# ======================================================================================== machinery
def test_inject_then_remove_restores_the_base_model_exactly(unet3d_model):
    den = unet3d_model.denoiser
    keys = list(den.state_dict())
    before = _predict(unet3d_model)
    adapter = _random_adapter(unet3d_model)
    with adapter.activate(unet3d_model):
        assert len(lora_layers(den)) == 50  # the motion set only: appearance strength defaults to 0
        assert not torch.equal(_predict(unet3d_model), before)
    assert not lora_layers(den) and not hasattr(den, "peft_config")
    assert list(den.state_dict()) == keys
    assert torch.equal(_predict(unet3d_model), before)
    assert all(not p.requires_grad for p in den.parameters())


def test_several_active_sets_add_up_in_parallel_per_layer(unet3d_model):
    """The reference nests one spatial LoRA per video; all of them see the same input, so the effect is
    the parallel sum W x + b + sum_k s_k B_k A_k x (spec §1.2, check 4) -- what several active peft sets do."""
    den = unet3d_model.denoiser
    name = spatial_lora_targets(unet3d_model)[0]
    layer = den.get_submodule(name)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, layer.in_features, generator=g)
    try:
        sets = {}
        for k in range(3):
            inject_lora(den, f"spatial_{k}", [name], rank=2)
            a = torch.randn(2, layer.in_features, generator=g)
            b = torch.randn(layer.out_features, 2, generator=g)
            sets[f"spatial_{k}"] = (a, b)
            wrapped = den.get_submodule(name)
            wrapped.lora_A[f"spatial_{k}"].weight.data.copy_(a)
            wrapped.lora_B[f"spatial_{k}"].weight.data.copy_(b)
        wrapped = den.get_submodule(name)
        base = wrapped.get_base_layer()
        for active, scales in ((["spatial_0"], (1.0,)), (["spatial_1"], (0.5,)), (list(sets), (1.0, 1.0, 1.0))):
            set_active_lora(den, active)
            for n, s in zip(active, scales):
                set_lora_strength(den, n, s)
            with torch.no_grad():
                got = wrapped(x)
                want = base(x) + sum(s * (x @ sets[n][0].T @ sets[n][1].T) for n, s in zip(active, scales))
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    finally:
        remove_lora(den, list(sets))
    assert isinstance(den.get_submodule(name), nn.Linear)


def test_adapter_of_another_family_or_base_model_is_refused(unet3d_model, animatediff_model):
    adapter = _random_adapter(unet3d_model)
    with pytest.raises(AdapterMismatchError, match="unet3d family"):
        with adapter.activate(animatediff_model):
            pass
    other = dataclasses.replace(adapter, base_model="damo-vilab/text-to-video-ms-1.7b")
    with pytest.raises(AdapterMismatchError, match="trained on 'damo-vilab"):
        MotionModel.wrap(unet3d_model).with_adapter(other).activated().__enter__()
    assert not lora_layers(unet3d_model.denoiser)
    # the same layout under another base model name: allowed when the check is turned off
    with other.with_strength(check_base_model=False).activate(unet3d_model):
        assert lora_layers(unet3d_model.denoiser)
    assert not lora_layers(unet3d_model.denoiser)


def test_apply_chains_without_mutating_the_input_model(unet3d_model):
    base = MotionModel.wrap(unet3d_model)
    a = _random_adapter(unet3d_model, seed=1)
    b = _random_adapter(unet3d_model, seed=2, sets=("temporal",))
    chained = base.with_adapter(a).with_adapter(b.with_strength(0.5))
    assert base.adapters == () and len(chained.adapters) == 2
    with chained.activated():
        names = set().union(*(set(layer.lora_A) for layer in lora_layers(unet3d_model.denoiser).values()))
        assert len(names) == 2  # a's temporal set and b's temporal set, side by side
    assert not lora_layers(unet3d_model.denoiser)


# ======================================================================================== strength schedule
def test_strength_schedule_forms():
    above = StrengthSchedule.from_timestep(500)
    assert [above(t) for t in (0, 499, 500, 981)] == [0.0, 0.0, 1.0, 1.0]
    assert StrengthSchedule.parse("t>=500") == above
    assert [StrengthSchedule.parse("t<500")(t) for t in (499, 500)] == [1.0, 0.0]
    linear = StrengthSchedule.parse("0:0, 500:1, 1000:1")
    assert linear(250) == pytest.approx(0.5) and linear(750) == 1.0 and linear(-5) == 0.0
    assert StrengthSchedule.parse("") is None
    assert StrengthSchedule.from_json(above.to_json()) == above
    with pytest.raises(InputError):
        StrengthSchedule.parse("sometimes")


class _RecordScale(SamplingHook):
    def __init__(self, layer_name: str) -> None:
        self.layer_name, self.seen = layer_name, []

    def before_step(self, state) -> None:
        layer = state.model.denoiser.get_submodule(self.layer_name)
        self.seen.append((state.timestep, [float(v) for k, v in layer.scaling.items()]))


def test_strength_schedule_switches_the_adapter_at_t_500_while_sampling(unet3d_model):
    adapter = _random_adapter(unet3d_model, sets=("temporal",)).with_strength(
        0.8, schedule=StrengthSchedule.from_timestep(500))
    recorder = _RecordScale(temporal_lora_targets(unet3d_model)[0])
    request = SampleRequest(prompt="the cat", width=16, height=16, num_frames=4, steps=4, cfg=1.0)
    model = MotionModel.wrap(unet3d_model).with_adapter(adapter)
    scheduled = sample(model, request, hooks=[recorder], decode=False)
    assert [t for t, _ in recorder.seen] == [751, 501, 251, 1]
    assert [s for _, s in recorder.seen] == [[0.8], [0.8], [0.0], [0.0]]
    # strength 0 below t=500 is exactly the base model for those steps: compare with a 2-phase reference
    constant = sample(MotionModel.wrap(unet3d_model).with_adapter(adapter.with_strength(schedule=None)), request,
                      decode=False)
    assert not torch.equal(scheduled.latents, constant.latents)


# ======================================================================================== files
def test_save_load_roundtrip_and_sampling_reproduces(unet3d_model, tmp_path):
    prior = (torch.randn(1, 4, 4, 4, 4),)
    adapter = _random_adapter(unet3d_model, noise_prior=prior, noise_prior_info={"p": 0.5, "steps": 3},
                              training_config={"lr": 5e-4, "note": "x"}, strength_schedule=StrengthSchedule.from_timestep(300))
    path = save_named_adapter(adapter, "my motion", tmp_path)
    assert path == tmp_path / "my motion.safetensors" and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    tensors, meta = read_adapter_file(path)
    assert meta["format"] == "motionkit.motion_adapter" and meta["kind"] == "lora"
    assert meta["family"] == "unet3d" and meta["base_model"] == unet3d_model.base_model and meta["rank"] == "4"
    assert meta["steps"] == "7" and json.loads(meta["training_config"]) == {"lr": 5e-4, "note": "x"}
    assert [s["name"] for s in json.loads(meta["sets"])] == ["temporal", "spatial_0"]
    loaded = load_adapter("my motion", tmp_path)
    assert isinstance(loaded, MotionLoRA) and loaded.strength_schedule == adapter.strength_schedule
    for s, t in zip(adapter.sets, loaded.sets):
        assert (s.name, s.role, s.rank, s.alpha) == (t.name, t.role, t.rank, t.alpha)
        assert all(torch.equal(s.weights[k][i], t.weights[k][i]) for k in s.weights for i in (0, 1))
    assert torch.equal(loaded.noise_prior[0], prior[0]) and loaded.noise_prior_info["p"] == 0.5
    request = SampleRequest(prompt="the cat", width=16, height=16, num_frames=4, steps=3, cfg=7.5, seed=11)
    a = sample(MotionModel.wrap(unet3d_model).with_adapter(adapter), request, decode=False)
    b = sample(MotionModel.wrap(unet3d_model).with_adapter(loaded), request, decode=False)
    assert torch.equal(a.latents, b.latents)


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", "..", "", "/abs"])
def test_save_names_with_path_parts_are_refused(unet3d_model, tmp_path, name):
    with pytest.raises(InputError):
        save_named_adapter(_random_adapter(unet3d_model, sets=("temporal",)), name, tmp_path)
    assert not any(tmp_path.iterdir())


def test_loading_something_else_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "pt"})
    with pytest.raises(AdapterMismatchError, match="not a MotionKit motion adapter"):
        load_adapter(tmp_path / "other.safetensors")
    with pytest.raises(InputError, match="was not found"):
        load_adapter("missing", tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(InputError, match="not a readable"):
        load_adapter(tmp_path / "junk.safetensors")


# ======================================================================================== reference .pt import
def _reference_list(adapter_sets: list[LoraSet], targets: list[str]) -> list[nn.Parameter]:
    """What the reference's save_lora_weight writes: [up, down] per layer in its module order (mid_block
    last); with N nested spatial LoRAs, N consecutive pairs per layer (#0 outermost first)."""
    out = []
    for layer in reference_order(targets):
        for s in adapter_sets:
            a, b = s.weights[layer]
            out += [nn.Parameter(b.clone()), nn.Parameter(a.clone())]
    return out


def test_reference_pt_files_import_by_module_order(unet3d_model, tmp_path):
    adapter = _random_adapter(unet3d_model, sets=("temporal",))
    temporal = adapter.sets[0]
    folder = tmp_path / "checkpoint-150" / "temporal" / "lora"
    folder.mkdir(parents=True)
    torch.save(_reference_list([temporal], temporal.targets), folder / "150_unet.pt")
    imported = import_reference_lora(folder / "150_unet.pt")
    assert imported.sets[0].ordered and imported.sets[0].role == ROLE_MOTION
    assert torch.equal(_with(unet3d_model, imported), _with(unet3d_model, adapter))

    # a multi-video spatial file: 2 nested LoRAs per layer -> spatial_0, spatial_1
    two = _random_adapter(unet3d_model, sets=("spatial_0", "spatial_1"), seed=3)
    spatial_dir = tmp_path / "spatial" / "lora"
    spatial_dir.mkdir(parents=True)
    torch.save(_reference_list(list(two.sets), two.sets[0].targets), spatial_dir / "150_unet.pt")
    resolved = import_reference_lora(spatial_dir / "150_unet.pt").resolved(unet3d_model)
    assert [s.name for s in resolved.sets] == ["spatial_0", "spatial_1"]
    for s, t in zip(two.sets, resolved.sets):
        assert all(torch.equal(s.weights[k][0], t.weights[k][0]) and torch.equal(s.weights[k][1], t.weights[k][1])
                   for k in s.weights)


def test_reference_pt_of_another_architecture_is_refused(unet3d_model, animatediff_model, tmp_path):
    adapter = _random_adapter(unet3d_model, sets=("temporal",))
    pairs = _reference_list([adapter.sets[0]], adapter.sets[0].targets)
    torch.save(pairs[:-2], tmp_path / "short.pt")  # one layer missing
    with pytest.raises(AdapterMismatchError, match="has 49 layers"):
        _with(unet3d_model, import_reference_lora(tmp_path / "short.pt"))
    torch.save({"not": "a list"}, tmp_path / "dict.pt")
    with pytest.raises(AdapterMismatchError, match="list-format"):
        import_reference_lora(tmp_path / "dict.pt")
    torch.save(pairs, tmp_path / "temporal.pt")
    with pytest.raises(AdapterMismatchError):
        _with(animatediff_model, import_reference_lora(tmp_path / "temporal.pt"))


def _with(model, adapter) -> torch.Tensor:
    with adapter.activate(model):
        return _predict(model)


# ======================================================================================== exports
def test_export_diffusers_and_peft_roundtrip_unet3d(unet3d_model, tmp_path):
    import copy

    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file

    random_set = _random_adapter(unet3d_model, sets=("temporal",)).sets[0]
    adapter = dataclasses.replace(_random_adapter(unet3d_model, sets=("temporal",)),
                                  sets=(dataclasses.replace(random_set, alpha=8.0),))  # alpha != rank: folding
    ours = _with(unet3d_model, adapter)
    peft_path = export_adapter(adapter, tmp_path / "peft.safetensors", "peft")
    with safe_open(str(peft_path), "pt") as f:
        config = json.loads(f.metadata()["peft_config"])
    copy_model = copy.deepcopy(unet3d_model)
    den = copy_model.denoiser
    inject_adapter_in_model(LoraConfig(r=config["r"], lora_alpha=config["lora_alpha"],
                                       target_modules=config["target_modules"]), den, adapter_name="p")
    set_peft_model_state_dict(den, load_file(str(peft_path)), adapter_name="p")
    assert torch.equal(_predict(copy_model), ours)

    diffusers_path = export_adapter(adapter, tmp_path / "diffusers.safetensors", "diffusers")
    sd = load_file(str(diffusers_path))
    assert all(k.startswith("unet.") and (k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight")) for k in sd)
    copy_model = copy.deepcopy(unet3d_model)
    den = copy_model.denoiser
    targets = sorted({k[len("unet."):].rsplit(".lora_", 1)[0] for k in sd})
    inject_adapter_in_model(LoraConfig(r=adapter.rank, lora_alpha=adapter.rank, target_modules=targets), den,
                            adapter_name="d")
    set_peft_model_state_dict(den, {k[len("unet."):]: v for k, v in sd.items()}, adapter_name="d")
    torch.testing.assert_close(_predict(copy_model), ours, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="animatediff"):
        export_adapter(adapter, tmp_path / "ade.safetensors", "animatediff_evolved")


def test_export_animatediff_formats_roundtrip(tiny_animatediff_paths, tmp_path):
    from safetensors.torch import load_file

    from motion_core.backbones import load_video_model

    model = load_video_model(tiny_animatediff_paths.pipeline, device="cpu")  # diffusers' loader mutates it
    adapter = _random_adapter(model)
    ours = _with(model, adapter)

    # AnimateDiff-Evolved: original AnimateDiff names; ADE derives the model key by removing 'processor.',
    # '_lora', 'down.'/'up.' and turning 'to_out.' into 'to_out.0.' (reference/comfyui_host_and_ecosystem.md §4.2)
    ade = export_adapter(adapter, tmp_path / "ade.safetensors", "animatediff_evolved")
    sd = load_file(str(ade))
    state = model.denoiser.state_dict()
    downs = [k for k in sd if k.endswith(".down.weight")]
    assert len(downs) == len(adapter.sets[0].weights) and len(sd) == 2 * len(downs)
    for key in downs:
        assert "temporal" in key and key.replace(".down.", ".up.") in sd
        model_key = key.replace("processor.", "").replace("_lora", "").replace("down.", "")
        if "to_out.0." not in model_key:
            model_key = model_key.replace("to_out.", "to_out.0.")
        diffusers_key = (model_key.replace(".temporal_transformer.", ".").replace("attention_blocks.0.", "attn1.")
                         .replace("attention_blocks.1.", "attn2."))
        assert diffusers_key in state, diffusers_key
    assert any("attention_blocks.0.processor.to_out_lora.down.weight" in k for k in downs)
    back = import_animatediff_evolved(ade, base_model=model.base_model)
    assert torch.equal(_with(model, back), ours)
    assert isinstance(load_adapter(ade), MotionLoRA)  # recognised by its keys

    # diffusers: the real loader of UNetMotionModel (PeftAdapterMixin) reads our export
    diff = export_adapter(adapter, tmp_path / "diffusers.safetensors", "diffusers")
    model.denoiser.load_lora_adapter(load_file(str(diff)), prefix="unet", adapter_name="exported")
    try:
        assert torch.equal(_predict(model), ours)
    finally:
        model.denoiser.delete_adapters("exported")
    with pytest.raises(InputError, match="motion LoRAs only"):
        export_adapter(adapter, tmp_path / "x.safetensors", "animatediff_evolved", set_name="spatial_0")


def test_save_adapter_is_atomic(unet3d_model, tmp_path, monkeypatch):
    """A failing write leaves neither a partial file nor a temporary one behind."""
    import safetensors.torch

    adapter = _random_adapter(unet3d_model, sets=("temporal",))

    def broken(*args, **kwargs):
        path = args[1]
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError):
        save_adapter(adapter, tmp_path / "a.safetensors")
    assert list(tmp_path.iterdir()) == []
