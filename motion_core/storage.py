"""Writing files without surprises: free-space checks before long jobs, and a full disk or an unwritable
folder reported as a :class:`~motion_core.errors.StorageError` that names the folder, the bytes needed and
free, and what to do -- instead of ``SafetensorError: ... os error 28`` or ``av.error.OSError``.

Writers stay atomic (a temporary name in the target folder, then ``os.replace``): :func:`write_atomically`
is that writer for one file; this module also checks room beforehand and translates the failures.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from .errors import StorageError

__all__ = ["Need", "check_room", "check_writable", "describe_bytes", "free_bytes", "safetensors_bytes",
           "storage_error", "write_atomically"]

#: errno values that mean "the disk (or the quota) is full"
_FULL = {errno.ENOSPC, errno.EFBIG} | ({errno.EDQUOT} if hasattr(errno, "EDQUOT") else set())
#: errno values that mean "this folder cannot be written"
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


def describe_bytes(n: int | float) -> str:
    """``1.3 MiB (1351920 bytes)``: readable, and exact for tests and bug reports."""
    n = int(n)
    value, unit = float(n), "bytes"
    for name in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, name
    return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit} ({n} bytes)"


def existing_folder(path: str | os.PathLike) -> Path:
    """``path`` if it is a folder, else its nearest existing parent (a folder that will be created lives
    on that parent's disk)."""
    p = Path(path).expanduser().absolute()
    while not p.is_dir() and p.parent != p:
        p = p.parent
    return p


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the disk that holds (or will hold) ``path``; None when the filesystem does not say
    (total 0, e.g. some network or virtual filesystems) or cannot be asked."""
    try:
        usage = shutil.disk_usage(existing_folder(path))
    except OSError:
        return None
    return int(usage.free) if usage.total > 0 else None


def safetensors_bytes(tensors: Mapping[str, "object"], metadata: Mapping[str, str] | None = None) -> int:
    """Size of the ``.safetensors`` file of ``tensors`` (data + JSON header; the header within a few bytes)."""
    data = 0
    header = 8 + 2 + len(json.dumps({k: str(v) for k, v in (metadata or {}).items()})) + 16
    for name, t in tensors.items():
        data += int(t.numel()) * int(t.element_size())  # type: ignore[attr-defined]
        header += len(json.dumps(name)) + 40 + 8 * len(t.shape) + 2 * len(str(data))  # type: ignore[attr-defined]
    return data + header


def _errno_of(exc: BaseException) -> int | None:
    """The errno of a write failure: an OSError's, or the ``(os error N)`` safetensors puts in its text."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return int(exc.errno)
    text = str(exc)
    marker = "(os error "
    at = text.rfind(marker)
    if at >= 0:
        digits = text[at + len(marker):].split(")", 1)[0]
        if digits.isdigit():
            return int(digits)
    return None


def storage_error(exc: BaseException, target: str | os.PathLike, *, what: str, needed: int | None = None,
                  written: int | None = None, advice: str = "", name: bool = True) -> StorageError | None:
    """The :class:`StorageError` for a failed write of ``what`` to ``target`` (a file), or None when ``exc``
    is not a full disk or an unwritable folder (then the caller re-raises it as it is).

    ``needed``: bytes the file needs (None: unknown; then ``written``, the bytes written when the disk filled,
    is the lower bound reported); ``advice``: how to choose another folder, appended to
    "Free some space there" (e.g. ``"or give --run-dir another disk"``); ``name``: whether the message names
    the file (not for a probe file).
    """
    if isinstance(exc, StorageError):
        return exc
    code = _errno_of(exc)
    target = Path(target)
    folder = existing_folder(target.parent)
    tail = f", {advice}" if advice else ""
    file = f" {target.name}" if name else ""
    if code in _FULL:
        free = free_bytes(folder)
        need = (f"it needs about {describe_bytes(needed)}" if needed is not None
                else f"it needs more than the {describe_bytes(written)} it had written" if written
                else "it needs more room than is left")
        have = f"{describe_bytes(free)} is free" if free is not None else "the free space is unknown"
        return StorageError(f"The disk is full: cannot write {what}{file} in {folder} ({need}; {have}). "
                            f"Free some space there{tail}, then run it again. Nothing half-written was kept.")
    if code in _DENIED:
        reason = os.strerror(code)
        return StorageError(f"Cannot write {what}{file} in {folder}: {reason}. Make the folder writable"
                            f"{tail}, then run it again.")
    return None


def write_atomically(path: str | os.PathLike, write: Callable[[Path], object], *, what: str,
                     needed: int | None = None, advice: str = "") -> Path:
    """Write one file atomically: ``write(tmp)`` fills a temporary name in the target folder, which then replaces
    ``path`` (``os.replace``), so there is never a half file. ``needed`` bytes are checked free first; a full
    disk (before or while writing) or an unwritable folder raises a :class:`StorageError` naming the folder,
    ``what`` and the bytes written so far (``advice``: how to choose another folder), and an existing file at
    ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        free = free_bytes(path.parent)
        if needed is not None and free is not None and free < needed:
            raise OSError(errno.ENOSPC, f"{describe_bytes(free)} free, {describe_bytes(needed)} needed")
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            written = tmp.stat().st_size
        except OSError:  # never created (e.g. a read-only folder)
            written = None
        err = storage_error(exc, path, what=what, needed=needed, written=written, advice=advice)
        if err is not None:
            raise err from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def check_writable(folder: str | os.PathLike, *, what: str, advice: str = "") -> Path:
    """Create ``folder`` if needed and prove it is writable by creating and removing a probe file."""
    folder = Path(folder).expanduser()
    probe = folder / f".motionkit-write-test-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        err = storage_error(exc, probe, what=what, advice=advice, name=False)
        if err is None:
            reason = exc.strerror or str(exc)
            tail = f", {advice}" if advice else ""
            err = StorageError(f"Cannot write {what} in {folder}: {reason}. Check that it is a folder you can "
                               f"write{tail}.")
        raise err from exc
    return folder


@dataclass(frozen=True)
class Need:
    """``bytes`` that ``what`` will write into ``folder`` (``advice``: how to move it elsewhere, starting with
    "or ...")."""

    folder: Path
    bytes: int
    what: str
    advice: str = ""


def _device(folder: Path) -> int | None:
    try:
        return os.stat(existing_folder(folder)).st_dev
    except OSError:
        return None


def check_room(needs: Iterable[Need], *, job: str = "this run") -> None:
    """Refuse ``job`` before it starts when a folder is not writable or its disk lacks the room the needs
    add up to (needs on one disk are summed: the adapters folder and the run folder often share one)."""
    needs = [n for n in needs if n.bytes > 0]
    for n in needs:
        check_writable(n.folder, what=n.what, advice=n.advice)
    by_disk: dict[object, list[Need]] = {}
    for n in needs:
        dev = _device(n.folder)
        by_disk.setdefault(dev if dev is not None else n.folder, []).append(n)
    for group in by_disk.values():
        free = free_bytes(group[0].folder)
        total = sum(n.bytes for n in group)
        if free is None or free >= total:
            continue
        parts = "; ".join(f"{n.what} in {n.folder}: about {describe_bytes(n.bytes)}" for n in group)
        advice = "; ".join(dict.fromkeys(n.advice for n in group if n.advice))
        raise StorageError(
            f"Not enough free disk space for {job}: it needs about {describe_bytes(total)} ({parts}), and only "
            f"{describe_bytes(free)} is free on the disk of {existing_folder(group[0].folder)}. Free some space "
            f"there{', ' + advice if advice else ''}, then start it again.")

