"""MotionKit's Wan motion LoRAs in ComfyUI's own LoRA code (issue 12, part 4).

    /work/hostvenv/bin/python tests/host_wan_lora_check.py --comfyui ../shared/comfyui [--work DIR] [--json]

Run it with the *host's* Python (ComfyUI imports torchvision, which the dev venv lacks); ``tests/comfyui_host.py``
runs it inside the ComfyUI copy it prepares. Nothing is written into ``--comfyui``: the model and LoRA files go to
``--work`` (default: a temporary folder), registered with ``folder_paths`` as extra model folders.

What it proves, with ComfyUI's code doing ComfyUI's part:

1. **Tiny weights, full path.** ComfyUI's own ``WanModel`` (tiny sizes its detection accepts: width 256 =
   2 heads x 128, text width 4096) gets seeded random weights under the original Wan names; the file loads through
   the ``UNETLoader`` node (ComfyUI's ``WAN21`` model), and the same weights go into MotionKit's diffusers
   ``WanTransformer3DModel`` through diffusers' own converter (``convert_wan_transformer_to_diffusers``), which also
   says which ComfyUI weight each diffusers layer is -- independently of MotionKit's key table.
2. **The LoRA MotionKit trains.** MotionDirector's temporal + spatial LoRAs injected by its own ``setup`` on the
   Wan model (Wan 2.1, and both experts of a Wan 2.2 A14B pair), with random non-zero A/B; a short real training
   run. Exported by MotionKit in both formats (``comfy``: ``diffusion_model.*.lora_A/B`` + alpha; ``kohya``:
   ``lora_unet_*.lora_down/up`` + alpha), A14B as a high/low file pair, each file on its own expert (and the
   high-noise file on the low-noise expert shown to be another update). Also: ``export_adapter``'s own file,
   alpha = rank / 2 (scale 0.5), a bf16 file, and a LoRA on every Linear of the DiT (text cross-attention,
   embeddings, head; alpha = 2 x rank).
3. **ComfyUI applies it.** ``model_lora_keys_unet`` -> ``convert_lora`` -> ``load_lora`` (the LoRA file keys it
   does not load are the ones it logs as ``lora key not loaded``: counted), and the ``LoraLoaderModelOnly`` node
   itself; ``patch_model`` -> the patched weights. Every adapted layer must be patched with
   ``patched - base == MotionKit's own delta`` (the peft layer's ``get_delta_weight``: scale * B @ A) and every
   other weight left as it was; the patched ComfyUI model's output must equal MotionKit's model with the LoRA on.
4. **Real sizes on the meta device.** ComfyUI's ``WanModel`` with the Wan 2.1 T2V 1.3B and 14B configs (14B =
   each expert of Wan 2.2 A14B), detected back by ComfyUI's ``model_config_from_unet`` and built as its ``WAN21``
   model; MotionKit's diffusers model of the same config with MotionDirector's LoRAs injected by its ``setup``:
   every exported key is loaded by ComfyUI onto a weight of its model, with the weight's shape, and every adapted
   layer is exported; a LoRA on every Linear of the 1.3B T2V and the 14B I2V (image cross-attention and
   embedder) too.

Prints one line per check and, with ``--json``, a last line with every number; exits 1 when any check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

sys.dont_write_bytecode = True  # never write __pycache__ into a read-only ComfyUI
REPO = Path(__file__).resolve().parent.parent

#: the tiny Wan: ComfyUI derives heads = width / 128 and fixes text width 4096 / freq dim 256 / patch (1, 2, 2)
TINY = dict(dim=256, ffn_dim=512, num_layers=2, num_heads=2)
#: the real configs (Wan 2.1 T2V 1.3B; Wan 2.1 T2V 14B, also each expert of Wan 2.2 T2V A14B; Wan 2.2 TI2V 5B)
REAL = {"1.3B": dict(dim=1536, ffn_dim=8960, num_layers=30, num_heads=12),
        "14B": dict(dim=5120, ffn_dim=13824, num_layers=40, num_heads=40),
        "5B": dict(dim=3072, ffn_dim=14336, num_layers=30, num_heads=24, in_dim=48, out_dim=48)}
#: what ComfyUI's detection must read back from the weights
DETECTED = ("dim", "num_heads", "num_layers", "ffn_dim", "in_dim", "out_dim")
COMMON = dict(model_type="t2v", patch_size=(1, 2, 2), in_dim=16, out_dim=16, text_dim=4096, freq_dim=256)
#: Wan 2.1 I2V: latents + mask + first-frame latents in, CLIP-H image tokens (1280 wide, fixed in ComfyUI)
I2V = dict(model_type="i2v", in_dim=36)
FORMATS = ("comfy", "kohya")
RANK = 4
#: fp32 rounding of W + dW against W + dW computed elsewhere (|W| ~ 0.05, |dW| ~ 0.1)
TOLERANCE = 1e-5


# ------------------------------------------------------------------------------------------ the host
def import_comfy(comfyui: Path):
    """ComfyUI's modules as its server imports them (``--cpu``)."""
    comfyui = comfyui.resolve()
    os.chdir(comfyui)
    sys.path[:0] = [str(comfyui), str(REPO)]
    import comfy.options

    comfy.options.enable_args_parsing()
    argv, sys.argv = sys.argv, [sys.argv[0], "--cpu"]
    try:
        import comfy.cli_args  # noqa: F401  (parses --cpu)
        import comfy.lora
        import comfy.lora_convert
        import comfy.model_detection
        import comfy.ops
        import comfy.sd
        import folder_paths
        import nodes
        from comfy.ldm.wan.model import WanModel
    finally:
        sys.argv = argv
    return dict(lora=comfy.lora, lora_convert=comfy.lora_convert, detection=comfy.model_detection, ops=comfy.ops,
                folder_paths=folder_paths, nodes=nodes, WanModel=WanModel)


@contextlib.contextmanager
def comfy_warnings(*needles: str):
    """The warnings ComfyUI logs while the block runs that contain one of ``needles`` (its verdict on keys)."""
    found: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record):
            text = record.getMessage()
            if any(n in text for n in needles):
                found.append(text)

    handler = Catch(logging.WARNING)
    logging.getLogger().addHandler(handler)
    try:
        yield found
    finally:
        logging.getLogger().removeHandler(handler)


def comfy_wan(C, config: dict, device: str = "meta", *, image: bool = False):
    """ComfyUI's own Wan DiT class with ``config`` (no weights: ``disable_weight_init`` ops on ``device``)."""
    options = {**COMMON, **(I2V if image else {}), **config}
    return C["WanModel"](**options, device=device, operations=C["ops"].disable_weight_init)


def random_original_weights(C, seed: int) -> dict:
    """Seeded random weights for every tensor of ComfyUI's tiny Wan, under its (the original Wan) names."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, t in comfy_wan(C, TINY).state_dict().items():
        noise = torch.randn(t.shape, generator=g)
        out[key] = (1.0 + 0.1 * noise) if ".norm" in key and key.endswith(".weight") else 0.05 * noise
    return out


def diffusers_wan(config: dict, *, image: bool = False):
    """diffusers' Wan DiT with ``config`` (``image``: Wan 2.1 I2V: 36 input channels, CLIP image context)."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=COMMON["patch_size"], num_attention_heads=config["num_heads"],
        attention_head_dim=config["dim"] // config["num_heads"],
        in_channels=I2V["in_dim"] if image else config.get("in_dim", COMMON["in_dim"]),
        out_channels=config.get("out_dim", COMMON["out_dim"]), text_dim=COMMON["text_dim"], freq_dim=COMMON["freq_dim"],
        ffn_dim=config["ffn_dim"], num_layers=config["num_layers"], cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280 if image else None,
        added_kv_proj_dim=config["dim"] if image else None)


def to_diffusers(original: dict):
    """MotionKit's diffusers transformer holding ``original``'s weights (diffusers' converter), and
    ``{diffusers weight name: ComfyUI weight name}`` read off the converter (it renames the same tensors)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    by_tensor = {id(v): k for k, v in original.items()}
    converted = convert_wan_transformer_to_diffusers(dict(original))
    names = {k: "diffusion_model." + by_tensor[id(v)] for k, v in converted.items()}
    model = diffusers_wan(TINY)
    model.load_state_dict(converted, strict=True, assign=False)
    model.requires_grad_(False)
    return model, names


def write_motionkit_folder(folder: Path, transformers: list) -> Path:
    """A tiny Wan folder MotionKit loads (``load_video_model``): tiny_wan's VAE / tokenizer / scheduler, these
    transformers (one: Wan 2.1; two: Wan 2.2 A14B high/low) and a UMT5 text encoder 4096 wide, as ComfyUI's
    Wan DiT reads."""
    from transformers import UMT5Config, UMT5EncoderModel

    from motion_core.tiny_wan import TINY_WAN_VOCAB_SIZE, build_tiny_wan

    build_tiny_wan(folder, seed=0, variant="2.1" if len(transformers) == 1 else "2.2-a14b")
    for sub, transformer in zip(("transformer", "transformer_2"), transformers):
        transformer.save_pretrained(folder / sub, safe_serialization=True)
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=TINY_WAN_VOCAB_SIZE, d_model=COMMON["text_dim"], d_kv=8, d_ff=32, num_layers=1, num_heads=2,
            relative_attention_num_buckets=8, relative_attention_max_distance=32, feed_forward_proj="gated-gelu",
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    return folder


# ------------------------------------------------------------------------------------------ MotionKit's LoRAs
def inject_motiondirector(model, seed: int):
    """MotionDirector's own ``setup`` on ``model`` (its temporal and spatial LoRAs, on the layers and with the
    ranks/alphas the method uses), then random A and non-zero random B in every LoRA. Returns the method."""
    import torch

    from motion_core.adapters.lora import lora_root
    from motion_core.methods import create_method

    method = create_method("motiondirector", rank=RANK, noise_prior_steps=0)
    clip = type("Clip", (), {"video_index": 0, "inverted": None})()
    method.setup(model, [clip], torch.Generator().manual_seed(seed))
    randomize_lora(lora_root(model), seed)
    return method


def randomize_lora(root, seed: int) -> None:
    """Random A and non-zero random B in every LoRA under ``root`` (a LoRA that starts as a no-op would hide a
    wrong key or scale); LoRAs on the meta device are left alone."""
    import torch

    from motion_core.adapters.lora import lora_layers

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(root).values():
            for name in layer.lora_A:
                a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
                if a.device.type != "meta":
                    a.copy_(torch.randn(a.shape, generator=g) / a.shape[1] ** 0.5)
                    b.copy_(0.2 * torch.randn(b.shape, generator=g))


def linear_names(module) -> list[str]:
    """Every ``nn.Linear`` of a diffusers Wan DiT: attention (self, text, image), feed-forward, the condition
    embedders, the head -- every layer a Wan LoRA can hold."""
    from torch import nn

    return [n for n, m in module.named_modules() if type(m) is nn.Linear]


def peft_deltas(root, set_name: str, prefix: str = "") -> dict:
    """``{diffusers layer: delta}`` of LoRA set ``set_name`` as peft applies it in MotionKit's model
    (``get_delta_weight``: scaling * B @ A), for the layers under ``prefix`` (an A14B expert), prefix removed."""
    from motion_core.adapters.lora import lora_layers

    out = {}
    for name, layer in lora_layers(root).items():
        if set_name in layer.lora_A and name.startswith(prefix):
            out[name[len(prefix):]] = layer.get_delta_weight(set_name).detach().float().cpu()
    return out


def export(lora_set, fmt: str, prefix: str = "", alpha: float | None = None, dtype=None) -> dict:
    """MotionKit's ComfyUI Wan export of one LoRA set (an expert's half when ``prefix``)."""
    from motion_core.adapters.wan_keys import export_comfy_wan_lora

    peft = {}
    for layer, (a, b) in lora_set.weights.items():
        if layer.startswith(prefix):
            peft[f"{layer[len(prefix):]}.lora_A.weight"] = a
            peft[f"{layer[len(prefix):]}.lora_B.weight"] = b
    return export_comfy_wan_lora(peft, rank=lora_set.rank, alpha=lora_set.alpha if alpha is None else alpha,
                                 format=fmt, dtype=dtype)


# ------------------------------------------------------------------------------------------ ComfyUI's LoRA code
def comfy_load_lora(C, comfy_model, lora: dict) -> tuple[dict, list[str]]:
    """ComfyUI's patches for ``lora`` on ``comfy_model`` (a ``BaseModel``) the way ``load_lora_for_models`` makes
    them, and the LoRA file keys it did not load (what it logs as ``lora key not loaded``)."""
    key_map = C["lora"].model_lora_keys_unet(comfy_model, {})
    converted = C["lora_convert"].convert_lora(dict(lora))
    with comfy_warnings("lora key not loaded") as missed:
        patches = C["lora"].load_lora(converted, key_map)
    return patches, [m.split(": ", 1)[-1] for m in missed]


def apply_with_node(C, patcher, lora_name: str) -> tuple[dict, object, list[str]]:
    """What a user's ``LoraLoaderModelOnly`` (strength 1) does to ``patcher``: the patched weights (after
    ``patch_model`` on the CPU), the patched ModelPatcher (weights restored), and the host's warnings."""
    import torch

    with comfy_warnings("lora key not loaded", "NOT LOADED") as warned:
        (patched,) = C["nodes"].LoraLoaderModelOnly().load_lora_model_only(patcher, lora_name, 1.0)
    patched.patch_model(device_to=torch.device("cpu"))
    try:
        weights = {k: v.detach().clone() for k, v in patched.model.diffusion_model.state_dict().items()}
    finally:
        patched.unpatch_model()
    return weights, patched, warned


def compare(name: str, lora: dict, patches: dict, missed: list, node_weights: dict, node_warned: list,
            base: dict, deltas: dict, to_comfy: dict) -> dict:
    """The numbers of one LoRA file on one model; ``deltas`` by diffusers layer, ``to_comfy`` the converter's
    diffusers -> ComfyUI weight names."""
    expected = {to_comfy[f"{layer}.weight"]: d for layer, d in deltas.items()}
    short = {k[len("diffusion_model."):]: v for k, v in expected.items()}
    patched_keys = {k if isinstance(k, str) else k[0] for k in patches}
    errors = [float((node_weights[k] - base[k] - d).abs().max()) for k, d in short.items()]
    untouched = [float((node_weights[k] - base[k]).abs().max()) for k in base if k not in short]
    report = {
        "case": name, "keys_in_file": len(lora), "layers_in_file": sum(k.endswith(".alpha") for k in lora),
        "adapted_layers": len(deltas), "patches": len(patches), "unmatched": sorted(missed),
        "node_warnings": node_warned, "patched_not_adapted": sorted(patched_keys - set(expected)),
        "adapted_not_patched": sorted(set(expected) - patched_keys),
        "max_error": max(errors) if errors else float("inf"), "max_delta": max(float(d.abs().max()) for d in deltas.values()),
        "max_untouched_change": max(untouched) if untouched else 0.0,
    }
    report["ok"] = bool(not report["unmatched"] and not node_warned and not report["patched_not_adapted"]
                        and not report["adapted_not_patched"] and report["patches"] == report["adapted_layers"]
                        and report["layers_in_file"] == report["adapted_layers"] and report["max_error"] <= TOLERANCE
                        and report["max_delta"] > 1e-3 and report["max_untouched_change"] == 0.0)
    return report


def forward_pair(patcher, transformer, seed: int) -> float:
    """max |ComfyUI's (patched) Wan DiT output - MotionKit's diffusers DiT output| on one seeded input (2 latent
    frames of 8 x 8, a 7-token context, t = 637)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 2, 8, 8, generator=g)
    context = torch.randn(1, 7, COMMON["text_dim"], generator=g)
    t = torch.tensor([637.0])
    patcher.patch_model(device_to=torch.device("cpu"))
    try:
        with torch.no_grad():
            comfy_out = patcher.model.diffusion_model(x, t, context)
    finally:
        patcher.unpatch_model()
    with torch.no_grad():
        ours = transformer(hidden_states=x, timestep=t, encoder_hidden_states=context, return_dict=False)[0]
    return float((comfy_out - ours).abs().max())


# ------------------------------------------------------------------------------------------ the checks
class Checks:
    def __init__(self, C, work: Path) -> None:
        self.C, self.work = C, work
        self.results: list[dict] = []
        for kind in ("loras", "diffusion_models"):
            (work / kind).mkdir(parents=True, exist_ok=True)
            C["folder_paths"].add_model_folder_path(kind, str(work / kind), is_default=True)

    def record(self, report: dict) -> dict:
        self.results.append(report)
        shown = {k: v for k, v in report.items() if k not in ("case", "ok")}
        print(f"{'ok  ' if report['ok'] else 'FAIL'} {report['case']}: {json.dumps(shown)}", flush=True)
        return report

    def comfy_model(self, original: dict, name: str):
        """``original`` as a file in models/diffusion_models, loaded by ComfyUI's UNETLoader node."""
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in original.items()}, str(self.work / "diffusion_models" / name))
        (patcher,) = self.C["nodes"].UNETLoader().load_unet(name, "default")
        base = {k: v.detach().clone() for k, v in patcher.model.diffusion_model.state_dict().items()}
        same = set(base) == set(original) and all(torch_equal(base[k], original[k]) for k in original)
        return patcher, base, same, type(patcher.model).__name__

    def lora_case(self, name: str, patcher, base: dict, tensors: dict, deltas: dict, to_comfy: dict) -> dict:
        from motion_core.adapters.wan_keys import save_lora_file

        path = save_lora_file(tensors, self.work / "loras", re.sub(r"[^A-Za-z0-9_]+", "_", name))
        patches, missed = comfy_load_lora(self.C, patcher.model, tensors)
        weights, _, warned = apply_with_node(self.C, patcher, path.name)
        return self.record(compare(name, tensors, patches, missed, weights, warned, base, deltas, to_comfy))

    # -------------------------------------------------------------------------------- Wan 2.1, injected
    def wan21(self) -> None:
        from motion_core.adapters.lora import lora_root
        from motion_core.backbones import load_video_model

        original = random_original_weights(self.C, seed=11)
        transformer, to_comfy = to_diffusers(original)
        patcher, base, same, cls = self.comfy_model(original, "motionkit_tiny_wan21.safetensors")
        folder = write_motionkit_folder(self.work / "mk_wan21", [transformer])
        model = load_video_model(folder, device="cpu")
        model_cfg = patcher.model.model_config.unet_config
        self.record({"case": "wan2.1 tiny model in ComfyUI", "comfy_class": cls,
                     "comfy_config": {k: model_cfg[k] for k in ("dim", "num_heads", "num_layers", "ffn_dim")},
                     "weights_as_given": same, "weights": len(base),
                     "ok": bool(same and cls == "WAN21" and model_cfg["num_heads"] == TINY["num_heads"])})
        base_gap = forward_pair(patcher, model.denoiser, seed=1)
        self.record({"case": "wan2.1 base outputs, ComfyUI vs MotionKit", "max_abs_diff": base_gap,
                     "ok": base_gap < 1e-4})
        method = inject_motiondirector(model, seed=3)
        try:
            adapter = method.build_adapter(model, steps=0, training_config={}, clips=[])
            root = lora_root(model)
            for set_name in ("temporal", "spatial_0"):
                lora_set, deltas = adapter.get_set(set_name), peft_deltas(root, set_name)
                gap = max(float((lora_set.delta(k) - d).abs().max()) for k, d in deltas.items())
                assert gap < 1e-6, f"the adapter's LoRA set differs from the injected layers by {gap}"
                for fmt in FORMATS:
                    self.lora_case(f"wan2.1 motiondirector {set_name} {fmt}", patcher, base, export(lora_set, fmt),
                                   deltas, to_comfy)
            # the file a user gets from MotionKit's export (node / CLI / export_adapter): the motion set, comfy format
            from motion_core.adapters.files import export_adapter
            from safetensors.torch import load_file

            path = export_adapter(adapter, self.work / "loras" / "motionkit_wan21_motion.safetensors", "comfyui_wan")
            report = self.lora_case("wan2.1 export_adapter comfyui_wan", patcher, base, load_file(str(path)),
                                    peft_deltas(root, "temporal"), to_comfy)
            # an alpha that is not the rank (scale 0.5): the same B @ A, half the update, in ComfyUI too
            temporal = adapter.get_set("temporal")
            half = {k: 0.5 * d for k, d in peft_deltas(root, "temporal").items()}
            for fmt in FORMATS:
                self.lora_case(f"wan2.1 alpha = rank/2 {fmt}", patcher, base,
                               export(temporal, fmt, alpha=temporal.rank / 2), half, to_comfy)
            # a bf16 file (``dtype=torch.bfloat16``, half the bytes): exactly the update of the rounded A and B
            import torch

            rounded = {k: (temporal.alpha / temporal.rank) * (b.bfloat16().float() @ a.bfloat16().float())
                       for k, (a, b) in temporal.weights.items()}
            for fmt in FORMATS:
                self.lora_case(f"wan2.1 bf16 file {fmt}", patcher, base, export(temporal, fmt, dtype=torch.bfloat16),
                               rounded, to_comfy)
        finally:
            method.teardown(model)
        # the whole model: ComfyUI's patched DiT computes what MotionKit's computes with the adapter on (its
        # sampling path: ``MotionLoRA.activate`` installs the motion set only)
        (patched,) = self.C["nodes"].LoraLoaderModelOnly().load_lora_model_only(patcher, path.name, 1.0)
        with adapter.activate(model):
            gap = forward_pair(patched, model.denoiser, seed=2)
            plain = forward_pair(patcher, model.denoiser, seed=2)
        self.record({"case": "wan2.1 outputs with the motion LoRA, ComfyUI vs MotionKit", "max_abs_diff": gap,
                     "lora_effect": plain, "ok": bool(gap < 1e-4 and plain > 1e-3) and report["ok"]})

    # -------------------------------------------------------------------------------- Wan 2.1, trained
    def wan21_trained(self, steps: int) -> None:
        from motion_core.adapters.files import export_adapter
        from motion_core.backbones import load_video_model
        from motion_core.methods import create_method
        from motion_core.training import TrainingConfig, train
        from motion_core.video import moving_square_frames
        from safetensors.torch import load_file

        original = random_original_weights(self.C, seed=11)
        transformer, to_comfy = to_diffusers(original)
        patcher, base, _, _ = self.comfy_model(original, "motionkit_tiny_wan21.safetensors")
        model = load_video_model(self.work / "mk_wan21", device="cpu")
        frames = moving_square_frames(5, 32, 32, square=8, velocity=(3, 0), start=(2, 12))
        config = TrainingConfig(steps=steps, frames=5, width=32, height=32, fps=None, checkpoint_every=0,
                                validate_every=0, final_preview=False, run_dir=str(self.work / "md_run"),
                                write_preview_videos=False)
        result = train(model, create_method("motiondirector", rank=RANK, learning_rate=5e-3, noise_prior_steps=0,
                                            spatial_drop_probability=0.0), [frames], "a red square", config)
        temporal = result.adapter.get_set("temporal")
        path = export_adapter(result.adapter, self.work / "loras" / "motionkit_wan21_trained.safetensors",
                              "comfyui_wan")
        self.lora_case(f"wan2.1 trained {steps} steps export_adapter comfyui_wan", patcher, base,
                       load_file(str(path)), {k: temporal.delta(k) for k in temporal.weights}, to_comfy)

    # -------------------------------------------------------------------------------- Wan 2.2 A14B pair
    def a14b(self) -> None:
        from motion_core.adapters.files import export_adapter_files
        from motion_core.adapters.lora import lora_root
        from motion_core.adapters.wan_keys import export_comfy_wan_lora_pair
        from motion_core.backbones import load_video_model
        from safetensors.torch import load_file

        experts = {"high_noise": random_original_weights(self.C, seed=21),
                   "low_noise": random_original_weights(self.C, seed=22)}
        converted = {e: to_diffusers(sd) for e, sd in experts.items()}
        comfy_models = {e: self.comfy_model(sd, f"motionkit_tiny_wan22_{e}.safetensors") for e, sd in experts.items()}
        folder = write_motionkit_folder(self.work / "mk_a14b", [converted["high_noise"][0], converted["low_noise"][0]])
        model = load_video_model(folder, device="cpu")
        assert [e.name for e in model.experts] == ["high_noise", "low_noise"]
        method = inject_motiondirector(model, seed=4)
        try:
            adapter = method.build_adapter(model, steps=0, training_config={}, clips=[])
            root = lora_root(model)
            paths = export_adapter_files(adapter, self.work / "loras" / "motionkit_a14b.safetensors", "comfyui_wan")
            temporal = adapter.get_set("temporal")
            peft_sd = {e: {} for e in experts}
            for layer, (a, b) in temporal.weights.items():
                expert, name = layer.split(".", 1)
                peft_sd[expert][f"{name}.lora_A.weight"], peft_sd[expert][f"{name}.lora_B.weight"] = a, b
            kohya = export_comfy_wan_lora_pair(peft_sd["high_noise"], peft_sd["low_noise"], rank=temporal.rank,
                                               alpha=temporal.alpha, format="kohya")
            for expert, path in zip(experts, paths):
                patcher, base, same, _ = comfy_models[expert]
                deltas = peft_deltas(root, "temporal", prefix=expert + ".")
                to_comfy = converted[expert][1]
                self.lora_case(f"wan2.2 a14b {path.stem} on the {expert} expert (comfy)", patcher, base,
                               load_file(str(path)), deltas, to_comfy)
                self.lora_case(f"wan2.2 a14b {expert} kohya pair", patcher, base, kohya[expert], deltas, to_comfy)
            # each file belongs to its own expert: on the other expert it is another update than MotionKit's
            patcher, base, _, _ = comfy_models["low_noise"]
            high = load_file(str(paths[0]))
            weights, _, _ = apply_with_node(self.C, patcher, paths[0].name)
            low_deltas = peft_deltas(root, "temporal", prefix="low_noise.")
            to_comfy = converted["low_noise"][1]
            wrong = max(float((weights[to_comfy[f"{k}.weight"][len("diffusion_model."):]]
                               - base[to_comfy[f"{k}.weight"][len("diffusion_model."):]] - d).abs().max())
                        for k, d in low_deltas.items())
            self.record({"case": "wan2.2 a14b high-noise file on the low-noise expert differs", "keys": len(high),
                         "max_gap_to_low_delta": wrong, "ok": wrong > 1e-3})
        finally:
            method.teardown(model)

    # -------------------------------------------------------------------------------- every Linear, tiny weights
    def wan21_every_linear(self) -> None:
        """A LoRA on every Linear of MotionKit's Wan DiT (text cross-attention, embeddings and head too; alpha =
        2 x rank): more than a method trains today, every layer a MotionKit Wan LoRA can hold."""
        from motion_core.adapters.lora import LoraSet, inject_lora, lora_weights

        original = random_original_weights(self.C, seed=11)
        transformer, to_comfy = to_diffusers(original)
        patcher, base, _, _ = self.comfy_model(original, "motionkit_tiny_wan21.safetensors")
        inject_lora(transformer, "every", linear_names(transformer), rank=RANK, alpha=2.0 * RANK, init=False)
        randomize_lora(transformer, seed=6)
        lora_set = LoraSet(name="every", role="motion", rank=RANK, alpha=2.0 * RANK,
                           weights=lora_weights(transformer, "every"))
        for fmt in FORMATS:
            self.lora_case(f"wan2.1 every Linear alpha = 2 rank {fmt}", patcher, base, export(lora_set, fmt),
                           peft_deltas(transformer, "every"), to_comfy)

    # -------------------------------------------------------------------------------- real sizes, meta device
    def comfy_meta(self, config: dict, *, image: bool = False):
        """ComfyUI's Wan model of ``config`` on the meta device as its loaders build it: the DiT's weight names
        and shapes -> ``model_config_from_unet`` (ComfyUI's detection) -> ``get_model`` (its ``WAN21`` class)."""
        state = comfy_wan(self.C, config, image=image).state_dict()
        model_config = self.C["detection"].model_config_from_unet(state, "")
        comfy_model = model_config.get_model(state, "", device="meta")
        detected = {k: model_config.unet_config.get(k) for k in DETECTED + ("model_type",)}
        detected["class"] = type(model_config).__name__
        return comfy_model, detected

    def meta_case(self, case: str, comfy_model, detected: dict, expected: dict, lora: dict, adapted: int) -> None:
        patches, missed = comfy_load_lora(self.C, comfy_model, lora)
        shapes = {k: tuple(v.shape) for k, v in comfy_model.state_dict().items()}
        wrong_shape = [k for k, p in patches.items() if shapes.get(k) != (p.weights[0].shape[0], p.weights[1].shape[1])]
        exported = sum(k.endswith(".alpha") for k in lora)
        self.record({
            "case": case, "comfy_detected": detected, "comfy_weights": len(shapes), "adapted_layers": adapted,
            "exported_layers": exported, "keys_in_file": len(lora), "patches": len(patches), "unmatched": missed,
            "wrong_shape": wrong_shape,
            "ok": bool(detected == expected and not missed and not wrong_shape and exported == adapted == len(patches) > 0
                       and all(k.startswith("diffusion_model.") for k in patches))})

    def meta(self, label: str, config: dict, experts: int) -> None:
        """MotionDirector's LoRAs on the real config, injected by its ``setup`` on MotionKit's meta model."""
        import torch
        from diffusers import FlowMatchEulerDiscreteScheduler

        from motion_core.adapters.lora import LoraSet, lora_layers, lora_root
        from motion_core.backbones.wan import WanVideoModel

        comfy_model, detected = self.comfy_meta(config)
        expected = expected_detection(config, image=False)
        with torch.device("meta"):
            transformers = [diffusers_wan(config) for _ in range(experts)]
        model = WanVideoModel(denoiser=transformers[0], vae=None, text_encoder=None, tokenizer=None,
                              scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                              base_model=f"Wan {label} (meta)", denoiser_2=transformers[1] if experts == 2 else None,
                              boundary_ratio=0.875 if experts == 2 else None)
        method = inject_motiondirector(model, seed=0)
        try:
            root = lora_root(model)
            for set_name in ("temporal", "spatial_0"):
                weights = {n: (layer.lora_A[set_name].weight, layer.lora_B[set_name].weight)
                           for n, layer in lora_layers(root).items() if set_name in layer.lora_A}
                lora_set = LoraSet(name=set_name, role="motion" if set_name == "temporal" else "appearance",
                                   rank=RANK, alpha=float(RANK), weights=weights)
                for prefix in ([e.name + "." for e in model.experts] if experts == 2 else [""]):
                    adapted = sum(k.startswith(prefix) for k in weights)
                    for fmt in FORMATS:
                        self.meta_case(f"meta {label} {prefix.rstrip('.') or 'model'} {set_name} {fmt}", comfy_model,
                                       detected, expected, export(lora_set, fmt, prefix=prefix), adapted)
        finally:
            method.teardown(model)

    def meta_every_linear(self, label: str, config: dict, image: bool) -> None:
        """A LoRA on every Linear of MotionKit's meta model of the real config (T2V, or I2V with its image
        cross-attention and image embedder)."""
        import torch

        from motion_core.adapters.lora import LoraSet

        comfy_model, detected = self.comfy_meta(config, image=image)
        expected = expected_detection(config, image=image)
        with torch.device("meta"):
            transformer = diffusers_wan(config, image=image)
        modules = dict(transformer.named_modules())
        weights = {n: (torch.empty(RANK, modules[n].in_features, device="meta"),
                       torch.empty(modules[n].out_features, RANK, device="meta")) for n in linear_names(transformer)}
        lora_set = LoraSet(name="every", role="motion", rank=RANK, alpha=float(RANK), weights=weights)
        for fmt in FORMATS:
            self.meta_case(f"meta {label} every Linear {fmt}", comfy_model, detected, expected, export(lora_set, fmt),
                           len(weights))


def expected_detection(config: dict, *, image: bool) -> dict:
    """What ComfyUI's detection must find in the weights of ``config``: the sizes and its supported-model class."""
    full = {**COMMON, **(I2V if image else {}), **config}
    out = {k: full[k] for k in DETECTED}
    out["model_type"] = full["model_type"]
    out["class"] = "WAN21_I2V" if image else ("WAN22_T2V" if full["out_dim"] == 48 else "WAN21_T2V")
    return out


def torch_equal(a, b) -> bool:
    import torch

    return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", type=Path, default=REPO.parent / "shared" / "comfyui")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--train-steps", type=int, default=3, help="the short real MotionDirector run (0: skip)")
    parser.add_argument("--skip-meta", action="store_true", help="only the tiny-weight checks")
    parser.add_argument("--json", action="store_true", help="print every number as one JSON line at the end")
    args = parser.parse_args(argv)
    work = (args.work or Path(tempfile.mkdtemp(prefix="motionkit-wan-lora-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    C = import_comfy(args.comfyui)
    logging.getLogger().setLevel(logging.WARNING)
    checks = Checks(C, work)
    steps = [("wan 2.1 injected", checks.wan21), ("wan 2.2 a14b pair", checks.a14b),
             ("wan 2.1 every Linear", checks.wan21_every_linear)]
    if args.train_steps:
        steps.append(("wan 2.1 trained", lambda: checks.wan21_trained(args.train_steps)))
    if not args.skip_meta:
        steps += [(f"meta {k}", lambda k=k: checks.meta(k, REAL[k], 1)) for k in ("1.3B", "14B")]
        steps.append(("meta a14b", lambda: checks.meta("A14B", REAL["14B"], 2)))
        steps.append(("meta 5B", lambda: checks.meta("5B", REAL["5B"], 1)))
        steps += [("meta 1.3B every Linear", lambda: checks.meta_every_linear("1.3B T2V", REAL["1.3B"], False)),
                  ("meta 14B I2V every Linear", lambda: checks.meta_every_linear("14B I2V", REAL["14B"], True))]
    for label, step in steps:
        try:
            step()
        except Exception as exc:  # a crash in one check is a failure of that check, the others still run
            import traceback

            traceback.print_exc()
            checks.record({"case": label, "error": f"{type(exc).__name__}: {exc}", "ok": False})
    failed = [r["case"] for r in checks.results if not r["ok"]]
    print(f"== {len(checks.results)} checks, {len(failed)} failed" + (f": {failed}" if failed else ""), flush=True)
    if args.json:
        print(json.dumps({"results": checks.results, "failed": failed}, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
