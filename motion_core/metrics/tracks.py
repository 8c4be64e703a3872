"""Point tracks of a video: where a set of points of the first frame are in every frame.

Two trackers:

* ``lucas_kanade`` (default, no weights): OpenCV's pyramidal Lucas-Kanade on Shi-Tomasi "good features to
  track" of the first frame, with a forward-backward check -- a point whose backward track misses its start by
  more than :data:`FB_LIMIT_PX` pixels at any step, or that leaves the frame, is dropped (tracks must cover the
  whole clip for the fidelity formula). Flat regions have nothing to track, which is what a feature tracker
  should say: they carry no visible motion.
* ``cotracker``: Meta's CoTracker on a regular grid of the first frame (the DMT evaluation's choice: a 55x55
  grid there), when the user has the ``cotracker`` package and its checkpoint as a local ``.pth`` file. The file
  is read with ``torch.load(weights_only=True)``; nothing is ever downloaded.

Both return :class:`Tracks` in pixel coordinates of the video they were computed on.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError, ModelLoadError

__all__ = ["FB_LIMIT_PX", "MIN_FRAMES", "TRACKERS", "Tracks", "require_opencv", "track_points"]

TRACKERS = ("lucas_kanade", "cotracker")
#: frames a clip needs for its motion to be measured (two frame steps)
MIN_FRAMES = 3
#: forward-backward error (pixels) above which a Lucas-Kanade point is considered lost
FB_LIMIT_PX = 1.0
#: the pip extra that brings the default tracker
METRICS_EXTRA = "pip install 'comfyui-motionkit[metrics]'  (or: pip install opencv-python-headless)"


@dataclass
class Tracks:
    """``points [N, T, 2]`` (x, y) in pixels of a ``width`` x ``height`` video; every track covers all T frames."""

    points: torch.Tensor
    width: int
    height: int
    tracker: str
    #: points the tracker started from (before lost ones were dropped)
    queried: int = 0

    @property
    def count(self) -> int:
        return int(self.points.shape[0])

    @property
    def frames(self) -> int:
        return int(self.points.shape[1])

    def normalized(self) -> torch.Tensor:
        """Coordinates as fractions of the frame's width and height (videos of different sizes compare)."""
        scale = torch.tensor([float(self.width), float(self.height)], dtype=torch.float32)
        return self.points.to(torch.float32) / scale


def require_opencv() -> Any:
    try:
        import cv2  # noqa: PLC0415
    except ImportError as exc:
        raise ModelLoadError(
            "Motion fidelity needs OpenCV for its point tracker (pyramidal Lucas-Kanade), which is not installed "
            f"({exc}). Install the metrics extra: {METRICS_EXTRA}.") from None
    return cv2


def _check_frames(frames: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.is_tensor(frames) or frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
        shape = tuple(frames.shape) if torch.is_tensor(frames) else type(frames).__name__
        raise InputError(f"The {what} must be a video as an IMAGE batch [frames, height, width, 3], got {shape}.")
    if frames.shape[0] < MIN_FRAMES:
        raise InputError(f"The {what} has {frames.shape[0]} frame(s): at least {MIN_FRAMES} are needed to measure "
                         "motion (two frame steps). Pass the whole clip, not a single image.")
    if min(frames.shape[1], frames.shape[2]) < 16:
        raise InputError(f"The {what} is {frames.shape[2]}x{frames.shape[1]} pixels: too small to track points "
                         "(at least 16x16).")
    return frames


def _gray_uint8(frames: torch.Tensor) -> np.ndarray:
    x = frames.detach().to("cpu", torch.float32)
    if x.shape[-1] == 1:
        gray = x[..., 0]
    else:  # ITU-R BT.601 luma, as OpenCV's RGB2GRAY, in one matrix product
        gray = x[..., :3] @ torch.tensor([0.299 * 255, 0.587 * 255, 0.114 * 255])
    return gray.clamp_(0, 255).round_().to(torch.uint8).numpy()


def track_lucas_kanade(frames: torch.Tensor, *, max_points: int = 600, what: str = "video") -> Tracks:
    """Pyramidal Lucas-Kanade tracks of the first frame's good features through ``frames [F,H,W,C]`` in 0..1."""
    cv2 = require_opencv()
    frames = _check_frames(frames, what)
    gray = _gray_uint8(frames)
    f, h, w = gray.shape
    side = min(h, w)
    start = cv2.goodFeaturesToTrack(gray[0], maxCorners=int(max_points), qualityLevel=0.01,
                                    minDistance=max(2.0, side / 64.0), blockSize=5 if side < 96 else 7)
    if start is None or len(start) == 0:
        return Tracks(torch.zeros(0, f, 2), w, h, "lucas_kanade", 0)
    window = 15 if side < 128 else 21
    levels = int(max(0, min(4, np.floor(np.log2(side / window)))))
    params = dict(winSize=(window, window), maxLevel=levels,
                  criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    points = np.zeros((len(start), f, 2), np.float32)
    points[:, 0] = start.reshape(-1, 2)
    alive = np.ones(len(start), bool)
    current = start.astype(np.float32)
    for t in range(1, f):
        nxt, status, _ = cv2.calcOpticalFlowPyrLK(gray[t - 1], gray[t], current, None, **params)
        back, status_b, _ = cv2.calcOpticalFlowPyrLK(gray[t], gray[t - 1], nxt, None, **params)
        fb = np.linalg.norm((back - current).reshape(-1, 2), axis=1)
        p = nxt.reshape(-1, 2)
        inside = (p[:, 0] >= 0) & (p[:, 0] <= w - 1) & (p[:, 1] >= 0) & (p[:, 1] <= h - 1)
        alive &= (status.reshape(-1) == 1) & (status_b.reshape(-1) == 1) & (fb < FB_LIMIT_PX) & inside
        points[:, t] = p
        current = nxt
    return Tracks(torch.from_numpy(points[alive]), w, h, "lucas_kanade", int(len(start)))


def _cotracker_predictor(checkpoint: Path, device: torch.device) -> Any:
    try:
        from cotracker.predictor import CoTrackerPredictor  # type: ignore[import-not-found]  # noqa: PLC0415
    except ImportError as exc:
        raise ModelLoadError(
            f"The cotracker tracker needs Meta's co-tracker package ({exc}). Install it from its repository "
            "(pip install git+https://github.com/facebookresearch/co-tracker), or use the lucas_kanade tracker, "
            "which needs no weights.") from None
    try:
        state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged file, or a pickle that would run code
        raise ModelLoadError(f"The CoTracker checkpoint {checkpoint} cannot be read as plain weights ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}). Use the official .pth file "
                             "(e.g. scaled_offline.pth or cotracker2.pth); files that need code to load are not "
                             "opened.") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    accepted = inspect.signature(CoTrackerPredictor.__init__).parameters
    options: dict[str, Any] = {"checkpoint": None}
    name = checkpoint.name.lower()
    if "offline" in accepted:
        options["offline"] = "online" not in name
    if "window_len" in accepted and "offline" in accepted:
        options["window_len"] = 60 if options.get("offline") else 16
    if "v2" in accepted:
        options["v2"] = "cotracker2" in name
    predictor = CoTrackerPredictor(**{k: v for k, v in options.items() if k in accepted})
    model = getattr(predictor, "model", predictor)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"{checkpoint} does not fit the installed co-tracker version's model "
                             f"({str(exc).splitlines()[0]}). Use the checkpoint released with that version.") from None
    return predictor.to(device)


def track_cotracker(frames: torch.Tensor, checkpoint: str | os.PathLike, *, grid_size: int = 55,
                    device: str | torch.device = "cpu", what: str = "video") -> Tracks:
    """CoTracker tracks of a ``grid_size`` x ``grid_size`` grid on the first frame (visible in every frame)."""
    frames = _check_frames(frames, what)
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise InputError(f"The CoTracker checkpoint {path} does not exist. Put the .pth file there (it is never "
                         "downloaded), or use the lucas_kanade tracker, which needs no weights.")
    device = torch.device(device)
    predictor = _cotracker_predictor(path, device)
    f, h, w = frames.shape[0], frames.shape[1], frames.shape[2]
    video = (frames[..., :3].to(device, torch.float32).permute(0, 3, 1, 2)[None] * 255.0)
    with torch.no_grad():
        out = predictor(video, grid_size=int(grid_size))
    tracks, visible = out[0], out[1] if isinstance(out, (tuple, list)) and len(out) > 1 else None
    points = tracks[0].to("cpu", torch.float32).permute(1, 0, 2).contiguous()  # [N, T, 2]
    keep = torch.ones(points.shape[0], dtype=torch.bool)
    if visible is not None:
        vis = visible[0].to("cpu")
        vis = vis[..., 0] if vis.ndim == 3 else vis
        keep &= vis.bool().all(dim=0)
    return Tracks(points[keep], w, h, "cotracker", int(points.shape[0]))


def track_points(frames: torch.Tensor, *, tracker: str = "lucas_kanade", max_points: int = 600,
                 cotracker_checkpoint: str | os.PathLike | None = None, grid_size: int = 55,
                 device: str | torch.device = "cpu", what: str = "video") -> Tracks:
    """Tracks of ``frames [F,H,W,C]`` (0..1) with the chosen tracker (:data:`TRACKERS`)."""
    if tracker == "lucas_kanade":
        return track_lucas_kanade(frames, max_points=max_points, what=what)
    if tracker == "cotracker":
        if not cotracker_checkpoint:
            raise InputError("The cotracker tracker needs its checkpoint as a local .pth file (e.g. in "
                             "ComfyUI/models/cotracker); it is never downloaded. Give it, or use lucas_kanade.")
        return track_cotracker(frames, cotracker_checkpoint, grid_size=grid_size, device=device, what=what)
    raise InputError(f"Unknown tracker {tracker!r}: choose one of {', '.join(TRACKERS)}.")
