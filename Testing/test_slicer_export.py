"""The module's Export report and Export DICOM SEG (issue 19, items 5 and 6) on slicer-core's real MRML: the
PDF holds the planning table's numbers, the stored warnings and model, and follows hand edits; the DICOM SEG
references the CT's source series (found through the DICOM database's files, or a chosen folder) and holds
the segmentation's voxels, also when the CT node's slices run the other way; without a DICOM source, without
a kidney, on another grid, or onto an existing file, nothing is written and the message says why."""
from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from pypdf import PdfReader

from slicer_fixtures import case_files, ct_node, ctx, needs_slicer_core  # noqa: F401 - fixtures
from conftest import UID
from test_planning_outputs import write_dicom_case

pytestmark = [needs_slicer_core, pytest.mark.slicer]

MODEL = {"name": "kits-test-model", "rough": {"file": None, "sha256": "ab" * 32},
         "fine": {"file": None, "sha256": "cd" * 32}}
WARNING = {"code": "tumor_at_roi_face", "severity": "warning", "message": "The tumor touches the ROI's face."}


def _labels(shape):
    """A box kidney with a cube tumor on its face (as test_slicer_planning)."""
    labels = np.zeros(shape, np.uint8)
    labels[8:32, 25:65, 15:45] = 1
    labels[14:22, 30:40, 40:50] = 2
    return labels


def _written(ctx, node, labels):
    """The module's output for ``labels`` (on ``node``'s grid) with its planning table, as a run leaves it."""
    from BiSCSegmentationLib.roi import KidneyROI
    from BiSCSegmentationSlicer.logic import WARNINGS_ATTRIBUTE, BiSCLogic
    from BiSCSegmentationSlicer.export import MODEL_ATTRIBUTE
    from BiSCSegmentationSlicer.scene import volume_from_node

    logic = BiSCLogic(ctx)
    ct = volume_from_node(node)
    centre = np.argwhere(labels == 1).mean(axis=0)[::-1]
    roi = KidneyROI(tuple(ct.index_to_physical(centre)), (600.0, 600.0, 600.0), "right")
    seg = logic.apply_labels(node, labels, [roi])
    seg.SetAttribute(WARNINGS_ATTRIBUTE, json.dumps([WARNING]))      # what finish_segment records
    seg.SetAttribute(MODEL_ATTRIBUTE, json.dumps(MODEL))
    return logic, seg


def _tumor_row(ctx, logic, seg, node):
    from BiSCSegmentationSlicer import planning

    cells = planning.table_rows(logic.update_planning(seg, node))
    (row,) = [dict(zip(cells[0], r)) for r in cells[1:] if r[0].endswith("renal tumor")]
    return row


def _text(path):
    return "\n".join(page.extract_text() for page in PdfReader(str(path)).pages)


def test_report_holds_the_table_numbers_warnings_model_and_follows_edits(ctx, ct_node, tmp_path):
    from BiSCSegmentationLib.report import verify_pdf
    from BiSCSegmentationSlicer.selftest import _erase_half

    logic, seg = _written(ctx, ct_node, _labels(ct_node.GetImageData().GetDimensions()[::-1]))
    row = _tumor_row(ctx, logic, seg, ct_node)
    path = tmp_path / "report.pdf"
    assert logic.export_report(seg, ct_node, str(path)) == str(path)
    verify_pdf(path, 2)                                   # summary + key images (one tumor)
    text = _text(path)
    first = PdfReader(str(path)).pages[0].extract_text()
    assert "NOT FOR CLINICAL USE" in first
    assert row["Volume (mL)"] in first and row["Largest diameter (mm)"] in first
    assert row["Size category"] in first
    assert f"axial {row['Axial diameter (mm)']} mm" in text
    assert WARNING["message"] in first
    assert "kits-test-model" in first and "ab" * 32 in first and "edited in 3D Slicer" not in first
    assert "phantom-ct.nrrd" in first and seg.GetName() in first   # no DICOM: the file and nodes identify it
    # a hand edit: half of the tumor painted away; the report follows the segmentation as it is now
    _erase_half(ctx, seg, "right_renal_tumor")
    edited = _tumor_row(ctx, logic, seg, ct_node)
    assert edited["Volume (mL)"] != row["Volume (mL)"]
    path2 = tmp_path / "edited.pdf"
    logic.export_report(seg, ct_node, str(path2))
    first2 = PdfReader(str(path2)).pages[0].extract_text()
    assert edited["Volume (mL)"] in first2 and edited["Largest diameter (mm)"] in first2
    assert row["Volume (mL)"] not in first2
    assert "edited in 3D Slicer" in first2


def test_report_refuses_an_existing_file_and_bad_input(ctx, ct_node, tmp_path):
    from BiSCSegmentationSlicer.logic import WorkflowError

    logic, seg = _written(ctx, ct_node, _labels(ct_node.GetImageData().GetDimensions()[::-1]))
    path = tmp_path / "report.pdf"
    path.write_bytes(b"mine")
    with pytest.raises(WorkflowError, match="exists"):
        logic.export_report(seg, ct_node, str(path))
    assert path.read_bytes() == b"mine"
    logic.export_report(seg, ct_node, str(path), overwrite=True)            # asked: replaced, complete
    assert path.read_bytes().startswith(b"%PDF-")
    with pytest.raises(WorkflowError, match=r"must end in \.pdf"):
        logic.export_report(seg, ct_node, str(tmp_path / "report.txt"))
    # no kidney segment: refused before anything is written
    seg.GetSegmentation().RemoveSegment("right_kidney")
    with pytest.raises(WorkflowError, match="no kidney segment"):
        logic.export_report(seg, ct_node, str(tmp_path / "none.pdf"))
    assert not (tmp_path / "none.pdf").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.pdf"]    # no temporary file left


def test_a_failed_write_leaves_no_file(ctx, ct_node, tmp_path, monkeypatch):
    from BiSCSegmentationLib import report
    from BiSCSegmentationSlicer.logic import WorkflowError

    logic, seg = _written(ctx, ct_node, _labels(ct_node.GetImageData().GetDimensions()[::-1]))

    def half_written(figures, path, title=""):
        with open(path, "wb") as f:
            f.write(b"%PDF-1.4 truncated")

    monkeypatch.setattr(report, "write_pdf", half_written)
    with pytest.raises(WorkflowError):
        logic.export_report(seg, ct_node, str(tmp_path / "report.pdf"))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ DICOM SEG
@pytest.fixture(scope="module")
def dicom_series(tmp_path_factory):
    """A DICOM series (as the CLI's tests write one) and its label map, in the series' (GDCM's) slice order."""
    from BiSCSegmentationLib.dicom import source_uids
    from BiSCSegmentationLib.volume import read_volume

    root = tmp_path_factory.mktemp("dicom")
    labels = write_dicom_case(root / "series")
    series = read_volume(root / "series")
    files = {str(pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID): str(f)
             for f in (root / "series").iterdir()}
    return root / "series", series, labels, source_uids(root / "series"), files


def _dicom_node(ctx, series, uids, flip: bool):
    """The series as Slicer's DICOM module loads it: a volume node with DICOM.instanceUIDs; ``flip``: its
    slices in the opposite order to GDCM's (same voxels, the k axis reversed)."""
    from BiSCSegmentationLib.volume import Volume
    from BiSCSegmentationSlicer.export import INSTANCE_UIDS_ATTRIBUTE
    from BiSCSegmentationSlicer.scene import add_volume_node

    vol = series
    if flip:
        direction = np.array(series.direction, float)
        direction[:, 2] *= -1
        origin = series.index_to_physical(np.array([0.0, 0.0, series.array.shape[0] - 1]))
        vol = Volume(np.ascontiguousarray(series.array[::-1]), series.spacing, tuple(origin), direction)
        uids = uids[::-1]
    node = add_volume_node(ctx, vol, "DICOM CT")
    node.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, " ".join(uids))
    return node


@pytest.mark.parametrize("flip", [False, True])
def test_dicom_seg_references_the_series_and_holds_the_voxels(ctx, dicom_series, tmp_path, flip):
    from BiSCSegmentationLib.dicom import read_dicom_seg_labels
    from BiSCSegmentationSlicer.selftest import _erase_half
    from BiSCSegmentationSlicer.segmentation import export_labels

    folder, series, labels, uids, files = dicom_series
    node = _dicom_node(ctx, series, uids, flip)
    logic, seg = _written(ctx, node, labels[::-1] if flip else labels)
    logic.dicom_files = lambda volume_node: [files[u] for u in volume_node.GetAttribute("DICOM.instanceUIDs").split()]
    path = tmp_path / "seg.dcm"
    assert logic.export_dicom_seg(seg, node, str(path)) == str(path)
    ds = pydicom.dcmread(str(path))
    assert ds.Modality == "SEG" and ds.PatientID == "P123" and ds.StudyInstanceUID == UID + ".1"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == UID + ".2"
    referenced = {str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
                  for f in ds.PerFrameFunctionalGroupsSequence}
    assert referenced == set(uids)
    assert [s.SegmentAlgorithmType for s in ds.SegmentSequence] == ["AUTOMATIC", "AUTOMATIC"]
    assert "kits-test-model" in ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName
    np.testing.assert_array_equal(read_dicom_seg_labels(path, uids), labels)   # series order, voxel for voxel
    # edited in Slicer: the SEG holds the edit, marked semi-automatic
    _erase_half(ctx, seg, "right_renal_tumor")
    now = np.asarray(export_labels(ctx, seg, node).array)
    expected = now[::-1] if flip else now
    assert not np.array_equal(expected, labels)
    edited = tmp_path / "edited.dcm"
    logic.export_dicom_seg(seg, node, str(edited))
    np.testing.assert_array_equal(read_dicom_seg_labels(edited, uids), expected)
    assert pydicom.dcmread(str(edited)).SegmentSequence[1].SegmentAlgorithmType == "SEMIAUTOMATIC"
    # the report identifies the case from the DICOM header
    report = tmp_path / "report.pdf"
    logic.export_report(seg, node, str(report))
    first = PdfReader(str(report)).pages[0].extract_text()
    assert "P123" in first and "abdomen venous" in first


def test_dicom_seg_from_a_chosen_folder_and_the_errors(ctx, ct_node, dicom_series, tmp_path):
    from BiSCSegmentationLib.dicom import read_dicom_seg_labels
    from BiSCSegmentationSlicer.export import NOT_FROM_DICOM
    from BiSCSegmentationSlicer.logic import WorkflowError

    folder, series, labels, uids, files = dicom_series
    # slicer-core has no DICOM database: the real lookup finds nothing, the chosen folder is used
    node = _dicom_node(ctx, series, uids, flip=False)
    logic, seg = _written(ctx, node, labels)
    out = tmp_path / "seg.dcm"
    logic.export_dicom_seg(seg, node, str(out), dicom_folder=str(folder))
    np.testing.assert_array_equal(read_dicom_seg_labels(out, uids), labels)
    # an existing file is not overwritten unless asked
    before = out.read_bytes()
    with pytest.raises(WorkflowError, match="exists"):
        logic.export_dicom_seg(seg, node, str(out), dicom_folder=str(folder))
    assert out.read_bytes() == before
    logic.export_dicom_seg(seg, node, str(out), dicom_folder=str(folder), overwrite=True)
    np.testing.assert_array_equal(read_dicom_seg_labels(out, uids), labels)
    # a CT loaded from a file: no DICOM source, the plain message
    logic2, seg2 = _written(ctx, ct_node, _labels(ct_node.GetImageData().GetDimensions()[::-1]))
    with pytest.raises(WorkflowError) as info:
        logic2.export_dicom_seg(seg2, ct_node, str(tmp_path / "none.dcm"))
    assert str(info.value) == NOT_FROM_DICOM and "not loaded from DICOM" in str(info.value)
    # ... and another series' folder: a geometry mismatch, said so
    with pytest.raises(WorkflowError, match="not the grid of"):
        logic2.export_dicom_seg(seg2, ct_node, str(tmp_path / "none.dcm"), dicom_folder=str(folder))
    with pytest.raises(WorkflowError, match=r"must end in \.dcm"):
        logic.export_dicom_seg(seg, node, str(tmp_path / "seg.nrrd"), dicom_folder=str(folder))
    # the database lost some of the files
    logic.dicom_files = lambda volume_node: [files[uids[0]], ""]
    with pytest.raises(WorkflowError, match="no longer holds 1 of the 2 files"):
        logic.export_dicom_seg(seg, node, str(tmp_path / "lost.dcm"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm"]


def test_export_packages_are_the_pyproject_extras():
    """The module installs, on first export, what pyproject.toml's "report" and "dicom" extras name."""
    import re

    from slicer_fixtures import ROOT
    from BiSCSegmentationSlicer import dependencies

    text = (ROOT / "pyproject.toml").read_text()
    for feature, reqs in dependencies.OPTIONAL_REQUIREMENTS.items():
        listed = re.search(rf'^{feature} = \[(.*)\]$', text, re.M)
        assert listed, f"no {feature} extra in pyproject.toml"
        assert [spec for _, spec in reqs] == re.findall(r'"([^"]+)"', listed.group(1))
    assert dependencies.missing_optional("report") == [] and dependencies.missing_optional("dicom") == []
