"""Numbers for surgical planning from the (possibly hand-edited) output segmentation.

Per segment: volume (mL). Per renal tumor: volume, largest diameter (mm, centre to centre of the farthest
voxels, as RECIST measures) and, when a segment holds several separate tumors of at least MIN_LESION_ML,
one line per tumor with its own volume and diameter (the segment's line then has no diameter; otherwise it
has the diameter of the segment's largest tumor, so that specks do not stretch it). Per side: the
tumor-to-kidney volume ratio (tumor volume / kidney segment volume; the kidney segment does not include the
tumor). Computed with :mod:`BiSCSegmentationLib.metrics` on the segments on the CT's grid, shown in a table
node, exported as CSV, and recomputed when the segmentation changes (:class:`PlanningObserver`).
Per tumor also: the largest axial diameter (drawn as a line markup on its slice), the AJCC size category and
the R.E.N.A.L. nephrometry parts, from :func:`BiSCSegmentationLib.planning.analyse` (docs/planning.md).

How and when it is recomputed. :func:`compute_rows` (the one place rows are made) reads the segments
straight from the segmentation's binary labelmaps, each cropped to its own box
(:func:`segmentation.segment_boxes`): no scene node is created, and nothing the size of the CT is allocated.
Edits are debounced: every change restarts the panel's timer, and the table is recomputed once, about
``DEBOUNCE_MS`` after the last change. The table node records the segmentation's modification time it was
computed for (:func:`is_current`), so writing a result and then showing it computes the table once.
"""
from __future__ import annotations

import csv
import hashlib
import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from BiSCSegmentationLib.outputs import replace_file

from . import terminology as term
from .scene import SceneContext, SceneError, place_beside

COLUMNS = ("Segment", "Side", "Volume (mL)", "Largest diameter (mm)", "Tumor/kidney volume ratio",
           "Axial diameter (mm)", "Size category", "R", "E", "N", "A", "L", "R.E.N.A.L. score")
TABLE_ATTRIBUTE = "BiSCSegmentation.Planning"
LINE_ATTRIBUTE = "BiSCSegmentation.DiameterOf"   # on a diameter line markup: the segmentation node's ID
_PLAN_CACHE: dict = {}                            # the last label map's nephrometry (see add_nephrometry)
MIN_LESION_ML = 0.5   # separate tumors listed one by one from this size (a 10 mm sphere is 0.52 mL)
DEBOUNCE_MS = 300     # the table is recomputed this long after the last edit
STAMP_ATTRIBUTE = "BiSCSegmentation.PlanningStamp"   # what the table was computed from (see is_current)


@dataclass
class PlanningRow:
    segment: str
    side: str
    volume_ml: float
    largest_diameter_mm: float = math.nan
    tumor_kidney_ratio: float = math.nan
    axial_diameter_mm: float = math.nan
    size_category: str = ""
    renal: Optional[Dict] = None                          # the core's R.E.N.A.L. dict (parts, score, raw)
    axial_endpoints_lps: Optional[List[List[float]]] = None
    centroid_lps: Optional[Tuple[float, float, float]] = None   # of the tumor the row measures (for matching)
    component_ml: float = math.nan                               # and its volume

    def cells(self, digits: int = 1) -> List[str]:
        def f(v, d):
            return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"
        return [self.segment, self.side, f(self.volume_ml, digits), f(self.largest_diameter_mm, digits),
                f(self.tumor_kidney_ratio, 3), f(self.axial_diameter_mm, digits), self.size_category] + \
            renal_cells(self.renal)


def renal_cells(renal: Optional[Dict]) -> List[str]:
    """R, E, N, A, L and the score as shown: empty for a row without a tumor, "n/c" for a part not computed
    (the reason is in the planning JSON and docs/planning.md)."""
    if not renal:
        return [""] * 6
    return ["n/c" if renal.get(k) is None else str(renal[k]) for k in ("R", "E", "N", "A", "L")] + \
        ["n/c" if renal.get("score") is None else f"{renal['score']} ({renal['complexity']})"]


def compute_rows(ctx: SceneContext, seg_node, reference, min_lesion_ml: float = MIN_LESION_ML) -> List[PlanningRow]:
    """Planning rows for every kidney/tumor segment, right side first; tumors from ``min_lesion_ml`` listed.

    Each mask is cropped to its segment's box (``boxes[sid][1]`` is the (k, j, i) of its first voxel on the
    CT's grid), so volumes and diameters cost what the segments are, not what the CT is."""
    from BiSCSegmentationLib.metrics import tumor_components, volume_ml
    from .scene import volume_from_node
    from .segmentation import segment_boxes

    ref = volume_from_node(reference, copy=False)
    boxes = segment_boxes(seg_node, reference)
    seg = seg_node.GetSegmentation()
    empty = (np.zeros((0, 0, 0), bool), (0, 0, 0))
    masks = {seg.GetNthSegmentID(n): boxes.get(seg.GetNthSegmentID(n), empty)
             for n in range(seg.GetNumberOfSegments())}
    per_side = {"right": {"kidney": [], "tumor": []}, "left": {"kidney": [], "tumor": []}, None: {"kidney": [], "tumor": []}}
    others = []
    for sid, (mask, offset_kji) in masks.items():
        segment = seg.GetSegment(sid)
        structure, side = term.classify(segment)
        if structure is None:
            others.append((segment.GetName(), mask))
            continue
        per_side[side][structure].append((segment.GetName(), mask, tuple(int(v) for v in offset_kji)))
    rows: List[PlanningRow] = []
    for side in ("right", "left", None):
        label = side or ""
        kidney_ml = 0.0
        for name, mask, _ in per_side[side]["kidney"]:
            v = volume_ml(mask, ref.spacing)
            kidney_ml += v
            rows.append(PlanningRow(name, label, v))
        for name, mask, offset in per_side[side]["tumor"]:
            v = volume_ml(mask, ref.spacing)
            ratio = v / kidney_ml if kidney_ml > 0 else math.nan
            found = tumor_components(mask.astype(np.uint8), ref.spacing, ref.direction, label=1)  # largest first
            lesions = [t for t in found if t["volume_ml"] >= min_lesion_ml]
            if len(lesions) <= 1:   # one tumor listed: the largest tumor's diameter (specks do not stretch it)
                d = float(found[0]["largest_diameter_mm"]) if found else math.nan
                rows.append(PlanningRow(name, label, v, d, ratio, centroid_lps=_centroid(ref, found[:1], offset),
                                        component_ml=float(found[0]["volume_ml"]) if found else math.nan))
                continue
            rows.append(PlanningRow(name, label, v, math.nan, ratio))   # several tumors: one line each
            for n, lesion in enumerate(lesions, start=1):
                rows.append(PlanningRow(f"{name} {n}", label, float(lesion["volume_ml"]),
                                        float(lesion["largest_diameter_mm"]),
                                        centroid_lps=_centroid(ref, [lesion], offset),
                                        component_ml=float(lesion["volume_ml"])))
    for name, mask in others:
        rows.append(PlanningRow(name, "", volume_ml(mask, ref.spacing)))
    add_nephrometry(rows, ref, [m for side in per_side.values() for m in side["kidney"]],
                    [m for side in per_side.values() for m in side["tumor"]])
    return rows


def _centroid(ref, found, offset_kji=(0, 0, 0)) -> Optional[Tuple[float, float, float]]:
    """Patient position of the first component's centroid; ``found`` was measured on a mask cropped at
    ``offset_kji`` (its first voxel's (k, j, i) on the CT's grid)."""
    if not found:
        return None
    ijk = np.asarray(found[0]["centroid_ijk"], dtype=float) + np.asarray(offset_kji[::-1], dtype=float)
    return tuple(float(v) for v in ref.index_to_physical(ijk))


def add_nephrometry(rows: List[PlanningRow], ref, kidneys, tumors) -> None:
    """Fill each tumor row's axial diameter, size category and R.E.N.A.L. parts from the core's analysis of
    the kidney and tumor segments (as one label map on the CT's grid); rows are matched to the core's tumors
    by their centroids."""
    from BiSCSegmentationLib.planning import analyse
    from BiSCSegmentationLib.volume import Volume

    wanted = [r for r in rows if r.centroid_lps is not None]
    if not wanted:
        return
    # one label map over the union of the segments' boxes (not the whole CT), placed by its first voxel
    parts = [(m, o) for _, m, o in kidneys + tumors if m.size]
    lo = np.min([o for _, o in parts], axis=0)
    hi = np.max([np.asarray(o) + m.shape for m, o in parts], axis=0)
    labels = np.zeros(tuple(int(v) for v in hi - lo), np.uint8)
    for value, group in ((1, kidneys), (2, tumors)):
        for _, mask, offset in group:
            if mask.size:
                at = tuple(slice(int(a - b), int(a - b + n)) for a, b, n in zip(offset, lo, mask.shape))
                labels[at][mask] = value
    origin = tuple(float(v) for v in ref.index_to_physical(np.asarray(lo[::-1], dtype=float)))
    smallest = min(r.component_ml for r in wanted) * 0.999   # only the tumors the table lists (not every speck)
    key = (hashlib.blake2b(labels.tobytes(), digest_size=16).hexdigest(), ref.spacing, origin,
           ref.direction.tobytes(), round(smallest, 6))
    plan = _PLAN_CACHE.get(key)
    if plan is None:   # the table is refreshed more often than the segments change: measure each state once
        plan = analyse(Volume(labels, ref.spacing, origin, ref.direction), min_tumor_ml=smallest)
        _PLAN_CACHE.clear()
        _PLAN_CACHE[key] = plan
    if not plan.tumors:
        return
    centres = np.array([t["centroid_lps"] for t in plan.tumors])
    for row in wanted:
        t = plan.tumors[int(np.argmin(np.linalg.norm(centres - np.asarray(row.centroid_lps), axis=1)))]
        row.axial_diameter_mm = float(t["diameter_axial_mm"])
        row.size_category = t["size_category"] or ""
        row.renal = t["renal"]
        row.axial_endpoints_lps = t["diameter_axial_endpoints_lps"]


def table_name(seg_node) -> str:
    return f"{seg_node.GetName()} planning"


def find_table(ctx: SceneContext, seg_node):
    for node in ctx.nodes_by_class("vtkMRMLTableNode"):
        if seg_node is not None and node.GetAttribute(TABLE_ATTRIBUTE) == seg_node.GetID():
            return node
    return None


def stamp(seg_node, reference, min_lesion_ml: float) -> str:
    """What a planning table depends on: the segments (IDs, label values, modification times of the segments
    and of their labelmaps), the CT and the tumor size."""
    from .segmentation import _labelmap_name

    seg = seg_node.GetSegmentation()
    parts = [str(seg.GetMTime()), reference.GetID(), repr(min_lesion_ml)]
    for n in range(seg.GetNumberOfSegments()):
        segment = seg.GetNthSegment(n)
        image = segment.GetRepresentation(_labelmap_name())
        parts.append(f"{seg.GetNthSegmentID(n)}:{segment.GetLabelValue()}:{segment.GetMTime()}:"
                     f"{image.GetMTime() if image is not None else 0}")
    return "|".join(parts)


def is_current(ctx: SceneContext, seg_node, reference, min_lesion_ml: float = MIN_LESION_ML) -> bool:
    """Whether the segmentation's table was computed from its segments as they are now."""
    node = find_table(ctx, seg_node)
    return node is not None and node.GetAttribute(STAMP_ATTRIBUTE) == stamp(seg_node, reference, min_lesion_ml)


def update_table(ctx: SceneContext, seg_node, reference, rows: Optional[List[PlanningRow]] = None,
                 min_lesion_ml: float = MIN_LESION_ML):
    """Fill (creating when needed) the segmentation's planning table node; returns it."""
    import vtk

    current = stamp(seg_node, reference, min_lesion_ml)
    if rows is None:
        rows = compute_rows(ctx, seg_node, reference, min_lesion_ml)
    node = find_table(ctx, seg_node)
    if node is None:
        node = ctx.scene.AddNewNodeByClass("vtkMRMLTableNode", table_name(seg_node))
        node.SetAttribute(TABLE_ATTRIBUTE, seg_node.GetID())
        place_beside(ctx, node, reference)
    table = node.GetTable()
    was = node.StartModify()
    table.Initialize()
    for title in COLUMNS:
        column = vtk.vtkStringArray()
        column.SetName(title)
        table.AddColumn(column)
    table.SetNumberOfRows(len(rows))
    for r, row in enumerate(rows):
        for c, cell in enumerate(row.cells()):
            table.SetValue(r, c, vtk.vtkVariant(cell))
    table.Modified()
    node.SetAttribute(STAMP_ATTRIBUTE, current)
    node.Modified()
    node.EndModify(was)
    update_diameter_lines(ctx, seg_node, rows)
    return node


def diameter_lines(ctx: SceneContext, seg_node) -> Dict[str, object]:
    """{row name: line markup node} of the segmentation's diameter lines."""
    return {n.GetAttribute(LINE_ATTRIBUTE + ".Row"): n for n in ctx.nodes_by_class("vtkMRMLMarkupsLineNode")
            if seg_node is not None and n.GetAttribute(LINE_ATTRIBUTE) == seg_node.GetID()}


def update_diameter_lines(ctx: SceneContext, seg_node, rows: List[PlanningRow]) -> None:
    """One line markup per tumor row along its largest axial diameter (both ends on the tumor's slice, so it
    shows on the axial view), named with its length; lines of tumors that are gone are removed."""
    existing = diameter_lines(ctx, seg_node)
    keep = set()
    for row in rows:
        if not row.axial_endpoints_lps:
            continue
        keep.add(row.segment)
        node = existing.get(row.segment)
        if node is None:
            node = ctx.scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode")
            node.SetAttribute(LINE_ATTRIBUTE, seg_node.GetID())
            node.SetAttribute(LINE_ATTRIBUTE + ".Row", row.segment)
        node.SetName(f"{row.segment} axial diameter {row.axial_diameter_mm:.1f} mm")
        node.RemoveAllControlPoints()
        for lps in row.axial_endpoints_lps:
            node.AddControlPoint(float(-lps[0]), float(-lps[1]), float(lps[2]))   # LPS -> RAS
        node.SetLocked(True)
    for name, node in existing.items():
        if name not in keep:
            ctx.remove(node)


def table_rows(table_node) -> List[List[str]]:
    """Cells of a planning table node (header first), as shown."""
    table = table_node.GetTable()
    out = [[table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]]
    for r in range(table.GetNumberOfRows()):
        out.append([table.GetValue(r, c).ToString() for c in range(table.GetNumberOfColumns())])
    return out


def write_csv(rows: List[PlanningRow], path, digits: int = 2) -> str:
    """CSV (comma-separated, header row) of planning rows; written atomically."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise SceneError(f"{folder}: no such folder")

    def write(tmp) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for row in rows:
                writer.writerow(row.cells(digits))

    replace_file(path, write)
    return path


class PlanningObserver:
    """Keeps a segmentation's planning table up to date while people edit it.

    Any change of the segments marks the table stale and calls ``schedule(callback)`` again: the widget
    passes the restart of a DEBOUNCE_MS single-shot Qt timer, so a paint stroke or a burst of edits costs one
    update, DEBOUNCE_MS after the last change. Without a scheduler the table is updated at once.
    :meth:`paused` ignores the module's own writes (the writer updates the table itself, once).
    """

    EVENTS = ("SegmentAdded", "SegmentRemoved", "SegmentModified", "SourceRepresentationModified",
              "MasterRepresentationModified")

    def __init__(self, ctx: SceneContext, seg_node, reference, schedule: Optional[Callable] = None,
                 on_update: Optional[Callable] = None,
                 min_lesion_ml: Callable[[], float] = lambda: MIN_LESION_ML):
        self.ctx, self.seg_node, self.reference = ctx, seg_node, reference
        self.min_lesion_ml = min_lesion_ml
        self.schedule, self.on_update = schedule, on_update
        self.stale = False
        self.updates = 0
        self._paused = 0
        self._tags = []
        self._segmentation = seg_node.GetSegmentation()
        import slicer

        for name in self.EVENTS:
            event = getattr(slicer.vtkSegmentation, name, None)
            if event is not None:
                self._tags.append(self._segmentation.AddObserver(event, self._changed))

    def _changed(self, caller=None, event=None) -> None:
        if self._paused:
            return
        self.stale = True
        if self.schedule is not None:
            self.schedule(self.flush)      # every change: the timer restarts (debounce)
        else:
            self.flush()

    def paused(self):
        """Context manager: changes made inside are not reported (the module's own write)."""
        import contextlib

        @contextlib.contextmanager
        def pause():
            self._paused += 1
            try:
                yield self
            finally:
                self._paused -= 1
        return pause()

    def flush(self):
        """Recompute the table now if anything changed; returns the table node (or None)."""
        if not self.stale:
            return None
        self.stale = False
        if not self.ctx.scene.IsNodePresent(self.seg_node) or not self.ctx.scene.IsNodePresent(self.reference):
            return None
        node = update_table(self.ctx, self.seg_node, self.reference, min_lesion_ml=self.min_lesion_ml())
        self.updates += 1
        if self.on_update is not None:
            self.on_update(node)
        return node

    def close(self) -> None:
        for tag in self._tags:
            self._segmentation.RemoveObserver(tag)
        self._tags = []
