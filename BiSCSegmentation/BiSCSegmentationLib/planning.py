"""Surgical planning numbers from a label map (0 background, 1 kidney, 2 tumor), in patient coordinates.

Per kidney (a 26-connected kidney+tumor component of at least 10 mL): side, volume with and without tumor,
tumor volume, and the parenchyma that would remain after excising each tumor with a 5 mm margin. Per tumor
(26-connected component of at least 0.5 mL): volume, largest 3-D and largest axial diameter with their end
points (LPS mm and voxel index of the input, so that a viewer can draw them), AJCC size category and
R.E.N.A.L. nephrometry (:mod:`nephrometry`). ``plan_document`` is the JSON that ``bisc-plan --json`` writes;
the CLI, the PDF report, batch runs and the Slicer module all use :func:`analyse`. Definitions: docs/planning.md.
"""
from __future__ import annotations

import math
import platform
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy import ndimage

from . import __version__
from .metrics import _FULL, _bbox, _farthest_pair, _hull_indices, components_in_box, largest_diameter
from .nephrometry import KidneyBox, renal_score, size_category
from .quality import MIN_KIDNEY_ML, QualityWarning, WARNING
from .roi import side_of
from .volume import Volume, VolumeError, to_canonical

PLAN_FORMAT = "bisc-segmentation-plan"
PLAN_VERSION = 1
MIN_TUMOR_ML = 0.5            # tumors listed one by one from this size (a 10 mm sphere is 0.52 mL)
RESECTION_MARGIN_MM = 5.0     # remaining parenchyma: parenchyma farther than this from any tumor of the kidney
BODY_HU = -500.0              # CT voxels above this are the patient (for the midline)
CONTEXT_MM = 40.0             # what is kept around the kidneys (the report's images show it)
_FACE2D = ndimage.generate_binary_structure(2, 1)


def check_labels(labels: Volume, name: str = "label map") -> Volume:
    """A label map as uint8 holding only 0, 1 and 2, or a clear refusal."""
    a = np.asarray(labels.array)
    if a.dtype.kind not in "iubf":
        raise VolumeError(f"{name}: expected a label map of integers 0, 1, 2, got {a.dtype} voxels")
    if a.dtype.kind == "f":
        bad_mask = ~((a == 0) | (a == 1) | (a == 2))
        bad = np.unique(a[bad_mask]) if bad_mask.any() else []
    else:
        bad = np.unique(a[(a < 0) | (a > 2)]) if (a.min() < 0 or a.max() > 2) else []
    if len(bad):
        shown = ", ".join(f"{v:g}" for v in list(bad)[:6])
        raise VolumeError(f"{name}: a label map must hold only 0 (background), 1 (kidney) and 2 (tumor); found "
                          f"{shown}. Give a BiSC/KiTS-style label map, not a CT")
    return labels.with_array(a.astype(np.uint8, copy=False))


@dataclass
class Plan:
    """The measurements of one label map; ``canonical`` is the kidneys' region of the label map (40 mm around
    the foreground) in canonical orientation, the arrays the report draws; ``ct_canonical`` the CT on the same
    grid when one was given."""

    labels: Volume
    canonical: Volume
    ct_canonical: Optional[Volume]
    kidneys: List[Dict] = field(default_factory=list)
    tumors: List[Dict] = field(default_factory=list)
    fragments: Dict = field(default_factory=dict)
    warnings: List[QualityWarning] = field(default_factory=list)
    midline_x_lps: float = 0.0
    midline_from: str = ""

    def canonical_kji(self, lps) -> np.ndarray:
        """Continuous (k, j, i) index in ``canonical`` of an LPS point."""
        return self.canonical.physical_to_index(np.asarray(lps, dtype=np.float64))[::-1]


def _crop_box(labels: Volume, margin_mm: float) -> Optional[Tuple[slice, slice, slice]]:
    """The bounding box [k, j, i] of the foreground grown by ``margin_mm`` (None: nothing to crop to)."""
    a = np.asarray(labels.array)
    rows = a.any(axis=(1, 2))                 # two passes over the array, no full-size temporary
    if not rows.any():
        return None
    first, last = int(np.flatnonzero(rows)[0]), int(np.flatnonzero(rows)[-1]) + 1
    box = (slice(first, last),) + _bbox(a[first:last].any(axis=0)[None])[1:]
    grow = [int(math.ceil(margin_mm / s)) for s in labels.spacing[::-1]]
    return tuple(slice(max(0, b.start - g), min(n, b.stop + g)) for b, g, n in zip(box, grow, a.shape))


def crop(volume: Optional[Volume], box) -> Optional[Volume]:
    """A sub-volume [k, j, i] with the origin moved so that every voxel keeps its patient position."""
    if volume is None or box is None:
        return volume
    start = np.array([b.start for b in box][::-1], dtype=float)          # (i, j, k)
    return Volume(np.ascontiguousarray(volume.array[box]), volume.spacing, tuple(volume.index_to_physical(start)),
                  volume.direction)


def _midline(volume: Volume, ct: Optional[Volume]) -> Tuple[float, str]:
    """LPS x of the patient's midline: the body's centre in the CT when there is one, else the image's centre
    (a CT's field of view is centred on the patient; a label map alone says nothing else)."""
    if ct is not None:
        a = np.asarray(ct.array)
        step = max(1, a.shape[0] // 32)
        body = np.argwhere(a[::step, ::4, ::4] > BODY_HU)
        if len(body):
            kji = body * np.array([step, 4, 4])
            return float(ct.index_to_physical(kji[:, ::-1].astype(float))[:, 0].mean()), "body centre in the CT"
    corners = np.array([[i, j, k] for i in (0, volume.size_ijk[0] - 1) for j in (0, volume.size_ijk[1] - 1)
                        for k in (0, volume.size_ijk[2] - 1)], dtype=float)
    return float(volume.index_to_physical(corners)[:, 0].mean()), "centre of the image (no CT given)"


def axial_diameter(mask: np.ndarray, spacing_kji) -> Tuple[float, Optional[int], Optional[np.ndarray]]:
    """Largest in-slice diameter over the axial slices (numpy axis 0) of a canonical mask: (mm, slice, end
    points as two (k, j, i) rows), voxel centre to centre as in :func:`metrics.largest_diameter_mm`."""
    sj, si = float(spacing_kji[1]), float(spacing_kji[2])
    best, where, ends = 0.0, None, None
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        sl = mask[k]
        box = _bbox(sl[None])
        if math.hypot((box[1].stop - box[1].start - 1) * sj, (box[2].stop - box[2].start - 1) * si) <= best \
                and where is not None:
            continue   # even its bounding box's diagonal is shorter
        sub = sl[box[1], box[2]]
        edge = sub & ~ndimage.binary_erosion(sub, structure=_FACE2D, border_value=0)
        ji = np.argwhere(edge) + np.array([box[1].start, box[2].start])
        if len(ji) < 2:
            if where is None:
                where, ends = int(k), np.array([[k, *ji[0]], [k, *ji[0]]], dtype=float)
            continue
        xy = ji * np.array([sj, si])
        idx = _hull_indices(xy)
        d, a, b = _farthest_pair(xy[idx])
        if d > best or where is None:
            best, where = d, int(k)
            ends = np.array([[k, *ji[idx[a]]], [k, *ji[idx[b]]]], dtype=float)
    return best, where, ends


def _remaining_parenchyma(box: np.ndarray, spacing_kji) -> float:
    """Voxels of parenchyma (1) farther than the resection margin from every tumor voxel (2) of a kidney box."""
    tumor = box == 2
    paren = box == 1
    if not tumor.any():
        return float(np.count_nonzero(paren))
    margin = [int(math.ceil(RESECTION_MARGIN_MM / s)) + 1 for s in spacing_kji]
    tb = _bbox(tumor)
    near = tuple(slice(max(0, b.start - m), b.stop + m) for b, m in zip(tb, margin))
    dist = ndimage.distance_transform_edt(~tumor[near], sampling=spacing_kji)
    removed = np.count_nonzero(paren[near] & (dist <= RESECTION_MARGIN_MM))
    return float(np.count_nonzero(paren) - removed)


def _lps_list(points) -> List[List[float]]:
    return [[round(float(v), 2) for v in p] for p in np.atleast_2d(points)]


def analyse(labels: Volume, ct: Optional[Volume] = None, min_tumor_ml: float = MIN_TUMOR_ML,
            renal: bool = True) -> Plan:
    """Measure every kidney and tumor of a label map (see module docstring). ``ct``, if given, must be on the
    label map's grid; it places the midline and is drawn under the report's images."""
    labels = check_labels(labels)
    if ct is not None and not ct.same_grid(labels):
        raise VolumeError("the CT and the label map are on different voxel grids (size, spacing, origin or "
                          "direction differ); give the CT the label map was made from")
    midline = _midline(labels, ct)
    box = _crop_box(labels, CONTEXT_MM)   # a whole CT's grid is mostly empty: reorient only the kidneys' region
    canon, _ = to_canonical(crop(labels, box))
    ct_canon = to_canonical(crop(ct, box))[0] if ct is not None else None
    plan = Plan(labels, canon, ct_canon)
    plan.midline_x_lps, plan.midline_from = midline
    a = canon.array
    sp = np.asarray(canon.spacing[::-1], dtype=np.float64)          # (k, j, i)
    voxel_ml = canon.voxel_volume_ml
    m44 = canon.index_to_physical_matrix()
    outer, comp, _ = components_in_box(a > 0)
    if outer is None:
        plan.warnings.append(QualityWarning("PLAN_NO_KIDNEY", WARNING, "the label map holds no kidney or tumor"))
        return plan
    off = np.array([s.start for s in outer])
    objects = ndimage.find_objects(comp)
    counts = np.bincount(comp.ravel())
    kidney_ids = [n for n in range(1, len(counts)) if counts[n] * voxel_ml >= MIN_KIDNEY_ML]
    kidney_ids.sort(key=lambda n: -counts[n])

    def box_of(n: int) -> Tuple[KidneyBox, np.ndarray]:
        sl = objects[n - 1]
        sub = np.where(comp[sl] == n, a[outer][sl], 0).astype(np.uint8)
        start = off + np.array([s.start for s in sl])
        to_lps = m44.copy()
        to_lps[:3, 3] = m44[:3, :3] @ start[::-1] + m44[:3, 3]
        return KidneyBox(sub, to_lps, tuple(sp)), start

    kidneys: Dict[int, Dict] = {}
    for n in kidney_ids:
        kb, start = box_of(n)
        c_lps = kb.lps(np.array(ndimage.center_of_mass(kb.labels > 0)))[0]
        x_lps = kb.lps_sample(kb.labels > 0)[:, 0]
        fused = min(np.mean(x_lps > plan.midline_x_lps), np.mean(x_lps < plan.midline_x_lps)) > 0.25
        kidneys[n] = {"box": kb, "start": start, "centroid": c_lps, "fused": bool(fused), "cache": {},
                      "doc": {"side": "both (fused)" if fused else side_of(c_lps[0], c_lps[0], plan.midline_x_lps),
                              "volume_ml": round(counts[n] * voxel_ml, 2),
                              "parenchyma_ml": round(float(np.count_nonzero(kb.labels == 1)) * voxel_ml, 2),
                              "tumor_volume_ml": round(float(np.count_nonzero(kb.labels == 2)) * voxel_ml, 2),
                              "remaining_parenchyma_ml": round(_remaining_parenchyma(kb.labels, sp) * voxel_ml, 2),
                              "centroid_lps": _lps_list(c_lps)[0], "tumor_count": 0}}
    _sides_by_order(plan, kidneys)
    for n in kidney_ids:
        kd = kidneys[n]["doc"]
        kd["remaining_parenchyma_share"] = (round(kd["remaining_parenchyma_ml"] / kd["parenchyma_ml"], 3)
                                            if kd["parenchyma_ml"] > 0 else None)
        plan.kidneys.append(kd)
        kidneys[n]["number"] = len(plan.kidneys)
    if len(kidney_ids) > 2 or len(kidney_ids) == 0:
        plan.warnings.append(QualityWarning("PLAN_KIDNEY_COUNT", WARNING, f"{len(kidney_ids)} kidneys of at least "
                                            f"{MIN_KIDNEY_ML:g} mL found; check the label map before planning"))

    tumor_comp, nt = ndimage.label(a[outer] == 2, structure=_FULL)
    t_counts = np.bincount(tumor_comp.ravel())
    t_objects = ndimage.find_objects(tumor_comp)
    order = sorted(range(1, nt + 1), key=lambda t: -t_counts[t])
    small = [t for t in order if t_counts[t] * voxel_ml < min_tumor_ml]
    plan.fragments = {"count": len(small), "volume_ml": round(sum(t_counts[t] for t in small) * voxel_ml, 2),
                      "min_tumor_ml": min_tumor_ml}
    for t in (t for t in order if t_counts[t] * voxel_ml >= min_tumor_ml):
        sl = t_objects[t - 1]
        mask = tumor_comp[sl] == t
        start = off + np.array([s.start for s in sl])
        host = int(comp[sl][mask][0])
        d3, e0, e1 = largest_diameter(mask, canon.spacing, canon.direction)
        ends3 = np.array([e0[::-1], e1[::-1]]) + start                      # (k, j, i) in canonical
        dax, _, ends_ax = axial_diameter(mask, sp)
        ends_ax = ends_ax + start
        to_lps = lambda kji: np.asarray(kji)[:, ::-1] @ m44[:3, :3].T + m44[:3, 3]  # noqa: E731
        c_lps = to_lps((np.argwhere(mask).mean(axis=0) + start)[None])[0]
        doc = {"index": len(plan.tumors) + 1,
               "side": None, "kidney": None,
               "volume_ml": round(float(t_counts[t]) * voxel_ml, 2),
               "diameter_axial_mm": round(dax, 1), "diameter_3d_mm": round(d3, 1),
               "diameter_axial_endpoints_lps": _lps_list(to_lps(ends_ax)),
               "diameter_3d_endpoints_lps": _lps_list(to_lps(ends3)),
               "diameter_axial_endpoints_ijk": _input_ijk(labels, to_lps(ends_ax)),
               "diameter_3d_endpoints_ijk": _input_ijk(labels, to_lps(ends3)),
               "centroid_lps": _lps_list(c_lps)[0],
               "size_category": size_category(d3), "size_category_basis": "largest 3-D diameter (AJCC: greatest "
                                                                          "dimension); a size category, not a stage",
               "renal": None}
        if host in kidneys:
            kid = kidneys[host]
            kid["doc"]["tumor_count"] += 1
            doc["kidney"] = kid["number"]
            doc["side"] = side_of(c_lps[0], c_lps[0], plan.midline_x_lps) if kid["fused"] else kid["doc"]["side"]
            if renal:
                kb = kid["box"]
                local = np.zeros(kb.labels.shape, bool)
                rel = start - kid["start"]
                local[tuple(slice(int(r), int(r) + n) for r, n in zip(rel, mask.shape))] = mask
                doc["renal"] = renal_score(kb, local, d3, kid["cache"])
        else:
            doc["side"] = side_of(c_lps[0], c_lps[0], plan.midline_x_lps)
            doc["renal"] = {"R": None, "E": None, "N": None, "A": None, "L": None, "score": None,
                            "complexity": None, "notation": "?",
                            "raw": {"reason": f"not computed: the tumor lies in a kidney fragment under "
                                              f"{MIN_KIDNEY_ML:g} mL"}} if renal else None
        plan.tumors.append(doc)
    return plan


def _sides_by_order(plan: Plan, kidneys: Dict[int, Dict]) -> None:
    """Two separate kidneys on the same side of an assumed midline: the field of view is off-centre, so the one
    farther to the patient's left (larger LPS x) is the left kidney."""
    plain = [k for k in kidneys.values() if not k["fused"]]
    if len(plain) == 2 and plain[0]["doc"]["side"] == plain[1]["doc"]["side"]:
        a, b = sorted(plain, key=lambda k: k["centroid"][0])
        a["doc"]["side"], b["doc"]["side"] = "right", "left"
        plan.warnings.append(QualityWarning("PLAN_SIDE", WARNING, "both kidneys lie on one side of the "
                                            f"{plan.midline_from}; sides assigned by their positions instead"))
    if len(kidneys) == 1 and plan.ct_canonical is None:
        plan.warnings.append(QualityWarning("PLAN_SIDE", WARNING, "one kidney only and no CT: its side assumes the "
                                            "patient is centred in the image; pass the CT to place the midline"))


def _input_ijk(labels: Volume, lps) -> List[List[float]]:
    return [[round(float(v), 2) for v in p] for p in labels.physical_to_index(np.asarray(lps))]


def plan_document(plan: Plan, labels_path=None, ct_path=None, identification: Optional[Dict] = None) -> Dict:
    """Everything :func:`analyse` measured, as JSON-ready data with documented keys (docs/planning.md)."""
    return {
        "format": PLAN_FORMAT, "version": PLAN_VERSION,
        "software": {"name": "BiSCSegmentation", "version": __version__, "python": platform.python_version()},
        "input": {"labels": None if labels_path is None else str(labels_path),
                  "ct": None if ct_path is None else str(ct_path),
                  "size_ijk": list(plan.labels.size_ijk), "spacing_mm": list(plan.labels.spacing)},
        "identification": identification or {},
        "midline": {"x_lps_mm": round(plan.midline_x_lps, 2), "from": plan.midline_from},
        "kidneys": plan.kidneys, "tumors": plan.tumors, "tumor_fragments": plan.fragments,
        "warnings": [w.to_dict() for w in plan.warnings],
        "definitions": "docs/planning.md; coordinates are LPS millimetres; *_ijk are voxel indices (i, j, k) of the "
                       "input label map; not for clinical use",
    }


__all__ = ["analyse", "plan_document", "Plan", "check_labels", "axial_diameter", "MIN_TUMOR_ML",
           "RESECTION_MARGIN_MM"]
