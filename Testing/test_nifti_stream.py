"""Rescaled NIfTI CTs are read slab by slab (nifti.py): the same array and geometry as SimpleITK's, holding one
copy of the voxels instead of SimpleITK's integers + float + rescaled float."""
from __future__ import annotations

import gzip
import struct
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from BiSCSegmentationLib import nifti
from BiSCSegmentationLib.volume import VolumeError, kits19_affine_volume, read_volume, to_sitk


def _nifti(path, array, slope, inter, gz=False):
    """A NIfTI-1 of ``array`` (KiTS19's header) with ``scl_slope``/``scl_inter`` set in the header."""
    plain = path.with_name(path.name[:-3]) if gz else path
    sitk.WriteImage(to_sitk(kits19_affine_volume(array, (2.5, 0.8, 0.7))), str(plain), False)
    with open(plain, "r+b") as f:
        f.seek(112)
        f.write(struct.pack("<ff", slope, inter))
    if gz:
        path.write_bytes(gzip.compress(plain.read_bytes(), 1))
        plain.unlink()
    return path


def _same_as_simpleitk(path):
    ours, image = read_volume(path), sitk.ReadImage(str(path))
    theirs = sitk.GetArrayFromImage(image)
    assert ours.array.dtype == theirs.dtype and ours.array.shape == theirs.shape
    np.testing.assert_array_equal(ours.array, theirs)
    assert ours.spacing == image.GetSpacing() and ours.origin == image.GetOrigin()
    np.testing.assert_array_equal(ours.direction.ravel(), image.GetDirection())


@pytest.mark.parametrize("dtype,slope,inter,gz", [(np.int16, 1.0, -1024.0, False), (np.uint16, 1.0, -1024.0, True),
                                                  (np.int16, 2.0, 3.0, True), (np.uint8, -1.0, 0.0, False)])
def test_a_rescaled_nifti_reads_as_simpleitk_reads_it(tmp_path, dtype, slope, inter, gz):
    info = np.iinfo(dtype)
    a = np.random.default_rng(0).integers(max(info.min, -2000), min(info.max, 3000), (9, 20, 23)).astype(dtype)
    path = _nifti(tmp_path / ("ct.nii.gz" if gz else "ct.nii"), a, slope, inter, gz)
    assert nifti.streamable(path) is not None
    _same_as_simpleitk(path)


def test_files_whose_values_float32_might_round_are_left_to_simpleitk(tmp_path):
    a = np.arange(9 * 20 * 23, dtype=np.int16).reshape(9, 20, 23)
    for slope, inter in ((0.1, 0.0), (1.0, 0.5), (1.0, 0.0)):  # rounding, rounding, no rescale at all
        path = _nifti(tmp_path / f"ct_{slope}_{inter}.nii", a, slope, inter)
        assert nifti.streamable(path) is None
        _same_as_simpleitk(path)
    big = _nifti(tmp_path / "big.nii", a.astype(np.int32), 1.0, -1024.0)  # int32 values need more than float32
    assert nifti.streamable(big) is None


def test_a_truncated_rescaled_nifti_is_a_clear_error(tmp_path):
    a = np.zeros((9, 20, 23), np.int16)  # stored as 23 planes of 20 x 9 (KiTS19's header)
    path = _nifti(tmp_path / "ct.nii", a, 1.0, -1024.0)
    path.write_bytes(path.read_bytes()[:-20 * 9 * 2 * 3])
    with pytest.raises(VolumeError, match=r"voxels end at slice 20 of 23\); is the file complete"):
        read_volume(path)
    gz = _nifti(tmp_path / "ct2.nii.gz", a, 1.0, -1024.0, gz=True)
    gz.write_bytes(gz.read_bytes()[:-30])
    with pytest.raises(VolumeError, match="is the file complete"):
        read_volume(gz)


PEAK = r"""
import sys
from BiSCSegmentationLib import nifti
from BiSCSegmentationLib.volume import read_volume
nifti.SLAB_BYTES = 1 << 20
def hwm():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024
before = hwm()
ct = read_volume(sys.argv[1])
print((hwm() - before) / ct.array.nbytes)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc")
def test_reading_a_rescaled_nifti_holds_about_one_copy_of_the_ct(tmp_path):
    a = np.random.default_rng(0).integers(-1000, 2000, (128, 256, 256)).astype(np.int16)  # float32: 32 MiB
    path = _nifti(tmp_path / "ct.nii", a, 1.0, -1024.0)
    import SimpleITK  # noqa: F401  (the child imports it before measuring, as read_volume does)

    out = subprocess.run([sys.executable, "-c", "import SimpleITK, numpy;" + PEAK, str(path)], capture_output=True,
                         text=True, check=True)
    assert float(out.stdout.strip()) < 1.5  # SimpleITK: about 3 (integers, float, rescaled float, numpy copy)
