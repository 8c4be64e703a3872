"""Attention machinery shared by the methods: stages (capture / energy / inject) on chosen layers.

See :mod:`motion_core.attention.processors` for the design. Typical use::

    capture = AttentionCapture("topk", k=1)
    with attach(model.denoiser, model.temporal_attention_layers(), capture):
        model.predict(latents, t, embeds)
    values, indices = capture.last("up_blocks.1.motion_modules.0.transformer_blocks.0.attn1")
"""

from .flow_kernel import (
    FrameAttentionStats,
    frame_attention_stats,
    naive_frame_attention_stats,
    triton_available,
)
from .processors import (
    Attachment,
    AttentionCall,
    AttentionCapture,
    AttentionStage,
    SparseMapEnergy,
    StageChainProcessor,
    attach,
    attention_probs,
    chain_of,
    gather_probs,
    no_grad_after,
    register_chain_processor,
    resolve_layers,
    run_until,
    sparse_map_mse,
    top_k_map,
)

__all__ = [
    "FrameAttentionStats",
    "frame_attention_stats",
    "naive_frame_attention_stats",
    "triton_available",
    "Attachment",
    "AttentionCall",
    "AttentionCapture",
    "AttentionStage",
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
