"""``python -m motion_core``: the headless path, on the built-in tiny model and on a given folder."""

from __future__ import annotations

import pytest

from motion_core.cli import build_parser, main
from motion_core.video import load_video


def test_sample_without_model_is_a_labelled_smoke_test(tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    assert main(["sample", "--steps", "2", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "SMOKE TEST" in captured.err and "--model" in captured.err
    assert "smoke test" in captured.out and str(out) in captured.out
    clip = load_video(out)
    assert clip.frames.shape == (8, 64, 64, 3)  # the smoke-test defaults


def test_sample_with_a_model_folder_and_yaml_config(tmp_path, tiny_unet3d_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("steps: 2\nframes: 4\nwidth: 32\nheight: 48\nseed: 7\n")
    out = tmp_path / "videos" / "x.mp4"
    args = ["sample", "--config", str(config), "--model", str(tiny_unet3d_path), "--prompt", "a",
            "--prompt", "b", "--height", "32", "--out", str(out)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "SMOKE TEST" not in captured.err
    for i in range(2):  # two prompts -> two files; the command line wins over the YAML (height 32)
        assert load_video(tmp_path / "videos" / f"x_{i}.mp4").frames.shape == (4, 32, 32, 3)


def test_errors_are_reported_without_traceback(tmp_path, capsys):
    assert main(["sample", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c.mp4")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
    assert not (tmp_path / "c.mp4").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("no_such_option: 1\n")
    assert main(["sample", "--config", str(bad)]) == 1
    assert "unknown option 'no_such_option'" in capsys.readouterr().err


def test_help_explains_every_option(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["sample", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model", "--prompt", "--negative-prompt", "--steps", "--cfg", "--seed", "--width",
                   "--height", "--frames", "--scheduler", "--dtype", "--device", "--out"):
        assert option in text
    for action in parser._subparsers._group_actions[0].choices["sample"]._actions:
        assert action.help, f"{action.option_strings} has no help text"
