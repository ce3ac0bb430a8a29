"""bisc-segment / bisc-phantom / bisc-demo: end to end on tiny random-weight models, errors, formats, seg.nrrd.

The models are built here (widths 4..32, constant label heads) so nothing depends on the bundled weights:
"rough" calls everything kidney (one ROI around the body), "rough_empty" finds nothing, "fine" calls
everything inside the ROI kidney.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from BiSCSegmentationLib import cli
from BiSCSegmentationLib.cli import phantom_main, segment_main, write_seg_nrrd
from BiSCSegmentationLib.model_file import BUNDLED_DIR, StageModel, save_model_file
from BiSCSegmentationLib.registry import read_registry
from BiSCSegmentationLib.network import SCUNetConfig
from BiSCSegmentationLib.roi import KidneyROI, load_rois, save_rois
from BiSCSegmentationLib.volume import Volume, kits19_affine_volume, read_volume, write_volume
from conftest import write_dicom_series

BIN = Path(sys.executable).parent


def _model(stage, grid, bias, window, path):
    torch.manual_seed(0)
    m = StageModel(stage, SCUNetConfig(widths=[4, 8, 16, 32]), grid, inference_window=window)
    net = m.build()
    with torch.no_grad():
        net.label_branch.head.weight.zero_()
        net.label_branch.head.bias.copy_(torch.tensor(bias))
    save_model_file(m, path)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    rough_grid = {"inplane_size": 64, "z_spacing": 6.0}
    return {"rough": _model("rough", rough_grid, [0.0, 5.0, 0.0], (16, 64, 64), d / "rough.pt"),
            "rough_empty": _model("rough", rough_grid, [5.0, 0.0, 0.0], (16, 64, 64), d / "rough_empty.pt"),
            "fine": _model("fine", {"spacing": [1.5, 1.5, 3.0]}, [0.0, 5.0, 0.0], (32, 160, 160), d / "fine.pt")}


def _ct_array(shape=(24, 64, 64), seed=0):
    """Slices x rows x cols, int16 HU: air, an elliptic body, two bright 'kidneys'."""
    rng = np.random.default_rng(seed)
    a = np.full(shape, -1000, np.int16)
    _, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    a[((yy - shape[1] / 2) / (shape[1] * 0.4)) ** 2 + ((xx - shape[2] / 2) / (shape[2] * 0.45)) ** 2 < 1] = 40
    for cx in (0.3, 0.7):
        a[((yy - shape[1] * 0.6) / 6) ** 2 + ((xx - shape[2] * cx) / 5) ** 2 < 1] = 180
    return a + rng.integers(-20, 20, shape).astype(np.int16)


@pytest.fixture(scope="module")
def ct_path(tmp_path_factory):
    """NIfTI with KiTS19's header (slices on the first axis, negative diagonal affine)."""
    p = tmp_path_factory.mktemp("ct") / "imaging.nii.gz"
    write_volume(kits19_affine_volume(_ct_array(), (3.0, 1.5, 1.5)), p)
    return p


def _args(models, *extra, rough="rough"):
    return ["--rough-model", models[rough], "--fine-model", models["fine"], "--device", "cpu", *extra]


def _same_geometry(a: Volume, b: Volume):
    assert a.array.shape == b.array.shape
    np.testing.assert_allclose(a.spacing, b.spacing, atol=1e-6)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-5)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)


@pytest.fixture(scope="module")
def full_run(models, ct_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    paths = {"labels": out / "labels.nii.gz", "seg": out / "labels.seg.nrrd", "rois": out / "rois.json"}
    rc, outcome = cli.run_segment_cli([str(ct_path), "-o", str(paths["labels"]), "--seg-nrrd", str(paths["seg"]),
                                       "--save-rois", str(paths["rois"]), "--quiet"] + _args(models))
    assert rc == 0
    return paths, outcome


# ------------------------------------------------------------------------------------------------ end to end
def test_output_on_input_grid(full_run, ct_path):
    paths, outcome = full_run
    ct, labels = read_volume(ct_path), read_volume(paths["labels"])
    _same_geometry(labels, ct)
    assert labels.array.dtype == np.uint8
    assert set(np.unique(labels.array)) <= {0, 1, 2} and (labels.array == 1).any()
    assert {"rough stage", "fine stage", "total"} <= set(outcome.timings)
    rois = load_rois(paths["rois"])
    assert len(rois) == 1 and rois[0].side == "both"


def test_seg_nrrd_has_slicer_fields(full_run):
    img = sitk.ReadImage(str(full_run[0]["seg"]))
    keys = set(img.GetMetaDataKeys())
    for k in ("ID", "Name", "Color", "LabelValue", "Layer", "Extent", "Tags"):
        assert f"Segment0_{k}" in keys
    assert "Segment1_ID" not in keys  # no tumor predicted: only present segments are written
    assert img.GetMetaData("Segment0_Name") == "Kidney"
    assert img.GetMetaData("Segmentation_MasterRepresentation") == "Binary labelmap"
    assert img.GetMetaData("Segmentation_ContainedRepresentationNames") == "Binary labelmap|"
    assert img.GetMetaData("Segmentation_ReferenceImageExtentOffset") == "0 0 0"
    assert "TerminologyEntry:Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^" \
           "Anatomical Structure~SCT^64033007^Kidney~" in img.GetMetaData("Segment0_Tags")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), read_volume(full_run[0]["labels"]).array)


def test_the_output_segments_are_defined_once(monkeypatch):
    from BiSCSegmentationLib import seg_nrrd
    monkeypatch.syspath_prepend(str(BUNDLED_DIR.parents[1]))  # BiSCSegmentation/: the Slicer module's package
    from BiSCSegmentationSlicer import terminology

    assert terminology.SEGMENTS is seg_nrrd.SIDE_SEGMENTS
    kidney, tumor = seg_nrrd.SEGMENTS
    assert (kidney.name, kidney.index, kidney.color_rgb255) == ("Kidney", 1, (185, 102, 83))
    assert (tumor.name, tumor.index, tumor.color_rgb255) == ("Renal tumor", 2, (144, 238, 144))
    assert kidney.terminology == ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^"
                                  "Anatomical Structure~SCT^64033007^Kidney~^^~Anatomic codes - DICOM master list~^^~^^")
    assert tumor.terminology == ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^49755003^"
                                 "Morphologically Altered Structure~SCT^4147007^Mass~^^~Anatomic codes - DICOM master "
                                 "list~SCT^64033007^Kidney~^^")
    for spec in seg_nrrd.SIDE_SEGMENTS:  # the same structure, color and codes, plus the side
        plain = seg_nrrd.SEGMENTS[spec.label - 1]
        assert spec.color_rgb255 == plain.color_rgb255 and spec.name.lower().endswith(plain.name.lower()[-6:])
        side_code = "SCT^24028007^Right" if spec.side == "right" else "SCT^7771000^Left"
        assert spec.terminology.replace(side_code, "^^") == plain.terminology
    meta = seg_nrrd.seg_nrrd_metadata(np.array([[[0, 1, 2]]], np.uint8))
    assert meta["Segment0_Name"] == "Kidney" and meta["Segment1_LabelValue"] == "2"
    split = seg_nrrd.seg_nrrd_metadata(np.array([[[0, 3, 2]]], np.uint8), seg_nrrd.SIDE_SEGMENTS)
    assert [split[f"Segment{n}_Name"] for n in range(2)] == ["Left kidney", "Right renal tumor"]


def test_seg_nrrd_writer_both_segments(tmp_path):
    a = np.zeros((6, 7, 8), np.uint8)
    a[1:3, 2:4, 3:6] = 1
    a[4, 5, 6] = 2
    vol = Volume(a, (0.8, 0.9, 2.0), (10.0, -5.0, 3.0))
    p = write_seg_nrrd(vol, tmp_path / "x.seg.nrrd")
    img = sitk.ReadImage(str(p))
    assert img.GetMetaData("Segment1_Name") == "Renal tumor"
    assert img.GetMetaData("Segment1_LabelValue") == "2" and img.GetMetaData("Segment1_Layer") == "0"
    assert img.GetMetaData("Segment0_Extent") == "3 5 2 3 1 2"  # i0 i1 j0 j1 k0 k1
    assert img.GetMetaData("Segment1_Extent") == "6 6 5 5 4 4"
    tags = img.GetMetaData("Segment1_Tags")
    assert "~SCT^49755003^Morphologically Altered Structure~SCT^4147007^Mass~" in tags
    assert "Anatomic codes - DICOM master list~SCT^64033007^Kidney~" in tags and tags.endswith("|")
    c = [float(v) for v in img.GetMetaData("Segment0_Color").split()]
    np.testing.assert_allclose(c, np.array([185, 102, 83]) / 255, atol=1e-5)
    only_tumor = write_seg_nrrd(vol.with_array((a == 2).astype(np.uint8) * 2), tmp_path / "t.seg.nrrd")
    img = sitk.ReadImage(str(only_tumor))
    assert img.GetMetaData("Segment0_Name") == "Renal tumor" and not img.HasMetaDataKey("Segment1_ID")
    np.testing.assert_allclose(img.GetOrigin(), vol.origin)


def test_rois_round_trip_runs_fine_stage_only(full_run, models, ct_path, tmp_path, capsys):
    paths, _ = full_run
    roi = load_rois(paths["rois"])[0]
    edited = tmp_path / "edited.json"
    save_rois([KidneyROI(roi.center, roi.size, roi.side)], edited)
    out = tmp_path / "fine.nrrd"
    # the rough model here finds nothing: success proves the rough stage did not run
    rc = segment_main([str(ct_path), "-o", str(out), "--rois", str(edited)] + _args(models, rough="rough_empty"))
    assert rc == 0, capsys.readouterr().err
    timings = capsys.readouterr().out
    assert "fine stage" in timings and "rough stage" not in timings and "total" in timings
    np.testing.assert_array_equal(read_volume(out).array, read_volume(paths["labels"]).array)


def test_grown_rois_are_reported_and_saved_as_used(models, ct_path, tmp_path, capsys):
    # the test fine model calls everything kidney, so its foreground reaches every face of a box inside the CT
    ct = read_volume(ct_path)
    small = tmp_path / "small.json"
    save_rois([KidneyROI(ct.index_to_physical((np.array(ct.size_ijk) - 1) / 2), (30, 30, 30), "left")], small)
    runs = {}
    for growth in ("0", "2"):
        out, rois = tmp_path / f"labels{growth}.nrrd", tmp_path / f"rois{growth}.json"
        rc = segment_main([str(ct_path), "-o", str(out), "--rois", str(small), "--save-rois", str(rois)] +
                          _args(models, "--roi-growth", growth))
        assert rc == 0
        runs[growth] = (read_volume(out).array, load_rois(rois), capsys.readouterr().out)
    (plain, boxes, said), (grown, used, said_grown) = runs["0"], runs["2"]
    assert "grown from" not in said and "grown from" in said_grown
    assert len(boxes) == len(used) and all(np.all(np.array(u.size) >= np.array(b.size)) for b, u in zip(boxes, used))
    assert any(u != b for b, u in zip(boxes, used))
    assert np.count_nonzero(grown) > np.count_nonzero(plain) and not np.any(plain & ~grown.astype(bool))
    assert segment_main([str(ct_path), "-o", str(tmp_path / "x.nrrd")] + _args(models, "--roi-growth", "-1")) == 2
    assert "roi_growth >= 0 (got -1)" in capsys.readouterr().err


def test_no_kidney_found_exit_3(models, ct_path, tmp_path, capsys):
    out = tmp_path / "none.nii.gz"
    rc = segment_main([str(ct_path), "-o", str(out), "--save-rois", str(tmp_path / "r.json"), "--quiet"]
                      + _args(models, rough="rough_empty"))
    assert rc == 3
    err = capsys.readouterr().err.strip()
    assert err.count("--rois") == 1 and len(err.splitlines()) == 1  # the advice once, one line
    assert not out.exists() and not (tmp_path / "r.json").exists()


def test_refuses_to_overwrite_without_force(models, ct_path, tmp_path, capsys):
    out, seg = tmp_path / "out.nii.gz", tmp_path / "out.seg.nrrd"
    out.write_text("keep me")
    rc = segment_main([str(ct_path), "-o", str(out), "--seg-nrrd", str(seg), "--quiet"] + _args(models))
    assert rc == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert out.read_text() == "keep me" and not seg.exists()
    rc = segment_main([str(ct_path), "-o", str(out), "--rough-only", "--force", "--quiet"] + _args(models))
    assert rc == 0 and read_volume(out).array.shape == read_volume(ct_path).array.shape


def test_ctrl_c_leaves_nothing(models, ct_path, tmp_path, monkeypatch, capsys):
    from BiSCSegmentationLib.cascade import CascadePredictor

    def interrupted(self, ct, rois):
        raise KeyboardInterrupt

    monkeypatch.setattr(CascadePredictor, "segment", interrupted)
    outs = [tmp_path / "a.nii.gz", tmp_path / "a.seg.nrrd", tmp_path / "a.json"]
    rc = segment_main([str(ct_path), "-o", str(outs[0]), "--seg-nrrd", str(outs[1]), "--save-rois", str(outs[2]),
                       "--quiet"] + _args(models))
    assert rc == 130 and "Cancelled" in capsys.readouterr().err
    assert not any(p.exists() for p in outs) and os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------------- errors
def _bad_inputs(tmp_path):
    text = tmp_path / "text.nii.gz"
    text.write_text("not an image")
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20), np.int16)), str(flat))
    labelmap = tmp_path / "seg.nii.gz"
    lab = np.zeros((24, 64, 64), np.uint8)
    lab[5:10, 20:40, 20:40] = 1
    lab[6:8, 25:30, 25:30] = 2
    write_volume(kits19_affine_volume(lab, (3.0, 1.5, 1.5)), labelmap)
    mask = tmp_path / "mask.nii.gz"
    write_volume(kits19_affine_volume((lab > 0).astype(np.float32), (3.0, 1.5, 1.5)), mask)
    return {"missing": (tmp_path / "nope.nii.gz", "no such file"), "unreadable": (text, "cannot read"),
            "2d": (flat, "3D"), "labelmap": (labelmap, "label map"), "mask": (mask, "not a CT")}


@pytest.mark.parametrize("case", ["missing", "unreadable", "2d", "labelmap", "mask"])
def test_bad_input_exit_2(case, models, tmp_path, capsys):
    path, expected = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out" / "x.nii.gz"
    assert segment_main([str(path), "-o", str(out)] + _args(models)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and expected in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_bad_model_files_exit_2(models, ct_path, tmp_path, capsys):
    truncated = tmp_path / "fine_truncated.pt"
    data = Path(models["fine"]).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    out = tmp_path / "x.nii.gz"
    rc = segment_main([str(ct_path), "-o", str(out), "--rough-model", models["rough"], "--fine-model", str(truncated)])
    assert rc == 2 and "truncated" in capsys.readouterr().err
    rc = segment_main([str(ct_path), "-o", str(out), "--rough-model", models["rough"], "--fine-model", models["rough"]])
    assert rc == 2 and "is a rough model" in capsys.readouterr().err
    rc = segment_main([str(ct_path), "-o", str(out), "--rough-model", models["rough"]])
    assert rc == 2 and "--fine-model" in capsys.readouterr().err
    assert not out.exists()


def test_bad_roi_files_exit_2(models, ct_path, tmp_path, capsys):
    out = tmp_path / "x.nii.gz"
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    assert segment_main([str(ct_path), "-o", str(out), "--rois", str(junk)] + _args(models)) == 2
    assert "not a JSON file" in capsys.readouterr().err
    away = tmp_path / "away.json"
    save_rois([KidneyROI((5000.0, 0.0, 0.0), (100.0, 100.0, 60.0), "left")], away)
    assert segment_main([str(ct_path), "-o", str(out), "--rois", str(away)] + _args(models)) == 2
    assert "outside the image" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------------------------- input formats
@pytest.mark.parametrize("fmt", ["nrrd", "mha", "dicom"])
def test_input_formats(fmt, models, tmp_path):
    arr = _ct_array((24, 48, 56), seed=1)
    vol = Volume(arr, (1.25, 1.5, 3.0), (-40.0, -30.0, 120.0))
    src = tmp_path / ("dicom" if fmt == "dicom" else f"ct.{fmt}")
    if fmt == "dicom":
        write_dicom_series(vol, src)
    else:
        write_volume(vol, src)
    back = read_volume(src)
    _same_geometry(back, vol)
    np.testing.assert_array_equal(back.array, arr)
    out = tmp_path / "rough.mha"
    assert segment_main([str(src), "-o", str(out), "--rough-only", "--quiet"] + _args(models)) == 0
    _same_geometry(read_volume(out), vol)


# -------------------------------------------------------------------------------------------- phantom / demo
@pytest.mark.slow
def test_console_scripts_phantom_then_segment(models, tmp_path):
    """The installed console scripts, as a user runs them (subprocess)."""
    run = subprocess.run([str(BIN / "bisc-phantom"), str(tmp_path / "cases"), "--spacing", "3", "3", "6",
                          "--seed", "3"], capture_output=True, encoding="utf-8", errors="replace", timeout=120)
    assert run.returncode == 0, run.stderr
    case = tmp_path / "cases" / "case_00003"
    assert "case_00003" in run.stdout and (case / "segmentation.nii.gz").is_file()
    again = subprocess.run([str(BIN / "bisc-phantom"), str(tmp_path / "cases"), "--seed", "3"],
                           capture_output=True, encoding="utf-8", errors="replace", timeout=60)
    assert again.returncode == 2 and "--force" in again.stderr
    out = tmp_path / "pred.nii.gz"
    run = subprocess.run([str(BIN / "bisc-segment"), str(case / "imaging.nii.gz"), "-o", str(out), "--rough-only"]
                         + _args(models), capture_output=True, encoding="utf-8", errors="replace", timeout=120)
    assert run.returncode == 0, run.stderr
    assert "total" in run.stdout and "rough stage" in run.stderr  # timings on stdout, progress bar on stderr
    _same_geometry(read_volume(out), read_volume(case / "imaging.nii.gz"))


def test_phantom_main_refuses_bad_arguments(tmp_path, capsys):
    assert phantom_main([str(tmp_path), "--count", "0"]) == 2
    assert "--count" in capsys.readouterr().err
    (tmp_path / "case_00000").mkdir()
    assert phantom_main([str(tmp_path)]) == 2
    assert "exists" in capsys.readouterr().err


def test_phantom_from_a_label_map_is_named_after_its_case(tmp_path, capsys):
    from BiSCSegmentationLib.cli import label_case_name
    lab = np.zeros((16, 48, 48), np.uint8)
    lab[4:12, 10:24, 8:20] = 1
    lab[6:9, 14:18, 10:14] = 2
    (tmp_path / "case_00042").mkdir()
    label = tmp_path / "case_00042" / "segmentation.nii.gz"
    write_volume(kits19_affine_volume(lab, (3.0, 1.5, 1.5)), label)
    assert phantom_main([str(tmp_path / "out"), "--from-label", str(label), "--seed", "5"]) == 0
    assert (tmp_path / "out" / "case_00042" / "imaging.nii.gz").is_file()  # not case_00005: another case
    assert f"anatomy of {label}" in capsys.readouterr().out
    assert phantom_main([str(tmp_path / "out"), "--from-label", str(label), "--count", "2", "--seed", "5"]) == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["case_00042", "case_00042_seed5", "case_00042_seed6"]
    assert phantom_main([str(tmp_path / "out"), "--from-label", str(label)]) == 2  # exists: --force
    assert "case_00042 exists" in capsys.readouterr().err
    assert label_case_name("/data/liver.seg.nrrd") == "liver" and label_case_name("x/y/mask.nii") == "mask"


def test_render_overview(tmp_path):
    from BiSCSegmentationLib.demo import render_overview, save_png

    ct = kits19_affine_volume(_ct_array(), (3.0, 1.5, 1.5))
    lab = np.zeros(ct.array.shape, np.uint8)
    lab[30:40, 20:40, 5:15] = 1
    lab[33:36, 25:30, 8:12] = 2
    roi = KidneyROI(tuple(ct.index_to_physical([10, 30, 35])), (40.0, 40.0, 45.0), "right")
    img = render_overview(ct, ct.with_array(lab), [roi], height=128)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[0] == 128 + 12
    assert np.all(img == (255, 215, 0), axis=2).sum() > 50  # ROI boxes drawn
    save_png(img, tmp_path / "o.png")
    with pytest.raises(FileExistsError):
        save_png(img, tmp_path / "o.png")


def test_the_bundled_model_list_is_read_in_one_place(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BUNDLED_DIR.parents[1]))  # BiSCSegmentation/: the Slicer module's package
    from BiSCSegmentationLib import registry
    from BiSCSegmentationLib.model_file import ModelFileError, bundled_entry, bundled_model_names
    from BiSCSegmentationSlicer import models as slicer_models

    reg = read_registry()
    assert reg["default"] in reg["models"] and bundled_model_names() == sorted(reg["models"])
    assert bundled_entry() == (reg["default"], reg["models"][reg["default"]])
    assert slicer_models.bundled_models() == reg["models"] and slicer_models.default_bundled() == reg["default"]
    monkeypatch.setattr(registry, "REGISTRY", tmp_path / "models.json")  # not shipped
    with pytest.raises(ModelFileError, match="reinstall"):
        bundled_model_names()
    assert slicer_models.bundled_models() == {} and slicer_models.default_bundled() == ""
    (tmp_path / "models.json").write_text('{"default": "x", "models": {"x": {}}}')
    assert bundled_model_names() == ["x"] and slicer_models.default_bundled() == "x"


@pytest.mark.slow
def test_demo_with_bundled_models(tmp_path, capsys):
    from BiSCSegmentationLib.demo import main

    out = tmp_path / "demo"
    assert main(["--out", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "Dice (KiTS19): kidney" in text and "total" in text
    for name in ("prediction.nii.gz", "prediction.seg.nrrd", "rois.json", "overview.png"):
        assert (out / name).is_file()
    assert main(["--out", str(out)]) == 2


def test_models_load_while_the_ct_is_read(models, ct_path, tmp_path, monkeypatch):
    """The model load runs beside the CT read (a cold start hides one behind the other): with each slowed to
    0.8 s the run waits for the models far less than 0.8 s after the read; a model error still surfaces."""
    import time as _time

    real_read, real_load = cli.read_volume, cli.load_predictor

    def slow_read(path):
        _time.sleep(0.8)
        return real_read(path)

    def slow_load(args, progress=None):
        _time.sleep(0.8)
        return real_load(args, progress)

    monkeypatch.setattr(cli, "read_volume", slow_read)
    monkeypatch.setattr(cli, "load_predictor", slow_load)
    rc, outcome = cli.run_segment_cli([str(ct_path), "-o", str(tmp_path / "l.nii.gz"), "--quiet", "--backend",
                                       "torch"] + _args(models))   # torch: no OpenVINO conversion to wait for
    assert rc == 0 and outcome.timings["read input"] >= 0.8
    assert outcome.timings["load models"] < 0.5, outcome.timings
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    rc, _ = cli.run_segment_cli([str(ct_path), "-o", str(tmp_path / "m.nii.gz"), "--quiet", "--rough-model",
                                 str(bad), "--fine-model", models["fine"], "--device", "cpu"])
    assert rc == 2
