"""Image volumes that carry their geometry, file I/O, and exact reorientation.

Conventions (ITK's, so that SimpleITK and Slicer agree with us):
- ``array`` is indexed ``[k, j, i]`` (slowest axis first), as ``SimpleITK.GetArrayFromImage`` returns it.
- ``spacing`` and ``origin`` are ordered ``(i, j, k)``; physical space is LPS in millimetres.
- ``direction`` is a 3x3 matrix whose *columns* are the unit vectors of the i, j, k axes.

The networks see volumes in a *canonical* orientation: a pure permutation/flip of the stored array such
that the numpy axes run roughly (inferior->superior, anterior->posterior, right->left), i.e. axial slices.
Permutations and flips are lossless, so going back to the input grid is exact.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InputError
from .outputs import OutputSet

PathLike = Union[str, "os.PathLike[str]"]

READABLE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
WRITABLE_LABEL_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


class VolumeError(InputError):
    """A volume could not be read, written or used; the message says what to do."""


@dataclass
class Volume:
    """A 3D array with its spacing, origin and direction (see module docstring for conventions)."""

    array: np.ndarray
    spacing: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self):
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise VolumeError(f"expected a 3D image, got an array of shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if len(self.spacing) != 3 or min(self.spacing) <= 0 or not np.all(np.isfinite(self.spacing)):
            raise VolumeError(f"voxel spacing must be three positive numbers, got {self.spacing}")
        if abs(abs(np.linalg.det(self.direction)) - 1.0) > 1e-3:
            raise VolumeError("the direction matrix is not orthonormal; the image header is corrupt")

    @property
    def size_ijk(self) -> Tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape[::-1])

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def index_to_physical_matrix(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous (i, j, k, 1) to LPS (x, y, z, 1)."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def index_to_physical(self, ijk) -> np.ndarray:
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ (self.direction @ np.diag(self.spacing)).T + np.asarray(self.origin)

    def physical_to_index(self, xyz) -> np.ndarray:
        """Continuous (i, j, k) index of LPS point(s)."""
        xyz = np.asarray(xyz, dtype=np.float64)
        inv = np.linalg.inv(self.direction @ np.diag(self.spacing))
        return (xyz - np.asarray(self.origin)) @ inv.T

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same geometry, new voxels (shape must match)."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise VolumeError(f"array shape {array.shape} does not match the volume's {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction.copy())

    def same_grid(self, other: "Volume", tol: float = 1e-4) -> bool:
        return (self.array.shape == other.array.shape
                and np.allclose(self.spacing, other.spacing, atol=tol)
                and np.allclose(self.origin, other.origin, atol=tol * 10)
                and np.allclose(self.direction, other.direction, atol=tol))


# ----------------------------------------------------------------------------------------------- reorientation
@dataclass(frozen=True)
class Reorientation:
    """A lossless permutation+flip from a stored array to the canonical (S, P, L)-ordered numpy axes.

    ``axes[n]`` is the stored numpy axis that becomes canonical numpy axis ``n``; ``flips[n]`` says whether
    it is reversed afterwards.
    """

    axes: Tuple[int, int, int]
    flips: Tuple[bool, bool, bool]

    def apply(self, array: np.ndarray) -> np.ndarray:
        out = np.transpose(array, self.axes)
        for n, f in enumerate(self.flips):
            if f:
                out = np.flip(out, axis=n)
        return out

    def invert(self, array: np.ndarray) -> np.ndarray:
        out = array
        for n, f in enumerate(self.flips):
            if f:
                out = np.flip(out, axis=n)
        return np.transpose(out, np.argsort(self.axes))


def canonical_reorientation(direction: np.ndarray) -> Reorientation:
    """Choose the permutation/flip that makes each axis point closest to +L (i), +P (j), +S (k)."""
    d = np.abs(np.asarray(direction, dtype=np.float64))
    # greedy assignment on the dominant cosines is unique for any header within 45 degrees of an axis;
    # for worse obliquity it still yields a valid permutation.
    itk_for_physical = [-1, -1, -1]
    used = set()
    for flat in np.argsort(-d, axis=None):
        p, a = divmod(int(flat), 3)
        if itk_for_physical[p] == -1 and a not in used:
            itk_for_physical[p] = a
            used.add(a)
    # canonical numpy axis n holds canonical ITK axis 2-n == physical axis 2-n
    axes, flips = [], []
    for n in range(3):
        p = 2 - n
        a = itk_for_physical[p]
        axes.append(2 - a)
        flips.append(bool(np.asarray(direction)[p, a] < 0))
    return Reorientation(tuple(axes), tuple(flips))


def to_canonical(volume: Volume) -> Tuple[Volume, Reorientation]:
    """Reorient losslessly to canonical axes; returns the new volume and the reorientation to undo it.

    The new volume's array is a view of ``volume.array`` (a transpose with flips: no copy of the whole CT;
    writing into it writes into ``volume``); ``np.ascontiguousarray`` it where a copy is needed."""
    r = canonical_reorientation(volume.direction)
    old_shape_ijk = np.array(volume.size_ijk)
    new_dir = np.zeros((3, 3))
    new_spacing = [0.0, 0.0, 0.0]
    corner = np.zeros(3)  # stored index of the canonical voxel (0,0,0)
    for n in range(3):
        a = 2 - r.axes[n]  # stored ITK axis
        p = 2 - n          # canonical ITK axis
        sign = -1.0 if r.flips[n] else 1.0
        new_dir[:, p] = sign * volume.direction[:, a]
        new_spacing[p] = volume.spacing[a]
        corner[a] = old_shape_ijk[a] - 1 if r.flips[n] else 0
    origin = volume.index_to_physical(corner)
    return Volume(r.apply(volume.array), tuple(new_spacing), tuple(origin), new_dir), r


def from_canonical(array: np.ndarray, reference: Volume, reorientation: Reorientation) -> Volume:
    """Put a canonical-orientation array back onto ``reference``'s grid (exact)."""
    return reference.with_array(np.ascontiguousarray(reorientation.invert(array)))


# ----------------------------------------------------------------------------------------------------- file I/O
def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError as exc:  # pragma: no cover - SimpleITK is a pinned dependency
        raise VolumeError("SimpleITK is needed to read and write images: pip install SimpleITK") from exc
    return sitk


def from_sitk(image) -> Volume:
    sitk = _sitk()
    if image.GetDimension() != 3:
        raise VolumeError(f"expected a 3D image, got a {image.GetDimension()}D image")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError("expected a scalar (grey-level) image, got a multi-component (e.g. RGB) image")
    return Volume(sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(),
                  np.array(image.GetDirection()).reshape(3, 3))


def to_sitk(volume: Volume):
    sitk = _sitk()
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(tuple(volume.direction.ravel()))
    return image


def _has_suffix(path: Path, suffixes: Sequence[str]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


def unreadable(path: PathLike) -> Optional[str]:
    """Why ``path`` cannot be read ("no such file or folder", "cannot be read (permission denied)"); None
    if it can be (a file in a folder that may not be entered is a permission problem, not a missing file)."""
    path = Path(path)
    try:
        os.stat(path)
    except PermissionError:
        return "cannot be read (permission denied)"
    except OSError:
        return "no such file or folder"
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        return "cannot be read (permission denied)"
    return None


def _itk_reason(text: str) -> str:
    """The sentence of an ITK exception that says what went wrong (not its source line or object address)."""
    import re

    for line in text.splitlines():
        if "ERROR:" in line:
            return re.sub(r"^.*ERROR:\s*(\w+\(0x[0-9a-f]+\):\s*)?", "", line).strip() or "unknown error"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


def read_volume(path: PathLike) -> Volume:
    """Read NIfTI, NRRD, MHA/MHD, or a folder holding one DICOM series."""
    sitk = _sitk()
    path = Path(path)
    problem = unreadable(path)
    if problem:
        raise VolumeError(f"{path}: {problem}")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise VolumeError(f"{path}: folder holds no DICOM series; give a DICOM folder or an image file "
                                  f"({', '.join(READABLE_SUFFIXES)})")
            if len(series) > 1:
                raise VolumeError(f"{path}: folder holds {len(series)} DICOM series; put one series per folder")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            image = reader.Execute()
        else:
            from .nifti import read_rescaled  # a rescaled NIfTI: slab by slab (SimpleITK holds 2.5 copies)

            volume = read_rescaled(path)
            if volume is not None:
                return volume
            from .integrity import check_complete

            # before ITK: its NIfTI reader fills a truncated file's missing voxels with zeros without a word,
            # and its NRRD/MHA readers say only "Error reading"
            check_complete(path)
            image = sitk.ReadImage(str(path))
    except VolumeError:
        raise
    except RuntimeError as exc:
        reason = _itk_reason(str(exc))
        if "determinant is 0" in reason:
            raise VolumeError(f"{path}: the header's direction matrix is singular (two image axes point the same "
                              f"way); the header is corrupt: re-export the CT") from exc
        raise VolumeError(f"{path}: cannot read this image ({reason}); supported: NIfTI, NRRD, MHA/MHD, "
                          f"DICOM series folder") from exc
    return from_sitk(image)


def write_volume(volume: Volume, path: PathLike, force: bool = False, compress: bool = True) -> Path:
    """Write atomically and read back (see :mod:`outputs`); refuses to overwrite unless ``force``."""
    path = Path(path)
    if not _has_suffix(path, WRITABLE_LABEL_SUFFIXES + (".nhdr", ".mhd")):
        raise VolumeError(f"{path}: unsupported output format; use .nii.gz, .nii, .nrrd or .mha")
    out = OutputSet(force)
    out.add_image(path, volume, "image", compress)
    return out.commit()[0]


def kits19_affine_volume(array: np.ndarray, spacing_zyx: Sequence[float]) -> Volume:
    """Volume with KiTS19's header: array (slices, rows, cols), NIfTI affine [[0,0,-px],[0,-px,0],[-dz,0,0]].

    In ITK terms the stored i axis is the slice axis pointing superior... (RAS -z == LPS -z), j points
    LPS +y (posterior) and k points LPS +x (left); no translation.
    """
    dz, py, px = (float(s) for s in spacing_zyx)
    # NIfTI axis 0 (slices) -> RAS (0,0,-dz) == LPS (0,0,-dz); axis 1 -> RAS (0,-py,0) == LPS (0,+py,0);
    # axis 2 -> RAS (-px,0,0) == LPS (+px,0,0). SimpleITK puts NIfTI axis 0 on ITK i.
    direction = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    # SimpleITK arrays are [k, j, i]: NIfTI array (a0, a1, a2) becomes transpose (a2, a1, a0)
    return Volume(np.ascontiguousarray(np.transpose(array, (2, 1, 0))), (dz, py, px), (0.0, 0.0, 0.0), direction)


__all__ = ["Volume", "VolumeError", "Reorientation", "canonical_reorientation", "to_canonical",
           "from_canonical", "read_volume", "unreadable", "write_volume", "from_sitk", "to_sitk",
           "kits19_affine_volume", "READABLE_SUFFIXES"]
