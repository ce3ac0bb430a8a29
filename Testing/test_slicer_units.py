"""Pieces of the Slicer module's MRML layer on slicer-core: terminology, sides, ownership of the output, ROI
naming and checks, planning numbers, model choices and downloads, dependency installation."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from slicer_fixtures import case_files, ct_node, ctx, needs_slicer_core  # noqa: F401 - fixtures

pytestmark = [needs_slicer_core, pytest.mark.slicer]


# ------------------------------------------------------------------------------------------- terminology
def test_terminology_strings_are_slicers():
    import slicer
    from BiSCSegmentationSlicer import terminology as term

    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    for spec in term.SEGMENTS:
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(spec.terminology, entry)
        assert logic.SerializeTerminologyEntry(entry) == spec.terminology
        codes = term.parse(spec.terminology)
        lat = "24028007" if spec.side == "right" else "7771000"
        if spec.is_tumor:
            assert codes["category"][1] == "49755003" and codes["type"][1] == "4147007"
            assert codes["region"][1] == "64033007" and codes["region_modifier"][1] == lat
        else:
            assert codes["category"][1] == "123037004" and codes["type"][1] == "64033007"
            assert codes["type_modifier"][1] == lat
    assert term.parse("not a terminology") is None


def test_classify_reads_terminology_then_names():
    import slicer
    from BiSCSegmentationSlicer import terminology as term

    seg = slicer.vtkSegment()
    term.apply(seg, term.SEGMENTS[3])
    seg.SetName("my edit")                       # renamed by hand: the codes still tell
    assert term.classify(seg) == ("tumor", "left")
    plain = slicer.vtkSegment()
    plain.SetName("Right kidney (fixed)")
    assert term.classify(plain) == ("kidney", "right")
    plain.SetName("cyst")
    assert term.classify(plain) == (None, None)


# ------------------------------------------------------------------------------------------------- sides
def _labels_with(shape=(20, 40, 60), spacing=(2.0, 2.0, 4.0)):
    from BiSCSegmentationLib.volume import Volume
    return Volume(np.zeros(shape, np.uint8), spacing, (-59.0, -39.0, -38.0))


def test_assign_sides_by_roi_and_midline():
    from BiSCSegmentationLib.roi import KidneyROI
    from BiSCSegmentationSlicer.segmentation import assign_sides, split_by_side

    labels = _labels_with()
    a = labels.array
    a[5:15, 10:30, 5:15] = 1            # x (LPS) around -40: patient's right
    a[8:10, 12:14, 8:10] = 2
    a[5:15, 10:30, 45:55] = 1           # x around +40: patient's left
    rois = [KidneyROI((-40, 0, 0), (70, 70, 70), "right"), KidneyROI((40, 0, 0), (70, 70, 70), "left")]
    sides = assign_sides(labels, rois, midline=0.0)
    assert set(np.unique(sides[:, :, :20][a[:, :, :20] > 0])) == {1}
    assert set(np.unique(sides[:, :, 40:][a[:, :, 40:] > 0])) == {2}
    indexed = split_by_side(labels, sides)
    assert set(np.unique(indexed)) == {0, 1, 2, 3}
    # a structure over the midline (horseshoe, or both kidneys merged) is split there, whatever the ROI
    a[5:15, 10:30, 15:45] = 1
    sides = assign_sides(labels, rois, midline=0.0)
    x = labels.index_to_physical(np.argwhere(a > 0)[:, ::-1].astype(float))[:, 0]
    assert np.array_equal(sides[a > 0], np.where(x < 0, 1, 2))


# -------------------------------------------------------------------------------------------- ownership
def test_user_segmentation_is_never_touched(ctx, ct_node):
    from BiSCSegmentationLib.roi import KidneyROI
    from BiSCSegmentationSlicer.logic import BiSCLogic
    from BiSCSegmentationSlicer.segmentation import find_output

    mine = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Phantom CT kidneys")
    mine.GetSegmentation().AddEmptySegment("x", "my contour")
    logic = BiSCLogic(ctx)
    dims = ct_node.GetImageData().GetDimensions()[::-1]
    labels = np.zeros(dims, np.uint8)
    labels[10:20, 40:60, 30:50] = 1
    roi = KidneyROI((0.0, 0.0, 0.0), (500.0, 500.0, 500.0), "right")
    out = logic.apply_labels(ct_node, labels, [roi])
    assert out is not mine and out.GetName() != "Phantom CT kidneys" and find_output(ctx, ct_node) is out
    assert mine.GetSegmentation().GetNumberOfSegments() == 1 and mine.GetSegmentation().GetSegment("x")
    again = logic.apply_labels(ct_node, labels, [roi])
    assert again is out, "the module's own unedited output is replaced in place"


# ------------------------------------------------------------------------------------------------- ROIs
def test_rois_named_by_side_and_checked(ctx, ct_node):
    from BiSCSegmentationSlicer import rois
    from BiSCSegmentationSlicer.logic import BiSCLogic, WorkflowError

    logic = BiSCLogic(ctx)
    mid = rois.midline_x(ct_node)
    node = logic.add_roi(ct_node, center_lps=(mid - 70.0, 0.0, 0.0))
    assert node.GetName() == "Right kidney ROI"
    c = node.GetCenter()
    node.SetCenter(c[0] - 140.0, c[1], c[2])            # RAS x down = towards the patient's left
    logic.rois(ct_node)
    assert node.GetName() == "Left kidney ROI"
    # rotated boxes are measured by their bounding box, with a warning
    import vtk
    rotation = vtk.vtkTransform()
    rotation.Translate(node.GetCenter())
    rotation.RotateZ(30)
    node.SetAndObserveObjectToNodeMatrix(rotation.GetMatrix())
    center, size, rotated = rois.node_box_lps(node)
    assert rotated and size[0] > 120.0 + 1                     # the bounding box of the turned box is wider
    row = [r for r in logic.roi_rows(ct_node) if r.node_id == node.GetID()][0]
    assert any("rotated" in w for w in row.warnings)
    # a volume under a transform is refused in plain words
    transform = ctx.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    ct_node.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(WorkflowError, match="harden"):
        logic.ct(ct_node)


# --------------------------------------------------------------------------------------------- planning
def test_planning_numbers_for_a_hand_made_segmentation(ctx, ct_node, tmp_path):
    from BiSCSegmentationLib.metrics import largest_diameter_mm, volume_ml
    from BiSCSegmentationLib.roi import KidneyROI
    from BiSCSegmentationSlicer import planning
    from BiSCSegmentationSlicer.logic import BiSCLogic
    from BiSCSegmentationSlicer.scene import volume_from_node

    logic = BiSCLogic(ctx)
    ct = volume_from_node(ct_node)
    labels = np.zeros(ct.array.shape, np.uint8)
    labels[10:30, 30:60, 20:40] = 1              # one kidney (its side comes from the one ROI)
    labels[12:16, 35:40, 22:27] = 2              # two separate tumors
    labels[22:28, 50:56, 30:37] = 2
    roi = KidneyROI(tuple(ct.index_to_physical(np.array([30.0, 45.0, 20.0]))), (400.0, 400.0, 400.0), "right")
    seg = logic.apply_labels(ct_node, labels, [roi])
    rows = {r.segment: r for r in logic.planning_rows(seg, ct_node)}
    kidney = [r for n, r in rows.items() if n.endswith("kidney")][0]
    tumor = [r for n, r in rows.items() if n.endswith("renal tumor")][0]
    assert kidney.volume_ml == pytest.approx(volume_ml(labels == 1, ct.spacing))
    assert tumor.volume_ml == pytest.approx(volume_ml(labels == 2, ct.spacing))
    assert tumor.tumor_kidney_ratio == pytest.approx(tumor.volume_ml / kidney.volume_ml)
    lesions = sorted((r for n, r in rows.items() if n.startswith(tumor.segment + " ")), key=lambda r: r.segment)
    assert len(lesions) == 2 and np.isnan(tumor.largest_diameter_mm)
    first = np.zeros_like(labels)
    first[22:28, 50:56, 30:37] = 1               # the bigger one is listed first
    assert lesions[0].largest_diameter_mm == pytest.approx(largest_diameter_mm(first, ct.spacing, ct.direction))
    logic.min_lesion_ml = 100.0                  # "List tumors from": no separate lines, the biggest one's diameter
    rows = {r.segment: r for r in logic.planning_rows(seg, ct_node)}
    assert not any(n.startswith(tumor.segment + " ") for n in rows)
    assert rows[tumor.segment].largest_diameter_mm == pytest.approx(lesions[0].largest_diameter_mm)
    path = logic.export_csv(seg, ct_node, tmp_path / "plan.csv")
    assert open(path).read().splitlines()[0] == ",".join(planning.COLUMNS)


# ----------------------------------------------------------------------------------------------- models
def test_model_choices_explain_problems(tmp_path):
    from BiSCSegmentationSlicer.models import ModelChoice

    assert "Choose the rough-stage model file." in ModelChoice(kind="files").problems()
    assert any("does not exist" in p for p in ModelChoice("files", rough_path="/nope.pt", fine_path="/nope.pt").problems())
    url = ModelChoice("url", rough_url="https://x/r.pt", rough_sha256="abc", fine_url="https://x/f.pt",
                      fine_sha256="0" * 64)
    assert any("SHA-256" in p and "rough" in p for p in url.problems()) and len(url.problems()) == 1
    assert ModelChoice.from_dict(url.to_dict()) == url


def test_url_models_are_downloaded_with_progress_and_verified(case_files, tmp_path):
    from BiSCSegmentationLib.model_file import ModelFileError
    from BiSCSegmentationSlicer.models import ModelChoice, load_models

    def sha(p):
        return hashlib.sha256(open(p, "rb").read()).hexdigest()

    choice = ModelChoice("url", rough_url="file://" + case_files["rough"], rough_sha256=sha(case_files["rough"]),
                         fine_url="file://" + case_files["fine"], fine_sha256=sha(case_files["fine"]),
                         cache_dir=str(tmp_path / "cache"))
    seen = []
    rough, fine = load_models(choice, lambda stage, f: seen.append((stage, f)))
    assert rough.stage == "rough" and fine.stage == "fine" and seen and seen[-1] == ("download", 1.0)
    assert len(list((tmp_path / "cache").iterdir())) == 2
    choice.fine_sha256 = "0" * 64
    with pytest.raises(ModelFileError, match="SHA-256"):
        load_models(choice)


# --------------------------------------------------------------------------------------------- packages
def test_dependencies_are_pinned_and_installed_after_one_confirmation(monkeypatch):
    from BiSCSegmentationSlicer import dependencies as deps

    assert deps.requirement_lines((3, 9)) == ["scipy==1.13.1"]
    assert deps.requirement_lines((3, 12)) == ["scipy==1.17.1"]
    state = {"torch": False, "scipy": False}
    monkeypatch.setattr(deps, "installed", lambda name: state.get(name, True))
    asked, pip, torch_calls = [], [], []

    def install_torch(reinstall=False):
        torch_calls.append(1)
        state["torch"] = True
        return object()

    def pip_install(req):
        pip.append(req)
        state["scipy"] = True

    assert deps.ensure(lambda m: asked.append(m) or False, pip_install, install_torch) is False
    assert len(asked) == 1 and not pip and not torch_calls and "PyTorch" in asked[0]
    assert deps.ensure(lambda m: asked.append(m) or True, pip_install, install_torch) is True
    assert len(asked) == 2 and torch_calls == [1] and pip == [deps.requirement_lines()[0]]
    assert deps.ensure(lambda m: asked.append(m) or True, pip_install, install_torch) is True
    assert len(asked) == 2, "nothing missing: no question"
