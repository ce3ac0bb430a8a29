"""Bounded memory (issues #17, #22): refuse, before allocating, work that this machine cannot hold or that no
kidney needs, and turn an allocation failure of any library into one clear error.

Without these checks a 10 x 10 x 10 m ROI made the fine stage ask for 24 GB and the system kill the process,
and a header with 100 mm slices made the rough stage ask torch for 26.6 GB (an uncaught RuntimeError). Now:

- sizes no patient has are refused outright (``roi.MAX_ROI_SIDE_MM`` per ROI side, :data:`MAX_ROIS` ROIs,
  :data:`MAX_GRID_VOXELS` per network grid), whatever the machine; a wrong spacing or a scan longer than a
  body is refused earlier, by the input checks (``quality.check_input``);
- the memory a stage will allocate is estimated from the grids it will use (:func:`sliding_window_bytes`,
  :func:`rough_stage_bytes`, :func:`fine_stage_bytes`) and compared with the memory this machine has
  available now (:func:`available_memory_bytes`; when it cannot be read, this check is skipped). The
  estimates err high: for an 1100 x 512 x 512 CT with two kidney ROIs, rough 0.7 and fine 0.9 GiB, where the
  whole run's RSS grows by under 0.3 and 0.5 GiB in those stages (benchmarks/benchmark_memory.py --profile);
- :func:`allocation_guard` turns MemoryError, torch's and OpenVINO's allocation RuntimeErrors and SimpleITK's
  into :class:`ResourceLimitError`, a ValueError with a one-line message (the command line exits 2).
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from .errors import ResourceError

MAX_ROIS = 4             # two kidneys, each at most split in two by a person; more is a mistake, not more kidney
MAX_GRID_VOXELS = 1 << 30  # no stage's grid needs a billion voxels (a 400 mm ROI at 0.78 x 0.78 x 3 mm: 37 M)
GIB = float(1 << 30)


class ResourceLimitError(ResourceError):
    """The work would exceed this machine's memory or a plausible size; the message says which and why."""


def _size(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / (1 << 20):.0f} MiB"


# ------------------------------------------------------------------------------------------- available memory
def _meminfo_available() -> Optional[int]:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def _cgroup_available() -> Optional[int]:
    """What a container's memory limit leaves (cgroup v2, else v1); None without a limit."""
    v1 = "/sys/fs/cgroup/memory/memory."
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         (v1 + "limit_in_bytes", v1 + "usage_in_bytes")):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text == "max" or int(text) >= 1 << 60:  # v1 writes a huge number for "no limit"
            return None
        return max(0, int(text) - int(Path(usage).read_text().strip()))
    return None


def _sysconf_available() -> Optional[int]:
    return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))


def _windows_available() -> Optional[int]:
    if sys.platform != "win32":
        return None
    import ctypes

    class MemoryStatus(ctypes.Structure):
        _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                    ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                    ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                    ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                    ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

    status = MemoryStatus()
    status.dwLength = ctypes.sizeof(MemoryStatus)
    return int(status.ullAvailPhys) if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)) else None


def _read(reader) -> Optional[int]:
    try:
        value = reader()
    except Exception:  # noqa: BLE001 - unreadable on this system: no figure, never a crash
        return None
    return value if value is not None and value > 0 else None


def available_memory_bytes() -> Optional[int]:
    """Memory this process can still allocate without swapping, in bytes, or None when it cannot be read.

    Linux: MemAvailable (free plus reclaimable cache; MemFree alone would refuse runs that fit), capped by
    the container's cgroup limit; Windows: GlobalMemoryStatusEx; elsewhere free pages (sysconf) where they
    exist (not on macOS: None there, and only the size limits apply)."""
    first = _read(_meminfo_available) or _read(_windows_available) or _read(_sysconf_available)
    cgroup = _read(_cgroup_available)
    values = [v for v in (first, cgroup) if v is not None]
    return min(values) if values else None


def check_memory(need_bytes: float, what: str) -> None:
    """Refuse when ``what`` needs more than the available memory (no check when it cannot be read)."""
    available = available_memory_bytes()
    if available is not None and need_bytes > available:
        raise ResourceLimitError(
            f"{what} needs about {_size(need_bytes)} of memory and only {_size(available)} is available on this "
            f"machine: nothing was done; close other programs, use a machine with more memory, or make the "
            f"image or ROIs smaller")


def check_grid(shape: Sequence[int], what: str) -> None:
    """Refuse a network grid of more than :data:`MAX_GRID_VOXELS` voxels (no plausible input makes one)."""
    n = int(np.prod([int(s) for s in shape], dtype=np.float64))
    if n > MAX_GRID_VOXELS:
        raise ResourceLimitError(
            f"{what} would be {' x '.join(str(int(s)) for s in shape)} = {n / 1e9:.1f} billion voxels; at most "
            f"{MAX_GRID_VOXELS / 1e9:.1f} billion fit any kidney: check the image's voxel spacing and the ROIs")


# ------------------------------------------------------------------------------------------------ estimates
def sliding_window_bytes(shape: Sequence[int], model) -> float:
    """Peak bytes of ``cascade.sliding_window`` on a (Z, Y, X) grid, its input included: the resampled and
    normalised image, the padded copy, the class accumulator, weights and result, and one window's network
    activations (both SC-UNet decoders, every level, ~6 tensors of the first width at full size)."""
    div = model.config.divisor
    padded = [max(div, -(-int(n) // div) * div) for n in shape]
    window = [min(int(w), p) for w, p in zip(model.inference_window, padded)]
    n, w = float(np.prod(padded)), float(np.prod(window))
    classes = model.config.num_classes
    tiled = any(p > win for p, win in zip(padded, window))
    arrays = 4 * n * (3 + (2 * classes + 1 if tiled else classes))
    return arrays + 4 * w * model.config.widths[0] * 6


def rough_stage_bytes(in_shape: Sequence[int], grid_shape: Sequence[int], model) -> float:
    """Peak bytes the rough stage adds for a canonical CT of ``in_shape`` sampled onto ``grid_shape``: the
    in-plane pass of the resampling (input slices at the grid's in-plane size, twice while joined), the
    sliding window, and the labels."""
    inplane = 8.0 * in_shape[0] * grid_shape[1] * grid_shape[2]
    return inplane + sliding_window_bytes(grid_shape, model) + float(np.prod(grid_shape))


def fine_stage_bytes(grids: Sequence[Sequence[int]], boxes: Sequence[Sequence[int]], out_voxels: int, model,
                     case_steps: bool) -> float:
    """Peak bytes the fine stage adds: the uint8 label map (``out_voxels``), then one ROI at a time its fine
    ``grids`` shape's sliding window and, on its CT ``boxes`` (voxels of the CT it covers), two restored
    float32 difference maps with the resampling's intermediates (~24 bytes a voxel), labels and island
    search (~6); with whole-case steps also the kept maps (2 per box voxel) and the pasted maps and
    component search over the union box (bounded here by the sum of the boxes, ~14 per voxel)."""
    per_roi = [sliding_window_bytes(g, model) + 4.0 * 2 * float(np.prod(g)) + 30.0 * float(np.prod(b))
               for g, b in zip(grids, boxes)]
    kept = sum(float(np.prod(b)) for b in boxes) if case_steps else 0.0
    return float(out_voxels) + max(per_roi, default=0.0) + (2 + 14) * kept


def check_rough_stage(canon, grid_shape: Sequence[int], model) -> None:
    """Before the rough stage allocates: a plausible grid, and the memory it needs."""
    check_grid(grid_shape, "the rough stage's grid")
    check_memory(rough_stage_bytes(canon.array.shape, grid_shape, model), "the rough stage")


def check_fine_stage(rois: Sequence, grid_of: Callable, out_voxels: int, model, case_steps: bool) -> None:
    """Before the fine stage allocates: at most :data:`MAX_ROIS` ROIs, plausible fine grids (``grid_of(roi)``
    gives ``cascade.fine_grid``'s (axis maps, CT box)), and the memory it needs."""
    if len(rois) > MAX_ROIS:
        raise ResourceLimitError(
            f"{len(rois)} ROIs were given; at most {MAX_ROIS} are taken (one box around each kidney; "
            f"ROIs inside another are left out by themselves): delete the extra ROIs")
    grids, boxes = [], []
    for roi in rois:
        maps, box = grid_of(roi)
        grids.append([m.n_out for m in maps])
        boxes.append([b.stop - b.start for b in box])
        check_grid(grids[-1], f"the fine grid of {roi.name}")
    check_memory(fine_stage_bytes(grids, boxes, out_voxels, model, case_steps), "the fine stage")


# ------------------------------------------------------------------------------------------ allocation failures
_ALLOCATION = re.compile(r"alloc|out of memory|not enough memory|memory exhausted|cannot allocate", re.I)


def is_allocation_failure(exc: BaseException) -> bool:
    """MemoryError, or an error of torch, OpenVINO or SimpleITK that says an allocation failed."""
    if isinstance(exc, MemoryError):
        return True
    module = type(exc).__module__ or ""
    library = isinstance(exc, RuntimeError) or module.split(".")[0] in ("openvino", "SimpleITK", "torch")
    return library and bool(_ALLOCATION.search(str(exc)))


@contextlib.contextmanager
def allocation_guard(what: str) -> Iterator[None]:
    """Run the block; an allocation failure inside it becomes :class:`ResourceLimitError` naming ``what``."""
    try:
        yield
    except ResourceLimitError:
        raise
    except Exception as exc:  # MemoryError is an Exception too
        if not is_allocation_failure(exc):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ResourceLimitError(
            f"{what} ran out of memory ({type(exc).__name__}: {first}); nothing was written; close other "
            f"programs, use a machine with more memory, or make the image or ROIs smaller") from exc


__all__ = ["ResourceLimitError", "MAX_ROIS", "MAX_GRID_VOXELS", "available_memory_bytes",
           "check_memory", "check_grid", "sliding_window_bytes", "rough_stage_bytes",
           "fine_stage_bytes", "check_rough_stage", "check_fine_stage", "is_allocation_failure", "allocation_guard"]
