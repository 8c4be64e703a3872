"""The stage chain for diffusers' ``WanAttention`` (Wan 2.1 / 2.2 DiT blocks).

Runs a ``WanAttention`` call exactly as diffusers' ``WanAttnProcessor`` does (q/k/v projections, RMS
``norm_q``/``norm_k``, heads split, RoPE on q and k, the I2V image-token branch, SDPA, ``to_out``) and calls
the :class:`~motion_core.attention.AttentionStage` points in between:

* ``modify_qk_input`` / ``modify_v_input`` -- the hidden states ``[B, N, C]`` feeding ``to_q`` (and ``to_k``
  in self-attention) / ``to_v``;
* ``on_qk`` -- the per-head query and key ``[B, heads, N, d]`` **after** the norms and after RoPE, i.e. the
  very tensors the real attention multiplies (Wan rotates q/k inside its processor, so statistics taken
  before RoPE would describe another attention);
* ``wants_probs`` / ``on_probs`` -- the full softmax map, only if a stage asks (O(N^2): small sizes and
  tests only; MotionClone on Wan uses :mod:`motion_core.attention.flow_kernel` from ``on_qk`` instead).

For a Wan self-attention ``AttentionCall.batch`` is the number of videos ``B`` and ``query_length`` the token
count ``F * h * w`` (frame-major). The processor that was installed before runs every call in which no stage
is active, so an idle chain changes nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .backends import attention, layer_backend
from .processors import AttentionCall, StageChainProcessor, attention_probs

__all__ = ["WanStageChainProcessor", "wan_attention_class"]


def wan_attention_class() -> type | None:
    """diffusers' ``WanAttention`` class (None when this diffusers has none)."""
    try:
        from diffusers.models.transformers.transformer_wan import WanAttention
    except Exception:  # pragma: no cover - depends on the diffusers version
        return None
    return WanAttention


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # diffusers' Wan rotary embedding on [B, N, heads, d] (interleaved pairs)
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * c - x2 * s
    out[..., 1::2] = x1 * s + x2 * c
    return out.type_as(x)


class WanStageChainProcessor(StageChainProcessor):
    """:class:`StageChainProcessor` for ``WanAttention`` (see the module docstring)."""

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor,  # type: ignore[override]
                 encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 rotary_emb: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        call = self._describe(attn, hidden_states, encoder_hidden_states)
        stages = [s for s in self.stages if s.active(call)]
        if not stages:
            return self.previous(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb,
                                 *args, **kwargs)
        return self._run_wan(attn, call, stages, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)

    def _describe(self, attn: nn.Module, hidden_states: torch.Tensor,
                  encoder_hidden_states: torch.Tensor | None) -> AttentionCall:
        heads = int(attn.heads)
        head_dim = int(attn.inner_dim) // heads
        n = int(hidden_states.shape[1])
        key_length = int(encoder_hidden_states.shape[1]) if encoder_hidden_states is not None else n
        return AttentionCall(layer=self.layer, attn=attn, batch=int(hidden_states.shape[0]), heads=heads,
                             head_dim=head_dim, query_length=n, key_length=key_length,
                             is_cross=encoder_hidden_states is not None, scale=float(head_dim ** -0.5))

    def _run_wan(self, attn: nn.Module, call: AttentionCall, stages: list, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None, attention_mask: torch.Tensor | None,
                 rotary_emb: Any) -> torch.Tensor:
        context_img = None
        if attn.add_k_proj is not None and encoder_hidden_states is not None:
            # I2V: image tokens first, then the 512 text tokens (as diffusers' processor splits them)
            split = encoder_hidden_states.shape[1] - 512
            context_img = encoder_hidden_states[:, :split]
            encoder_hidden_states = encoder_hidden_states[:, split:]

        qk_input = hidden_states
        for stage in stages:
            qk_input = stage.modify_qk_input(call, qk_input)
        if encoder_hidden_states is None:
            key_input, value_input = qk_input, hidden_states
        else:
            key_input = value_input = encoder_hidden_states
        for stage in stages:
            value_input = stage.modify_v_input(call, value_input)
        query = attn.norm_q(attn.to_q(qk_input))
        key = attn.norm_k(attn.to_k(key_input))
        value = attn.to_v(value_input)

        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _rope(query, *rotary_emb)
            key = _rope(key, *rotary_emb)
        q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # [B, heads, N, d]

        for stage in stages:
            stage.on_qk(call, q, k)
        if any(stage.wants_probs(call) for stage in stages):
            probs = attention_probs(q, k, call.scale, attention_mask)
            call.extra["probs"] = probs
            for stage in stages:
                if stage.wants_probs(call):
                    stage.on_probs(call, probs)
            out = torch.matmul(probs.to(v.dtype), v)
            del call.extra["probs"]
        else:
            out = attention(q, k, v, attention_mask, backend=layer_backend(attn))
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)

        if context_img is not None:
            key_img = attn.norm_added_k(attn.add_k_proj(context_img)).unflatten(2, (attn.heads, -1))
            value_img = attn.add_v_proj(context_img).unflatten(2, (attn.heads, -1))
            img = attention(q, key_img.transpose(1, 2), value_img.transpose(1, 2), backend=layer_backend(attn))
            out = out + img.transpose(1, 2).flatten(2, 3).type_as(query)

        out = attn.to_out[0](out)
        return attn.to_out[1](out)
