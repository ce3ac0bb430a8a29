"""Planning outputs: the PDF report (pages, text with the measured numbers), the DICOM SEG round trip
(geometry, voxels, references to the source instances, codes), bisc-segment --report/--plan-json/--dicom-seg,
and bisc-segment --batch (progress, resume, a bad case recorded, summary CSV)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pypdf import PdfReader

from BiSCSegmentationLib.batch import batch_main
from BiSCSegmentationLib.cli import segment_main
from BiSCSegmentationLib.dicom import read_dicom_seg_labels, series_identification, source_uids
from BiSCSegmentationLib.plan_cli import plan_main
from BiSCSegmentationLib.volume import Volume, read_volume, write_volume
from conftest import UID, write_dicom_series
from test_planning import SPACING, ellipsoid, grid, kidney_with_sinus

def write_dicom_case(folder: Path) -> np.ndarray:
    """A DICOM series with a non-trivial origin and spacing (a kidney with a tumor) written to ``folder``; its
    label map (numpy order of the volume written)."""
    labels = np.zeros((24, 40, 80), np.uint8)
    k, j, i = grid(labels.shape, (1.5, 1.5, 3.0))
    labels[ellipsoid(k, j, i, (36, 30, 30), (25, 15, 12))] = 1
    labels[ellipsoid(k, j, i, (40, 30, 40), (8, 8, 8))] = 2
    write_dicom_series(Volume(ct_for(labels), (1.5, 1.5, 3.0), (-60.0, -30.0, 100.0)), folder)
    return labels


def ct_for(labels: np.ndarray) -> np.ndarray:
    """A CT-like array: noisy body of 40 HU in air, kidney 180 HU, tumor 60 HU."""
    ct = np.full(labels.shape, 40, np.int16)
    ct[:, :2] = -1000
    ct[:, -2:] = -1000
    ct[labels == 1] = 180
    ct[labels == 2] = 60
    return ct + np.random.default_rng(0).integers(-20, 20, labels.shape).astype(np.int16)


# -------------------------------------------------------------------------------------------------- report
def test_report_pdf_has_pages_and_numbers(tmp_path, capsys):
    labels = kidney_with_sinus(tumor=(108.0, 35.0, 35.0), tumor_radius=8.0)
    k, j, i = grid(labels.shape)
    labels[ellipsoid(k, j, i, (60, 35, 128), (6, 6, 6))] = 2
    labels[ellipsoid(k, j, i, (20, 35, 110), (5, 5, 5))] = 2
    vol = Volume(labels, SPACING)
    write_volume(vol, tmp_path / "labels.nii.gz")
    write_volume(vol.with_array(ct_for(labels)), tmp_path / "ct.nii.gz")
    pdf, js = tmp_path / "report.pdf", tmp_path / "plan.json"
    assert plan_main([str(tmp_path / "labels.nii.gz"), "--ct", str(tmp_path / "ct.nii.gz"), "--report", str(pdf),
                      "--json", str(js), "--quiet"]) == 0
    doc = json.loads(js.read_text())
    assert len(doc["tumors"]) == 3 and doc["midline"]["from"].startswith("body")
    reader = PdfReader(str(pdf))
    assert len(reader.pages) == 3                 # summary, coronal + 2 tumors, the third tumor
    first = reader.pages[0].extract_text()
    assert "NOT FOR CLINICAL USE" in first and "ct.nii.gz" in first
    for kd in doc["kidneys"]:
        assert f"{kd['volume_ml']:.1f}" in first and f"{kd['remaining_parenchyma_ml']:.1f}" in first
    for t in doc["tumors"]:
        assert f"{t['diameter_3d_mm']:.1f}" in first and f"{t['volume_ml']:.1f}" in first
    assert doc["tumors"][0]["size_category"] in first
    assert doc["tumors"][0]["renal"]["complexity"] in first
    images = reader.pages[1].extract_text() + reader.pages[2].extract_text()
    for t in doc["tumors"]:
        assert f"Tumor {t['index']} ({t['side']}): axial {t['diameter_axial_mm']:.1f} mm" in images
    assert "Coronal overview" in images
    # existing report: refused, untouched
    before = pdf.read_bytes()
    assert plan_main([str(tmp_path / "labels.nii.gz"), "--report", str(pdf)]) == 2
    assert pdf.read_bytes() == before and "--force" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ DICOM SEG
@pytest.fixture(scope="module")
def dicom_case(tmp_path_factory):
    """A DICOM series with a non-trivial origin and spacing, and a label map on its grid."""
    root = tmp_path_factory.mktemp("dicom")
    labels = write_dicom_case(root / "series")
    ct = read_volume(root / "series")
    return root, ct, ct.with_array(labels)


def test_dicom_seg_round_trip(dicom_case, tmp_path):
    from BiSCSegmentationLib.dicom import add_dicom_seg
    from BiSCSegmentationLib.outputs import OutputSet

    root, ct, labels = dicom_case
    out = OutputSet()
    add_dicom_seg(out, tmp_path / "seg.dcm", labels, root / "series", {"name": "test-model"})
    out.commit()
    ds = pydicom.dcmread(str(tmp_path / "seg.dcm"))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and ds.Modality == "SEG"
    assert ds.StudyInstanceUID == UID + ".1" and ds.FrameOfReferenceUID == UID + ".4" and ds.PatientID == "P123"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == UID + ".2"
    codes = [(s.SegmentLabel, s.SegmentedPropertyTypeCodeSequence[0].CodeValue) for s in ds.SegmentSequence]
    assert codes == [("Kidney", "64033007"), ("Renal tumor", "4147007")]
    uids = source_uids(root / "series")
    referenced = {str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
                  for f in ds.PerFrameFunctionalGroupsSequence}
    assert referenced == set(uids)
    # geometry: each frame sits where its source image does
    src = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): pydicom.dcmread(f, stop_before_pixels=True)
           for f in (root / "series").iterdir()}
    for f in ds.PerFrameFunctionalGroupsSequence:
        ref = src[str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)]
        np.testing.assert_allclose([float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient],
                                   [float(v) for v in ref.ImagePositionPatient], atol=1e-3)
    shared = ds.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose([float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing], [1.5, 1.5])
    back = read_dicom_seg_labels(tmp_path / "seg.dcm", uids)
    np.testing.assert_array_equal(back, labels.array)


def test_dicom_identification(dicom_case):
    ident = series_identification(dicom_case[0] / "series")
    assert ident["patient_id"] == "P123" and ident["series_description"] == "abdomen venous"
    assert ident["files"] == str(dicom_case[1].array.shape[0])


# -------------------------------------------------------------------------------- bisc-segment and --batch
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from test_cli import _model

    d = tmp_path_factory.mktemp("models")
    return ["--rough-model", _model("rough", {"inplane_size": 64, "z_spacing": 6.0}, [0.0, 5.0, 0.0], (16, 64, 64),
                                    d / "rough.pt"),
            "--fine-model", _model("fine", {"spacing": [1.5, 1.5, 3.0]}, [0.0, 5.0, 0.0], (32, 160, 160),
                                   d / "fine.pt"), "--device", "cpu"]


def test_segment_dicom_with_report_plan_and_seg(dicom_case, models, tmp_path):
    root, ct, _ = dicom_case
    o = tmp_path / "out"
    rc = segment_main([str(root / "series"), "-o", str(o / "labels.nii.gz"), "--report", str(o / "r.pdf"),
                       "--plan-json", str(o / "plan.json"), "--dicom-seg", str(o / "seg.dcm"), "--quiet"] + models)
    assert rc == 0
    labels = read_volume(o / "labels.nii.gz")
    np.testing.assert_array_equal(read_dicom_seg_labels(o / "seg.dcm", source_uids(root / "series")), labels.array)
    plan = json.loads((o / "plan.json").read_text())
    assert plan["identification"]["patient_id"] == "P123" and plan["model"]["fine"]["sha256"]
    text = PdfReader(str(o / "r.pdf")).pages[0].extract_text()
    assert "P123" in text and plan["model"]["fine"]["sha256"] in text
    assert f"{plan['kidneys'][0]['volume_ml']:.1f}" in text


def test_segment_refuses_dicom_seg_for_a_file(models, tmp_path, capsys):
    ct = tmp_path / "ct.nii.gz"
    write_volume(Volume(np.zeros((8, 16, 16), np.int16)), ct)
    rc = segment_main([str(ct), "-o", str(tmp_path / "l.nii.gz"), "--dicom-seg", str(tmp_path / "s.dcm")] + models)
    assert rc == 2 and "needs a DICOM series" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_batch_resumes_and_records_a_bad_case(dicom_case, models, tmp_path, capsys):
    root, ct, _ = dicom_case
    inp = tmp_path / "in"
    inp.mkdir()
    write_volume(ct, inp / "alpha.nii.gz")
    (inp / "broken.nii.gz").write_bytes(b"not an image")
    (inp / "gamma").symlink_to(root / "series", target_is_directory=True)
    out = tmp_path / "out"
    rc = batch_main([str(inp), str(out), "--dicom-seg", "--quiet"] + models)
    assert rc == 1                                       # one case failed, the others went on
    rows = {r["case"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert set(rows) == {"alpha", "broken", "gamma"}
    assert rows["alpha"]["status"] == "done" and rows["gamma"]["status"] == "done"
    assert rows["broken"]["status"] == "failed" and "broken" in (out / "broken" / "error.txt").read_text()
    assert rows["broken"]["error"]
    assert float(rows["alpha"]["kidney_ml"]) > 0 and rows["alpha"]["seconds"]
    assert (out / "gamma" / "seg.dcm").is_file() and not (out / "alpha" / "seg.dcm").exists()
    assert (out / "alpha" / "plan.json").is_file()
    # a second run skips the finished cases and tries the bad one again
    stamp = (out / "alpha" / "labels.nii.gz").stat().st_mtime_ns
    (inp / "broken.nii.gz").unlink()
    write_volume(ct, inp / "broken.nii.gz")
    assert batch_main([str(inp), str(out), "--quiet"] + models) == 0
    rows = {r["case"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert rows["alpha"]["status"] == "done earlier" and rows["broken"]["status"] == "done"
    assert (out / "alpha" / "labels.nii.gz").stat().st_mtime_ns == stamp
    assert not (out / "broken" / "error.txt").exists()
    # through bisc-segment, with its progress bar on stderr
    assert segment_main(["--batch", str(inp), str(out)] + models) == 0
    captured = capsys.readouterr()
    assert "3 done earlier" in captured.out and "batch" in captured.err
