"""One synthetic case: a BTCV anatomy, a field of view, tissues, kidney internals, a KiTS19 tumor, appearance.

Works in the canonical orientation of ``volume.to_canonical`` at the BTCV label maps' 2 mm; the output keeps
real geometry (spacing, origin, direction), so kidney voxels stay at their BTCV physical positions.
BTCV here (Learn2Reg's resampling) is mirrored left-right against its header: spleen and label 3 ("left
kidney") lie on the header's right. The x axis is flipped so that the anatomy agrees with the header.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from BiSCSegmentationLib.volume import Volume, read_volume, to_canonical

from . import anatomy, appearance, renal
from .anatomy import LIVER, LKID, RKID, SPLEEN

MIRROR_X = True   # see module docstring


def read_btcv(path) -> Tuple[np.ndarray, Volume]:
    """BTCV organ labels (canonical uint8, x mirrored to match the header) and their canonical grid."""
    can, _ = to_canonical(read_volume(path))
    org = can.array.astype(np.uint8)
    if MIRROR_X:
        org = np.ascontiguousarray(org[:, :, ::-1])
    return org, can


def _read_donor(path):
    can, _ = to_canonical(read_volume(path))
    return can.array, can.spacing


def _frame(org: np.ndarray, sp: float, rng, fov: bool):
    """Crop/pad (start, shape) in z, y, x voxels: z from 5-120 mm above the liver dome (lung bases) to 20-280 mm
    below the kidneys (into the pelvis), a square in-plane field of view of 340-480 mm around the body that may cut it."""
    if not fov:
        return (0, 0, 0), org.shape
    nz = org.shape[0]
    z_org = np.nonzero(org.any(axis=(1, 2)))[0]
    z_kid = np.nonzero(np.isin(org, (RKID, LKID)).any(axis=(1, 2)))[0]
    z_top_org = np.nonzero(np.isin(org, (LIVER, SPLEEN)).any(axis=(1, 2)))[0]
    top = (z_top_org.max() if z_top_org.size else z_org.max()) + rng.uniform(5, 120) / sp
    bottom = (z_kid.min() if z_kid.size else z_org.min()) - rng.uniform(20, 280) / sp
    z0, z1 = int(max(0, bottom)), int(min(nz, top + 1))
    yy, xx = np.nonzero(org.any(axis=0))
    fov_mm = rng.uniform(340, 480)
    n = int(round(fov_mm / sp))
    cy = (yy.min() + yy.max()) / 2 + rng.uniform(10, 35) / sp        # the back reaches beyond the organs
    cx = (xx.min() + xx.max()) / 2 + rng.uniform(-15, 15) / sp
    return (z0, int(round(cy - n / 2)), int(round(cx - n / 2))), (z1 - z0, n, n)


def _crop(a: np.ndarray, start, shape, fill=0) -> np.ndarray:
    out = np.full(shape, fill, a.dtype)
    src = tuple(slice(max(0, s), min(n, s + m)) for s, m, n in zip(start, shape, a.shape))
    dst = tuple(slice(q.start - s, q.stop - s) for q, s in zip(src, start))
    out[dst] = a[src]
    return out


def synthesize_case(btcv_path, seed: int, kits_dir=None, spacing: Sequence[float] = (2.0, 2.0, 2.0),
                    fov: bool = True, tumor_prob: float = 0.8, phase: Optional[str] = None,
                    return_tissues: bool = False):
    """(ct, labels, record[, tissues]) of one synthetic case; the same arguments always give the same case.

    ``spacing`` (x, y, z mm) of the output; ``fov=False`` keeps BTCV's grid (no crop, no padding);
    ``kits_dir`` gives the tumor donors (none: no tumor); ``phase`` forces a contrast phase.
    """
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5EED])
    org, can = read_btcv(btcv_path)
    sp = float(can.spacing[0])
    if not np.allclose(can.spacing, sp):
        raise ValueError(f"{btcv_path}: expected isotropic voxels, got {can.spacing}")
    start, shape = _frame(org, sp, rng, fov)
    org = _crop(org, start, shape)
    tis, geo = anatomy.build_tissues(org, sp, rng)
    lab = np.isin(org, (RKID, LKID)).astype(np.uint8)
    renal.kidney_internals(tis, lab, org, sp, geo, rng)
    tumors = []
    if kits_dir is not None and rng.random() < tumor_prob:
        donors = renal.tumor_pool(kits_dir)
        for _ in range(2 if rng.random() < 0.1 else 1):
            t = renal.insert_tumor(tis, lab, org, sp, rng, donors, _read_donor)
            if t:
                tumors.append(t)
    kind = renal.tumor_appearance(tis, lab, sp, rng)
    phase = phase or str(rng.choice(appearance.PHASES, p=appearance.PHASE_P))
    if phase not in appearance.PHASES:
        raise ValueError(f"phase must be one of {appearance.PHASES}, got {phase!r}")
    img = appearance.render(tis, phase, kind, rng)
    ct, labo, maps, acq, ext = appearance.acquire(img, lab, sp, spacing, rng, [tis] if return_tissues else None)
    first = (maps[2].start + start[2], maps[1].start + start[1], maps[0].start + start[0])   # i, j, k
    origin = can.index_to_physical(first)
    out_sp = tuple(m.step * sp for m in (maps[2], maps[1], maps[0]))
    ctv = Volume(ct, out_sp, origin, can.direction)
    labv = Volume(labo, out_sp, origin, can.direction)
    rec: Dict = dict(btcv=Path(btcv_path).name, seed=int(seed), phase=phase, tumor_kind=kind, tumors=tumors,
                     frame_start_zyx=[int(s) for s in start], **acq)
    if return_tissues:
        return ctv, labv, rec, Volume(ext[0], out_sp, origin, can.direction)
    return ctv, labv, rec
