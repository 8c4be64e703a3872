"""Faults, interruptions and bad input around training: a full disk, two runs with one save name, Ctrl-C /
SIGTERM in the CLI, a run killed with SIGKILL.

The full disks are real: small tmpfs mounts (the tests mount and unmount them; they are skipped only where
mounting is impossible, i.e. not root / no CAP_SYS_ADMIN). The signal tests run the real CLI in a
subprocess on the built-in tiny model.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from motion_core.adapters.files import load_adapter, write_safetensors
from motion_core.adapters.lora import lora_layers
from motion_core.errors import Cancelled, StorageError, TrainingError
from motion_core.training import LOCK_NAME, RunLock, _process_started, train
from motion_core.video import write_video

from test_training import motiondirector, small_config as config, square as training_square  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def square(frames: int = 8, side: int = 32) -> torch.Tensor:
    return training_square(frames, side)


# ================================================================================================ disks
@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(name, size="2m", read_only=False)``: a fresh tmpfs mounted at ``tmp_path/name``."""
    mounted: list[Path] = []

    def mount(name: str, size: str = "2m", read_only: bool = False) -> Path:
        path = tmp_path / name
        path.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        if shutil.which("mount") is None:
            pytest.skip("cannot mount a tmpfs to fill: there is no 'mount' command here")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs to fill (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk: Path, leave: int) -> None:
    """Write a filler file so that about ``leave`` bytes stay free on ``disk``."""
    free = shutil.disk_usage(disk).free
    with open(disk / f"filler-{time.monotonic_ns()}", "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    assert shutil.disk_usage(disk).free <= leave + 8192


def leftovers(folder: Path) -> list[str]:
    """Hidden temporaries and partial checkpoints in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


def test_write_safetensors_on_a_full_disk_is_a_clear_error_and_keeps_the_old_file(small_disk):
    disk = small_disk("full", "256k")
    target = disk / "motion.safetensors"
    write_safetensors(target, {"w": torch.ones(1000)}, {"format": "x"})
    before = target.read_bytes()
    with pytest.raises(StorageError) as info:
        write_safetensors(target, {"w": torch.zeros(200_000)}, {"format": "x"})  # 800 kB > 256 kB
    message = str(info.value)
    assert str(disk) in message and "800" in message and "free" in message and "os error" not in message
    assert target.read_bytes() == before and leftovers(disk) == []


def test_write_safetensors_translates_a_write_that_runs_out_midway(small_disk, monkeypatch):
    """The free-space check is skipped (a filesystem that does not say): the write itself hits ENOSPC."""
    import motion_core.storage as storage

    disk = small_disk("full", "256k")
    monkeypatch.setattr(storage, "free_bytes", lambda path: None)
    with pytest.raises(StorageError, match="The disk is full") as info:
        write_safetensors(disk / "m.safetensors", {"w": torch.zeros(200_000)}, {})
    assert "os error 28" in str(info.value.__cause__) and str(disk) in str(info.value)
    assert list(disk.iterdir()) == []


def test_a_read_only_folder_is_a_clear_error(small_disk):
    disk = small_disk("ro", "256k", read_only=True)
    with pytest.raises(StorageError, match="Read-only file system"):
        write_safetensors(disk / "m.safetensors", {"w": torch.zeros(10)}, {})
    with pytest.raises(StorageError, match="Read-only file system"):
        write_video(disk / "clip.mp4", square(4), 8)


def test_write_video_on_a_full_disk_is_a_clear_error(small_disk):
    disk = small_disk("out", "64k")
    old = disk / "clip.mp4"
    old.write_bytes(b"old")
    noise = torch.rand(24, 128, 128, 3, generator=torch.Generator().manual_seed(0))  # does not compress
    with pytest.raises(StorageError) as info:
        write_video(old, noise, 8)
    message = str(info.value)
    assert message.startswith("The disk is full") and str(disk) in message and "it had written" in message
    assert old.read_bytes() == b"old" and leftovers(disk) == []


def test_preflight_refuses_a_run_whose_adapter_does_not_fit(unet3d_model, small_disk, tmp_path):
    adapters = small_disk("adapters", "2m")
    fill(adapters, 64 * 1024)
    steps = []
    with pytest.raises(StorageError) as info:
        train(unet3d_model, motiondirector(), [square()], "a square",
              config(tmp_path / "run", save_name="motion", adapters_dir=str(adapters)),
              progress=lambda s, t, i: steps.append(s))
    message = str(info.value)
    assert "Not enough free disk space" in message and str(adapters) in message and "the adapter file" in message
    assert re.search(r"needs about .*\(\d+ bytes\)", message) and re.search(r"\(\d+ bytes\) is free", message)
    assert "--adapters-dir" in message
    assert steps == [], "refused before the first step"
    assert not lora_layers(unet3d_model.denoiser)
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_preflight_refuses_a_run_folder_without_room_for_a_checkpoint(unet3d_model, small_disk, tmp_path):
    run_dir = small_disk("run", "2m")
    fill(run_dir, 200 * 1024)  # the adapter (190 kB) would fit, a checkpoint (610 kB) does not
    with pytest.raises(StorageError) as info:
        train(unet3d_model, motiondirector(), [square()], "a square",
              config(run_dir, save_name="motion", adapters_dir=str(tmp_path / "adapters")))
    message = str(info.value)
    assert str(run_dir) in message and "the training checkpoint" in message and "--run-dir" in message
    assert not (tmp_path / "adapters").exists() or not any((tmp_path / "adapters").iterdir())


def test_preflight_sums_folders_on_one_disk_and_its_estimate_covers_the_real_files(unet3d_model, small_disk,
                                                                                    monkeypatch):
    """One 2 MiB disk as the output, adapters and run folder: the run fits and passes; the estimate of each
    file is at least its real size (and not wildly more)."""
    import motion_core.storage as storage

    disk = small_disk("disk", "2m")
    seen = []
    real_check = storage.check_room
    monkeypatch.setattr(storage, "check_room", lambda needs, **kw: (seen.append(list(needs)), real_check(needs, **kw)))
    result = train(unet3d_model, motiondirector(), [square()], "a square",
                   config(disk / "output" / "motionkit_training" / "motion", save_name="motion",
                          adapters_dir=str(disk / "adapters"), checkpoint_every=4))
    needs = {n.what: n.bytes for n in seen[0]}
    adapter_real = result.adapter_path.stat().st_size
    checkpoint_real = sum(f.stat().st_size for f in result.checkpoint.iterdir())
    print(f"\nadapter: estimated {needs['the adapter file']} bytes, written {adapter_real}; checkpoint: estimated "
          f"{needs['the training checkpoint']} bytes, written {checkpoint_real}")
    assert adapter_real <= needs["the adapter file"] <= 2 * adapter_real + 128 * 1024
    assert checkpoint_real <= needs["the training checkpoint"] <= 2 * checkpoint_real + 256 * 1024
    assert leftovers(result.checkpoint.parent) == [] and leftovers(disk / "adapters") == []


def test_a_checkpoint_that_does_not_fit_leaves_no_partial_folder(unet3d_model, small_disk, tmp_path):
    run_dir = small_disk("run", "2m")
    with pytest.raises(StorageError) as info:
        train(unet3d_model, motiondirector(), [square()], "a square", config(run_dir, steps=4, checkpoint_every=2),
              progress=lambda s, t, i: s == 1 and fill(run_dir, 100 * 1024))  # the disk fills after preflight
    message = str(info.value)
    assert message.startswith("The disk is full") and str(run_dir) in message and "checkpoint-000002" in message
    assert "needs about" in message and "No checkpoint of this run was kept" in message
    assert leftovers(run_dir) == [] and not (run_dir / "checkpoint-000002").exists()
    assert not lora_layers(unet3d_model.denoiser)


def test_a_checkpoint_write_that_runs_out_midway_leaves_no_partial_folder(unet3d_model, small_disk, monkeypatch):
    """No free-space check can see it coming (the filesystem reports nothing): the write itself fails with
    ENOSPC in the middle of the checkpoint; the partial folder goes, the earlier checkpoint stays."""
    import motion_core.storage as storage

    run_dir = small_disk("run", "2m")
    blind = {"on": False}
    real_free = storage.free_bytes
    monkeypatch.setattr(storage, "free_bytes", lambda path: None if blind["on"] else real_free(path))

    def progress(step, total, info):
        if step == 2:  # checkpoint-000002 was written; now leave room for about half of the next one
            fill(run_dir, 300 * 1024)
            blind["on"] = True

    with pytest.raises(StorageError) as info:
        train(unet3d_model, motiondirector(), [square()], "a square",
              config(run_dir, steps=6, checkpoint_every=2, keep_checkpoints=1), progress=progress)
    message = str(info.value)
    assert "checkpoint-000004" in message and "needs about" in message
    assert f"The last complete checkpoint is {run_dir / 'checkpoint-000002'}" in message
    assert isinstance(info.value.__cause__, Exception) and "28" in str(info.value.__cause__)
    assert leftovers(run_dir) == [] and (run_dir / "checkpoint-000002" / "trainer_state.json").is_file()


def test_an_adapter_that_does_not_fit_at_the_end_keeps_the_old_file_and_says_where_the_checkpoint_is(
        unet3d_model, small_disk, tmp_path):
    adapters = small_disk("adapters", "1m")
    old = adapters / "motion.safetensors"
    old.write_bytes(b"the adapter of an earlier run")
    with pytest.raises(StorageError) as info:
        train(unet3d_model, motiondirector(), [square()], "a square",
              config(tmp_path / "run", steps=3, checkpoint_every=3, save_name="motion", adapters_dir=str(adapters)),
              progress=lambda s, t, i: s == 3 and fill(adapters, 50 * 1024))
    message = str(info.value)
    assert str(adapters) in message and "motion.safetensors" in message and "needs about" in message
    assert f"checkpoint {tmp_path / 'run' / 'checkpoint-000003'} is kept" in message
    assert old.read_bytes() == b"the adapter of an earlier run" and leftovers(adapters) == []


def test_the_cli_on_a_full_output_folder_prints_the_error_without_a_traceback(small_disk, tmp_path, monkeypatch,
                                                                              capsys):
    from motion_core.cli import main

    output = small_disk("output", "256k")
    fill(output, 32 * 1024)
    monkeypatch.setenv("MOTIONKIT_OUTPUT_DIR", str(output))
    monkeypatch.setenv("MOTIONKIT_ADAPTERS_DIR", str(tmp_path / "adapters"))
    assert main(["train", "--steps", "2", "--device", "cpu", "--save-name", "full"]) == 1
    err = capsys.readouterr().err
    assert "error: Not enough free disk space" in err and str(output) in err and "Traceback" not in err
    fill(output, 0)
    assert main(["sample", "--steps", "2", "--device", "cpu", "--out", str(output / "clip.mp4")]) == 1
    err = capsys.readouterr().err
    assert "error: The disk is full" in err and str(output) in err and "Traceback" not in err
    assert leftovers(output) == [] and not (output / "clip.mp4").exists()


# ================================================================================================ one run per folder
def write_lock(run_dir: Path, pid: int, **fields) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"pid": pid, "host": socket.gethostname(), "started": "2024-01-02 03:04:05", "name": "motion",
              "process_started": _process_started(pid), "token": "someone else", **fields}
    path = run_dir / LOCK_NAME
    path.write_text(json.dumps(record))
    return path


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_second_run_with_the_same_save_name_is_refused_and_touches_nothing(unet3d_model, tmp_path):
    run_dir = tmp_path / "run"
    first = train(unet3d_model, motiondirector(), [square()], "a square",
                  config(run_dir, steps=2, checkpoint_every=2, save_name="motion"))
    assert not (run_dir / LOCK_NAME).exists(), "released at the end"
    lock = RunLock(run_dir, "motion").acquire()  # this process stands for a run that is still going
    try:
        with pytest.raises(TrainingError) as info:
            train(unet3d_model, motiondirector(), [square()], "a square", config(run_dir, steps=2, save_name="motion"))
        message = str(info.value)
        assert f"A training run named 'motion' is already running (pid {os.getpid()}, started " in message
        assert "wait for it to finish or choose another save name" in message
        assert first.checkpoint.is_dir(), "the refused run did not clear the running one's checkpoints"
        assert (run_dir / LOCK_NAME).is_file(), "nor its lock"
    finally:
        lock.release()
    assert not (run_dir / LOCK_NAME).exists()
    assert not lora_layers(unet3d_model.denoiser)


def test_a_lock_held_by_another_live_process_refuses_then_goes_stale_when_it_dies(unet3d_model, tmp_path, caplog):
    run_dir = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        write_lock(run_dir, child.pid)
        with pytest.raises(TrainingError, match=f"already running \\(pid {child.pid}, started 2024-01-02 03:04:05\\)"):
            train(unet3d_model, motiondirector(), [square()], "a square", config(run_dir, steps=1))
    finally:
        child.kill()
        child.wait()
    with caplog.at_level("WARNING", logger="motion_core.training"):
        result = train(unet3d_model, motiondirector(), [square()], "a square", config(run_dir, steps=1))
    assert result.steps == 1 and f"locked by pid {child.pid}, which is no longer running" in caplog.text
    assert not (run_dir / LOCK_NAME).exists() and leftovers(run_dir) == []


@pytest.mark.parametrize("why", ["no such pid", "pid reused", "empty file"])
def test_a_stale_lock_is_taken_over(unet3d_model, tmp_path, why):
    run_dir = tmp_path / "run"
    if why == "no such pid":
        write_lock(run_dir, dead_pid())
    elif why == "pid reused":  # our own pid, but it started at another time: the locking process is gone
        write_lock(run_dir, os.getpid(), process_started="1")
    else:  # a run killed between creating the lock and writing it
        run_dir.mkdir()
        (run_dir / LOCK_NAME).write_text("")
        os.utime(run_dir / LOCK_NAME, (time.time() - 60, time.time() - 60))
    result = train(unet3d_model, motiondirector(), [square()], "a square", config(run_dir, steps=1))
    assert result.steps == 1 and not (run_dir / LOCK_NAME).exists() and leftovers(run_dir) == []


def test_a_lock_from_another_machine_is_not_judged_from_here(unet3d_model, tmp_path):
    run_dir = tmp_path / "run"
    path = write_lock(run_dir, dead_pid(), host="render-node-7")
    with pytest.raises(TrainingError) as info:
        train(unet3d_model, motiondirector(), [square()], "a square", config(run_dir, steps=1))
    assert "on render-node-7" in str(info.value) and f"delete {path}" in str(info.value)


def test_the_lock_is_released_when_a_run_fails(unet3d_model, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingError, match="NaN/inf"):
        train(unet3d_model, motiondirector(learning_rate=1e8), [square()], "a square",
              config(run_dir, steps=20, max_bad_steps=2))
    assert not (run_dir / LOCK_NAME).exists()


# ================================================================================================ cancel, Ctrl-C
def test_cancel_before_the_first_step_keeps_nothing_and_replaces_nothing(unet3d_model, tmp_path):
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    (adapters / "motion.safetensors").write_bytes(b"an earlier adapter")
    for after, match in ((0, "while encoding the training clips"), (1, "before its first step")):
        calls = {"n": 0}

        def cancel():  # True from the (after+1)-th check on: the clip is encoded once (1 check), then the loop
            calls["n"] += 1
            return calls["n"] > after

        with pytest.raises(Cancelled, match=match):
            train(unet3d_model, motiondirector(), [square()], "a square",
                  config(tmp_path / "run", save_name="motion", adapters_dir=str(adapters)), cancel=cancel)
        assert (adapters / "motion.safetensors").read_bytes() == b"an earlier adapter"
        assert not [p for p in (tmp_path / "run").iterdir()]
    assert not lora_layers(unet3d_model.denoiser)


def test_an_abort_in_the_middle_of_a_checkpoint_leaves_no_partial_folder(unet3d_model, tmp_path, monkeypatch):
    import safetensors.torch

    real = safetensors.torch.save_file
    calls = {"n": 0}

    def second_file_interrupted(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # a second Ctrl-C while the checkpoint is being written
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", second_file_interrupted)
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(unet3d_model, motiondirector(), [square()], "a square", config(run_dir, steps=2, checkpoint_every=1))
    assert leftovers(run_dir) == [] and not (run_dir / LOCK_NAME).exists()
    assert not lora_layers(unet3d_model.denoiser)


def test_stop_signals_first_asks_to_stop_second_aborts_and_handlers_come_back():
    from motion_core.interrupts import StopSignals, resume_command

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop() and stop.received == "SIGTERM" and stop.exit_code == 143
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    command = resume_command(["train", "--steps", "9", "--resume=old", "--save-name", "my motion"], "/r/my motion")
    assert command.endswith("-m motion_core train --steps 9 --save-name 'my motion' --resume '/r/my motion'")


def cli_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
            "MOTIONKIT_OUTPUT_DIR": str(tmp_path / "output"), "MOTIONKIT_MODELS_DIR": str(tmp_path / "models"),
            "MOTIONKIT_ADAPTERS_DIR": str(tmp_path / "adapters")}


class Running:
    """A CLI process whose stderr is collected as it comes (the progress line has no line breaks)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "motion_core", *args], env=env, cwd=str(REPO),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.err = b""
        self.out = b""
        self._threads = [threading.Thread(target=self._pump, args=(self.process.stderr, "err"), daemon=True),
                         threading.Thread(target=self._pump, args=(self.process.stdout, "out"), daemon=True)]
        for t in self._threads:
            t.start()

    def _pump(self, stream, name: str) -> None:
        for chunk in iter(lambda: stream.read1(4096), b""):
            setattr(self, name, getattr(self, name) + chunk)

    def wait_for_step(self, step: int, timeout: float = 240) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = [int(n) for n in re.findall(rb"training (\d+)/", self.err)]
            if done and done[-1] >= step:
                return done[-1]
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.process.kill()
        raise AssertionError(f"no training step {step}: {self.err.decode(errors='replace')[-3000:]}")

    def finish(self, timeout: float = 240) -> tuple[int, str, str]:
        code = self.process.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout=10)
        return code, self.out.decode(errors="replace"), self.err.decode(errors="replace")


def test_sigterm_keeps_the_checkpoint_and_the_adapter_and_prints_a_working_resume_command(tmp_path, monkeypatch,
                                                                                          capsys):
    env = cli_env(tmp_path)
    args = ["train", "--method", "motiondirector", "--steps", "200", "--save-name", "sigterm_run", "--device", "cpu"]
    running = Running(args, env)
    running.wait_for_step(3)

    # meanwhile a second run with the same save name is refused and leaves the first alone
    from motion_core.cli import main

    for key in ("MOTIONKIT_OUTPUT_DIR", "MOTIONKIT_MODELS_DIR", "MOTIONKIT_ADAPTERS_DIR"):
        monkeypatch.setenv(key, env[key])
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"A training run named 'sigterm_run' is already running (pid {running.process.pid}, started" in err
    assert "wait for it to finish or choose another save name" in err

    running.process.send_signal(signal.SIGTERM)
    code, out, err = running.finish()
    assert code == 143, err[-3000:]
    assert "Traceback" not in err and "SIGTERM received: stopping after the current step" in err
    step = int(re.search(r"stopped by SIGTERM after step (\d+) of 200", out).group(1))
    assert step >= 3
    run_dir = tmp_path / "output" / "motionkit_training" / "sigterm_run"
    checkpoint = run_dir / f"checkpoint-{step:06d}"
    adapter_file = tmp_path / "adapters" / "sigterm_run.safetensors"
    assert f"checkpoint: {checkpoint}" in out and f"adapter:    {adapter_file}" in out
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == step
    assert load_adapter(adapter_file).steps == step
    assert not (run_dir / LOCK_NAME).exists() and leftovers(run_dir) == []

    lines = out.splitlines()
    command = shlex.split(lines[lines.index("to continue to step 200, run:") + 1])
    assert command[:3] == [sys.executable, "-m", "motion_core"] and command[-2:] == ["--resume", str(run_dir)]
    command[command.index("--steps") + 1] = str(step + 2)  # fewer remaining steps, to keep the test short
    resumed = subprocess.run(command, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {step}" in resumed.stderr and "resumed from" in resumed.stderr
    assert f"trained {step + 2}/{step + 2} steps" in resumed.stdout
    assert load_adapter(adapter_file).steps == step + 2
    history = json.loads((run_dir / f"checkpoint-{step + 2:06d}" / "trainer_state.json").read_text())["history"]
    before = json.loads((checkpoint / "trainer_state.json").read_text())["history"] if checkpoint.is_dir() else None
    assert [h["step"] for h in history] == list(range(1, step + 3))
    if before is not None:
        assert history[:step] == before


def test_sigkill_then_resume_gives_the_same_losses_and_tensors_as_an_uninterrupted_run(tmp_path):
    """A run killed with SIGKILL leaves its lock (and maybe a partial checkpoint) behind; resuming takes the
    stale lock over and ends bit-identical to a run that was never interrupted."""
    env = cli_env(tmp_path)
    common = ["train", "--method", "motiondirector", "--steps", "8", "--checkpoint-every", "2", "--device", "cpu",
              "--seed", "3"]
    reference = subprocess.run([sys.executable, "-m", "motion_core", *common, "--save-name", "whole"], env=env,
                               cwd=str(REPO), capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr[-3000:]

    running = Running([*common, "--save-name", "killed"], env)
    running.wait_for_step(3)  # checkpoint-000002 is complete (it is written before step 2 is reported)
    running.process.send_signal(signal.SIGKILL)
    code, _, _ = running.finish()
    assert code == -signal.SIGKILL
    run_dir = tmp_path / "output" / "motionkit_training" / "killed"
    assert (run_dir / LOCK_NAME).is_file(), "SIGKILL leaves the lock behind"

    resumed = subprocess.run([sys.executable, "-m", "motion_core", *common, "--save-name", "killed", "--resume",
                              str(run_dir)], env=env, cwd=str(REPO), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "which is no longer running" in resumed.stderr and "resumed from" in resumed.stderr
    assert not (run_dir / LOCK_NAME).exists() and leftovers(run_dir) == []

    def final(name):
        state = json.loads((tmp_path / "output" / "motionkit_training" / name / "checkpoint-000008" /
                            "trainer_state.json").read_text())
        return [h["loss"] for h in state["history"]], load_adapter(tmp_path / "adapters" / f"{name}.safetensors")

    losses_whole, whole = final("whole")
    losses_killed, killed = final("killed")
    assert len(losses_whole) == 8 and losses_killed == losses_whole
    for a, b in zip(whole.sets, killed.sets):
        assert a.name == b.name and a.weights.keys() == b.weights.keys()
        for layer in a.weights:
            assert torch.equal(a.weights[layer][0], b.weights[layer][0])
            assert torch.equal(a.weights[layer][1], b.weights[layer][1])
    assert len(whole.noise_prior) == len(killed.noise_prior)
    assert all(torch.equal(x, y) for x, y in zip(whole.noise_prior, killed.noise_prior))


def test_an_interrupt_while_the_idle_encoders_are_set_aside_leaves_the_model_whole(unet3d_model, tmp_path,
                                                                                  monkeypatch):
    """Ctrl-C (or a failing write) while the text encoder and VAE are being set aside for the loop: what was
    already freed is put back before the interrupt propagates, so the model ComfyUI caches still encodes."""
    import safetensors.torch

    from motion_core.offload import ComponentStash

    before = {n: t.clone() for n, t in unet3d_model.text_encoder.state_dict().items()}
    real = safetensors.torch.save_file

    def vae_interrupted(tensors, filename, metadata=None):
        if "vae" in str(filename):
            raise KeyboardInterrupt
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", vae_interrupted)
    with pytest.raises(KeyboardInterrupt):
        ComponentStash(unet3d_model, folder=tmp_path).release()
    after = unet3d_model.text_encoder.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert unet3d_model.encode_prompt(["a square"]).shape[0] == 1
