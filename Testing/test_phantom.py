"""Synthetic CT phantom: determinism, geometry, plausible HU, labels untouched, kidney variants, real-label mode."""
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from BiSCSegmentationLib import phantom
from BiSCSegmentationLib.volume import kits19_affine_volume, read_volume, to_canonical
from conftest import needs_shared

KITS = Path(__file__).resolve().parents[2] / "shared" / "data" / "kits19"
needs_kits = needs_shared(KITS / "case_00000", "the real KiTS19 label maps")
SP = (2.0, 2.0, 5.0)        # coarse grid (~200 x 200 x 55 voxels) keeps every test fast


def components(labels_array):
    _, n = ndi.label(labels_array > 0, np.ones((3, 3, 3)))
    return n


def inplane_erode(mask, times):
    return ndi.binary_erosion(mask, np.ones((1, 3, 3), bool), iterations=times) if times else mask


def hu_summary(ct, labels):
    """Mean HU of kidney cortex (2nd voxel ring inside label 1), kidney, tumour and subcutaneous fat."""
    c, a = to_canonical(ct)[0].array.astype(np.float64), to_canonical(labels)[0].array
    kid = a == 1
    cortex = inplane_erode(kid, 1) & ~inplane_erode(kid, 2)
    body = ndi.binary_fill_holes(c > -500, np.array([[[0, 0, 0], [0, 1, 0], [0, 0, 0]],
                                                     [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                                                     [[0, 0, 0], [0, 1, 0], [0, 0, 0]]], bool))
    fat = inplane_erode(body, 2) & ~inplane_erode(body, 3)      # 4-6 mm under the skin at 2 mm pixels
    return c[cortex].mean(), c[kid].mean(), c[a == 2].mean(), c[fat].mean()


@pytest.fixture(scope="module")
def case0():
    return phantom.make_case(0, spacing=SP)


def test_same_seed_same_output_and_different_seed_differs(case0):
    ct, labels = case0
    ct2, labels2 = phantom.make_case(0, spacing=SP)
    assert np.array_equal(labels.array, labels2.array) and np.array_equal(ct.array, ct2.array)
    assert labels.same_grid(labels2) and ct.same_grid(ct2)
    other = phantom.procedural_labels(1, spacing=SP)
    assert other.array.shape != labels.array.shape or not np.array_equal(other.array, labels.array)
    assert not np.array_equal(phantom.synthesize_ct(labels, 1).array, ct.array)


def test_procedural_labels_grid_and_values(case0):
    ct, labels = case0
    a = labels.array
    assert a.dtype == np.uint8 and set(np.unique(a)) == {0, 1, 2}
    assert np.allclose(labels.direction, np.eye(3)) and labels.spacing == SP
    assert a.shape[1:] == (200, 200) and 250 <= a.shape[0] * SP[2] <= 300
    vox_ml = labels.voxel_volume_ml
    assert 200 < (a > 0).sum() * vox_ml < 500                    # two kidneys of ~120-200 mL plus tumour
    assert components(a) == 2
    assert ct.array.dtype == np.int16 and ct.same_grid(labels)


def test_hu_ranges_are_plausible():
    for seed in range(3):
        ct, labels = phantom.make_case(seed, spacing=SP)
        cortex, kidney, tumour, fat = hu_summary(ct, labels)
        assert cortex > fat + 150, (seed, cortex, fat)
        assert -130 < fat < -60 and 100 < kidney < 260, (seed, fat, kidney)
        assert abs(tumour - kidney) > 20, (seed, tumour, kidney)
        c = ct.array
        assert c.min() >= -1024 and c.max() <= 3071 and c.max() > 500      # cortical bone somewhere
        assert c[0, :5, :5].mean() < -900                                   # air outside the body


def test_synthesis_keeps_labels_and_works_in_any_orientation(case0):
    _, labels = case0
    can = labels.array
    kits = kits19_affine_volume(can[::-1], (SP[2], SP[1], SP[0]))     # KiTS19 header: i = slices going down
    assert np.array_equal(to_canonical(kits)[0].array, can)
    before = kits.array.copy()
    ct = phantom.synthesize_ct(kits, 3)
    assert np.array_equal(kits.array, before)                         # labels untouched
    assert ct.same_grid(kits) and ct.array.dtype == np.int16
    assert np.allclose(ct.direction, kits.direction) and ct.origin == kits.origin
    cortex, kidney, tumour, fat = hu_summary(ct, kits)
    assert cortex > fat + 150 and abs(tumour - kidney) > 20


@pytest.mark.parametrize("variant", ["horseshoe", "left", "right"])
def test_horseshoe_and_solitary_kidneys_are_one_component(variant):
    labels = phantom.procedural_labels(5, spacing=SP, kidneys=variant)
    a = labels.array
    assert components(a) == 1 and (a == 2).any()
    xs = np.nonzero((a > 0).any(axis=(0, 1)))[0]
    middle = a.shape[2] / 2
    if variant == "horseshoe":
        assert xs.min() < middle < xs.max()                           # fused across the midline
    else:
        assert (xs.min() > middle) == (variant == "left")             # canonical x grows towards the left
    ct = phantom.synthesize_ct(labels, 5)
    _, kidney, _, fat = hu_summary(ct, labels)
    assert kidney > fat + 150


@pytest.mark.parametrize("thickness", [0.5, 5.0])
def test_slice_thickness_override(thickness):
    ct, labels = phantom.make_case(2, spacing=(3.0, 3.0, thickness))
    assert labels.spacing == (3.0, 3.0, thickness) and ct.same_grid(labels)
    assert (labels.array == 2).any() and (labels.array == 1).any()


def test_explicit_shape_and_unknown_variant():
    shapes = {phantom.procedural_labels(s, spacing=SP, shape_zyx=(40, 100, 100)).array.shape for s in range(2)}
    assert shapes == {(40, 100, 100)}
    with pytest.raises(ValueError):
        phantom.procedural_labels(0, kidneys="three")


def test_write_kits_case_round_trip_and_refuses_overwrite(case0, tmp_path):
    ct, labels = case0
    case = phantom.write_kits_case(tmp_path, "case_90000", ct, labels)
    assert case == tmp_path / "case_90000"
    img, seg = read_volume(case / "imaging.nii.gz"), read_volume(case / "segmentation.nii.gz")
    assert np.array_equal(img.array, ct.array) and np.array_equal(seg.array, labels.array)
    assert img.same_grid(ct) and seg.same_grid(labels) and seg.array.dtype == np.uint8
    with pytest.raises(FileExistsError):
        phantom.write_kits_case(tmp_path, "case_90000", ct, labels)
    phantom.write_kits_case(tmp_path, "case_90000", ct, labels, force=True)


@needs_kits
@pytest.mark.parametrize("case", ["case_00061", "case_00015"])   # 5 mm x 29 slices; 3 mm x 75 slices stored uint16
def test_real_label_mode_keeps_array_and_header(case):
    path = KITS / case / "segmentation.nii.gz"
    ref = read_volume(path)
    ct, labels = phantom.make_case(11, from_label=path)
    assert labels.array.dtype == np.uint8 and np.array_equal(labels.array, ref.array.astype(np.uint8))
    assert labels.spacing == ref.spacing and labels.origin == ref.origin
    assert np.array_equal(labels.direction, ref.direction)
    assert ct.same_grid(ref) and ct.array.dtype == np.int16
    kidney = ct.array[labels.array == 1].mean()
    assert kidney > 100 and abs(ct.array[labels.array == 2].mean() - kidney) > 20
    with pytest.raises(ValueError):
        phantom.make_case(11, from_label=path, spacing=(1.0, 1.0, 1.0))
