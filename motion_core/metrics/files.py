"""Writing evaluation reports: JSON and PNG, each atomically (a temporary in the target folder, then
``os.replace``), a full disk or an unwritable folder reported as a StorageError that names the folder."""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["png_bytes", "write_atomic", "write_json", "write_png"]


def write_atomic(path: str | os.PathLike, data: bytes, *, what: str) -> Path:
    from ..storage import describe_bytes, free_bytes, storage_error

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        free = free_bytes(path.parent)
        if free is not None and free < len(data):
            import errno

            raise OSError(errno.ENOSPC, f"{describe_bytes(free)} free, {describe_bytes(len(data))} needed")
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException as exc:
        err = storage_error(exc, path, what=what, needed=len(data))
        if err is not None:
            raise err from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def png_bytes(image: torch.Tensor) -> bytes:
    from PIL import Image

    arr = (image[0] if image.ndim == 4 else image).clamp(0, 1).numpy()
    buffer = io.BytesIO()
    Image.fromarray((arr * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: str | os.PathLike, image: torch.Tensor, *, what: str = "the report picture") -> Path:
    return write_atomic(path, png_bytes(image), what=what)


def write_json(path: str | os.PathLike, data: Any, *, what: str = "the report") -> Path:
    return write_atomic(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"), what=what)
