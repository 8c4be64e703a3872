"""Video files and frame tensors: decode, select frames, resize, convert to/from ComfyUI IMAGE, write mp4.

Frames are ``torch.float32`` tensors shaped ``[F, H, W, 3]`` with values in 0..1 (the layout of a ComfyUI
IMAGE batch, one frame per batch item). Everything here is CPU work; moving frames to a device is the
caller's business.

Decoding uses decord when it imports and PyAV (``av``, which ComfyUI already depends on) otherwise; both
give the same frames for the same indices. Frame *indices* are positions in the decoded stream (display
order); a variable-frame-rate file is treated as if every frame lasted ``1 / source_fps``. Display-rotation
metadata (phone videos) is not applied by either backend.

Frame selection follows the reference implementations:

* ``spread=True`` — MotionClone: ``num_frames`` indices spread uniformly over the whole clip,
  ``np.linspace(start, total - 1, num_frames)`` truncated to ints.
* ``fps=`` — MotionDirector: stride ``k = max(1, round(source_fps / fps))`` (Python's ``round``).
* ``stride=`` — an explicit stride; it wins over ``fps``.

The synthetic *moving square* video (:func:`moving_square_frames`) is the ground truth of every motion
test: a square moving at a known velocity in pixels per frame, measurable with :func:`square_centroid`
and :func:`mean_velocity`.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F

from motion_core.errors import InputError, VideoError

__all__ = [
    "VideoClip",
    "VideoInfo",
    "available_backends",
    "available_encoders",
    "probe_video",
    "load_video",
    "select_frame_indices",
    "selection_fps",
    "resize_and_crop",
    "resize_frames",
    "fit_size",
    "to_comfy_image",
    "from_comfy_image",
    "to_uint8",
    "write_video",
    "moving_square_frames",
    "write_moving_square_video",
    "square_centroid",
    "mean_velocity",
]

PathLike = Union[str, os.PathLike]
FramesLike = Union[torch.Tensor, np.ndarray]

BACKENDS: tuple[str, ...] = ("decord", "av")
"""Decoders in order of preference for ``backend="auto"``."""

ENCODER_PREFERENCE: tuple[str, ...] = ("libx264", "libopenh264", "mpeg4")
"""Encoders tried in this order by :func:`write_video` when no codec is named."""

_CONTAINER_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
_VIDEO_HINT = "Use a video file (mp4, webm, mov, mkv, gif, ...)."

# Frames decoded/resized per torch op, to bound peak memory on long clips.
_CHUNK = 32


# --------------------------------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------------------------------


@dataclass
class VideoClip:
    """Frames decoded from a file, with where they came from.

    Attributes:
        frames: ``float32 [F, H, W, 3]`` in 0..1 (after any resize).
        fps: frame rate of the returned clip (``source_fps / stride``, or duration-based for spread).
        source_fps: frame rate stated by the file (0.0 if the file states none).
        indices: source frame indices, one per returned frame.
        source_size: ``(width, height)`` of the source video before resizing.
        path: the file decoded.
        backend: the decoder used (``"decord"`` or ``"av"``).
    """

    frames: torch.Tensor
    fps: float
    source_fps: float
    indices: list[int]
    source_size: tuple[int, int]
    path: Path
    backend: str = ""

    @property
    def num_frames(self) -> int:
        """Number of frames in the clip."""
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the returned frames."""
        return int(self.frames.shape[2]), int(self.frames.shape[1])


@dataclass(frozen=True)
class VideoInfo:
    """What a video file says about itself, without decoding its frames."""

    path: Path
    num_frames: int
    fps: float
    width: int
    height: int
    backend: str = field(default="")

    @property
    def duration(self) -> float:
        """Length in seconds (``num_frames / fps``; 0.0 when the fps is unknown)."""
        return self.num_frames / self.fps if self.fps > 0 else 0.0


# --------------------------------------------------------------------------------------------------
# Frame selection (pure)
# --------------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_positive(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a positive number, got {value!r}.") from None
    if not math.isfinite(v) or v <= 0:
        raise InputError(f"{name} must be a positive number, got {value!r}.")
    return v


def _selection_stride(source_fps: float, fps: float | None, stride: int | None) -> int:
    """The stride rule: explicit ``stride`` wins, else MotionDirector's ``max(1, round(src/fps))``."""
    if stride is not None:
        return _check_int("stride", stride, 1)
    if fps is not None:
        fps = _check_positive("fps", fps)
        if not source_fps or source_fps <= 0 or not math.isfinite(source_fps):
            raise VideoError(
                "The video does not state its frame rate, so frames cannot be picked by fps. "
                "Use stride= (take every k-th frame) or spread=True instead."
            )
        return max(1, round(source_fps / fps))
    return 1


def select_frame_indices(
    total: int,
    source_fps: float,
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    stride: int | None = None,
    start: int = 0,
    spread: bool = False,
) -> list[int]:
    """Source frame indices to decode from a clip of ``total`` frames at ``source_fps``.

    Args:
        total: number of frames in the source.
        source_fps: frame rate of the source (only needed with ``fps``).
        num_frames: how many frames to return; ``None`` = every frame the rule yields.
        fps: target frame rate; gives the stride ``k = max(1, round(source_fps / fps))``.
        stride: take every ``stride``-th frame; wins over ``fps``.
        start: first source frame to consider.
        spread: spread ``num_frames`` uniformly over ``[start, total - 1]``
            (``np.linspace(...)`` truncated to ints); cannot be combined with ``fps``/``stride``.

    Raises:
        VideoError: the clip has no frames, ``start`` is past the end, or fewer frames are available
            than asked (the message says how many are available and what to change).
        InputError: an argument is out of range or ``spread`` is combined with ``fps``/``stride``.
    """
    total = _check_int("total frame count", total, 0)
    if total == 0:
        raise VideoError("The video has no frames. Use another file or re-export it.")
    start = _check_int("start", start, 0)
    if num_frames is not None:
        num_frames = _check_int("num_frames", num_frames, 1)
    if start >= total:
        raise VideoError(
            f"start={start} is past the end: the video has {total} frames (0..{total - 1}). "
            f"Use a start below {total}."
        )
    available = total - start

    if spread:
        if fps is not None or stride is not None:
            raise InputError(
                "spread=True spreads the frames over the whole clip, so it cannot be combined with "
                "fps or stride. Drop spread, or drop fps/stride."
            )
        n = available if num_frames is None else num_frames
        if n > available:
            raise VideoError(
                f"Asked for {n} frames spread over the clip, but it has only {available} frames"
                f"{f' from frame {start}' if start else ''}. Ask for at most {available} frames "
                "(spreading would repeat frames)."
            )
        return [int(i) for i in np.linspace(start, total - 1, n).astype(np.int64)]

    k = _selection_stride(source_fps, fps, stride)
    candidates = list(range(start, total, k))
    if num_frames is None:
        return candidates
    if num_frames > len(candidates):
        rate = ""
        if source_fps and source_fps > 0:
            rate = f" ({source_fps / k:g} fps)"
        where = f" from frame {start}" if start else ""
        fixes = []
        if k > 1:
            fixes.append("a smaller stride" + (" or a higher fps" if stride is None else ""))
        if start:
            fixes.append("a smaller start")
        fixes.append("spread=True to spread the frames over the whole clip")
        raise VideoError(
            f"Asked for {num_frames} frames, but the video has only {len(candidates)} frames at "
            f"stride {k}{rate}{where} ({total} source frames"
            f"{f' at {source_fps:g} fps' if source_fps and source_fps > 0 else ''}). "
            f"Ask for at most {len(candidates)} frames, or use " + ", or ".join(fixes) + "."
        )
    return candidates[:num_frames]


def selection_fps(
    total: int,
    source_fps: float,
    *,
    fps: float | None = None,
    stride: int | None = None,
    start: int = 0,
    spread: bool = False,
    num_frames: int | None = None,
) -> float:
    """Frame rate of a clip chosen by :func:`select_frame_indices` with the same arguments.

    With a stride ``k`` it is ``source_fps / k``. With ``spread`` it is ``n * source_fps / (total - start)``:
    the ``n`` frames play back in the time the source span lasts. 0.0 when ``source_fps`` is unknown.
    """
    if not source_fps or source_fps <= 0:
        return 0.0
    if spread:
        available = total - start
        n = available if num_frames is None else num_frames
        return n * float(source_fps) / max(1, available)
    return float(source_fps) / _selection_stride(source_fps, fps, stride)


# --------------------------------------------------------------------------------------------------
# Decoding backends
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _import_backend(name: str) -> Any:
    """The backend module, or None when it does not import here (decord has x86-64 wheels only)."""
    try:
        if name == "decord":
            import decord

            return decord
        if name == "av":
            import av

            return av
    except Exception:  # noqa: BLE001 - a broken install must just mean "not available"
        return None
    return None


def available_backends() -> list[str]:
    """Decoders that import here, in order of preference (``"decord"``, ``"av"``)."""
    return [name for name in BACKENDS if _import_backend(name) is not None]


def _backend_order(backend: str) -> list[str]:
    if backend not in ("auto", *BACKENDS):
        raise InputError(f"Unknown video backend {backend!r}. Use 'auto', 'decord' or 'av'.")
    names = list(BACKENDS) if backend == "auto" else [backend]
    usable = [n for n in names if _import_backend(n) is not None]
    if not usable:
        if backend == "auto":
            raise VideoError("No video decoder is installed. Install PyAV: pip install av")
        pkg = "decord" if backend == "decord" else "av"
        raise VideoError(
            f"The video backend {backend!r} is not installed here. Install it (pip install {pkg}) "
            f"or use backend='auto' (available: {available_backends() or 'none'})."
        )
    return usable


class _Reader:
    """A minimal random-access frame reader over one open file."""

    name = ""
    num_frames: int
    fps: float
    width: int
    height: int

    def read(self, indices: Sequence[int]) -> np.ndarray:  # pragma: no cover - interface
        """``uint8 [N, H, W, 3]`` RGB frames at ``indices`` (increasing order not required)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class _DecordReader(_Reader):
    name = "decord"

    def __init__(self, path: Path) -> None:
        decord = _import_backend("decord")
        self._vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=0)
        self.num_frames = len(self._vr)
        self.fps = float(self._vr.get_avg_fps() or 0.0)
        if self.num_frames > 0:
            self.height, self.width = (int(s) for s in self._vr[0].shape[:2])
            self._vr.seek(0)
        else:
            self.width = self.height = 0

    def read(self, indices: Sequence[int]) -> np.ndarray:
        # decord seeks to each index itself: only the needed frames (and their reference frames) are decoded.
        out = []
        for i in range(0, len(indices), _CHUNK):
            out.append(self._vr.get_batch(list(indices[i : i + _CHUNK])).asnumpy())
        return np.concatenate(out, axis=0)

    def close(self) -> None:
        del self._vr


def _rate_of(stream: Any) -> float:
    for attr in ("average_rate", "guessed_rate", "base_rate"):
        rate = getattr(stream, attr, None)
        if rate:
            return float(rate)
    return 0.0


class _AvReader(_Reader):
    name = "av"

    def __init__(self, path: Path) -> None:
        av = _import_backend("av")
        self._path = path
        self._av = av
        container = av.open(str(path), mode="r")
        try:
            if not container.streams.video:
                raise VideoError(f"{path} has no video stream (audio only?). {_VIDEO_HINT}")
            stream = container.streams.video[0]
            self.fps = _rate_of(stream)
            self.width = int(stream.codec_context.width)
            self.height = int(stream.codec_context.height)
            self.num_frames = int(stream.frames or 0)
            if self.num_frames <= 0:
                # The container does not state a count (webm, some mkv): count packets, no decoding.
                self.num_frames = sum(1 for p in container.demux(stream) if p.size)
        finally:
            container.close()

    def read(self, indices: Sequence[int]) -> np.ndarray:
        # PyAV can only decode forward from a keyframe: decode in order, convert to RGB only the frames
        # asked for, and stop after the last one.
        wanted: dict[int, list[int]] = {}
        for pos, idx in enumerate(indices):
            wanted.setdefault(int(idx), []).append(pos)
        last = max(wanted)
        out: list[np.ndarray | None] = [None] * len(indices)
        container = self._av.open(str(self._path), mode="r")
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    arr = frame.to_ndarray(format="rgb24")
                    for pos in wanted[i]:
                        out[pos] = arr
                if i >= last:
                    break
        finally:
            container.close()
        missing = [indices[p] for p, a in enumerate(out) if a is None]
        if missing:
            raise VideoError(
                f"{self._path}: frame {missing[0]} could not be decoded although the file states "
                f"{self.num_frames} frames; the file is probably truncated. Re-export it, or select "
                "fewer frames."
            )
        return np.stack(out, axis=0)  # type: ignore[arg-type]


_READERS = {"decord": _DecordReader, "av": _AvReader}


def _check_path(path: PathLike) -> Path:
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        where = "" if p.is_absolute() else f" (relative paths are resolved from {Path.cwd()})"
        raise VideoError(f"Video file not found: {p}{where}. Check the path and the file name.")
    if p.is_dir():
        raise VideoError(f"{p} is a folder, not a video file. Give the path of a video file inside it.")
    if p.stat().st_size == 0:
        raise VideoError(f"{p} is empty (0 bytes): it was not written completely. Re-export or copy it again.")
    return p


def _open_reader(path: Path, backend: str) -> _Reader:
    errors: list[str] = []
    for name in _backend_order(backend):
        try:
            return _READERS[name](path)
        except VideoError:
            raise
        except Exception as exc:  # noqa: BLE001 - each backend raises its own error types
            text = str(exc).strip()
            detail = text.splitlines()[0] if text else type(exc).__name__
            detail = re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", detail)  # decord's "[time] file.cc:line: " prefix
            errors.append(f"{name}: {detail}")
    raise VideoError(
        f"Cannot read {path} as a video ({'; '.join(errors)}). {_VIDEO_HINT} If it is one, it may be "
        "corrupt or use a codec this build cannot decode: re-encode it, e.g. "
        "ffmpeg -i in.ext -c:v libx264 -pix_fmt yuv420p out.mp4"
    )


def probe_video(path: PathLike, *, backend: str = "auto") -> VideoInfo:
    """Frame count, fps and size of a video file, without decoding its frames.

    Raises:
        VideoError: missing file, a folder, an empty or unreadable file.
    """
    p = _check_path(path)
    reader = _open_reader(p, backend)
    try:
        return VideoInfo(p, reader.num_frames, reader.fps, reader.width, reader.height, reader.name)
    finally:
        reader.close()


def _nearest_multiples(value: int, multiple: int) -> str:
    lo = max(multiple, (value // multiple) * multiple)
    hi = lo + multiple if lo < value else lo
    return f"{lo}" if lo == hi else f"{lo} or {hi}"


def load_video(
    path: PathLike,
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    stride: int | None = None,
    start: int = 0,
    spread: bool = False,
    width: int | None = None,
    height: int | None = None,
    multiple: int = 1,
    resize_mode: str = "crop",
    backend: str = "auto",
) -> VideoClip:
    """Decode the frames of a video file.

    Frame selection is :func:`select_frame_indices` (``num_frames``, ``fps``, ``stride``, ``start``,
    ``spread``); only the selected frames are decoded to RGB.

    Size: with ``width`` and ``height`` the frames are resized to exactly that size (``resize_mode="crop"``:
    scale to cover then center-crop, see :func:`resize_and_crop`; ``"stretch"``: plain resize, which
    changes the aspect ratio as the reference repositories do). With only one of them, the other follows
    the source aspect ratio, rounded to ``multiple``. With neither, the source size is kept, or — when
    ``multiple > 1`` and the source size is not a multiple of it — the nearest multiple-of-``multiple``
    size with the source's aspect ratio (:func:`fit_size`).

    Args:
        backend: ``"auto"`` (decord if it imports, else PyAV; a file decord cannot open is retried with
            PyAV), ``"decord"`` or ``"av"``.

    Raises:
        VideoError: missing/unreadable file, no frames, fewer frames than asked.
        InputError: ``width``/``height`` not multiples of ``multiple`` (the message names the nearest
            valid sizes) or other bad arguments.
    """
    multiple = _check_int("multiple", multiple, 1)
    for name, value in (("width", width), ("height", height)):
        if value is not None:
            value = _check_int(name, value, 1)
            if value % multiple:
                raise InputError(
                    f"{name}={value} is not a multiple of {multiple} (the model needs multiples of "
                    f"{multiple}). Use {_nearest_multiples(value, multiple)}."
                )
    if resize_mode not in ("crop", "stretch"):
        raise InputError(f"resize_mode must be 'crop' or 'stretch', got {resize_mode!r}.")

    p = _check_path(path)
    # In "auto" mode a backend that cannot open the file, or opens it but fails while decoding (decord
    # on GIFs and on some frame sizes), is followed by the next one instead of failing the whole load.
    order = _backend_order(backend) if backend == "auto" else [backend]
    failures: list[str] = []
    for attempt, name in enumerate(order):
        last = attempt == len(order) - 1
        try:
            reader = _open_reader(p, name)
        except VideoError as exc:
            if last:
                raise VideoError(f"{exc} ({'; '.join(failures)})" if failures else str(exc)) from None
            failures.append(str(exc))
            continue
        try:
            total, source_fps = reader.num_frames, reader.fps
            src_w, src_h = reader.width, reader.height
            try:
                indices = select_frame_indices(
                    total, source_fps, num_frames=num_frames, fps=fps, stride=stride, start=start, spread=spread
                )
            except VideoError as exc:
                raise VideoError(f"{p}: {exc}") from None
            raw = reader.read(indices)
            break
        except VideoError:
            raise
        except Exception as exc:  # noqa: BLE001 - each backend raises its own error types
            if last:
                raise VideoError(f"Cannot decode {p} with {reader.name}: {exc}. Re-encode it, e.g. "
                                 "ffmpeg -i in.ext -c:v libx264 -pix_fmt yuv420p out.mp4") from exc
            failures.append(f"{reader.name}: {exc}")
        finally:
            reader.close()

    frames = torch.from_numpy(raw).to(torch.float32).div_(255.0)
    h, w = int(frames.shape[1]), int(frames.shape[2])

    if width is None and height is None:
        if w % multiple or h % multiple:
            width, height = fit_size(w, h, multiple=multiple)
    elif width is None:
        width = max(multiple, round(height * w / h / multiple) * multiple)  # type: ignore[operator]
    elif height is None:
        height = max(multiple, round(width * h / w / multiple) * multiple)
    if width is not None and height is not None and (width, height) != (w, h):
        resize = resize_and_crop if resize_mode == "crop" else resize_frames
        frames = resize(frames, width, height)

    clip_fps = selection_fps(
        total, source_fps, fps=fps, stride=stride, start=start, spread=spread, num_frames=len(indices)
    )
    return VideoClip(
        frames=frames.contiguous(),
        fps=clip_fps,
        source_fps=float(source_fps),
        indices=indices,
        source_size=(int(src_w or w), int(src_h or h)),
        path=p,
        backend=reader.name,
    )


# --------------------------------------------------------------------------------------------------
# Resizing
# --------------------------------------------------------------------------------------------------


def _as_frames_tensor(frames: FramesLike, what: str = "frames") -> torch.Tensor:
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise InputError(f"{what} must be a torch.Tensor or numpy array, got {type(frames).__name__}.")
    return frames


def _resize_nchw(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of ``[N, C, H, W]`` float frames, antialiased when shrinking, in chunks."""
    chunks = [
        F.interpolate(x[i : i + _CHUNK], size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        for i in range(0, x.shape[0], _CHUNK)
    ]
    return torch.cat(chunks, dim=0)


def _resize_frames_impl(frames: FramesLike, width: int, height: int, crop: bool) -> torch.Tensor:
    width = _check_int("width", width, 1)
    height = _check_int("height", height, 1)
    x = _as_frames_tensor(frames)
    if x.ndim not in (4, 5):
        raise InputError(
            f"frames must be [F,H,W,C] or [B,F,H,W,C], got shape {tuple(x.shape)}. "
            "Add a frame axis to a single image (image[None])."
        )
    lead = x.shape[:-3]
    h, w, c = (int(s) for s in x.shape[-3:])
    if h == 0 or w == 0 or x.numel() == 0:
        raise InputError(f"frames are empty (shape {tuple(x.shape)}).")
    if (w, h) == (width, height):
        return x
    dtype = x.dtype
    y = x.reshape(-1, h, w, c).permute(0, 3, 1, 2).to(torch.float32)  # channels-last memory, fast path
    if crop:
        scale = max(width / w, height / h)
        new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
        y = _resize_nchw(y, new_h, new_w) if (new_w, new_h) != (w, h) else y
        left, top = (new_w - width) // 2, (new_h - height) // 2
        y = y[:, :, top : top + height, left : left + width]
    else:
        y = _resize_nchw(y, height, width)
    y = y.permute(0, 2, 3, 1).reshape(*lead, height, width, c)
    if not dtype.is_floating_point:
        info = torch.iinfo(dtype)
        y = y.round_().clamp_(info.min, info.max)
    return y.to(dtype).contiguous()


def resize_and_crop(frames: FramesLike, width: int, height: int) -> torch.Tensor:
    """Scale frames to cover ``width x height`` (keeping the aspect ratio), then center-crop.

    Bilinear with antialiasing when shrinking. Accepts ``[F,H,W,C]`` or ``[B,F,H,W,C]`` (tensor or numpy)
    and returns the same layout and dtype (integer input is rounded back); the input is returned as is
    when it already has that size. When the excess to crop is odd, the extra pixel comes off the right /
    bottom side.
    """
    return _resize_frames_impl(frames, width, height, crop=True)


def resize_frames(frames: FramesLike, width: int, height: int) -> torch.Tensor:
    """Plain bilinear resize to ``width x height`` (antialiased; the aspect ratio may change).

    This is what the reference repositories do (torchvision ``Resize`` / decord resize, no crop).
    Same layouts as :func:`resize_and_crop`.
    """
    return _resize_frames_impl(frames, width, height, crop=False)


def fit_size(
    w: int,
    h: int,
    *,
    multiple: int,
    target_area: int | None = None,
    max_side: int | None = None,
) -> tuple[int, int]:
    """A ``(width, height)`` with the aspect ratio of ``w x h`` whose sides are multiples of ``multiple``.

    The size is first scaled so that ``width * height`` is about ``target_area`` (up or down) when given,
    then scaled down so that the longer side is at most ``max_side`` when given; each side is then rounded
    to the nearest multiple (at least ``multiple``; rounded down where rounding up would pass ``max_side``).
    """
    w, h = _check_int("width", w, 1), _check_int("height", h, 1)
    multiple = _check_int("multiple", multiple, 1)
    scale = 1.0
    if target_area is not None:
        target_area = _check_int("target_area", target_area, 1)
        scale = math.sqrt(target_area / (w * h))
    if max_side is not None:
        max_side = _check_int("max_side", max_side, 1)
        if max_side < multiple:
            raise InputError(f"max_side={max_side} is smaller than multiple={multiple}; raise max_side.")
        scale = min(scale, max_side / max(w, h)) if target_area is not None else min(1.0, max_side / max(w, h))

    def snap(v: float) -> int:
        out = max(multiple, int(round(v / multiple)) * multiple)
        if max_side is not None and out > max_side:
            out = max(multiple, (max_side // multiple) * multiple)
        return out

    return snap(w * scale), snap(h * scale)


# --------------------------------------------------------------------------------------------------
# ComfyUI IMAGE conversion
# --------------------------------------------------------------------------------------------------

_RANGE_SLACK = 1e-2  # VAE decodes overshoot 0..1 slightly; anything beyond this is a wrong scale.


def _to_float01(x: torch.Tensor, what: str) -> torch.Tensor:
    """``x`` as float32 in 0..1: uint8 is divided by 255; float must already be in 0..1 (then clamped)."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if not x.dtype.is_floating_point:
        raise InputError(f"{what} must be float in 0..1 or uint8 in 0..255, got dtype {x.dtype}.")
    x = x.to(torch.float32)
    if x.numel():
        if not torch.isfinite(x).all():
            raise InputError(f"{what} contains NaN or infinite values; check the node that produced it.")
        lo, hi = float(x.min()), float(x.max())
        if lo < -_RANGE_SLACK or hi > 1 + _RANGE_SLACK:
            hint = " They look like 0..255 values: divide by 255." if hi > 2 and lo >= 0 else (
                " They look like -1..1 values: map them with (x + 1) / 2." if lo < 0 else ""
            )
            raise InputError(f"{what} values must be in 0..1, got {lo:.3g}..{hi:.3g}.{hint}")
    return x.clamp(0.0, 1.0)


def _to_rgb(x: torch.Tensor, what: str) -> torch.Tensor:
    c = int(x.shape[-1])
    if c == 3:
        return x
    if c == 4:
        return x[..., :3]  # alpha dropped
    if c == 1:
        return x.expand(*x.shape[:-1], 3)
    raise InputError(f"{what} must have 1, 3 or 4 channels in its last axis, got {c} (shape {tuple(x.shape)}).")


def to_comfy_image(frames: FramesLike) -> torch.Tensor:
    """Frames as a ComfyUI IMAGE: ``float32 [B, H, W, 3]`` in 0..1, on the CPU, contiguous.

    Accepts ``[F,H,W,C]``, ``[B,F,H,W,C]`` (flattened to ``B*F`` images) or a single ``[H,W,C]``, float
    in 0..1 or uint8, C in {1, 3, 4}.
    """
    x = _as_frames_tensor(frames, "frames")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    elif x.ndim == 5:
        x = x.reshape(-1, *x.shape[-3:])
    elif x.ndim != 4:
        raise InputError(f"frames must be [F,H,W,C], [B,F,H,W,C] or [H,W,C], got shape {tuple(x.shape)}.")
    x = _to_rgb(_to_float01(x.detach().cpu(), "frames"), "frames")
    return x.contiguous()


def from_comfy_image(image: FramesLike) -> torch.Tensor:
    """A ComfyUI IMAGE (``[B,H,W,C]`` or a single ``[H,W,C]``) as frames ``float32 [F,H,W,3]`` in 0..1.

    C = 4 drops the alpha channel, C = 1 is repeated to gray RGB; uint8 input is scaled by 1/255.

    Raises:
        InputError: wrong rank, channel count, dtype, an empty batch, NaN, or values outside 0..1.
    """
    x = _as_frames_tensor(image, "IMAGE")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise InputError(f"IMAGE must be [B,H,W,C] (or one [H,W,C] image), got shape {tuple(x.shape)}.")
    if x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] == 0:
        raise InputError(f"IMAGE is empty (shape {tuple(x.shape)}): connect a node that outputs frames.")
    x = _to_rgb(x.detach().cpu(), "IMAGE")
    return _to_float01(x, "IMAGE").contiguous()


def to_uint8(frames: FramesLike) -> torch.Tensor:
    """Float frames in 0..1 (values outside are clamped) as ``uint8`` 0..255, rounded; uint8 passes through."""
    x = _as_frames_tensor(frames)
    if x.dtype == torch.uint8:
        return x
    if not x.dtype.is_floating_point:
        raise InputError(f"frames must be float in 0..1 or uint8, got dtype {x.dtype}.")
    return x.detach().to(torch.float32).clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _encoder_available(name: str) -> bool:
    av = _import_backend("av")
    if av is None:
        return False
    try:
        av.codec.Codec(name, "w")
    except Exception:  # noqa: BLE001 - unknown codec names raise various errors across PyAV versions
        return False
    return True


@functools.lru_cache(maxsize=None)
def available_encoders() -> list[str]:
    """Encoders from :data:`ENCODER_PREFERENCE` that the ffmpeg bundled with PyAV provides."""
    return [name for name in ENCODER_PREFERENCE if _encoder_available(name)]


def _frame_uint8(frame: Any, index: int, size: tuple[int, int] | None) -> np.ndarray:
    """One ``[H, W, C]`` frame as contiguous ``uint8 [H, W, 3]``, checked against the first frame's size."""
    x = _as_frames_tensor(frame, f"frame {index}")
    if x.ndim != 3 or x.shape[-1] not in (1, 3, 4):
        raise InputError(f"frame {index} must be [H,W,3] (or C=1/4), got shape {tuple(x.shape)}.")
    x = to_uint8(_to_rgb(_to_float01(x.detach().cpu(), f"frame {index}"), f"frame {index}"))
    if size is not None and (int(x.shape[1]), int(x.shape[0])) != size:
        raise InputError(
            f"frame {index} is {x.shape[1]}x{x.shape[0]} but the video is {size[0]}x{size[1]}; "
            "all frames of a video must have the same size."
        )
    return np.ascontiguousarray(x.numpy())


def _even(arr: np.ndarray) -> np.ndarray:
    # yuv420p stores chroma at half resolution, so encoders need even sizes: repeat the last row/column.
    h, w = arr.shape[:2]
    if h % 2 or w % 2:
        arr = np.pad(arr, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return arr


def write_video(
    path: PathLike,
    frames: FramesLike | Iterable[FramesLike],
    fps: float,
    *,
    codec: str | None = None,
    crf: int = 18,
) -> Path:
    """Write frames to a video file (mp4 by default) with PyAV, atomically.

    Args:
        path: target file; its suffix picks the container (``.mp4``/``.m4v``, ``.mov``, ``.mkv``). Missing
            parent folders are created.
        frames: ``[F,H,W,3]`` float in 0..1 or uint8 (tensor or numpy), or an iterable of ``[H,W,3]``
            frames (written as they come, so long videos need not be held in memory).
        fps: frame rate (a float is stored as the nearest fraction with denominator <= 1001, so 29.97 and
            24000/1001 survive).
        codec: encoder name; default: the first of ``libx264``, ``libopenh264``, ``mpeg4`` that the bundled
            ffmpeg has (see :func:`available_encoders`).
        crf: quality for libx264 (0 = lossless-ish .. 51, 18 = visually lossless); mapped to a quantizer
            for mpeg4 and ignored by libopenh264.

    The pixel format is yuv420p, which needs even sizes: an odd width or height is padded by repeating the
    last column/row, so the file is one pixel larger than the frames on that side.

    The file is written to a hidden temporary name in the target folder and moved into place with
    ``os.replace`` only when complete; on any error the temporary file is removed and an existing file at
    ``path`` is left untouched. A full disk or an unwritable folder raises a
    :class:`~motion_core.errors.StorageError` naming the folder.

    Returns:
        the path written.
    """
    av = _import_backend("av")
    if av is None:
        raise VideoError("Writing video needs PyAV. Install it: pip install av")
    fps = _check_positive("fps", fps)
    crf = _check_int("crf", crf, 0)
    target = Path(os.fspath(path)).expanduser()
    if target.is_dir():
        raise InputError(f"Cannot write {target}: it is a folder. Give a file name such as {target / 'out.mp4'}.")
    fmt = _CONTAINER_FORMATS.get(target.suffix.lower())
    if fmt is None:
        raise InputError(
            f"Cannot write {target}: unsupported suffix {target.suffix!r}. Use one of "
            f"{', '.join(sorted(_CONTAINER_FORMATS))}."
        )
    encoders = available_encoders()
    if codec is None:
        if not encoders:
            raise VideoError(f"The ffmpeg bundled with PyAV has none of the encoders {ENCODER_PREFERENCE}.")
        codec = encoders[0]
    elif not _encoder_available(codec):
        raise InputError(f"Encoder {codec!r} is not available in this PyAV build. Available: {encoders}.")

    if isinstance(frames, (torch.Tensor, np.ndarray)):
        x = _as_frames_tensor(frames)
        if x.ndim != 4:
            raise InputError(f"frames must be [F,H,W,3], got shape {tuple(x.shape)}.")
        if x.shape[0] == 0:
            raise InputError("frames is empty: there is nothing to write.")
        frame_iter: Iterable[Any] = iter(x)
    else:
        frame_iter = iter(frames)

    rate = Fraction(fps).limit_denominator(1001)

    def encode(tmp: Path) -> None:
        container = av.open(str(tmp), mode="w", format=fmt)
        try:
            stream = None
            size: tuple[int, int] | None = None
            count = 0
            for i, frame in enumerate(frame_iter):
                arr = _frame_uint8(frame, i, size)
                if size is None:
                    size = (int(arr.shape[1]), int(arr.shape[0]))
                arr = _even(arr)
                if stream is None:
                    stream = _add_video_stream(container, codec, rate, crf, int(arr.shape[1]), int(arr.shape[0]))
                vf = av.VideoFrame.from_ndarray(arr, format="rgb24")
                vf.pts = i
                for packet in stream.encode(vf):
                    container.mux(packet)
                count += 1
            if stream is None or count == 0:
                raise InputError("frames is empty: there is nothing to write.")
            for packet in stream.encode():
                container.mux(packet)
        except BaseException:
            try:
                container.close()
            except Exception:  # noqa: BLE001 - the original error is the one to report
                pass
            raise
        container.close()

    from .storage import write_atomically

    write_atomically(target, encode, what="the video", advice="or write the video to another folder")
    return target


def _add_video_stream(container: Any, codec: str, rate: Fraction, crf: int, width: int, height: int) -> Any:
    options: dict[str, str] = {}
    if codec in ("libx264", "h264", "libx265", "hevc"):
        options["crf"] = str(min(crf, 51))
    stream = container.add_stream(codec, rate=rate, options=options)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    if codec == "mpeg4":
        # No crf in mpeg4: a fixed quantizer (2 = best .. 31) of about crf / 6 gives comparable quality.
        cc = stream.codec_context
        cc.qscale = True
        cc.global_quality = max(2, min(31, round(crf / 6))) * 118  # FF_QP2LAMBDA
    return stream


# --------------------------------------------------------------------------------------------------
# Synthetic reference video and motion measurement
# --------------------------------------------------------------------------------------------------


def _coverage(pos: torch.Tensor, size: float, extent: int, wrap: bool) -> torch.Tensor:
    """Fraction of each pixel cell ``[p, p+1)`` covered by the interval ``[pos, pos + size)``; ``[F, extent]``."""
    cells = torch.arange(extent, dtype=torch.float64)
    pos = pos.to(torch.float64)[:, None]
    if wrap:
        pos = torch.remainder(pos, extent)
        shifts = (0.0, -float(extent))  # the part past the far edge reappears at the near edge
    else:
        shifts = (0.0,)
    cov = torch.zeros(pos.shape[0], extent, dtype=torch.float64)
    for s in shifts:
        lo, hi = pos + s, pos + s + size
        cov += (torch.minimum(cells + 1, hi) - torch.maximum(cells, lo)).clamp(0.0, 1.0)
    return cov


def moving_square_frames(
    num_frames: int = 16,
    width: int = 64,
    height: int = 64,
    square: int = 16,
    velocity: tuple[float, float] = (2, 0),
    start: tuple[float, float] = (8, 24),
    background: float = 0.1,
    color: tuple[float, float, float] = (1.0, 0.5, 0.2),
) -> torch.Tensor:
    """A square of side ``square`` moving at ``velocity`` (x, y) pixels per frame over a flat background.

    Frame ``i`` has the square's top-left corner at ``start + i * velocity`` (its centroid at
    ``start + square / 2 - 0.5 + i * velocity`` in pixel-center coordinates). Positions may be fractional:
    edge pixels get the covered fraction of the color (box-filter antialiasing), so the centroid moves
    exactly by ``velocity`` every frame. The frame is a torus: a square that runs past an edge **wraps
    around** to the opposite edge (with the defaults this happens from frame 21 on, e.g. in the 24-frame
    :func:`write_moving_square_video`); :func:`square_centroid` and :func:`mean_velocity` handle the wrap.

    Returns:
        ``float32 [num_frames, height, width, 3]`` in 0..1.
    """
    num_frames = _check_int("num_frames", num_frames, 1)
    width, height = _check_int("width", width, 1), _check_int("height", height, 1)
    if not 0 < square <= min(width, height):
        raise InputError(f"square must be in 1..{min(width, height)} (the frame size), got {square}.")
    t = torch.arange(num_frames, dtype=torch.float64)
    cov_x = _coverage(start[0] + t * velocity[0], square, width, wrap=True)  # [F, W]
    cov_y = _coverage(start[1] + t * velocity[1], square, height, wrap=True)  # [F, H]
    mask = (cov_y[:, :, None] * cov_x[:, None, :]).to(torch.float32)[..., None]  # [F, H, W, 1]
    col = torch.tensor(color, dtype=torch.float32)
    bg = torch.full((3,), float(background), dtype=torch.float32)
    frames = bg + mask * (col - bg)
    return frames.clamp_(0.0, 1.0).contiguous()


def write_moving_square_video(
    path: PathLike,
    num_frames: int = 24,
    fps: float = 8,
    *,
    codec: str | None = None,
    crf: int = 18,
    **kw: Any,
) -> Path:
    """Write :func:`moving_square_frames` (``num_frames`` and ``**kw``) to a video file at ``fps``."""
    return write_video(path, moving_square_frames(num_frames, **kw), fps, codec=codec, crf=crf)


def _circular_mean(coord: torch.Tensor, weight: torch.Tensor, extent: int) -> torch.Tensor:
    ang = coord * (2 * math.pi / extent)
    s = (weight * torch.sin(ang)).sum(-1)
    c = (weight * torch.cos(ang)).sum(-1)
    return torch.remainder(torch.atan2(s, c) * (extent / (2 * math.pi)), extent)


def square_centroid(
    frames: FramesLike,
    color: tuple[float, float, float] | None = (1.0, 0.5, 0.2),
    *,
    wrap: bool | None = None,
) -> torch.Tensor:
    """``(x, y)`` centroid, in pixels (pixel centers at integers), of a colored object in each frame.

    With ``color``, each pixel's weight is how far it lies from the frame's background color (the per-
    channel median of the frame) towards ``color`` — a soft coverage in 0..1 that keeps subpixel accuracy
    after codec blurring; pixels whose color is off that line, or with coverage below 0.05, count zero.
    With ``color=None``, pixels differing from the background by more than half of the frame's largest
    difference count one (a brightness threshold). The object must cover less than half of the frame.

    ``wrap`` (per axis) uses a circular mean for an object split across opposite edges (see
    :func:`moving_square_frames`); ``None`` does so only when the object touches both edges of an axis.

    Returns:
        ``float32 [F, 2]``; a frame where nothing matches gives NaN.
    """
    x = _as_frames_tensor(frames).detach().cpu()
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[-1] < 3:
        raise InputError(f"frames must be [F,H,W,3], got shape {tuple(x.shape)}.")
    x = _to_float01(x[..., :3], "frames").to(torch.float64)
    n, h, w, _ = x.shape
    bg = x.reshape(n, -1, 3).median(dim=1).values[:, None, None, :]  # [F,1,1,3]
    if color is not None:
        direction = torch.tensor(color, dtype=torch.float64)[None, None, None, :] - bg
        norm2 = (direction**2).sum(-1).clamp_min(1e-12)
        diff = x - bg
        cov = (diff * direction).sum(-1) / norm2
        resid = (diff - cov[..., None] * direction).norm(dim=-1) / norm2.sqrt()
        weight = torch.where((resid < 0.5) & (cov >= 0.05), cov.clamp(0.0, 1.0), torch.zeros_like(cov))
    else:
        d = (x - bg).norm(dim=-1)
        peak = d.reshape(n, -1).max(dim=1).values[:, None, None]
        weight = ((d > 0.5 * peak) & (peak > 1e-3)).to(torch.float64)
    total = weight.sum(dim=(1, 2))
    wx, wy = weight.sum(dim=1), weight.sum(dim=2)  # [F, W], [F, H]
    xs, ys = torch.arange(w, dtype=torch.float64), torch.arange(h, dtype=torch.float64)
    cx = (wx * xs).sum(-1) / total
    cy = (wy * ys).sum(-1) / total

    def circular(profile: torch.Tensor) -> torch.Tensor:
        if wrap is None:
            return (profile[:, 0] > 0) & (profile[:, -1] > 0)
        return torch.full((n,), bool(wrap))

    use_x, use_y = circular(wx), circular(wy)
    cx = torch.where(use_x, _circular_mean(xs, wx, w), cx)
    cy = torch.where(use_y, _circular_mean(ys, wy, h), cy)
    out = torch.stack([cx, cy], dim=-1)
    out[total <= 0] = float("nan")
    return out.to(torch.float32)


def mean_velocity(
    frames: FramesLike,
    color: tuple[float, float, float] | None = (1.0, 0.5, 0.2),
    *,
    wrap: bool | None = None,
) -> torch.Tensor:
    """Mean frame-to-frame displacement ``(vx, vy)`` in pixels per frame of the object found by
    :func:`square_centroid`.

    A step longer than half the frame on an axis is taken as a wrap-around and shortened by the frame
    size. Frames where the object is not found are skipped.

    Raises:
        InputError: fewer than two frames, or fewer than two frames in which the object is found.
    """
    c = square_centroid(frames, color, wrap=wrap).to(torch.float64)
    if c.shape[0] < 2:
        raise InputError("mean_velocity needs at least 2 frames.")
    h, w = int(_as_frames_tensor(frames).shape[-3]), int(_as_frames_tensor(frames).shape[-2])
    d = c[1:] - c[:-1]
    extent = torch.tensor([w, h], dtype=torch.float64)
    d = torch.remainder(d + extent / 2, extent) - extent / 2
    ok = torch.isfinite(d).all(dim=-1)
    if not bool(ok.any()):
        raise InputError(
            "The object was not found in two consecutive frames; check the color (or use color=None)."
        )
    return d[ok].mean(dim=0).to(torch.float32)
