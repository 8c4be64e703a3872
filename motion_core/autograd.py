"""Where MotionKit needs gradients, and the one way it asks for them.

Training, the guidance energy of MotionClone and the activation-memory probe need autograd; everything
else (sampling, encoding, inversion) runs without it. A caller may have switched autograd off in two ways:

* ``torch.no_grad()`` -- MotionKit's ComfyUI nodes run under it (``nodes/host.py``), and so may a script.
  :func:`autograd` switches gradients back on for the block that needs them.
* ``torch.inference_mode()`` -- ComfyUI runs every prompt under it. ``torch.enable_grad()`` cannot leave it,
  and tensors made under it (model weights, latents) can never be saved for backward, so leaving it here
  would only move the failure deeper. :func:`autograd` refuses it with a message saying what to do; the
  nodes leave inference mode once, at their boundary, before any tensor is made.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .errors import MotionKitError


class InferenceModeError(MotionKitError, RuntimeError):
    """A part of MotionKit that needs gradients was called under ``torch.inference_mode()``."""


@contextlib.contextmanager
def autograd(what: str) -> Iterator[None]:
    """Gradients on for ``what`` (e.g. ``"training"``), also inside an outer ``torch.no_grad()``."""
    if torch.is_inference_mode_enabled():
        raise InferenceModeError(
            f"{what} needs autograd, but it was called under torch.inference_mode(), whose tensors autograd "
            "cannot use. Call it outside inference mode (with torch.inference_mode(False), and load the model "
            "there too); MotionKit's ComfyUI nodes do this for you (nodes/host.py: node_function).")
    with torch.enable_grad():
        yield
