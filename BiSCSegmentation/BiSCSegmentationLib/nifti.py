"""Reading rescaled NIfTI CTs slab by slab (issue #17).

Many CTs are stored as integers with a rescale in the header (e.g. uint16 with ``scl_inter`` -1024). SimpleITK
then holds the file's integers, a float32 copy and a rescaled float32 copy at once: reading an 1100 x 512 x 512
such CT peaked at 2.75 GiB for a 1.1 GiB image, over the rest of the run's peak (measured with VmHWM,
benchmarks/benchmark_memory.py). :func:`read_rescaled` gives the same array, float32 with the same
values, holding only it: the header's geometry still comes from SimpleITK (``ReadImageInformation`` reads no
voxels), the voxels are read and rescaled a slab at a time.

Only the cases where float32 holds every rescaled value exactly take this path (integer voxels, integer slope
and intercept, results under 2^24), so that the values cannot differ from SimpleITK's in the last bit; any other
file (and every non-rescaled one) is read by SimpleITK as before (:func:`streamable`).
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

# NIfTI-1 datatype codes of integer voxels
_INTEGER_TYPES = {2: "u1", 4: "i2", 8: "i4", 256: "i1", 512: "u2", 768: "u4"}
_EXACT = float(1 << 24)  # float32 holds every integer up to this exactly
SLAB_BYTES = 1 << 24


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def streamable(path) -> Optional[Tuple[str, np.dtype, Tuple[int, int, int], int, float, float]]:
    """(byte order, file dtype, shape (z, y, x), voxel offset, slope, intercept) of a single-file NIfTI-1 that
    SimpleITK would rescale to float32 and that :func:`read_rescaled_nifti` reads exactly; else None."""
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return None
    try:
        with _open(path) as f:
            header = f.read(348)
    except (OSError, EOFError):
        return None  # SimpleITK says what is wrong with it
    if len(header) < 348:
        return None
    for order in "<>":
        if struct.unpack(order + "i", header[:4])[0] == 348:
            break
    else:
        return None  # NIfTI-2 or not NIfTI
    dim = struct.unpack(order + "8h", header[40:56])
    datatype = struct.unpack(order + "h", header[70:72])[0]
    vox_offset, slope, inter = struct.unpack(order + "3f", header[108:120])
    if header[344:348] not in (b"n+1\x00",) or dim[0] < 3 or any(d != 1 for d in dim[4:dim[0] + 1]):
        return None
    if datatype not in _INTEGER_TYPES or min(dim[1:4]) < 1:
        return None
    if not (np.isfinite(slope) and np.isfinite(inter)) or slope == 0 or (slope == 1 and inter == 0):
        return None  # no rescale: SimpleITK keeps the file's integers (one buffer)
    dtype = np.dtype(order + _INTEGER_TYPES[datatype])
    info = np.iinfo(dtype)
    ends = [info.min * slope + inter, info.max * slope + inter]
    if slope != round(slope) or inter != round(inter) or max(abs(e) for e in ends) >= _EXACT:
        return None
    return order, dtype, (int(dim[3]), int(dim[2]), int(dim[1])), int(vox_offset), float(slope), float(inter)


def read_rescaled(path):
    """The ``Volume`` SimpleITK would read from ``path`` when :func:`streamable` accepts it (else None), holding
    only the float32 voxels."""
    import SimpleITK as sitk

    from .volume import Volume, VolumeError

    layout = streamable(path)
    if layout is None:
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1 or \
            tuple(reader.GetSize()) != tuple(layout[2][::-1]) or reader.GetPixelID() != sitk.sitkFloat32:
        return None
    try:
        array = _rescaled_voxels(path, layout)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise VolumeError(f"{path}: cannot read this image ({exc}); is the file complete?") from exc
    return Volume(array, reader.GetSpacing(), reader.GetOrigin(), np.array(reader.GetDirection()).reshape(3, 3))


def _rescaled_voxels(path, layout) -> np.ndarray:
    """The voxels ``[k, j, i]`` of a file :func:`streamable` accepted (its ``layout``), rescaled to float32 a slab
    at a time."""
    _, dtype, shape, offset, slope, inter = layout
    out = np.empty(shape, np.float32)
    plane = shape[1] * shape[2]
    slab = max(1, SLAB_BYTES // (plane * dtype.itemsize))
    raw = np.empty(slab * plane, dtype)
    with _open(Path(path)) as f:
        skip = max(offset, 352) - 348  # a single-file NIfTI's voxels start after the 4 extension flag bytes
        if len(f.read(348 + skip)) != 348 + skip:
            raise ValueError("the file ends inside its header")
        for z0 in range(0, shape[0], slab):
            n = min(slab, shape[0] - z0) * plane
            got = f.readinto(memoryview(raw[:n]).cast("B"))
            if got != n * dtype.itemsize:
                raise ValueError(f"the voxels end at slice {z0 + got // (plane * dtype.itemsize)} of {shape[0]}")
            block = out[z0:z0 + n // plane].reshape(-1)
            np.multiply(raw[:n], np.float32(slope), out=block, dtype=np.float32)
            block += np.float32(inter)
    return out


__all__ = ["streamable", "read_rescaled"]
