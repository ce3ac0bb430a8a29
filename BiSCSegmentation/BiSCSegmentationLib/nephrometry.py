"""R.E.N.A.L. nephrometry (Kutikov & Uzzo, J Urol 2009) computed from a kidney's masks, and the AJCC size
category. Every part carries the value it was derived from; a part that cannot be computed reliably is None
with the reason, never a guess. Definitions and their limits: docs/planning.md.

All arrays here are one kidney's box of the *canonical* label map (``volume.to_canonical``: numpy axes
run inferior->superior, anterior->posterior, right->left), so that hulls and distances are computed once,
in a small array, whatever the file's orientation. Patient directions (anterior, superior) are taken from
the physical (LPS) coordinates of the voxels, never from the array order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .metrics import _FULL, surface_voxels

# Cut-offs of the published score (diameters in mm)
R_CUTS_MM = (40.0, 70.0)          # R: <= 4 cm 1, > 4 and < 7 cm 2, >= 7 cm 3
N_CUTS_MM = (4.0, 7.0)            # N: >= 7 mm 1, > 4 and < 7 mm 2, <= 4 mm 3
# Choices of this implementation (docs/planning.md)
ENDOPHYTIC_SHARE = 0.02           # E: under 2 % of the tumor outside the hull (voxel noise) = entirely endophytic
SIDE_SHARE = 2.0 / 3.0            # A: at least 2/3 of the tumor on one side of the coronal plane
SINUS_OPENING_MM = 2.0            # slivers between the hull and the voxel surface thinner than 4 mm are not sinus
SINUS_MIN_ML = 1.0                # a smaller space inside the hull is not taken for the renal sinus
POLAR_PERCENTILES = (2.0, 98.0)   # polar lines: where the sinus starts and ends along the long axis (robust ends)
TUMOR_OUTWEIGHS = 4.0             # tumor > 4x the parenchyma: the kidney's own surface cannot be estimated
MIN_PARENCHYMA_ML = 10.0
# AJCC 8th edition T1-T2 cut-offs: greatest dimension, tumor limited to the kidney. A size category, not a
# stage: extension into veins, fat or the adrenal (T3-T4), nodes and metastases are not seen in a label map.
SIZE_CATEGORIES = (("T1a", 40.0), ("T1b", 70.0), ("T2a", 100.0), ("T2b", math.inf))
COMPLEXITY = ((6, "low"), (9, "moderate"), (12, "high"))


def size_category(diameter_mm: Optional[float]) -> Optional[str]:
    """AJCC size category (T1a <= 4 cm, T1b 4-7, T2a 7-10, T2b > 10 cm) of a greatest dimension in mm."""
    if diameter_mm is None or not math.isfinite(diameter_mm) or diameter_mm <= 0:
        return None
    diameter_mm = round(float(diameter_mm), 1)   # as reported (0.1 mm): float noise must not cross a cut-off
    for name, upper in SIZE_CATEGORIES:
        if diameter_mm <= upper:
            return name
    return None  # pragma: no cover - the last cut-off is infinite


def complexity(score: Optional[int]) -> Optional[str]:
    """Complexity group of a total R.E.N.A.L. score: low 4-6, moderate 7-9, high 10-12."""
    if score is None:
        return None
    for upper, name in COMPLEXITY:
        if score <= upper:
            return name
    return None  # pragma: no cover


@dataclass
class KidneyBox:
    """One kidney (a connected kidney+tumor component) cut out of the canonical label map.

    ``labels``: uint8 array of the box (0 outside this kidney, 1 parenchyma, 2 tumor); ``to_lps``: 4x4 matrix
    mapping homogeneous (i, j, k, 1) *of the box* to LPS mm; ``spacing_kji``: voxel size along the numpy axes.
    """

    labels: np.ndarray
    to_lps: np.ndarray
    spacing_kji: Tuple[float, float, float]

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing_kji)) / 1000.0

    def lps_sample(self, mask: np.ndarray, limit: int = 200_000) -> np.ndarray:
        """LPS positions of at most ``limit`` evenly spread voxels of ``mask`` (shares and percentiles of a
        large structure do not need every voxel)."""
        kji = np.argwhere(mask)
        return self.lps(kji[:: len(kji) // limit + 1] if len(kji) > limit else kji)

    def lps(self, kji: np.ndarray) -> np.ndarray:
        kji = np.asarray(kji, dtype=np.float64).reshape(-1, 3)
        return kji[:, ::-1] @ self.to_lps[:3, :3].T + self.to_lps[:3, 3]


# ------------------------------------------------------------------------------------------------- hull
def convex_hull_mask(mask: np.ndarray) -> np.ndarray:
    """The voxels whose centres lie in the convex hull of ``mask``'s voxel centres.

    The hull is taken in index space (convexity does not depend on the voxel size) and filled line by line
    along the last axis from the facets' half-spaces: exact, and far cheaper than testing every voxel.
    """
    from scipy.spatial import ConvexHull, QhullError

    pts = np.argwhere(surface_voxels(mask)).astype(np.float64)
    if len(pts) < 4:
        return mask.astype(bool).copy()
    try:
        eq = ConvexHull(pts).equations            # n . x + d <= 0 inside, unit normals (index units)
    except QhullError:                             # flat (one slice, one row): the mask is its own hull
        return mask.astype(bool).copy()
    K, J, I = mask.shape
    kk, jj = np.meshgrid(np.arange(K, dtype=np.float64), np.arange(J, dtype=np.float64), indexing="ij")
    lines = np.stack([kk.ravel(), jj.ravel()], axis=1)
    a = eq[:, 2]
    pos, neg, flat = a > 1e-9, a < -1e-9, np.abs(a) <= 1e-9
    lo = np.full(len(lines), -np.inf)
    hi = np.full(len(lines), np.inf)
    step = max(1, 4_000_000 // max(1, len(eq)))
    for s in range(0, len(lines), step):
        rhs = 1e-6 - (lines[s:s + step] @ eq[:, :2].T + eq[:, 3])      # a * t <= rhs on every facet
        if pos.any():
            hi[s:s + step] = (rhs[:, pos] / a[pos]).min(axis=1)
        if neg.any():
            lo[s:s + step] = (rhs[:, neg] / a[neg]).max(axis=1)
        if flat.any():
            hi[s:s + step][(rhs[:, flat] < 0).any(axis=1)] = -np.inf
    t = np.arange(I, dtype=np.float64)
    return (t >= lo.reshape(K, J, 1)) & (t <= hi.reshape(K, J, 1))


def _ball(radius_mm: float, spacing_kji: Sequence[float]) -> np.ndarray:
    r = [int(math.floor(radius_mm / s)) for s in spacing_kji]
    grids = np.meshgrid(*[np.arange(-n, n + 1) * s for n, s in zip(r, spacing_kji)], indexing="ij")
    return sum(g ** 2 for g in grids) <= radius_mm ** 2 + 1e-9


def sinus_mask(box: KidneyBox, hull: np.ndarray) -> Tuple[Optional[np.ndarray], str]:
    """Approximate renal sinus: the largest space inside the parenchyma's convex hull that is neither kidney
    nor tumor, after an opening that removes the slivers between the hull and the voxel surface. Returns
    (mask, "") or (None, reason)."""
    space = hull & (box.labels == 0)
    space = ndimage.binary_opening(space, structure=_ball(SINUS_OPENING_MM, box.spacing_kji))
    comp, n = ndimage.label(space, structure=_FULL)
    if n == 0:
        return None, "no renal sinus found: no space inside the kidney's convex hull that is not kidney or tumor"
    sizes = np.bincount(comp.ravel())[1:]
    biggest = int(np.argmax(sizes))
    if sizes[biggest] * box.voxel_ml < SINUS_MIN_ML:
        return None, (f"no renal sinus found: the largest space inside the kidney's convex hull is "
                      f"{sizes[biggest] * box.voxel_ml:.2f} mL (under {SINUS_MIN_ML:g} mL)")
    return comp == biggest + 1, ""


# ------------------------------------------------------------------------------------------------ parts
def part_r(diameter_mm: float) -> Tuple[int, Dict]:
    diameter_mm = round(float(diameter_mm), 1)
    r = 1 if diameter_mm <= R_CUTS_MM[0] else 2 if diameter_mm < R_CUTS_MM[1] else 3
    return r, {"diameter_mm": round(float(diameter_mm), 1), "basis": "largest 3-D diameter"}


def part_e(tumor: np.ndarray, hull: np.ndarray) -> Tuple[int, Dict]:
    n = int(np.count_nonzero(tumor))
    out = int(np.count_nonzero(tumor & ~hull))
    share = out / n if n else 0.0
    e = 1 if share >= 0.5 else 3 if share < ENDOPHYTIC_SHARE else 2
    return e, {"exophytic_share": round(share, 3), "reference": "convex hull of the kidney parenchyma"}


def part_n(box: KidneyBox, tumor: np.ndarray, sinus: np.ndarray) -> Tuple[int, Dict]:
    """Distance (mm) from the tumor's deepest point (its voxel nearest the sinus) to the sinus."""
    from scipy.spatial import cKDTree

    scale = np.asarray(box.spacing_kji)
    t_pts = np.argwhere(surface_voxels(tumor))
    s_pts = np.argwhere(surface_voxels(sinus))
    dist, idx = cKDTree(s_pts * scale).query(t_pts * scale)
    best = int(np.argmin(dist))
    # centre-to-centre distance of touching voxels is one voxel: count it as touching (0 mm)
    d = max(0.0, float(dist[best]) - float(min(scale)))
    if tumor[tuple(s_pts[idx[best]])]:
        d = 0.0  # pragma: no cover - tumor and sinus are disjoint by construction
    n = 1 if d >= N_CUTS_MM[1] else 3 if d <= N_CUTS_MM[0] else 2
    deepest = box.lps(t_pts[best])[0]
    return n, {"distance_to_sinus_mm": round(d, 1), "deepest_point_lps": [round(float(v), 2) for v in deepest],
               "sinus": "space inside the parenchyma's convex hull that is not kidney or tumor (approximation)"}


def part_a(box: KidneyBox, tumor: np.ndarray) -> Tuple[str, Dict]:
    """a / p / x from the coronal plane through the parenchyma's centroid (LPS y grows posterior)."""
    y_kidney = float(box.lps(np.array(ndimage.center_of_mass(box.labels == 1)))[0][1])
    y = box.lps_sample(tumor)[:, 1]
    anterior = float(np.mean(y < y_kidney))
    a = "a" if anterior >= SIDE_SHARE else "p" if anterior <= 1 - SIDE_SHARE else "x"
    return a, {"anterior_share": round(anterior, 3), "coronal_plane_y_lps_mm": round(y_kidney, 2)}


def _long_axis(box: KidneyBox) -> np.ndarray:
    """Unit vector (LPS) of the parenchyma's first principal axis, pointing superior."""
    xyz = box.lps_sample(box.labels == 1)
    _, _, vt = np.linalg.svd(xyz - xyz.mean(axis=0), full_matrices=False)
    axis = vt[0]
    return -axis if axis[2] < 0 else axis


def part_l(box: KidneyBox, tumor: np.ndarray, sinus: np.ndarray) -> Tuple[int, Dict]:
    """Position against the polar lines (where the sinus starts and ends along the kidney's long axis)."""
    axis = _long_axis(box)
    s = box.lps_sample(sinus) @ axis
    lower, upper = (float(v) for v in np.percentile(s, POLAR_PERCENTILES))
    t = box.lps_sample(tumor) @ axis
    between = float(np.mean((t >= lower) & (t <= upper)))
    mid = 0.5 * (lower + upper)
    crosses_mid = bool(t.min() < mid < t.max())
    if between == 0.0:
        part = 1
    elif between > 0.5 or crosses_mid:
        part = 3
    else:
        part = 2
    return part, {"share_between_polar_lines": round(between, 3), "crosses_axial_midline": crosses_mid,
                  "polar_lines_mm_along_long_axis": [round(lower, 1), round(upper, 1)],
                  "tumor_extent_mm_along_long_axis": [round(float(t.min()), 1), round(float(t.max()), 1)],
                  "long_axis_lps": [round(float(v), 3) for v in axis]}


def renal_score(box: KidneyBox, tumor: np.ndarray, diameter_3d_mm: float,
                cache: Optional[Dict] = None) -> Dict:
    """The R.E.N.A.L. parts of one tumor (``tumor``: its mask in ``box``), total score and complexity group.

    ``cache`` (one dict per kidney) keeps the hull and sinus between the tumors of one kidney.
    """
    cache = {} if cache is None else cache
    raw: Dict[str, Dict] = {}
    parts: Dict[str, object] = {}
    parts["R"], raw["R"] = part_r(diameter_3d_mm)
    parenchyma_ml = float(np.count_nonzero(box.labels == 1)) * box.voxel_ml
    tumor_ml = float(np.count_nonzero(box.labels == 2)) * box.voxel_ml
    if parenchyma_ml < MIN_PARENCHYMA_ML or tumor_ml > TUMOR_OUTWEIGHS * parenchyma_ml:
        why = (f"not computed: {parenchyma_ml:.0f} mL of parenchyma beside {tumor_ml:.0f} mL of tumor; the "
               f"kidney's own surface, sinus and axes cannot be estimated from so little parenchyma")
        for key in ("E", "N", "A", "L"):
            parts[key], raw[key] = None, {"reason": why}
    else:
        if "hull" not in cache:
            cache["hull"] = convex_hull_mask(box.labels == 1)
            cache["sinus"] = sinus_mask(box, cache["hull"])
        hull = cache["hull"]
        sinus, why = cache["sinus"]
        parts["E"], raw["E"] = part_e(tumor, hull)
        parts["A"], raw["A"] = part_a(box, tumor)
        if sinus is None:
            parts["N"], raw["N"] = None, {"reason": why}
            parts["L"], raw["L"] = None, {"reason": why.replace("no renal sinus found", "no polar lines: no renal "
                                                                                         "sinus found")}
        else:
            parts["N"], raw["N"] = part_n(box, tumor, sinus)
            parts["L"], raw["L"] = part_l(box, tumor, sinus)
    scored = [parts[k] for k in ("R", "E", "N", "L")]
    score = int(sum(scored)) if all(v is not None for v in scored) else None
    raw["h"] = {"reason": "not computed: the hilar suffix needs the renal artery and vein, which the label map "
                          "does not hold"}
    return {"R": parts["R"], "E": parts["E"], "N": parts["N"], "A": parts["A"], "L": parts["L"],
            "score": score, "complexity": complexity(score),
            "notation": notation(parts, score), "raw": raw}


def notation(parts: Dict, score: Optional[int]) -> str:
    """The usual short form, e.g. "7p" (score and A suffix); "?" for a part not computed."""
    head = str(score) if score is not None else "+".join("?" if parts[k] is None else str(parts[k])
                                                         for k in ("R", "E", "N", "L"))
    return head + (parts["A"] if parts.get("A") else "?")


__all__ = ["size_category", "complexity", "renal_score", "convex_hull_mask", "sinus_mask", "KidneyBox",
           "SIZE_CATEGORIES", "notation"]
