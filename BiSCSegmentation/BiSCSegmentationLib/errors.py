"""One error hierarchy for everything a user can be told about, with the exit code and the message it maps to.

Every error the product raises on purpose derives from :class:`BiSCError`. Its message is written for the
user (what was wrong, what to do) and is shown as it is by the command line (``error: ...``) and by the 3D
Slicer module. ``kind`` sorts errors into what the user must do about them; ``exit_code`` is the command
line's status. Errors cross the worker process as :func:`error_record` dicts, never as class-name strings
to be matched.

    BiSCError
    +-- InputError (kind "input", exit 2): a CT, label map, output path, option or setting that cannot be used
    |   +-- ROIError (kind "roi"): an ROI outside the CT, of no size, or larger than any kidney
    |   +-- ResourceError (kind "resources"): the work would not fit in memory
    +-- ModelError (kind "model", exit 2): a model file that is missing, corrupt or of the wrong kind
    +-- NoKidneyFound (kind "no_kidney", exit 3): the rough stage found nothing kidney-like
    +-- Cancelled (kind "cancelled", exit 130): the user asked to stop; nothing was written

The subclasses that modules define (``VolumeError``, ``ModelFileError``, ...) add detail, not new kinds.
"""
from __future__ import annotations

from typing import Dict, Optional

EXIT_USAGE = 2
EXIT_NO_KIDNEY = 3
EXIT_CANCELLED = 130

# the kinds of :func:`error_record`: the hierarchy's, then what other exceptions are sorted into ("process":
# a worker process that ended without saying why, set by the Slicer module's worker)
KINDS = ("input", "roi", "resources", "model", "no_kidney", "cancelled", "memory", "missing_dependency", "process",
         "internal")
USER_KINDS = ("input", "roi", "resources", "model")  # the message is the whole story: show it as it is


class BiSCError(Exception):
    """Base of every error a user is meant to read."""

    kind = "input"
    exit_code = EXIT_USAGE


class InputError(BiSCError, ValueError):
    """Input that cannot be used: a file, an option, a setting, an output path."""


class ROIError(InputError):
    """An ROI that cannot be segmented (outside the CT, empty, larger than any kidney, unreadable)."""

    kind = "roi"


class ResourceError(InputError):
    """The work would need more memory than the machine has."""

    kind = "resources"


class ModelError(BiSCError, ValueError):
    """A model file that cannot be used."""

    kind = "model"


class NoKidneyFound(BiSCError, RuntimeError):
    """The rough stage found no kidney-sized structure."""

    kind = "no_kidney"
    exit_code = EXIT_NO_KIDNEY

    def __init__(self, message: Optional[str] = None):
        super().__init__(message or (
            "No kidney was found by the rough stage. Add an ROI by hand around each kidney (in 3D Slicer: add an "
            "ROI and press Segment; on the command line: write an ROI file as --save-rois does and run again "
            "with --rois FILE)."))


class Cancelled(BiSCError, RuntimeError):
    """The caller asked to stop; nothing was written."""

    kind = "cancelled"
    exit_code = EXIT_CANCELLED


def error_record(exc: BaseException) -> Dict[str, str]:
    """How an error crosses a process or thread boundary: ``kind`` (one of :data:`KINDS`), ``message`` (for the
    user when ``kind`` is not "internal") and ``type`` (the class name, for logs only)."""
    if isinstance(exc, BiSCError):
        kind = exc.kind
    elif isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        kind = "memory"
    elif isinstance(exc, KeyboardInterrupt):
        kind = "cancelled"
    elif isinstance(exc, ImportError):
        kind = "missing_dependency"
    elif isinstance(exc, FileNotFoundError):  # a file the user named (a model, a CT) is not there
        kind = "input"
    else:
        kind = "internal"
    return {"kind": kind, "message": str(exc), "type": type(exc).__name__}


__all__ = ["BiSCError", "InputError", "ROIError", "ResourceError", "ModelError", "NoKidneyFound", "Cancelled",
           "error_record", "KINDS", "USER_KINDS", "EXIT_USAGE", "EXIT_NO_KIDNEY", "EXIT_CANCELLED"]
