"""Errors MotionKit raises on purpose.

Every error a user can cause (a bad file, a wrong size, an adapter for another model) is one of these,
with a message that says what was wrong and what to do. Nodes let them propagate: ComfyUI shows the
message in its error dialog; the CLI prints it without a traceback.
"""

from __future__ import annotations


class MotionKitError(Exception):
    """Base class of every error MotionKit raises deliberately."""


class InputError(MotionKitError, ValueError):
    """A value given by the user is unusable (size, frame count, name, range...)."""


class VideoError(InputError):
    """A video file is missing, unreadable, or has too few frames."""


class ModelLoadError(MotionKitError):
    """A model folder or hub id cannot be loaded (missing component, unknown family...)."""


class AdapterMismatchError(InputError):
    """An adapter/representation was made for another family, base model, size or frame count."""


class TrainingError(MotionKitError):
    """Training cannot go on (non-finite loss several steps in a row, a resume from a foreign run...)."""


class Cancelled(MotionKitError):
    """The user cancelled a long job between two steps; partial work has been kept where promised."""


class StorageError(MotionKitError, OSError):
    """A file cannot be written: the disk is full, or the folder is not writable."""
