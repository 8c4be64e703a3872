"""Bad input a user can give -- names, paths, files, values -- is refused early, as a MotionKit error whose
message says what was wrong and what to do; nothing silently stands for something else.

Names and paths: save names that cannot be file names on every platform with every suffix a run adds, and
resume points outside the training folder. Files: truncated / random / foreign ``.safetensors``, an adapter for
another layer layout, a pickle that would run code, a broken YAML config. Values: 0 steps / frames, an empty
prompt, ``--checkpoint-every 0``. Run folders: the CLI keeps them in ``output/motionkit_training``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from executor import isolate_host
from motion_core.cli import main
from motion_core.errors import AdapterMismatchError, InputError, MotionKitError
from motion_core.names import MAX_COMPONENT_BYTES, MAX_NAME_BYTES, NAME_PATTERNS, check_file_name
from nodes import NODE_CLASS_MAPPINGS, host
from nodes import training_common as common

TRAIN_NODES = ["MotionKitTrainMotionDirector", "MotionKitTrainMotionEmbeddings", "MotionKitTrainCustomMotion",
               "MotionKitTrainMotionMatcher"]


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    dirs = isolate_host(tmp_path / "host", monkeypatch)
    monkeypatch.setenv("MOTIONKIT_ADAPTERS_DIR", str(tmp_path / "adapters"))
    return dirs


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a command gets as far as building or loading a model: bad input must be refused first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the command loaded a model before refusing its input")

    import motion_core.backbones
    import motion_core.cli
    import motion_core.commands.train  # imported first: it binds load_model_from_args when imported
    import motion_core.tiny

    monkeypatch.setattr(motion_core.cli, "load_model_from_args", refuse)
    monkeypatch.setattr(motion_core.commands.train, "load_model_from_args", refuse)
    monkeypatch.setattr(motion_core.backbones, "load_video_model", refuse)
    monkeypatch.setattr(motion_core.tiny, "ensure_tiny_model", refuse)


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines, f"no 'error:' line in {err[-800:]!r}"
    return lines[-1]


# ============================================================================================ 4. names and paths
def test_the_name_limit_counts_every_suffix_a_run_adds(tmp_path):
    """The longest allowed name (in UTF-8 bytes) makes every file and folder of a run on this file system; one
    byte more is refused."""
    assert MAX_NAME_BYTES == MAX_COMPONENT_BYTES - len("._high_noise.safetensors." + "0" * 32 + ".tmp") == 194
    longest = "é" * (MAX_NAME_BYTES // 2) + "n" * (MAX_NAME_BYTES % 2)  # 2 bytes per é
    assert len(longest.encode("utf-8")) == MAX_NAME_BYTES
    assert check_file_name(longest) == longest
    for pattern in NAME_PATTERNS:
        made = tmp_path / pattern.format(name=longest, uuid=os.urandom(16).hex(), rand8="abcdefgh")
        made.write_bytes(b"")  # would raise 'File name too long' if the limit were wrong
    with pytest.raises(InputError, match=f"too long: {MAX_NAME_BYTES + 1} bytes"):
        check_file_name(longest + "n")
    with pytest.raises(InputError, match="too long"):
        check_file_name("é" * (MAX_NAME_BYTES // 2 + 1))  # few characters, too many bytes


@pytest.mark.parametrize("name", ["n" * 250, "n" * (MAX_NAME_BYTES + 1), "ü" * 120])
def test_a_too_long_save_name_is_refused_when_queued(name):
    for node in TRAIN_NODES:
        problem = NODE_CLASS_MAPPINGS[node].VALIDATE_INPUTS(save_name=name, resume_from="none")
        assert isinstance(problem, str) and "too long" in problem and f"{MAX_NAME_BYTES} bytes" in problem, node
    problem = NODE_CLASS_MAPPINGS["MotionKitExportMotionAdapter"].VALIDATE_INPUTS(filename=name)
    assert isinstance(problem, str) and "too long" in problem
    with pytest.raises(InputError, match="too long"):
        host.safe_filename(name)


@pytest.mark.parametrize("name", ["CON", "con", "Nul", "nul.txt", "NUL.safetensors", "aux.tar.gz", "PRN", "COM1",
                                  "com9", "LPT1", "lpt9.mp4", "nul .txt", "conin$", "x.", "a?b", "a|b", 'a"b',
                                  "a<b", "a>b", "a*b"])
def test_names_windows_refuses_are_refused_on_every_platform(name):
    for node in TRAIN_NODES:
        problem = NODE_CLASS_MAPPINGS[node].VALIDATE_INPUTS(save_name=name, resume_from="none")
        assert isinstance(problem, str) and "Windows" in problem, (node, problem)
    with pytest.raises(InputError, match="Windows"):
        host.safe_filename(name)
    from motion_core.adapters.files import check_save_name

    with pytest.raises(InputError, match="Windows"):
        check_save_name(name)


@pytest.mark.parametrize("name", ["console", "com10", "nullable", "my_con", "con_motion", "Motion 01", "clip.v2",
                                  "lpt", "ñandú", "n" * MAX_NAME_BYTES])
def test_ordinary_names_still_pass(name):
    assert common.save_name_problem(name) is True
    assert host.safe_filename(name) == name


@pytest.mark.parametrize("name, words", [("n" * 250, ["too long", "194 bytes"]), ("con", ["reserved by Windows"]),
                                         ("nul.txt", ["reserved"]), ("bad?name", ["Windows"])])
def test_the_cli_refuses_a_bad_save_name_before_training(name, words, dirs, capsys, no_model):
    code, err = run_cli(["train", "--save-name", name, "--steps", "2"], capsys)
    assert code == 1
    line = error_line(err).lower()
    assert all(w.lower() in line for w in words), line


def test_a_default_save_name_from_a_long_video_name_says_to_give_one(dirs, tmp_path, capsys, no_model):
    video = tmp_path / ("v" * 190 + ".mp4")
    video.write_bytes(b"not read: the name is refused first")
    code, err = run_cli(["train", "--model", "x", "--video", video, "--prompt", "a square", "--steps", "2"], capsys)
    assert code == 1 and "too long" in err and "--save-name" in err


def test_the_cli_refuses_output_names_too_long_to_write(dirs, tmp_path, capsys, no_model):
    code, err = run_cli(["sample", "--out", tmp_path / ("o" * 245 + ".mp4")], capsys)
    assert code == 1 and "too long" in error_line(err)
    code, err = run_cli(["export-adapter", "--adapter", "x", "--format", "diffusers",
                         "--out", tmp_path / ("e" * 200 + ".safetensors")], capsys)
    assert code == 1 and "too long" in error_line(err)  # '<stem>_high_noise.safetensors' + its temporary
    code, err = run_cli(["sample", "--out", tmp_path / "aux.mp4"], capsys)
    assert code == 1 and "Windows" in error_line(err)


def _checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    return folder


def test_resume_from_takes_only_checkpoints_inside_the_training_folder(dirs, tmp_path):
    root = dirs.output / common.TRAINING_FOLDER
    inside = _checkpoint(root / "run" / "checkpoint-000004")
    outside = _checkpoint(tmp_path / "elsewhere" / "run" / "checkpoint-000004")
    assert common.resolve_resume("run", "run/checkpoint-000004") == inside
    assert common.resolve_resume("run", "latest") == root / "run"
    validate = NODE_CLASS_MAPPINGS["MotionKitTrainMotionDirector"].VALIDATE_INPUTS
    # an absolute path no longer replaces the root
    for bad in (str(outside), str(inside.resolve()), "../../elsewhere/run/checkpoint-000004",
                "run/../../../elsewhere/run/checkpoint-000004", "C:/runs/checkpoint-000004"):
        with pytest.raises(InputError, match="not inside the training folder"):
            common.resolve_resume("run", bad)
        problem = validate(save_name="run", resume_from=bad)
        assert isinstance(problem, str) and "training folder" in problem, bad
    # a symlink inside the folder that leads out of it
    (root / "linked").symlink_to(tmp_path / "elsewhere" / "run", target_is_directory=True)
    with pytest.raises(InputError, match="leads outside the training folder"):
        common.resolve_resume("linked", "linked/checkpoint-000004")
    with pytest.raises(InputError, match="leads outside the training folder"):
        common.resolve_resume("linked", "latest")
    assert "linked/checkpoint-000004" not in common.checkpoint_choices()
    assert "run/checkpoint-000004" in common.checkpoint_choices()
    # a folder inside that is not a checkpoint
    (root / "run" / "notes").mkdir()
    with pytest.raises(InputError, match="not a MotionKit training checkpoint"):
        common.resolve_resume("run", "run/notes")


def test_resume_latest_without_an_earlier_run_says_what_to_do(dirs):
    with pytest.raises(InputError) as info:
        common.resolve_resume("fresh", "latest")  # also what the node runs when its save name is linked
    assert "no checkpoint of 'fresh'" in str(info.value) and "Pick 'none'" in str(info.value)
    problem = NODE_CLASS_MAPPINGS["MotionKitTrainMotionDirector"].VALIDATE_INPUTS(save_name="fresh",
                                                                                  resume_from="latest")
    assert problem.count("Pick 'none'") == 1


# ============================================================================================ 5. messages
def _bad_safetensors(folder: Path) -> dict[str, Path]:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    foreign = folder / "foreign.safetensors"
    save_file({"a": torch.zeros(64, 64)}, str(foreign))  # valid, but another tool's: no MotionKit metadata
    lora = folder / "image_lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}, str(lora))
    truncated = folder / "truncated.safetensors"
    truncated.write_bytes(foreign.read_bytes()[: foreign.stat().st_size // 2])
    rand = folder / "random.safetensors"
    rand.write_bytes(os.urandom(2048))
    return {"foreign": foreign, "lora": lora, "truncated": truncated, "random": rand}


@pytest.mark.parametrize("kind, words", [
    ("truncated", ["not a readable .safetensors file", "cut off", "again"]),
    ("random", ["not a readable .safetensors file", "another kind of file", "again"]),
    ("foreign", ["not a MotionKit motion adapter", "no MotionKit metadata", "A motion adapter is a file saved by"]),
    ("lora", ["not a MotionKit motion adapter", "LoRA of another tool", "Load LoRA"]),
])
def test_unreadable_or_foreign_adapter_files_say_what_they_are_and_what_to_do(kind, words, dirs, tmp_path, capsys,
                                                                             no_model):
    path = _bad_safetensors(tmp_path / "files")[kind]
    code, err = run_cli(["export-adapter", "--adapter", path, "--format", "diffusers",
                         "--out", tmp_path / "e.safetensors"], capsys)
    assert code == 1
    line = error_line(err)
    assert path.name in line and all(w in line for w in words), line
    assert not (tmp_path / "e.safetensors").exists()
    # the node path: Load Motion Adapter
    dirs.motion_adapters.mkdir(parents=True, exist_ok=True)
    (dirs.motion_adapters / path.name).write_bytes(path.read_bytes())
    with pytest.raises(InputError) as info:
        NODE_CLASS_MAPPINGS["MotionKitLoadMotionAdapter"]().load(path.name)
    assert all(w in str(info.value) for w in words)


def test_a_truncated_motion_representation_says_what_to_do(tmp_path):
    from motion_core.adapters.representation import MotionRepresentation

    path = _bad_safetensors(tmp_path)["truncated"]
    with pytest.raises(InputError, match="cut off.*again"):
        MotionRepresentation.load(path)


def _wan_style_adapter(model, path: Path) -> Path:
    """A MotionKit LoRA file of this model's family and base model whose layers are another layout's."""
    from motion_core.adapters.files import save_adapter
    from motion_core.adapters.lora import ROLE_MOTION, LoraSet, MotionLoRA

    weights = {f"blocks.{i}.attn1.{p}": (torch.zeros(2, 16), torch.zeros(16, 2)) for i in range(3) for p in ("to_q", "to_v")}
    lora_set = LoraSet(name="temporal", role=ROLE_MOTION, rank=2, alpha=2.0, weights=weights)
    adapter = MotionLoRA(sets=(lora_set,), method="motiondirector", family=model.family, base_model=model.base_model)
    return save_adapter(adapter, path)


def test_an_adapter_whose_layers_match_nothing_says_what_it_has_and_what_the_model_has(unet3d_model, tiny_unet3d_path,
                                                                                     tmp_path, capsys, dirs):
    from motion_core.adapters.files import load_adapter
    from motion_core.motion_model import MotionModel

    path = _wan_style_adapter(unet3d_model, tmp_path / "other_layout.safetensors")
    adapter = load_adapter(path)
    with pytest.raises(AdapterMismatchError) as info:
        adapter.check_compatible(unet3d_model)
    message = str(info.value)
    for words in ("none of the 6 layers", "'blocks.0.attn1.to_q'", "linear layers like", ".attn1.to_q'",
                  "another model family or base model", "other_layout.safetensors"):
        assert words in message, (words, message)
    # the node refuses it when the adapter is applied, not in the middle of sampling
    with pytest.raises(AdapterMismatchError, match="none of the 6 layers"):
        NODE_CLASS_MAPPINGS["MotionKitApplyMotionAdapter"]().apply(MotionModel.wrap(unet3d_model), adapter, 1.0, 0.0)
    # and the CLI
    code, err = run_cli(["sample", "--model", tiny_unet3d_path, "--device", "cpu", "--adapter", path, "--steps", "1",
                         "--frames", "2", "--width", "32", "--height", "32", "--out", tmp_path / "o.mp4"], capsys)
    assert code == 1 and "none of the 6 layers" in error_line(err) and not (tmp_path / "o.mp4").exists()


class _RunsCode:
    """Unpickling this calls builtins.open(marker, "w") -- creating the marker file -- if anything ran it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_would_run_code_is_not_loaded_and_says_so(dirs, tmp_path, capsys, no_model):
    marker = tmp_path / "RAN"
    evil = tmp_path / "motion_lora.pt"
    torch.save([torch.zeros(4, 2), _RunsCode(marker)], str(evil))
    code, err = run_cli(["export-adapter", "--adapter", evil, "--format", "diffusers",
                         "--out", tmp_path / "e.safetensors"], capsys)
    assert code == 1
    line = error_line(err)
    assert "NOT loaded" in line and "contains code" in line and "io.open" in line
    assert "weights_only" not in line.replace(" ", "") and "weights_only" not in err
    assert not marker.exists()
    dirs.motion_adapters.mkdir(parents=True, exist_ok=True)
    (dirs.motion_adapters / evil.name).write_bytes(evil.read_bytes())
    with pytest.raises(InputError, match="NOT loaded: it contains code") as info:
        NODE_CLASS_MAPPINGS["MotionKitLoadMotionAdapter"]().load(evil.name)
    assert "weights_only" not in str(info.value)
    assert not marker.exists()


def test_a_damaged_pt_says_it_is_damaged(tmp_path, capsys, no_model):
    good = tmp_path / "good.pt"
    torch.save([torch.zeros(4, 2), torch.zeros(2, 4)], str(good))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    code, err = run_cli(["export-adapter", "--adapter", cut, "--format", "diffusers", "--out",
                         tmp_path / "e.safetensors"], capsys)
    assert code == 1 and "damaged or incomplete" in error_line(err) and "weights_only" not in err


@pytest.mark.parametrize("text, words", [
    ("steps: [1, 2\nprompt: 'unclosed\n", ["is not valid YAML", "line 2", "Fix that line"]),
    ("- steps\n- 2\n", ["must hold a mapping", "not a list"]),
    ("steps: many\n", ["'many' is not a valid value for --steps", "whole number"]),
    ("scheduler: nope\n", ["'nope' is not a valid value for --scheduler", "choose one of"]),
    ("cfg: [1, 2]\n", ["a single value"]),
    ("steps: 0\n", ["--steps must be at least 1"]),
    ("no_such_option: 1\n", ["unknown option 'no_such_option'", "--help"]),
])
def test_a_broken_config_is_a_clear_error(text, words, tmp_path, capsys, no_model):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    code, err = run_cli(["sample", "--config", config, "--out", tmp_path / "o.mp4"], capsys)
    assert code == 1
    line = error_line(err)
    assert all(w in line for w in words), line


def test_a_missing_config_says_where_it_looked(tmp_path, capsys, no_model):
    code, err = run_cli(["train", "--config", tmp_path / "nowhere.yaml"], capsys)
    assert code == 1 and "nowhere.yaml does not exist" in err and "leave out --config" in err


def test_the_command_line_wins_over_the_config_also_through_aliases(tmp_path):
    from motion_core.cli import _apply_config, build_parser

    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 0.5\nrank: '8'\nprompt: a car\n")
    parser = build_parser()
    argv = ["train", "--lr", "0.001", "--config", str(config)]
    args = parser.parse_args(argv)
    _apply_config(parser, argv, args)
    assert args.learning_rate == 0.001  # --lr is --learning-rate
    assert args.rank == 8 and args.prompt == ["a car"]  # converted as on the command line


def test_resume_without_an_earlier_run_is_refused_before_loading(dirs, tmp_path, capsys, no_model):
    code, err = run_cli(["train", "--resume", "latest", "--save-name", "fresh", "--steps", "2"], capsys)
    line = error_line(err)
    assert code == 1 and "no checkpoint of 'fresh'" in line and "Leave out --resume" in line
    assert str(dirs.output / "motionkit_training" / "fresh") in line
    code, err = run_cli(["train", "--resume", tmp_path / "no_run", "--steps", "2"], capsys)
    assert code == 1 and "no_run: there is no such folder" in err and "'latest'" in err
    (tmp_path / "empty_run").mkdir()
    code, err = run_cli(["train", "--resume", tmp_path / "empty_run", "--steps", "2"], capsys)
    assert code == 1 and "holds no training checkpoint" in err


def test_a_missing_video_is_refused_before_loading(tmp_path, capsys, no_model):
    missing = tmp_path / "missing.mp4"
    code, err = run_cli(["train", "--video", missing, "--prompt", "a car", "--steps", "2"], capsys)
    assert code == 1 and "missing.mp4 does not exist" in err and "Check the path" in err
    code, err = run_cli(["clone", "--video", missing, "--out", tmp_path / "o.mp4"], capsys)
    assert code == 1 and "missing.mp4 does not exist" in err and "Check the path" in err
    code, err = run_cli(["clone", "--representation", tmp_path / "gone.safetensors", "--out", tmp_path / "o.mp4"],
                        capsys)
    assert code == 1 and "gone.safetensors does not exist" in err and "--video" in err


# ============================================================================================ 6. no silent substitutes
@pytest.mark.parametrize("argv, option", [
    (["sample", "--steps", "0"], "--steps"),
    (["sample", "--frames", "0"], "--frames"),
    (["sample", "--width", "0"], "--width"),
    (["sample", "--fps", "0"], "--fps"),
    (["clone", "--steps", "0"], "--steps"),
    (["clone", "--frames", "0"], "--frames"),
    (["train", "--steps", "0"], "--steps"),
    (["train", "--frames", "0"], "--frames"),
    (["train", "--rank", "0"], "--rank"),
    (["train", "--keep-checkpoints", "0"], "--keep-checkpoints"),
    (["train", "--checkpoint-every", "-1"], "--checkpoint-every"),
])
def test_zero_is_refused_where_it_means_nothing(argv, option, tmp_path, capsys, no_model):
    code, err = run_cli(argv + ["--out" if argv[0] != "train" else "--run-dir", tmp_path / "o.mp4"], capsys)
    assert code == 1
    line = error_line(err)
    assert f"{option} must be" in line and "Leave it out to use the default" in line, line


@pytest.mark.parametrize("prompt", ["", "   "])
def test_train_refuses_an_empty_prompt_like_the_node(prompt, dirs, capsys, no_model):
    code, err = run_cli(["train", "--prompt", prompt, "--steps", "2"], capsys)
    assert code == 1 and "--prompt is empty" in error_line(err)


def test_checkpoint_every_0_means_one_checkpoint_at_the_end_for_the_node():
    config = common.training_config("run", steps=7, seed=0, frames=8, fps=None, width=32, height=32,
                                    checkpoint_every=0, preview_every=0, preview_prompt="", preview_steps=2,
                                    mixed_precision="no", gradient_checkpointing=False)
    assert config.checkpoint_every == 7
    every = common.training_config("run", steps=7, seed=0, frames=8, fps=None, width=32, height=32,
                                   checkpoint_every=3, preview_every=0, preview_prompt="", preview_steps=2,
                                   mixed_precision="no", gradient_checkpointing=False)
    assert every.checkpoint_every == 3


# ============================================================================================ 7. run folders
def test_the_cli_keeps_its_run_folder_in_the_output_folder_and_checkpoints_at_the_end(dirs, tmp_path, capsys):
    """``--checkpoint-every 0`` writes one checkpoint at the end, in output/motionkit_training/<save name>
    (not the system temp folder), and ``--resume latest`` continues it."""
    name = f"faults_run_{os.getpid()}"
    base = ["train", "--save-name", name, "--device", "cpu", "--noise-prior-steps", "0", "--validate-every", "0",
            "--checkpoint-every", "0", "--width", "32", "--height", "32", "--frames", "8"]
    code = main(base + ["--steps", "1"])
    out = capsys.readouterr().out
    assert code == 0
    run_dir = dirs.output / "motionkit_training" / name
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-000001"]
    assert (run_dir / "loss_curve.png").is_file() and str(run_dir / "checkpoint-000001") in out
    assert not (Path(tempfile.gettempdir()) / "motionkit-training" / name).exists()
    assert main(base + ["--steps", "2", "--resume", "latest"]) == 0
    out = capsys.readouterr().out
    assert "trained 2/2 steps" in out
    assert (run_dir / "checkpoint-000002" / "trainer_state.json").is_file()


def test_every_refusal_here_is_a_motionkit_error():
    """The cases above go through main(), which prints MotionKit errors only: anything else would surface as a
    traceback (asserted absent in run_cli)."""
    assert issubclass(InputError, MotionKitError) and issubclass(AdapterMismatchError, MotionKitError)
