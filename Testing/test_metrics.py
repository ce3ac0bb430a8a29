"""Metrics (Dice, surface Dice, volumes, diameters, tumors) and the folder / cascade evaluations."""
import json
import math

import numpy as np
import pytest

from BiSCSegmentationLib.evaluation import EvaluationError, evaluate_folders, main
from BiSCSegmentationLib.metrics import (case_metrics, dice, kits19_case_scores, largest_diameter_mm, surface_dice,
                                         surface_dices, tumor_components, volume_ml)
from BiSCSegmentationLib.volume import Volume, write_volume


def cube(shape=(12, 12, 12), lo=(2, 2, 2), size=(4, 4, 4)):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, a + n) for a, n in zip(lo, size))] = True
    return m


# --------------------------------------------------------------------------------------------------- Dice
def test_dice_hand_computed():
    p, g = np.zeros((1, 1, 10), bool), np.zeros((1, 1, 10), bool)
    p[0, 0, 0:4] = True   # 4 voxels
    g[0, 0, 1:7] = True   # 6 voxels, 3 shared
    assert dice(p, g) == pytest.approx(2 * 3 / 10)
    assert dice(p, p) == 1.0
    assert dice(p, ~p) == 0.0


def test_empty_conventions():
    empty, some = np.zeros((5, 5, 5), bool), cube((5, 5, 5), (1, 1, 1), (2, 2, 2))
    assert dice(empty, empty) == 1.0
    assert dice(empty, some) == 0.0 and dice(some, empty) == 0.0
    assert surface_dice(empty, empty, (1, 1, 1), 1.0) == 1.0
    assert surface_dice(empty, some, (1, 1, 1), 1.0) == 0.0
    assert surface_dice(some, empty, (1, 1, 1), 1.0) == 0.0


def test_kits19_case_scores():
    gt = np.zeros((4, 4, 4), np.uint8)
    gt[0:2] = 1
    gt[0, 0, 0:2] = 2               # 2 tumor voxels inside 32 kidney+tumor voxels
    pred = gt.copy()
    pred[0, 0, 1] = 1               # one tumor voxel predicted as kidney
    s = kits19_case_scores(pred, gt)
    assert s["kidney_dice"] == 1.0
    assert s["tumor_dice"] == pytest.approx(2 * 1 / 3)
    row = case_metrics(pred, gt, (1, 1, 1), (1.0, 1.15))
    assert row["mean_dice"] == pytest.approx((1 + 2 / 3) / 2)
    assert "kidney_surface_dice_1.0mm" in row and "tumor_surface_dice_1.15mm" in row


# ------------------------------------------------------------------------------------------- surface Dice
def test_surface_dice_identical():
    m = cube()
    m[3, 3, 6:9] = True
    for tol in (0.0, 1.0, 1.15):
        assert surface_dice(m, m, (2.5, 0.7, 0.7), tol) == 1.0


@pytest.mark.parametrize("lo", [(2, 2, 2), (0, 0, 0)])   # (0,0,0): touching the image border
def test_surface_dice_shifted_cube(lo):
    # 4^3 cubes A (x 0..3) and B (x 1..4), one voxel apart along x. Each has 56 surface voxels (64 - 2^3).
    # A's surface voxels that are also on B's surface: the rings (12) at x=1, x=2 and x=3 -> 36; the others
    # are exactly one voxel away. Same for B. So tol < 1 voxel -> 72/112 = 9/14; tol >= 1 voxel -> 1.
    a = cube(lo=lo)
    b = np.roll(a, 1, axis=2)
    assert surface_dice(a, b, (1, 1, 1), 0.5) == pytest.approx(9 / 14)
    assert surface_dice(a, b, (1, 1, 1), 1.0) == 1.0
    # anisotropic: the shift is along x at 2 mm, other axes coarser than the tolerance: same counts
    assert surface_dice(a, b, (3.0, 2.5, 2.0), 1.9) == pytest.approx(9 / 14)
    assert surface_dice(a, b, (3.0, 2.5, 2.0), 2.0) == 1.0
    # y at 0.5 mm: the 2x2 face centre of A at x=3 is 0.5 mm (one y step) from B's ring at x=3, and likewise
    # B's face centre at x=1 from A's ring: 4 + 4 more voxels within 1.9 mm -> 80/112
    assert surface_dice(a, b, (3.0, 0.5, 2.0), 1.9) == pytest.approx(80 / 112)


def test_surface_dice_monotone_in_tolerance():
    rng = np.random.default_rng(0)
    from scipy import ndimage
    a = ndimage.gaussian_filter(rng.random((20, 24, 24)), 2) > 0.5
    b = ndimage.gaussian_filter(rng.random((20, 24, 24)), 2) > 0.5
    tols = [0.0, 0.5, 1.0, 1.15, 2.0, 4.0, 50.0]
    values = list(surface_dices(a, b, (2.0, 0.8, 0.8), tols).values())
    assert all(x <= y for x, y in zip(values, values[1:]))
    assert 0.0 <= values[0] < 1.0 and values[-1] == 1.0


# ------------------------------------------------------------------------------------------- measurements
def test_volume_ml_exact_cube():
    m = cube((12, 12, 12), (1, 1, 1), (10, 10, 10))
    assert volume_ml(m, (0.5, 0.8, 2.0)) == pytest.approx(1000 * 0.5 * 0.8 * 2.0 / 1000)
    assert volume_ml(Volume(m.astype(np.uint8), (0.5, 0.8, 2.0))) == pytest.approx(0.8)


def test_largest_diameter_box_anisotropic():
    spacing_ijk = (0.5, 0.8, 2.5)
    for size_kji in [(3, 5, 7), (10, 20, 30)]:
        m = cube((40, 40, 40), (2, 3, 4), size_kji)
        ext = [(n - 1) * s for n, s in zip(size_kji[::-1], spacing_ijk)]   # centre-to-centre extents (i, j, k)
        expected = math.sqrt(sum(e * e for e in ext))
        assert largest_diameter_mm(m, spacing_ijk) == pytest.approx(expected)
        rot = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
        vol = Volume(m.astype(np.uint8), spacing_ijk, (10, 20, 30), rot)
        assert largest_diameter_mm(vol) == pytest.approx(expected)


def test_largest_diameter_degenerate_masks():
    m = np.zeros((5, 30, 30), bool)
    assert largest_diameter_mm(m, (1, 1, 1)) == 0.0
    m[2, 4, 4] = True
    assert largest_diameter_mm(m, (1, 1, 1)) == 0.0                           # one voxel
    m[2, 4, 5] = True
    assert largest_diameter_mm(m, (0.7, 1, 1)) == pytest.approx(0.7)          # two voxels
    line = np.zeros((3, 3, 100), bool)
    line[1, 1, :90] = True
    assert largest_diameter_mm(line, (0.5, 1, 1)) == pytest.approx(89 * 0.5)  # collinear
    flat = np.zeros((3, 30, 30), bool)
    flat[1, 2:22, 5:25] = True
    assert largest_diameter_mm(flat, (1, 2, 3)) == pytest.approx(math.hypot(19, 38))  # coplanar


def test_tumor_components():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[1:19, 1:19, 1:19] = 1
    labels[2:6, 2:6, 2:6] = 2        # 64 voxels
    labels[6, 6, 6] = 2              # touches the corner diagonally: same (26-connected) component
    labels[10:12, 10:12, 10:12] = 2  # 8 voxels, separate
    comps = tumor_components(labels, (1.0, 1.0, 2.0))
    assert [c["voxels"] for c in comps] == [65, 8]
    assert comps[1]["volume_ml"] == pytest.approx(8 * 2.0 / 1000)
    assert comps[1]["centroid_kji"] == pytest.approx((10.5, 10.5, 10.5))
    assert comps[1]["largest_diameter_mm"] == pytest.approx(math.sqrt(1 + 1 + 4))
    assert [c["index"] for c in comps] == [1, 2]
    assert len(tumor_components(labels, (1.0, 1.0, 2.0), min_volume_ml=0.05)) == 1
    vol = Volume(labels, (1.0, 1.0, 2.0), (100.0, 0.0, 0.0))
    assert tumor_components(vol)[1]["centroid_lps"] == pytest.approx((110.5, 10.5, 21.0))
    assert tumor_components(np.zeros((3, 3, 3), np.uint8), (1, 1, 1)) == []


# --------------------------------------------------------------------------------------------- evaluation
def _labels(seed):
    a = np.zeros((10, 12, 14), np.uint8)
    a[2:8, 3:9, 2 + seed:10] = 1
    a[3:5, 4:6, 4 + seed:7] = 2
    return a


def _dataset(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for n in range(3):
        write_volume(Volume(_labels(n), (0.8, 0.8, 3.0)), gt_dir / f"case_{n:05d}" / "segmentation.nii.gz")
    write_volume(Volume(_labels(0), (0.8, 0.8, 3.0)), pred_dir / "case_00000.nii.gz")
    write_volume(Volume(_labels(1), (0.8, 0.8, 3.0)), pred_dir / "prediction_00001.nrrd")
    return pred_dir, gt_dir


def test_evaluate_folders_perfect_and_missing(tmp_path):
    pred_dir, gt_dir = _dataset(tmp_path)
    report = evaluate_folders(pred_dir, gt_dir, out_dir=tmp_path / "out", progress=False)
    assert [r["case"] for r in report.rows] == ["case_00000", "case_00001"]
    for col in ("kidney_dice", "tumor_dice", "kidney_surface_dice_1.0mm", "tumor_surface_dice_1.15mm", "mean_dice"):
        assert report.summary["metrics"][col]["mean"] == 1.0
    assert report.summary["missing_predictions"] == ["case_00002"]
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["n_cases"] == 2 and saved["missing_predictions"] == ["case_00002"]
    header = (tmp_path / "out" / "per_case.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["case", "kidney_dice", "tumor_dice"]


def test_evaluate_folders_grid_mismatch(tmp_path):
    pred_dir, gt_dir = _dataset(tmp_path)
    write_volume(Volume(_labels(0), (0.8, 0.8, 2.0)), pred_dir / "case_00000.nii.gz", force=True)
    with pytest.raises(EvaluationError, match=r"case_00000.*spacing"):
        evaluate_folders(pred_dir, gt_dir, progress=False)


def test_cli_refuses_to_overwrite(tmp_path, capsys):
    pred_dir, gt_dir = _dataset(tmp_path)
    out = tmp_path / "out"
    assert main([str(pred_dir), str(gt_dir), "-o", str(out), "--quiet"]) == 0
    assert "case_00002" in capsys.readouterr().out
    before = (out / "summary.json").read_text()
    assert main([str(pred_dir), str(gt_dir), "-o", str(out), "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == before
    assert main([str(pred_dir), str(gt_dir), "-o", str(out), "--quiet", "--force"]) == 0
    assert main([str(tmp_path / "nowhere"), str(gt_dir), "-o", str(tmp_path / "o2")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_evaluate_cascade_with_fake_predictor(tmp_path):
    import bisc_training.evaluate_cascade as ec

    class Result:
        def __init__(self, labels):
            self.labels, self.timings = labels, {"rough": 0.1, "fine": 0.2}

    class Fake:
        def predict(self, ct):
            return Result(ct.with_array((ct.array > 0).astype(np.uint8)))

    cases = []
    for n in range(2):
        gt = Volume(_labels(n), (0.8, 0.8, 3.0))
        cases.append((f"case_{n:05d}", gt.with_array(np.where(gt.array > 0, 40, -1000).astype(np.int16)), gt))
    out = ec.evaluate_cascade(Fake(), cases, tmp_path / "ev", write_predictions=True, progress=False, verbose=False)
    assert out["n_cases"] == 2 and out["metrics"]["kidney_dice"]["mean"] == 1.0
    assert out["metrics"]["tumor_dice"]["mean"] == 0.0
    assert out["per_case"][0]["time_fine_s"] == 0.2 and "time_predict_s" in out["per_case"][0]
    assert (tmp_path / "ev" / "predictions" / "case_00001.nii.gz").is_file()
    with pytest.raises(FileExistsError):
        ec.evaluate_cascade(Fake(), cases, tmp_path / "ev", progress=False, verbose=False)


def test_components_in_box_labels_26_connected_components_inside_the_mask_box():
    from scipy import ndimage

    from BiSCSegmentationLib.metrics import components_in_box

    assert components_in_box(np.zeros((4, 5, 6), bool)) == (None, None, 0)
    m = np.zeros((8, 9, 10), bool)
    m[2, 3, 4] = m[3, 4, 5] = True          # touch at a corner only: one 26-connected component
    m[6, 7, 8] = True                       # apart: a second one
    box, comp, n = components_in_box(m)
    assert box == (slice(2, 7), slice(3, 8), slice(4, 9)) and n == 2
    assert comp.shape == m[box].shape and np.array_equal(comp > 0, m[box])
    full, _ = ndimage.label(m, structure=np.ones((3, 3, 3), bool))
    assert np.array_equal(comp, full[box])  # the same numbering as labelling the whole array
