"""Attention processors that capture, compare and inject -- installed on chosen layers, removable, composable.

The diffusers way (``models/attention_processor.py``): behaviour is swapped by setting a *processor* object
on an ``Attention`` module, not by forking model classes. We install one :class:`StageChainProcessor` per
chosen layer; it runs the layer's attention exactly as diffusers' ``AttnProcessor2_0`` does and calls a
list of :class:`AttentionStage` objects at fixed points:

==================  ================================================================================
stage point         what a stage can do there
==================  ================================================================================
``modify_qk_input`` change the hidden states that feed ``to_q`` (and ``to_k`` for self-attention)
                    -- Motion Inversion's Query-Key embedding is added here
``modify_v_input``  change the hidden states that feed ``to_v`` -- Motion Inversion's Value embedding
``on_qk``           read the per-head query/key ``[N, heads, L, d]`` -- MotionClone's energy, Q/K capture
``on_probs``        read the softmax map ``[N, heads, Lq, Lk]`` (only computed when a stage asks for it
                    through ``wants_probs``; the layer output is then ``probs @ V`` from the same map)
==================  ================================================================================

Several stages on one layer form a chain (install order); one stage object may sit on many layers (it is
told which through :class:`AttentionCall`). Installing a stage on a layer that already carries a chain
appends to it; removing the last stage restores the *exact* processor object that was there before. A
chain whose stages are all inactive for a call hands the call to that previous processor untouched, so
an installed-but-idle stage changes nothing, bit for bit.

The processor only goes through ``attn.to_q / to_k / to_v / to_out``, so peft LoRA layers wrapped around
those Linears (MotionDirector, MotionMatcher) keep working underneath any stage.

Memory: full attention maps are never materialised unless a stage asks for them, and then only for the
layer being run: top-k capture keeps ``k`` values + indices per row, and :class:`SparseMapEnergy` turns
Q/K into its per-layer energy term on the spot under activation checkpointing, so the backward pass
rebuilds one layer's ``F x F`` logits at a time instead of keeping every guided layer's map alive.

Other attention module classes (a DiT family's own attention) plug in through
:func:`register_chain_processor`: their processor calls the same stage points.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import torch
from torch import nn

from ..errors import InputError
from .backends import attention, layer_backend

log = logging.getLogger(__name__)

__all__ = [
    "AttentionCall",
    "AttentionCapture",
    "AttentionStage",
    "Attachment",
    "SparseMapEnergy",
    "StageChainProcessor",
    "attach",
    "attention_probs",
    "chain_of",
    "gather_probs",
    "no_grad_after",
    "register_chain_processor",
    "resolve_layers",
    "run_until",
    "sparse_map_mse",
    "top_k_map",
]


# --------------------------------------------------------------------------------------------- stages
@dataclass
class AttentionCall:
    """What a stage is told about the attention call it is part of.

    ``batch`` is the leading size of the attention call: for a temporal self-attention of a UNet this is
    ``B * h * w`` (one sequence of ``F`` frames per latent position, position-major per video:
    ``n = b * h * w + y * w + x``), for a spatial one ``B * F``.
    """

    layer: str
    attn: nn.Module
    batch: int
    heads: int
    head_dim: int
    query_length: int
    key_length: int
    is_cross: bool
    scale: float
    #: free-form per-call values other stages may read (e.g. the already computed probs)
    extra: dict[str, Any] = field(default_factory=dict)


class AttentionStage:
    """One observer/modifier in a layer's chain. Override only what you need; defaults do nothing.

    ``active(call)`` is asked first on every call: a chain whose stages are all inactive runs the layer's
    previous processor unchanged (zero overhead, identical numerics).
    """

    def active(self, call: AttentionCall) -> bool:
        return True

    def modify_qk_input(self, call: AttentionCall, hidden_states: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[N, L, C]`` that feed ``to_q`` (and ``to_k`` in self-attention)."""
        return hidden_states

    def modify_v_input(self, call: AttentionCall, hidden_states: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[N, L, C]`` that feed ``to_v`` (the context, in cross-attention)."""
        return hidden_states

    def on_qk(self, call: AttentionCall, query: torch.Tensor, key: torch.Tensor) -> None:
        """Per-head query ``[N, heads, Lq, d]`` and key ``[N, heads, Lk, d]`` (after ``norm_q/norm_k``)."""

    def wants_probs(self, call: AttentionCall) -> bool:
        """True when this stage needs the full softmax map of this call (then :meth:`on_probs` runs)."""
        return False

    def on_probs(self, call: AttentionCall, probs: torch.Tensor) -> None:
        """The softmax map (float32, or float64 for a float64 model) ``[N, heads, Lq, Lk]`` (rows sum to 1); autograd-connected when grad
        is enabled."""


# --------------------------------------------------------------------------------------------- math
def _upcast(t: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> float32 (maps and energies are compared in at least single precision)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def attention_probs(query: torch.Tensor, key: torch.Tensor, scale: float,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(q kᵀ · scale)`` over keys, in float32 (the maps are compared and stored; fp16 rows of
    16 frames lose ~1e-3 of every probability, which is the size of the signals being matched)."""
    logits = torch.matmul(_upcast(query), _upcast(key).transpose(-1, -2)) * scale
    if mask is not None:
        logits = logits + mask.to(logits.dtype)
    return logits.softmax(dim=-1)


def top_k_map(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest entries of every row (values descending, then their key indices)."""
    values, indices = probs.topk(k, dim=-1)
    return values, indices


def gather_probs(query: torch.Tensor, key: torch.Tensor, scale: float, indices: torch.Tensor) -> torch.Tensor:
    """``softmax(q kᵀ · scale)`` read only at ``indices`` (``[N, heads, Lq, k]``), in float32.

    Computed as ``exp(logit_j - logsumexp(logits))``: the full logits of the call exist only inside this
    function (one layer at a time).
    """
    logits = torch.matmul(_upcast(query), _upcast(key).transpose(-1, -2)) * scale
    lse = logits.logsumexp(dim=-1, keepdim=True)
    return (logits.gather(-1, indices.long()) - lse).exp()


def sparse_map_mse(query: torch.Tensor, key: torch.Tensor, scale: float, values: torch.Tensor,
                   indices: torch.Tensor, batch: int = 1) -> torch.Tensor:
    """MotionClone's per-layer term: ``mean((A[..., j*] − v)²)`` with ``A = softmax(q kᵀ · scale)``.

    ``values``/``indices`` hold one video's sparse map ``[P, heads, Lq, k]``; the call holds ``batch``
    videos (``N = batch * P``). The mean is taken per video and summed over videos, so each video of a
    batch is guided exactly as it would be alone.
    """
    gathered = gather_probs(query, key, scale, indices.repeat(batch, 1, 1, 1))
    target = values.to(gathered.dtype).repeat(batch, 1, 1, 1)
    return (gathered - target).pow(2).mean() * batch


# --------------------------------------------------------------------------------------------- capture
CaptureWhat = Literal["qk", "probs", "topk"]


class AttentionCapture(AttentionStage):
    """Records, per layer, the query/key (``"qk"``), the softmax maps (``"probs"``) or their top-k
    (``"topk"``: values + key indices) of every call while :attr:`enabled`.

    ``keep_graph=True`` keeps the records autograd-connected (a training loss on maps, MotionMatcher);
    otherwise they are detached. ``head_mean=True`` averages maps over heads before storing (what
    MotionMatcher compares). ``store_dtype`` casts what is kept (e.g. fp16 values for a file).
    Records of one layer from several calls (e.g. a checkpointed forward run twice) are appended in call
    order; :meth:`clear` empties everything.
    """

    def __init__(self, what: CaptureWhat = "probs", *, k: int = 1, keep_graph: bool = False,
                 head_mean: bool = False, store_dtype: torch.dtype | None = None,
                 layers: Iterable[str] | None = None) -> None:
        if what not in ("qk", "probs", "topk"):
            raise InputError(f"AttentionCapture: what must be 'qk', 'probs' or 'topk', not {what!r}.")
        if what == "topk" and int(k) < 1:
            raise InputError(f"k must be at least 1 (got {k}).")
        self.what = what
        self.k = int(k)
        self.keep_graph = keep_graph
        self.head_mean = head_mean
        self.store_dtype = store_dtype
        self.only = set(layers) if layers is not None else None
        self.enabled = True
        self.records: dict[str, list[Any]] = {}

    def active(self, call: AttentionCall) -> bool:
        return self.enabled and (self.only is None or call.layer in self.only)

    def clear(self) -> None:
        self.records.clear()

    def _keep(self, t: torch.Tensor) -> torch.Tensor:
        if not self.keep_graph:
            t = t.detach()
        return t.to(self.store_dtype) if self.store_dtype is not None and t.is_floating_point() else t

    def on_qk(self, call: AttentionCall, query: torch.Tensor, key: torch.Tensor) -> None:
        if self.what == "qk":
            self.records.setdefault(call.layer, []).append((self._keep(query), self._keep(key)))

    def wants_probs(self, call: AttentionCall) -> bool:
        return self.what in ("probs", "topk")

    def on_probs(self, call: AttentionCall, probs: torch.Tensor) -> None:
        if self.what == "probs":
            kept = probs.mean(dim=1) if self.head_mean else probs
            self.records.setdefault(call.layer, []).append(self._keep(kept))
            return
        if self.k > call.key_length:
            raise InputError(f"k={self.k} is larger than the {call.key_length} keys of {call.layer} "
                             f"(for temporal attention: the frame count). Use k <= {call.key_length}.")
        values, indices = top_k_map(probs.detach() if not self.keep_graph else probs, self.k)
        self.records.setdefault(call.layer, []).append((self._keep(values), indices))

    def last(self, layer: str) -> Any:
        """The latest record of ``layer`` (KeyError when the layer did not run)."""
        return self.records[layer][-1]


# --------------------------------------------------------------------------------------------- energy
class SparseMapEnergy(AttentionStage):
    """A differentiable comparison of the current temporal-attention maps with a stored sparse map.

    ``targets[layer] = (values [P, heads, F, k], indices [P, heads, F, k])``. While :attr:`armed`, each
    call of a target layer adds ``sparse_map_mse`` to :attr:`terms` -- computed from Q/K under activation
    checkpointing (``recompute=True``), so only Q and K are saved for the backward pass and the layer's
    ``F x F`` map is rebuilt there, one layer at a time. :meth:`take` returns the sum over layers (the
    per-layer means are summed, as the reference does) and disarms.
    """

    def __init__(self, targets: dict[str, tuple[torch.Tensor, torch.Tensor]], *, recompute: bool = True) -> None:
        self.targets = dict(targets)
        self.recompute = recompute
        self.armed = False
        self.terms: dict[str, torch.Tensor] = {}
        self._device_targets: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def active(self, call: AttentionCall) -> bool:
        return self.armed and call.layer in self.targets

    def arm(self) -> None:
        self.terms = {}
        self.armed = True

    def disarm(self) -> None:
        self.armed = False

    def _target(self, layer: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._device_targets.get((layer, device))
        if cached is None:
            values, indices = self.targets[layer]
            cached = (values.to(device), indices.to(device=device, dtype=torch.long))
            self._device_targets = {k: v for k, v in self._device_targets.items() if k[1] == device}
            self._device_targets[(layer, device)] = cached
        return cached

    def on_qk(self, call: AttentionCall, query: torch.Tensor, key: torch.Tensor) -> None:
        values, indices = self._target(call.layer, query.device)
        per_video = values.shape[0]
        if call.batch % per_video or values.shape[1:3] != (call.heads, call.query_length):
            raise InputError(
                f"The motion representation of {call.layer} has shape {tuple(values.shape)} but the model "
                f"runs {call.batch} sequences x {call.heads} heads x {call.query_length} frames there: it was "
                "extracted for another size, frame count or model.")
        batch = call.batch // per_video
        if self.recompute and torch.is_grad_enabled() and (query.requires_grad or key.requires_grad):
            from torch.utils.checkpoint import checkpoint

            term = checkpoint(sparse_map_mse, query, key, call.scale, values, indices, batch,
                              use_reentrant=False)
        else:
            term = sparse_map_mse(query, key, call.scale, values, indices, batch)
        self.terms[call.layer] = term

    def take(self) -> torch.Tensor | None:
        """Σ over the layers that ran (None when none ran); disarms."""
        self.armed = False
        if not self.terms:
            return None
        total = torch.stack([_upcast(t) for t in self.terms.values()]).sum()
        self.terms = {}
        return total


# --------------------------------------------------------------------------------------------- processor
class StageChainProcessor:
    """Runs a diffusers ``Attention`` layer like ``AttnProcessor2_0``, calling the stages of its chain.

    ``previous`` is the processor that was installed before; it runs every call in which no stage is
    active and is put back when the last stage is removed.
    """

    def __init__(self, layer: str, previous: Any) -> None:
        self.layer = layer
        self.previous = previous
        self.stages: list[AttentionStage] = []

    def __repr__(self) -> str:
        return f"StageChainProcessor({self.layer!r}, stages={[type(s).__name__ for s in self.stages]})"

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 temb: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        call = self._describe(attn, hidden_states, encoder_hidden_states)
        stages = [s for s in self.stages if s.active(call)] if call is not None else []
        if not stages:
            if temb is not None:  # only processors of spatial-norm layers take it
                kwargs["temb"] = temb
            return self.previous(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        return self._run(attn, call, stages, hidden_states, encoder_hidden_states, attention_mask, temb)

    def _describe(self, attn: nn.Module, hidden_states: torch.Tensor,
                  encoder_hidden_states: torch.Tensor | None) -> AttentionCall | None:
        if hidden_states.ndim == 4:  # (B, C, H, W) spatial input of an attention block
            b, _, h, w = hidden_states.shape
            query_length = h * w
        else:
            b, query_length = hidden_states.shape[0], hidden_states.shape[1]
        key_length = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else query_length
        heads = int(attn.heads)
        inner = attn.to_q.out_features if hasattr(attn.to_q, "out_features") else attn.inner_dim
        return AttentionCall(layer=self.layer, attn=attn, batch=int(b), heads=heads, head_dim=int(inner) // heads,
                             query_length=int(query_length), key_length=int(key_length),
                             is_cross=encoder_hidden_states is not None, scale=float(attn.scale))

    def _run(self, attn: nn.Module, call: AttentionCall, stages: Sequence[AttentionStage],
             hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
             attention_mask: torch.Tensor | None, temb: torch.Tensor | None) -> torch.Tensor:
        return attention_forward(attn, hidden_states, encoder_hidden_states, attention_mask, temb, stages=stages,
                                 call=call)


def attention_forward(attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                      attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *,
                      stages: Sequence[AttentionStage] = (), call: AttentionCall | None = None,
                      backend: str | None = None) -> torch.Tensor:
    """diffusers' ``AttnProcessor2_0`` computation with MotionKit's stage points (``stages`` see ``call``) and the
    attention itself through ``backend`` (default: the one set on the layer, see :mod:`.backends`). With no
    stages it is exactly ``AttnProcessor2_0`` -- what :class:`DispatchAttnProcessor` runs."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        batch_size, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
    batch_size, sequence_length, _ = (hidden_states.shape if encoder_hidden_states is None
                                      else encoder_hidden_states.shape)
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

    qk_input = hidden_states
    for stage in stages:
        qk_input = stage.modify_qk_input(call, qk_input)
    query = attn.to_q(qk_input)
    if encoder_hidden_states is None:
        key_input, value_input = qk_input, hidden_states
    else:
        context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
        key_input, value_input = context, context
    for stage in stages:
        value_input = stage.modify_v_input(call, value_input)
    key = attn.to_k(key_input)
    value = attn.to_v(value_input)

    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)

    for stage in stages:
        stage.on_qk(call, query, key)
    if any(stage.wants_probs(call) for stage in stages):
        probs = attention_probs(query, key, float(attn.scale), attention_mask)
        call.extra["probs"] = probs
        for stage in stages:
            if stage.wants_probs(call):
                stage.on_probs(call, probs)
        hidden_states = torch.matmul(probs.to(value.dtype), value)
        del call.extra["probs"]
    else:
        hidden_states = attention(query, key, value, attention_mask, scale=float(attn.scale),
                                  backend=backend or layer_backend(attn))

    hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
    hidden_states = hidden_states.to(query.dtype)
    hidden_states = attn.to_out[0](hidden_states)
    hidden_states = attn.to_out[1](hidden_states)
    if input_ndim == 4:
        hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
    if attn.residual_connection:
        hidden_states = hidden_states + residual
    return hidden_states / attn.rescale_output_factor


class DispatchAttnProcessor:
    """The processor of an ``AttnProcessor2_0`` layer with a non-native attention backend (see
    :func:`.backends.apply_attention_backend`): the same computation, the attention through the dispatcher."""

    def __init__(self, backend: str, previous: Any) -> None:
        self.backend = backend
        self.previous = previous

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        return attention_forward(attn, hidden_states, encoder_hidden_states, attention_mask, temb, backend=self.backend)


# module class -> chain processor class, most specific first; other families register theirs
_CHAIN_PROCESSORS: list[tuple[type, type[StageChainProcessor]]] = []


def register_chain_processor(module_class: type, processor_class: type[StageChainProcessor]) -> None:
    """Teach :func:`attach` to handle another attention module class (e.g. a DiT family's attention):
    ``processor_class(layer, previous)`` must call the same stage points as :class:`StageChainProcessor`."""
    _CHAIN_PROCESSORS.insert(0, (module_class, processor_class))


_DEFAULTS_ADDED: list[bool] = []


def _processor_class_for(module: nn.Module) -> type[StageChainProcessor] | None:
    if not _DEFAULTS_ADDED:  # built-in classes go last, so families registered earlier or later win
        from diffusers.models.attention_processor import Attention

        from .wan_processor import WanStageChainProcessor, wan_attention_class

        wan_attention = wan_attention_class()
        if wan_attention is not None:
            _CHAIN_PROCESSORS.append((wan_attention, WanStageChainProcessor))
        _CHAIN_PROCESSORS.append((Attention, StageChainProcessor))
        _DEFAULTS_ADDED.append(True)
    for cls, proc in _CHAIN_PROCESSORS:
        if isinstance(module, cls):
            return proc
    return None


# --------------------------------------------------------------------------------------------- install
LayerSpec = Any  # a LayerRef, a module name, or a (name, module) pair


def resolve_layers(root: nn.Module, layers: Iterable[LayerSpec]) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` for each of ``layers`` (LayerRefs, names inside ``root``, or pairs)."""
    out: list[tuple[str, nn.Module]] = []
    for spec in layers:
        if isinstance(spec, str):
            try:
                out.append((spec, root.get_submodule(spec)))
            except AttributeError:
                raise InputError(f"The model has no layer named {spec!r}.") from None
        elif isinstance(spec, tuple) and len(spec) == 2:
            out.append((str(spec[0]), spec[1]))
        elif hasattr(spec, "name") and hasattr(spec, "module"):
            out.append((spec.name, spec.module))
        else:
            raise InputError(f"Cannot install an attention stage on {spec!r}: give a LayerRef or a layer name.")
    return out


def chain_of(module: nn.Module) -> StageChainProcessor | None:
    """The chain installed on ``module`` (None when it runs a plain processor)."""
    proc = getattr(module, "processor", None)
    return proc if isinstance(proc, StageChainProcessor) else None


class Attachment:
    """Stages installed on layers; a context manager, or call :meth:`remove` (idempotent)."""

    def __init__(self) -> None:
        self._entries: list[tuple[nn.Module, StageChainProcessor, AttentionStage]] = []

    @property
    def layers(self) -> list[str]:
        return [chain.layer for _, chain, _ in self._entries]

    def remove(self) -> None:
        while self._entries:
            module, chain, stage = self._entries.pop()
            if stage in chain.stages:
                chain.stages.remove(stage)
            if not chain.stages:
                if getattr(module, "processor", None) is chain:
                    module.set_processor(chain.previous)
                else:  # someone replaced the processor meanwhile: leave theirs alone
                    log.debug("processor of %s was replaced while a stage was installed", chain.layer)

    def __enter__(self) -> "Attachment":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def attach(root: nn.Module, layers: Iterable[LayerSpec], stage: AttentionStage) -> Attachment:
    """Install ``stage`` on every one of ``layers`` (appending to an existing chain there).

    Returns an :class:`Attachment`; use it as a context manager or call ``remove()``. Raises InputError
    for a layer that is not an attention module this machinery can drive.
    """
    resolved = resolve_layers(root, layers)
    attachment = Attachment()
    try:
        for name, module in resolved:
            proc_class = _processor_class_for(module)
            if proc_class is None or not hasattr(module, "set_processor"):
                raise InputError(
                    f"Layer {name} is a {type(module).__name__}, not an attention layer MotionKit can hook "
                    "(diffusers Attention, or a class registered with register_chain_processor).")
            if getattr(module, "fused_projections", False):
                raise InputError(f"Layer {name} uses fused QKV projections; unfuse them before attaching.")
            chain = chain_of(module)
            if chain is None:
                chain = proc_class(name, module.processor)
                module.set_processor(chain)
            chain.stages.append(stage)
            attachment._entries.append((module, chain, stage))
    except BaseException:
        attachment.remove()
        raise
    return attachment


# --------------------------------------------------------------------------------------------- forward control
class _StopForward(Exception):
    """Raised from a forward hook to end a denoiser forward early (caught by :func:`run_until`)."""


def run_until(blocks: nn.Module | Sequence[nn.Module], forward: Callable[[], Any]) -> None:
    """Run ``forward()`` only until every module of ``blocks`` has finished once: a forward hook raises a
    private exception that is caught here, so the rest of the network never runs (no forked model class).
    """
    modules = [blocks] if isinstance(blocks, nn.Module) else list(blocks)
    pending = {id(m) for m in modules}

    def stop(module: nn.Module, args: Any, output: Any) -> None:
        pending.discard(id(module))
        if not pending:
            raise _StopForward

    handles = [m.register_forward_hook(stop) for m in modules]
    try:
        forward()
    except _StopForward:
        return
    finally:
        for handle in handles:
            handle.remove()
    raise RuntimeError("the forward finished without running every block it should have stopped after")


_FOLLOWERS = {"up_blocks": ("conv_norm_out", "conv_act", "conv_out"),
              "down_blocks": ("mid_block", "up_blocks.0"),
              "blocks": ("norm_out", "proj_out"),
              "transformer_blocks": ("norm_out", "proj_out")}


def _module_after(root: nn.Module, block: str) -> nn.Module | None:
    """The first module that runs after ``block`` in a UNet/DiT forward (None when unknown)."""
    parts = block.split(".")
    candidates: list[str] = []
    if len(parts) == 2 and parts[1].isdigit():
        candidates.append(f"{parts[0]}.{int(parts[1]) + 1}")
        candidates += list(_FOLLOWERS.get(parts[0], ()))
    elif block == "mid_block":
        candidates.append("up_blocks.0")
    for name in candidates:
        try:
            module = root.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(module, nn.Module):
            return module
    return None


@contextlib.contextmanager
def no_grad_after(root: nn.Module, block: str) -> Iterator[bool]:
    """While inside, every denoiser forward records no autograd graph after ``block``.

    A guided forward needs the graph only up to the last guided layer, but the rest of the network must
    still run (its output feeds CFG). A pre-hook on the first module after ``block`` switches grad off
    and a hook on ``root`` restores the previous mode when the forward ends (also on error), so the later
    blocks keep no activations for backward. Yields False when the module after ``block`` is unknown
    (then nothing changes).
    """
    follower = _module_after(root, block)
    if follower is None:
        yield False
        return
    saved: list[bool] = []

    def off(module: nn.Module, args: Any) -> None:
        if torch.is_grad_enabled():
            saved.append(True)
            torch.set_grad_enabled(False)

    def restore(module: nn.Module, args: Any, output: Any) -> None:
        while saved:
            saved.pop()
            torch.set_grad_enabled(True)

    handles = [follower.register_forward_pre_hook(off), root.register_forward_hook(restore, always_call=True)]
    try:
        yield True
    finally:
        for h in handles:
            h.remove()
        restore(root, (), None)
