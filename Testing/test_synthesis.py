"""bisc_training.synthesis on a tiny hand-made BTCV-like scaffold (4 mm, no shared data needed): same seed ->
same case, labels 0/1/2 with the kidneys where the scaffold has them, HU per contrast phase as designed, real
geometry kept, KiTS19 tumors inserted touching a kidney and taken from training cases only."""
import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from BiSCSegmentationLib.volume import Volume, read_volume, to_canonical, write_volume

from bisc_training.data import read_case
from bisc_training.synthesis import core, renal
from bisc_training.synthesis.anatomy import RKID, LKID, T, TISSUES
from bisc_training.synthesis.appearance import PHASES, render
from bisc_training.synthesis.core import synthesize_case

SP = 4.0


def _ellipsoid(shape, c_mm, r_mm):
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return ((z * SP - c_mm[0]) / r_mm[0]) ** 2 + ((y * SP - c_mm[1]) / r_mm[1]) ** 2 + \
           ((x * SP - c_mm[2]) / r_mm[2]) ** 2 <= 1


def _scaffold(folder):
    """BTCV-like organs (liver, spleen, stomach, kidneys, aorta, IVC, pancreas) on a 4 mm grid, LPS header."""
    shape = (60, 56, 64)                                             # z 240, y 224, x 256 mm
    a = np.zeros(shape, np.int8)
    a[_ellipsoid(shape, (170, 90, 90), (60, 60, 70))] = 6            # liver
    a[_ellipsoid(shape, (170, 110, 190), (40, 30, 25))] = 1          # spleen
    a[_ellipsoid(shape, (165, 70, 160), (30, 25, 30))] = 7           # stomach
    a[_ellipsoid(shape, (110, 130, 80), (50, 22, 25))] = RKID
    a[_ellipsoid(shape, (115, 130, 176), (50, 22, 25))] = LKID
    a[_ellipsoid(shape, (110, 95, 128), (25, 12, 35))] = 11          # pancreas
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    a[((y * SP - 115) ** 2 + (x * SP - 138) ** 2 <= 100) & (z > 10) & (z < 55)] = 8   # aorta
    a[((y * SP - 112) ** 2 + (x * SP - 110) ** 2 <= 100) & (z > 10) & (z < 55)] = 9   # IVC
    vol = Volume(a, (SP, SP, SP), (-128.0, -100.0, -300.0), np.eye(3))
    path = folder / "0001.nii.gz"
    write_volume(vol, path)
    return path


def _kits(folder, case_id):
    """A fake KiTS19 donor: a 30 mm tumor on a kidney, 2 mm voxels."""
    shape = (40, 40, 40)
    lab = np.zeros(shape, np.uint8)
    z, y, x = np.ogrid[:40, :40, :40]
    lab[((z - 20) ** 2 + (y - 20) ** 2 + (x - 12) ** 2) * 4 <= 400] = 1
    lab[((z - 20) ** 2 + (y - 20) ** 2 + (x - 28) ** 2) * 4 <= 225] = 2
    (folder / case_id).mkdir(parents=True)
    write_volume(Volume(lab, (2.0, 2.0, 2.0)), folder / case_id / "segmentation.nii.gz")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    btcv = _scaffold(root)
    first_listed = [ln.strip() for ln in renal.TUMOR_LIST.read_text().splitlines()
                    if ln.strip() and not ln.startswith("#")][0]
    _kits(root / "kits", first_listed)
    _kits(root / "kits", "case_00200")                              # held out: must never be a donor
    return btcv, root / "kits", first_listed


def _can(v):
    return to_canonical(v)[0]


def test_same_seed_same_case(data):
    btcv, kits, _ = data
    a = synthesize_case(btcv, 7, kits)
    b = synthesize_case(btcv, 7, kits)
    c = synthesize_case(btcv, 8, kits)
    assert np.array_equal(a[0].array, b[0].array) and np.array_equal(a[1].array, b[1].array)
    assert a[0].same_grid(b[0]) and a[2] == b[2]
    assert a[0].array.shape != c[0].array.shape or not np.array_equal(a[0].array, c[0].array)


@pytest.mark.parametrize("seed", range(4))
def test_labels_are_the_scaffold_kidneys_on_its_grid(data, seed):
    btcv, _, _ = data
    ct, lab, rec, tis = synthesize_case(btcv, seed, None, spacing=(SP, SP, SP), fov=False, return_tissues=True)
    org, can = core.read_btcv(btcv)
    assert ct.same_grid(lab) and ct.same_grid(can) and ct.array.dtype == np.int16
    assert set(np.unique(lab.array)) <= {0, 1}
    kid = np.isin(org, (RKID, LKID))
    l, t = _can(lab).array, _can(tis).array
    assert np.all(l[kid] == 1)                                        # every scaffold kidney voxel is kidney
    extra = (l == 1) & ~kid
    assert np.all(t[extra] == T["cyst"])                              # only cysts may bulge beyond it,
    assert not np.any(l[(org > 0) & ~kid])                            # never into another organ


def test_geometry_kept_with_field_of_view(data):
    btcv, _, _ = data
    ct, lab, rec = synthesize_case(btcv, 11, None, spacing=(3.0, 3.0, 3.0))
    org, can = core.read_btcv(btcv)
    want = can.index_to_physical(np.argwhere(np.isin(org, (RKID, LKID))).mean(axis=0)[::-1])
    got = lab.index_to_physical(np.argwhere(lab.array > 0).mean(axis=0)[::-1])
    assert np.allclose(lab.spacing, 3.0, atol=0.2) and np.allclose(lab.direction, can.direction)
    assert np.linalg.norm(got - want) < 4.0, (got, want)


def _tissue_sampler():
    """Every tissue in blocks of 6x6x6 voxels (for render())."""
    n = len(TISSUES)
    tis = np.repeat(np.repeat(np.repeat(np.arange(n, dtype=np.uint8)[:, None, None], 6, 0), 6, 1), 6, 2)
    return tis


@pytest.mark.parametrize("seed", range(6))
def test_hu_by_phase_as_designed(seed):
    tis = _tissue_sampler()
    means = {}
    for phase in PHASES:
        img = render(tis, phase, "clear_cell", np.random.default_rng(seed))
        means[phase] = {name: float(img[tis == T[name]].mean()) for name in TISSUES}
    nc, cm, ex = means["noncontrast"], means["corticomedullary"], means["excretory"]
    assert 0 <= nc["cortex"] <= 60 and 0 <= nc["medulla"] <= 60 and abs(nc["cortex"] - nc["medulla"]) < 20
    assert cm["cortex"] - cm["medulla"] > 40 and cm["aorta"] > 200
    assert ex["collecting"] > 300 and nc["collecting"] < 40
    assert -130 < nc["fat"] < -60 and nc["cyst"] < 30


def test_noncontrast_kidney_in_the_final_ct(data):
    btcv, _, _ = data
    ct, lab, rec = synthesize_case(btcv, 5, None, spacing=(SP, SP, SP), fov=False, phase="noncontrast")
    inner = ndi.binary_erosion(lab.array == 1)
    assert rec["phase"] == "noncontrast"
    assert 0 <= float(np.median(ct.array[inner])) <= 60


def test_tumor_inserted_touching_a_kidney_from_training_donors(data, tmp_path, monkeypatch):
    btcv, kits, listed = data
    assert [p.parent.name for p in renal.tumor_pool(kits)] == [listed]
    bad_list = tmp_path / "list.txt"                                 # a held-out id in the list is still refused
    bad_list.write_text(f"# ids\ncase_00200\n{listed}\n")
    monkeypatch.setattr(renal, "TUMOR_LIST", bad_list)
    assert [p.parent.name for p in renal.tumor_pool(kits)] == [listed]
    monkeypatch.undo()
    for seed in range(3):
        ct, lab, rec = synthesize_case(btcv, seed, kits, spacing=(SP, SP, SP), fov=False, tumor_prob=1.0)
        tumor = lab.array == 2
        assert rec["tumors"] and all(t["donor"] == listed for t in rec["tumors"])
        assert tumor.sum() * SP ** 3 / 1000 > 3                      # a 30 mm donor: ~14 mL
        comp, n = ndi.label(tumor)
        grown = ndi.binary_dilation(lab.array == 1, np.ones((3, 3, 3), bool))
        for i in range(1, n + 1):
            assert (grown & (comp == i)).any(), f"seed {seed}: a tumor piece does not touch a kidney"


def test_cli_writes_kits_layout(data, tmp_path):
    btcv, kits, _ = data
    from bisc_training.synthesis.__main__ import main
    assert main(["--btcv", str(btcv.parent), "--kits", str(kits), "--out", str(tmp_path), "--count", "1",
                 "--spacing", "3,3,3"]) == 0
    ct, lab = read_case(tmp_path, "case_00000")
    assert ct.same_grid(lab) and ct.array.dtype == np.int16 and set(np.unique(lab.array)) <= {0, 1, 2}
    assert json.loads((tmp_path / "case_00000" / "synthesis.json").read_text())["phase"] in PHASES


def test_rough_cache_and_roi_score(data, tmp_path):
    """The experiment helpers: a rough-only cache of written cases, and the share of a kidney inside ROI boxes."""
    btcv, kits, _ = data
    from bisc_training.synthesis.__main__ import main
    from bisc_training.synthesis import rough_cache, score_rois
    assert main(["--btcv", str(btcv.parent), "--out", str(tmp_path / "cases"), "--count", "2", "--spacing", "4,4,4"]) == 0
    assert rough_cache.main(["--kits", str(tmp_path / "cases"), "--cache", str(tmp_path / "cache")]) == 0
    arr = np.load(tmp_path / "cache" / "case_00000" / "rough_labels.npy")
    assert arr.shape[1:] == (128, 128) and arr.max() == 1 and (tmp_path / "cache" / "split.json").is_file()
    ct, lab = read_case(tmp_path / "cases", "case_00000")
    write_volume(lab, tmp_path / "k.nii.gz")
    idx = np.argwhere(lab.array > 0)
    lo, hi = lab.index_to_physical(idx.min(0)[::-1]), lab.index_to_physical(idx.max(0)[::-1])
    box = {"center": list((lo + hi) / 2), "size": list(np.abs(hi - lo) + 8)}
    (tmp_path / "r.json").write_text(json.dumps({"rois": [box]}))
    assert [k["share_inside"] for k in score_rois.score(tmp_path / "r.json", tmp_path / "k.nii.gz")["kidneys"]] == [1, 1]
    box["center"] = list((lo + hi) / 2 + np.array([0, 0, 400.0]))
    (tmp_path / "r.json").write_text(json.dumps({"rois": [box]}))
    assert [k["share_inside"] for k in score_rois.score(tmp_path / "r.json", tmp_path / "k.nii.gz")["kidneys"]] == [0, 0]


def test_body_below_the_kidneys_is_as_wide_as_the_abdomen_not_a_tube(data):
    """BTCV labels nothing below the kidneys; the cavity there must widen to the abdomen's width (the real
    lower abdomen and pelvis), or the rough network never sees a pelvis and fires on the real one."""
    btcv, _, _ = data
    _, _, _, tis = synthesize_case(btcv, 3, fov=False, return_tissues=True)
    t = _can(tis).array
    lab = _can(read_volume(btcv)).array
    body = t != T["air"]
    width = body.sum(axis=2).max(axis=1)          # widest row of body per slice (voxels along x)
    kz = np.nonzero(np.isin(lab, (RKID, LKID)).any(axis=(1, 2)))[0]
    organ_z = np.nonzero(lab.any(axis=(1, 2)))[0]
    assert width[: kz.min()].min() >= 0.9 * width[organ_z].max()


def test_pelvic_bones_iliac_wing_then_femoral_head():
    from bisc_training.synthesis.anatomy import _pelvic_bones

    Y, X = np.mgrid[-150:150:1.0, -200:200:1.0]      # 1 mm pixels
    pel = dict(L=100.0, wing_w=9.0, femur_depth=140.0, femur_r=24.0, femur_dx=75.0, femur_dy=30.0)
    rvx, rvy = 22.0, 16.0
    cav = np.ones(Y.shape, bool)
    for s_ in (-1, 1):
        wing = np.full(Y.shape, T["fat"], np.uint8)
        _pelvic_bones(wing, cav, X, Y, 40.0, rvx, rvy, pel, s_)
        bone = np.argwhere(wing == T["cortical_bone"])
        assert len(bone) and np.all(np.sign(X[wing == T["cortical_bone"]]) == s_)   # on its own side
        head = np.full(Y.shape, T["fat"], np.uint8)
        _pelvic_bones(head, cav, X, Y, 140.0, rvx, rvy, pel, s_)   # at the femoral head's centre
        cx, cy = s_ * (rvx + 75.0), -30.0
        i, j = int(cy + 150), int(cx + 200)
        assert head[i, j] == T["cancellous_bone"]                    # marrow inside a cortical rim
        assert head[i, j + int(s_ * 23)] == T["cortical_bone"]           # 21.5-24 mm: the cortex
        assert not (head == T["cortical_bone"])[:, (X[0] * s_) < 0].any()   # nothing on the other side
