"""One module per paper: its config, adapters, loss or guidance, and how it is applied at inference.

Training methods register themselves with :func:`register_method` (a decorator on their
:class:`~motion_core.training.TrainingMethod` subclass); :func:`get_method` and :func:`method_names` import
every module of this package first, so adding a method is adding a file here -- no list to edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from ..training import TrainingMethod

__all__ = ["METHODS", "create_method", "get_method", "method_names", "register_method"]

#: method name (as on the CLI: ``--method <name>``) -> TrainingMethod subclass
METHODS: dict[str, type] = {}
_ALIASES: dict[str, str] = {}

T = TypeVar("T", bound=type)


def register_method(name: str, *aliases: str) -> Callable[[T], T]:
    """Class decorator: make a TrainingMethod subclass available as ``name`` (and ``aliases``)."""

    def decorate(cls: T) -> T:
        METHODS[name] = cls
        for alias in aliases:
            _ALIASES[alias] = name
        return cls

    return decorate


def _import_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def method_names() -> list[str]:
    """Names of every registered training method."""
    _import_all()
    return sorted(METHODS)


def get_method(name: str) -> type:
    """The TrainingMethod class registered as ``name`` (case, ``-`` and ``_`` insensitive)."""
    _import_all()
    key = _normalise(name)
    key = _ALIASES.get(key, key)
    for registered, cls in METHODS.items():
        if _normalise(registered) == key:
            return cls
    raise InputError(f"Unknown training method {name!r}. Available: {', '.join(sorted(METHODS)) or 'none'}.")


def create_method(name: str, **options: Any) -> "TrainingMethod":
    """An instance of method ``name`` whose config fields are set from ``options`` (unknown keys -> InputError)."""
    cls = get_method(name)
    config_cls = getattr(cls, "config_class", None)
    if config_cls is None:
        if options:
            raise InputError(f"{name} takes no options, got {sorted(options)}.")
        return cls()
    import dataclasses

    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise InputError(f"Unknown option(s) {unknown} for {name}; it accepts: {', '.join(sorted(fields))}.")
    return cls(config_cls(**options))
