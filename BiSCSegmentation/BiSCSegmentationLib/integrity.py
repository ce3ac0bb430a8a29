"""Is an image file complete? ITK reads a truncated compressed file without complaint and fills the missing
voxels with zeros (a ``.nii.gz`` cut in half gave a CT whose lower half was 0 HU), so every file is checked
against its own header: the whole compressed stream must decompress, and the voxel data must be as long as
the header's size and type say. NIfTI, NRRD and MetaImage (.mha/.mhd) are checked; DICOM is read slice by
slice by GDCM, which reports damaged slices itself.
"""
from __future__ import annotations

import gzip
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from .volume import VolumeError

CHUNK = 1 << 22
_NRRD_TYPES = {"int8": 1, "uint8": 1, "uchar": 1, "signed char": 1, "unsigned char": 1, "short": 2, "int16": 2,
               "uint16": 2, "ushort": 2, "unsigned short": 2, "short int": 2, "int": 4, "int32": 4, "uint32": 4,
               "uint": 4, "unsigned int": 4, "float": 4, "double": 8, "int64": 8, "uint64": 8, "longlong": 8,
               "long long": 8, "unsigned long long": 8, "ulonglong": 8}
_META_TYPES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
               "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
               "MET_DOUBLE": 8}


class IncompleteFile(VolumeError):
    """The file is shorter than its header says, or its compressed data is damaged."""


def check_complete(path) -> None:
    """Raise :class:`IncompleteFile` when ``path`` (NIfTI, NRRD, MHA/MHD) holds less voxel data than its
    header describes or its compression stream is broken; other formats pass unchecked."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti(path, name.endswith(".gz"))
    elif name.endswith((".nrrd", ".nhdr")):
        _check_nrrd(path)
    elif name.endswith((".mha", ".mhd")):
        _check_meta(path)


def _stream_length(path: Path, offset: int = 0, compression: Optional[str] = None) -> int:
    """Bytes of data from ``offset`` on, decompressed; raises IncompleteFile when the stream ends early."""
    with open(path, "rb") as f:
        f.seek(offset)
        if compression is None:
            return os.fstat(f.fileno()).st_size - offset
        wbits = 47 if compression == "gzip" else 15  # 47: a gzip (or zlib) header
        d, total, pending = zlib.decompressobj(wbits), 0, b""
        while True:
            block = pending or f.read(CHUNK)
            pending = b""
            if not block:
                break
            try:
                total += len(d.decompress(block))
            except zlib.error as exc:
                raise IncompleteFile(f"{path}: the compressed data is damaged ({exc}); download or export the file "
                                     f"again") from None
            if d.eof:  # gzip files may hold several members one after another
                pending = d.unused_data or f.read(CHUNK)
                if not pending or compression != "gzip":
                    break
                d = zlib.decompressobj(wbits)
        total += len(d.flush())
        if not d.eof:
            raise IncompleteFile(f"{path}: the file is truncated (its compressed data ends early, after "
                                 f"{total} bytes of image data); download or export it again")
        return total


def _require(path: Path, have: int, need: int) -> None:
    if have < need:
        raise IncompleteFile(f"{path}: the file is truncated ({have} of the {need} bytes of image data its header "
                             f"describes); download or export it again")


def _check_nifti(path: Path, compressed: bool) -> None:
    size = path.stat().st_size
    if size == 0:
        raise IncompleteFile(f"{path}: the file is empty; download or export it again")
    with open(path, "rb") as f:
        magic = f.read(2)
    if compressed and magic != b"\x1f\x8b":
        return  # not gzip at all: ITK says it cannot read it
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as f:
            head = f.read(352)
    except (OSError, EOFError):
        head = b""
    if len(head) < 348:
        raise IncompleteFile(f"{path}: the file is truncated (shorter than a NIfTI header); download or export it "
                             f"again")
    for endian in "<>":
        if struct.unpack(endian + "i", head[:4])[0] == 348:
            break
    else:
        return  # NIfTI-2 or not NIfTI: leave it to ITK
    dims = struct.unpack(endian + "8h", head[40:56])
    bitpix = struct.unpack(endian + "h", head[72:74])[0]
    vox_offset = int(struct.unpack(endian + "f", head[108:112])[0])
    n = 1
    for d in dims[1:1 + max(0, min(7, dims[0]))]:
        n *= max(1, d)
    need = n * max(1, bitpix) // 8
    have = _stream_length(path, 0, "gzip" if compressed else None) - vox_offset
    _require(path, have, need)
    datatype = struct.unpack(endian + "h", head[70:72])[0]
    if datatype in _NIFTI_FLOATS:
        _refuse_non_finite_nifti(path, opener, vox_offset, np.dtype(endian + _NIFTI_FLOATS[datatype]))


_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _refuse_non_finite_nifti(path: Path, opener, offset: int, dtype) -> None:
    """ITK's NIfTI reader turns NaN into 0 without a word (NaN slices would become slices of water), so a
    floating-point NIfTI file is scanned for values that are not numbers."""
    bad = 0
    with opener(path, "rb") as f:
        f.seek(offset)
        while True:
            block = f.read(CHUNK)  # CHUNK is a multiple of 8: blocks hold whole values
            if not block:
                break
            values = np.frombuffer(block[: len(block) - len(block) % dtype.itemsize], dtype=dtype)
            bad += int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise VolumeError(f"{path}: {bad} voxels are not numbers (NaN or infinite), which the NIfTI reader would "
                          f"silently turn into 0 HU; the file is damaged or was exported wrongly: re-export the CT")


def _text_header(path: Path, end: bytes, limit: int = 1 << 16) -> Tuple[str, int]:
    with open(path, "rb") as f:
        raw = f.read(limit)
    i = raw.find(end)
    if i < 0:
        return raw.decode("latin-1"), -1
    return raw[: i + len(end)].decode("latin-1"), i + len(end)


def _check_nrrd(path: Path) -> None:
    text, offset = _text_header(path, b"\n\n")
    fields = dict(re.findall(r"^([^:#\n]+):=?\s*(.*)$", text, flags=re.M))
    fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
    if "data file" in fields or "datafile" in fields or offset < 0:
        return  # detached data: ITK reports a missing file itself
    size = _NRRD_TYPES.get(fields.get("type", "").lower())
    encoding = fields.get("encoding", "raw").lower()
    if size is None or encoding not in ("raw", "gzip", "gz"):
        return
    n = 1
    for d in fields.get("sizes", "").split():
        n *= int(d)
    _require(path, _stream_length(path, offset, "gzip" if encoding != "raw" else None), n * size)


def _check_meta(path: Path) -> None:
    text, offset = _text_header(path, b"ElementDataFile = LOCAL\n")
    if offset < 0:
        text, _ = _text_header(path, b"\x00", limit=1 << 14)
    fields = {k.strip(): v.strip() for k, v in re.findall(r"^(\w+)\s*=\s*(.*)$", text, flags=re.M)}
    size = _META_TYPES.get(fields.get("ElementType", ""))
    if size is None or "DimSize" not in fields:
        return
    n = int(fields.get("ElementNumberOfChannels", "1"))
    for d in fields["DimSize"].split():
        n *= int(d)
    compressed = fields.get("CompressedData", "False").lower() == "true"
    if offset >= 0:
        data, start = path, offset
    else:
        target = fields.get("ElementDataFile", "")
        data, start = path.parent / target, 0
        if not target or "%" in target or target.upper() == "LIST" or not data.is_file():
            return  # file lists and missing files are ITK's to report
    _require(path, _stream_length(data, start, "zlib" if compressed else None), n * size)
