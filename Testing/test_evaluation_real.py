"""bisc-evaluate on kidney-only references (real CT), ROI containment, refused label values, the KiTS23 cyst
mapping, bisc-train all refusing too few cases, and the real-CT benchmark's scoring on the shared real case."""
import csv
import importlib.util
import json
import sys

import numpy as np
import pytest

from BiSCSegmentationLib.evaluation import evaluate_folders, main, summarise
from BiSCSegmentationLib.roi import KidneyROI, save_rois
from BiSCSegmentationLib.volume import Volume, read_volume, write_volume
from conftest import REPO, needs_shared

SPACING = (1.0, 2.0, 3.0)          # (i, j, k) mm: a voxel is 6 mm^3
REALCT = REPO.parent / "shared" / "data" / "realct"


def kidneys():
    """Two 4x4x4 kidneys (label 1) side by side along i (LPS x): right at i 2..5, left at i 12..15."""
    a = np.zeros((8, 8, 20), np.uint8)   # [k, j, i]
    a[2:6, 2:6, 2:6] = 1
    a[2:6, 2:6, 12:16] = 1
    return a


def write_pair(tmp_path, gt, pred, case="case_00001"):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    write_volume(Volume(gt, SPACING), gt_dir / f"{case}.nii.gz", force=True)
    write_volume(Volume(pred, SPACING), pred_dir / f"{case}.nii.gz", force=True)
    return pred_dir, gt_dir


def with_false_tumor():
    pred = kidneys()
    pred[0:2, 0:5, 8:10] = 2     # 20 voxels of tumor outside both kidneys
    return pred


def test_kidney_only_reference_reports_false_tumor_and_no_tumor_dice(tmp_path, capsys):
    pred_dir, gt_dir = write_pair(tmp_path, kidneys(), with_false_tumor())
    out = tmp_path / "out"
    assert main([str(pred_dir), str(gt_dir), "-o", str(out), "--quiet", "--kidney-only-reference"]) == 0
    printed = capsys.readouterr().out
    assert "kidney only" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["tumor_dice"] == {"mean": None, "std": None, "n": 0}
    assert summary["metrics"]["mean_dice"]["n"] == 0
    # kidney Dice counts labels 1 and 2 together (KiTS): the false tumor outside the kidneys costs kidney Dice
    assert summary["metrics"]["kidney_dice"]["mean"] == pytest.approx(2 * 128 / (128 + 148))
    assert summary["metrics"]["false_tumor_ml"]["mean"] == pytest.approx(20 * 6 / 1000)
    assert summary["metrics"]["ref_kidney_ml"]["mean"] == pytest.approx(128 * 6 / 1000)
    row = next(csv.DictReader((out / "per_case.csv").open()))
    assert row["tumor_dice"] == "" and row["tumor_surface_dice_1.0mm"] == "" and row["mean_dice"] == ""
    # without the flag the same case is scored as KiTS does (tumor predicted, none there: 0), with a note
    report = evaluate_folders(pred_dir, gt_dir, progress=False)
    assert report.rows[0]["tumor_dice"] == 0.0 and "false_tumor_ml" not in report.rows[0]
    assert "--kidney-only-reference" in report.summary["notes"][0]


def test_not_applicable_scores_are_left_out_of_the_mean_and_counted():
    s = summarise([{"case": "a", "tumor_dice": None}, {"case": "b", "tumor_dice": 0.5},
                   {"case": "c", "tumor_dice": 0.7}])
    assert s["metrics"]["tumor_dice"]["mean"] == pytest.approx(0.6) and s["metrics"]["tumor_dice"]["n"] == 2


def test_kidney_only_flag_refuses_a_reference_with_tumor(tmp_path, capsys):
    gt = kidneys()
    gt[3, 3, 3] = 2
    pred_dir, gt_dir = write_pair(tmp_path, gt, kidneys())
    assert main([str(pred_dir), str(gt_dir), "-o", str(tmp_path / "out"), "--kidney-only-reference"]) == 2
    assert "holds tumor (label 2)" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_roi_containment_of_a_box_over_half_a_kidney(tmp_path):
    # LPS x of voxel i is i mm (identity direction, 1 mm): the box x 1.5..3.5 holds i = 2, 3 of the right
    # kidney (half of it); the second box holds all of the left one
    pred_dir, gt_dir = write_pair(tmp_path, kidneys(), kidneys())
    rois = [KidneyROI((2.5, 7.0, 10.0), (2.0, 30.0, 40.0), "right"), KidneyROI((14.0, 7.0, 10.0), (8.0, 30.0, 40.0))]
    save_rois(rois, tmp_path / "rois" / "case_00001.rois.json")
    report = evaluate_folders(pred_dir, gt_dir, rois=tmp_path / "rois", progress=False)
    row = report.rows[0]
    assert row["roi_containment_right"] == 0.5 and row["roi_containment_left"] == 1.0
    assert row["roi_containment"] == 0.75 and row["roi_count"] == 2 and row["roi_max_side_mm"] == 40.0
    assert report.summary["missing_rois"] == []
    # one file for the one case scored works too
    single = evaluate_folders(pred_dir, gt_dir, rois=tmp_path / "rois" / "case_00001.rois.json", progress=False)
    assert single.rows[0]["roi_containment"] == 0.75


@pytest.mark.parametrize("where,value", [("pred", 3), ("pred", 255), ("gt", 7), ("gt", 3)])
def test_label_values_outside_0_1_2_are_refused(tmp_path, capsys, where, value):
    gt, pred = kidneys(), kidneys()
    (pred if where == "pred" else gt)[3, 3, 3] = value
    pred_dir, gt_dir = write_pair(tmp_path, gt, pred)
    out = tmp_path / "out"
    assert main([str(pred_dir), str(gt_dir), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{pred_dir if where == 'pred' else gt_dir}/case_00001.nii.gz" in err and f"values {value} " in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and not out.exists()
    if (where, value) == ("gt", 3):
        assert "--cyst-as kidney" in err


def test_cysts_scored_as_kidney_when_asked(tmp_path):
    gt = kidneys()
    gt[2:4, 2:6, 2:6] = 3                   # KiTS23 cyst inside the right kidney
    pred_dir, gt_dir = write_pair(tmp_path, gt, kidneys())
    report = evaluate_folders(pred_dir, gt_dir, cyst_as="kidney", progress=False)
    assert report.rows[0]["kidney_dice"] == 1.0 and report.summary["cyst_as"] == "kidney"
    bad = kidneys()
    bad[3, 3, 3] = 3                        # a prediction with 3 is refused even so
    write_volume(Volume(bad, SPACING), pred_dir / "case_00001.nii.gz", force=True)
    with pytest.raises(ValueError, match=r"prediction .* values 3 "):
        evaluate_folders(pred_dir, gt_dir, cyst_as="kidney", progress=False)


def test_train_all_refuses_a_folder_too_small_for_its_splits_before_any_work(tmp_path, capsys, monkeypatch):
    from bisc_training import cli
    write_volume(Volume(kidneys(), SPACING), tmp_path / "kits" / "case_00000" / "segmentation.nii.gz")
    monkeypatch.setattr(cli.D, "prepare_cache", lambda *a, **k: pytest.fail("prepared before checking the split"))
    out = tmp_path / "run"
    assert cli.main(["all", "--kits", str(tmp_path / "kits"), "--out", str(out), "--tune-cases", "4"]) == 2
    err = capsys.readouterr().err
    assert "training 1, held-out 0, tuning 1" in err and "no held-out case to evaluate" in err
    assert "at least 2 cases" in err and not out.exists()


def _benchmark():
    spec = importlib.util.spec_from_file_location("realct_benchmark", REPO / "benchmarks" / "realct_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


@needs_shared(REALCT / "totalseg_example" / "kidneys.nii.gz", "the shared real CT's kidney reference")
def test_realct_benchmark_scores_the_shared_reference_against_itself_perfectly():
    bench = _benchmark()
    case = next(c for c in bench.find_cases([REALCT]) if c.name == "totalseg_example")
    assert case.kidney_only and case.phase == "non-contrast"
    ref = read_volume(case.reference)
    centre = ref.index_to_physical((np.array(ref.size_ijk) - 1) / 2.0)
    everything = KidneyROI(tuple(centre), (1000.0, 1000.0, 1000.0), "both")
    row = bench.case_row(case, ref, ref, [everything], 1.0)
    assert row["kidney_dice"] == 1.0 and row["kidney_surface_dice_1.0mm"] == 1.0
    assert row["tumor_dice"] is None and row["false_tumor_ml"] == 0.0
    assert row["roi_containment_right"] == row["roi_containment_left"] == 1.0 and row["roi_count"] == 1
    assert row["ref_kidney_ml"] == pytest.approx(185 + 139, abs=1.0)  # as the folder's README says
    table = bench.markdown([row], {"model": "m", "command": "c", "date": "d", "machine": "x"})
    assert "| totalseg_example | non-contrast | 1.000 | 1.000 | n/a (no tumor label) | 1 | right 100%, left 100%" \
        in table


def test_realct_benchmark_finds_extra_case_folders_and_their_contrast_phase(tmp_path):
    bench = _benchmark()
    for name, ref in (("a_case", "kidneys.nii.gz"), ("b_case", "labels.nii.gz"), ("no_ref", None)):
        (tmp_path / name).mkdir()
        for f in ["ct.nii.gz"] + ([ref] if ref else []):
            (tmp_path / name / f).write_bytes(b"")
    (tmp_path / "README.md").write_text("# cases\n\n## a_case/\n\nPhase not recorded.\n\n"
                                        "## b_case/\n\nNon-contrast CT after an arterial study.\n")
    cases = bench.find_cases([tmp_path])
    assert [(c.name, c.kidney_only, c.phase) for c in cases] == [("a_case", True, "unknown"),
                                                                 ("b_case", False, "non-contrast")]
    (tmp_path / "a_case" / "README.md").write_text("Portal-venous phase, 70 s.\n")  # its own README first
    assert bench.find_cases([tmp_path / "a_case"])[0].phase == "portal venous"  # a case folder given itself
