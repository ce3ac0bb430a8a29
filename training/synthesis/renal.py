"""Inside the kidneys: cortex, medulla, sinus fat, collecting system and ureter, cysts, stones; and real KiTS19
tumor shapes inserted at a random point of a kidney's surface.

Labels follow KiTS19: everything inside the kidney outline (cysts and stones too) is kidney (1); a tumor is 2.
Tumor shapes come only from KiTS19 *training* cases (training/recipes/tuning_cases_72.txt), never 168-209.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
from scipy import ndimage as ndi

from .anatomy import LKID, RKID, T, smooth_noise

F32 = np.float32
TUMOR_LIST = Path(__file__).resolve().parents[1] / "recipes" / "tuning_cases_72.txt"


def tumor_pool(kits_dir) -> List[Path]:
    """KiTS19 training cases allowed as tumor donors: the listed training ids present under ``kits_dir``."""
    ids = [ln.strip() for ln in TUMOR_LIST.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    out = []
    for c in ids:
        if int(c[-5:]) >= 168:                                      # held-out KiTS ids are never used
            continue
        p = Path(kits_dir) / c / "segmentation.nii.gz"
        if p.is_file():
            out.append(p)
    return out


def kidney_internals(tis, lab, org, sp, geo, rng):
    """Cortex/medulla/sinus/collecting system per kidney, a ureter to the bottom of the volume, cysts, stones."""
    nz, ny, nx = lab.shape
    for side_lab in (RKID, LKID):
        k = org == side_lab
        if k.sum() < 50:
            continue
        d = ndi.distance_transform_edt(k, sampling=sp)
        cen = np.array(ndi.center_of_mass(k))
        z = int(np.clip(round(cen[0]), 0, nz - 1))
        hil = np.array([0.0, geo["ys"][z] / sp - 25 / sp - cen[1], geo["mid"][z] / sp - cen[2]])
        hil /= max(np.linalg.norm(hil), 1e-6)                       # towards the hilum: medial, anterior
        pts = np.argwhere(k)
        proj = (pts - cen) @ hil
        cortex_mm = rng.uniform(4, 7)
        deep = d[tuple(pts.T)] > cortex_mm
        tis[k] = T["cortex"]
        field = smooth_noise(k.shape, 1.2, rng) if deep.any() else None
        if deep.any():                                              # pyramids: blobs of the deep zone
            dp = pts[deep]
            pyr = field[tuple(dp.T)] > rng.uniform(-0.6, 0.2)
            tis[tuple(dp[pyr].T)] = T["medulla"]
            thr = np.quantile(proj[deep], 1 - rng.uniform(0.25, 0.5))
            sinus = dp[proj[deep] >= thr]
            if len(sinus):
                tis[tuple(sinus.T)] = T["sinus_fat"]
                sc = sinus.mean(axis=0)
                r = rng.uniform(3, 8) / sp
                cs = sinus[(np.linalg.norm(sinus - sc, axis=1) < r * 1.6)
                           | (field[tuple(sinus.T)] > rng.uniform(0.6, 1.2))]
                tis[tuple(cs.T)] = T["collecting"]
                if rng.random() < 0.15 and len(cs):                 # stones in the collecting system
                    for p in cs[rng.choice(len(cs), int(rng.integers(1, 3)))]:
                        _ball(tis, p, rng.uniform(1, 3.5) / sp, T["stone"], lab=None)
                _ureter(tis, lab, sc + hil * 4 / sp * 3, geo, sp, rng)
        for _ in range(int(rng.poisson(0.7))):                      # cysts, often at the surface
            p = pts[rng.choice(len(pts))]
            if d[tuple(p)] > 8:
                continue
            r = float(np.exp(rng.uniform(np.log(3), np.log(22)))) / sp
            box, ball = _ball_mask(lab.shape, p, r)
            sub_t, sub_l = tis[box], lab[box]
            mm = ball & ((sub_l == 1) | (sub_t == T["fat"]))              # grows into fat, never into organs
            sub_t[mm] = T["cyst"]
            sub_l[mm] = 1


def _ball_mask(shape, centre, r):
    lo = [max(0, int(np.floor(c - r))) for c in centre]
    hi = [min(n, int(np.ceil(c + r)) + 1) for c, n in zip(centre, shape)]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    g = np.ogrid[sl]
    return sl, sum((gi - c) ** 2 for gi, c in zip(g, centre)) <= r * r


def _ball(tis, centre, r, code, lab=None):
    sl, m = _ball_mask(tis.shape, centre, r)
    tis[sl][m] = code


def _ureter(tis, lab, start, geo, sp, rng):
    """A 2-3 mm tube from the renal pelvis medially to the psoas' front, then down (label stays 0)."""
    nz = tis.shape[0]
    z0 = int(np.clip(round(start[0]), 0, nz - 1))
    side = np.sign(start[2] - geo["mid"][z0] / sp) or 1.0
    r = rng.uniform(1.0, 1.6) / sp * 2
    p = np.array(start, float)
    ok = np.isin(tis, (T["fat"], T["psoas"], T["bowel_wall"], T["bowel_fluid"], T["stool"], T["bowel_air"])) & (lab == 0)
    for z in range(z0, -1, -1):
        zi = min(z, nz - 1)
        target = np.array([z, (geo["ys"][zi] - 8) / sp, (geo["mid"][zi] + side * (geo["rvx"] + 22)) / sp])
        p[0] = z
        p[1:] += np.clip(target[1:] - p[1:], -1.0, 1.0) * 0.6
        sl, m = _ball_mask(tis.shape, p, r)
        sub = tis[sl]
        sub[m & ok[sl]] = T["ureter"]


def insert_tumor(tis, lab, org, sp, rng, donors: List[Path], canon_reader) -> Optional[dict]:
    """Paint one real KiTS19 tumor (a label-2 component of a random donor, resampled to ``sp`` mm, randomly
    mirrored) at a random surface point of a random kidney, exophytic or endophytic; returns a record."""
    if not donors:
        return None
    kids = [s for s in (RKID, LKID) if (org == s).sum() > 50]
    if not kids:
        return None
    donor = donors[int(rng.integers(len(donors)))]
    seg, sp_d = canon_reader(donor)                                 # canonical (z, y, x) array, (x, y, z) mm
    tb = ndi.find_objects((seg == 2).astype(np.uint8))
    if not tb or tb[0] is None:
        return None
    comp, n = ndi.label(seg[tb[0]] == 2, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return None
    sizes = np.bincount(comp.ravel())[1:]
    ok = np.nonzero(sizes * np.prod(sp_d) / 1000 >= 1.0)[0]
    pick = int(rng.choice(ok)) + 1 if ok.size else int(np.argmax(sizes)) + 1
    sl = ndi.find_objects(comp)[pick - 1]
    m = (comp[sl] == pick).astype(F32)
    zoom = [sp_d[2] / sp, sp_d[1] / sp, sp_d[0] / sp]
    m = ndi.zoom(ndi.gaussian_filter(m, [0.5 / z if z < 1 else 0 for z in zoom]), zoom, order=1) > 0.5
    for ax in range(3):
        if rng.random() < 0.5:
            m = np.flip(m, ax)
    if m.sum() == 0:
        return None
    side = kids[int(rng.integers(len(kids)))]
    k = org == side
    surf = np.argwhere(k & ~ndi.binary_erosion(k))
    sm = ndi.gaussian_filter(k.astype(F32), 1.5)
    grad = np.stack(np.gradient(sm))
    cen_t = np.array(ndi.center_of_mass(m))
    r_eq = (3 * m.sum() / (4 * np.pi)) ** (1 / 3)
    exo = rng.uniform(-0.7, 0.6)                                    # <0: centre inside the kidney (endophytic)
    best = None
    forbid = np.isin(tis, (T["cortical_bone"], T["cancellous_bone"], T["disc"], T["liver"], T["spleen"],
                           T["aorta"], T["ivc"], T["psoas"], T["back_muscle"], T["pancreas"]))
    for _ in range(8):
        p = surf[int(rng.integers(len(surf)))]
        nrm = -grad[:, p[0], p[1], p[2]]
        nrm /= max(np.linalg.norm(nrm), 1e-6)
        c = p + nrm * exo * r_eq
        start = np.round(c - cen_t).astype(int)
        box, src = _clip_box(start, m.shape, lab.shape)
        if box is None:
            continue
        mm = m[src]
        overlap = float((forbid[box] & mm).sum()) / max(mm.sum(), 1)
        touch = bool((k[box] & mm).any())
        if touch and (best is None or overlap < best[0]):
            best = (overlap, box, src, p)
    if best is None:
        return None
    _, box, src, p = best
    mm = m[src]
    lab[box][mm] = 2
    tis[box][mm] = T["tumor"]
    return dict(donor=donor.parent.name, component=pick, ml=float(mm.sum() * sp ** 3 / 1000), kidney=int(side),
                exophytic=float(exo), overlap_other=float(best[0]))


def _clip_box(start, size, shape):
    lo = [max(0, s) for s in start]
    hi = [min(n, s + z) for s, z, n in zip(start, size, shape)]
    if any(h <= l for l, h in zip(lo, hi)):
        return None, None
    box = tuple(slice(l, h) for l, h in zip(lo, hi))
    src = tuple(slice(l - s, h - s) for l, h, s in zip(lo, hi, start))
    return box, src


def tumor_appearance(tis, lab, sp, rng) -> str:
    """Split the tumor into solid part, necrosis and cyst by its kind; returns the kind (appearance draws HU)."""
    t = lab == 2
    if not t.any():
        return "none"
    kind = str(rng.choice(["clear_cell", "papillary", "cystic", "other"], p=[0.55, 0.2, 0.1, 0.15]))
    d = ndi.distance_transform_edt(t, sampling=sp)
    core = t & (d > d.max() * rng.uniform(0.35, 0.7))
    if kind == "cystic":
        tis[t & (d > rng.uniform(2, 5))] = T["cyst"]
    elif kind == "clear_cell" and rng.random() < 0.6 and core.any():
        f = smooth_noise(t.shape, 1.5, rng)
        tis[core & (f > -0.5)] = T["tumor_necrosis"]
    return kind
