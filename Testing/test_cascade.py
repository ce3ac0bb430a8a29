"""The cascade's geometry: ROIs from real anatomy, exact restore with perfect predictions, any orientation.

A perfect fine network is simulated by an *oracle*: the test CT encodes the true label in its intensity
(0, 100, 200 HU) and the oracle network decodes it back, so any error in cropping, resampling, padding,
pasting or reorientation shows up as a wrong voxel.
"""
import threading

import numpy as np
import pytest
import torch
from torch import nn

from BiSCSegmentationLib.cascade import Cancelled, CascadePredictor, NoKidneyFound, fine_grid
from BiSCSegmentationLib.inference_settings import InferenceSettings, SettingsError
from BiSCSegmentationLib.model_file import StageModel
from BiSCSegmentationLib.network import SCUNetConfig
from BiSCSegmentationLib.cascade import rough_grid
from BiSCSegmentationLib.resample import resample_nearest
from BiSCSegmentationLib.roi import KidneyROI, check_roi, load_rois, rois_from_mask, save_rois, ROIError
from BiSCSegmentationLib.cascade import _grid_volume
from BiSCSegmentationLib.volume import Volume, read_volume, to_canonical, VolumeError
from conftest import KITS_DIR, requires_kits
from test_geometry import DIRECTIONS

INTENSITY = {"clip": [-79.0, 304.0], "mean": 101.0, "std": 76.9}


class OracleNet(nn.Module):
    """Decodes label = round(HU / 100) from the normalised CT: a 'perfect' network."""

    def __init__(self):
        super().__init__()
        self.config = SCUNetConfig(widths=[4, 8, 16, 32])
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward_labels(self, x):
        hu = x * INTENSITY["std"] + INTENSITY["mean"]
        label = torch.clamp(torch.round(hu / 100.0), 0, 2).long()[:, 0]
        return torch.nn.functional.one_hot(label, 3).permute(0, 4, 1, 2, 3).float() * 20.0


def oracle_models(fine_spacing, rough_grid=None):
    models = []
    for stage, grid in (("rough", rough_grid or {"inplane_size": 32, "z_spacing": 6.0}),
                        ("fine", {"spacing": list(fine_spacing)})):
        m = StageModel(stage, SCUNetConfig(widths=[4, 8, 16, 32]), grid, dict(INTENSITY), (64, 64, 64))
        m.network = OracleNet()
        models.append(m)
    return models


def two_kidney_labels(shape_zyx=(24, 64, 64)):
    lab = np.zeros(shape_zyx, np.uint8)
    z, y, x = np.ogrid[: shape_zyx[0], : shape_zyx[1], : shape_zyx[2]]
    for cx in (16, 48):
        lab[((z - 12) / 8.0) ** 2 + ((y - 36) / 9.0) ** 2 + ((x - cx) / 7.0) ** 2 <= 1] = 1
    lab[((z - 12) / 3.0) ** 2 + ((y - 36) / 4.0) ** 2 + ((x - 52) / 3.0) ** 2 <= 1] = 2
    return lab


def encode(labels: np.ndarray) -> np.ndarray:
    """0 / 100 / 200 HU, with a column of air (-1000 HU) on both sides so that it reads as a CT (the input
    checks refuse an image without air or fat); the oracle decodes air as background."""
    ct = labels.astype(np.int16) * 100
    ct[..., 0] = ct[..., -1] = -1000
    return ct


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_restore_is_exact_with_perfect_predictions_in_any_orientation(name):
    # isotropic CT at the fine spacing: whatever the header, the fine grid lands on the CT's voxels
    labels = Volume(two_kidney_labels(), (1.5, 1.5, 1.5), (10.0, -20.0, 30.0), DIRECTIONS[name])
    ct = labels.with_array(encode(labels.array))
    rough, fine = oracle_models(fine_spacing=(1.5, 1.5, 1.5))
    rois = rois_from_mask(labels, fine.fine_spacing, min_component_ml=0.01)
    assert len(rois) == 2 and sorted(r.side for r in rois) == ["left", "right"]
    out = CascadePredictor(rough, fine, InferenceSettings(device="cpu")).segment(ct, rois)
    assert out.same_grid(ct)
    assert np.array_equal(out.array, labels.array), f"{np.count_nonzero(out.array != labels.array)} voxels differ"


def test_restore_is_exact_for_kits19_header_with_anisotropic_spacing():
    # KiTS19 stores (slices, rows, cols); the canonical spacing equals the fine spacing (0.78, 0.78, 3)
    from BiSCSegmentationLib.volume import kits19_affine_volume
    canon = two_kidney_labels((24, 96, 96))
    labels = kits19_affine_volume(canon, (3.0, 0.78, 0.78))
    # KiTS19's slice index runs toward the feet: canonical (inferior -> superior) order is reversed
    assert np.array_equal(to_canonical(labels)[0].array, canon[::-1])
    ct = labels.with_array(encode(labels.array))
    rough, fine = oracle_models(fine_spacing=(0.78, 0.78, 3.0))
    out = CascadePredictor(rough, fine, InferenceSettings(device="cpu")).segment(
        ct, rois_from_mask(labels, (0.78, 0.78, 3.0), 0.01)
    )
    assert out.same_grid(ct) and np.array_equal(out.array, labels.array)


def test_restore_close_when_spacings_differ():
    labels = Volume(two_kidney_labels((24, 64, 64)), (1.2, 1.2, 2.0))
    ct = labels.with_array(encode(labels.array))
    rough, fine = oracle_models(fine_spacing=(0.8, 0.8, 3.0))
    out = CascadePredictor(rough, fine, InferenceSettings(device="cpu")).segment(
        ct, rois_from_mask(labels, (0.8, 0.8, 3.0), 0.01)
    )
    fg_true, fg_out = labels.array > 0, out.array > 0
    dice = 2 * np.count_nonzero(fg_true & fg_out) / (fg_true.sum() + fg_out.sum())
    assert dice > 0.97


def test_full_cascade_with_oracle_finds_both_kidneys_and_progress_and_cancel():
    from BiSCSegmentationLib.volume import kits19_affine_volume
    labels = kits19_affine_volume(two_kidney_labels((24, 64, 64)), (3.0, 1.5, 1.5))
    ct = labels.with_array(encode(labels.array))
    rough, fine = oracle_models((1.5, 1.5, 3.0), {"inplane_size": 64, "z_spacing": 3.0})
    seen = []
    predictor = CascadePredictor(
        rough, fine, InferenceSettings(device="cpu", min_component_ml=0.01), progress=lambda s, f: seen.append((s, f))
    )
    result = predictor.predict(ct)
    assert len(result.rois) == 2
    assert np.array_equal(result.labels.array, labels.array)
    assert result.rough.mask.same_grid(ct)
    assert {"rough", "fine"} <= {s for s, _ in seen} and seen[-1] == ("fine", 1.0)
    assert set(result.timings) >= {"rough", "locate", "fine", "total"}
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        CascadePredictor(rough, fine, InferenceSettings(device="cpu"), cancel=stop).predict(ct)


def test_no_kidney_and_bad_rois_are_clear_errors():
    ct = Volume(np.full((16, 32, 32), -100, np.int16), (1.5, 1.5, 3.0))
    rough, fine = oracle_models((1.5, 1.5, 3.0))
    predictor = CascadePredictor(rough, fine, InferenceSettings(device="cpu"))
    with pytest.raises(NoKidneyFound, match="Add an ROI by hand"):
        predictor.predict(ct)
    with pytest.raises(ValueError, match="outside the image"):
        predictor.segment(ct, [KidneyROI((5000, 0, 0), (100, 100, 100), "left")])
    with pytest.raises(ValueError, match="too small"):
        predictor.segment(ct, [KidneyROI((20, 20, 20), (5, 100, 100), "left")])
    with pytest.raises(VolumeError, match="not a CT"):
        predictor.predict(ct.with_array(np.zeros((16, 32, 32), np.float32)))


def test_roi_at_the_border_is_padded_and_big_kidney_grows_the_roi():
    labels = Volume(two_kidney_labels((24, 64, 64)), (1.5, 1.5, 3.0))
    ct = labels.with_array(encode(labels.array))
    rough, fine = oracle_models((1.5, 1.5, 3.0))
    # an ROI hanging over the image border: padded with air, pasted only inside the image
    roi = KidneyROI(labels.index_to_physical([2, 36, 12]), (90, 90, 90), "right")
    out = CascadePredictor(rough, fine, InferenceSettings(device="cpu")).segment(ct, [roi])
    assert out.same_grid(ct)
    inside = roi.contains(ct.index_to_physical(np.argwhere(np.ones(ct.array.shape))[:, ::-1])).reshape(ct.array.shape)
    assert np.array_equal(out.array[inside], labels.array[inside]) and not out.array[~inside].any()
    # a kidney wider than 192 fine voxels gets an ROI of the next multiple of 16
    wide = np.zeros((8, 8, 240), np.uint8)
    wide[2:6, 2:6, 10:230] = 1
    r = rois_from_mask(Volume(wide, (0.78, 0.78, 3.0)), (0.78, 0.78, 3.0), min_component_ml=0.0)[0]
    assert r.size[0] / 0.78 >= 220 and round(r.size[0] / 0.78) % 16 == 0
    grid, _ = fine_grid(to_canonical(ct)[0], roi, fine)
    assert all(m.n_out % 8 == 0 for m in grid)


def test_roi_size_is_the_papers_box_in_millimetres_whatever_the_fine_spacing():
    """A fine model on a coarser grid gets the paper's physical ROI (not 160 of its larger voxels)."""
    kidney = np.zeros((20, 80, 80), np.uint8)
    kidney[5:15, 20:60, 25:55] = 1    # 60 x 60 x 30 mm at 1.5 x 1.5 x 3 mm
    mask = Volume(kidney, (1.5, 1.5, 3.0))
    paper = rois_from_mask(mask, (0.78, 0.78, 3.0), min_component_ml=0.0)[0]
    coarse = rois_from_mask(mask, (1.5, 1.5, 3.0), min_component_ml=0.0)[0]
    assert paper.size[:2] == pytest.approx((160 * 0.78, 160 * 0.78))
    assert coarse.size[:2] == pytest.approx((88 * 1.5, 88 * 1.5))   # 124.8 mm up to 8 voxels of 1.5 mm
    assert coarse.size[2] == paper.size[2] and max(coarse.size) < 140
    assert np.allclose(coarse.center, paper.center)


def test_islands_in_an_roi_are_removed_and_the_kidney_kept_voxel_for_voxel():
    labels = Volume(two_kidney_labels((24, 64, 64)), (1.5, 1.5, 1.5))
    truth = labels.array.copy()
    noisy = truth.copy()
    noisy[2:4, 4:6, 30:32] = 2      # a tumor-like speck far from both kidneys (bowel, a vessel ...)
    noisy[20:22, 58:60, 4:6] = 1
    ct = labels.with_array(encode(noisy))
    rough, fine = oracle_models((1.5, 1.5, 1.5))
    roi = KidneyROI(labels.index_to_physical([31.5, 31.5, 11.5]), (96, 96, 36), "both")  # the whole image
    out = CascadePredictor(rough, fine, InferenceSettings(device="cpu")).segment(ct, [roi]).array
    assert np.array_equal(out, truth)
    kept = CascadePredictor(rough, fine, InferenceSettings(device="cpu", keep_largest=False)).segment(ct, [roi]).array
    assert np.array_equal(kept, noisy)


def test_islands_found_in_the_foreground_box_are_those_of_the_whole_roi():
    from scipy import ndimage
    from BiSCSegmentationLib.cascade import small_components

    rng = np.random.default_rng(3)
    labels = np.zeros((40, 50, 60), np.uint8)
    labels[8:30, 10:40, 12:50] = (ndimage.gaussian_filter(rng.random((22, 30, 38)), 1.5) > 0.52) * 1
    labels[20:24, 15:20, 20:26] = 2
    comp, _ = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    expected = (sizes < 0.2 * sizes.max())[comp] & (comp > 0)
    assert expected.any() and (~expected & (labels > 0)).any()
    assert np.array_equal(small_components(labels), expected)
    assert small_components(np.zeros((4, 4, 4), np.uint8)) is None


def test_two_channel_labels_match_the_argmax_of_three_probabilities():
    from BiSCSegmentationLib.cascade import label_argmax
    from BiSCSegmentationLib.decision import labels_from_differences as label_from_differences
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 6, 7, 8, generator=g) * 3, dim=0)
    probs[:, 0, 0, :3] = torch.tensor([[0.4, 0.4, 0.2], [0.3, 0.35, 0.35], [1 / 3, 1 / 3, 1 / 3]]).T  # ties
    assert np.array_equal(label_from_differences(probs[1:] - probs[:1]), label_argmax(probs))


def test_resampling_a_backwards_view_equals_resampling_its_copy():
    from BiSCSegmentationLib.resample import AxisMap, covering_map, resample_linear
    a = np.random.default_rng(0).integers(-1000, 1000, (20, 40, 36)).astype(np.int16)
    view = a[:, ::-1, ::-1]   # how a canonical view of a NIfTI-ordered CT runs
    for maps in ([covering_map(20, 7), covering_map(40, 16), covering_map(36, 9)],
                 [AxisMap(10, 3.0, 1.0), AxisMap(30, 2.0, 1.0), covering_map(36, 12)],  # copies and a shrink
                 [AxisMap(8, -2.0, 2.5), AxisMap(16, 5.5, 1.7), AxisMap(20, -3.0, 2.0)]):  # partly outside
        ref = resample_linear(np.ascontiguousarray(view), maps, fill=-1024.0)
        assert torch.allclose(resample_linear(view, maps, fill=-1024.0), ref, atol=1e-3)


def test_roi_json_round_trip_and_errors(tmp_path):
    rois = [KidneyROI((1, 2, 3), (100, 110, 120), "right"), KidneyROI((-1, 2, 3), (90, 90, 96), "left")]
    path = save_rois(rois, tmp_path / "rois.json")
    assert load_rois(path) == rois
    with pytest.raises(FileExistsError):
        save_rois(rois, path)
    (tmp_path / "bad.json").write_text('{"format": "bisc-rois", "version": 1, "rois": [{"center": [1, 2]}]}')
    with pytest.raises(ROIError, match="ROI #1"):
        load_rois(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("[]")
    with pytest.raises(ROIError, match="not a BiSCSegmentation ROI file"):
        load_rois(tmp_path / "other.json")


def rough_grid_labels(labels: Volume) -> Volume:
    """What a perfect rough stage would output: the label map on the rough grid (as the cascade builds it)."""
    canon, _ = to_canonical(labels)  # a view: no copy
    maps = rough_grid(canon, 128, 3.0)
    return _grid_volume(canon, maps, resample_nearest(canon.array, maps))


@requires_kits
@pytest.mark.slow
def test_rois_cover_every_kidney_of_all_real_kits19_label_maps():
    """All 168 real label maps: every kidney voxel lies inside an ROI; special anatomy gives one ROI."""
    from scipy import ndimage

    cases = sorted(KITS_DIR.glob("case_*"))
    assert len(cases) == 168
    single = {}
    for case in cases:
        labels = read_volume(case / "segmentation.nii.gz")
        labels = labels.with_array(labels.array.astype(np.uint8))
        rois = rois_from_mask(rough_grid_labels(labels), (0.78, 0.78, 3.0))
        assert 1 <= len(rois) <= 2, case.name
        for r in rois:
            assert not check_roi(r, labels), case.name
        # every kidney/tumor voxel inside some ROI: test the voxel-extent corners of each component's box
        # (components labelled inside the foreground's bounding box only: faster than over the whole CT)
        fg = labels.array > 0
        (box,) = ndimage.find_objects(fg.view(np.uint8))
        comp, n = ndimage.label(fg[box], structure=np.ones((3, 3, 3), bool))
        for local in ndimage.find_objects(comp):
            sl = tuple(slice(b.start + s.start, b.start + s.stop) for b, s in zip(box, local))
            corners = np.array([[i, j, k] for i in (sl[2].start, sl[2].stop - 1) for j in (sl[1].start, sl[1].stop - 1)
                                for k in (sl[0].start, sl[0].stop - 1)], float)
            pts = labels.index_to_physical(corners)
            if not any(r.contains(pts).all() for r in rois):  # box split over two ROIs: check voxels
                idx = (np.argwhere(comp[local] > 0) + [s.start for s in sl])[:, ::-1]
                p = labels.index_to_physical(idx)
                assert np.any([r.contains(p) for r in rois], axis=0).all(), case.name
        if len(rois) == 1:
            single[case.name] = rois[0].side
    # fused/horseshoe kidneys (00005, 00151) and a solitary kidney (00165) give one ROI
    assert set(single) == {"case_00005", "case_00151", "case_00165"}, single
    assert single["case_00151"] == "both"


def _cut_rois(canon):
    """Boxes that cut each kidney of two_kidney_labels (canonical labels ``canon``) off: the right one in z
    (both faces), the left in x (its upper face only)."""
    z = float(np.mean(np.nonzero(canon.array)[0]))  # the kidneys' centre slice (KiTS19's z runs reversed)
    right = KidneyROI(canon.index_to_physical([16, 36, z]), (45, 45, 25.5), "right")
    left = KidneyROI(canon.index_to_physical([44, 36, z]), (18, 45, 60), "left")  # x 38-50, kidney 41-55
    return [right, left]


def test_an_roi_that_cuts_the_kidney_off_grows_until_it_holds_it_in_kits19_orientation():
    from BiSCSegmentationLib.volume import kits19_affine_volume
    labels = kits19_affine_volume(two_kidney_labels((24, 64, 64)), (3.0, 1.5, 1.5))
    ct = labels.with_array(encode(labels.array))
    canon = to_canonical(labels)[0]
    rough, fine = oracle_models((1.5, 1.5, 3.0))
    rois = _cut_rois(canon)
    assert all(check_roi(r, ct) == [] for r in rois)
    cut = CascadePredictor(rough, fine, InferenceSettings(device="cpu", roi_growth=0)).segment(ct, rois).array
    assert np.count_nonzero(labels.array) - np.count_nonzero(cut) > 250  # both kidneys lose their ends
    assert CascadePredictor(rough, fine).settings.roi_growth == 0  # off unless asked for (README)
    predictor = CascadePredictor(rough, fine, InferenceSettings(device="cpu", roi_growth=2))
    out = predictor.segment(ct, rois)
    assert out.same_grid(ct) and np.array_equal(out.array, labels.array)
    right, left = predictor.used_rois
    # grown outwards through the touched faces only, the kidney's centre kept inside
    assert right.size[2] > rois[0].size[2] and right.size[:2] == rois[0].size[:2]
    assert right.lower[2] < rois[0].lower[2] and right.upper[2] > rois[0].upper[2]
    assert left.upper[0] > rois[1].upper[0] and left.lower[0] == rois[1].lower[0] and left.size[1:] == rois[1].size[1:]
    # growing only through faces that tumor touches: the cut faces here are kidney (the tumor touches < 200 mm2)
    guarded = CascadePredictor(rough, fine, InferenceSettings(device="cpu", roi_growth=2, roi_growth_label=2))
    assert np.array_equal(guarded.segment(ct, rois).array, cut) and guarded.used_rois == rois
    # the ROIs of predict() are those used
    rough_oracle, _ = oracle_models((1.5, 1.5, 3.0), {"inplane_size": 64, "z_spacing": 3.0})
    result = CascadePredictor(rough_oracle, fine, InferenceSettings(device="cpu", min_component_ml=0.01)).predict(ct)
    assert (
        result.rois
        == CascadePredictor(rough_oracle, fine, InferenceSettings(device="cpu", min_component_ml=0.01)).locate(ct).rois
    )
    for bad in ({"roi_growth": -1}, {"roi_growth_label": 0}, {"roi_growth_min_mm2": float("nan")}):
        with pytest.raises(SettingsError, match="ROI growth needs"):
            InferenceSettings(device="cpu", **bad)


def test_roi_growth_stops_at_the_image_border_and_on_small_touches():
    from BiSCSegmentationLib.roi import grow_roi, touched_faces
    fg = np.zeros((10, 20, 30), bool)
    fg[0, 5:10, 5:10] = True  # 25 voxels on the lower z face
    box = (slice(4, 14), slice(0, 20), slice(3, 33))
    spacing_zyx = (3.0, 1.0, 2.0)
    assert touched_faces(fg, box, (40, 20, 40), spacing_zyx, 50.0) == [(2, -1)]  # 25 x 2 mm2 >= 50
    assert touched_faces(fg, box, (40, 20, 40), spacing_zyx, 51.0) == []
    assert touched_faces(fg, (slice(0, 10),) + box[1:], (40, 20, 40), spacing_zyx, 1.0) == []  # CT's first slice
    fg[1:5, -1, 0] = True  # upper y face (the box ends at the CT's last row) and lower x face
    assert sorted(touched_faces(fg, box, (40, 20, 40), spacing_zyx, 1.0)) == [(0, -1), (2, -1)]
    roi = KidneyROI((0, 0, 0), (100, 100, 60), "left")
    g = grow_roi(roi, [(2, -1), (0, 1)])
    assert np.allclose(g.lower, [-50, -50, -60]) and np.allclose(g.upper, [100, 50, 30]) and g.side == "left"
    clipped = grow_roi(roi, [(2, -1), (0, 1)], bounds=(np.array([-99, -99, -40.0]), np.array([70.0, 99, 99])))
    assert np.allclose(clipped.lower, [-50, -50, -40]) and np.allclose(clipped.upper, [70, 50, 30])
