"""How and when the planning table is recomputed (issue #20, item 5), on a real MRML scene: segments read from
the binary labelmaps without any scene node (equal to Slicer's own export, also for a segmentation on another
grid), every edit restarts the debounce timer and the table is recomputed once after the last one, writing a
result computes the table once (not again when the panel shows it), and the diameter's farthest-pair search
stays exact. benchmarks/benchmark_planning_update.py times one update on a 512x512x300 CT."""
from __future__ import annotations

import math

import numpy as np
import pytest

from slicer_fixtures import case_files, ct_node, ctx, needs_slicer_core  # noqa: F401 - fixtures

pytestmark = [needs_slicer_core, pytest.mark.slicer]


def written(ctx, ct_node, logic=None):
    """The module's output for a hand-made label map: right kidney with two tumors, left kidney."""
    from BiSCSegmentationLib.roi import KidneyROI
    from BiSCSegmentationSlicer.logic import BiSCLogic
    from BiSCSegmentationSlicer.scene import volume_from_node

    logic = logic or BiSCLogic(ctx)
    ct = volume_from_node(ct_node)
    labels = np.zeros(ct.array.shape, np.uint8)
    k, j, i = labels.shape
    labels[k // 4:k // 2, j // 3:2 * j // 3, 3:i // 3] = 1
    labels[k // 4 + 1:k // 4 + 5, j // 3 + 2:j // 3 + 7, 5:10] = 2
    labels[k // 2 - 5:k // 2 - 1, 2 * j // 3 - 7:2 * j // 3 - 2, i // 3 - 8:i // 3 - 3] = 2
    labels[k // 4:k // 2, j // 3:2 * j // 3, 2 * i // 3:i - 3] = 1
    big = (400.0, 400.0, 400.0)
    rois = [KidneyROI(tuple(ct.index_to_physical(np.array([i / 6, j / 2, 3 * k / 8]))), big, "right"),
            KidneyROI(tuple(ct.index_to_physical(np.array([5 * i / 6, j / 2, 3 * k / 8]))), big, "left")]
    return logic, logic.apply_labels(ct_node, labels, rois, mode="new"), labels


def exported(ctx, seg, reference):
    """Slicer's own export of every segment (a label map node per segment): what the table used to do."""
    import slicer
    import vtk

    out = {}
    for n in range(seg.GetSegmentation().GetNumberOfSegments()):
        sid = seg.GetSegmentation().GetNthSegmentID(n)
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(sid)
        node = ctx.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        assert ctx.segmentations.ExportSegmentsToLabelmapNode(seg, ids, node, reference)
        out[sid] = slicer.util.arrayFromVolume(node) > 0
        ctx.scene.RemoveNode(node)
    return out


class NodeCounter:
    def __init__(self, scene):
        import slicer
        self.scene, self.added = scene, []
        self.tag = scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent, self.seen)

    def classes(self):
        return sorted({c for c in self.added})

    def seen(self, caller, event):
        # the class of the newest node (NodeAddedEvent's call data needs a typed observer in Python)
        nodes = self.scene.GetNodes()
        self.added.append(nodes.GetItemAsObject(nodes.GetNumberOfItems() - 1).GetClassName())

    def close(self):
        self.scene.RemoveObserver(self.tag)
        return len(self.added)


def test_segments_are_read_without_scene_nodes_and_equal_slicers_export(ctx, ct_node):
    from BiSCSegmentationSlicer import planning
    from BiSCSegmentationSlicer.segmentation import segment_boxes, segment_masks
    from BiSCSegmentationSlicer.scene import volume_from_node

    counter = NodeCounter(ctx.scene)
    logic, seg, labels = written(ctx, ct_node)          # writing adds the result and its table, nothing else
    added = counter.classes()
    counter.close()
    assert "vtkMRMLLabelMapVolumeNode" not in added and "vtkMRMLScalarVolumeNode" not in added, added
    assert {"vtkMRMLSegmentationNode", "vtkMRMLTableNode"} <= set(added)
    expected = exported(ctx, seg, ct_node)
    counter = NodeCounter(ctx.scene)
    n_nodes = ctx.scene.GetNumberOfNodes()
    masks = segment_masks(ctx, seg, ct_node)
    boxes = segment_boxes(seg, ct_node)
    planning.update_table(ctx, seg, ct_node)          # the table exists: an update adds nothing
    assert counter.close() == 0 and ctx.scene.GetNumberOfNodes() == n_nodes, "helper nodes were added"
    assert set(masks) == set(expected) == set(boxes) and len(masks) == 3   # right kidney + tumor, left kidney
    for sid, mask in expected.items():
        assert np.array_equal(masks[sid], mask), sid
        box, (k, j, i) = boxes[sid]
        assert box.shape < mask.shape and np.array_equal(mask[k:k + box.shape[0], j:j + box.shape[1],
                                                               i:i + box.shape[2]], box)
        assert box.sum() == mask.sum() and box[0].any() and box[-1].any()            # cropped to the voxels
    # a segmentation on another grid (2x coarser, shifted) is resampled like Slicer's export
    from BiSCSegmentationSlicer.scene import add_volume_node
    ct = volume_from_node(ct_node)
    coarse = type(ct)(np.zeros(tuple(s // 2 for s in ct.array.shape), np.uint8), tuple(2 * s for s in ct.spacing),
                      tuple(ct.index_to_physical(np.array([1.0, 0.5, 2.0]))), ct.direction)
    coarse.array[3:9, 4:12, 2:10] = 1
    label_node = add_volume_node(ctx, coarse, "coarse", labelmap=True)
    other = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "other grid")
    assert ctx.segmentations.ImportLabelmapToSegmentationNode(label_node, other)
    counter = NodeCounter(ctx.scene)
    mine = segment_masks(ctx, other, ct_node)
    assert counter.close() == 0
    theirs = exported(ctx, other, ct_node)
    assert all(np.array_equal(mine[s], theirs[s]) for s in theirs) and any(m.any() for m in mine.values())


def test_edits_are_debounced_and_computed_once(ctx, ct_node, monkeypatch):
    from BiSCSegmentationSlicer import planning
    from BiSCSegmentationSlicer.selftest import _erase_half

    logic, seg, _ = written(ctx, ct_node)
    scheduled = []
    observer = logic.observe(seg, ct_node, schedule=scheduled.append)
    table = planning.find_table(ctx, seg)
    before = planning.table_rows(table)
    calls = []
    real = planning.compute_rows
    monkeypatch.setattr(planning, "compute_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    sids = [seg.GetSegmentation().GetNthSegmentID(n) for n in range(2)]
    for sid in sids:                               # two edits, as two paint strokes
        _erase_half(ctx, seg, sid)
    n = len(scheduled)
    assert n >= 2, "each edit must restart the timer (debounce), not only the first"
    assert not calls and planning.table_rows(table) == before, "computed before the timer fired"
    scheduled[-1]()                                # the timer fires once, after the last edit
    assert calls == [1] and observer.updates == 1 and planning.table_rows(table) != before
    assert planning.is_current(ctx, seg, ct_node, logic.min_lesion_ml)
    observer.flush()                               # nothing changed since: nothing computed
    assert calls == [1]
    assert planning.DEBOUNCE_MS == 300


def test_writing_and_showing_a_result_computes_the_table_once(ctx, ct_node, monkeypatch):
    from BiSCSegmentationSlicer import planning

    calls = []
    real = planning.compute_rows
    monkeypatch.setattr(planning, "compute_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    logic, seg, labels = written(ctx, ct_node)
    assert len(calls) == 1
    scheduled = []
    logic.observe(seg, ct_node, schedule=scheduled.append)            # the panel shows the result
    assert logic.planning_table(seg, ct_node) is planning.find_table(ctx, seg) and len(calls) == 1
    # running again replaces the result in place: one computation, the observer stays quiet meanwhile
    from BiSCSegmentationSlicer import segmentation as segs
    rois = _rois_of(logic, ct_node)
    segs_before = ctx.nodes_by_class("vtkMRMLSegmentationNode")
    again = logic.apply_labels(ct_node, labels, rois, mode="replace")
    assert again is seg and ctx.nodes_by_class("vtkMRMLSegmentationNode") == segs_before
    assert len(calls) == 2 and scheduled == [], "the module's own write was counted as an edit"
    assert logic.planning_table(seg, ct_node) is not None and len(calls) == 2
    logic.min_lesion_ml = 50.0                                         # a setting the table depends on
    logic.planning_table(seg, ct_node)
    assert len(calls) == 3 and segs.find_output(ctx, ct_node) is seg


def _rois_of(logic, ct_node):
    from BiSCSegmentationLib.roi import KidneyROI
    from BiSCSegmentationSlicer.scene import volume_from_node
    ct = volume_from_node(ct_node)
    k, j, i = ct.array.shape
    big = (400.0, 400.0, 400.0)
    return [KidneyROI(tuple(ct.index_to_physical(np.array([i / 6, j / 2, 3 * k / 8]))), big, "right"),
            KidneyROI(tuple(ct.index_to_physical(np.array([5 * i / 6, j / 2, 3 * k / 8]))), big, "left")]


def test_farthest_pair_is_exact():
    from BiSCSegmentationLib.metrics import _farthest_pair

    rng = np.random.default_rng(3)
    for n in (2, 3, 50, 700, 1300):
        p = rng.normal(size=(n, 3)) * 40.0 + 900.0
        brute = math.sqrt(max(float(((p[a] - p) ** 2).sum(axis=1).max()) for a in range(n)))
        assert _farthest_pair(p)[0] == brute
    assert _farthest_pair(np.zeros((1, 3)))[0] == 0.0
