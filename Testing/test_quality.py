"""Trust signals (quality.py): input warnings, output plausibility with known answers, and the two end-to-end
anchors: the bundled models on the shared real CT must say the result is implausible; a clean phantom must
raise nothing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from BiSCSegmentationLib.cli import run_segment_cli
from BiSCSegmentationLib.quality import (CRITICAL, WARNING, QualityWarning, check_input, check_result, mean_entropy,
                                         merge)
from BiSCSegmentationLib.roi import KidneyROI
from BiSCSegmentationLib.volume import Volume, VolumeError
from conftest import needs_shared

REAL_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "realct" / "totalseg_example"
SP = (3.0, 1.0, 1.0)  # z, y, x mm: 3 uL voxels


def _ct(shape=(30, 64, 64), spacing=(1.0, 1.0, 3.0), direction=np.eye(3)) -> Volume:
    a = np.full(shape, -1000, np.int16)
    a[:, 8:56, 8:56] = -100
    a[:, 16:48, 16:48] = 40
    return Volume(a, spacing, (0, 0, 0), direction)


def codes(warnings):
    return [w.code for w in warnings]


# ----------------------------------------------------------------------------------------------------- input
def test_a_plain_ct_raises_no_input_warning():
    assert check_input(_ct()) == []


def test_oblique_thick_and_airless_inputs_are_read_with_a_warning():
    t = np.radians(20)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    assert codes(check_input(_ct(direction=rot))) == ["INPUT_OBLIQUE"]
    assert codes(check_input(_ct(spacing=(1.0, 1.0, 7.0)))) == ["INPUT_THICK_SLICES"]
    cropped = _ct()
    cropped.array[cropped.array == -1000] = -100  # cut inside the body: fat, no air
    assert codes(check_input(cropped)) == ["INPUT_NO_AIR"]


def test_padding_outside_the_field_of_view_is_not_mistaken_for_missing_air():
    ct = _ct()
    ct.array[ct.array == -1000] = -3024  # scanners pad outside the reconstruction circle
    assert check_input(ct) == []


@pytest.mark.parametrize("values, message", [
    (lambda a: np.clip((a + 1000) / 1300.0, 0, 1), r"\[0, 1\]"),                       # normalised
    (lambda a: (a > -500).astype(np.uint8) + (a > 0), "label map"),                    # a mask
    (lambda a: (a.astype(np.int32) + 1024).astype(np.uint16), "without its rescale"),  # stored values
    (lambda a: a[:1], "several slices"),
    (lambda a: a.astype(bool), "numbers"),
])
def test_what_is_not_a_ct_in_hu_is_refused(values, message):
    """The one "is this CT?" check: bisc-segment, the cascade, the Slicer module and the real-CT source
    builder all call check_input."""
    with pytest.raises(VolumeError, match=message):
        check_input(Volume(values(_ct().array), (1.0, 1.0, 3.0)))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 100.0), (0.1, 0.1, 1.0), (1.0, 1.0, 11.0)])
def test_implausible_spacing_is_refused(spacing):
    with pytest.raises(VolumeError, match="spacing"):
        check_input(_ct(spacing=spacing))


def test_infinite_voxels_are_refused_with_the_slices():
    ct = _ct()
    a = ct.array.astype(np.float32)
    a[3:5, 0, 0] = np.inf
    with pytest.raises(VolumeError, match=r"2 voxels in 2 slices \(3-4\)"):
        check_input(ct.with_array(a))


# ---------------------------------------------------------------------------------------------------- output
def _kidney(labels, z0, y0, x0, r=(12, 15, 10), value=1):
    z, y, x = np.ogrid[: labels.shape[0], : labels.shape[1], : labels.shape[2]]
    labels[((z - z0) / r[0]) ** 2 + ((y - y0) / r[1]) ** 2 + ((x - x0) / r[2]) ** 2 <= 1] = value


# z, y, x spacing (mm) that makes each kidney of _case (7 540 voxels) this size
NORMAL = (6.0, 2.0, 2.0)   # 181 mL, 144 mm long: a plain kidney
SMALL = (2.5, 2.0, 2.0)    # 75 mL: smaller than 99% of real kidneys
HUGE = (24.0, 4.0, 4.0)    # 2.9 L: no real kidney


def _case(shape=(60, 100, 160)):
    """Two ellipsoid kidneys of 7 540 voxels each, their ROIs' boxes, a CT at 150 HU in them."""
    labels = np.zeros(shape, np.uint8)
    _kidney(labels, 30, 50, 40)
    _kidney(labels, 30, 50, 120)
    ct = np.where(labels > 0, 150, 40).astype(np.int16)
    boxes = [(slice(10, 50), slice(25, 75), slice(20, 60)), (slice(10, 50), slice(25, 75), slice(100, 140))]
    rois = [KidneyROI((40, 50, 90), (40, 50, 120), "right"), KidneyROI((120, 50, 90), (40, 50, 120), "left")]
    return labels, ct, boxes, rois


def test_two_normal_kidneys_raise_nothing():
    labels, ct, boxes, rois = _case()
    assert check_result(labels, ct, NORMAL, boxes, rois, [(0.1, 1000)]) == []


def test_each_implausible_result_has_its_warning():
    sp = NORMAL
    labels, ct, boxes, rois = _case()
    third = labels.copy()
    _kidney(third, 30, 50, 80, r=(8, 8, 8))  # between the two kidneys, inside the ROIs' union
    assert "KIDNEY_COUNT" in codes(check_result(third, ct, sp, boxes, rois))

    huge = check_result(labels, ct, HUGE, boxes, rois)
    assert [(w.code, w.severity) for w in huge if w.code.startswith("KIDNEY_")] == [("KIDNEY_VOLUME", CRITICAL)] * 2
    small = check_result(labels, ct, SMALL, boxes, rois)
    assert [(w.code, w.severity) for w in small] == [("KIDNEY_VOLUME", WARNING)] * 2
    long = check_result(labels, ct, (9.0, 1.5, 1.5), boxes, rois)  # 153 mL but 216 mm long
    assert [(w.code, w.severity) for w in long] == [("KIDNEY_EXTENT", WARNING)] * 2

    one = labels.copy()
    one[:, :, 80:] = 0
    assert codes(check_result(one, ct, sp, boxes[:1], rois[:1])) == ["ONE_KIDNEY"]

    tumors = labels.copy()
    _kidney(tumors, 30, 50, 40, r=(11, 14, 9), value=2)   # most of the right kidney
    _kidney(tumors, 30, 50, 120, r=(3, 3, 3), value=2)    # a small one on the left
    found = codes(check_result(tumors, ct, sp, boxes, rois))
    assert found == ["TUMOR_LARGER_THAN_KIDNEY", "TUMOR_BILATERAL"]

    cut = [(slice(10, 50), slice(25, 75), slice(20, 45))] + boxes[1:]  # a box that cuts the kidney at x = 45
    assert codes(check_result(labels, ct, sp, cut, rois)) == ["FOREGROUND_AT_ROI_FACE"]

    halves = [(slice(0, 20),) + b[1:] for b in boxes]  # the scan starts half way through the kidneys
    assert codes(check_result(labels[30:], ct[30:], (10.0, 2.0, 2.0), halves, rois)) == ["KIDNEY_AT_SCAN_EDGE"]
    assert codes(check_result(labels, ct, sp, boxes, rois, [(0.9, 500), (0.1, 10)])) == ["LOW_CONFIDENCE"]
    assert codes(check_result(labels, np.where(labels > 0, -90, 40), sp, boxes, rois)) == ["KIDNEY_INTENSITY"]
    assert codes(check_result(np.zeros_like(labels), ct, sp, boxes, rois)) == ["NO_KIDNEY_LABELLED"]
    big = [KidneyROI((0, 0, 0), (287, 287, 240), "both")]
    assert [(w.code, w.severity) for w in check_result(labels, ct, sp, boxes[:1], big)][0] == \
        ("ROI_TOO_LARGE", CRITICAL)


def test_mean_entropy_weights_rois_by_their_voxels_and_merge_keeps_each_warning_once():
    assert mean_entropy([(0.9, 100), (0.1, 900)]) == pytest.approx(0.18)
    assert mean_entropy([]) is None
    w = QualityWarning("A", WARNING, "x")
    assert merge([w], [w, QualityWarning("B", CRITICAL, "y")]) == [w, QualityWarning("B", CRITICAL, "y")]
    with pytest.raises(ValueError):
        QualityWarning("A", "bad", "x")


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
@needs_shared(REAL_CT / "ct.nii.gz", "the shared real CT")
def test_bundled_models_on_the_shared_real_ct_say_the_result_is_implausible(tmp_path, capsys):
    """Validation only: nothing is tuned on this case. Whatever the bundled model labels there today, a result no
    kidney could have must come with a critical warning, in the summary and as exit code 4 under --strict."""
    summary = tmp_path / "summary.json"
    rc, outcome = run_segment_cli([str(REAL_CT / "ct.nii.gz"), "-o", str(tmp_path / "labels.nii.gz"), "--summary",
                                   str(summary), "--strict", "--quiet", "--device", "cpu"])
    doc = json.loads(summary.read_text())
    found = {w["code"]: w["severity"] for w in doc["warnings"]}
    err = capsys.readouterr().err
    assert rc == 4 and found.get("KIDNEY_VOLUME") == CRITICAL and doc["trusted"] is False
    assert "CRITICAL [KIDNEY_VOLUME]" in err and "do not use it" in err
    assert doc["model"]["rough"]["sha256"] and doc["volumes"]["kidney_ml"] > 0 and doc["rois"]


@pytest.mark.slow
def test_a_clean_phantom_raises_no_warning(tmp_path, capsys):
    from BiSCSegmentationLib import phantom

    ct, _ = phantom.make_case(0)
    path = phantom.write_kits_case(tmp_path, "case_00000", ct, _) / "imaging.nii.gz"
    summary = tmp_path / "summary.json"
    rc, outcome = run_segment_cli([str(path), "-o", str(tmp_path / "labels.nii.gz"), "--summary", str(summary),
                                   "--strict", "--device", "cpu"])
    out = capsys.readouterr()
    assert rc == 0 and outcome.warnings == [] and json.loads(summary.read_text())["warnings"] == []
    assert "No quality warnings." in out.out and "WARNING" not in out.err


def test_summary_volumes_count_the_whole_map_and_each_roi_box():
    from BiSCSegmentationLib.summary import volumes_ml

    a = np.zeros((10, 20, 20), np.uint8)
    a[:, :, :5] = 1     # 1000 voxels of kidney at x 0-4
    a[:, :, 15:] = 2    # 1000 voxels of tumor at x 15-19
    labels = Volume(a, (2.0, 1.0, 1.0))  # 2 uL voxels
    roi = KidneyROI((4.5, 9.5, 4.5), (10.0, 20.0, 10.0), "right")  # x -0.5..9.5 mm: voxels 0-4, the kidney
    v = volumes_ml(labels, [roi])
    assert v["kidney_ml"] == 2.0 and v["tumor_ml"] == 2.0
    assert v["per_roi"] == [{"roi": "Right kidney ROI", "side": "right", "kidney_ml": 2.0, "tumor_ml": 0.0}]
