"""Montage and per-structure HU comparison of synthesized cases against a real CT (validation only: nothing is
tuned on it). ``python -m bisc_training.synthesis.compare --btcv DIR --kits DIR --real DIR --out PREFIX``.

The real case's structures.nii.gz (TotalSegmentator names in structures.json) gives its per-structure HU,
as notes/ct-appearance.md measured it; the synthesized cases' own tissue maps give theirs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from BiSCSegmentationLib.volume import read_volume, to_canonical

from .anatomy import T
from .core import synthesize_case

# real structure names (structures.json) and synthesized tissues compared with them
PAIRS = [("kidney", ["kidney_left", "kidney_right"], ["cortex", "medulla"]),
         ("liver", ["liver"], ["liver"]), ("spleen", ["spleen"], ["spleen"]),
         ("pancreas", ["pancreas"], ["pancreas"]), ("aorta", ["aorta"], ["aorta"]),
         ("psoas", ["iliopsoas_left", "iliopsoas_right"], ["psoas"]),
         ("back muscles", ["autochthon_left", "autochthon_right"], ["back_muscle"]),
         ("vertebrae", None, ["cancellous_bone", "cortical_bone"]),
         ("small bowel", ["small_bowel"], ["bowel_fluid", "bowel_wall"]),
         ("colon", ["colon"], ["stool", "bowel_air"])]


def _stats(v):
    if v.size < 20:
        return None
    return [float(np.median(v)), float(np.percentile(v, 5)), float(np.percentile(v, 95))]


def real_stats(real_dir):
    ct = to_canonical(read_volume(Path(real_dir) / "ct.nii.gz"))[0]
    st = to_canonical(read_volume(Path(real_dir) / "structures.nii.gz"))[0].array
    names = {v["name"]: int(k) for k, v in json.loads((Path(real_dir) / "structures.json").read_text()).items()}
    out = {}
    for label, real, _ in PAIRS:
        keys = real if real else [n for n in names if n.startswith("vertebrae_L")]
        m = ndi.binary_erosion(np.isin(st, [names[k] for k in keys if k in names]))
        out[label] = _stats(ct.array[m])
    body = ndi.binary_fill_holes(ct.array > -500)
    out["fat"] = _stats(ct.array[body & (st == 0) & (ct.array > -200) & (ct.array < -30)])
    return ct, st, names, out


def synth_stats(ct, tis):
    out = {}
    for label, _, tissues in PAIRS:
        m = ndi.binary_erosion(np.isin(tis, [T[t] for t in tissues]))
        out[label] = _stats(ct[m])
    out["fat"] = _stats(ct[ndi.binary_erosion(np.isin(tis, [T["fat"], T["subcut_fat"]]))])
    return out


def _slices(ct_can, lab_can):
    """Axial slice through the kidneys' middle and coronal slice through their centre."""
    k = np.argwhere(lab_can > 0)
    c = k.mean(axis=0).round().astype(int) if len(k) else np.array(lab_can.shape) // 2
    return ct_can[c[0]], ct_can[:, c[1], :][::-1], lab_can[c[0]], lab_can[:, c[1], :][::-1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--btcv", required=True)
    p.add_argument("--kits")
    p.add_argument("--real", required=True, help="folder with ct.nii.gz, kidneys.nii.gz, structures.nii.gz")
    p.add_argument("--out", required=True, help="output prefix: PREFIX.png, PREFIX.json")
    p.add_argument("--n", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phase", default=None, help="force a phase for every case (default: drawn per case)")
    a = p.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = sorted(Path(a.btcv).glob("*.nii.gz"))
    rct, rst, names, rstats = real_stats(a.real)
    kid = to_canonical(read_volume(Path(a.real) / "kidneys.nii.gz"))[0].array
    rows = [("real CT (validation)", *_slices(rct.array, kid), rct.spacing)]
    records, sstats = [], []
    for i in range(a.n):
        ct, lab, rec, tis = synthesize_case(files[(a.seed + i) % len(files)], a.seed + i, a.kits,
                                            spacing=(3.0, 3.0, 3.0), phase=a.phase, return_tissues=True)
        c, l, t = (to_canonical(v)[0].array for v in (ct, lab, tis))
        sstats.append(synth_stats(c, t))
        records.append(rec)
        rows.append((f"seed {a.seed + i}: {rec['btcv']} {rec['phase']}, noise {rec['noise_sd']:.0f}, "
                     f"tumor {rec['tumor_kind']}", *_slices(c, l), ct.spacing))
    fig, axes = plt.subplots(len(rows), 2, figsize=(9, 4.2 * len(rows)))
    for r, (title, ax_img, cor_img, ax_lab, cor_lab, sp) in enumerate(rows):
        for col, (img, lab, aspect) in enumerate(((ax_img, ax_lab, sp[1] / sp[0]), (cor_img, cor_lab, sp[2] / sp[0]))):
            axes[r, col].imshow(img, cmap="gray", vmin=-200, vmax=300, aspect=aspect)
            axes[r, col].contour(lab > 0, levels=[0.5], colors="lime", linewidths=0.6)
            axes[r, col].contour(lab == 2, levels=[0.5], colors="red", linewidths=0.6)
            axes[r, col].set_axis_off()
        axes[r, 0].set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(f"{a.out}.png", dpi=55)
    table = {"real": rstats, "synthetic": sstats, "records": records}
    Path(f"{a.out}.json").write_text(json.dumps(table, indent=1))
    print(f"{'structure':14s} {'real median [p5, p95]':>24s}   synthetic medians per case")
    for label in [x[0] for x in PAIRS] + ["fat"]:
        r = rstats.get(label)
        rs = f"{r[0]:6.0f} [{r[1]:5.0f},{r[2]:5.0f}]" if r else "-"
        ss = " ".join(f"{s[label][0]:6.0f}" if s.get(label) else "     -" for s in sstats)
        print(f"{label:14s} {rs:>24s}   {ss}")


if __name__ == "__main__":
    main()
