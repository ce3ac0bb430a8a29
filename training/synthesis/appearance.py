"""CT appearance of a tissue map, SynthSeg-style (Billot et al. 2023): per case a contrast phase, per tissue a
mean HU drawn from that phase's range (../shared/notes/ct-appearance.md), smooth texture, then acquisition:
partial-volume blur and slice thickness, resampling, noise of a smooth or sharp kernel, reconstruction circle.

Ranges are literature values widened towards what the shared non-contrast case measured (kidney 17 HU,
pancreas 4 HU, back muscles 20 HU: lower than textbook), so the real case lies inside the training range.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from BiSCSegmentationLib.resample import resample_linear, resample_nearest, spacing_map

from .anatomy import TISSUES, T, smooth_noise

F32 = np.float32
PHASES = ("noncontrast", "corticomedullary", "nephrographic", "portal_venous", "excretory")
PHASE_P = (0.25, 0.2, 0.15, 0.3, 0.1)

_C = lambda lo, hi: [(lo, hi)] * 5                                  # noqa: E731 (same in every phase)
# (lo, hi) HU per phase, in PHASES order
HU = {
    "air": _C(-1010, -985), "fat": _C(-120, -75), "subcut_fat": _C(-125, -80), "skin": _C(10, 60),
    "muscle": [(30, 60), (45, 70), (50, 80), (50, 80), (45, 75)],
    "psoas": [(35, 60), (45, 70), (50, 80), (50, 80), (45, 75)],
    "back_muscle": [(10, 55), (30, 65), (40, 75), (40, 75), (35, 70)],
    "cortical_bone": _C(400, 900), "cancellous_bone": _C(90, 230), "disc": _C(60, 110), "csf": _C(0, 20),
    "rib": _C(150, 500), "lung": _C(-900, -700), "table_shell": _C(50, 400), "table_foam": _C(-980, -850),
    "pad": _C(-160, -60),
    "bowel_wall": [(20, 50), (50, 110), (60, 120), (60, 120), (50, 100)],
    "bowel_fluid": _C(-5, 40), "bowel_air": _C(-1010, -900), "stool": _C(-200, 20), "oral_contrast": _C(180, 600),
    "stomach_content": _C(5, 50),
    "spleen": [(35, 55), (100, 150), (110, 135), (110, 135), (90, 115)],
    "liver": [(40, 68), (65, 90), (95, 130), (95, 130), (80, 105)],
    "gallbladder": _C(-5, 25),
    "esophagus": [(30, 55), (50, 90), (60, 100), (60, 100), (50, 90)],
    "stomach_wall": [(30, 50), (70, 140), (70, 130), (70, 130), (60, 100)],
    "aorta": [(30, 55), (250, 420), (150, 230), (140, 210), (100, 150)],
    "ivc": [(30, 55), (60, 130), (130, 190), (130, 190), (100, 140)],
    "portal_vein": [(30, 55), (100, 170), (140, 200), (150, 210), (100, 140)],
    "hepatic_vessel": [(25, 45), (60, 110), (140, 190), (140, 210), (100, 140)],
    "heart": [(30, 55), (230, 400), (130, 200), (120, 190), (100, 140)],
    "pancreas": [(-25, 45), (90, 140), (80, 120), (80, 120), (60, 100)],
    "adrenal": [(-10, 40), (60, 110), (60, 100), (60, 100), (50, 85)],
    "cortex": [(10, 42), (150, 260), (150, 210), (140, 200), (100, 140)],
    "medulla": [(10, 42), (55, 100), (150, 210), (115, 180), (100, 140)],
    "sinus_fat": _C(-110, -50),
    "collecting": [(0, 20), (0, 20), (0, 30), (0, 30), (300, 1500)],
    "ureter": [(0, 20), (0, 20), (0, 30), (0, 30), (300, 1500)],
    "cyst": _C(-5, 20), "stone": _C(200, 1500), "tumor_necrosis": _C(0, 35),
}
TUMOR_HU = {  # solid part, by kind
    "clear_cell": [(20, 45), (100, 200), (70, 150), (70, 150), (50, 100)],
    "papillary": [(20, 45), (40, 80), (60, 100), (60, 100), (50, 90)],
    "other": [(25, 50), (70, 150), (80, 140), (80, 140), (60, 110)],
    "cystic": [(25, 50), (60, 130), (70, 130), (70, 130), (60, 100)],
}
# texture sd (HU) and correlation scale (voxels of the 2 mm working grid: 0 fine, 1 medium, 2 coarse)
TEXTURE = {"fat": (4, 10, 2), "subcut_fat": (4, 10, 2), "liver": (3, 10, 2), "spleen": (3, 10, 2),
           "stool": (60, 130, 0), "cancellous_bone": (20, 60, 0), "lung": (20, 50, 1), "tumor": (8, 25, 1),
           "medulla": (3, 10, 1), "cortex": (3, 10, 1), "oral_contrast": (20, 80, 1), "table_foam": (10, 30, 0)}
SCALES = (0.7, 1.5, 3.0)
assert set(HU) | {"tumor"} == set(TISSUES), sorted(set(TISSUES) ^ (set(HU) | {"tumor"}))


def draw_means(phase: str, tumor_kind: str, rng) -> np.ndarray:
    """Mean HU per tissue code for this case (uniform in the phase's range, then a +-5 HU jitter)."""
    p = PHASES.index(phase)
    means = np.zeros(len(TISSUES), F32)
    for name, rng_by_phase in HU.items():
        lo, hi = rng_by_phase[p]
        means[T[name]] = rng.uniform(lo, hi) + rng.normal(0, 5)
    lo, hi = TUMOR_HU.get(tumor_kind, TUMOR_HU["other"])[p]
    means[T["tumor"]] = rng.uniform(lo, hi) + rng.normal(0, 5)
    if phase == "noncontrast":                                       # no corticomedullary difference
        means[T["medulla"]] = means[T["cortex"]] + rng.normal(0, 3)
    if phase == "nephrographic":
        means[T["medulla"]] = means[T["cortex"]] + rng.normal(0, 8)
    if phase in ("nephrographic", "portal_venous") and tumor_kind == "clear_cell":
        means[T["tumor"]] = min(means[T["tumor"]], means[T["cortex"]] - rng.uniform(15, 70))
    return means


def render(tis: np.ndarray, phase: str, tumor_kind: str, rng) -> np.ndarray:
    """Noise-free float32 HU image of a tissue map; hepatic vessels appear as tubes in the liver."""
    means = draw_means(phase, tumor_kind, rng)
    liver = tis == T["liver"]
    if liver.any():                                                 # tubes: where two smooth fields cross zero
        f1, f2 = smooth_noise(tis.shape, 2.5, rng), smooth_noise(tis.shape, 2.5, rng)
        tis = tis.copy()
        tis[liver & (np.abs(f1) < 0.12) & (np.abs(f2) < 0.12)] = T["hepatic_vessel"]
        del f1, f2
    img = means[tis]
    fields = [smooth_noise(tis.shape, s, rng) for s in SCALES]
    amp = np.zeros(len(TISSUES), F32)
    scale = np.zeros(len(TISSUES), np.int8)
    for name in TISSUES:
        lo, hi, sc = TEXTURE.get(name, (2, 8, 1))
        amp[T[name]], scale[T[name]] = rng.uniform(lo, hi), sc
    if phase == "corticomedullary":                                 # arciform spleen, heterogeneous tumors
        amp[T["spleen"]] = rng.uniform(20, 40)
        amp[T["tumor"]] = rng.uniform(20, 45)
    for sc in range(3):
        sel = (scale[tis] == sc)
        img[sel] += amp[tis[sel]] * fields[sc][sel]
    return img


def acquire(img: np.ndarray, labels: np.ndarray, sp_in: float, spacing_out, rng, extra=None):
    """Blur (PSF and slice profile), resample to ``spacing_out`` (x, y, z mm), add kernel noise, clip to int16.

    Returns (ct int16, labels uint8, maps, record); ``extra`` arrays (e.g. the tissue map) are resampled nearest.
    """
    thick = rng.uniform(1.0, 5.0)
    psf = rng.uniform(0.5, 1.0)                                     # in-plane PSF sigma, mm
    sz = np.sqrt(max(thick ** 2 - sp_in ** 2, 0) / 12 + 0.3 ** 2)
    img = ndi.gaussian_filter(img, (sz / sp_in, psf / sp_in, psf / sp_in), mode="nearest")
    sx, sy, szo = (float(s) for s in spacing_out)
    maps = (spacing_map(img.shape[0], sp_in, szo), spacing_map(img.shape[1], sp_in, sy),
            spacing_map(img.shape[2], sp_in, sx))
    out = resample_linear(img, maps, fill=-1000.0).numpy()
    lab = resample_nearest(labels, maps)
    ext = [resample_nearest(e, maps) for e in (extra or [])]
    sharp = rng.random() < 0.35
    sd = rng.uniform(10, 40)
    ks = rng.uniform(0.3, 0.5) if sharp else rng.uniform(0.7, 1.3)   # noise correlation (output voxels)
    noise = ndi.gaussian_filter(rng.standard_normal(out.shape, dtype=F32), (0, ks, ks))
    noise *= F32(sd / max(float(noise.std()), 1e-6))
    if sharp:                                                       # edge-enhancing reconstruction kernel
        amount = rng.uniform(0.3, 1.0)
        out += F32(amount) * (out - ndi.gaussian_filter(out, (0, 1.0, 1.0)))
    out += noise
    circle = rng.random() < 0.5
    if circle:                                                      # outside the reconstruction circle
        ny, nx = out.shape[1:]
        yy, xx = np.ogrid[:ny, :nx]
        r = min(ny, nx) / 2
        out[:, ((yy - (ny - 1) / 2) ** 2 + (xx - (nx - 1) / 2) ** 2) > r * r] = -1024
    ct = np.clip(np.rint(out), -1024, 3071).astype(np.int16)
    rec = dict(slice_thickness_mm=float(thick), psf_sigma_mm=float(psf), noise_sd=float(sd), sharp_kernel=bool(sharp),
               recon_circle=bool(circle))
    return ct, lab.astype(np.uint8), maps, rec, ext
