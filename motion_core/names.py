"""File names MotionKit makes from a name the user typed (a save name, an export file name, a CLI ``--out``).

A name is checked once, before any work starts, against every rule the files made from it must meet on
*every* platform -- so a workflow saved on Linux also runs on Windows:

* a plain name: no folder separators, no ``..``, not absolute, no drive letter, no control characters;
* nothing Windows refuses: the characters ``< > : " | ? *``, a trailing dot, and the device names it
  reserves (``CON``, ``PRN``, ``AUX``, ``NUL``, ``COM0``-``COM9``, ``LPT0``-``LPT9``, ``CONIN$``,
  ``CONOUT$``; any case, also with an extension such as ``nul.txt`` or trailing spaces before the dot);
* short enough: a file-system component holds at most 255 bytes (UTF-8 on Linux and macOS; Windows counts
  UTF-16 units, and 255 UTF-8 bytes are never more than 255 of those). The longest component MotionKit makes
  from a save name is the temporary file of a Wan 2.2 A14B export
  (``.<name>_high_noise.safetensors.<32 hex>.tmp``, see :data:`NAME_PATTERNS`), so a name may have at most
  :data:`MAX_NAME_BYTES` bytes.
"""

from __future__ import annotations

import os
import re

from .errors import InputError

__all__ = ["MAX_COMPONENT_BYTES", "MAX_NAME_BYTES", "NAME_PATTERNS", "check_file_name", "check_output_path",
           "windows_problem"]

#: bytes in one path component on the file systems MotionKit runs on (ext4, APFS, NTFS: 255)
MAX_COMPONENT_BYTES = 255

#: every file or folder name a run or an export makes from a save name ``{name}`` (without ``.safetensors``),
#: with the longest variable parts filled in: the run folder ``output/motionkit_training/<name>`` (what lives
#: inside it does not repeat the name: checkpoints ``checkpoint-000001``, ``.checkpoint-000001.partial``, the
#: run lock ``training.lock`` / ``.training.lock.<8 hex>.stale``, previews ``step-000050_0.mp4``,
#: ``loss_curve.png``), the adapter file, the atomic temporary of every safetensors write
#: (``write_safetensors``: a uuid4 hex; a motion representation's ``mkstemp``: 8 characters), the expert pair
#: of a Wan 2.2 A14B export and their temporaries, the best checkpoint's adapter (``select_best``).
NAME_PATTERNS = (
    "{name}",
    "{name}.safetensors",
    ".{name}.safetensors.{uuid}.tmp",
    ".{name}.safetensors.{rand8}.tmp",
    "{name}_best.safetensors",
    ".{name}_best.safetensors.{uuid}.tmp",
    "{name}_high_noise.safetensors",
    "{name}_low_noise.safetensors",
    ".{name}_high_noise.safetensors.{uuid}.tmp",
    ".{name}_low_noise.safetensors.{uuid}.tmp",
)
_FILL = {"uuid": "0" * 32, "rand8": "0" * 8}
_LONGEST = max(NAME_PATTERNS, key=lambda p: len(p.format(name="", **_FILL).encode("utf-8")))
#: the most bytes (UTF-8) a save name may have so that every name in :data:`NAME_PATTERNS` fits a component
MAX_NAME_BYTES = MAX_COMPONENT_BYTES - len(_LONGEST.format(name="", **_FILL).encode("utf-8"))

_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{port}{n}" for port in ("COM", "LPT") for n in "0123456789\u00b9\u00b2\u00b3"})
_WINDOWS_CHARACTERS = '<>:"|?*'


def windows_problem(component: str) -> str | None:
    """Why Windows cannot create a file or folder named ``component`` (None when it can)."""
    bad = sorted({c for c in component if c in _WINDOWS_CHARACTERS})
    if bad:
        return (f"contains {' '.join(repr(c) for c in bad)}, which Windows does not allow in file names; use "
                "letters, digits, spaces, '-', '_' and '.'")
    if component.endswith((".", " ")):
        return "ends with a dot or a space, which Windows removes from file names; remove it"
    device = component.split(".", 1)[0].rstrip(" ").upper()
    if device in _WINDOWS_DEVICES:
        return (f"is a device name reserved by Windows ({device}), so the file could not be created or opened "
                f"there (a workflow using it would fail on Windows); choose another name, e.g. "
                f"'{component.split('.', 1)[0].strip()}_motion'")
    return None


def check_file_name(name: object, what: str = "File name") -> str:
    """``name`` stripped of surrounding spaces when every file made from it can be written on every platform
    (see the module docstring); :class:`InputError` saying what is wrong and what to do otherwise."""
    if not isinstance(name, str):
        raise InputError(f"{what} must be text, got {type(name).__name__}.")
    stripped = name.strip()
    if not stripped or stripped in (".", ".."):
        raise InputError(f"{what} {name!r} is empty or not a file name. Use a plain name like 'my_motion'.")
    if "/" in stripped or "\\" in stripped or ".." in stripped:
        raise InputError(f"{what} {name!r} must not contain '/', '\\' or '..': give a plain name, the file goes "
                         "into MotionKit's own folder.")
    if os.path.isabs(stripped) or (len(stripped) > 1 and stripped[1] == ":"):
        raise InputError(f"{what} {name!r} must not be an absolute path or start with a drive letter: give a "
                         "plain name.")
    if any(ord(c) < 32 or ord(c) == 127 for c in stripped):
        raise InputError(f"{what} {name!r} contains control characters (a line break, a tab...): remove them.")
    problem = windows_problem(stripped)
    if problem:
        raise InputError(f"{what} {name!r} {problem}.")
    stem = re.sub(r"\.safetensors$", "", stripped, flags=re.IGNORECASE)
    size = len(stem.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        longest = _LONGEST.format(name="<name>", uuid="<32 hex>", rand8="<8>")
        raise InputError(
            f"{what} is too long: {size} bytes in UTF-8 ({len(stem)} characters; letters outside ASCII take 2-4 "
            f"bytes each). At most {MAX_NAME_BYTES} bytes are allowed, because the files MotionKit makes from it "
            f"(the longest is '{longest}') must fit the {MAX_COMPONENT_BYTES}-byte limit of a file name. Give a "
            f"shorter name.")
    return stripped


def check_output_path(path: str | os.PathLike, what: str, extra_bytes: int) -> None:
    """InputError when the last component of an output ``path`` given by the user cannot be written on every
    platform once MotionKit adds up to ``extra_bytes`` bytes to it (a ``_<n>`` index, an atomic temporary's
    ``.<name>.<random>.tmp``). Folders above it are the user's own and are not checked."""
    text = os.fspath(path)
    if not text.strip() or "\x00" in text:
        raise InputError(f"{what} {text!r} is empty or not a path.")
    component = os.path.basename(text.rstrip("/\\")) or text
    problem = windows_problem(component)
    if problem:
        raise InputError(f"{what} {text!r}: the file name {problem}.")
    size = len(component.encode("utf-8"))
    if size + extra_bytes > MAX_COMPONENT_BYTES:
        raise InputError(
            f"{what} {text!r}: the file name is too long ({size} bytes in UTF-8; with the {extra_bytes} bytes "
            f"MotionKit adds while writing it, at most {MAX_COMPONENT_BYTES - extra_bytes} fit the "
            f"{MAX_COMPONENT_BYTES}-byte limit of a file name). Give a shorter name.")
