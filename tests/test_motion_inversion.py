"""Motion Inversion (motion_core.methods.motion_inversion): embedding shapes and counts (tiny models and the
real ZeroScope / AnimateDiff configs on the meta device), zero-init identity, the injected attention against
the paper's equations, the inference strategies, training on the moving-square video, exact resume, files
(MotionKit .safetensors, the reference's motion_embed.pt), LoRA composition, the node workflow, the CLI and
bad input (reference/motion_inversion_and_motion_matcher.md Part A and C.1)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from motion_core.errors import AdapterMismatchError, InputError
from motion_core.methods.motion_inversion import (
    EmbeddedBlock,
    MotionEmbeddingStage,
    MotionEmbeddings,
    MotionInversion,
    MotionInversionConfig,
    create_motion_embeddings,
    export_reference_embeddings,
    frame_difference,
    import_reference_embeddings,
    reference_keys,
    select_blocks,
    strategy_value_embedding,
)
from motion_core.motion_model import MotionModel
from motion_core.sampling import SampleRequest, sample, seeded_noise
from motion_core.training import TrainingConfig, add_training_noise, train

SIZE, FRAMES = 32, 8
REPO = Path(__file__).resolve().parent.parent


def zero_adapter(model, *, frames=FRAMES, size=SIZE, **kw) -> MotionEmbeddings:
    f = model.vae_scale_factor
    _, qk, v, grids = create_motion_embeddings(model, size // f, size // f, frames=frames, device="cpu")
    return MotionEmbeddings(qk=qk, v=v, grids=grids, frames=frames, family=model.family, base_model=model.base_model,
                            width=size, height=size, latent_size=(size // f, size // f), **kw)


def random_adapter(model, seed=1, scale=0.1, **kw) -> MotionEmbeddings:
    """Embeddings filled with scale·N(0,1) (spec C.1.3), trained rows only."""
    a = zero_adapter(model, **kw)
    g = torch.Generator().manual_seed(seed)

    def fill(t):
        return torch.cat([scale * torch.randn(t[:, :a.frames].shape, generator=g), t[:, a.frames:]], 1)

    return MotionEmbeddings(**{**a.__dict__, "qk": {k: fill(t) for k, t in a.qk.items()},
                               "v": {k: fill(t) for k, t in a.v.items()}})


@pytest.fixture(scope="module")
def inputs(unet3d_model):
    z = seeded_noise(unet3d_model.latent_shape(2, FRAMES, SIZE, SIZE), 3)
    return z, 500, unet3d_model.encode_prompt(["a red square", "a dog"]).detach()


def predict(model, z, t, e, adapter=None):
    model.denoiser.eval()
    with torch.no_grad():
        if adapter is None:
            return model.predict(z, t, e)
        with adapter.activate(model):
            return model.predict(z, t, e)


# ------------------------------------------------------------------------------------------ shapes / counts
@pytest.mark.parametrize("family", ["unet3d", "animatediff"])
def test_shapes_and_counts_on_tiny_models(family, unet3d_model, animatediff_model):
    model = unet3d_model if family == "unet3d" else animatediff_model
    blocks = select_blocks(model)
    # the coarsest cross-attention blocks: down_blocks.0 (the only down level with attention) and up_blocks.1
    assert [b.block for b in blocks] == ["down_blocks.0", "up_blocks.1", "up_blocks.1"]
    a = zero_adapter(model)
    c = blocks[0].channels
    assert set(a.qk) == {b.name for b in blocks} and len(a.v) == 2 * len(blocks)
    assert all(t.shape == (1, 32, c) for t in a.qk.values())
    assert all(t.shape == (8 * 8, 32, c) for t in a.v.values())  # 32x32 px / vae 4 = 8x8 tokens at that level
    assert a.num_qk_parameters == 3 * 32 * c and a.num_v_parameters == 6 * 64 * 32 * c
    assert all(k.endswith(("attn1", "attn2")) and k.rsplit(".", 1)[0] in a.qk for k in a.v)
    # longer clips get one row per frame; explicit block choices (reference 'down:<C>' form included)
    _, qk, _, _ = create_motion_embeddings(model, 8, 8, frames=40)
    assert next(iter(qk.values())).shape[1] == 40
    assert [b.block for b in select_blocks(model, ["up:32"])] == ["up_blocks.1", "up_blocks.1"]
    assert [b.block for b in select_blocks(model, ["mid_block"])] == ["mid_block"]


def _meta_model(family):
    from diffusers import UNet3DConditionModel, UNetMotionModel

    from motion_core.backbones.animatediff import AnimateDiffVideoModel
    from motion_core.backbones.unet3d import UNet3DVideoModel

    with torch.device("meta"):
        if family == "unet3d":  # cerspense/zeroscope_v2_576w unet/config.json
            denoiser = UNet3DConditionModel(
                sample_size=32, down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
                up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3, block_out_channels=(320, 640, 1280, 1280),
                layers_per_block=2, attention_head_dim=64, cross_attention_dim=1024, norm_num_groups=32)
            cls = UNet3DVideoModel
        else:  # SD1.5 + AnimateDiff v3 motion modules
            denoiser = UNetMotionModel(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                                       cross_attention_dim=768, num_attention_heads=8, motion_max_seq_length=32,
                                       use_motion_mid_block=False)
            cls = AnimateDiffVideoModel
    return cls(denoiser=denoiser, vae=nn.Module(), text_encoder=nn.Module(), tokenizer=None, scheduler=None,
               base_model="meta", device="meta")


def test_real_zeroscope_config_on_the_meta_device():
    """Spec A.2: 5 blocks, QK 5 x (1,32,1280) = 204,800 and V 10 x (180,32,1280) = 73,728,000 at 576x320."""
    model = _meta_model("unet3d")
    blocks, qk, v, grids = create_motion_embeddings(model, 320 // 8, 576 // 8, frames=24, device="meta")
    expected = [f"down_blocks.2.temp_attentions.{i}.transformer_blocks.0" for i in (0, 1)] + [
        f"up_blocks.1.temp_attentions.{i}.transformer_blocks.0" for i in (0, 1, 2)]
    assert [b.name for b in blocks] == expected
    assert sum(t.numel() for t in qk.values()) == 204_800
    assert sum(t.numel() for t in v.values()) == 73_728_000
    assert set(grids.values()) == {(10, 18)} and all(t.shape == (180, 32, 1280) for t in v.values())
    keys = reference_keys(qk, v)  # the reference file's keys and order (spec A.2 table)
    assert keys[:3] == [f"{expected[0]}.attn1.vSpatial", f"{expected[0]}.attn2.vSpatial", f"{expected[0]}.pos_embed"]
    assert len(keys) == 15

    ad = _meta_model("animatediff")  # the same resolution and block count on SD1.5 AnimateDiff at 512x512
    blocks, qk, v, grids = create_motion_embeddings(ad, 64, 64, frames=16, device="meta")
    assert [b.block for b in blocks] == ["down_blocks.2"] * 2 + ["up_blocks.1"] * 3
    assert sum(t.numel() for t in qk.values()) == 204_800 and set(grids.values()) == {(16, 16)}
    assert sum(t.numel() for t in v.values()) == 10 * 256 * 32 * 1280


# ------------------------------------------------------------------------------------------ identity, equations
def test_zero_embeddings_leave_the_output_unchanged_bit_for_bit(unet3d_model, inputs):
    z, t, e = inputs
    plain = predict(unet3d_model, z, t, e)
    processors = {n: m.processor for n, m in unet3d_model.denoiser.named_modules() if hasattr(m, "processor")}
    for strategy in ("camera", "object", "hybrid", "vanilla"):
        assert torch.equal(predict(unet3d_model, z, t, e, zero_adapter(unet3d_model, strategy=strategy)), plain)
    # the training-time installation (live zero parameters) too
    method = MotionInversion()
    clip = type("Clip", (), {"latents": z[:1]})()
    method.setup(unet3d_model, [clip], torch.Generator())
    try:
        assert torch.equal(predict(unet3d_model, z, t, e), plain)
    finally:
        method.teardown(unet3d_model)
    after = {n: m.processor for n, m in unet3d_model.denoiser.named_modules() if hasattr(m, "processor")}
    assert all(after[n] is processors[n] for n in processors)  # everything removed


def _hand_made_attention(channels=16, heads=2):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(5)
    root = nn.Module()
    root.add_module("tb", nn.Module())
    for name in ("attn1", "attn2"):
        root.tb.add_module(name, Attention(query_dim=channels, heads=heads, dim_head=channels // heads))
    block = EmbeddedBlock(name="tb", transformer="tb", block="down_blocks.0", attentions=("tb.attn1", "tb.attn2"),
                          channels=channels)
    return root, block


def _equation(attn, x, qk_add, v_add):
    """softmax(W_q(x+qk) W_k(x+qk)ᵀ/√d) W_v(x+v), per head, then to_out -- written out by hand."""
    n, f, c = x.shape
    heads, d = attn.heads, c // attn.heads
    split = lambda y: y.view(n, f, heads, d).transpose(1, 2)  # noqa: E731
    q, k, v = split(attn.to_q(x + qk_add)), split(attn.to_k(x + qk_add)), split(attn.to_v(x + v_add))
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return attn.to_out[0]((probs @ v).transpose(1, 2).reshape(n, f, c))


@torch.no_grad()
def test_injected_attention_equals_the_equations_on_hand_made_tensors():
    """Spec A.2 / C.1.3: QK embedding into the Q and K inputs only, V embedding into the V input only; object /
    hybrid difference V over frames, camera drops it; b-major tiling over a batch of 2."""
    c, (h, w), frames, length, batch = 16, (2, 3), 5, 8, 2
    root, block = _hand_made_attention(c)
    g = torch.Generator().manual_seed(1)
    qk = {"tb": 0.1 * torch.randn(1, length, c, generator=g)}
    v = {a: 0.1 * torch.randn(h * w, length, c, generator=g) for a in block.attentions}
    x = torch.randn(batch * h * w, frames, c, generator=g)  # (B·h·w, F, C), batch-major
    grids = {a: (h, w) for a in block.attentions}
    for strategy in ("vanilla", "object", "hybrid", "camera"):
        stage = MotionEmbeddingStage([block], qk, v, grids, trained_frames=frames, strategy=strategy).install(root)
        try:
            for name in block.attentions:
                attn = root.get_submodule(name)
                e = v[name][:, :frames]
                if strategy == "camera":
                    v_add = torch.zeros(())
                else:
                    d = e if strategy == "vanilla" else torch.cat([e[:, :1], e[:, 1:] - e[:, :-1]], dim=1)
                    v_add = d.repeat(batch, 1, 1)  # position n = b·h·w + y·w + x
                expected = _equation(attn, x, qk["tb"][:, :frames], v_add)
                got = attn(x)
                assert torch.allclose(got, expected, atol=1e-6), (strategy, name, (got - expected).abs().max())
                # the stock BasicTransformerBlock.pos_embed would feed V too: a different result
                wrong = _equation(attn, x, qk["tb"][:, :frames], qk["tb"][:, :frames] + v_add)
                assert (got - wrong).abs().max() > 1e-3
                wrong_qk = _equation(attn, x, qk["tb"][:, :frames] + v_add, v_add)
                assert strategy == "camera" or (got - wrong_qk).abs().max() > 1e-3
        finally:
            stage.remove()
    assert all(not hasattr(root.get_submodule(a).processor, "stages") for a in block.attentions)


def test_strategies_and_resampling_equal_their_formulas():
    g = torch.Generator().manual_seed(2)
    e = torch.randn(6, 5, 4, generator=g)
    d = frame_difference(e)
    assert torch.equal(d[:, 0], e[:, 0])
    for j in range(1, 5):
        assert torch.equal(d[:, j], e[:, j] - e[:, j - 1])
    assert torch.allclose(d.cumsum(dim=1), e, atol=1e-6)  # differencing is invertible
    assert strategy_value_embedding(e, "camera") is None
    assert torch.equal(strategy_value_embedding(e, "object"), d)
    assert torch.equal(strategy_value_embedding(e, "hybrid"), d)
    assert strategy_value_embedding(e, "vanilla") is e
    with pytest.raises(InputError, match="Unknown motion-embedding strategy"):
        strategy_value_embedding(e, "dolly")

    # resampling: frames stretched linearly with the end rows kept; the grid resized bilinearly
    from motion_core.methods.motion_inversion import _resize_grid, _rows

    assert torch.equal(_rows(e, 3, 5, False, "V"), e[:, :3])  # fewer frames: the first rows (reference)
    with pytest.raises(AdapterMismatchError, match="trained on 5 frames"):
        _rows(e, 7, 5, False, "V")
    s = _rows(e, 9, 5, True, "V")
    assert s.shape == (6, 9, 4) and torch.allclose(s[:, 0], e[:, 0]) and torch.allclose(s[:, -1], e[:, 4])
    assert torch.allclose(s[:, 2], e[:, 1], atol=1e-6) and torch.allclose(s[:, 1], (e[:, 0] + e[:, 1]) / 2, atol=1e-6)
    constant = torch.ones(2 * 3, 5, 4) * torch.arange(4.0)
    assert torch.allclose(_resize_grid(constant, (2, 3), (4, 5)), torch.ones(20, 5, 4) * torch.arange(4.0))
    grid = torch.arange(6.0).view(6, 1, 1).expand(6, 5, 4)
    assert torch.equal(_resize_grid(grid, (2, 3), (2, 3)), grid)


# ------------------------------------------------------------------------------------------ training
def _fixed_eval_loss(model, z0, embeds, adapter, draws=6):
    """Mean ε-MSE over fixed (noise, t) draws: the same samples with and without the embeddings."""
    g = torch.Generator().manual_seed(123)
    total = 0.0
    for _ in range(draws):
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, 1000, (1,), generator=g)
        z_t, target = add_training_noise(model, z0, noise, t)
        total += float(torch.mean((predict(model, z_t, t, embeds, adapter) - target) ** 2))
    return total / draws


def test_training_lowers_the_loss_on_the_moving_square_video(unet3d_model, tmp_path):
    from motion_core.video import load_video, write_moving_square_video

    model = unet3d_model
    path = write_moving_square_video(tmp_path / "square.mp4", num_frames=FRAMES, fps=8, width=SIZE, height=SIZE,
                                     square=8, velocity=(2, 0), start=(2, 12))
    before = {k: v.clone() for k, v in model.denoiser.state_dict().items()}
    config = TrainingConfig(steps=30, frames=FRAMES, width=SIZE, height=SIZE, checkpoint_every=0, validate_every=0,
                            final_preview=False, run_dir=str(tmp_path / "run"))
    method = MotionInversion(MotionInversionConfig(noise_prior_steps=2))
    result = train(model, method, [str(path)], "a red square sliding to the right", config)
    adapter = result.adapter
    assert result.steps == 30 and adapter.frames == FRAMES and adapter.family == "unet3d"
    assert adapter.num_parameters == 3 * 32 * 32 + 6 * 64 * 32 * 32
    # only the first F rows train; AdamW keeps the others exactly zero (spec C.1.6)
    for t in list(adapter.qk.values()) + list(adapter.v.values()):
        assert t[:, :FRAMES].abs().sum() > 0 and torch.count_nonzero(t[:, FRAMES:]) == 0
    assert len(adapter.noise_prior) == 1 and adapter.noise_prior_info["p"] == 0.5
    # the base model is untouched and every processor/hook is gone
    after = model.denoiser.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the trained function (vanilla) fits the clip better than the bare model on the same noise and timesteps
    clip = load_video(str(path), width=SIZE, height=SIZE)
    z0 = model.encode_video(clip.frames, generator=torch.Generator().manual_seed(0)).float()
    embeds = model.encode_prompt(["a red square sliding to the right"])
    bare = _fixed_eval_loss(model, z0, embeds, None)
    trained = _fixed_eval_loss(model, z0, embeds, adapter.with_strategy("vanilla"))
    assert trained < 0.985 * bare, (bare, trained)
    assert result.history[0]["loss"] > 0 and math.isfinite(result.history[-1]["loss"])


def test_trains_on_animatediff_motion_modules(animatediff_model, tmp_path):
    """The same method on the other UNet family (diffusers' own gradient checkpointing path), debiased loss."""
    from motion_core.video import moving_square_frames

    frames = moving_square_frames(FRAMES, SIZE, SIZE, square=8, velocity=(2, 0), start=(2, 12))
    config = TrainingConfig(steps=2, frames=FRAMES, width=SIZE, height=SIZE, checkpoint_every=0, validate_every=0,
                            final_preview=False, run_dir=str(tmp_path / "run"))
    method = MotionInversion(MotionInversionConfig(loss="debiased", noise_prior_steps=0))
    adapter = train(animatediff_model, method, [frames], "a square", config).adapter
    assert adapter.family == "animatediff" and all(".motion_modules." in k for k in adapter.qk)
    for t in list(adapter.qk.values()) + list(adapter.v.values()):
        assert t[:, :FRAMES].abs().sum() > 0 and torch.count_nonzero(t[:, FRAMES:]) == 0
    assert not animatediff_model.denoiser.training  # the shared model is back in eval mode


def test_resume_matches_an_uninterrupted_run(unet3d_model, tmp_path):
    """Debiased loss (draws an anchor frame), train mode (dropout draws): checkpoint at 3, resume to 6."""
    from motion_core.video import moving_square_frames

    frames = moving_square_frames(FRAMES, SIZE, SIZE, square=8, velocity=(2, 0), start=(2, 12))

    def run(steps, folder, resume=None):
        config = TrainingConfig(steps=steps, frames=FRAMES, width=SIZE, height=SIZE, checkpoint_every=3, seed=7,
                                validate_every=0, final_preview=False, run_dir=str(tmp_path / folder))
        method = MotionInversion(MotionInversionConfig(loss="debiased", noise_prior_steps=0))
        return train(unet3d_model, method, [frames], "a square", config, resume=resume)

    full = run(6, "full")
    run(3, "split")
    resumed = run(6, "split", resume=tmp_path / "split")
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert "loss_ad" in full.history[0]
    for k in full.adapter.qk:
        assert torch.equal(full.adapter.qk[k], resumed.adapter.qk[k])
    for k in full.adapter.v:
        assert torch.equal(full.adapter.v[k], resumed.adapter.v[k])


# ------------------------------------------------------------------------------------------ files
def test_save_load_and_reference_import_round_trip(unet3d_model, inputs, tmp_path):
    from motion_core.adapters.files import load_adapter, save_named_adapter

    z, t, e = inputs
    model = unet3d_model
    adapter = random_adapter(model, strategy="object", noise_prior=(torch.randn(1, 4, FRAMES, 8, 8),),
                             noise_prior_info={"p": 0.5, "steps": 50})
    reference = predict(model, z, t, e, adapter)
    assert not torch.equal(reference, predict(model, z, t, e))

    path = save_named_adapter(adapter, "mi_round_trip", tmp_path)
    assert path.name == "mi_round_trip.safetensors"
    loaded = load_adapter("mi_round_trip", tmp_path)
    assert isinstance(loaded, MotionEmbeddings)
    assert (loaded.family, loaded.base_model, loaded.frames, loaded.width, loaded.height, loaded.strategy) == (
        "unet3d", model.base_model, FRAMES, SIZE, SIZE, "object")
    assert dict(loaded.grids) == dict(adapter.grids) and loaded.blocks == adapter.blocks
    assert torch.equal(loaded.noise_prior[0], adapter.noise_prior[0]) and loaded.noise_prior_info["p"] == 0.5
    assert torch.equal(predict(model, z, t, e, loaded), reference)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        assert meta["kind"] == "motion_embeddings" and json.loads(meta["blocks"]) == adapter.blocks
        assert set(f.keys()) == set(reference_keys(adapter.qk, adapter.v)) | {"noise_prior.0"}

    # the reference's motion_embed.pt: {module name without '.embed': nn.Parameter}, fp32, 32 rows
    ref_pt = tmp_path / "motion_embed.pt"
    torch.save({k: nn.Parameter(adapter.qk[k[:-10]] if k.endswith(".pos_embed") else adapter.v[k[:-9]])
                for k in reference_keys(adapter.qk, adapter.v)}, ref_pt)
    imported = import_reference_embeddings(ref_pt, model=model, width=SIZE, height=SIZE, strategy="object")
    assert imported.frames == FRAMES  # the trained length, read from the non-zero rows
    assert torch.equal(predict(model, z, t, e, imported), reference)
    with pytest.raises(AdapterMismatchError, match="pass the model"):
        load_adapter(ref_pt)  # without a model only the reference's own blocks have a known grid

    # and back: export -> the reference's key order, values, Parameters
    out = export_reference_embeddings(imported, tmp_path / "export" / "motion_embed.pt")
    data, original = torch.load(out, weights_only=True), torch.load(ref_pt, weights_only=True)
    assert list(data) == reference_keys(adapter.qk, adapter.v)
    assert all(isinstance(v, nn.Parameter) and v.dtype == torch.float32 for v in data.values())
    assert all(torch.equal(data[k], original[k]) for k in data)


def test_reference_import_uses_the_reference_grid_lookup(tmp_path):
    """Without a model: ZeroScope-layout keys at 576x320 -> 18x10 grids (spec A.1); other sizes must be named."""
    blocks = [f"down_blocks.2.temp_attentions.{i}.transformer_blocks.0" for i in (0, 1)]
    data = {}
    for b in blocks:
        for a in ("attn1", "attn2"):
            data[f"{b}.{a}.vSpatial"] = nn.Parameter(torch.zeros(180, 32, 8))
        data[f"{b}.pos_embed"] = nn.Parameter(torch.zeros(1, 32, 8))
    data[f"{blocks[0]}.pos_embed"].data[:, :24] = 1.0
    torch.save(data, tmp_path / "motion_embed.pt")
    from motion_core.adapters.files import load_adapter

    a = load_adapter(tmp_path / "motion_embed.pt")  # .pt dispatch: motion_embed dicts vs MotionDirector lists
    assert isinstance(a, MotionEmbeddings) and a.frames == 24 and a.family == "unet3d"
    assert set(a.grids.values()) == {(10, 18)}
    assert a.latent_size == (40, 72) and a.width == 576
    with pytest.raises(AdapterMismatchError, match="Pass the width and height"):
        import_reference_embeddings(tmp_path / "motion_embed.pt", width=512, height=512)
    del data[f"{blocks[0]}.attn1.vSpatial"], data[f"{blocks[0]}.attn2.vSpatial"]
    del data[f"{blocks[1]}.attn1.vSpatial"], data[f"{blocks[1]}.attn2.vSpatial"]
    torch.save(data, tmp_path / "old.pt")
    with pytest.raises(AdapterMismatchError, match="April-2024"):
        import_reference_embeddings(tmp_path / "old.pt")


# ------------------------------------------------------------------------------------------ inference
def test_sampling_with_strategies_loras_and_the_noise_prior(unet3d_model):
    from motion_core.adapters.lora import ROLE_MOTION, LoraSet, MotionLoRA, temporal_lora_targets
    from motion_core.noise_prior import NoisePrior

    model = unet3d_model
    request = SampleRequest(prompt="a square", width=SIZE, height=SIZE, num_frames=FRAMES, steps=2, cfg=7.0, seed=4)
    embeddings = random_adapter(model, strategy="object")
    base = MotionModel(base=model)
    plain = sample(base, request, decode=False).latents
    results = {s: sample(base.with_adapter(embeddings.with_strategy(s)), request, decode=False).latents
               for s in ("object", "camera", "vanilla")}
    assert not any(torch.equal(r, plain) for r in results.values())
    assert not torch.equal(results["object"], results["camera"])
    assert not torch.equal(results["object"], results["vanilla"])
    assert torch.equal(sample(base.with_adapter(embeddings.with_strategy("hybrid")), request, decode=False).latents,
                       results["object"])
    assert torch.equal(sample(base.with_adapter(embeddings.with_strategy(strength=0.0)), request,
                              decode=False).latents, plain)
    # with a LoRA on the same temporal attention layers (peft wraps to_q/to_k/to_v under the stage)
    g = torch.Generator().manual_seed(9)
    layers = dict(model.denoiser.named_modules())
    weights = {n: (0.3 * torch.randn(4, layers[n].in_features, generator=g),
                   0.3 * torch.randn(layers[n].out_features, 4, generator=g)) for n in temporal_lora_targets(model)}
    lora = MotionLoRA(sets=(LoraSet("temporal", ROLE_MOTION, 4, 4.0, weights),), method="motiondirector",
                      family=model.family, base_model=model.base_model)
    lora_only = sample(base.with_adapter(lora), request, decode=False).latents
    both = sample(base.with_adapter(lora).with_adapter(embeddings), request, decode=False).latents
    assert not torch.equal(both, lora_only) and not torch.equal(both, results["object"])
    assert torch.equal(sample(base, request, decode=False).latents, plain)  # everything was removed
    # the noise prior shared with MotionDirector
    prior = NoisePrior(torch.randn(1, 4, FRAMES, 8, 8, generator=g), 0.5)
    with_prior = sample(base.with_adapter(embeddings).with_noise_prior(prior), request, decode=False).latents
    assert not torch.equal(with_prior, results["object"])


# ------------------------------------------------------------------------------------------ bad input
def test_bad_input_is_refused_clearly(unet3d_model, animatediff_model):
    model = unet3d_model
    adapter = random_adapter(model)
    request = SampleRequest(prompt="a square", width=SIZE, height=SIZE, num_frames=FRAMES, steps=1, cfg=1.0)
    base = MotionModel(base=model)
    # another family
    with pytest.raises(AdapterMismatchError, match="unet3d family"):
        sample(MotionModel(base=animatediff_model).with_adapter(adapter), request, decode=False)
    # another block layout (same family): a block this model does not have
    moved = MotionEmbeddings(**{**adapter.__dict__,
                                "qk": {k.replace("down_blocks.0", "down_blocks.2"): t for k, t in adapter.qk.items()},
                                "v": {k.replace("down_blocks.0", "down_blocks.2"): t for k, t in adapter.v.items()},
                                "grids": {k.replace("down_blocks.0", "down_blocks.2"): g
                                          for k, g in adapter.grids.items()}})
    with pytest.raises(AdapterMismatchError, match="another block layout"):
        sample(base.with_adapter(moved), request, decode=False)
    # another base model of the family, unless the check is off
    other = MotionEmbeddings(**{**adapter.__dict__, "base_model": "somebody/else"})
    with pytest.raises(AdapterMismatchError, match="somebody/else"):
        other.check_compatible(model)
    other.with_strategy(check_base_model=False).check_compatible(model)
    # another latent size / more frames: refused before the first step, fine with resampling
    bigger = SampleRequest(**{**request.__dict__, "width": 64, "height": 48})
    with pytest.raises(AdapterMismatchError, match="turn on resampling"):
        sample(base.with_adapter(adapter), bigger, decode=False)
    longer = SampleRequest(**{**request.__dict__, "num_frames": FRAMES + 4})
    with pytest.raises(AdapterMismatchError, match=f"trained on {FRAMES} frames"):
        sample(base.with_adapter(adapter), longer, decode=False)
    resampled = adapter.with_strategy(resample=True)
    for req in (bigger, longer):
        out = sample(base.with_adapter(resampled), req, decode=False).latents
        assert torch.isfinite(out).all()
    # strategy names, loss names, learning rates
    with pytest.raises(InputError, match="Unknown motion-embedding strategy"):
        adapter.with_strategy("dolly_zoom")
    with pytest.raises(InputError, match="strategy"):
        MotionInversionConfig(strategy="zoom").validate()
    with pytest.raises(InputError, match="Unknown Motion Inversion loss"):
        MotionInversion(MotionInversionConfig(loss="l1"))
    for lr in (0.0, -0.02, float("nan")):
        with pytest.raises(InputError, match="learning rate"):
            MotionInversion(MotionInversionConfig(learning_rate=lr))
    with pytest.raises(AdapterMismatchError, match="No temporal attention block matches"):
        select_blocks(model, ["down_blocks.7"])
    from nodes.nodes_motion_inversion import MotionKitTrainMotionEmbeddings

    assert "learning_rate must be > 0" in MotionKitTrainMotionEmbeddings.VALIDATE_INPUTS(learning_rate=0.0)
    assert "must not contain" in MotionKitTrainMotionEmbeddings.VALIDATE_INPUTS(save_name="../x")


# ------------------------------------------------------------------------------------------ nodes, workflow, CLI
def test_workflow_trains_then_samples_two_prompts_with_the_object_strategy(tmp_path, monkeypatch,
                                                                             tiny_unet3d_path):
    from executor import STAND_INS, Executor, isolate_host
    from motion_core.video import write_moving_square_video
    from nodes import NODE_CLASS_MAPPINGS
    from workflow_convert import ui_to_api

    dirs = isolate_host(tmp_path, monkeypatch)
    classes = {**STAND_INS, **NODE_CLASS_MAPPINGS}
    wf = json.loads((REPO / "workflows" / "motion_inversion.json").read_text(encoding="utf-8"))
    by_type = {}
    for node in wf["nodes"]:
        by_type.setdefault(node["type"], []).append(node)
    (apply_node,) = by_type["MotionKitApplyMotionAdapter"]
    assert apply_node["widgets_values"][5] == "object"
    assert len(by_type["MotionKitSampler"]) == 2
    prompts = {n["widgets_values"][0] for n in by_type["MotionKitSampler"]}
    assert len(prompts) == 2

    # the shipped graph, shrunk to the tiny model: same nodes and links, small sizes and step counts
    dirs.link_model("tiny_unet3d", tiny_unet3d_path)
    by_type["MotionKitLoadVideoModel"][0]["widgets_values"][0] = "tiny_unet3d"
    video = by_type["MotionKitLoadReferenceVideo"][0]
    write_moving_square_video(dirs.input / video["widgets_values"][0], num_frames=FRAMES, fps=8, width=SIZE,
                              height=SIZE, square=8, velocity=(2, 0), start=(2, 12))
    video["widgets_values"][1:5] = [FRAMES, 8.0, SIZE, SIZE]
    train_values = by_type["MotionKitTrainMotionEmbeddings"][0]["widgets_values"]
    # prompt, steps, lr, loss, frames, width, height, save_name, seed, control, resume_from, strategy, video_fps,
    # training_fps, checkpoint_every, preview_every, preview_prompt, preview_steps, noise_prior, noise_prior_steps, ...
    train_values[1], train_values[4:7] = 2, [FRAMES, SIZE, SIZE]
    train_values[14:20] = [0, 0, train_values[16], 1, 0.5, 2]
    for sampler in by_type["MotionKitSampler"]:
        sampler["widgets_values"][4] = 2  # steps
        sampler["widgets_values"][6:9] = [SIZE, SIZE, FRAMES]
    by_type["MotionKitNoisePrior"][0]["widgets_values"][1] = 2

    result = Executor().run(ui_to_api(wf, classes))
    train_id = str(by_type["MotionKitTrainMotionEmbeddings"][0]["id"])
    adapter, curve, preview = result.outputs[train_id]
    assert isinstance(adapter, MotionEmbeddings) and adapter.steps == 2 and adapter.frames == FRAMES
    assert curve.shape[0] == 1 and curve.shape[-1] == 3 and preview.shape == (FRAMES, SIZE, SIZE, 3)
    assert (dirs.motion_adapters / "motion_embeddings_car_roundabout.safetensors").is_file()
    videos = [result.outputs[str(n["id"])][0] for n in by_type["MotionKitSampler"]]
    assert all(v.shape == (FRAMES, SIZE, SIZE, 3) for v in videos) and not torch.equal(videos[0], videos[1])
    assert len([p for p in result.files() if p.suffix == ".webp"]) == 3  # two samples + the training preview

    # Load Motion Adapter reads the file back; Apply Motion Adapter takes strategy / strength / resampling
    from nodes.nodes_motiondirector import MotionKitApplyMotionAdapter, MotionKitLoadMotionAdapter

    loaded, info = MotionKitLoadMotionAdapter().load("motion_embeddings_car_roundabout.safetensors")
    assert isinstance(loaded, MotionEmbeddings) and "Motion Inversion" in info
    (applied,) = MotionKitApplyMotionAdapter().apply(MotionModel(base=adapter_model(tiny_unet3d_path)), loaded,
                                                     0.5, 0.0, strategy="camera", resample=True)
    (configured,) = applied.adapters
    assert (configured.strategy, configured.strength, configured.resample) == ("camera", 0.5, True)


_MODELS: dict = {}


def adapter_model(path):
    from motion_core.backbones import load_video_model

    if path not in _MODELS:
        _MODELS[path] = load_video_model(path, device="cpu")
    return _MODELS[path]


def test_cli_trains_and_samples_with_the_adapter(tmp_path, monkeypatch, capsys):
    from motion_core.cli import main

    monkeypatch.setenv("MOTIONKIT_ADAPTERS_DIR", str(tmp_path / "adapters"))
    code = main(["train", "--method", "motion_inversion", "--steps", "2", "--noise-prior-steps", "2",
                 "--preview-steps", "1", "--validate-every", "0", "--option", "loss=debiased",
                 "--run-dir", str(tmp_path / "run"), "--save-name", "mi_cli"])
    assert code == 0
    out = capsys.readouterr()
    assert "SMOKE TEST" in out.err and "wrote" in out.out
    saved = tmp_path / "adapters" / "mi_cli.safetensors"
    from motion_core.adapters.files import load_adapter

    adapter = load_adapter(saved)
    assert isinstance(adapter, MotionEmbeddings) and adapter.training_config["method_config"]["loss"] == "debiased"
    video = tmp_path / "out.mp4"
    code = main(["sample", "--adapter", "mi_cli", "--strategy", "camera", "--noise-prior", "0.5", "--steps", "2",
                 "--width", "32", "--height", "32", "--frames", "8", "--out", str(video)])
    assert code == 0 and video.is_file()
    # a size the embeddings were not trained for: a clear error, unless --resample
    code = main(["sample", "--adapter", "mi_cli", "--steps", "1", "--width", "48", "--height", "32", "--frames", "8",
                 "--out", str(tmp_path / "bad.mp4")])
    assert code == 1 and "turn on resampling" in capsys.readouterr().err
