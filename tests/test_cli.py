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


def _comfy_models_tree(root, files: dict) -> dict:
    """Place files as they sit in ComfyUI/models: {role: path} -> {role: path in the tree}."""
    folders = {"diffusion_model": "diffusion_models", "low_noise_model": "diffusion_models",
               "text_encoder": "text_encoders", "vae": "vae", "checkpoint": "checkpoints",
               "motion_module": "animatediff_models"}
    placed = {}
    for role, path in files.items():
        target = root / "models" / folders[role] / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path)
        placed[role] = target
    return placed


def test_sample_from_comfyui_wan_files_finds_the_umt5_and_vae_beside_them(tmp_path, capsys):
    """--model names only the diffusion model file; --text-encoder / --vae 'auto' find the fitting files in
    models/text_encoders and models/vae, as a ComfyUI user keeps them (the umt5 in the scaled-fp8 form)."""
    from motion_core.tiny_wan import save_comfy_wan_files

    files = save_comfy_wan_files(tmp_path / "built", seed=0)
    files["text_encoder"] = save_comfy_wan_files(tmp_path / "built_fp8", seed=0, fp8="scaled")["text_encoder"]
    placed = _comfy_models_tree(tmp_path, files)
    out = tmp_path / "wan.mp4"
    assert main(["sample", "--model", str(placed["diffusion_model"]), "--steps", "1", "--frames", "5",
                 "--width", "32", "--height", "32", "--dtype", "fp32", "--out", str(out)]) == 0
    assert "SMOKE TEST" not in capsys.readouterr().err
    assert load_video(out).frames.shape == (5, 32, 32, 3)
    # the same files named explicitly; a VAE of the wrong family is named in the error
    assert main(["sample", "--model", str(placed["diffusion_model"]), "--text-encoder", str(placed["text_encoder"]),
                 "--vae", str(placed["diffusion_model"]), "--steps", "1", "--out", str(tmp_path / "x.mp4")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and placed["diffusion_model"].name in err and "Traceback" not in err


def test_sample_from_an_sd15_checkpoint_and_a_motion_module_file(tmp_path, capsys):
    """AnimateDiff from ComfyUI's files: --model the SD1.5 checkpoint, --motion-adapter the motion module file,
    --tokenizer the CLIP tokenizer folder (an SD1.5 checkpoint carries none; outside ComfyUI it must be given)."""
    from motion_core.tiny import write_tiny_sd15_files

    files = write_tiny_sd15_files(tmp_path / "built", seed=0, version="v3", suffix=".ckpt")
    placed = _comfy_models_tree(tmp_path, {"checkpoint": files.checkpoint, "motion_module": files.motion_module})
    out = tmp_path / "ad.mp4"
    assert main(["sample", "--model", str(placed["checkpoint"]), "--motion-adapter", str(placed["motion_module"]),
                 "--tokenizer", str(files.tokenizer), "--steps", "1", "--frames", "4", "--width", "32",
                 "--height", "32", "--out", str(out)]) == 0
    assert load_video(out).frames.shape == (4, 32, 32, 3)
    capsys.readouterr()
    assert main(["sample", "--model", str(placed["checkpoint"]), "--steps", "1", "--out", str(tmp_path / "y.mp4")]) == 1
    assert "motion" in capsys.readouterr().err  # an image model needs a motion module: said, not a traceback
