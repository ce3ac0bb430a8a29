"""Kidney ROIs as Markups ROI nodes: created from the rough stage or by hand, read back as cascade ROIs.

A kidney ROI node is a box-shaped ``vtkMRMLMarkupsROINode`` with the attribute ``BiSCSegmentation.KidneyROI``
set to the ID of the CT it belongs to. It is axis-aligned (rotation handles are hidden), so its RAS center and
size map exactly to a :class:`~BiSCSegmentationLib.roi.KidneyROI` (LPS center = RAS center with x and y
negated; same size). Nodes are named by their side in patient coordinates ("Right kidney ROI" when the box
centre lies on the patient's right of the body midline), and renamed when a person moves them across it
(a name the person gave is kept).

Edits are never lost silently. An ROI made by *Locate kidneys* remembers the box it was created with
(``BiSCSegmentation.LocatedBox``); one that was moved, resized or renamed since, and one added by hand, is
*edited* (:func:`is_edited`). Locating again keeps edited ROIs by default and replaces only the others
(:func:`replace_rois`, mode "keep"); "replace" replaces all (after the person agreed), "ask" raises
:class:`ROIsEdited`. :class:`ROIWatcher` reports every change of the volume's ROI nodes (move, resize, rename,
attributes, transform, nodes added or deleted anywhere, e.g. in the Data module) so the panel's list follows.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from .scene import SceneContext, SceneError, check_untransformed, place_beside

ROI_ATTRIBUTE = "BiSCSegmentation.KidneyROI"
SIDE_ATTRIBUTE = "BiSCSegmentation.Side"
MIDLINE_ATTRIBUTE = "BiSCSegmentation.MidlineX"
LOCATED_ATTRIBUTE = "BiSCSegmentation.LocatedBox"   # JSON {"center": RAS, "size", "name"} as Locate made it
ROI_MODES = ("keep", "replace", "ask")
EDIT_TOLERANCE_MM = 1e-3
SIDE_COLORS = {"right": (0.95, 0.55, 0.2), "left": (0.25, 0.6, 0.95), "both": (0.85, 0.35, 0.85),
               "unknown": (0.9, 0.9, 0.3)}
DEFAULT_SIZE_MM = (120.0, 120.0, 160.0)   # a generous box around one adult kidney


@dataclass
class ROIRow:
    """One line of the ROI list in the module panel."""

    node_id: str
    name: str
    side: str
    size_mm: Tuple[float, float, float]
    problems: List[str] = field(default_factory=list)   # stop the fine stage
    warnings: List[str] = field(default_factory=list)   # shown, do not stop it

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def size_text(self) -> str:
        return " x ".join(f"{s:.0f}" for s in self.size_mm) + " mm"


# -------------------------------------------------------------------------------------------- midline
def body_midline_x(ct) -> float:
    """Patient midline (LPS x, mm): the centre of the body (voxels above -500 HU), else of the image."""
    a = np.asarray(ct.array)
    step_k = max(1, a.shape[0] // 24)
    step = max(1, min(a.shape[1], a.shape[2]) // 96)
    sub = a[::step_k, ::step, ::step]
    kji = np.argwhere(sub > -500)
    if len(kji) < 10:
        centre = (np.array(ct.size_ijk) - 1) / 2.0
        return float(ct.index_to_physical(centre)[0])
    ijk = kji[:, ::-1] * np.array([step, step, step_k])
    x = ct.index_to_physical(ijk)[:, 0]
    lo, hi = np.percentile(x, [0.5, 99.5])
    return float((lo + hi) / 2.0)


def midline_x(volume_node, ct=None) -> float:
    """The CT's body midline, cached on the volume node (computed once per volume)."""
    cached = volume_node.GetAttribute(MIDLINE_ATTRIBUTE)
    if cached:
        return float(cached)
    if ct is None:
        from .scene import volume_from_node
        ct = volume_from_node(volume_node, copy=False)
    value = body_midline_x(ct)
    volume_node.SetAttribute(MIDLINE_ATTRIBUTE, repr(value))
    return value


def roi_name(side: str) -> str:
    return {"right": "Right kidney ROI", "left": "Left kidney ROI", "both": "Kidneys ROI"}.get(side, "Kidney ROI")


# ---------------------------------------------------------------------------------------- nodes <-> ROIs
def roi_nodes(ctx: SceneContext, volume_node) -> list:
    """The kidney ROI nodes of ``volume_node``, in scene order."""
    if volume_node is None:
        return []
    vid = volume_node.GetID()
    return [n for n in ctx.nodes_by_class("vtkMRMLMarkupsROINode") if n.GetAttribute(ROI_ATTRIBUTE) == vid]


def _style(node, side: str) -> None:
    display = node.GetDisplayNode()
    if display is None:
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
    display.SetSelectedColor(*SIDE_COLORS.get(side, SIDE_COLORS["unknown"]))
    display.SetColor(*SIDE_COLORS.get(side, SIDE_COLORS["unknown"]))
    display.SetFillOpacity(0.08)
    display.SetHandlesInteractive(True)
    display.SetRotationHandleVisibility(False)
    display.SetTranslationHandleVisibility(True)
    display.SetScaleHandleVisibility(True)


class ROIsEdited(RuntimeError):
    """Locating again would replace ROIs the person edited; the caller asks (replace / keep mine / cancel)."""

    def __init__(self, nodes):
        self.nodes = list(nodes)
        names = ", ".join(f"\"{n.GetName()}\"" for n in self.nodes)
        super().__init__(f"You moved, resized, renamed or added {len(self.nodes)} kidney ROI(s) ({names}). "
                         f"Replace them with the new ROIs, or keep yours (only the others are replaced)?")


def create_roi_node(ctx: SceneContext, volume_node, roi, midline: Optional[float] = None):
    """A Markups ROI node for a cascade ROI (LPS center/size), named and colored by side."""
    node = ctx.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", roi.name)
    node.SetROIType(node.ROITypeBox)
    x, y, z = roi.center
    node.SetCenter(-x, -y, z)
    node.SetSize(*roi.size)
    node.SetAttribute(ROI_ATTRIBUTE, volume_node.GetID())
    node.SetAttribute(SIDE_ATTRIBUTE, roi.side)
    _style(node, roi.side)
    place_beside(ctx, node, volume_node)
    if midline is not None:
        update_side(node, midline)
    return node


def add_roi(ctx: SceneContext, volume_node, center_lps: Optional[Sequence[float]] = None,
            size_mm: Sequence[float] = DEFAULT_SIZE_MM, side: Optional[str] = None):
    """Add a kidney ROI by hand (default: at the volume's centre); named by side from the body midline."""
    from BiSCSegmentationLib.roi import KidneyROI
    from .scene import volume_from_node

    ct = volume_from_node(volume_node, copy=False)
    if center_lps is None:
        center_lps = ct.index_to_physical((np.array(ct.size_ijk) - 1) / 2.0)
    mid = midline_x(volume_node, ct)
    roi = KidneyROI(tuple(center_lps), tuple(size_mm), side or "unknown")
    return create_roi_node(ctx, volume_node, roi, midline=None if side else mid)


def _box_ras(node) -> dict:
    return {"center": [float(v) for v in node.GetCenter()], "size": [float(v) for v in node.GetSize()],
            "name": node.GetName()}


def mark_located(node) -> None:
    """Remember the node's box as Locate made it (an ROI differing from it later was edited)."""
    node.SetAttribute(LOCATED_ATTRIBUTE, json.dumps(_box_ras(node)))


def is_edited(node) -> bool:
    """Moved, resized or renamed since Locate made it, or added by hand (or by anyone else)."""
    raw = node.GetAttribute(LOCATED_ATTRIBUTE)
    if not raw:
        return True
    try:
        made = json.loads(raw)
    except ValueError:
        return True
    now = _box_ras(node)
    moved = not np.allclose(now["center"], made["center"], atol=EDIT_TOLERANCE_MM, rtol=0)
    resized = not np.allclose(now["size"], made["size"], atol=EDIT_TOLERANCE_MM, rtol=0)
    renamed = now["name"] != made["name"] and now["name"] != roi_name(node.GetAttribute(SIDE_ATTRIBUTE) or "")
    return bool(moved or resized or renamed or node.GetParentTransformNode() is not None)


def edited_rois(ctx: SceneContext, volume_node) -> list:
    return [n for n in roi_nodes(ctx, volume_node) if is_edited(n)]


def _overlaps(a, b) -> bool:
    """Whether either box holds the other's centre (the same kidney, most likely)."""
    return bool(a.contains(np.asarray(b.center)[None])[0] or b.contains(np.asarray(a.center)[None])[0])


def replace_rois(ctx: SceneContext, volume_node, rois: Sequence, mode: str = "keep") -> list:
    """The volume's kidney ROI nodes after "Locate kidneys" found ``rois``; returns the nodes created.

    ``mode`` "keep" (default): edited ROIs stay as they are, the others are replaced, and a new ROI is not
    added where a kept one already covers that kidney; "replace": all are replaced; "ask": raises
    :class:`ROIsEdited` when any ROI was edited (nothing changed), else replaces.
    """
    if mode not in ROI_MODES:
        raise ValueError(f"mode must be one of {ROI_MODES}, not {mode!r}")
    edited = edited_rois(ctx, volume_node)
    if mode == "ask" and edited:
        raise ROIsEdited(edited)
    kept = edited if mode == "keep" else []
    kept_boxes = [kidney_roi(n) for n in kept if n.GetParentTransformNode() is None]
    for node in roi_nodes(ctx, volume_node):
        if node not in kept:
            ctx.remove(node)
    created = []
    for r in rois:
        if any(_overlaps(r, k) for k in kept_boxes):
            continue
        node = create_roi_node(ctx, volume_node, r)
        mark_located(node)
        created.append(node)
    return created


def node_box_lps(node) -> Tuple[np.ndarray, np.ndarray, bool]:
    """(center, size) of the ROI node's box in LPS, and whether it is rotated (then its bounding box is used)."""
    check_untransformed(node, "ROI")
    center = np.array(node.GetCenter(), dtype=np.float64)
    size = np.array(node.GetSize(), dtype=np.float64)
    m = node.GetObjectToNodeMatrix()
    rot = np.array([[m.GetElement(r, c) for c in range(3)] for r in range(3)])
    rotated = not np.allclose(np.abs(rot), np.eye(3), atol=1e-6)
    if rotated:
        bounds = [0.0] * 6
        node.GetRASBounds(bounds)
        lo, hi = np.array(bounds[0::2]), np.array(bounds[1::2])
        center, size = (lo + hi) / 2.0, hi - lo
    return np.array([-center[0], -center[1], center[2]]), size, rotated


def kidney_roi(node):
    """The cascade ROI (LPS mm) of a kidney ROI node."""
    from BiSCSegmentationLib.roi import KidneyROI, ROIError

    center, size, _ = node_box_lps(node)
    side = node.GetAttribute(SIDE_ATTRIBUTE) or "unknown"
    try:
        return KidneyROI(tuple(center), tuple(size), side)
    except ROIError as exc:
        raise SceneError(f"{node.GetName()}: {exc}") from exc


def show_grown(ctx: SceneContext, volume_node, requested: Sequence, used: Sequence) -> int:
    """Resize the ROI nodes that the fine stage grew (it grows a box that cut the kidney off) to the boxes it
    used, so that the person sees what was segmented. A node moved meanwhile is left alone. Returns how many
    nodes changed."""
    changed = 0
    if len(requested) != len(used):
        return 0
    current = current_rois(ctx, volume_node, rename=False)
    for before, after in zip(requested, used):
        if after == before:
            continue
        for node, roi in current:
            if roi == before:
                x, y, z = after.center
                node.SetCenter(-x, -y, z)
                node.SetSize(*after.size)
                changed += 1
                break
    return changed


def update_side(node, midline: float) -> str:
    """Re-derive the node's side from where it is now; recolor it when the side changed, and rename it too
    unless the person gave it a name of their own (a name that is no automatic one is kept)."""
    from BiSCSegmentationLib.roi import side_of  # the core's rule (scipy: imported when used, not at start-up)

    center, size, _ = node_box_lps(node)
    side = side_of(center[0] - size[0] / 2.0, center[0] + size[0] / 2.0, midline)
    old = node.GetAttribute(SIDE_ATTRIBUTE)
    automatic = node.GetName() in {roi_name(s) for s in SIDE_COLORS}
    if old != side or (automatic and node.GetName() != roi_name(side)):
        was = node.StartModify()
        node.SetAttribute(SIDE_ATTRIBUTE, side)
        if automatic:
            node.SetName(roi_name(side))
        _style(node, side)
        node.EndModify(was)
    return side


def current_rois(ctx: SceneContext, volume_node, rename: bool = True) -> list:
    """[(node, KidneyROI)] for the volume, sides refreshed from the nodes' current positions."""
    out = []
    mid = midline_x(volume_node) if rename and roi_nodes(ctx, volume_node) else None
    for node in roi_nodes(ctx, volume_node):
        if mid is not None:
            update_side(node, mid)
        out.append((node, kidney_roi(node)))
    return out


def check_rows(ctx: SceneContext, volume_node, ct=None) -> List[ROIRow]:
    """The ROI list: each ROI's size and what is wrong with it (too small, outside the image, rotated)."""
    from BiSCSegmentationLib.roi import check_roi, roi_overlap_fraction
    from .scene import volume_from_node

    if ct is None:
        ct = volume_from_node(volume_node, copy=False)
    rows = []
    for node, roi in current_rois(ctx, volume_node):
        row = ROIRow(node.GetID(), node.GetName(), roi.side, tuple(roi.size), list(check_roi(roi, ct)))
        if not row.problems:
            inside = roi_overlap_fraction(roi, ct)
            if inside < 0.999:
                row.warnings.append(f"{node.GetName()} reaches outside the image ({100 * (1 - inside):.0f}% of the "
                                    f"box); that part is treated as air")
        if node_box_lps(node)[2]:
            row.warnings.append(f"{node.GetName()} is rotated; its axis-aligned bounding box is used")
        rows.append(row)
    return rows


def problems_before_segmenting(rows: Sequence[ROIRow]) -> List[str]:
    """Plain-language reasons the fine stage cannot run on these ROIs (empty list: go)."""
    if not rows:
        return ["There is no kidney ROI. Press \"Locate kidneys\", or add an ROI by hand around each kidney "
                "(\"Add ROI\") and press \"Segment kidneys\"."]
    return [p for r in rows for p in r.problems]


class ROIWatcher:
    """Calls ``on_change()`` whenever anything about ``volume_node``'s kidney ROIs may have changed: an ROI node
    moved, resized, renamed or re-attributed, put under a transform, added or deleted (by this module, the
    Data module, Python, ...). The panel passes a debounced refresh of its ROI list."""

    NODE_EVENTS = ("ModifiedEvent", "PointModifiedEvent", "PointEndInteractionEvent", "TransformModifiedEvent")

    def __init__(self, ctx: SceneContext, volume_node, on_change: Callable[[], None]):
        import slicer
        import vtk

        self.ctx, self.volume_node, self.on_change = ctx, volume_node, on_change
        self._node_tags = {}     # node -> [tags]
        self._events = [e for e in (getattr(slicer.vtkMRMLMarkupsNode, n, None) or getattr(vtk.vtkCommand, n, None)
                                    for n in self.NODE_EVENTS) if e is not None]
        self._scene_tags = [ctx.scene.AddObserver(e, self._scene_changed)
                            for e in (slicer.vtkMRMLScene.NodeAddedEvent, slicer.vtkMRMLScene.NodeRemovedEvent)]
        self.sync()

    def _scene_changed(self, caller=None, event=None) -> None:
        if self.sync():
            self.on_change()

    def _node_changed(self, caller=None, event=None) -> None:
        self.on_change()

    def sync(self) -> bool:
        """Observe exactly the scene's ROI nodes (a node becomes a kidney ROI by an attribute set after it
        was added, so all of them are watched; the list shows the volume's); True when that set changed."""
        now = self.ctx.nodes_by_class("vtkMRMLMarkupsROINode") if self.volume_node is not None else []
        changed = set(now) != set(self._node_tags)
        for node in [n for n in self._node_tags if n not in now]:
            for tag in self._node_tags.pop(node):
                node.RemoveObserver(tag)
        for node in now:
            if node not in self._node_tags:
                self._node_tags[node] = [node.AddObserver(e, self._node_changed) for e in self._events]
        return changed

    @property
    def observed(self) -> list:
        return list(self._node_tags)

    def close(self) -> None:
        for node, tags in self._node_tags.items():
            for tag in tags:
                node.RemoveObserver(tag)
        self._node_tags = {}
        for tag in self._scene_tags:
            self.ctx.scene.RemoveObserver(tag)
        self._scene_tags = []
