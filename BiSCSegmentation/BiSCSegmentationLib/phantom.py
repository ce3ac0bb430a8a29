"""Deterministic synthetic abdominal CT: procedural kidney/tumor label maps and CT intensities around any label map.

Everything is computed in the canonical orientation of ``volume.to_canonical`` (numpy axes z=S, y=P, x=L; x grows
towards the patient's left, y towards the back) in millimetres from voxel 0, and put back on the labels' own grid.
The same seed always gives the same output (``np.random.default_rng`` streams keyed by the seed).
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np
from scipy import ndimage as ndi

from .volume import Volume, VolumeError, read_volume, to_canonical

FOV_MM = 0.78 * 512          # default in-plane field of view: 512 px at 0.78 mm
KIDNEY_VARIANTS = ("both", "left", "right", "horseshoe")
HU_MIN, HU_MAX = -1024, 3071
F32 = np.float32


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([stream, int(seed) & 0xFFFFFFFFFFFFFFFF])


def _box(shape, sp, centre, radius):
    """Sub-box of a (z, y, x) grid around ``centre`` (x, y, z mm from voxel 0): (slices, dz, dy, dx) or None."""
    radius, sl, d = np.broadcast_to(np.asarray(radius, dtype=float), (3,)), [], []
    for ax, p in enumerate((2, 1, 0)):
        lo = max(int(np.floor((centre[p] - radius[p]) / sp[p])), 0)
        hi = min(int(np.ceil((centre[p] + radius[p]) / sp[p])) + 1, shape[ax])
        if hi <= lo:
            return None
        sl.append(slice(lo, hi))
        d.append((np.arange(lo, hi) * sp[p] - centre[p]).astype(F32))
    return tuple(sl), d[0][:, None, None], d[1][None, :, None], d[2][None, None, :]


def _local(box, rot):
    """Coordinates of a box along the rows of ``rot`` (unit vectors in x, y, z)."""
    r = np.asarray(rot, dtype=F32)
    return [r[i, 0] * box[3] + r[i, 1] * box[2] + r[i, 2] * box[1] for i in range(3)]


def _rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return (q * np.sign(np.diag(r))).T


def _waves(rng, wl, n):
    """Random plane waves: wave numbers (n, 3) in (z, y, x) order and phases."""
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return d * (2 * np.pi / rng.uniform(wl[0], wl[1], size=(n, 1))), rng.uniform(0, 2 * np.pi, size=n)


def _tex(coords, rng, wl=(8.0, 30.0), n=6):
    """Smooth, isotropic, unit-variance texture (random plane waves) at broadcastable (z, y, x) mm coordinates."""
    k, ph = _waves(rng, wl, n)
    out = 0
    for t in range(n):
        out = out + np.cos(sum(F32(k[t, ax]) * coords[ax] for ax in range(3)) + F32(ph[t]))
    return (out * F32(np.sqrt(2.0 / n))).astype(F32)


def _mm(idx, sp):
    return [i.astype(F32) * F32(sp[2 - ax]) for ax, i in enumerate(idx)]


# ------------------------------------------------------------------------------------------- procedural labels
def _kidney_frame(side, rng, horseshoe):
    al = np.radians(rng.uniform(15, 30) if horseshoe else -rng.uniform(8, 20))
    be, ga = np.radians(rng.uniform(5, 15)), np.radians(rng.uniform(20, 40))
    u = np.array([side * np.sin(al), np.sin(be), np.cos(al)])   # upper pole: medial (lateral if horseshoe), back
    u /= np.linalg.norm(u)
    v = np.array([side * np.cos(ga), np.sin(ga), 0.0])          # lateral; the hilum (-v) faces antero-medially
    v = (v - u * (v @ u)) / np.linalg.norm(v - u * (v @ u))
    return np.stack([u, v, np.cross(u, v)])


def _paint_kidney(lab, sp, centre, rot, abc):
    a, b, c = abc
    box = _box(lab.shape, sp, centre, a * 1.1)
    if box is None:
        return
    u, v, w = _local(box, rot)
    un2 = (u / F32(a)) ** 2
    q = un2 + ((v - F32(0.15 * b) * np.clip(1 - un2, 0, None)) / F32(b)) ** 2 + (w / F32(c)) ** 2   # bean
    hilum = (u / F32(0.25 * a)) ** 2 + ((v + F32(0.8 * b)) / F32(0.45 * b)) ** 2 + (w / F32(0.45 * c)) ** 2
    lab[box[0]][(q <= 1) & (hilum > 1)] = 1


def _paint_tumour(lab, sp, kid, rng, diam, exophytic):
    centre, rot, abc = kid
    abc = np.asarray(abc)
    n = rng.normal(size=3)
    n[1] = abs(n[1]) if rng.random() < 0.8 else n[1]             # mostly away from the hilum
    n /= np.linalg.norm(n)
    p = n / np.sqrt(np.sum((n / abc) ** 2))                        # surface point (local)
    normal, r = p / abc ** 2, diam / 2.0
    off = r * (rng.uniform(-0.2, 0.6) if exophytic else -rng.uniform(0.5, 1.0))
    c = np.asarray(centre) + rot.T @ (p + normal / np.linalg.norm(normal) * off)
    semi = r * rng.uniform(0.8, 1.2, size=3)
    box = _box(lab.shape, sp, c, semi.max() * 1.3)
    if box is None:
        return 0
    u, v, w = _local(box, _rotation(rng))
    f, ph = rng.uniform(1.5, 4.0, size=3) / F32(r), rng.uniform(0, 2 * np.pi, size=3)
    lob = 1 + F32(rng.uniform(0, 0.12)) * (np.cos(F32(f[0]) * u + F32(ph[0])) * np.cos(F32(f[1]) * v + F32(ph[1]))
                                           + np.cos(F32(f[2]) * w + F32(ph[2])))
    m = (u / F32(semi[0])) ** 2 + (v / F32(semi[1])) ** 2 + (w / F32(semi[2])) ** 2 <= lob * lob
    lab[box[0]][m] = 2
    return int(m.sum())


def procedural_labels(seed: int, spacing=(0.78, 0.78, 3.0), shape_zyx=None, kidneys="both") -> Volume:
    """Label map (0 background, 1 kidney, 2 tumor) of a synthetic case, canonical orientation, identity direction.

    Default grid: in-plane FOV ~400 mm (512 x 512 at 0.78 mm), 250-300 mm along z. ``spacing`` is (x, y, z) mm.
    """
    if kidneys not in KIDNEY_VARIANTS:
        raise ValueError(f"kidneys must be one of {KIDNEY_VARIANTS}, got {kidneys!r}")
    rng = _rng(seed, 1)
    sp = tuple(float(s) for s in spacing)
    zlen = rng.uniform(250, 300)
    shape = tuple(int(n) for n in (shape_zyx if shape_zyx is not None else
                                   (round(zlen / sp[2]), round(FOV_MM / sp[1]), round(FOV_MM / sp[0]))))
    lab = np.zeros(shape, np.uint8)
    xc, yc = (shape[2] - 1) * sp[0] / 2, (shape[1] - 1) * sp[1] / 2
    zc = (shape[0] - 1) * sp[2] / 2 + rng.uniform(-15, 15)
    horseshoe = kidneys == "horseshoe"
    sides = {"both": (-1, 1), "horseshoe": (-1, 1), "left": (1,), "right": (-1,)}[kidneys]
    dz = rng.uniform(10, 25)
    kids = []
    for side in sides:
        grow = 1.0 if len(sides) == 2 else rng.uniform(1.0, 1.12)   # solitary kidney: compensatory hypertrophy
        abc = np.array([rng.uniform(53, 62), rng.uniform(27, 31), rng.uniform(21, 24)]) * grow
        lat = rng.uniform(42, 55) if horseshoe else rng.uniform(65, 80)
        centre = np.array([xc + side * lat, yc + rng.uniform(10, 30),
                           zc + side * dz / 2 - (rng.uniform(20, 35) if horseshoe else 0.0)])
        kids.append((centre, _kidney_frame(side, rng, horseshoe), abc))
        _paint_kidney(lab, sp, *kids[-1])
    if horseshoe:                                                  # isthmus anterior to the great vessels
        ends = [c - rot[0] * abc[0] * 0.75 for c, rot, abc in kids]
        ctrl = (ends[0] + ends[1]) / 2 - np.array([0.0, 25.0, 5.0])
        ri = rng.uniform(11, 15)
        for t in np.linspace(0, 1, 17):
            p = (1 - t) ** 2 * ends[0] + 2 * t * (1 - t) * ctrl + t ** 2 * ends[1]
            box = _box(shape, sp, p, ri)
            if box is not None:
                _, bz, by, bx = box
                sub = lab[box[0]]
                sub[(bx * bx + by * by + bz * bz <= F32(ri * ri)) & (sub == 0)] = 1
    n_tumours = 1 if rng.random() < 0.7 else 2
    small_first = rng.random() < 0.3
    for t in range(n_tumours):
        if t == 0:
            diam = rng.uniform(10, 19) if small_first else float(np.exp(rng.uniform(np.log(20), np.log(70))))
        else:
            diam = float(np.exp(rng.uniform(np.log(10), np.log(40))))
        kid, exo = kids[int(rng.integers(len(kids)))], rng.random() < 0.6
        for _ in range(6):                                         # at least one tumour voxel per case
            if _paint_tumour(lab, sp, kid, rng, diam, exo) or t > 0:
                break
    return Volume(lab, sp, (-xc, -yc, -(shape[0] - 1) * sp[2] / 2), np.eye(3))


# ----------------------------------------------------------------------------------------------- CT synthesis
def _geometry(lab, sp):
    """Kidney sides, centroids (mm from voxel 0), label bounding box, and where the spine goes."""
    nz, ny, nx = lab.shape
    fg = lab > 0
    cyx, czx = np.count_nonzero(fg, axis=0), np.count_nonzero(fg, axis=1)
    del fg
    xs, ys, zs = (np.arange(n) * s for n, s in zip((nx, ny, nz), sp))
    xc, yc = xs[-1] / 2, ys[-1] / 2
    total, half = cyx.sum(), nx // 2
    sides = []
    for side, cols in ((-1, slice(0, half)), (1, slice(half, nx))):
        m = cyx[:, cols].sum()
        if total == 0 or m < 0.15 * total:
            continue
        zp = czx[:, cols].sum(1)
        sides.append(dict(side=side, x=(cyx[:, cols].sum(0) * xs[cols]).sum() / m,
                          y=(cyx[:, cols].sum(1) * ys).sum() / m, z=(zp * zs).sum() / m,
                          zhi=zs[np.nonzero(zp)[0][-1]], m=m))
    k = sides[0] if sides else dict(x=xc, side=0)                 # solitary kidney: spine >= 45 mm medial to it
    spine_x = ((sides[0]["x"] + sides[1]["x"]) / 2 if len(sides) == 2
               else k["x"] - k["side"] * max(45.0, abs(k["x"] - xc)))
    spine_y = (sum(k["y"] * k["m"] for k in sides) / sum(k["m"] for k in sides) if sides else yc + 20) + 8.0
    bbox = None
    if total:
        yy, xx, zz = (np.nonzero(a)[0] for a in (cyx.any(1), cyx.any(0), czx.any(1)))
        bbox = (zz[0], zz[-1] + 1, yy[0], yy[-1] + 1, xx[0], xx[-1] + 1)
    byside, dflt = {k["side"]: k for k in sides}, dict(x=xc, y=yc + 20, z=zs[-1] / 2, zhi=zs[-1] / 2 + 50)
    return dict(sides=sides, spine=(spine_x, spine_y), bbox=bbox, xc=xc, yc=yc,
                right=byside.get(-1, sides[0] if sides else dflt), left=byside.get(1, sides[-1] if sides else dflt))


def _ell(X, Y, cx, cy, ax, ay):
    return ((X - F32(cx)) / F32(ax)) ** 2 + ((Y - F32(cy)) / F32(ay)) ** 2


def _background(vol, sp, geo, rng, hu):
    """Fill ``vol`` with body, wall, spine, vessels, ribs; returns the 2D mask of free abdominal cavity."""
    nz, ny, nx = vol.shape
    (sx, sy, sz), xc, yc, (spx, spy) = sp, geo["xc"], geo["yc"], geo["spine"]
    rvx, rvy = rng.uniform(18, 23), rng.uniform(14, 18)
    A, B = rng.uniform(150, 185), rng.uniform(105, 130)
    need = [(spx - xc, spy - yc + rvy + 80)]
    if geo["bbox"] is not None:
        _, _, y0, y1, x0, x1 = geo["bbox"]
        for x in (x0 * sx - 25, x1 * sx + 25):
            for y in (y0 * sy - 25, y1 * sy + 25):
                need.append((x - xc, y - yc))
    s = max((x / A) ** 2 + (y / B) ** 2 for x, y in need)
    if s > 1:
        A, B = A * np.sqrt(s), B * np.sqrt(s)
    # body grid padded so the whole body lies inside (depth is measured from the skin, not from the FOV edge)
    px, py = max(0, int(np.ceil((A - xc) / sx)) + 2), max(0, int(np.ceil((B - yc) / sy)) + 2)
    X = ((np.arange(-px, nx + px) * sx - xc).astype(F32))[None, :]
    Y = ((np.arange(-py, ny + py) * sy - yc).astype(F32))[:, None]
    pw = np.where(Y > 0, F32(2.6), F32(2.0))
    body = (np.abs(X / F32(A)) ** pw + np.abs(Y / F32(B)) ** pw) <= 1
    depth = ndi.distance_transform_edt(body, sampling=(sy, sx)).astype(F32)[py:py + ny, px:px + nx]
    body = body[py:py + ny, px:px + nx]
    X, Y = X[:, px:px + nx], Y[py:py + ny]
    theta = np.arctan2(Y / F32(B), X / F32(A))
    ft = F32(rng.uniform(12, 32)) * (1 + F32(0.3) * np.cos(2 * theta + F32(rng.uniform(0, 6.3))))  # fat, wall mm
    mt = F32(rng.uniform(8, 14))
    tex = _tex((F32(0), Y, X), rng, (10, 40), 3)
    base = np.full((ny, nx), -1000, F32)
    base[body] = hu(-100, -80) + 5 * tex[body]
    subq = body & (depth < ft)
    base[subq] = hu(-110, -90) + 6 * tex[subq]
    base[body & (depth >= ft) & (depth < ft + mt)] = hu(40, 60)
    base[body & (depth < 1.5)] = hu(10, 40)                        # skin
    cav = body & (depth >= ft + mt)
    sX, sY, muscle = X - F32(spx - xc), Y - F32(spy - yc), hu(40, 60)  # spine-centred coordinates
    struct = np.zeros((ny, nx), bool)
    for s_ in (-1, 1):
        for m in (_ell(sX, sY, s_ * (rvx + 13), 0, 13, 15) <= 1,                       # psoas
                  _ell(sX, sY, s_ * 28, rvy + 27, 24, 20) <= 1):                      # erector spinae
            base[m & body] = muscle
            struct |= m
    canal_y = rvy + 10
    ring, spinous = _ell(sX, sY, 0, canal_y, 14, 13), (np.abs(sX) < 4) & (sY > canal_y) & (sY < canal_y + 42)
    base[((ring <= 1) & (sY > canal_y - 4)) | spinous] = hu(500, 750)
    base[_ell(sX, sY, 0, canal_y, 8, 7) <= 1] = hu(0, 20)         # spinal canal
    vb, disc_base = _ell(sX, sY, 0, 0, rvx, rvy), base.copy()
    base[vb <= 1] = hu(700, 1000)
    base[vb <= (1 - 2.0 / rvy) ** 2] = hu(200, 300) + 20 * tex[vb <= (1 - 2.0 / rvy) ** 2]
    disc_base[vb <= 1] = hu(70, 100)
    ra = rng.uniform(9, 13)
    ax_, ay_ = rng.uniform(6, 14), -rvy - ra - rng.uniform(2, 6)
    vessels = [(_ell(sX, sY, ax_, ay_, ra, ra), hu(150, 250)),                            # aorta
               (_ell(sX, sY, -rng.uniform(22, 30), ay_ + rng.uniform(-3, 3), rng.uniform(10, 14),
                     rng.uniform(7, 10)), hu(100, 170))]                                  # IVC
    for e, v in vessels:
        base[e <= 1], disc_base[e <= 1] = v, v
        struct |= e <= 1
    cav &= ~(struct | (vb <= 1) | (ring <= 1) | spinous)
    zmm = np.arange(nz) * sz
    disc = ((zmm + rng.uniform(0, 40)) % rng.uniform(27, 33)) < rng.uniform(6, 9)
    np.copyto(vol, base)                                            # (vol may be a strided view: no fancy indexing)
    np.copyto(vol, disc_base, where=disc[:, None, None])
    # ribs: posterolateral arcs in the wall, above the kidneys' middle
    rib_ring = body & (depth >= ft + 1) & (depth < ft + 9)
    zr, period, bone = geo["right"]["z"] - 30, rng.uniform(22, 28), hu(350, 600)
    while zr < zmm[-1]:
        for s_ in (-1, 1):
            t0 = np.pi / 2 - s_ * np.radians(rng.uniform(35, 95))
            m = rib_ring & (np.abs(np.angle(np.exp(1j * (theta - t0)))) < np.radians(rng.uniform(8, 18)))
            k0, k1 = max(int(zr / sz), 0), max(int((zr + rng.uniform(8, 12)) / sz), 0)
            vol[k0:k1, m] = bone
        zr += period
    return dict(cav=cav, A=A, B=B)


def _paint3(vol, box, mask, value, cav=None):
    if cav is not None:
        mask = mask & cav[box[0][1], box[0][2]][None]
    vol[box[0]][mask] = value if np.isscalar(value) else value[mask]


def _organs(vol, sp, geo, bd, rng, hu):
    """Bowel loops, colon, liver, gallbladder, spleen (only on free-cavity pixels)."""
    shape, cav, A, B, xc, yc, (spx, spy) = vol.shape, bd["cav"], bd["A"], bd["B"], geo["xc"], geo["yc"], geo["spine"]
    zlen = shape[0] * sp[2]
    for _ in range(int(zlen / 3) + int(rng.integers(0, 20))):     # small bowel
        c = (xc + rng.uniform(-0.7, 0.7) * A, rng.uniform(yc - 0.85 * B, spy - 25), rng.uniform(0, zlen))
        semi = rng.uniform(8, 20) * rng.uniform(0.7, 1.4, size=3)
        box = _box(shape, sp, c, semi.max())
        if box is None:
            continue
        u, v, w = _local(box, _rotation(rng))
        q = (u / F32(semi[0])) ** 2 + (v / F32(semi[1])) ** 2 + (w / F32(semi[2])) ** 2
        _paint3(vol, box, q <= 1, rng.uniform(40, 90), cav)       # wall
        inner, kind = q <= F32((1 - 2.5 / semi.min()) ** 2), rng.random()
        if kind < 0.35:
            _paint3(vol, box, inner, rng.uniform(0, 30), cav)
        elif kind < 0.65:                                           # air-fluid level (air anterior)
            _paint3(vol, box, inner, rng.uniform(0, 25), cav)
            _paint3(vol, box, inner & (box[2] < F32(rng.uniform(-0.5, 0.5) * semi.min())), -rng.uniform(900, 1000), cav)
        else:
            tex = _tex(box[1:], rng, (4, 12), 4)
            _paint3(vol, box, inner, np.where(tex > 1.0, F32(-950), -60 + 50 * tex).astype(F32), cav)
    axl, ayl, azl = rng.uniform(85, 105), rng.uniform(75, 95), rng.uniform(80, 100)
    lc = (xc - 0.42 * A, yc - 0.05 * B, geo["right"]["zhi"] + rng.uniform(0.2, 0.45) * azl)
    colon_top = min(lc[2] - 0.5 * azl, geo["left"]["zhi"])
    for s_ in (-1, 1):                                              # ascending / descending colon
        rc = rng.uniform(15, 25)
        c = (xc + s_ * 0.62 * A, geo["left" if s_ > 0 else "right"]["y"] - rng.uniform(30, 50), colon_top / 2)
        box = _box(shape, sp, c, (rc, rc, colon_top / 2))
        if box is not None:
            _, bz, by, bx = box
            q, tex = (bx * bx + by * by) / F32(rc * rc) + 0 * bz, _tex(box[1:], rng, (6, 20), 4)
            val = np.where(tex > rng.uniform(0.3, 1.0), F32(-950), -50 + 50 * tex)
            _paint3(vol, box, q <= 1, rng.uniform(40, 80), cav)
            _paint3(vol, box, q <= F32((1 - 3 / rc) ** 2), val, cav)
    box = _box(shape, sp, lc, (axl, ayl, azl))
    if box is not None:
        _, bz, by, bx = box
        q = (bx / F32(axl)) ** 2 + (by / F32(ayl)) ** 2 + (bz / F32(azl)) ** 2
        m = (q <= 1 + F32(0.08) * np.cos(bx * F32(0.05)) * np.cos(bz * F32(0.07) + by * F32(0.04))) \
            & (bx < F32(spx - lc[0] + rng.uniform(10, 40)))
        _paint3(vol, box, m, hu(90, 130), cav)
    gb = (lc[0] + 0.45 * axl, lc[1] - 0.55 * ayl, lc[2] - 0.5 * azl)
    box = _box(shape, sp, gb, 35)
    if box is not None:
        u, v, w = _local(box, _rotation(rng))
        _paint3(vol, box, (u / F32(32)) ** 2 + (v / F32(15)) ** 2 + (w / F32(14)) ** 2 <= 1, rng.uniform(0, 25), cav)
    ss = (rng.uniform(30, 40), rng.uniform(45, 60), rng.uniform(45, 60))
    sc = (xc + 0.55 * A, yc + 0.3 * B, geo["left"]["zhi"] + rng.uniform(0, 30))
    box = _box(shape, sp, sc, max(ss))
    if box is not None:
        a = rng.uniform(-0.6, -0.2)
        u, v, w = _local(box, [[np.cos(a), np.sin(a), 0.0], [-np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
        _paint3(vol, box, (u / F32(ss[0])) ** 2 + (v / F32(ss[1])) ** 2 + (w / F32(ss[2])) ** 2 <= 1, hu(100, 140), cav)


def _renal(vol, lab, sp, geo, bd, rng, hu):
    """Perirenal fat halo, cortex/medulla, and tumours of varied types, painted on exactly the labelled voxels."""
    if geo["bbox"] is None:
        return
    z0, z1, y0, y1, x0, x1 = geo["bbox"]
    mz, my, mx = (int(np.ceil(12.0 / s)) for s in (sp[2], sp[1], sp[0]))
    bb = (slice(max(z0 - mz, 0), z1 + mz), slice(max(y0 - my, 0), y1 + my), slice(max(x0 - mx, 0), x1 + mx))
    sub, v, off, sig = lab[bb], vol[bb], [s.start for s in bb], rng.uniform(2.4, 3.0)
    s = ndi.gaussian_filter((sub == 1).astype(F32), (sig / sp[2], sig / sp[1], sig / sp[0]), mode="nearest",
                            truncate=3.0)
    halo = (sub == 0) & (s > F32(rng.uniform(0.03, 0.25))) & bd["cav"][bb[1], bb[2]][None]
    v[halo] = hu(-100, -70)
    cortex = hu(165, 250)
    medulla = min(hu(90, 145), cortex - 45)
    idx = np.nonzero(sub == 1)
    cw = np.clip((F32(0.99) - s[idx]) / F32(0.11), 0, 1)
    kv = medulla + (cortex - medulla) * cw + F32(rng.uniform(6, 14)) * _tex(_mm([i + o for i, o in zip(idx, off)], sp),
                                                                              rng, (6, 18)) * (1 - cw)
    v[idx] = kv
    kid_mean = float(kv.mean()) if kv.size else cortex
    m2 = sub == 2
    idx2 = np.nonzero(m2)
    if not idx2[0].size:
        return
    tb = tuple(slice(max(int(i.min()) - 2, 0), int(i.max()) + 3) for i in idx2)
    tm = m2[tb]
    comp, n = ndi.label(tm)
    st = ndi.gaussian_filter(tm.astype(F32), tuple(4.0 / sp[2 - a] for a in range(3)), mode="nearest", truncate=3.0)
    kind = rng.choice(3, size=n + 1, p=[0.55, 0.25, 0.2])        # solid, necrotic, cystic (per tumour component)
    base = np.where(kind == 2, rng.uniform(0, 30, n + 1), rng.uniform(40, max(min(120.0, kid_mean - 35), 41), n + 1))
    amp = np.where(kind == 2, rng.uniform(1, 4, n + 1), rng.uniform(8, 20, n + 1))
    core = rng.uniform(5, 30, n + 1)
    ti = np.nonzero(tm)
    c = comp[ti]
    tex = _tex(_mm([i + o + t.start for i, o, t in zip(ti, off, tb)], sp), rng, (5, 20))
    cwt = np.clip((st[ti] - F32(0.85)) / F32(0.1), 0, 1) * (kind[c] == 1)
    v[tb][ti] = (base[c] + amp[c] * tex + cwt * (core[c] - base[c])).astype(F32)


def _acquire(vst, sp, axes, rng):
    """Partial-volume blur along z (grows with slice thickness), in-plane PSF, correlated noise -> int16 HU.

    ``vst`` is the float image in its stored memory layout; ``axes[n]`` is the stored axis of canonical axis n.
    """
    ndi.gaussian_filter1d(vst, 0.25 + 0.06 * sp[2], axis=axes[0], output=vst, mode="nearest")  # 0.28-0.55 vox
    sig_p, noise = rng.uniform(0.5, 0.8), float(np.clip(rng.uniform(7, 13) * (5.0 / sp[2]) ** 0.35, 8, 25))
    g = np.exp(-0.5 * (np.arange(-int(4 * sig_p + 0.5), int(4 * sig_p + 0.5) + 1) / sig_p) ** 2)
    k = F32(noise / float((g * g).sum() / g.sum() ** 2) / np.sqrt(1 / 6))  # std after the separable 2D PSF == noise
    step = max(1, (1 << 22) // max(1, vst[0].size))
    buf = np.empty((step,) + vst.shape[1:], F32)
    for i in range(0, vst.shape[0], step):                          # triangular white noise (fast, ~gaussian after
        c, b = vst[i:i + step], buf[:min(step, vst.shape[0] - i)]   # the PSF), in memory order
        rng.random(out=b, dtype=F32)
        c += k * b
        rng.random(out=b, dtype=F32)
        c -= k * b
    for ax in axes[1:]:
        ndi.gaussian_filter1d(vst, sig_p, axis=ax, output=vst, mode="nearest")
    out = np.empty(vst.shape, np.int16)
    for i in range(0, vst.shape[0], step):
        out[i:i + step] = np.clip(np.rint(vst[i:i + step]), HU_MIN, HU_MAX)
    return out


def synthesize_ct(labels: Volume, seed: int) -> Volume:
    """int16 HU image on exactly ``labels``' grid (any orientation); kidneys/tumours stay where the labels say.

    Works on canonical *views* of arrays kept in the labels' memory layout (to_canonical of a header-only stand-in
    gives the spacing and the reorientation), so nothing big is ever transposed.
    """
    can, reo = to_canonical(Volume(np.zeros((1, 1, 1), np.uint8), labels.spacing, labels.origin, labels.direction))
    sp, lab_st = can.spacing, labels.array if labels.array.dtype == np.uint8 else labels.array.astype(np.uint8)
    lab, vst = reo.apply(lab_st), np.empty(lab_st.shape, F32)
    vol, rng = reo.apply(vst), _rng(seed, 2)
    q = rng.uniform()                                               # global contrast level, shared by all organs

    def hu(lo, hi):
        return float(lo + (hi - lo) * np.clip(q + rng.normal(0, 0.15), 0, 1))

    geo = _geometry(lab, sp)
    bd = _background(vol, sp, geo, rng, hu)
    _organs(vol, sp, geo, bd, rng, hu)
    _renal(vol, lab, sp, geo, bd, rng, hu)
    return labels.with_array(_acquire(vst, sp, reo.axes, rng))


def make_case(seed: int, from_label=None, spacing=None) -> Tuple[Volume, Volume]:
    """(ct, labels): procedural anatomy (variant and spacing chosen by seed) or a real label map's anatomy."""
    rng = _rng(seed, 3)
    if from_label is None:
        variant = str(rng.choice(KIDNEY_VARIANTS, p=[0.85, 0.04, 0.04, 0.07]))
        if spacing is None:
            s = rng.uniform(0.68, 0.92)
            spacing = (s, s, float(rng.choice([1.0, 2.5, 3.0, 5.0], p=[0.1, 0.3, 0.3, 0.3])))
        labels = procedural_labels(seed, spacing=spacing, kidneys=variant)
    else:
        if spacing is not None:
            raise VolumeError("spacing cannot be overridden for a real label map; it keeps the case's own grid")
        labels = read_volume(from_label)
        if labels.array.dtype != np.uint8:
            if labels.array.min() < 0 or labels.array.max() > 255:
                raise VolumeError(f"{from_label}: label values outside 0..255; is this a label map?")
            labels = labels.with_array(labels.array.astype(np.uint8))
    return synthesize_ct(labels, seed), labels


def write_kits_case(outdir, case_id: str, ct: Volume, labels: Volume, force=False) -> Path:
    """Write outdir/case_id/imaging.nii.gz and segmentation.nii.gz, both or neither (see :mod:`outputs`);
    refuses to overwrite unless force."""
    from .outputs import OutputSet

    if not ct.same_grid(labels):
        raise VolumeError("the CT and the label map are not on the same grid")
    case = Path(outdir) / case_id
    out = OutputSet(force)
    out.add_image(case / "imaging.nii.gz", ct, "CT")
    out.add_image(case / "segmentation.nii.gz", labels.with_array(labels.array.astype(np.uint8)), "label map")
    out.commit()
    return case


__all__ = ["procedural_labels", "synthesize_ct", "make_case", "write_kits_case", "KIDNEY_VARIANTS"]
