"""The bundled models on a real CT, run as a user runs them: ``bisc-segment`` on
``../shared/data/realct/totalseg_example/ct.nii.gz`` (TotalSegmentator's public test case, Wasserthal et al.
2023, Apache-2.0; non-contrast, 3 mm), scored against its ``kidneys.nii.gz`` with ``bisc-evaluate``'s scoring.

Validation only: nothing is trained or tuned on this case. Issue #16's targets (kidney Dice >= 0.85, two ROIs
each holding >= 98% of its kidney, no warning) are NOT met by any bundled model yet (README, *Accuracy*), so
they are not asserted here. What is asserted is what the experimental models do achieve and must keep:
bisc-realsynth-v11 no litres of false tumor, two kidney-sized ROIs, and, whenever its kidney Dice is below the
target, a critical warning; bisc-realsynth-v12 (docs/model-card-v12.md) one kidney found whole (its ROI
holds >= 98% of it), kidney Dice at least V12_MIN_DICE (measured 0.348-0.349 with every backend; v11 0.05),
two kidney-sized ROIs, and, below the target, a critical warning.
"""
import json
from pathlib import Path

import pytest

from BiSCSegmentationLib.cli import run_segment_cli
from BiSCSegmentationLib.evaluation import read_labels, score_labels
from BiSCSegmentationLib.roi import load_rois
from conftest import needs_shared

REAL_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "realct" / "totalseg_example"
MODEL = "bisc-realsynth-v11"
V12_MIN_DICE = 0.30             # a regression floor under v12's measured 0.348, far under the target
TARGET_KIDNEY_DICE = 0.85        # issue #16: below this the result must be flagged critical
MAX_FALSE_TUMOR_ML = 10.0        # the patient has no tumor (v10: 2742 mL)
MAX_ROI_SIDE_MM = 180.0          # v10: one 287 mm box

pytestmark = [pytest.mark.slow,
              needs_shared(REAL_CT / "ct.nii.gz", "the shared real CT")]


def _segment(out: Path, model: str):
    labels, rois, summary = out / "labels.nii.gz", out / "rois.json", out / "summary.json"
    rc, _ = run_segment_cli([str(REAL_CT / "ct.nii.gz"), "-o", str(labels), "--save-rois", str(rois),
                             "--summary", str(summary), "--quiet", "--device", "cpu", "--model", model])
    assert rc == 0, f"bisc-segment exit code {rc} on the real CT"
    ref = read_labels(REAL_CT / "kidneys.nii.gz", "totalseg_example", "reference")
    pred = read_labels(labels, "totalseg_example", "prediction")
    scores = score_labels(pred, ref, (1.0,), kidney_only=True, rois=load_rois(rois), case="totalseg_example")
    return scores, load_rois(rois), json.loads(summary.read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _segment(tmp_path_factory.mktemp("realct"), MODEL)


@pytest.fixture(scope="module")
def run_v12(tmp_path_factory):
    return _segment(tmp_path_factory.mktemp("realct12"), "bisc-realsynth-v12")


def test_no_false_tumor_on_a_patient_without_one(run):
    scores, _, _ = run
    assert scores["false_tumor_ml"] <= MAX_FALSE_TUMOR_ML, scores


def test_two_kidney_sized_rois(run):
    scores, rois, _ = run
    assert scores["roi_count"] == 2, scores
    assert max(max(r.size) for r in rois) <= MAX_ROI_SIDE_MM, [r.size for r in rois]


def test_a_result_below_the_target_is_flagged_critical(run):
    scores, _, summary = run
    critical = [w for w in summary["warnings"] if w["severity"] == "critical"]
    if scores["kidney_dice"] < TARGET_KIDNEY_DICE:
        assert critical and summary["trusted"] is False, (scores["kidney_dice"], summary["warnings"])
    else:   # the day the target is met, the result must also be clean (issue #16, item 3)
        assert summary["warnings"] == [], summary["warnings"]


def test_v12_finds_one_kidney_whole_and_flags_what_it_misses(run_v12):
    scores, rois, summary = run_v12
    assert scores["kidney_dice"] >= V12_MIN_DICE, scores
    assert max(scores["roi_containment_right"], scores["roi_containment_left"]) >= 0.98, scores
    assert scores["roi_count"] == 2 and max(max(r.size) for r in rois) <= MAX_ROI_SIDE_MM, [r.size for r in rois]
    critical = [w for w in summary["warnings"] if w["severity"] == "critical"]
    if scores["kidney_dice"] < TARGET_KIDNEY_DICE:
        assert critical and summary["trusted"] is False, (scores["kidney_dice"], summary["warnings"])
    else:
        assert summary["warnings"] == [], summary["warnings"]
