"""Geometry travels with every array: reorientation, file round trips, KiTS19's odd header, oblique frames."""
import numpy as np
import pytest

from BiSCSegmentationLib.resample import AxisMap, covering_map, resample_linear, resample_nearest
from BiSCSegmentationLib.volume import (Volume, VolumeError, kits19_affine_volume, read_volume, to_canonical,
                                        from_canonical, write_volume)
from conftest import KITS_DIR, requires_kits


def rotation(axis, degrees):
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    m = {"z": [[c, -s, 0], [s, c, 0], [0, 0, 1]], "x": [[1, 0, 0], [0, c, -s], [0, s, c]]}[axis]
    return np.array(m)


DIRECTIONS = {
    "identity (LPS)": np.eye(3),
    "RAS-like flips": np.diag([-1.0, -1.0, 1.0]),
    "KiTS19": np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]),
    "oblique 20 deg": rotation("z", 20) @ rotation("x", 10),
    "permuted oblique": np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]) @ rotation("z", 15),
}


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_canonical_round_trip_keeps_every_voxel_in_place(name):
    rng = np.random.default_rng(0)
    vol = Volume(rng.integers(0, 1000, (7, 9, 11)).astype(np.int16), (0.7, 1.3, 4.0), (12.0, -40.0, 300.0),
                 DIRECTIONS[name])
    canon, reo = to_canonical(vol)
    # the canonical axes point (roughly) +S, +P, +L for numpy axes 0, 1, 2 (ITK k, j, i)
    for itk_axis, phys in ((0, 0), (1, 1), (2, 2)):
        assert canon.direction[phys, itk_axis] > 0.7
    # each voxel keeps its physical position and value
    for ijk in rng.integers(0, [11, 9, 7], size=(20, 3)):
        value = vol.array[ijk[2], ijk[1], ijk[0]]
        where = vol.index_to_physical(ijk)
        cijk = np.round(canon.physical_to_index(where)).astype(int)
        assert np.allclose(canon.index_to_physical(cijk), where, atol=1e-6)
        assert canon.array[cijk[2], cijk[1], cijk[0]] == value
    back = from_canonical(canon.array, vol, reo)
    assert np.array_equal(back.array, vol.array) and back.same_grid(vol)


def test_kits19_header_is_read_as_published(tmp_path):
    arr = np.zeros((5, 6, 7), np.uint8)  # (slices, rows, cols) as KiTS19 stores it
    arr[1, 2, 3] = 2
    vol = kits19_affine_volume(arr, (3.0, 0.8, 0.7))
    canon, _ = to_canonical(vol)
    assert canon.array.shape[0] == 5  # slices become the canonical z axis
    assert np.allclose(canon.spacing, (0.7, 0.8, 3.0))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("name", ["KiTS19", "oblique 20 deg", "RAS-like flips"])
def test_file_round_trip_keeps_geometry(tmp_path, suffix, name):
    vol = Volume(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6), (0.5, 0.9, 5.0), (1.5, -2.0, 3.0),
                 DIRECTIONS[name])
    path = write_volume(vol, tmp_path / f"v{suffix}")
    back = read_volume(path)
    assert back.same_grid(vol) and np.array_equal(back.array, vol.array)


def test_write_never_overwrites_without_force(tmp_path):
    vol = Volume(np.zeros((2, 2, 2), np.int16))
    path = write_volume(vol, tmp_path / "x.nii.gz")
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        write_volume(vol.with_array(np.ones((2, 2, 2), np.int16)), path)
    assert path.read_bytes() == before
    write_volume(vol.with_array(np.ones((2, 2, 2), np.int16)), path, force=True)
    assert read_volume(path).array.sum() == 8
    assert not list(tmp_path.glob("*.part*"))  # no temporary left behind


def test_outputs_get_the_mode_of_an_ordinary_new_file(tmp_path):
    """Atomic writes go through a private temporary file; the output must not stay owner-only."""
    import os
    from BiSCSegmentationLib.roi import KidneyROI, save_rois
    mask = os.umask(0o027)
    os.umask(mask)
    (tmp_path / "plain").write_text("x")
    expected = (tmp_path / "plain").stat().st_mode & 0o777
    assert expected != 0o600
    for path in (write_volume(Volume(np.zeros((2, 2, 2), np.int16)), tmp_path / "x.nrrd"),
                 save_rois([KidneyROI((0, 0, 0), (50, 50, 50))], tmp_path / "r.json")):
        assert path.stat().st_mode & 0o777 == expected, path


def test_bad_inputs_are_clear(tmp_path):
    with pytest.raises(VolumeError, match="no such file"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image")
    with pytest.raises(VolumeError, match="cannot read"):
        read_volume(tmp_path / "junk.nii.gz")
    with pytest.raises(VolumeError, match="3D"):
        Volume(np.zeros((4, 4)))
    with pytest.raises(VolumeError, match="spacing"):
        Volume(np.zeros((2, 2, 2)), spacing=(1, 0, 1))


@requires_kits
def test_real_kits19_file_geometry():
    vol = read_volume(KITS_DIR / "case_00002" / "segmentation.nii.gz")
    assert np.allclose(vol.direction, DIRECTIONS["KiTS19"])
    canon, reo = to_canonical(vol)
    assert canon.array.shape[1:] == (512, 512)
    assert np.array_equal(from_canonical(canon.array, vol, reo).array, vol.array)


def test_resample_identity_is_exact_and_nearest_keeps_labels():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 7, 8)).astype(np.float32)
    maps = [AxisMap(n, 0.0, 1.0) for n in a.shape]
    assert np.array_equal(resample_linear(a, maps).numpy(), a)
    labels = rng.integers(0, 3, (6, 7, 8)).astype(np.uint8)
    down = resample_nearest(labels, [covering_map(n, n // 2) for n in labels.shape])
    assert set(np.unique(down)) <= {0, 1, 2}


def _dense_linear(a, maps, fill):
    """Reference: the interpolation matrices applied in float64 along each axis, outside voxels set to fill."""
    from BiSCSegmentationLib.resample import linear_weights
    out = np.asarray(a, np.float64)
    lead = out.ndim - 3
    outside = []
    for ax in range(3):
        mat, inside = linear_weights(out.shape[lead + ax], maps[ax])
        out = np.moveaxis(np.tensordot(mat.astype(np.float64), np.moveaxis(out, lead + ax, 0), axes=1), 0, lead + ax)
        outside.append(~inside)
    if fill is not None:
        for ax in range(3):
            index = [slice(None)] * out.ndim
            index[lead + ax] = outside[ax]
            out[tuple(index)] = fill
    return out


@pytest.mark.parametrize("seed", range(4))
def test_resample_linear_matches_the_dense_product_for_views_slabs_copies_and_tensors(seed):
    import torch
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(30, 41, 37)).astype(np.float32) * 100
    view = a[::-1, :, ::-1]  # negative strides, as a canonical view of a stored CT
    maps = [AxisMap(int(rng.integers(5, 40)), float(rng.uniform(-3, 5)), float(rng.uniform(0.3, 3.5)))
            for _ in range(3)]
    if seed == 0:
        maps[1] = AxisMap(20, 4.0, 1.0)  # an exact-copy axis
    got = resample_linear(view, maps, fill=-1024.0, chunk_voxels=500)  # many z slabs
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    np.testing.assert_allclose(got.numpy(), _dense_linear(view, maps, -1024.0), rtol=1e-5, atol=1e-3)
    probs = torch.softmax(torch.from_numpy(rng.normal(size=(3, 12, 14, 16)).astype(np.float32)), 0)
    back = [AxisMap(30, -0.3, 0.37), AxisMap(14, 0.0, 1.0), AxisMap(50, 0.1, 0.3)]
    np.testing.assert_allclose(resample_linear(probs, back, fill=None).numpy(),
                               _dense_linear(probs.numpy(), back, None), rtol=1e-5, atol=1e-6)


def test_resample_fills_outside_and_reads_only_needed_region():
    a = np.ones((10, 10, 10), np.float32)
    out = resample_linear(a, [AxisMap(4, -3.0, 1.0), AxisMap(2, 0.0, 1.0), AxisMap(2, 0.0, 1.0)], fill=-5.0).numpy()
    assert np.allclose(out[:2], -5.0) and np.allclose(out[3:], 1.0)  # index -3, -2 outside; 0 inside
