"""Evaluation through the nodes (stand-in executor, under inference mode), the CLI, and training's checkpoint
scores with the best checkpoint kept."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("cv2", reason="the metrics extra (opencv-python-headless) is needed")

from executor import Executor, isolate_host  # noqa: E402
from motion_core.metrics.synthetic import moving_square, textured_pan  # noqa: E402
from motion_core.metrics.tiny_clip import build_tiny_clip  # noqa: E402


class _Frames:
    """A node that outputs fixed frames (stands in for a sampler)."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "test"
    CLIPS: dict = {}

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"which": ("STRING", {"default": "ref"})}}

    def run(self, which):
        return (self.CLIPS[which],)


def test_evaluate_and_compare_nodes(tmp_path, monkeypatch):
    from nodes import NODE_CLASS_MAPPINGS

    dirs = isolate_host(tmp_path, monkeypatch)
    build_tiny_clip(dirs.models / "clip" / "tiny-clip")
    _Frames.CLIPS = {"ref": textured_pan(12, 64, (1.5, 0)), "same": textured_pan(12, 64, (1.5, 0), seed=3),
                     "back": textured_pan(12, 64, (-1.5, 0)), "square": moving_square(12, 64, (1.5, 0))}
    from nodes.nodes_evaluate import list_clip_models

    assert list_clip_models() == ["tiny-clip"]
    prompt = {
        "1": {"class_type": "Frames", "inputs": {"which": "ref"}},
        "2": {"class_type": "Frames", "inputs": {"which": "same"}},
        "3": {"class_type": "Frames", "inputs": {"which": "back"}},
        "4": {"class_type": "MotionKitLoadCLIPScorer", "inputs": {"clip_name": "tiny-clip"}},
        "5": {"class_type": "MotionKitEvaluateMotion", "inputs": {
            "reference": ["1", 0], "generated": ["2", 0], "tracker": "lucas_kanade", "length_mismatch": "resample",
            "prompt": "a pan", "clip": ["4", 0]}},
        "6": {"class_type": "MotionKitCompareMotion", "inputs": {
            "reference": ["1", 0], "labels": "backwards\nsame motion", "tracker": "lucas_kanade",
            "length_mismatch": "resample", "generated_1": ["3", 0], "generated_2": ["2", 0], "clip": ["4", 0]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["5", 1]}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    result = Executor({**NODE_CLASS_MAPPINGS, "Frames": _Frames}).run(prompt)
    scores = json.loads(result.outputs["5"][0])
    assert scores["motion_fidelity"] > 0.95 and scores["text_alignment"] is not None
    assert scores["appearance_leakage"] is not None and scores["clip_model"] == "tiny-clip"
    report = result.outputs["5"][1]
    assert report.ndim == 4 and report.shape[0] == 1 and report.shape[-1] == 3
    ranked = json.loads(result.outputs["6"][1])
    assert [r["label"] for r in ranked] == ["same motion", "backwards"]
    assert ranked[0]["motion_fidelity"] > ranked[1]["motion_fidelity"]


def test_clip_loader_refuses_a_folder_that_is_not_clip(tmp_path, monkeypatch):
    from motion_core.errors import ModelLoadError
    from nodes.nodes_evaluate import MotionKitLoadCLIPScorer

    dirs = isolate_host(tmp_path, monkeypatch)
    assert "no CLIP model folder" in MotionKitLoadCLIPScorer.VALIDATE_INPUTS(clip_name="(no CLIP model folders found)")
    bad = dirs.models / "clip" / "t5"
    bad.mkdir(parents=True)
    (bad / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ModelLoadError, match="not a CLIP model"):
        MotionKitLoadCLIPScorer().load("(no CLIP model folders found)", hub_id=str(bad))


def test_cli_evaluate_writes_json_and_png(tmp_path):
    from motion_core.cli import main
    from motion_core.video import write_video

    write_video(tmp_path / "ref.mp4", textured_pan(16, 64, (2, 0)), 8)
    write_video(tmp_path / "out.mp4", textured_pan(16, 64, (1, 0), seed=2), 8)
    clip = build_tiny_clip(tmp_path / "clip")
    code = main(["evaluate", "--reference", str(tmp_path / "ref.mp4"), "--video", str(tmp_path / "out.mp4"),
                 "--prompt", "a pan", "--clip", str(clip), "--out", str(tmp_path / "report")])
    assert code == 0
    data = json.loads((tmp_path / "report.json").read_text())
    assert 0.6 < data["motion_fidelity"] < 0.95  # half the speed
    assert data["text_alignment"] is not None and (tmp_path / "report.png").stat().st_size > 1000
    assert main(["evaluate", "--reference", str(tmp_path / "missing.mp4"), "--video", str(tmp_path / "out.mp4")]) == 1


def test_training_scores_checkpoints_and_keeps_the_best(unet3d_model, tmp_path):
    from safetensors import safe_open

    from motion_core.methods import create_method
    from motion_core.training import TrainingConfig, train

    clip = build_tiny_clip(tmp_path / "clip")
    frames = moving_square(8, 32, (1.5, 0), square=8)
    config = TrainingConfig(steps=4, frames=8, width=32, height=32, checkpoint_every=2, run_dir=str(tmp_path / "run"),
                            save_name="scored", adapters_dir=str(tmp_path / "adapters"), select_best=True,
                            score_clip=str(clip))
    config.preview.steps = 2
    result = train(unet3d_model, create_method("motiondirector", rank=2, noise_prior_steps=0), [frames],
                   "a square moving right", config)
    scored = [h for h in result.history if "motion_fidelity" in h]
    assert [h["step"] for h in scored] == [2, 4] and all("text_alignment" in h for h in scored)
    assert result.best_step in (2, 4) and result.best_adapter_path.name == "scored_best.safetensors"
    with safe_open(str(result.best_adapter_path), "pt") as f:
        meta = f.metadata()
    best = json.loads(meta["training_config"])["best_checkpoint"]
    assert int(meta["steps"]) == best["step"] == result.best_step and "earlier step wins" in best["rule"]
    assert (tmp_path / "adapters" / "scored.safetensors").is_file()
    curve = result.loss_curve()
    assert curve.shape[2] > 768  # the scores are drawn beside the loss curve
    assert torch.isfinite(curve).all()
