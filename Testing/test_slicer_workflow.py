"""The module's whole workflow on a real MRML scene (PyPI's slicer-core), on a phantom CT read from a NRRD file
with an oblique, LPS-oriented header: locate, move/delete/add ROIs, segment, terminology, planning, .seg.nrrd,
and the exported label map against the CLI's, voxel for voxel (BiSCSegmentationSlicer.selftest.run_workflow,
the same steps the module's Slicer self-test runs), plus independent checks of what it produced.
"""
from __future__ import annotations

import csv

import numpy as np
import pytest

from slicer_fixtures import case_files, check, ct_node, ctx, needs_slicer_core  # noqa: F401 - fixtures

pytestmark = [needs_slicer_core, pytest.mark.slicer]


def test_header_is_oblique_lps(case_files):
    text = open(case_files["ct"], "rb").read(2000).split(b"\n\n")[0].decode()
    assert "space: left-posterior-superior" in text
    from BiSCSegmentationLib.volume import read_volume
    d = read_volume(case_files["ct"]).direction
    assert not np.allclose(np.abs(d), np.eye(3), atol=0.05), "the test CT must be oblique"


def test_volume_node_matches_simpleitk(ctx, ct_node, case_files):
    from BiSCSegmentationLib.volume import read_volume
    from BiSCSegmentationSlicer.scene import add_volume_node, volume_from_node

    mine, theirs = volume_from_node(ct_node), read_volume(case_files["ct"])
    assert np.array_equal(mine.array, theirs.array)
    assert np.allclose(mine.direction, theirs.direction, atol=1e-12)
    assert np.allclose(mine.origin, theirs.origin, atol=1e-9) and np.allclose(mine.spacing, theirs.spacing)
    # Volume -> node -> Volume is exact
    again = volume_from_node(add_volume_node(ctx, theirs, "copy"))
    assert np.array_equal(again.array, theirs.array) and np.allclose(again.direction, theirs.direction, atol=1e-15)


def test_roi_node_round_trip_is_exact(ctx, ct_node):
    from BiSCSegmentationLib.roi import KidneyROI
    from BiSCSegmentationSlicer import rois

    roi = KidneyROI((-71.25, 12.5, -40.0), (120.0, 110.0, 150.0), "right")
    node = rois.create_roi_node(ctx, ct_node, roi)
    ras = node.GetCenter()
    assert tuple(ras) == (71.25, -12.5, -40.0)          # LPS -> RAS: x and y negated
    back = rois.kidney_roi(node)
    assert back.center == roi.center and back.size == roi.size and node.GetName() == "Right kidney ROI"


def test_whole_workflow(ctx, ct_node, case_files):
    from BiSCSegmentationLib.metrics import largest_diameter_mm, volume_ml
    from BiSCSegmentationSlicer import planning, terminology as term
    from BiSCSegmentationSlicer.logic import BiSCLogic
    from BiSCSegmentationSlicer.segmentation import load_segmentation

    logic = BiSCLogic(ctx, runner="thread")
    report = run_and_report(logic, ct_node, case_files)
    seg = report["output"]

    # independent re-reading of the saved .seg.nrrd through a Terminologies logic
    import slicer
    terms = slicer.vtkSlicerTerminologiesModuleLogic()
    reread = load_segmentation(ctx, report["seg_nrrd"])
    found = {}
    for n in range(reread.GetSegmentation().GetNumberOfSegments()):
        segment = reread.GetSegmentation().GetNthSegment(n)
        entry = slicer.vtkSlicerTerminologyEntry()
        assert terms.DeserializeTerminologyEntry(term.segment_entry(segment), entry)
        found[segment.GetName()] = (entry, tuple(round(c * 255) for c in segment.GetColor()))
    assert found, "no segments in the file"
    for name, (entry, rgb) in found.items():
        side_code = "24028007" if name.startswith("Right") else "7771000"
        if "tumor" in name:
            assert (entry.GetCategoryObject().GetCodeValue(), entry.GetTypeObject().GetCodeValue()) == ("49755003", "4147007")
            assert entry.GetRegionObject().GetCodeValue() == "64033007"
            assert entry.GetRegionModifierObject().GetCodeValue() == side_code
            assert rgb == (144, 238, 144)
        else:
            assert (entry.GetCategoryObject().GetCodeValue(), entry.GetTypeObject().GetCodeValue()) == ("123037004", "64033007")
            assert entry.GetTypeModifierObject().GetCodeValue() == side_code
            assert rgb == (185, 102, 83)

    # sides: every right-kidney voxel lies on the patient's right of the midline or in the right ROI's structure
    labels = report["labels"]
    assert set(np.unique(labels.array)) <= {0, 1, 2}
    total = sum(r.volume_ml for r in report["rows"] if r.segment in [s.name for s in term.SEGMENTS])
    # the table was computed before the hand edit; the export after "replace" is the same result again
    assert total == pytest.approx(volume_ml(labels.array > 0, labels.spacing), rel=1e-9)
    for row in report["rows"]:
        if row.segment.endswith("renal tumor") and not np.isnan(row.largest_diameter_mm):
            assert row.largest_diameter_mm <= largest_diameter_mm(labels.array == 2, labels.spacing,
                                                                  labels.direction) + 1e-6

    with open(report["csv"], newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == list(planning.COLUMNS) and len(table) == len(report["rows"]) + 1


def run_and_report(logic, ct_node, case_files):
    from BiSCSegmentationSlicer.selftest import run_workflow

    return run_workflow(logic, ct_node, case_files, check, say=lambda msg: None)


def test_no_kidney_found_is_plain(ctx, ct_node, case_files, tmp_path):
    """A rough result without kidneys shows the preview and says what to do."""
    from BiSCSegmentationSlicer.logic import NO_KIDNEY_MESSAGE, BiSCLogic, WorkflowError, error_message
    from BiSCSegmentationSlicer.segmentation import find_preview
    from BiSCSegmentationSlicer.worker import Status

    logic = BiSCLogic(ctx, runner="thread")
    shape = ct_node.GetImageData().GetDimensions()[::-1]
    with pytest.raises(WorkflowError) as info:
        logic.apply_rough(ct_node, np.zeros(shape, np.uint8), [])
    assert str(info.value) == NO_KIDNEY_MESSAGE
    assert "Add an ROI by hand" in NO_KIDNEY_MESSAGE and "press \"Segment kidneys\"" in NO_KIDNEY_MESSAGE
    assert find_preview(ctx, ct_node) is not None
    assert error_message(Status(state="failed", error_kind="no_kidney", error="x")) == NO_KIDNEY_MESSAGE
    with pytest.raises(WorkflowError, match="no kidney ROI"):
        logic.start_segment(ct_node, None)


def test_rois_the_fine_stage_grew_are_shown_on_their_nodes(ctx, ct_node):
    from BiSCSegmentationLib.roi import KidneyROI, grow_roi
    from BiSCSegmentationSlicer import rois

    nodes = [rois.create_roi_node(ctx, ct_node, KidneyROI((x, 10.0, -40.0), (120.0, 120.0, 150.0), side))
             for x, side in ((-70.0, "right"), (70.0, "left"))]
    try:
        requested = [rois.kidney_roi(n) for n in nodes]
        grown = grow_roi(requested[0], [(2, -1)])  # towards the feet
        assert rois.show_grown(ctx, ct_node, requested, [grown, requested[1]]) == 1
        shown = rois.kidney_roi(nodes[0])
        assert np.allclose(shown.center, grown.center) and np.allclose(shown.size, grown.size)
        assert np.allclose(nodes[0].GetCenter(), [70.0, -10.0, grown.center[2]])  # RAS
        assert rois.kidney_roi(nodes[1]) == requested[1]
        # a node the person moved while the fine stage ran is left where they put it
        nodes[1].SetCenter(-80.0, -10.0, -40.0)
        moved = rois.kidney_roi(nodes[1])
        assert rois.show_grown(ctx, ct_node, [requested[1]], [grow_roi(requested[1], [(0, 1)])]) == 0
        assert rois.kidney_roi(nodes[1]) == moved
    finally:
        for n in nodes:
            ctx.remove(n)
