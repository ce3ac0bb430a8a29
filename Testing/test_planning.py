"""Planning measurements, R.E.N.A.L. nephrometry and size category on synthetic shapes with known answers, and
bisc-plan end to end (JSON keys, refusals)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from BiSCSegmentationLib.nephrometry import complexity, convex_hull_mask, size_category
from BiSCSegmentationLib.plan_cli import plan_main
from BiSCSegmentationLib.planning import analyse, check_labels
from BiSCSegmentationLib.volume import Volume, VolumeError, read_volume, write_volume

SPACING = (1.0, 1.0, 1.0)


def grid(shape_kji, spacing_ijk=SPACING):
    """Physical offsets (mm) of every voxel centre along k, j, i (origin at voxel 0)."""
    k, j, i = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape_kji, spacing_ijk[::-1])], indexing="ij")
    return k, j, i


def ellipsoid(k, j, i, centre_kji, semi_kji):
    return sum(((a - c) / s) ** 2 for a, c, s in zip((k, j, i), centre_kji, semi_kji)) <= 1.0


def kidney_with_sinus(shape=(120, 70, 140), tumor=None, tumor_radius=10.0):
    """Label array [k, j, i] (k superior, j posterior, i left in an identity LPS header): two bean-free
    ellipsoid kidneys (semi-axes 55 mm craniocaudal, 25 AP, 30 LR) each with an inner sinus cavity (25, 10, 12 mm)
    opened medially by a hilum channel; optionally a spherical tumor (centre in mm, k/j/i) in the right one."""
    k, j, i = grid(shape)
    labels = np.zeros(shape, np.uint8)
    for ci, medial in ((35.0, +1), (105.0, -1)):
        kid = ellipsoid(k, j, i, (60, 35, ci), (55, 25, 30))
        sinus = ellipsoid(k, j, i, (60, 35, ci), (25, 10, 12))
        hilum = (np.abs(k - 60) < 8) & (np.abs(j - 35) < 5) & (medial * (i - ci) > 0)
        labels[kid & ~sinus & ~hilum] = 1
    if tumor is not None:
        labels[ellipsoid(k, j, i, tumor, (tumor_radius,) * 3)] = 2
    return labels


# ------------------------------------------------------------------------------------------ measurements
def test_sphere_diameters_and_volume_anisotropic():
    """A 40 mm sphere on 0.8 x 0.8 x 2 mm voxels: both diameters 40 mm (voxel centre to centre), volume 33.5 mL."""
    spacing = (0.8, 0.8, 2.0)
    shape = (50, 120, 120)
    k, j, i = grid(shape, spacing)
    centre = (50.0, 48.0, 48.0)
    labels = np.zeros(shape, np.uint8)
    labels[ellipsoid(k, j, i, centre, (45, 45, 45))] = 1      # a kidney around it (volume >= 10 mL)
    labels[ellipsoid(k, j, i, centre, (20, 20, 20))] = 2
    plan = analyse(Volume(labels, spacing), renal=False)
    (t,) = plan.tumors
    assert t["diameter_3d_mm"] == pytest.approx(40.0, abs=0.05)
    assert t["diameter_axial_mm"] == pytest.approx(40.0, abs=0.05)
    assert t["volume_ml"] == pytest.approx(4 / 3 * math.pi * 20 ** 3 / 1000, rel=0.03)
    assert t["size_category"] == "T1a"
    ends = np.array(t["diameter_axial_endpoints_lps"])
    assert np.linalg.norm(ends[0] - ends[1]) == pytest.approx(40.0, abs=0.05)
    assert ends[0][2] == ends[1][2]                                   # axial: one slice
    ends3 = np.array(t["diameter_3d_endpoints_lps"])
    assert np.linalg.norm(ends3[0] - ends3[1]) == pytest.approx(t["diameter_3d_mm"], abs=0.05)
    (kd,) = plan.kidneys
    assert kd["volume_ml"] == pytest.approx(kd["parenchyma_ml"] + kd["tumor_volume_ml"], abs=0.02)
    assert kd["tumor_volume_ml"] == pytest.approx(t["volume_ml"], abs=0.01)
    # 5 mm margin around a 20 mm sphere: about (25^3 - 20^3) * 4/3 pi of parenchyma is removed (voxelised)
    removed = 4 / 3 * math.pi * (25 ** 3 - 20 ** 3) / 1000
    assert kd["parenchyma_ml"] - kd["remaining_parenchyma_ml"] == pytest.approx(removed, rel=0.1)


def test_axial_shorter_than_3d_for_a_craniocaudal_tumor():
    shape = (90, 60, 60)
    k, j, i = grid(shape)
    labels = np.zeros(shape, np.uint8)
    labels[ellipsoid(k, j, i, (45, 30, 30), (40, 25, 25))] = 1
    labels[ellipsoid(k, j, i, (45, 30, 30), (30, 10, 10))] = 2      # 60 mm long, 20 mm wide
    (t,) = analyse(Volume(labels, SPACING), renal=False).tumors
    assert t["diameter_3d_mm"] == pytest.approx(60.0, abs=0.05)
    assert t["diameter_axial_mm"] == pytest.approx(20.0, abs=0.05)
    assert t["size_category"] == "T1b"


def test_size_category_cut_offs():
    assert [size_category(d) for d in (10, 40, 40.1, 70, 70.1, 100, 100.1)] == \
        ["T1a", "T1a", "T1b", "T1b", "T2a", "T2a", "T2b"]
    assert size_category(0) is None and size_category(float("nan")) is None
    assert [complexity(s) for s in (4, 6, 7, 9, 10, 12)] == ["low", "low", "moderate", "moderate", "high", "high"]


def test_sides_and_anterior_posterior_follow_the_header_not_the_array():
    """The same array under an LPS header and under a flipped (RAS-like) header: sides and a/p swap."""
    labels = kidney_with_sinus(tumor=(60.0, 12.0, 35.0))    # anterior (small j) in the right (small i) kidney
    lps = analyse(Volume(labels, SPACING))
    flipped = analyse(Volume(labels, SPACING, (0, 0, 0), np.diag([-1.0, -1.0, 1.0])))
    (t_lps,), (t_flip,) = lps.tumors, flipped.tumors
    assert (t_lps["side"], t_lps["renal"]["A"]) == ("right", "a")
    assert (t_flip["side"], t_flip["renal"]["A"]) == ("left", "p")
    assert sorted(k["side"] for k in lps.kidneys) == ["left", "right"]
    assert t_lps["volume_ml"] == t_flip["volume_ml"] and t_lps["diameter_3d_mm"] == t_flip["diameter_3d_mm"]
    # the array permuted and flipped with a header saying so is the same patient: same answers
    perm = np.ascontiguousarray(np.transpose(labels, (2, 1, 0))[:, ::-1, :])    # stored [i, -j, k]
    direction = np.array([[0, 0, 1], [0, -1, 0], [1, 0, 0]], float)             # columns: i->S, j->A, k->L
    origin = (0.0, (labels.shape[1] - 1) * 1.0, 0.0)
    (t_perm,) = analyse(Volume(perm, SPACING, origin, direction)).tumors
    assert (t_perm["side"], t_perm["renal"]["A"]) == ("right", "a")
    np.testing.assert_allclose(t_perm["centroid_lps"], t_lps["centroid_lps"], atol=1e-6)


def test_one_kidney_side_from_patient_coordinates():
    """A single kidney at small i: right under LPS (x grows left) and left under a flipped header."""
    labels = kidney_with_sinus()
    labels[:, :, 70:] = 0
    full = np.zeros((120, 70, 200), np.uint8)
    full[:, :, :140] = labels
    (right,) = analyse(Volume(full, SPACING)).kidneys
    (left,) = analyse(Volume(full, SPACING, (0, 0, 0), np.diag([-1.0, 1.0, 1.0]))).kidneys
    assert right["side"] == "right" and left["side"] == "left"


# ----------------------------------------------------------------------------------------------- R.E.N.A.L.
def _box_kidney_with_tumor(offset_mm: float):
    """A box kidney (convex, no sinus) whose face at i = 60 mm carries a 15 mm sphere centred ``offset_mm``
    outside the face."""
    shape = (80, 60, 100)
    k, j, i = grid(shape)
    labels = np.zeros(shape, np.uint8)
    labels[(k >= 10) & (k < 70) & (j >= 10) & (j < 50) & (i >= 5) & (i <= 60)] = 1
    labels[ellipsoid(k, j, i, (40, 30, 60 + offset_mm), (15, 15, 15))] = 2
    return labels


@pytest.mark.parametrize("offset, lo, hi, e", [(0.0, 0.45, 0.55, (1, 2)), (8.0, 0.8, 1.0, (1,)),
                                               (-25.0, 0.0, 0.0, (3,))])
def test_exophytic_share(offset, lo, hi, e):
    """Half-buried sphere ~50 % exophytic; mostly outside >= 50 % (E 1); fully inside: endophytic (E 3)."""
    (t,) = analyse(Volume(_box_kidney_with_tumor(offset), SPACING)).tumors
    share = t["renal"]["raw"]["E"]["exophytic_share"]
    assert lo <= share <= hi
    assert t["renal"]["E"] in e


def test_no_sinus_means_n_and_l_not_computed_with_reason():
    (t,) = analyse(Volume(_box_kidney_with_tumor(0.0), SPACING)).tumors
    r = t["renal"]
    assert r["N"] is None and r["L"] is None and r["score"] is None and r["complexity"] is None
    assert "no renal sinus" in r["raw"]["N"]["reason"] and "polar lines" in r["raw"]["L"]["reason"]
    assert r["R"] == 1 and r["E"] is not None and r["A"] in ("a", "p", "x")


def test_upper_pole_tumor_far_from_sinus():
    """Sinus cavity from 35 to 85 mm craniocaudally; a 10 mm tumor centred at 108 mm: above the upper polar line
    (L 1), 13 mm from the sinus (N 1), 20 mm (R 1), endophytic-or-not by the hull."""
    (t,) = analyse(Volume(kidney_with_sinus(tumor=(108.0, 35.0, 35.0), tumor_radius=8.0), SPACING)).tumors
    r = t["renal"]
    assert r["L"] == 1 and r["raw"]["L"]["share_between_polar_lines"] == 0.0
    assert r["N"] == 1 and 10.0 <= r["raw"]["N"]["distance_to_sinus_mm"] <= 16.0
    assert r["R"] == 1
    assert r["score"] == r["R"] + r["E"] + r["N"] + r["L"]


def test_central_tumor_touching_sinus():
    """A tumor at mid-kidney reaching the sinus: N 3 (<= 4 mm), L 3 (between the polar lines, across the
    midline), x for a tumor straddling the coronal plane."""
    (t,) = analyse(Volume(kidney_with_sinus(tumor=(60.0, 35.0, 18.0), tumor_radius=8.0), SPACING)).tumors
    r = t["renal"]
    assert r["N"] == 3 and r["raw"]["N"]["distance_to_sinus_mm"] <= 4.0
    assert r["L"] == 3 and r["raw"]["L"]["crosses_axial_midline"]
    assert r["A"] == "x"
    assert r["complexity"] == complexity(r["score"]) and r["notation"].endswith("x")


def test_convex_hull_mask_known_shapes():
    m = np.zeros((20, 20, 20), bool)
    m[5:15, 5:15, 5:15] = True
    m[8:12, 8:12, 5:15] = False                      # a tunnel: the hull fills it
    hull = convex_hull_mask(m)
    assert hull[5:15, 5:15, 5:15].all() and not hull[:5].any() and hull.sum() == 1000
    flat = np.zeros((5, 5, 5), bool)
    flat[2, 1:4, 1:4] = True                         # one slice: its own hull, no qhull error
    assert np.array_equal(convex_hull_mask(flat), flat)


def test_several_tumors_and_fragments():
    labels = kidney_with_sinus(tumor=(108.0, 35.0, 35.0), tumor_radius=8.0)
    k, j, i = grid(labels.shape)
    labels[ellipsoid(k, j, i, (60, 35, 128), (6, 6, 6))] = 2            # second tumor, left kidney
    labels[40, 40, 10] = 2                                                   # a 1-voxel fragment
    plan = analyse(Volume(labels, SPACING))
    assert [t["side"] for t in plan.tumors] == ["right", "left"]
    assert plan.tumors[0]["volume_ml"] > plan.tumors[1]["volume_ml"]
    assert plan.fragments["count"] == 1
    assert sum(k["tumor_count"] for k in plan.kidneys) == 2


def test_check_labels_refuses_a_ct():
    with pytest.raises(VolumeError, match="only 0 .*1 .*2"):
        check_labels(Volume(np.full((4, 4, 4), -1000, np.int16)))
    assert check_labels(Volume(np.ones((4, 4, 4), np.uint16))).array.dtype == np.uint8


# -------------------------------------------------------------------------------------------------- bisc-plan
def test_bisc_plan_json_keys(tmp_path, capsys):
    path = tmp_path / "labels.nii.gz"
    write_volume(Volume(kidney_with_sinus(tumor=(60.0, 12.0, 35.0)), SPACING), path)
    out = tmp_path / "plan.json"
    assert plan_main([str(path), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert {"side", "volume_ml", "tumor_volume_ml"} <= set(doc["kidneys"][0])
    t = doc["tumors"][0]
    assert {"side", "volume_ml", "diameter_axial_mm", "diameter_3d_mm", "size_category", "renal"} <= set(t)
    assert {"R", "E", "N", "A", "L", "score", "raw"} <= set(t["renal"])
    assert "Tumor 1 (right)" in capsys.readouterr().out
    # refuses to overwrite, and says how
    assert plan_main([str(path), "--json", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert plan_main([str(path), "--json", str(out), "--force", "--quiet"]) == 0


def test_bisc_plan_refusals(tmp_path, capsys):
    ct = tmp_path / "ct.nii.gz"
    write_volume(Volume(np.full((8, 8, 8), -1000, np.int16)), ct)
    assert plan_main([str(ct), "--json", str(tmp_path / "x.json")]) == 2
    assert "only 0" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
    assert plan_main([str(ct), "--json", str(tmp_path / "x.txt")]) == 2
    assert ".json" in capsys.readouterr().err
    assert plan_main([str(tmp_path / "missing.nii.gz")]) == 2
    assert "no such file" in capsys.readouterr().err
    labels = tmp_path / "l.nii.gz"
    write_volume(Volume(np.zeros((8, 8, 8), np.uint8)), labels)
    other = tmp_path / "other.nii.gz"
    write_volume(Volume(np.zeros((8, 8, 9), np.int16)), other)
    assert plan_main([str(labels), "--ct", str(other)]) == 2
    assert "different voxel grids" in capsys.readouterr().err
    assert read_volume(labels).array.shape == (8, 8, 8)


def test_side_of_is_the_one_side_rule():
    """Core ROIs, planning and the Slicer module's ROIs and segments all take a kidney's side from here."""
    from BiSCSegmentationLib.roi import CROSSING_MM, side_of
    assert side_of(-80.0, -20.0, 0.0) == "right" and side_of(20.0, 80.0, 0.0) == "left"  # LPS +x: patient's left
    assert side_of(-5.0, -5.0, 0.0) == "right" and side_of(5.0, 5.0, 0.0) == "left"      # a point
    assert side_of(-60.0, 60.0, 0.0) == "both"                                          # horseshoe
    assert side_of(-CROSSING_MM + 1, 60.0, 0.0) == "left"         # not far enough over the midline
    assert side_of(-25.0, 200.0, 0.0) == "left"                   # far enough, but under a quarter of its width
    assert side_of(50.0, 90.0, 100.0) == "right"                  # relative to the midline, not to 0
