"""Evaluation: motion fidelity validated on synthetic clips of known motion (orderings, symmetry, top of range),
CLIP scores against their formulas on a tiny random CLIP, bad input, the nodes, the CLI and training's
checkpoint scores / best checkpoint."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

pytest.importorskip("cv2", reason="the metrics extra (opencv-python-headless) is needed")

from motion_core.errors import InputError, ModelLoadError  # noqa: E402
from motion_core.metrics import evaluate_motion, load_clip_scorer, motion_fidelity, track_points  # noqa: E402
from motion_core.metrics.fidelity import step_similarity  # noqa: E402
from motion_core.metrics.synthetic import moving_square, static_clip, textured_pan, textured_zoom  # noqa: E402
from motion_core.metrics.tiny_clip import build_tiny_clip  # noqa: E402


def fidelity(a: torch.Tensor, b: torch.Tensor) -> float:
    return motion_fidelity(track_points(a), track_points(b)).score


@pytest.fixture(scope="module")
def tiny_clip_path(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def clip(tiny_clip_path):
    return load_clip_scorer(tiny_clip_path)


# ------------------------------------------------------------------------------------- motion fidelity
CLIPS = {
    "square": lambda v: moving_square(16, 64, v),
    "pan": lambda v: textured_pan(16, 64, v),
}


@pytest.mark.parametrize("kind", sorted(CLIPS))
@pytest.mark.parametrize("velocity", [(1.5, 0.0), (0.0, -1.0), (1.0, 1.0)])
def test_fidelity_ranks_same_over_speed_over_opposite_over_static(kind, velocity):
    make = CLIPS[kind]
    ref = make(velocity)
    vx, vy = velocity
    same = fidelity(ref, make(velocity))
    faster = fidelity(ref, make((2 * vx, 2 * vy)))
    slower = fidelity(ref, make((vx / 2, vy / 2)))
    opposite = fidelity(ref, make((-vx, -vy)))
    still = fidelity(ref, make((0.0, 0.0)))
    assert same == pytest.approx(1.0, abs=1e-6)  # identical clips: the top of the range
    assert same > faster > opposite > still
    assert same > slower > opposite
    assert 0.0 <= still < 0.05


def test_fidelity_is_symmetric_and_bounded():
    clips = [moving_square(16, 64, (1.5, 0)), textured_pan(16, 64, (2, 1)), textured_pan(16, 64, (-1, 0), seed=2),
             textured_zoom(16, 64, 0.03)]
    for a in clips:
        for b in clips:
            ab, ba = fidelity(a, b), fidelity(b, a)
            assert ab == pytest.approx(ba, abs=1e-6)
            assert 0.0 <= ab <= 1.0 + 1e-9


def test_fidelity_on_zoom():
    ref = textured_zoom(16, 64, 0.03)
    same = fidelity(ref, textured_zoom(16, 64, 0.03))
    other_speed = fidelity(ref, textured_zoom(16, 64, 0.06))
    pan = fidelity(ref, textured_pan(16, 64, (1.5, 0)))
    still = fidelity(ref, static_clip())
    assert same == pytest.approx(1.0, abs=1e-6)
    assert same > other_speed > pan > still


def test_fidelity_follows_motion_not_appearance():
    """A different texture with the same pan scores far above the same texture with another motion."""
    ref = textured_pan(16, 64, (1.5, 0), seed=0)
    other_look_same_motion = fidelity(ref, textured_pan(16, 64, (1.5, 0), seed=5))
    same_look_other_motion = fidelity(ref, textured_pan(16, 64, (0, 1.5), seed=0))
    assert other_look_same_motion > 0.95 > same_look_other_motion


def test_step_similarity_properties():
    a = torch.tensor([[0.01, 0.0]])
    assert float(step_similarity(a, a)) == pytest.approx(1.0)
    assert float(step_similarity(a, 2 * a)) == pytest.approx(0.8, abs=0.01)
    assert float(step_similarity(a, -a)) == pytest.approx(0.1, abs=0.01)
    assert float(step_similarity(a, torch.zeros(1, 2))) < 0.02
    assert float(step_similarity(torch.zeros(1, 2), torch.zeros(1, 2))) == pytest.approx(1.0)


def test_tracks_follow_the_known_motion():
    tracks = track_points(textured_pan(16, 64, (1.5, -0.5)))
    assert tracks.count > 10
    step = (tracks.points[:, 1:] - tracks.points[:, :-1]).mean(dim=(0, 1))
    assert step.tolist() == pytest.approx([1.5, -0.5], abs=0.1)


# ------------------------------------------------------------------------------------- alignment and bad input
def test_lengths_and_sizes_are_aligned_and_said():
    ref = textured_pan(16, 64, (1.5, 0))
    longer = textured_pan(24, 96, (1.5 * 96 / 64 * 15 / 23, 0))  # the same motion over the same time, larger
    ev = evaluate_motion(ref, longer)
    assert ev.frames == {"reference": 16, "generated": 24, "compared": 16}
    assert any("resampled to 16" in n for n in ev.notes) and any("sizes differ" in n for n in ev.notes)
    # evenly spaced picks of 24 frames are 1 or 2 frames apart: close to, not exactly, the same motion
    assert ev.motion_fidelity > 0.9 > evaluate_motion(ref, textured_pan(24, 96, (-1.5, 0))).motion_fidelity
    trimmed = evaluate_motion(ref, textured_pan(24, 64, (1.5, 0)), length="trim")
    assert any("trimmed" in n for n in trimmed.notes) and trimmed.motion_fidelity > 0.99
    with pytest.raises(InputError, match="16 frames and the generated video 24.*resample"):
        evaluate_motion(ref, textured_pan(24, 64, (1.5, 0)), length="refuse")
    with pytest.raises(InputError, match="64x64 and the generated video 96x96"):
        evaluate_motion(ref, textured_pan(16, 96, (1.5, 0)), length="refuse")


def test_one_reference_is_tracked_once_for_many_videos(clip, monkeypatch):
    """ReferenceMemo (checkpoint previews, Compare Motion, the CLI's several videos): the reference's tracks and
    CLIP features are computed once per alignment, the scores are those of separate evaluations."""
    from motion_core.metrics import ReferenceMemo
    from motion_core.metrics import evaluate as evaluate_module

    ref = textured_pan(16, 64, (1.5, 0))
    videos = [textured_pan(16, 64, (1.5, 0), seed=1), textured_pan(16, 64, (-1.5, 0), seed=2),
              textured_pan(24, 64, (1.5, 0), seed=3)]
    alone = [evaluate_motion(ref, v, prompt="a pan", clip=clip) for v in videos]
    calls = {"tracks": 0, "features": 0}
    track = evaluate_module.track_points
    features = type(clip).image_features

    def counted_tracks(frames, **kwargs):
        calls["tracks"] += kwargs.get("what") == "reference video"
        return track(frames, **kwargs)

    def counted_features(self, frames):
        calls["features"] += 1
        return features(self, frames)

    monkeypatch.setattr(evaluate_module, "track_points", counted_tracks)
    monkeypatch.setattr(type(clip), "image_features", counted_features)
    memo = ReferenceMemo()
    shared = [evaluate_motion(ref, v, prompt="a pan", clip=clip, memo=memo) for v in videos]
    # two alignments: 16 generated frames (twice) and 24; the generated videos' features are computed each time
    assert calls == {"tracks": 2, "features": 2 + len(videos)}
    for a, b in zip(alone, shared):
        assert a.scores() == b.scores()
    evaluate_motion(textured_pan(16, 64, (0, 1.5)), videos[0], memo=memo)  # another reference: tracked anew
    assert calls["tracks"] == 3


def test_bad_clips_are_refused_clearly():
    ref = textured_pan(16, 64, (1.5, 0))
    with pytest.raises(InputError, match="2 frame.*at least 3"):
        evaluate_motion(ref[:2], ref)
    with pytest.raises(InputError, match="generated video has 1 frame"):
        evaluate_motion(ref, ref[:1])
    with pytest.raises(InputError, match="too static.*moves 0.0"):
        evaluate_motion(static_clip(), ref)
    with pytest.raises(InputError, match="too static.*no point could be tracked"):
        evaluate_motion(torch.full((16, 64, 64, 3), 0.3), ref)
    flat = evaluate_motion(ref, torch.full((16, 64, 64, 3), 0.3))  # a flat output: no motion, not an error
    assert flat.motion_fidelity == 0.0 and any("flat frames" in n for n in flat.notes)


def test_missing_opencv_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ModelLoadError, match=r"metrics\]"):
        track_points(textured_pan(8, 64, (1, 0)))


# ------------------------------------------------------------------------------------- CLIP
def test_clip_scores_match_their_formulas(clip, tiny_clip_path):
    from transformers import CLIPModel

    video = textured_pan(8, 64, (2, 0))
    ev = evaluate_motion(video, textured_pan(8, 64, (2, 0), seed=3), prompt="a red square", clip=clip)
    gen = ev.generated_frames
    model = CLIPModel.from_pretrained(str(tiny_clip_path))
    pixels = clip._preprocess(gen)
    with torch.no_grad():
        image = clip._features(model.get_image_features(pixel_values=pixels))
        ids = clip.tokenizer(["a red square"], padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt")
        text = clip._features(model.get_text_features(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]))
    cos = torch.nn.functional.cosine_similarity
    assert ev.text_alignment == pytest.approx(float(cos(image, text).mean()), abs=1e-5)
    assert ev.temporal_consistency == pytest.approx(float(cos(image[1:], image[:-1]).mean()), abs=1e-5)
    assert len(clip.tokenizer) > 500  # the tiny tokenizer really loaded (transformers 5 can degrade silently)


def test_appearance_leakage_is_higher_for_a_copy(clip):
    ref = textured_pan(8, 64, (2, 0), seed=0)
    copy = evaluate_motion(ref, textured_pan(8, 64, (2, 0), seed=0), clip=clip)
    other = evaluate_motion(ref, moving_square(8, 64, (2, 0)), clip=clip)
    assert copy.appearance_leakage == pytest.approx(1.0, abs=1e-4)
    assert other.appearance_leakage < copy.appearance_leakage


def test_a_folder_that_is_not_clip_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_clip_scorer(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ModelLoadError, match="model_type 't5'.*CLIPModel"):
        load_clip_scorer(tmp_path)
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_clip_scorer(tmp_path / "missing" / "clip")


# ------------------------------------------------------------------------------------- CoTracker (plumbing)
def test_cotracker_loads_weights_only_and_tracks_a_grid(tmp_path, monkeypatch):
    calls = {}

    class FakePredictor(torch.nn.Module):
        def __init__(self, checkpoint=None, offline=True, window_len=60):
            super().__init__()
            calls["init"] = {"checkpoint": checkpoint, "offline": offline}
            self.model = torch.nn.Linear(2, 2)

        def forward(self, video, grid_size=10):
            calls["grid"] = grid_size
            t = video.shape[1]
            base = torch.stack(torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="xy"), -1)
            base = base.reshape(-1, 2).float() * 4 + 4
            steps = torch.arange(t).float()[:, None, None] * torch.tensor([1.0, 0.0])
            tracks = (base[None] + steps)[None]  # [1, T, N, 2]
            return tracks, torch.ones(1, t, base.shape[0], dtype=torch.bool)

    package = types.ModuleType("cotracker")
    predictor = types.ModuleType("cotracker.predictor")
    predictor.CoTrackerPredictor = FakePredictor
    monkeypatch.setitem(sys.modules, "cotracker", package)
    monkeypatch.setitem(sys.modules, "cotracker.predictor", predictor)
    weights = tmp_path / "scaled_offline.pth"
    torch.save(torch.nn.Linear(2, 2).state_dict(), weights)
    tracks = track_points(textured_pan(8, 64, (1, 0)), tracker="cotracker", cotracker_checkpoint=weights, grid_size=5)
    assert calls["init"] == {"checkpoint": None, "offline": True} and calls["grid"] == 5
    assert tracks.count == 25 and tracks.tracker == "cotracker"

    class Evil:
        def __reduce__(self):
            return (print, ("pickle code ran",))

    bad = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(ModelLoadError, match="cannot be read as plain weights"):
        track_points(textured_pan(8, 64, (1, 0)), tracker="cotracker", cotracker_checkpoint=bad)
    with pytest.raises(InputError, match="never downloaded"):
        track_points(textured_pan(8, 64, (1, 0)), tracker="cotracker")
