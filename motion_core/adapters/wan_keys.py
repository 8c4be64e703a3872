"""Wan LoRA keys: diffusers ``WanTransformer3DModel`` module names <-> original Wan / ComfyUI names.

ComfyUI's native LoRA loader has no Wan-specific key map: for every weight ``diffusion_model.<path>.weight``
of its Wan model (the original Wan repository's module names) it accepts ``diffusion_model.<path>`` and the
kohya form ``lora_unet_<path with . -> _>`` (reference/comfyui_host_and_ecosystem.md section 5.3). Diffusers
names (``transformer.blocks.0.attn1.to_q``) are rejected, so a LoRA trained on the diffusers model must be
renamed before a ComfyUI user can load it with ``LoraLoaderModelOnly``.

:data:`WAN_BLOCK_KEYS` / :data:`WAN_GLOBAL_KEYS` are the renaming table. Every entry was checked against
diffusers' own converters in the installed wheel: ``loaders/single_file_utils.py:
convert_wan_transformer_to_diffusers`` (original checkpoint -> diffusers, the same table as diffusers'
``scripts/convert_wan_to_diffusers.py``) and ``loaders/lora_conversion_utils.py:
_convert_non_diffusers_wan_lora_to_diffusers`` / ``_convert_musubi_wan_lora_to_diffusers`` (ComfyUI/musubi
LoRA -> diffusers); ``tests/test_wan.py`` runs the former on every exported name. (``img_emb.emb_pos``, the
FLF2V image position embedding, is only in the conversion script's table, not in the wheel's converter.) Note the norm swap:
diffusers' ``norm2`` (before cross-attention) is the original ``norm3`` and vice versa, because the original
model creates them in the order norm1, norm3, norm2.

Formats written by :func:`export_comfy_wan_lora`:

* ``"comfy"`` (default) -- ``diffusion_model.<orig>.lora_A.weight`` ``[r, in]``, ``.lora_B.weight``
  ``[out, r]`` and ``.alpha`` (a 0-d float tensor): what diffusion-pipe / musubi / ComfyUI's own trainer
  emit; loads in native ComfyUI, WanVideoWrapper and diffusers' ``WanLoraLoaderMixin``.
* ``"kohya"`` -- ``lora_unet_<orig with _>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``. Loads in
  native ComfyUI and musubi. diffusers reads this form only when *every* block has self-attention,
  cross-attention and feed-forward LoRAs (its musubi converter pops them unconditionally), so prefer
  ``"comfy"`` for a LoRA on a subset of the layers.

The LoRA update is ``W + (alpha / r) * B @ A`` in all three ecosystems (peft, ComfyUI, kohya), so
``alpha`` is exported as peft's ``lora_alpha`` (an rsLoRA scaling ``alpha / sqrt(r)`` is converted to the
equivalent ``alpha' = alpha * sqrt(r)``). Wan 2.2 A14B has two experts: a LoRA per expert, exported as a
high-noise / low-noise pair (:func:`export_comfy_wan_lora_pair`), as ComfyUI users load them on two model
chains.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping

import torch

from ..errors import AdapterMismatchError, InputError

__all__ = [
    "WAN_BLOCK_KEYS",
    "WAN_GLOBAL_KEYS",
    "WAN_WIDTHS",
    "check_wan_lora_fits",
    "diffusers_to_original",
    "export_comfy_wan_lora",
    "export_comfy_wan_lora_pair",
    "import_wan_lora",
    "original_to_diffusers",
    "save_lora_file",
    "wan_variant_name",
]

LoraFormat = Literal["comfy", "kohya"]

#: inside ``blocks.{i}``: diffusers module -> original Wan module
WAN_BLOCK_KEYS: dict[str, str] = {
    # self-attention (mixes every frame x position token)
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn1.norm_q": "self_attn.norm_q",
    "attn1.norm_k": "self_attn.norm_k",
    # text cross-attention (+ the image context of Wan 2.1 I2V)
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.norm_q": "cross_attn.norm_q",
    "attn2.norm_k": "cross_attn.norm_k",
    "attn2.add_k_proj": "cross_attn.k_img",
    "attn2.add_v_proj": "cross_attn.v_img",
    "attn2.norm_added_k": "cross_attn.norm_k_img",
    # feed-forward
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
    # norms: diffusers norm2 (cross-attention) is the original norm3, diffusers norm3 (ffn) the original norm2
    "norm2": "norm3",
    "norm3": "norm2",
    "scale_shift_table": "modulation",
}

#: outside the blocks: diffusers module -> original Wan module
WAN_GLOBAL_KEYS: dict[str, str] = {
    "patch_embedding": "patch_embedding",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "condition_embedder.image_embedder.pos_embed": "img_emb.emb_pos",
    "proj_out": "head.head",
    "scale_shift_table": "head.modulation",
}

_BLOCK_ORIGINAL = {v: k for k, v in WAN_BLOCK_KEYS.items()}
_GLOBAL_ORIGINAL = {v: k for k, v in WAN_GLOBAL_KEYS.items()}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
#: kohya names flatten dots: "blocks_3_self_attn_q" -> block 3, flat suffix "self_attn_q"
_KOHYA_BLOCK = re.compile(r"^blocks_(\d+)_(.+)$")
_KOHYA_BLOCK_SUFFIX = {v.replace(".", "_"): v for v in WAN_BLOCK_KEYS.values()}
_KOHYA_GLOBAL = {v.replace(".", "_"): v for v in WAN_GLOBAL_KEYS.values()}

#: transformer width -> what it is (for error messages about LoRAs made for another variant)
WAN_WIDTHS: dict[int, str] = {1536: "Wan 2.1 T2V 1.3B", 3072: "Wan 2.2 TI2V 5B",
                              5120: "Wan 14B (2.1 T2V/I2V 14B, 2.2 A14B)"}

_PREFIXES = ("diffusion_model.", "model.diffusion_model.", "transformer.", "base_model.model.", "unet.")
_PEFT_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(\.(?P<adapter>[^.]+))?\.weight$")
_ALPHA_KEY = re.compile(r"^(?P<module>.+)\.alpha$")


# --------------------------------------------------------------------------------------------- names
def diffusers_to_original(name: str) -> str:
    """``blocks.3.attn1.to_q`` -> ``blocks.3.self_attn.q``; ``proj_out`` -> ``head.head``.
    Raises KeyError for a module the table does not know."""
    match = _BLOCK.match(name)
    if match:
        index, rest = match.groups()
        if rest in WAN_BLOCK_KEYS:
            return f"blocks.{index}.{WAN_BLOCK_KEYS[rest]}"
        raise KeyError(f"no original Wan name for block module {rest!r} (in {name!r})")
    if name in WAN_GLOBAL_KEYS:
        return WAN_GLOBAL_KEYS[name]
    raise KeyError(f"no original Wan name for module {name!r}")


def original_to_diffusers(name: str) -> str:
    """``blocks.3.self_attn.q`` -> ``blocks.3.attn1.to_q`` (the inverse of :func:`diffusers_to_original`)."""
    match = _BLOCK.match(name)
    if match:
        index, rest = match.groups()
        if rest in _BLOCK_ORIGINAL:
            return f"blocks.{index}.{_BLOCK_ORIGINAL[rest]}"
        raise KeyError(f"unknown original Wan block module {rest!r} (in {name!r})")
    if name in _GLOBAL_ORIGINAL:
        return _GLOBAL_ORIGINAL[name]
    raise KeyError(f"unknown original Wan module {name!r}")


def _kohya_to_original(flat: str) -> str:
    match = _KOHYA_BLOCK.match(flat)
    if match and match.group(2) in _KOHYA_BLOCK_SUFFIX:
        return f"blocks.{match.group(1)}.{_KOHYA_BLOCK_SUFFIX[match.group(2)]}"
    if flat in _KOHYA_GLOBAL:
        return _KOHYA_GLOBAL[flat]
    raise KeyError(f"unknown kohya Wan module {flat!r}")


def wan_variant_name(width: int) -> str:
    return WAN_WIDTHS.get(int(width), f"a Wan model of width {width}")


# --------------------------------------------------------------------------------------------- parsing
def _strip_prefix(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _group_lora(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, float]]:
    """``{module: {"A": down, "B": up}}`` and ``{module: alpha}`` from any of the supported key forms, module
    names as found (prefixes stripped, peft adapter names dropped)."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    alphas: dict[str, float] = {}
    unknown: list[str] = []
    adapters: set[str] = set()
    for key, value in state_dict.items():
        match = _PEFT_KEY.match(key)
        if match:
            module = _strip_prefix(match["module"])
            if match["adapter"]:
                adapters.add(match["adapter"])
            slot = "A" if match["kind"] in ("lora_A", "lora_down") else "B"
            if slot in modules.setdefault(module, {}):
                raise InputError(f"the LoRA has two {match['kind']} weights for {module!r} (several peft adapters "
                                 f"in one state dict: {sorted(adapters)}); export one adapter at a time.")
            modules[module][slot] = value
            continue
        match = _ALPHA_KEY.match(key)
        if match:
            alphas[_strip_prefix(match["module"])] = float(torch.as_tensor(value).float().item())
            continue
        unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise InputError(f"not LoRA weights (expected <module>.lora_A/lora_B[.<adapter>].weight or "
                         f"lora_down/lora_up + .alpha): {shown}")
    for module, pair in modules.items():
        if set(pair) != {"A", "B"}:
            raise InputError(f"the LoRA of {module!r} lacks its {'up/B' if 'B' not in pair else 'down/A'} weight.")
        if pair["A"].dim() != 2 or pair["B"].dim() != 2 or pair["A"].shape[0] != pair["B"].shape[1]:
            raise InputError(f"the LoRA of {module!r} has shapes A {tuple(pair['A'].shape)} / "
                             f"B {tuple(pair['B'].shape)}; expected A [r, in] and B [out, r].")
    return modules, alphas


# --------------------------------------------------------------------------------------------- export
def _alpha_for(module: str, rank: int, alpha: float | Mapping[str, float] | None, use_rslora: bool) -> float:
    if isinstance(alpha, Mapping):
        value = alpha.get(module)
        if value is None:
            raise InputError(f"no alpha given for the LoRA of {module!r}.")
    else:
        value = rank if alpha is None else alpha
    value = float(value)
    # rsLoRA scales by alpha / sqrt(r); ComfyUI and kohya by alpha / r: the same update needs alpha * sqrt(r)
    return value * math.sqrt(rank) if use_rslora else value


def export_comfy_wan_lora(
    state_dict_peft: Mapping[str, torch.Tensor],
    rank: int | None = None,
    alpha: float | Mapping[str, float] | None = None,
    *,
    format: LoraFormat = "comfy",
    dtype: torch.dtype | None = None,
    use_rslora: bool = False,
) -> dict[str, torch.Tensor]:
    """A peft/diffusers LoRA state dict of a ``WanTransformer3DModel`` in ComfyUI's native Wan key format.

    ``state_dict_peft`` keys are ``<diffusers module>.lora_A[.<adapter>].weight`` / ``lora_B`` (what
    ``peft.get_peft_model_state_dict`` or ``model.state_dict()`` give; a ``transformer.`` prefix is
    accepted). ``rank`` (checked against the weights when given) and ``alpha`` (peft's ``lora_alpha``: one
    number, or one per diffusers module name; default = the rank, i.e. scale 1) define the update
    ``(alpha / r) B A``. ``dtype`` casts the weights (e.g. ``torch.bfloat16`` for a smaller file).
    Returns a new dict of contiguous CPU tensors (meta tensors stay on the meta device).
    """
    if format not in ("comfy", "kohya"):
        raise InputError(f"unknown LoRA format {format!r}; use 'comfy' or 'kohya'.")
    modules, stored_alphas = _group_lora(state_dict_peft)
    if not modules:
        raise InputError("the LoRA state dict is empty.")
    out: dict[str, torch.Tensor] = {}
    for module in sorted(modules, key=_natural_key):
        pair = modules[module]
        r = int(pair["A"].shape[0])
        if rank is not None and r != int(rank):
            raise InputError(f"the LoRA of {module!r} has rank {r}, not {rank}.")
        try:
            original = diffusers_to_original(module)
        except KeyError as exc:
            raise InputError(f"cannot export the LoRA of {module!r} for ComfyUI: {exc.args[0]}.") from None
        # an alpha stored beside the weights (a re-export of an imported file) is used unless one is given
        given = stored_alphas.get(module) if alpha is None else alpha
        value = _alpha_for(module, r, given, use_rslora)
        down, up = _to_cpu(pair["A"]), _to_cpu(pair["B"])
        if dtype is not None:
            down, up = down.to(dtype), up.to(dtype)
        if format == "comfy":
            prefix = f"diffusion_model.{original}"
            out[f"{prefix}.lora_A.weight"] = down.contiguous()
            out[f"{prefix}.lora_B.weight"] = up.contiguous()
        else:
            prefix = "lora_unet_" + original.replace(".", "_")
            out[f"{prefix}.lora_down.weight"] = down.contiguous()
            out[f"{prefix}.lora_up.weight"] = up.contiguous()
        out[f"{prefix}.alpha"] = torch.tensor(value, dtype=torch.float32)
    return out


def export_comfy_wan_lora_pair(
    high_noise: Mapping[str, torch.Tensor],
    low_noise: Mapping[str, torch.Tensor],
    rank: int | None = None,
    alpha: float | Mapping[str, float] | None = None,
    **options: Any,
) -> dict[str, dict[str, torch.Tensor]]:
    """Wan 2.2 A14B: ``{"high_noise": ..., "low_noise": ...}`` -- one ComfyUI LoRA per expert
    (``transformer`` = high-noise expert, ``transformer_2`` = low-noise expert)."""
    return {"high_noise": export_comfy_wan_lora(high_noise, rank, alpha, **options),
            "low_noise": export_comfy_wan_lora(low_noise, rank, alpha, **options)}


# --------------------------------------------------------------------------------------------- import
def import_wan_lora(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Any Wan LoRA (ComfyUI ``diffusion_model.*``, kohya ``lora_unet_*``, diffusers ``transformer.*``, bare
    peft) -> ``(peft_state_dict, alphas)``: keys ``<diffusers module>.lora_A.weight`` / ``.lora_B.weight``
    and ``{diffusers module: alpha}`` (the rank when the file has no alpha). The inverse of
    :func:`export_comfy_wan_lora`; ``.diff``/``.diff_b`` full-weight deltas are not LoRA weights and are
    refused."""
    kohya: dict[str, torch.Tensor] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith((".diff", ".diff_b", ".dora_scale")):
            raise InputError(f"{key!r} is a full-weight delta / DoRA entry, not a LoRA weight; MotionKit imports "
                             f"plain LoRAs only.")
        if key.startswith("lora_unet_"):
            kohya[key[len("lora_unet_"):]] = value
        else:
            rest[key] = value
    modules, alphas = _group_lora(rest)
    if kohya:
        k_modules, k_alphas = _group_lora(kohya)
        for flat, pair in k_modules.items():
            modules[_kohya_to_original_checked(flat)] = pair
        for flat, value in k_alphas.items():
            alphas[_kohya_to_original_checked(flat)] = value
    peft: dict[str, torch.Tensor] = {}
    out_alphas: dict[str, float] = {}
    for module, pair in modules.items():
        name = module
        if not _is_diffusers_name(module):
            try:
                name = original_to_diffusers(module)
            except KeyError as exc:
                raise InputError(f"not a Wan LoRA key: {exc.args[0]}.") from None
        peft[f"{name}.lora_A.weight"] = pair["A"]
        peft[f"{name}.lora_B.weight"] = pair["B"]
        out_alphas[name] = alphas.get(module, float(pair["A"].shape[0]))
    return peft, out_alphas


def _kohya_to_original_checked(flat: str) -> str:
    try:
        return _kohya_to_original(flat)
    except KeyError as exc:
        raise InputError(f"not a Wan LoRA key: {exc.args[0]}.") from None


def _is_diffusers_name(module: str) -> bool:
    match = _BLOCK.match(module)
    if match:
        return match.group(2) in WAN_BLOCK_KEYS
    return module in WAN_GLOBAL_KEYS


def check_wan_lora_fits(peft_state_dict: Mapping[str, torch.Tensor], denoiser: torch.nn.Module) -> None:
    """Raise :class:`AdapterMismatchError` unless every LoRA module exists in ``denoiser`` with matching
    input/output sizes -- naming the Wan variant a foreign LoRA was made for (1.3B vs 14B widths)."""
    modules, _ = _group_lora(peft_state_dict)
    named = dict(denoiser.named_modules())
    width = int(getattr(getattr(denoiser, "config", None), "num_attention_heads", 0) or 0) * \
        int(getattr(getattr(denoiser, "config", None), "attention_head_dim", 0) or 0)
    missing: list[str] = []
    for module, pair in sorted(modules.items(), key=lambda kv: _natural_key(kv[0])):
        target = named.get(module)
        if target is None:
            missing.append(module)
            continue
        weight = getattr(target, "weight", None)
        if weight is None or weight.dim() != 2:
            raise AdapterMismatchError(f"the LoRA targets {module!r}, which is not a linear layer of this model.")
        out_f, in_f = weight.shape
        if pair["A"].shape[1] != in_f or pair["B"].shape[0] != out_f:
            lora_width = pair["A"].shape[1] if module.endswith(("to_q", "to_k", "to_v", "to_out.0", "net.0.proj")) \
                else pair["B"].shape[0]
            raise AdapterMismatchError(
                f"this LoRA was made for {wan_variant_name(lora_width)} (its {module} is "
                f"{pair['A'].shape[1]}->{pair['B'].shape[0]}), but the loaded model is "
                f"{wan_variant_name(width)} ({in_f}->{out_f}). Use a LoRA trained on the same Wan variant.")
    if missing:
        blocks = len(getattr(denoiser, "blocks", []))
        raise AdapterMismatchError(
            f"the LoRA targets {len(missing)} module(s) this model lacks (e.g. {missing[0]!r}; the model has "
            f"{blocks} blocks): it was made for another Wan variant.")


# --------------------------------------------------------------------------------------------- files
def save_lora_file(tensors: Mapping[str, torch.Tensor], folder: str | os.PathLike, name: str,
                   metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``<folder>/<name>.safetensors`` atomically (temp file in the same folder + ``os.replace``).
    ``name`` must be a plain file name (no path separators, no ``..``)."""
    from .files import write_safetensors

    if not name or any(sep in name for sep in ("/", "\\", "\x00")) or name in (".", "..") or ".." in name:
        raise InputError(f"{name!r} is not a usable file name (no folders, no '..').")
    stem = name[: -len(".safetensors")] if name.endswith(".safetensors") else name
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return write_safetensors(folder / f"{stem}.safetensors", {k: v.contiguous() for k, v in tensors.items()},
                             {str(k): str(v) for k, v in (metadata or {}).items()}, what="the Wan LoRA file")


def _to_cpu(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach()
    return tensor if tensor.device.type == "meta" else tensor.cpu()  # meta: key checks on real configs


def _natural_key(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))
