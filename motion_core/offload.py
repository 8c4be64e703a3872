"""Components a training loop does not use leave the device and RAM while it runs.

After the clips are cached, a training step reads only cached latents and prompt embeddings: the text
encoder and the VAE sit idle (on ZeroScope about 0.8 GB in fp16; on Wan the UMT5-XXL encoder alone is
~11 GB in bf16). :class:`ComponentStash` writes their tensors once to a temporary safetensors file and frees
them (parameters and buffers keep their objects, their storage becomes empty), then loads them back --
memory-mapped, straight to their device and dtype -- for a preview, and for good when the run ends. The
modules themselves are never replaced, so every reference to them (a MOTION_MODEL held by ComfyUI, a
pipeline) stays valid, and a restored module is bit-identical to the one that was stashed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["ComponentStash", "RELEASABLE"]

#: the components training never runs between its cache and its previews
RELEASABLE = ("text_encoder", "text_encoder_2", "vae")


def _tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every distinct parameter and buffer of ``module`` by one of its names (shared tensors once)."""
    seen: set[int] = set()
    out: list[tuple[str, torch.Tensor]] = []
    for name, t in list(module.named_parameters(remove_duplicate=False)) + list(
            module.named_buffers(remove_duplicate=False)):
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        out.append((name, t))
    return out


class ComponentStash:
    """Release the idle components of a model (see the module docstring). ``names``: which components
    (attributes of ``model``); the ones that are missing, None, already empty or on the meta device are
    skipped."""

    def __init__(self, model: Any, names: Sequence[str] = RELEASABLE, folder: str | os.PathLike | None = None) -> None:
        self.model = model
        self.names = [n for n in names if isinstance(getattr(model, n, None), nn.Module)]
        self.folder = Path(folder) if folder is not None else None
        self._dir: Path | None = None
        self._held: dict[str, list[tuple[torch.Tensor, torch.device, torch.dtype, torch.Size]]] = {}
        self.released_bytes = 0

    @property
    def released(self) -> list[str]:
        return list(self._held)

    def release(self) -> list[str]:
        """Free the components' tensors (written to a temporary file first); returns the released names.
        Interrupted (Ctrl-C, a failing write), it puts back what it had already freed before raising: a model
        that ComfyUI caches between prompts must never be left with empty components."""
        try:
            self._release()
        except BaseException:
            self.restore()
            raise
        if self._held and torch.cuda.is_available():
            torch.cuda.empty_cache()
        self._trim()
        return self.released

    def _release(self) -> None:
        from safetensors.torch import save_file

        for name in self.names:
            if name in self._held:
                continue
            module = getattr(self.model, name)
            tensors = _tensors(module)
            if not tensors or any(t.device.type == "meta" or t.numel() == 0 for _, t in tensors):
                continue
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix="motionkit-stash-", dir=self.folder))
            path = self._dir / f"{name}.safetensors"
            try:
                if not path.exists():  # frozen weights: the file of an earlier release still holds them
                    save_file({f"{i}": t.detach().to("cpu").contiguous() for i, (_, t) in enumerate(tensors)}, str(path))
            except (OSError, RuntimeError) as exc:  # a full temp disk: keep the component where it is
                log.warning("could not set the %s aside while training (%s); it stays loaded.", name, exc)
                path.unlink(missing_ok=True)
                continue
            held = self._held[name] = []  # registered first: restore() finds every tensor freed so far
            for _, t in tensors:
                held.append((t, t.device, t.dtype, t.shape))
                t.data = torch.empty(0, device=t.device, dtype=t.dtype)
                self.released_bytes += int(torch.Size(held[-1][3]).numel()) * t.element_size()

    def restore(self, keep_file: bool = False) -> None:
        """Load every released component back onto its device, in its dtype (bit-identical); ``keep_file``:
        for a release again soon (a preview), without writing the file a second time."""
        from safetensors import safe_open

        for name in list(self._held):
            path = self._dir / f"{name}.safetensors"
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for i, (t, device, dtype, shape) in enumerate(self._held[name]):
                    t.data = f.get_tensor(str(i)).to(device=device, dtype=dtype).reshape(shape)
            del self._held[name]  # only once loaded: an interrupted restore can be run again
        if self._dir is not None and not keep_file:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    @contextlib.contextmanager
    def back(self) -> Iterator[None]:
        """The released components are loaded while inside (a preview), and released again after."""
        names = self.released
        if not names:
            yield
            return
        self.restore(keep_file=True)
        try:
            yield
        finally:
            self.release()

    @staticmethod
    def _trim() -> None:
        """Hand freed heap pages back to the OS (glibc keeps them otherwise, and RSS would not drop)."""
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass

    def __enter__(self) -> "ComponentStash":
        self.release()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()
