"""Whole-abdomen tissue map around a BTCV multi-organ label map (canonical axes z=S, y=P, x=L, 2 mm).

BTCV labels the organs but not what a CT shows around them (body wall, fat, muscle, bone, bowel, lungs,
table, arms); a network trained without those learns that "anything not air near a kidney is kidney".
Each structure is built from the organs' own positions (spine behind the aorta, cavity enclosing all
organs, ribs around liver and spleen, lungs above the diaphragm), so it stays anatomically plausible
while sizes, fat, bowel content and field of view vary per seed.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

F32 = np.float32
# BTCV label numbers (shared/data/btcv_labels/README.md)
SPLEEN, RKID, LKID, GALL, ESO, LIVER, STOMACH, AORTA, IVC, PORTAL, PANCREAS, RADR, LADR = range(1, 14)

# tissue codes of the synthesized map (appearance.py gives each a HU per contrast phase)
TISSUES = ("air", "fat", "subcut_fat", "skin", "muscle", "psoas", "back_muscle", "cortical_bone",
           "cancellous_bone", "disc", "csf", "rib", "lung", "table_shell", "table_foam", "bowel_wall",
           "bowel_fluid", "bowel_air", "stool", "oral_contrast", "spleen", "liver", "gallbladder",
           "esophagus", "stomach_wall", "aorta", "ivc", "portal_vein", "pancreas", "adrenal", "cortex",
           "medulla", "sinus_fat", "collecting", "cyst", "stone", "tumor", "tumor_necrosis", "heart",
           "ureter", "stomach_content", "hepatic_vessel", "pad")
T = {name: i for i, name in enumerate(TISSUES)}
ORGAN_TISSUE = {SPLEEN: "spleen", RKID: "cortex", LKID: "cortex", GALL: "gallbladder", ESO: "esophagus",
                LIVER: "liver", STOMACH: "stomach_wall", AORTA: "aorta", IVC: "ivc", PORTAL: "portal_vein",
                PANCREAS: "pancreas", RADR: "adrenal", LADR: "adrenal"}


def smooth_noise(shape, sigma_vox, rng) -> np.ndarray:
    """Unit-variance Gaussian random field (white noise smoothed by ``sigma_vox``)."""
    f = ndi.gaussian_filter(rng.standard_normal(shape, dtype=F32), sigma_vox, mode="wrap")
    return (f - f.mean()) / max(float(f.std()), 1e-6)


def _fill_nan(v: np.ndarray) -> np.ndarray:
    """Nearest-value fill of NaNs in a 1D profile (slices without an organ take the closest slice's value)."""
    ok = np.isfinite(v)
    if not ok.any():
        return np.zeros_like(v)
    idx = np.arange(len(v))
    return np.interp(idx, idx[ok], v[ok])


def _per_slice(mask: np.ndarray, coord: np.ndarray, how):
    """Per-z statistic of ``coord`` (broadcast (y, x) grid) inside ``mask``; NaN on slices without it."""
    out = np.full(mask.shape[0], np.nan)
    for z in np.nonzero(mask.any(axis=(1, 2)))[0]:
        out[z] = how(np.broadcast_to(coord, mask.shape[1:])[mask[z]])
    return out


def build_tissues(org: np.ndarray, sp: float, rng: np.random.Generator, opts=None):
    """Tissue map (uint8 codes of ``TISSUES``) and a geometry dict for ``org`` (BTCV labels, canonical, iso ``sp``).

    ``org`` already has the final field of view (see ``frame``); organs are never overwritten by
    synthesized structures, only by kidney internals and tumors later (renal.py).
    """
    opts = opts or {}
    nz, ny, nx = org.shape
    Y = (np.arange(ny, dtype=F32) * sp)[:, None]
    X = (np.arange(nx, dtype=F32) * sp)[None, :]
    anyorg = org > 0
    # midline and spine from the great vessels; smooth along z, extrapolate flat beyond them
    ax_, ix_ = (_fill_nan(_per_slice(org == lab, X, np.mean)) for lab in (AORTA, IVC))
    apost = _fill_nan(_per_slice(org == AORTA, Y, np.max))
    s = 10.0 / sp
    mid = ndi.gaussian_filter1d((ax_ + ix_) / 2, s, mode="nearest")
    rvx, rvy = rng.uniform(19, 25), rng.uniform(14, 18)
    ys = ndi.gaussian_filter1d(apost + rng.uniform(1, 4) + rvy, s, mode="nearest")
    # organ extents per slice, widened over +-40 mm and smoothed: the cavity inside the muscle wall
    ext = []
    for coord, how in ((X, np.min), (X, np.max), (Y, np.min), (Y, np.max)):
        v = _fill_nan(_per_slice(anyorg, coord, how))
        filt = ndi.minimum_filter1d if how is np.min else ndi.maximum_filter1d
        ext.append(ndi.gaussian_filter1d(filt(v, int(40 / sp) * 2 + 1, mode="nearest"), 15 / sp, mode="nearest"))
    x0, x1, y0, y1 = ext
    pad_lat, pad_ant = rng.uniform(8, 35), rng.uniform(10, 60)
    cx = (x0 + x1) / 2 * 0.5 + mid * 0.5
    a = np.maximum(x1 - cx, cx - x0) + pad_lat
    ya = y0 - pad_ant
    yp = np.maximum(y1 + 15, ys + rvy + rng.uniform(60, 80))
    cy, b = (ya + yp) / 2, (yp - ya) / 2
    a, b = _widen_below_kidneys(org, a, b, sp, rng)
    pw = rng.uniform(2.0, 3.0)
    tis = np.full(org.shape, T["air"], np.uint8)
    cav = np.zeros(org.shape, bool)
    for z in range(nz):                                            # every organ voxel inside the cavity
        q = np.abs((X - F32(cx[z])) / F32(a[z])) ** pw + np.abs((Y - F32(cy[z])) / F32(b[z])) ** pw
        if anyorg[z].any():
            worst = float(q[anyorg[z]].max())
            if worst > 0.85:
                q = q * F32(0.85 / worst)
        cav[z] = q <= 1
    wall, fat0 = rng.uniform(6, 15), float(np.exp(rng.uniform(np.log(4), np.log(50))))
    ang0 = rng.uniform(-0.5, 0.5)
    body = np.zeros_like(cav)
    for z in range(nz):
        d = ndi.distance_transform_edt(~cav[z], sampling=sp)
        th = np.arctan2(Y - F32(cy[z]), X - F32(cx[z]))          # -pi/2: anterior
        fat = fat0 * (1 + 0.6 * np.cos(th + np.pi / 2 + ang0)) * 0.8 + 2 * sp
        body[z] = d <= wall + fat
        sl = tis[z]
        sl[body[z]] = T["subcut_fat"]
        sl[body[z] & (d > wall + fat - 2.5)] = T["skin"]
        sl[(d > 0) & (d <= wall)] = T["muscle"]
    tis[cav] = T["fat"]
    geo = dict(mid=mid, ys=ys, rvx=rvx, rvy=rvy, cx=cx, cy=cy, a=a, b=b, pw=pw, wall=wall)
    _spine_and_muscles(tis, cav, org, sp, geo, rng)
    _ribs(tis, cav, org, sp, geo, rng)
    _lungs_heart(tis, cav, org, sp, geo, rng)
    for lab, name in ORGAN_TISSUE.items():
        tis[org == lab] = T[name]
    _stomach(tis, org, sp, rng)
    _bowel(tis, cav, org, sp, geo, rng)
    _table_and_arms(tis, body, sp, geo, rng, opts)
    geo["body"], geo["cav"] = body, cav
    return tis, geo


def _widen_below_kidneys(org, a, b, sp, rng):
    """Cavity half-axes below the kidneys: BTCV labels no organ there, so the cavity would narrow to the
    kidneys' lower poles (a tube). Real lower abdomen and pelvis are as wide as the upper abdomen or wider
    (hips): from the kidneys' centre down, the half-axes grow to 0.95-1.2x (left-right) and 0.85-1.05x
    (front-back) of their largest value over the organs."""
    kz = np.nonzero(np.isin(org, (RKID, LKID)).any(axis=(1, 2)))[0]
    oz = np.nonzero(org.any(axis=(1, 2)))[0]
    if not kz.size or not oz.size:
        return a, b
    a, b = a.copy(), b.copy()
    a_w, b_w = float(a[oz].max()) * rng.uniform(0.95, 1.2), float(b[oz].max()) * rng.uniform(0.85, 1.05)
    zc, zb = kz.mean(), kz.min()
    for z in range(int(np.ceil(zc))):
        w = float(np.clip((zc - z) / max(zc - zb + 30 / sp, 1.0), 0, 1))   # 0 at the kidneys' centre, 1 lower
        a[z] = max(a[z], (1 - w) * a[z] + w * a_w)
        b[z] = max(b[z], (1 - w) * b[z] + w * b_w)
    return a, b


def _pelvic_bones(sl, c, dx, dy, t, rvx, rvy, pel, s_):
    """One side's iliac wing (a curved plate, cortex around marrow, thick at the crest) and, lower down,
    acetabulum and femoral head (a ball with a cortical rim) with the femoral neck running laterally."""
    L, wing_w, fz, fr = pel["L"], pel["wing_w"], pel["femur_depth"], pel["femur_r"]
    ax0, ay0 = s_ * (rvx + 18), rvy + 18 - min(t, 120) * 0.25         # the sacroiliac joint moves forward
    ux, uy = s_ * 0.85, -0.53
    along = (dx - ax0) * ux + (dy - ay0) * uy
    across = -(dx - ax0) * uy * s_ + (dy - ay0) * ux * s_
    bend = 0.004 * (along - L / 2) ** 2                               # concave inside (the iliac fossa)
    if t < fz - fr * 1.5:
        w = wing_w * (1.6 if t < 15 else 1.0)
        plate = (along > 0) & (along < min(25 + 1.5 * t, L)) & (np.abs(across + bend) < w / 2)
        sl[plate & c] = T["cortical_bone"]
        sl[plate & c & (np.abs(across + bend) < w / 2 - 2.5)] = T["cancellous_bone"]
    hx, hy = s_ * (rvx + pel["femur_dx"]), -pel["femur_dy"]
    dz = t - fz
    if abs(dz) < fr:                                                  # femoral head in the acetabulum
        r = np.sqrt(fr ** 2 - dz ** 2)
        d = np.hypot(dx - hx, dy - hy)
        sl[(d < r + 4) & (d >= r + 1.5) & c] = T["cortical_bone"]      # acetabular rim
        sl[(d < r) & c] = T["cortical_bone"]
        sl[(d < r - 2.5) & c] = T["cancellous_bone"]
    if 0 < dz < 45:                                                   # neck and greater trochanter, lateral
        nx_ = hx + s_ * dz * 0.9
        d = np.hypot(dx - nx_, (dy - hy) * 1.2)
        sl[(d < 16) & c] = T["cortical_bone"]
        sl[(d < 13.5) & c] = T["cancellous_bone"]


def _spine_and_muscles(tis, cav, org, sp, geo, rng):
    """Vertebral bodies with discs, posterior arch, spinous/transverse processes; psoas, erector spinae,
    quadratus lumborum (growing caudally from the kidneys' level)."""
    nz, ny, nx = tis.shape
    Y = (np.arange(ny, dtype=F32) * sp)[:, None]
    X = (np.arange(nx, dtype=F32) * sp)[None, :]
    rvx, rvy = geo["rvx"], geo["rvy"]
    kz = np.nonzero(np.isin(org, (RKID, LKID)).any(axis=(1, 2)))[0]
    ktop = (kz.max() if kz.size else nz // 2) * sp
    period, disc_w, phase = rng.uniform(30, 37), rng.uniform(6, 10), rng.uniform(0, 40)
    ps_r0, ps_grow = rng.uniform(4, 8), rng.uniform(0.12, 0.2)
    es = (rng.uniform(28, 36), rng.uniform(24, 32), rng.uniform(20, 28))
    tp_len = rng.uniform(30, 45)
    kbot = (kz.min() if kz.size else 0) * sp
    crest, wing_w, bl = kbot - rng.uniform(10, 50), rng.uniform(7, 11), rng.uniform(60, 120)
    pel = dict(L=rng.uniform(90, 120), wing_w=wing_w, femur_depth=rng.uniform(120, 160),
               femur_r=rng.uniform(21, 26), femur_dx=rng.uniform(70, 85), femur_dy=rng.uniform(15, 45))
    for z in range(nz):
        zmm = z * sp
        dx, dy = X - F32(geo["mid"][z]), Y - F32(geo["ys"][z])
        sl, c = tis[z], cav[z]
        depth_below = ktop - 20 - zmm
        if depth_below > 0:                                         # psoas and quadratus lumborum
            r = min(ps_r0 + ps_grow * depth_below, 28)
            for s_ in (-1, 1):
                m = ((dx - s_ * (rvx + 0.8 * r)) / r) ** 2 + ((dy + 0.1 * r) / (0.85 * r)) ** 2 <= 1
                sl[m & c] = T["psoas"]
                if depth_below < 140:
                    m = ((dx - s_ * (rvx + 2 * r + 18)) / 16) ** 2 + ((dy - rvy - 2) / 9) ** 2 <= 1
                    sl[m & c] = T["back_muscle"]
        for s_ in (-1, 1):                                          # erector spinae
            m = ((dx - s_ * es[0]) / es[1]) ** 2 + ((dy - rvy - es[2] - 8) / es[2]) ** 2 <= 1
            sl[m & c] = T["back_muscle"]
        t = crest - zmm
        if t > 0:                                                   # pelvis: iliac wings, gluteal muscles, bladder
            for s_ in (-1, 1):
                if t > 25:
                    glut = ((dx - s_ * (rvx + 45 + 0.2 * t)) / min(25 + 0.4 * t, 55)) ** 2 + \
                           ((dy - rvy - 30) / 28) ** 2 <= 1
                    sl[glut & c & (sl == T["fat"])] = T["back_muscle"]
                    ili = ((dx - s_ * (rvx + 40)) / 22) ** 2 + ((dy - rvy + 5) / 14) ** 2 <= 1   # iliacus
                    sl[ili & c & (sl == T["fat"])] = T["psoas"]
                _pelvic_bones(sl, c, dx, dy, t, rvx, rvy, pel, s_)
            if t > bl:
                blad = (dx / min(20 + 0.6 * (t - bl), 55)) ** 2 + ((dy + rvy + 45) / min(15 + 0.5 * (t - bl), 40)) ** 2
                sl[(blad <= 1) & c & (sl == T["fat"])] = T["ureter"]     # urine (opacified when excretory)
        vb = (dx / rvx) ** 2 + (dy / rvy) ** 2
        is_disc = ((zmm + phase) % period) < disc_w
        if is_disc:
            sl[vb <= 1] = T["disc"]
        else:
            sl[vb <= 1] = T["cortical_bone"]
            sl[vb <= (1 - 2.5 / rvy) ** 2] = T["cancellous_bone"]
            ring = (dx / 14) ** 2 + ((dy - rvy - 9) / 13) ** 2
            sl[(ring <= 1) & (dy > rvy - 2)] = T["cortical_bone"]
            sl[(np.abs(dx) < 4) & (dy > rvy + 15) & (dy < rvy + 50)] = T["cortical_bone"]
            sl[(np.abs(dy - rvy - 6) < 4) & (np.abs(dx) < tp_len)] = T["cortical_bone"]
            sl[((dx / 8) ** 2 + ((dy - rvy - 9) / 7) ** 2) <= 1] = T["csf"]


def _ribs(tis, cav, org, sp, geo, rng):
    """Rib arcs just inside the cavity wall, descending anteriorly, down to the kidneys' middle posteriorly."""
    nz = tis.shape[0]
    kz = np.nonzero(np.isin(org, (RKID, LKID)).any(axis=(1, 2)))[0]
    if not kz.size:
        return
    lowest = kz.mean() * sp - rng.uniform(0, 25)
    inner = np.zeros_like(cav)
    for z in range(nz):
        inner[z] = cav[z] & (ndi.distance_transform_edt(cav[z], sampling=sp) <= rng.uniform(6, 9))
    zz, yy, xx = np.nonzero(inner & (tis == T["fat"]))
    if not zz.size:
        return
    dy = yy * sp - geo["cy"][zz]
    dx = xx * sp - geo["cx"][zz]
    phi = np.arccos(np.clip(dy / np.maximum(np.hypot(dx, dy), 1e-3), -1, 1))   # 0 posterior, pi anterior
    period, half, slope = rng.uniform(24, 30), rng.uniform(3.5, 5.5), rng.uniform(45, 75)
    z0 = lowest
    k = 0
    while z0 < nz * sp + 120:
        reach = np.pi * (0.45 if k < 2 else rng.uniform(0.7, 0.95))   # floating ribs are short
        zr = z0 - slope * phi                                        # highest at the back, lower anteriorly
        hit = (np.abs(zz * sp - zr) < half) & (phi < reach) & (phi > 0.25)
        tis[zz[hit], yy[hit], xx[hit]] = T["rib"]
        z0 += period
        k += 1


def _lungs_heart(tis, cav, org, sp, geo, rng):
    """Lung bases above a diaphragm dome fitted to the tops of liver, spleen and stomach; heart anteriorly."""
    nz, ny, nx = tis.shape
    dome = np.isin(org, (LIVER, SPLEEN, STOMACH))
    has = dome.any(axis=0)
    if not has.any():
        return
    top = np.where(has, nz - 1 - np.argmax(dome[::-1], axis=0), 0).astype(F32)
    idx = ndi.distance_transform_edt(~has, return_distances=False, return_indices=True)
    top = ndi.gaussian_filter(top[idx[0], idx[1]], 12 / sp) + rng.uniform(0, 3)
    z = np.arange(nz, dtype=F32)[:, None, None]
    lung = cav & (z > top[None]) & (tis == T["fat"]) & (org == 0)
    tis[lung] = T["lung"]
    zc = float(top[has].max()) * sp + rng.uniform(30, 60)
    c = np.array([zc, np.mean(geo["cy"]) - 0.45 * np.mean(geo["b"]), np.mean(geo["cx"]) + rng.uniform(10, 30)])
    zz, yy, xx = np.ogrid[:nz, :ny, :nx]
    r = np.array([rng.uniform(50, 65), rng.uniform(45, 60), rng.uniform(55, 70)])
    heart = ((zz * sp - c[0]) / r[0]) ** 2 + ((yy * sp - c[1]) / r[1]) ** 2 + ((xx * sp - c[2]) / r[2]) ** 2 <= 1
    tis[heart & cav & (org == 0) & np.isin(tis, (T["lung"], T["fat"])) & (z > top[None])] = T["heart"]


def _stomach(tis, org, sp, rng):
    """Stomach: wall rim and a content that is gas over fluid, food, fluid or oral contrast."""
    st = org == STOMACH
    if not st.any():
        return
    inner = ndi.binary_erosion(st, iterations=max(1, int(round(3 / sp))))
    kind = rng.choice(["air_fluid", "food", "fluid", "contrast"], p=[0.4, 0.25, 0.2, 0.15])
    tis[inner] = T["stomach_content"] if kind in ("food", "fluid") else T["bowel_fluid"]
    if kind == "contrast":
        tis[inner] = T["oral_contrast"]
    if kind in ("air_fluid", "contrast"):
        yy = np.nonzero(inner)[1]
        if yy.size:
            level = np.quantile(yy, rng.uniform(0.2, 0.7))
            m = inner & (np.arange(tis.shape[1])[None, :, None] < level)
            tis[m] = T["bowel_air"]


def _bowel(tis, cav, org, sp, geo, rng):
    """Loops filling free intraperitoneal fat: a thresholded smooth field split into Voronoi loops, each with
    a wall and a content (fluid, gas, gas over fluid, stool, collapsed, oral contrast)."""
    nz, ny, nx = tis.shape
    kid = np.isin(org, (RKID, LKID))
    margin = rng.uniform(2, 18)
    dk = ndi.distance_transform_edt(~kid, sampling=sp) if kid.any() else np.full(tis.shape, 1e3)
    Y = np.arange(ny)[None, :, None] * sp
    ys = geo["ys"][:, None, None]
    dcav = np.stack([ndi.distance_transform_edt(cav[z], sampling=sp) for z in range(nz)])
    free = (tis == T["fat"]) & (dk > margin) & (Y < ys + 5) & (dcav > 3)
    if not free.any():
        return
    field = smooth_noise(tis.shape, rng.uniform(2.5, 4.5), rng)
    frac = rng.uniform(0.45, 0.85)
    thr = np.quantile(field[free], 1 - frac)
    bowel = free & (field > thr)
    n_loops = max(4, int(bowel.sum() * sp ** 3 / 1000 / rng.uniform(25, 70)))
    pts = np.argwhere(bowel)
    seeds = pts[rng.choice(len(pts), min(n_loops, len(pts)), replace=False)]
    lab = np.zeros(tis.shape, np.int32)
    lab[tuple(seeds.T)] = np.arange(1, len(seeds) + 1)
    idx = ndi.distance_transform_edt(lab == 0, return_distances=False, return_indices=True)
    loops = np.where(bowel, lab[tuple(idx)], 0)
    del idx
    wall = bowel & ((ndi.maximum_filter(loops, 3) != loops) | (ndi.minimum_filter(loops, 3) != loops))
    contrast = rng.random() < 0.3
    kinds = rng.choice(6, size=len(seeds) + 1, p=[0.3, 0.05, 0.1, 0.2, 0.27, 0.08])
    if not contrast:
        kinds[kinds == 5] = 0
    content = {0: "bowel_fluid", 1: "bowel_air", 2: "bowel_fluid", 3: "stool", 4: "bowel_wall", 5: "oral_contrast"}
    code = np.array([T[content[int(k)]] for k in kinds], np.uint8)
    tis[bowel] = code[loops[bowel]]
    air_fluid = bowel & (kinds[loops] == 2)
    if air_fluid.any():                                             # gas rises anteriorly in each such loop
        ymin = ndi.minimum(np.broadcast_to(np.arange(ny)[None, :, None], tis.shape), loops, np.arange(len(seeds) + 1))
        ymax = ndi.maximum(np.broadcast_to(np.arange(ny)[None, :, None], tis.shape), loops, np.arange(len(seeds) + 1))
        level = np.asarray(ymin) + (np.asarray(ymax) - np.asarray(ymin)) * rng.uniform(0.2, 0.6, len(seeds) + 1)
        tis[air_fluid & (np.arange(ny)[None, :, None] < level[loops])] = T["bowel_air"]
    stool = tis == T["stool"]
    if stool.any():                                                 # mottled gas in stool
        bub = smooth_noise(tis.shape, 0.8, rng)
        tis[stool & (bub > rng.uniform(0.6, 1.4))] = T["bowel_air"]
    tis[wall] = T["bowel_wall"]


def _table_and_arms(tis, body, sp, geo, rng, opts):
    """A curved table below the back (foam core, dense shell, optional pad) and, sometimes, arms beside the body."""
    nz, ny, nx = tis.shape
    Y = np.arange(ny)[:, None] * sp
    X = np.arange(nx)[None, :] * sp
    back = max(float((np.nonzero(body.any(axis=(0, 2)))[0].max() + 1) * sp), 0) if body.any() else ny * sp * 0.8
    cx = float(np.mean(geo["cx"]))
    top = back + rng.uniform(0, 4)
    curve = rng.uniform(0, 0.0008)
    thick, half_w = rng.uniform(25, 55), rng.uniform(200, 260)
    surf = top - curve * (X - cx) ** 2
    slab = (Y >= surf) & (Y < surf + thick) & (np.abs(X - cx) < half_w)
    shell = slab & ((Y < surf + 2.5) | (Y >= surf + thick - 2.5))
    pad = (Y >= surf - rng.uniform(0, 12)) & (Y < surf) & (np.abs(X - cx) < half_w * 0.9)
    for z in range(nz):
        sl, out = tis[z], ~body[z]
        sl[slab & out] = T["table_foam"]
        sl[shell & out] = T["table_shell"]
        sl[pad & out & (sl == T["air"])] = T["pad"]
    if opts.get("arms", rng.random() < 0.3):
        r, gap = rng.uniform(35, 50), rng.uniform(5, 40)
        for s_ in (-1, 1):
            for z in range(nz):
                ax = geo["cx"][z] + s_ * (geo["a"][z] + geo["wall"] + 30 + gap + r)
                ay = geo["cy"][z] + 10
                d2 = ((X - ax) ** 2 + (Y - ay) ** 2) / r ** 2
                sl = tis[z]
                sl[(d2 <= 1) & (sl == T["air"])] = T["subcut_fat"]
                sl[(d2 <= 0.55) & (sl == T["subcut_fat"])] = T["muscle"]
                sl[((X - ax) ** 2 + (Y - ay) ** 2) <= 100] = T["cortical_bone"]
                sl[((X - ax) ** 2 + (Y - ay) ** 2) <= 40] = T["cancellous_bone"]
