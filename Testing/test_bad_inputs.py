"""The catalogue of bad inputs, each built here on the fly: bisc-segment must refuse every one with exit code 2
and one line (no traceback), write nothing, change no input and leave no temporary file behind.

Refusals come before any network runs, so the models are tiny random ones (the bundled default where a
test needs real files to damage)."""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from BiSCSegmentationLib.cli import segment_main
from BiSCSegmentationLib.model_file import StageModel, save_model_file
from BiSCSegmentationLib.network import SCUNetConfig
from BiSCSegmentationLib.volume import Volume, kits19_affine_volume, to_sitk, write_volume
from conftest import UID, write_dicom_series


def ct_array(shape=(24, 64, 64)) -> np.ndarray:
    """A small abdomen in HU: air around, fat, muscle, two enhanced kidney-like blobs."""
    rng = np.random.default_rng(0)
    a = np.full(shape, -1000.0, np.float32)
    _, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    body = ((yy - shape[1] / 2) / (shape[1] * 0.42)) ** 2 + ((xx - shape[2] / 2) / (shape[2] * 0.46)) ** 2
    a[body < 1] = -100
    a[body < 0.6] = 50
    for cx in (0.3, 0.7):
        a[((yy - shape[1] * 0.6) / 6) ** 2 + ((xx - shape[2] * cx) / 5) ** 2 < 1] = 180
    return a + rng.normal(0, 10, shape).astype(np.float32)


def _tiny_model(stage, grid, window, path):
    torch.manual_seed(0)
    m = StageModel(stage, SCUNetConfig(widths=[4, 8, 16, 32]), grid, inference_window=window)
    m.build()
    save_model_file(m, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"rough": _tiny_model("rough", {"inplane_size": 64, "z_spacing": 6.0}, (16, 64, 64), d / "rough.pt"),
            "fine": _tiny_model("fine", {"spacing": [1.5, 1.5, 3.0]}, (32, 64, 64), d / "fine.pt")}


class _RunsCode:
    """A pickle that would create a file when loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _write(vol: Volume, path: Path) -> Path:
    write_volume(vol, path)
    return path


def _kits(array, spacing=(3.0, 1.5, 1.5)) -> Volume:
    return kits19_affine_volume(np.ascontiguousarray(array), spacing)


def build(case: str, d: Path, models) -> tuple:
    """(argv without -o, the message the error must contain) for one bad input, written into ``d``."""
    rough, fine = str(models["rough"]), str(models["fine"])
    a = ct_array()
    if case == "2d":
        p = d / "flat.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20), np.int16)), str(p))
        return [str(p)], "3D"
    if case == "4d":
        p = d / "time.nii.gz"
        frame = sitk.GetImageFromArray(np.zeros((4, 20, 20), np.int16))
        sitk.WriteImage(sitk.JoinSeries([frame] * 3), str(p))
        return [str(p)], "3D"
    if case == "rgb":
        p = d / "rgb.mha"
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 20, 20, 3), np.uint8), isVector=True), str(p))
        return [str(p)], "multi-component"
    if case == "one_slice":
        return [str(_write(Volume(a[:1].astype(np.int16)), d / "one.nii.gz"))], "several slices"
    if case == "zero_one":
        return [str(_write(_kits(np.clip((a + 1000) / 1300, 0, 1)), d / "norm.nii.gz"))], "[0, 1]"
    if case == "text":
        p = d / "text.nii.gz"
        p.write_text("not an image")
        return [str(p)], "cannot read"
    if case == "empty":
        p = d / "empty.nii"
        p.write_bytes(b"")
        return [str(p)], "the file is empty"
    if case == "label_map":
        lab = np.zeros(a.shape, np.uint8)
        lab[5:10, 20:40, 20:40] = 1
        lab[6:8, 25:30, 25:30] = 2
        return [str(_write(_kits(lab), d / "seg.nii.gz"))], "label map"
    if case == "two_dicom_series":
        folder = d / "dicom"
        write_dicom_series(Volume(a.astype(np.int16), (1.5, 1.5, 3.0)), folder)
        for f in sorted(folder.iterdir())[:4]:  # a second series in the same folder
            img = sitk.ReadImage(str(f))
            img.SetMetaData("0020|000e", UID + ".9")  # not the series UID the writer gives
            img.SetMetaData("0008|0018", img.GetMetaData("0008|0018") + ".9")
            w = sitk.ImageFileWriter()
            w.KeepOriginalImageUIDOn()
            w.SetFileName(str(folder / ("b_" + f.name)))
            w.Execute(img)
        return [str(folder)], "2 DICOM series"
    ct = _write(_kits(a.astype(np.int16)), d / "ct.nii.gz")
    if case == "output_is_input":
        return [str(ct), "--output-override", str(ct)], "would overwrite an input"
    if case == "unsupported_output":
        return [str(ct), "--output-override", str(d / "out.png")], "unsupported output format"
    if case == "existing_output":
        (d / "out").mkdir()
        (d / "out" / "labels.nii.gz").write_bytes(b"precious")
        return [str(ct)], "exists"
    if case == "malformed_rois":
        p = d / "rois.json"
        p.write_text("{not json")
        return [str(ct), "--rois", str(p)], "not a JSON file"
    if case == "truncated_model":
        p = d / "fine_cut.pt"
        data = Path(fine).read_bytes()
        p.write_bytes(data[: len(data) // 2])
        return [str(ct), "--model-override", rough, str(p)], "truncated"
    if case == "swapped_models":
        return [str(ct), "--model-override", fine, rough], "is a fine model"
    if case == "pickle_runs_code":
        p = d / "evil.pt"
        with open(p, "wb") as f:
            pickle.dump({"format": _RunsCode(d / "MARKER")}, f)
        return [str(ct), "--model-override", rough, str(p)], "could run code"
    if case == "nan_slices":
        b = a.copy()
        b[10:20] = np.nan
        p = d / "nan.nii.gz"  # written by SimpleITK itself: write_volume's read-back would see ITK turn NaN into 0
        sitk.WriteImage(to_sitk(_kits(b)), str(p))
        return [str(p)], "not numbers"
    if case == "unsigned_offset":
        return [str(_write(_kits(np.clip(a + 1024, 0, 4095).astype(np.uint16)), d / "u16.nii.gz"))], "rescale"
    if case == "mr_like":  # T1-like: air dark, fat bright, muscle grey, kidney brighter
        b = np.interp(a, [-1000, -100, 50, 180], [10, 1200, 450, 700]).astype(np.int16)
        return [str(_write(_kits(b), d / "mr.nii.gz"))], "not a CT in Hounsfield units"
    if case == "slices_100mm":
        return [str(_write(_kits(a.astype(np.int16), (100.0, 1.5, 1.5)), d / "thick.nii.gz"))], "spacing"
    if case == "truncated_nifti":
        p = _write(_kits(a.astype(np.int16)), d / "cut.nii.gz")
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        return [str(p)], "truncated"
    if case in ("truncated_raw_nifti", "truncated_nrrd", "truncated_mha"):  # uncompressed: the length is checked
        p = d / {"truncated_raw_nifti": "cut.nii", "truncated_nrrd": "cut.nrrd", "truncated_mha": "cut.mha"}[case]
        sitk.WriteImage(to_sitk(_kits(a.astype(np.int16))), str(p), False)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) - 4000])
        return [str(p)], "truncated"
    if case == "truncated_gzip_nrrd":
        p = d / "cut_gz.nrrd"
        sitk.WriteImage(to_sitk(_kits(a.astype(np.int16))), str(p), True)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) * 2 // 3])
        return [str(p)], "truncated"
    if case == "sheared_direction":
        img = to_sitk(Volume(a.astype(np.int16), (1.5, 1.5, 3.0)))
        p = d / "sheared.mha"
        img.SetDirection((1, 0.3, 0, 0, 1, 0, 0, 0, 1))
        sitk.WriteImage(img, str(p))
        return [str(p)], "not orthonormal"
    if case == "singular_direction":  # ITK refuses it with a message about object addresses and matrices
        p = d / "singular.mha"
        sitk.WriteImage(to_sitk(Volume(a.astype(np.int16))), str(p))
        p.write_bytes(p.read_bytes().replace(b"TransformMatrix = 1 0 0 0 1 0 0 0 1", b"TransformMatrix = 1 0 0 1 0 0 0 0 1"))
        return [str(p)], "direction matrix is singular"
    raise KeyError(case)


CASES = ["2d", "4d", "rgb", "one_slice", "zero_one", "text", "empty", "label_map", "two_dicom_series",
         "output_is_input", "unsupported_output", "existing_output", "malformed_rois", "truncated_model",
         "swapped_models", "pickle_runs_code", "nan_slices", "unsigned_offset", "mr_like", "slices_100mm",
         "truncated_nifti", "truncated_raw_nifti", "truncated_nrrd", "truncated_mha", "truncated_gzip_nrrd",
         "sheared_direction", "singular_direction"]


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in d.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_with_one_line(case, models, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    argv, expected = build(case, inputs, models)
    out = inputs / "out" / "labels.nii.gz"
    model_args = ["--rough-model", str(models["rough"]), "--fine-model", str(models["fine"])]
    if "--output-override" in argv:
        i = argv.index("--output-override")
        out = Path(argv[i + 1])
        del argv[i:i + 2]
    if "--model-override" in argv:
        i = argv.index("--model-override")
        model_args = ["--rough-model", argv[i + 1], "--fine-model", argv[i + 2]]
        del argv[i:i + 3]
    before = _snapshot(tmp_path)
    capsys.readouterr()
    rc = segment_main(argv + ["-o", str(out), "--device", "cpu", "--quiet"] + model_args)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert expected in err, err
    assert _snapshot(tmp_path) == before  # nothing written, nothing changed, no temporary file left
    assert not (inputs / "MARKER").exists()


def test_existing_output_is_kept_byte_for_byte(models, tmp_path, capsys):
    argv, _ = build("existing_output", tmp_path, models)
    out = tmp_path / "out" / "labels.nii.gz"
    rc = segment_main(argv + ["-o", str(out), "--rough-model", str(models["rough"]), "--fine-model",
                              str(models["fine"]), "--quiet"])
    assert rc == 2 and out.read_bytes() == b"precious"
    assert "--force" in capsys.readouterr().err
