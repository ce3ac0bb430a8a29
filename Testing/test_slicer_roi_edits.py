"""ROI edits are never lost silently (issue #20, item 4), on a real MRML scene: locating again keeps the ROIs
a person moved, resized, renamed or added (or replaces them when asked to, or refuses to choose alone), and
the ROI list follows every change of the ROI nodes, including renames and deletions made elsewhere."""
from __future__ import annotations

import numpy as np
import pytest

from slicer_fixtures import case_files, ct_node, ctx, needs_slicer_core  # noqa: F401 - fixtures

pytestmark = [needs_slicer_core, pytest.mark.slicer]


def located(ctx, ct_node):
    """The logic after a Locate that found both kidneys; returns (logic, {side: node}, rois, mask)."""
    from BiSCSegmentationLib.roi import KidneyROI
    from BiSCSegmentationSlicer import rois
    from BiSCSegmentationSlicer.logic import BiSCLogic
    from BiSCSegmentationSlicer.scene import volume_from_node

    logic = BiSCLogic(ctx)
    ct = volume_from_node(ct_node)
    mid = rois.midline_x(ct_node, ct)
    c = ct.index_to_physical((np.array(ct.size_ijk) - 1) / 2)
    found = [KidneyROI((mid - 45.0, c[1], c[2]), (60.0, 60.0, 80.0), "right"),
             KidneyROI((mid + 45.0, c[1], c[2]), (60.0, 60.0, 80.0), "left")]
    mask = np.zeros(ct.array.shape, np.uint8)
    nodes, _ = logic.apply_rough(ct_node, mask, found, ct=ct)
    by_side = {n.GetAttribute(rois.SIDE_ATTRIBUTE): n for n in nodes}
    assert sorted(by_side) == ["left", "right"] and not logic.edited_rois(ct_node)
    return logic, by_side, found, mask


def boxes(ctx, ct_node):
    from BiSCSegmentationSlicer import rois
    return sorted((n.GetName(), tuple(np.round(n.GetCenter(), 3)), tuple(np.round(n.GetSize(), 3)))
                  for n in rois.roi_nodes(ctx, ct_node))


def test_locate_again_keeps_edited_rois_by_default(ctx, ct_node):
    from BiSCSegmentationSlicer import rois

    logic, by_side, found, mask = located(ctx, ct_node)
    right, left = by_side["right"], by_side["left"]
    c = right.GetCenter()
    right.SetCenter(c[0] + 5.0, c[1], c[2])                        # moved
    assert rois.is_edited(right) and not rois.is_edited(left)
    hand = logic.add_roi(ct_node, size_mm=(30.0, 30.0, 30.0))      # added by hand
    assert rois.is_edited(hand)
    edited = boxes(ctx, ct_node)

    # "ask": nothing changes, the question names the edited ROIs
    n = ctx.scene.GetNumberOfNodes()
    with pytest.raises(rois.ROIsEdited) as info:
        logic.apply_rough(ct_node, mask, found, mode="ask")
    assert set(info.value.nodes) == {right, hand} and "Right kidney ROI" in str(info.value)
    assert boxes(ctx, ct_node) == edited and ctx.scene.GetNumberOfNodes() == n

    # default ("keep mine"): the edited ones stay; the unedited left ROI is replaced; no second right ROI
    nodes, _ = logic.apply_rough(ct_node, mask, found)
    now = rois.roi_nodes(ctx, ct_node)
    assert right in now and hand in now and left not in now
    assert len(nodes) == 1 and nodes[0].GetName() == "Left kidney ROI" and len(now) == 3
    assert tuple(right.GetCenter()) == (c[0] + 5.0, c[1], c[2])

    # "replace" (the person chose it): exactly the new ROIs
    nodes, _ = logic.apply_rough(ct_node, mask, found, mode="replace")
    assert rois.roi_nodes(ctx, ct_node) == nodes and len(nodes) == 2 and not logic.edited_rois(ct_node)


def test_resize_and_rename_count_as_edits_and_a_given_name_is_kept(ctx, ct_node):
    from BiSCSegmentationSlicer import rois

    logic, by_side, found, mask = located(ctx, ct_node)
    right, left = by_side["right"], by_side["left"]
    s = left.GetSize()
    left.SetSize(s[0], s[1], s[2] + 10.0)
    assert rois.is_edited(left)
    right.SetName("Upper pole box")
    assert rois.is_edited(right)
    # moved over to the other side: recolored and its side follows, but the person's name stays
    mid = rois.midline_x(ct_node)
    right.SetCenter(-(mid + 45.0), right.GetCenter()[1], right.GetCenter()[2])   # RAS x = -LPS x
    names = {r.node_id: r.name for r in logic.roi_rows(ct_node)}
    assert names[right.GetID()] == "Upper pole box" and right.GetAttribute(rois.SIDE_ATTRIBUTE) == "left"
    # an automatic name still follows the side
    left.SetCenter(-(mid - 45.0), left.GetCenter()[1], left.GetCenter()[2])
    logic.roi_rows(ct_node)
    assert left.GetName() == "Right kidney ROI"
    logic.apply_rough(ct_node, mask, found)          # both edited: both kept, nothing new added over them
    assert set(rois.roi_nodes(ctx, ct_node)) == {right, left}


def test_roi_list_follows_every_change(ctx, ct_node):
    logic, by_side, found, mask = located(ctx, ct_node)
    calls = []
    watcher = logic.watch_rois(ct_node, lambda: calls.append(1))
    right, left = by_side["right"], by_side["left"]

    def changed(action):
        before = len(calls)
        action()
        return len(calls) > before

    c, s = right.GetCenter(), right.GetSize()
    assert changed(lambda: right.SetCenter(c[0] + 1.0, c[1], c[2])), "move not seen"
    assert changed(lambda: right.SetSize(s[0] + 4.0, s[1], s[2])), "resize not seen"
    assert changed(lambda: right.SetName("Mine")), "rename not seen"
    assert {r.node_id: r.name for r in logic.roi_rows(ct_node)}[right.GetID()] == "Mine"
    assert changed(lambda: ctx.scene.RemoveNode(left)), "deletion (Data module) not seen"
    assert left not in watcher.observed
    added = []
    assert changed(lambda: added.append(logic.add_roi(ct_node))), "added ROI not seen"
    assert added[0] in watcher.observed
    assert changed(lambda: added[0].SetCenter(0.0, 0.0, 0.0)), "move of a new ROI not seen"
    assert [r.node_id for r in logic.roi_rows(ct_node)] == [right.GetID(), added[0].GetID()]
    watcher.close()
    assert not changed(lambda: right.SetCenter(*c)) and watcher.observed == []
