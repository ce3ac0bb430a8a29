"""Which device the cascade runs on inside Slicer, and what the user is told about it.

- *auto*: a CUDA GPU when PyTorch can actually use it (a tiny allocation succeeds), else the CPU. Apple's MPS
  is used only where it has been tested with this cascade (``MPS_TESTED``, not yet): elsewhere *auto* takes
  the CPU and says why.
- *cuda* / *cpu*: as asked; *cuda* without a usable GPU is refused with a sentence saying what to choose.
- A PyTorch older than ``MIN_TORCH`` is refused with the way out (*Reinstall dependencies*).
- A GPU that runs out of memory during a run: the run is repeated once on the CPU, and the user is told
  (:data:`OOM_FALLBACK_NOTE`).

Called in the worker process (torch is imported there, never in Slicer's own process); torch is passed in,
so tests can give a stand-in.
"""
from __future__ import annotations

import re
from typing import List, Optional, Tuple

from BiSCSegmentationLib.errors import InputError

MIN_TORCH = (2, 0)
MPS_TESTED = False
CHOICES = ("auto", "cpu", "cuda")
OOM_FALLBACK_NOTE = ("The GPU ran out of memory, so this run was repeated on the CPU (slower). Close other GPU "
                     "programs, or choose device \"cpu\", to avoid the wait next time.")
MPS_NOTE = ("This Mac's GPU (MPS) is not used: the cascade has not been tested on it yet. The CPU is used "
            "instead.")


class DeviceError(InputError, RuntimeError):
    """The chosen device cannot be used; the message says what to do."""


def version_tuple(version: str) -> Tuple[int, ...]:
    """(2, 1, 0) for "2.1.0+cu121"; missing parts are 0."""
    parts = [int(m) for m in re.findall(r"\d+", str(version).split("+")[0])[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def torch_too_old(version: str) -> bool:
    return version_tuple(version)[:2] < MIN_TORCH


def too_old_message(version: str) -> str:
    return (f"The installed PyTorch {version} is too old for BiSCSegmentation (it needs "
            f"{'.'.join(map(str, MIN_TORCH))} or later). Press \"Reinstall dependencies\" in the module's "
            f"Input section, then restart Slicer.")


def cuda_usable(torch) -> bool:
    """CUDA is there and works: a tiny tensor can be put on the GPU (a driver too old for the build fails)."""
    try:
        if not torch.cuda.is_available() or torch.cuda.device_count() < 1:
            return False
        torch.zeros(1, device="cuda").add_(1)
        return True
    except Exception:  # noqa: BLE001 - any failure means: not usable
        return False


def mps_available(torch) -> bool:
    mps = getattr(getattr(torch, "backends", None), "mps", None)
    try:
        return bool(mps is not None and mps.is_available())
    except Exception:  # noqa: BLE001
        return False


def resolve(requested: Optional[str], torch) -> Tuple[str, List[str]]:
    """(device for torch, notes for the user) for the device chosen in the panel; raises DeviceError."""
    version = getattr(torch, "__version__", "0")
    if torch_too_old(version):
        raise DeviceError(too_old_message(version))
    requested = (requested or "auto").lower()
    notes: List[str] = []
    if requested == "cpu":
        return "cpu", notes
    if requested == "cuda":
        if not cuda_usable(torch):
            raise DeviceError("Device \"cuda\" was chosen, but PyTorch cannot use a CUDA GPU on this computer "
                              "(no NVIDIA GPU, a driver too old for the installed PyTorch, or a CPU-only "
                              "PyTorch). Choose device \"auto\" or \"cpu\".")
        return "cuda", notes
    if requested == "mps":
        if MPS_TESTED and mps_available(torch):
            return "mps", notes
        raise DeviceError("Apple MPS is not supported by BiSCSegmentation yet. Choose \"auto\" or \"cpu\".")
    if requested != "auto":
        raise DeviceError(f"Unknown device \"{requested}\": choose one of {', '.join(CHOICES)}.")
    if cuda_usable(torch):
        return "cuda", notes
    if mps_available(torch):
        if MPS_TESTED:
            return "mps", notes
        notes.append(MPS_NOTE)
    return "cpu", notes


def is_out_of_memory(exc: BaseException) -> bool:
    """A GPU out-of-memory error (torch.cuda.OutOfMemoryError, or the RuntimeError older torch raises), also
    when the cascade wrapped it (limits.allocation_guard raises ResourceLimitError from it)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc).lower()
        if type(exc).__name__ == "OutOfMemoryError" or (
                "out of memory" in text and ("cuda" in text or "gpu" in text or "hip" in text)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
