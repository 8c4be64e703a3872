"""Model families behind one interface (:class:`VideoModel`) and the loader that picks the family.

>>> model = load_video_model("path/to/zeroscope_v2_576w")          # doctest: +SKIP
>>> model.family, len(model.temporal_attention_layers())           # doctest: +SKIP
('unet3d', 34)
"""

from .animatediff import AnimateDiffVideoModel
from .base import CancelCheck, FrameLimits, LayerKind, LayerRef, PredictionType, ProgressCallback, VideoModel
from .loading import (
    FAMILIES,
    LoadRequest,
    ModelInfo,
    check_components,
    detect_family,
    load_motion_adapter,
    load_video_model,
    register_family,
)
from .unet3d import ClipVaeVideoModel, UNet3DVideoModel
from .wan import WanVideoModel  # registers the "wan" family

__all__ = [
    "FAMILIES",
    "AnimateDiffVideoModel",
    "CancelCheck",
    "ClipVaeVideoModel",
    "FrameLimits",
    "LayerKind",
    "LayerRef",
    "LoadRequest",
    "ModelInfo",
    "PredictionType",
    "ProgressCallback",
    "UNet3DVideoModel",
    "VideoModel",
    "WanVideoModel",
    "check_components",
    "detect_family",
    "load_motion_adapter",
    "load_video_model",
    "register_family",
]
