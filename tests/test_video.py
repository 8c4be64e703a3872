"""Tests of motion_core.video: decode (decord and PyAV), frame selection, resize, IMAGE conversion,
atomic mp4 writing and the moving-square ground truth. CPU only, tiny clips."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from motion_core import video as V
from motion_core.errors import InputError, VideoError

BACKENDS = V.available_backends()
COLOR = (1.0, 0.5, 0.2)


@pytest.fixture(scope="module")
def square_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default reference clip: 24 frames, 64x64, 8 fps, square moving +2 px/frame in x."""
    return V.write_moving_square_video(tmp_path_factory.mktemp("vid") / "square.mp4")


@pytest.fixture(scope="module")
def square24fps_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 frames at 24 fps, square moving +1 px/frame in x (stays inside the frame)."""
    return V.write_moving_square_video(
        tmp_path_factory.mktemp("vid") / "square24.mp4", num_frames=30, fps=24, velocity=(1, 0), start=(4, 24)
    )


# --------------------------------------------------------------------------------------------------
# Decoding


def test_backends_available() -> None:
    assert "av" in BACKENDS, "PyAV is a hard dependency of the video path"
    assert BACKENDS == [b for b in V.BACKENDS if b in BACKENDS]  # preference order kept


@pytest.mark.parametrize("backend", BACKENDS)
def test_roundtrip_each_backend(square_mp4: Path, backend: str) -> None:
    clip = V.load_video(square_mp4, backend=backend)
    ref = V.moving_square_frames(24)
    assert clip.backend == backend
    assert clip.frames.dtype == torch.float32 and clip.frames.shape == (24, 64, 64, 3)
    assert clip.frames.is_contiguous()
    assert clip.indices == list(range(24))
    assert clip.fps == pytest.approx(8.0) and clip.source_fps == pytest.approx(8.0)
    assert clip.source_size == (64, 64) and clip.size == (64, 64) and clip.num_frames == 24
    assert clip.path == square_mp4
    assert 0.0 <= float(clip.frames.min()) and float(clip.frames.max()) <= 1.0
    err = (clip.frames - ref).abs()
    assert float(err.mean()) < 0.01  # crf 18 + yuv420p chroma subsampling
    assert float(err.max()) < 0.15
    # Frames are not shuffled: each decoded frame is closest to its own reference frame.
    dists = ((clip.frames[:, None] - ref[None]) ** 2).mean(dim=(2, 3, 4))
    assert dists.argmin(dim=1).tolist() == list(range(24))


@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs both decord and PyAV")
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"num_frames": 5, "stride": 3, "start": 2},
        {"num_frames": 7, "spread": True},
        {"num_frames": 4, "fps": 12, "width": 32, "height": 48},
    ],
)
def test_backends_agree(square24fps_mp4: Path, kwargs: dict) -> None:
    a = V.load_video(square24fps_mp4, backend="decord", **kwargs)
    b = V.load_video(square24fps_mp4, backend="av", **kwargs)
    assert a.indices == b.indices
    assert a.fps == pytest.approx(b.fps) and a.source_fps == pytest.approx(b.source_fps)
    assert a.frames.shape == b.frames.shape
    assert float((a.frames - b.frames).abs().max()) <= 1.5 / 255


def test_auto_prefers_decord_then_av(square_mp4: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert V.load_video(square_mp4, num_frames=1).backend == BACKENDS[0]
    # A machine without decord (e.g. ARM, where no wheel exists): auto falls back to PyAV.
    real = V._import_backend
    monkeypatch.setattr(V, "_import_backend", lambda name: None if name == "decord" else real(name))
    assert V.available_backends() == ["av"]
    assert V.load_video(square_mp4, num_frames=2).backend == "av"
    with pytest.raises(VideoError, match=r"'decord' is not installed.*pip install decord"):
        V.load_video(square_mp4, backend="decord")
    with pytest.raises(InputError, match="Unknown video backend"):
        V.load_video(square_mp4, backend="opencv")


def test_selection_through_load_video(square24fps_mp4: Path) -> None:
    clip = V.load_video(square24fps_mp4, num_frames=4, fps=8, start=3)
    assert clip.indices == [3, 6, 9, 12]
    assert clip.fps == pytest.approx(8.0) and clip.source_fps == pytest.approx(24.0)
    # The frames really are the source frames 3, 6, 9, 12: the square's x centroid is 4 + 7.5 + index.
    cx = V.square_centroid(clip.frames)[:, 0]
    assert torch.allclose(cx, torch.tensor([14.5, 17.5, 20.5, 23.5]), atol=0.1)
    spread = V.load_video(square24fps_mp4, num_frames=4, spread=True)
    assert spread.indices == [0, 9, 19, 29]
    assert spread.fps == pytest.approx(4 * 24 / 30)


def test_probe_video(square24fps_mp4: Path) -> None:
    for backend in BACKENDS:
        info = V.probe_video(square24fps_mp4, backend=backend)
        assert (info.num_frames, info.width, info.height) == (30, 64, 64)
        assert info.fps == pytest.approx(24.0) and info.duration == pytest.approx(1.25)


# --------------------------------------------------------------------------------------------------
# Frame selection (pure)


@pytest.mark.parametrize(
    ("total", "src_fps", "kwargs", "expected"),
    [
        (10, 24.0, {}, list(range(10))),
        (24, 24.0, {"fps": 8}, [0, 3, 6, 9, 12, 15, 18, 21]),
        (24, 24.0, {"fps": 8, "num_frames": 4}, [0, 3, 6, 9]),
        (24, 24.0, {"fps": 8, "num_frames": 4, "start": 2}, [2, 5, 8, 11]),
        (24, 24.0, {"fps": 8, "stride": 2, "num_frames": 3}, [0, 2, 4]),  # stride wins over fps
        (20, 30.0, {"fps": 8}, [0, 4, 8, 12, 16]),  # 30/8 = 3.75 -> 4
        (12, 25.0, {"fps": 10}, [0, 2, 4, 6, 8, 10]),  # 2.5 -> 2 (Python round, as MotionDirector)
        (5, 24.0, {"fps": 60}, [0, 1, 2, 3, 4]),  # asking more fps than the source: k = 1
        (24, 24.0, {"spread": True, "num_frames": 4}, [0, 7, 15, 23]),  # linspace(0, 23, 4) truncated
        (24, 24.0, {"spread": True, "num_frames": 4, "start": 4}, [4, 10, 16, 23]),
        (100, 30.0, {"spread": True, "num_frames": 16}, np.linspace(0, 99, 16, dtype=int).tolist()),
        (6, 24.0, {"spread": True, "start": 2}, [2, 3, 4, 5]),
        (3, 24.0, {"spread": True, "num_frames": 1}, [0]),
        (7, 0.0, {"stride": 3}, [0, 3, 6]),  # stride needs no fps
    ],
)
def test_select_frame_indices(total: int, src_fps: float, kwargs: dict, expected: list[int]) -> None:
    assert V.select_frame_indices(total, src_fps, **kwargs) == expected


def test_selection_fps() -> None:
    assert V.selection_fps(24, 24.0, fps=8) == pytest.approx(8.0)
    assert V.selection_fps(24, 24.0, fps=8, stride=2) == pytest.approx(12.0)
    assert V.selection_fps(20, 30.0, fps=8) == pytest.approx(7.5)
    assert V.selection_fps(24, 24.0, spread=True, num_frames=4) == pytest.approx(4.0)
    assert V.selection_fps(24, 24.0) == pytest.approx(24.0)
    assert V.selection_fps(24, 0.0) == 0.0


def test_too_few_frames_message() -> None:
    with pytest.raises(VideoError) as err:
        V.select_frame_indices(24, 24.0, num_frames=16, fps=8)
    msg = str(err.value)
    assert "16 frames" in msg and "only 8 frames" in msg and "stride 3" in msg and "8 fps" in msg
    assert "at most 8" in msg and "higher fps" in msg and "spread=True" in msg
    with pytest.raises(VideoError, match=r"only 3 frames.*from frame 21.*smaller start"):
        V.select_frame_indices(24, 24.0, num_frames=4, start=21)
    with pytest.raises(VideoError, match=r"only 5 frames.*at most 5.*repeat"):
        V.select_frame_indices(5, 24.0, num_frames=6, spread=True)


def test_selection_errors() -> None:
    with pytest.raises(VideoError, match="no frames"):
        V.select_frame_indices(0, 24.0)
    with pytest.raises(VideoError, match=r"start=30 is past the end.*30 frames"):
        V.select_frame_indices(30, 24.0, start=30)
    with pytest.raises(InputError, match="cannot be combined"):
        V.select_frame_indices(30, 24.0, num_frames=4, spread=True, fps=8)
    with pytest.raises(VideoError, match="does not state its frame rate"):
        V.select_frame_indices(30, 0.0, fps=8)
    for bad in ({"num_frames": 0}, {"stride": 0}, {"fps": -1}, {"start": -1}, {"num_frames": 2.5}):
        with pytest.raises(InputError):
            V.select_frame_indices(30, 24.0, **bad)


def test_too_few_frames_from_file(square_mp4: Path) -> None:
    with pytest.raises(VideoError) as err:
        V.load_video(square_mp4, num_frames=16, fps=4)
    msg = str(err.value)
    assert str(square_mp4) in msg and "only 12 frames" in msg and "stride 2" in msg and "at most 12" in msg


# --------------------------------------------------------------------------------------------------
# Bad files


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_bad_files(tmp_path: Path, backend: str) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(VideoError, match="not found") as err:
        V.load_video(missing, backend=backend)
    assert str(missing) in str(err.value)

    with pytest.raises(VideoError, match="is a folder") as err:
        V.load_video(tmp_path, backend=backend)
    assert str(tmp_path) in str(err.value)

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match=r"empty \(0 bytes\)") as err:
        V.load_video(empty, backend=backend)
    assert str(empty) in str(err.value)

    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(VideoError, match=r"Cannot read .* as a video.*re-encode") as err:
        V.load_video(text, backend=backend)
    assert str(text) in str(err.value)
    assert isinstance(err.value, ValueError)  # VideoError is an InputError/ValueError
    with pytest.raises(VideoError):
        V.probe_video(text, backend=backend)


# --------------------------------------------------------------------------------------------------
# Resize


def _blob(width: int, height: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    """One frame: dark background with a bright rectangle x0, y0, x1, y1 (exclusive)."""
    f = torch.full((1, height, width, 3), 0.1)
    x0, y0, x1, y1 = box
    f[:, y0:y1, x0:x1] = torch.tensor(COLOR)
    return f


def test_resize_and_crop_sizes_and_layouts() -> None:
    x = torch.rand(3, 60, 90, 3)
    assert V.resize_and_crop(x, 48, 48).shape == (3, 48, 48, 3)
    assert V.resize_and_crop(x, 40, 80).shape == (3, 80, 40, 3)
    assert V.resize_and_crop(x, 200, 100).shape == (3, 100, 200, 3)  # upscale
    assert V.resize_and_crop(x.reshape(1, 3, 60, 90, 3), 32, 16).shape == (1, 3, 16, 32, 3)
    assert V.resize_and_crop(x, 90, 60) is x  # already that size
    u8 = (x * 255).to(torch.uint8)
    out = V.resize_and_crop(u8, 45, 30)
    assert out.dtype == torch.uint8 and out.shape == (3, 30, 45, 3)
    # Shrinking is antialiased: one lit column in four averages to ~0.25 (a plain bilinear samples
    # between columns 1 and 2 of each group of four and would give 0).
    stripes = torch.zeros(1, 8, 32, 3)
    stripes[:, :, ::4] = 1.0
    small = V.resize_and_crop(stripes, 8, 2)
    assert small.shape == (1, 2, 8, 3)
    assert float(small.min()) > 0.15 and float(small.max()) < 0.35
    assert V.resize_and_crop(np.zeros((2, 8, 8, 3), np.float32), 4, 4).shape == (2, 4, 4, 3)
    with pytest.raises(InputError, match=r"\[F,H,W,C\]"):
        V.resize_and_crop(torch.rand(8, 8, 3), 4, 4)
    with pytest.raises(InputError):
        V.resize_and_crop(x, 0, 4)


@pytest.mark.parametrize(("src", "dst"), [((90, 60), (48, 48)), ((64, 96), (40, 40)), ((80, 80), (64, 32))])
def test_centered_pattern_stays_centered(src: tuple[int, int], dst: tuple[int, int]) -> None:
    w, h = src
    frame = _blob(w, h, (w // 2 - 6, h // 2 - 6, w // 2 + 6, h // 2 + 6))
    out = V.resize_and_crop(frame, *dst)
    c = V.square_centroid(out)[0]
    assert torch.allclose(c, torch.tensor([(dst[0] - 1) / 2, (dst[1] - 1) / 2]), atol=0.3)


def test_crop_removes_the_sides_stretch_keeps_them() -> None:
    # 96x64 with a marker in the leftmost 16 columns: covering 64x64 crops 16 px from each side.
    frame = _blob(96, 64, (0, 0, 16, 64))
    cropped = V.resize_and_crop(frame, 64, 64)
    assert torch.allclose(cropped, torch.full_like(cropped, 0.1))
    stretched = V.resize_frames(frame, 64, 64)
    assert stretched.shape == (1, 64, 64, 3)
    assert float(stretched[0, :, :8, 0].min()) > 0.9  # the marker is squeezed, not removed


def test_fit_size() -> None:
    assert V.fit_size(100, 50, multiple=16) == (96, 48)
    assert V.fit_size(1920, 1080, multiple=64, target_area=512 * 512) == (704, 384)
    assert V.fit_size(1920, 1080, multiple=8, max_side=512) == (512, 288)
    assert V.fit_size(302, 202, multiple=8, max_side=512) == (304, 200)  # max_side never upscales
    assert V.fit_size(64, 64, multiple=8, target_area=128 * 128) == (128, 128)  # target_area does
    assert V.fit_size(1000, 10, multiple=16, max_side=500) == (496, 16)  # floor at one multiple
    with pytest.raises(InputError, match="smaller than multiple"):
        V.fit_size(100, 100, multiple=16, max_side=8)


def test_load_video_sizes(tmp_path: Path, square_mp4: Path) -> None:
    clip = V.load_video(square_mp4, num_frames=2, width=32, height=48, multiple=16)
    assert clip.frames.shape == (2, 48, 32, 3) and clip.source_size == (64, 64) and clip.size == (32, 48)
    assert V.load_video(square_mp4, num_frames=1, width=32).frames.shape == (1, 32, 32, 3)
    with pytest.raises(InputError, match=r"width=100 is not a multiple of 16.*Use 96 or 112"):
        V.load_video(square_mp4, width=100, height=64, multiple=16)
    with pytest.raises(InputError, match=r"height=20 is not a multiple of 8.*Use 16 or 24"):
        V.load_video(square_mp4, width=64, height=20, multiple=8)
    # Neither given: the source size snapped to the multiple with its aspect ratio.
    odd = V.write_video(tmp_path / "odd.mp4", torch.rand(2, 44, 60, 3), 8)
    assert V.load_video(odd, multiple=16).frames.shape == (2, 48, 64, 3)
    assert V.load_video(odd).frames.shape == (2, 44, 60, 3)


# --------------------------------------------------------------------------------------------------
# ComfyUI IMAGE


def test_image_round_trip() -> None:
    frames = torch.rand(5, 12, 10, 3)
    img = V.to_comfy_image(frames)
    assert img.dtype == torch.float32 and img.device.type == "cpu" and img.is_contiguous()
    assert img.shape == (5, 12, 10, 3)
    assert torch.equal(V.from_comfy_image(img), frames)
    assert V.to_comfy_image(frames.reshape(1, 5, 12, 10, 3)).shape == (5, 12, 10, 3)
    assert V.to_comfy_image(frames[0]).shape == (1, 12, 10, 3)
    assert V.to_comfy_image(frames.permute(0, 2, 1, 3)).is_contiguous()
    assert torch.equal(V.from_comfy_image(frames[0]), frames[:1])
    rgba = torch.cat([frames, torch.zeros(5, 12, 10, 1)], dim=-1)
    assert torch.equal(V.from_comfy_image(rgba), frames)
    gray = V.from_comfy_image(frames[..., :1])
    assert gray.shape == (5, 12, 10, 3) and torch.equal(gray[..., 2], frames[..., 0])
    u8 = V.to_uint8(frames)
    assert u8.dtype == torch.uint8
    assert torch.allclose(V.from_comfy_image(u8), frames, atol=0.5 / 255 + 1e-6)
    assert torch.allclose(V.from_comfy_image(u8.numpy()), frames, atol=0.5 / 255 + 1e-6)
    assert V.from_comfy_image(frames.half()).dtype == torch.float32
    # Slight VAE overshoot is clamped, not rejected.
    assert float(V.from_comfy_image(frames * 1.005).max()) <= 1.0


def test_image_validation() -> None:
    with pytest.raises(InputError, match=r"0\.\.1.*divide by 255"):
        V.from_comfy_image(torch.rand(2, 4, 4, 3) * 255)
    with pytest.raises(InputError, match=r"\(x \+ 1\) / 2"):
        V.from_comfy_image(torch.rand(2, 4, 4, 3) * 2 - 1)
    with pytest.raises(InputError, match="dtype"):
        V.from_comfy_image(torch.ones(2, 4, 4, 3, dtype=torch.int64))
    with pytest.raises(InputError, match="NaN"):
        V.from_comfy_image(torch.full((1, 4, 4, 3), float("nan")))
    with pytest.raises(InputError, match="channels"):
        V.from_comfy_image(torch.rand(2, 4, 4, 2))
    with pytest.raises(InputError, match="empty"):
        V.from_comfy_image(torch.rand(0, 4, 4, 3))
    with pytest.raises(InputError, match=r"\[B,H,W,C\]"):
        V.from_comfy_image(torch.rand(1, 2, 4, 4, 3))
    with pytest.raises(InputError, match="torch.Tensor or numpy"):
        V.from_comfy_image([[0.0]])


def test_to_uint8() -> None:
    x = torch.tensor([0.0, 0.5, 1.0, 1.2, -0.1, 0.2])
    assert V.to_uint8(x).tolist() == [0, 128, 255, 255, 0, 51]
    u = torch.tensor([3, 200], dtype=torch.uint8)
    assert V.to_uint8(u) is u


# --------------------------------------------------------------------------------------------------
# Writing


def test_default_encoder_and_explicit_codecs(tmp_path: Path) -> None:
    encoders = V.available_encoders()
    assert encoders, "the bundled ffmpeg must have at least one of libx264/libopenh264/mpeg4"
    ref = V.moving_square_frames(6)
    for codec in sorted({encoders[0], *(c for c in ("mpeg4",) if c in encoders)}):
        out = V.write_video(tmp_path / f"{codec}.mp4", ref, 8, codec=codec)
        clip = V.load_video(out, backend="av")
        assert clip.frames.shape == ref.shape
        assert float((clip.frames - ref).abs().mean()) < 0.02
    with pytest.raises(InputError, match="not available"):
        V.write_video(tmp_path / "x.mp4", ref, 8, codec="no-such-codec")
    with pytest.raises(InputError, match="unsupported suffix"):
        V.write_video(tmp_path / "x.avi2", ref, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{c}.mp4" for c in {encoders[0], "mpeg4"} & set(encoders))


@pytest.mark.parametrize(("fps", "expected"), [(7.5, 7.5), (24000 / 1001, 24000 / 1001), (12, 12.0)])
def test_write_fps(tmp_path: Path, fps: float, expected: float) -> None:
    out = V.write_video(tmp_path / "f.mp4", torch.rand(3, 16, 16, 3), fps)
    assert V.probe_video(out, backend="av").fps == pytest.approx(expected, rel=1e-6)
    assert Fraction(fps).limit_denominator(1001) == Fraction(expected).limit_denominator(1001)


def test_write_odd_size_pads_by_one_pixel(tmp_path: Path) -> None:
    ref = V.moving_square_frames(4, width=63, height=45, start=(40, 20))
    out = V.write_video(tmp_path / "odd.mp4", ref, 8)
    clip = V.load_video(out)
    assert clip.frames.shape == (4, 46, 64, 3)
    assert float((clip.frames[:, :45, :63] - ref).abs().mean()) < 0.01
    # The padding repeats the last column/row.
    assert float((clip.frames[:, :45, 63] - clip.frames[:, :45, 62]).abs().max()) < 0.1


def test_write_from_iterable_and_uint8(tmp_path: Path) -> None:
    ref = V.moving_square_frames(5)
    out = V.write_video(tmp_path / "it.mkv", (V.to_uint8(f).numpy() for f in ref), 8)
    clip = V.load_video(out)
    assert clip.num_frames == 5 and float((clip.frames - ref).abs().mean()) < 0.01


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_bad_frame_mid_stream(tmp_path: Path) -> None:
    good = V.moving_square_frames(3)

    def frames():
        yield from good
        yield torch.rand(32, 32, 3)  # wrong size, after 3 frames were encoded

    target = tmp_path / "out.mp4"
    with pytest.raises(InputError, match="frame 3 is 32x32 but the video is 64x64"):
        V.write_video(target, frames(), 8)
    assert _names(tmp_path) == []  # neither the target nor a temporary file

    # An existing file is kept untouched when a rewrite fails.
    target.write_bytes(b"previous")
    with pytest.raises(InputError):
        V.write_video(target, frames(), 8)
    assert target.read_bytes() == b"previous" and _names(tmp_path) == ["out.mp4"]


def test_atomic_write_encoder_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_even = V._even

    def failing_even(arr: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] > 6:
            raise RuntimeError("disk full")
        return real_even(arr)

    monkeypatch.setattr(V, "_even", failing_even)
    with pytest.raises(RuntimeError, match="disk full"):
        V.write_video(tmp_path / "out.mp4", V.moving_square_frames(8), 8)
    assert calls["n"] > 6  # it failed mid-write, after the container was opened and frames encoded
    assert _names(tmp_path) == []


def test_write_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="empty"):
        V.write_video(tmp_path / "e.mp4", torch.rand(0, 8, 8, 3), 8)
    with pytest.raises(InputError, match="empty"):
        V.write_video(tmp_path / "e.mp4", iter([]), 8)
    with pytest.raises(InputError, match=r"\[F,H,W,3\]"):
        V.write_video(tmp_path / "e.mp4", torch.rand(8, 8, 3), 8)
    with pytest.raises(InputError, match=r"0\.\.1"):
        V.write_video(tmp_path / "e.mp4", torch.rand(2, 8, 8, 3) * 255, 8)
    with pytest.raises(InputError, match="fps"):
        V.write_video(tmp_path / "e.mp4", torch.rand(2, 8, 8, 3), 0)
    with pytest.raises(InputError, match="is a folder"):
        V.write_video(tmp_path, torch.rand(2, 8, 8, 3), 8)
    assert _names(tmp_path) == []
    nested = V.write_video(tmp_path / "a" / "b" / "n.mp4", torch.rand(2, 8, 8, 3), 8)
    assert nested.is_file() and _names(nested.parent) == ["n.mp4"]


# --------------------------------------------------------------------------------------------------
# Moving square and motion measurement


def test_moving_square_pixels() -> None:
    f = V.moving_square_frames(3)
    assert f.shape == (3, 64, 64, 3) and f.dtype == torch.float32
    col, bg = torch.tensor(COLOR), torch.full((3,), 0.1)
    assert torch.equal(f[0, 24, 8], col) and torch.equal(f[0, 39, 23], col)
    assert torch.equal(f[0, 24, 7], bg) and torch.equal(f[0, 40, 8], bg) and torch.equal(f[0, 24, 24], bg)
    assert torch.equal(f[2, 24, 12], col) and torch.equal(f[2, 24, 11], bg)  # moved 2 px per frame
    assert int((f[0] == col).all(-1).sum()) == 16 * 16
    half = V.moving_square_frames(1, start=(8.5, 24))
    assert torch.allclose(half[0, 30, 8], bg + 0.5 * (col - bg))  # fractional edge coverage
    wrapped = V.moving_square_frames(1, start=(56, 24))  # runs 8 px past the right edge
    assert torch.equal(wrapped[0, 30, 63], col) and torch.equal(wrapped[0, 30, 0], col)
    assert torch.equal(wrapped[0, 30, 8], bg)
    with pytest.raises(InputError):
        V.moving_square_frames(square=100)


def test_centroid_exact_on_synthetic() -> None:
    f = V.moving_square_frames(16, velocity=(1.5, -0.75))
    c = V.square_centroid(f)
    t = torch.arange(16, dtype=torch.float32)
    expected = torch.stack([15.5 + 1.5 * t, 31.5 - 0.75 * t], dim=-1)
    assert torch.allclose(c, expected, atol=1e-3)
    assert torch.allclose(V.mean_velocity(f), torch.tensor([1.5, -0.75]), atol=1e-3)
    assert torch.allclose(V.mean_velocity(f, color=None), torch.tensor([1.5, -0.75]), atol=0.1)
    # Across the wrap (default 24 frames leave the right edge from frame 21 on).
    assert torch.allclose(V.mean_velocity(V.moving_square_frames(40)), torch.tensor([2.0, 0.0]), atol=1e-3)


def test_centroid_nan_when_absent() -> None:
    f = torch.cat([V.moving_square_frames(2), torch.full((1, 64, 64, 3), 0.1)])
    c = V.square_centroid(f)
    assert torch.isfinite(c[:2]).all() and torch.isnan(c[2]).all()
    assert torch.allclose(V.mean_velocity(f), torch.tensor([2.0, 0.0]), atol=1e-3)
    with pytest.raises(InputError, match="not found"):
        V.mean_velocity(torch.full((3, 8, 8, 3), 0.1))


def test_velocity_recovered_from_decoded_mp4(square_mp4: Path, square24fps_mp4: Path) -> None:
    for backend in BACKENDS:
        clip = V.load_video(square_mp4, backend=backend)  # includes the wrap-around frames
        assert torch.allclose(V.mean_velocity(clip.frames), torch.tensor([2.0, 0.0]), atol=0.05)
    # Stride 3 (fps 8 from 24): three source steps per frame.
    strided = V.load_video(square24fps_mp4, fps=8)
    assert torch.allclose(V.mean_velocity(strided.frames), torch.tensor([3.0, 0.0]), atol=0.05)
    diag = V.write_moving_square_video(square_mp4.parent / "diag.mp4", num_frames=12, velocity=(1.25, 1.5), start=(4, 4))
    v = V.mean_velocity(V.load_video(diag).frames)
    assert torch.allclose(v, torch.tensor([1.25, 1.5]), atol=0.1)


@pytest.mark.skipif("decord" not in BACKENDS, reason="needs decord")
def test_auto_falls_back_to_av_when_decord_cannot_open(tmp_path: Path) -> None:
    from PIL import Image

    frames = [Image.fromarray(f) for f in V.to_uint8(V.moving_square_frames(6)).numpy()]
    gif = tmp_path / "square.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=125, loop=0)
    with pytest.raises(VideoError, match=r"decord: .*metadata") as err:
        V.load_video(gif, backend="decord")
    assert "video_reader.cc" not in str(err.value)  # decord's source location is trimmed
    clip = V.load_video(gif)  # decord cannot read GIF; auto retries with PyAV
    assert clip.backend == "av" and clip.num_frames == 6
    assert torch.allclose(V.mean_velocity(clip.frames), torch.tensor([2.0, 0.0]), atol=0.05)


@pytest.mark.skipif("decord" not in V.available_backends(), reason="needs decord to show the fallback")
def test_auto_backend_falls_back_when_decord_fails_while_decoding(tmp_path):
    # decord 0.6 opens this 48x64 (portrait) clip but fails copying its frames; "auto" must use PyAV.
    path = V.write_video(tmp_path / "portrait.mp4", V.moving_square_frames(8, width=48, height=64), 8)
    with pytest.raises(VideoError, match="decord"):
        V.load_video(path, backend="decord")
    clip = V.load_video(path)
    assert clip.frames.shape == (8, 64, 48, 3) and clip.backend == "av"
