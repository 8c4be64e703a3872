"""Writing evaluation reports: JSON and PNG, each atomically (a temporary in the target folder, then
``os.replace``), a full disk or an unwritable folder reported as a StorageError that names the folder."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["png_bytes", "write_atomic", "write_json", "write_png"]


def write_atomic(path: str | os.PathLike, data: bytes, *, what: str) -> Path:
    from ..storage import write_atomically

    return write_atomically(path, lambda tmp: tmp.write_bytes(data), what=what, needed=len(data))


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
