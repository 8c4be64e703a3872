"""MOTION_MODEL: a loaded video model plus what to do with it when sampling.

Model patching is a chain, as with ComfyUI's LoRA loaders: an *apply* step returns a new
:class:`MotionModel` that shares the (frozen) base weights with its input and carries one more adapter,
guidance or noise prior. Nothing is injected into the denoiser until the sampler runs; the sampler
activates everything for the duration of one sampling run and restores the base model afterwards, so
two branches of a graph that share a base model never see each other's adapters.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ContextManager, Iterator, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .backbones.base import VideoModel
    from .sampling import SampleRequest, SamplingHook


@runtime_checkable
class ActiveAdapter(Protocol):
    """Something that patches the denoiser while a sampling run lasts (a LoRA set, motion embeddings).

    ``activate`` returns a context manager that installs the adapter on ``model`` and removes it on exit.
    An adapter that also needs per-step control (e.g. a strength schedule over timesteps) returns a
    :class:`~motion_core.sampling.SamplingHook` from ``sampling_hook``.
    """

    def activate(self, model: "VideoModel") -> ContextManager[Any]: ...

    def sampling_hook(self) -> "SamplingHook | None": ...


@runtime_checkable
class InitialLatents(Protocol):
    """Produces the starting latents of a run from the seeded noise (e.g. MotionDirector's noise prior)."""

    def initial_latents(self, noise: "torch.Tensor", model: "VideoModel",
                        request: "SampleRequest") -> "torch.Tensor": ...


@dataclass(frozen=True)
class MotionModel:
    """The MOTION_MODEL socket type: immutable; ``with_*`` return new objects."""

    base: "VideoModel"
    adapters: tuple[ActiveAdapter, ...] = ()
    hooks: tuple["SamplingHook", ...] = ()
    noise_prior: InitialLatents | None = None
    notes: tuple[str, ...] = field(default=())

    @classmethod
    def wrap(cls, model: "VideoModel | MotionModel") -> "MotionModel":
        return model if isinstance(model, MotionModel) else cls(base=model)

    def with_adapter(self, adapter: ActiveAdapter, note: str = "") -> "MotionModel":
        return replace(self, adapters=self.adapters + (adapter,), notes=self.notes + ((note,) if note else ()))

    def with_hook(self, hook: "SamplingHook", note: str = "") -> "MotionModel":
        return replace(self, hooks=self.hooks + (hook,), notes=self.notes + ((note,) if note else ()))

    def with_noise_prior(self, prior: InitialLatents | None, note: str = "") -> "MotionModel":
        return replace(self, noise_prior=prior, notes=self.notes + ((note,) if note else ()))

    def all_hooks(self) -> list["SamplingHook"]:
        hooks = [a.sampling_hook() for a in self.adapters]
        return [h for h in hooks if h is not None] + list(self.hooks)

    @contextlib.contextmanager
    def activated(self) -> Iterator["VideoModel"]:
        """Install every adapter on the shared base model for one run; always uninstalls."""
        with contextlib.ExitStack() as stack:
            for adapter in self.adapters:
                stack.enter_context(adapter.activate(self.base))
            yield self.base

    def __getattr__(self, name: str) -> Any:
        # Convenience: facts of the base model (family, size_multiple, ...) read through.
        if name.startswith("__") or name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)
