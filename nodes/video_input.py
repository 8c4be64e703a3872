"""ComfyUI's core VIDEO type as a reference video: frames and fps from ``get_components()``.

Not a ``nodes_*`` module, so it registers no nodes. The core *Load Video* node (and *Create Video*) give a
``VideoInput`` (``comfy_api.latest._input.video_types``) whose ``get_components()`` returns
``VideoComponents(images [F,H,W,3] float 0..1, audio, frame_rate: Fraction)``. MotionKit reads it by that
shape alone (duck typing), so nothing here imports ComfyUI and a stand-in with the same method works in
tests. Every node that takes a reference video as IMAGE (+ fps) also takes one as VIDEO through
:func:`reference_video_input` and :func:`pick_reference`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from motion_core.errors import InputError

VIDEO = "VIDEO"


class ReferenceFrames(NamedTuple):
    """Frames as a ComfyUI IMAGE batch ``[F,H,W,3]`` and their frame rate (None: not known)."""

    frames: Any
    fps: float | None


def reference_video_input(what: str = "the reference video") -> tuple:
    """The optional ``VIDEO`` socket declared beside an IMAGE reference input."""
    return (VIDEO, {
        "tooltip": f"{what[0].upper() + what[1:]} as ComfyUI's VIDEO (e.g. from the core Load Video node), "
                   "instead of IMAGE frames: its frames are used with its own frame rate. Connect either this "
                   "or the IMAGE input, not both."})


def video_components(video: Any, name: str = "reference_video") -> ReferenceFrames:
    """Frames (IMAGE ``[F,H,W,3]``) and fps of a VIDEO, i.e. anything whose ``get_components()`` gives
    ``images`` and ``frame_rate`` (an InputError that says what arrived otherwise)."""
    import torch

    get_components = getattr(video, "get_components", None)
    if not callable(get_components):
        raise InputError(f"{name} must be a VIDEO (e.g. from the core Load Video node), got {type(video).__name__}. "
                         "Connect IMAGE frames to the IMAGE input instead.")
    components = get_components()
    images = getattr(components, "images", None)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"{name}: the VIDEO has no frames [F,H,W,3] (got {shape}).")
    rate = getattr(components, "frame_rate", None)
    try:
        fps = float(rate) if rate is not None else None
    except (TypeError, ValueError):
        fps = None
    if images.is_inference():  # a VIDEO made from components inside the host's inference mode
        images = images.clone()
    return ReferenceFrames(images, fps if fps and fps > 0 else None)


def pick_reference(image: Any, video: Any, fps: float | None = None, *, image_name: str = "video",
                   video_name: str = "reference_video", required: bool = True) -> ReferenceFrames | None:
    """The reference from whichever of the IMAGE input (with ``fps``, 0/None = not known) and the VIDEO
    input is connected. Both connected is an error (which one is meant?); neither is an error when
    ``required``, else None."""
    if image is not None and video is not None:
        raise InputError(f"Both '{image_name}' (IMAGE) and '{video_name}' (VIDEO) are connected: connect only one "
                         "of them as the reference video.")
    if video is not None:
        return video_components(video, video_name)
    if image is not None:
        return ReferenceFrames(image, float(fps) if fps else None)
    if required:
        raise InputError(f"No reference video: connect IMAGE frames to '{image_name}' (e.g. from Load Reference "
                         f"Video) or a VIDEO to '{video_name}' (e.g. from the core Load Video node).")
    return None
