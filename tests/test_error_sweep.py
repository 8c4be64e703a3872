"""One rule, swept over every surface: an exception that reaches a user from the CLI or a node is a MotionKit
error whose message says what was wrong (and the CLI prints it without a traceback) -- anything else is a
bug. And a refused run leaves no file behind in the output, adapters or run folders.

Each case is one bad input a user can make; the test asserts the error type, a few words of the message,
and that the folders a run writes into hold nothing new afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from executor import Executor, NodeExecutionError, PromptError, isolate_host
from motion_core.errors import MotionKitError


# ------------------------------------------------------------------------------------------ bad files
def _write_bad_files(root: Path) -> dict[str, Path]:
    """Files a user may hand MotionKit by mistake."""
    from safetensors.torch import save_file

    from motion_core.video import write_moving_square_video

    root.mkdir(parents=True, exist_ok=True)
    files = {
        "missing.mp4": root / "missing.mp4",
        "corrupt.mp4": root / "corrupt.mp4",
        "short.mp4": root / "short.mp4",
        "truncated.safetensors": root / "truncated.safetensors",
        "foreign.safetensors": root / "foreign.safetensors",
        "random.safetensors": root / "random.safetensors",
        "broken.yaml": root / "broken.yaml",
        "code.pt": root / "code.pt",
    }
    files["corrupt.mp4"].write_bytes(os.urandom(4096))
    write_moving_square_video(files["short.mp4"], num_frames=2, fps=8, width=32, height=32, square=8)
    save_file({"a": torch.zeros(64, 64)}, str(files["foreign.safetensors"]))  # another tool's file
    data = files["foreign.safetensors"].read_bytes()
    files["truncated.safetensors"].write_bytes(data[: len(data) // 2])
    files["random.safetensors"].write_bytes(os.urandom(2048))
    files["broken.yaml"].write_text("steps: [1, 2\nprompt: 'unclosed\n")
    files["code.pt"].write_bytes(_pickle_that_runs_code())
    return files


def _pickle_that_runs_code() -> bytes:
    """A torch-style pickle whose unpickling would call os.system (never executed: weights_only refuses)."""
    import io
    import pickle  # noqa: S403 - writing a hostile file for the test, never loading one

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo MOTIONKIT-PICKLE-RAN > /dev/null",))

    buffer = io.BytesIO()
    torch.save({"lora": Payload()}, buffer)
    return buffer.getvalue()


def _snapshot(*folders: Path) -> set[Path]:
    return {p for folder in folders if folder.exists() for p in folder.rglob("*")}


# ------------------------------------------------------------------------------------------ CLI
CLI_CASES = [
    # (id, argv with {placeholders}, words expected in the message)
    ("train-missing-video", ["train", "--video", "{missing.mp4}", "--save-name", "x"], ["missing.mp4"]),
    ("train-corrupt-video", ["train", "--video", "{corrupt.mp4}", "--save-name", "x"], ["corrupt.mp4"]),
    ("train-short-video", ["train", "--video", "{short.mp4}", "--frames", "8", "--save-name", "x"], ["frames"]),
    ("train-bad-size", ["train", "--width", "33", "--save-name", "x"], ["multiple"]),
    ("train-broken-yaml", ["train", "--config", "{broken.yaml}"], ["broken.yaml"]),
    ("train-missing-yaml", ["train", "--config", "{dir}/nowhere.yaml"], ["nowhere.yaml"]),
    ("train-escaping-name", ["train", "--save-name", "../outside"], ["name"]),
    ("train-reserved-name", ["train", "--save-name", "con"], ["reserved"]),
    ("train-too-long-name", ["train", "--save-name", "n" * 250], ["long"]),
    ("train-resume-nothing", ["train", "--resume", "{dir}/no_run", "--save-name", "x"], ["no_run"]),
    ("train-empty-prompt", ["train", "--prompt", "", "--save-name", "x"], ["prompt"]),
    ("sample-zero-steps", ["sample", "--steps", "0", "--out", "{dir}/o.mp4"], ["steps"]),
    ("sample-missing-adapter", ["sample", "--adapter", "{dir}/none.safetensors", "--out", "{dir}/o.mp4"],
     ["none.safetensors"]),
    ("sample-truncated-adapter", ["sample", "--adapter", "{truncated.safetensors}", "--out", "{dir}/o.mp4"],
     ["truncated.safetensors"]),
    ("sample-random-adapter", ["sample", "--adapter", "{random.safetensors}", "--out", "{dir}/o.mp4"],
     ["random.safetensors"]),
    ("sample-foreign-adapter", ["sample", "--adapter", "{foreign.safetensors}", "--out", "{dir}/o.mp4"],
     ["foreign.safetensors"]),
    ("sample-code-pt", ["sample", "--adapter", "{code.pt}", "--out", "{dir}/o.mp4"], ["code"]),
    ("clone-missing-video", ["clone", "--video", "{missing.mp4}", "--out", "{dir}/o.mp4"], ["missing.mp4"]),
    ("export-foreign", ["export-adapter", "--adapter", "{foreign.safetensors}", "--format", "diffusers",
                        "--out", "{dir}/e.safetensors"], ["foreign.safetensors"]),
]


@pytest.mark.parametrize("case_id, argv, words", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_is_a_clear_error_and_leaves_nothing(case_id, argv, words, tmp_path, monkeypatch, capsys):
    from motion_core.cli import main

    files = _write_bad_files(tmp_path / "files")
    out, adapters, models = tmp_path / "output", tmp_path / "adapters", tmp_path / "models"
    monkeypatch.setenv("MOTIONKIT_OUTPUT_DIR", str(out))
    monkeypatch.setenv("MOTIONKIT_ADAPTERS_DIR", str(adapters))
    monkeypatch.setenv("MOTIONKIT_MODELS_DIR", str(models))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    values = {name: str(path) for name, path in files.items()} | {"dir": str(work)}
    args = []
    for arg in argv:
        for name, value in values.items():
            arg = arg.replace("{" + name + "}", value)
        args.append(arg)
    if args[0] == "train" and "--steps" not in args:
        args += ["--steps", "2"]
    if args[0] == "train" and "--prompt" not in args and "--config" not in args:
        args += ["--prompt", "a square moving right"]
    before = _snapshot(out, adapters, models, work)

    code = main(args)

    err = capsys.readouterr().err
    assert code != 0, f"{case_id}: the bad input was accepted"
    assert err.startswith("error:") or "\nerror:" in err, f"{case_id}: not a MotionKit error: {err[-800:]}"
    assert "Traceback" not in err
    message = err.lower()
    assert all(w.lower() in message for w in words), f"{case_id}: message lacks {words}: {err[-600:]}"
    assert "weights_only=false" not in message.replace(" ", "")
    new = _snapshot(out, adapters, models, work) - before
    assert not [p for p in new if p.is_file()], f"{case_id}: left files behind: {sorted(new)}"


# ------------------------------------------------------------------------------------------ nodes
def _loader(model: str = "tiny_unet3d") -> dict:
    return {"class_type": "MotionKitLoadVideoModel",
            "inputs": {"model": model, "hub_id": "", "family": "auto", "dtype": "fp32", "device": "cpu",
                       "motion_adapter": "none"}}


def _video(name: str, frames: int = 8) -> dict:
    return {"class_type": "MotionKitLoadReferenceVideo",
            "inputs": {"video": name, "frames": frames, "fps": 0.0, "width": 32, "height": 32, "start_frame": 0}}


def _train(video_link: list, **changes) -> dict:
    inputs = {"model": ["1", 0], "video": video_link, "prompt": "a square", "steps": 2, "learning_rate": 5e-4,
              "rank": 4, "frames": 8, "width": 32, "height": 32, "checkpoint_every": 0, "save_name": "sweep",
              "seed": 0, "resume_from": "none", "preview_every": 0, "noise_prior_steps": 0}
    inputs.update(changes)
    return {"class_type": "MotionKitTrainMotionDirector", "inputs": inputs}


def _sampler(**changes) -> dict:
    inputs = {"model": ["1", 0], "prompt": "p", "negative_prompt": "", "seed": 0, "steps": 1, "cfg": 1.0,
              "width": 32, "height": 32, "frames": 4, "scheduler": "ddim", "batch_size": 1}
    inputs.update(changes)
    return {"class_type": "MotionKitSampler", "inputs": inputs}


def _preview(link: list) -> dict:
    return {"class_type": "PreviewImage", "inputs": {"images": link}}


NODE_CASES = [
    ("reference-corrupt", {"2": _video("corrupt.mp4"), "9": _preview(["2", 0])}, ["corrupt.mp4"]),
    ("reference-too-few-frames", {"2": _video("short.mp4", frames=8), "9": _preview(["2", 0])}, ["frames"]),
    ("train-too-few-frames", {"1": _loader(), "2": _video("short.mp4", frames=0), "3": _train(["2", 0]),
                              "9": _preview(["3", 1])}, ["frames"]),
    ("train-bad-size", {"1": _loader(), "2": _video("ok.mp4"), "3": _train(["2", 0], width=34),
                        "9": _preview(["3", 1])}, ["multiple"]),
    ("train-escaping-name", {"1": _loader(), "2": _video("ok.mp4"), "3": _train(["2", 0], save_name="../x"),
                             "9": _preview(["3", 1])}, ["name"]),
    ("train-reserved-name", {"1": _loader(), "2": _video("ok.mp4"), "3": _train(["2", 0], save_name="NUL"),
                             "9": _preview(["3", 1])}, ["reserved"]),
    ("train-too-long-name", {"1": _loader(), "2": _video("ok.mp4"), "3": _train(["2", 0], save_name="n" * 250),
                             "9": _preview(["3", 1])}, ["long"]),
    ("train-resume-outside", {"1": _loader(), "2": _video("ok.mp4"),
                              "3": _train(["2", 0], resume_from="{outside}"), "9": _preview(["3", 1])},
     ["checkpoint"]),
    ("sampler-bad-size", {"1": _loader(), "2": _sampler(width=34), "9": _preview(["2", 0])}, ["multiple"]),
    ("sampler-missing-model", {"1": _loader("nowhere"), "2": _sampler(), "9": _preview(["2", 0])}, ["nowhere"]),
    ("adapter-truncated", {"1": {"class_type": "MotionKitLoadMotionAdapter",
                                 "inputs": {"adapter_name": "truncated.safetensors"}},
                           "9": {"class_type": "MotionKitExportMotionAdapter",
                                 "inputs": {"adapter": ["1", 0], "format": "diffusers", "filename": "e"}}},
     ["truncated.safetensors"]),
    ("adapter-code-pt", {"1": {"class_type": "MotionKitLoadMotionAdapter", "inputs": {"adapter_name": "code.pt"}},
                         "9": {"class_type": "MotionKitExportMotionAdapter",
                               "inputs": {"adapter": ["1", 0], "format": "diffusers", "filename": "e"}}},
     ["code"]),
]


@pytest.mark.parametrize("case_id, prompt, words", NODE_CASES, ids=[c[0] for c in NODE_CASES])
def test_node_bad_input_is_a_clear_error_and_leaves_nothing(case_id, prompt, words, tmp_path, monkeypatch,
                                                             tiny_unet3d_path):
    import json
    import shutil

    from motion_core.video import write_moving_square_video

    dirs = isolate_host(tmp_path / "host", monkeypatch)
    dirs.link_model("tiny_unet3d", tiny_unet3d_path)
    files = _write_bad_files(tmp_path / "files")
    for name in ("corrupt.mp4", "short.mp4"):
        shutil.copy(files[name], dirs.input / name)
    write_moving_square_video(dirs.input / "ok.mp4", num_frames=8, fps=8, width=32, height=32, square=8)
    dirs.motion_adapters.mkdir(parents=True, exist_ok=True)
    for name in ("truncated.safetensors", "code.pt"):
        shutil.copy(files[name], dirs.motion_adapters / name)
    outside = tmp_path / "elsewhere" / "checkpoint-000001"
    outside.mkdir(parents=True)
    (outside / "trainer_state.json").write_text("{}")
    prompt = json.loads(json.dumps(prompt).replace("{outside}", str(outside)))
    before = _snapshot(dirs.output, dirs.motion_adapters, dirs.temp)

    with pytest.raises((PromptError, NodeExecutionError)) as info:
        Executor().run(prompt)

    if isinstance(info.value, NodeExecutionError):
        original = info.value.original
        assert isinstance(original, MotionKitError), f"{case_id}: {type(original).__name__}: {original}"
        message = str(original)
    else:  # refused when queued, as the host would: the best place
        message = " ".join(info.value.errors)
    assert all(w.lower() in message.lower() for w in words), f"{case_id}: message lacks {words}: {message}"
    assert "weights_only=false" not in message.lower().replace(" ", "")
    new = _snapshot(dirs.output, dirs.motion_adapters, dirs.temp) - before
    assert not [p for p in new if p.is_file()], f"{case_id}: left files behind: {sorted(new)}"


# ------------------------------------------------------------------------------------------ the rest is a bug
def test_an_unexpected_exception_in_the_cli_is_reported_as_a_bug(monkeypatch, capsys):
    """Anything that is not a MotionKit error is not passed off as a message about the user's input."""
    from motion_core import cli

    def broken(args):
        raise ZeroDivisionError("a deliberate bug")

    parser = cli.build_parser()
    sample_parser = parser._subparsers._group_actions[0].choices["sample"]
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    sample_parser.set_defaults(run=broken)
    assert cli.main(["sample"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "bug in MotionKit" in err and "ZeroDivisionError" in err


def test_checkpoint_every_0_means_one_checkpoint_at_the_end(tmp_path, unet3d_model):
    """The documented meaning, also for Python callers of the trainer (the CLI and nodes already pass it)."""
    from motion_core.methods import create_method
    from motion_core.training import TrainingConfig, VideoSource, train
    from motion_core.video import moving_square_frames

    config = TrainingConfig(steps=2, frames=4, width=32, height=32, fps=None, checkpoint_every=0, validate_every=0,
                            final_preview=False, run_dir=str(tmp_path / "run"), write_preview_videos=False)
    frames = moving_square_frames(8, 32, 32, square=8, velocity=(1, 0), start=(4, 12))
    result = train(unet3d_model, create_method("motiondirector", rank=2, noise_prior_steps=0),
                   [VideoSource(frames=frames)], "a square", config)
    assert [p.name for p in sorted((tmp_path / "run").glob("checkpoint-*"))] == ["checkpoint-000002"]
    assert result.checkpoint is not None and result.checkpoint.name == "checkpoint-000002"
