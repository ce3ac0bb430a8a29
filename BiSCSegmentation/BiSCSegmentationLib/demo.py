"""``bisc-demo``: a synthetic CT in, a kidney/tumor segmentation out, scored against the phantom's truth.

Runs exactly what ``bisc-segment`` runs (file in -> file out) on a procedural phantom (seed 0), then writes
a PNG overview (3 axial + 1 coronal slice, CT window -200..400 HU, kidney/tumor overlays, ROI boxes) and
prints the KiTS19 Dice scores and the time taken.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .cli import EXIT_USAGE, SEGMENTS, run_segment_cli
from .roi import KidneyROI
from .volume import Volume, read_volume, to_canonical

WINDOW_HU = (-200.0, 400.0)
ALPHA = 0.45
ROI_COLOR = (255, 215, 0)
CASE_ID = "case_00000"


# ------------------------------------------------------------------------------------------------ rendering
def _tile(gray: np.ndarray, labels: np.ndarray, spacing_rc: Tuple[float, float], height: int) -> Tuple[np.ndarray, float, float]:
    """RGB tile of one slice with label overlays at physical aspect ratio; returns (tile, row scale, col scale)."""
    from skimage.transform import resize

    rgb = np.repeat(gray[..., None], 3, axis=2)
    for seg in SEGMENTS:
        m = labels == seg.label
        rgb[m] = (1 - ALPHA) * rgb[m] + ALPHA * np.asarray(seg.color)
    rows, cols = gray.shape
    width = max(1, int(round(height * (cols * spacing_rc[1]) / (rows * spacing_rc[0]))))
    tile = resize(rgb, (height, width, 3), order=1, anti_aliasing=True, preserve_range=True)
    return (np.clip(tile, 0, 1) * 255).astype(np.uint8), height / rows, width / cols


def _rectangle(tile: np.ndarray, r0: float, r1: float, c0: float, c1: float, color=ROI_COLOR, thick: int = 2) -> None:
    h, w = tile.shape[:2]
    r0, r1 = int(np.clip(round(r0), 0, h - 1)), int(np.clip(round(r1), 0, h - 1))
    c0, c1 = int(np.clip(round(c0), 0, w - 1)), int(np.clip(round(c1), 0, w - 1))
    if r1 <= r0 or c1 <= c0:
        return
    tile[r0:r0 + thick, c0:c1 + 1] = color
    tile[max(r0, r1 - thick + 1):r1 + 1, c0:c1 + 1] = color
    tile[r0:r1 + 1, c0:c0 + thick] = color
    tile[r0:r1 + 1, max(c0, c1 - thick + 1):c1 + 1] = color


def pick_slices(labels_canon: np.ndarray) -> Tuple[List[int], int]:
    """Three axial slices through the kidneys (the middle one at the largest tumor area) and one coronal row."""
    nz, ny = labels_canon.shape[:2]
    fg = labels_canon > 0
    if not fg.any():
        return [int(nz * q) for q in (0.25, 0.5, 0.75)], ny // 2
    zs = np.flatnonzero(fg.any(axis=(1, 2)))
    lo, hi = int(zs[0]), int(zs[-1])
    axial = [int(round(lo + (hi - lo) * q)) for q in (0.2, 0.5, 0.8)]
    tumor_area = (labels_canon == 2).sum(axis=(1, 2))
    if tumor_area.any():
        axial[1] = int(tumor_area.argmax())
    coronal = int(fg.sum(axis=(0, 2)).argmax())
    return sorted(axial), coronal


def render_overview(ct: Volume, labels: Volume, rois: Sequence[KidneyROI] = (), height: int = 320,
                    focus: Optional[Volume] = None) -> np.ndarray:
    """RGB uint8 image: 3 axial slices and 1 coronal slice (radiological view), overlays and ROI boxes.

    Slices go through the kidneys of ``focus`` (e.g. the ground truth) if given, else of ``labels``."""
    canon, reo = to_canonical(ct)
    lab = reo.apply(np.asarray(labels.array))
    lo, hi = WINDOW_HU
    gray_all = np.clip((canon.array.astype(np.float32) - lo) / (hi - lo), 0, 1)
    sx, sy, sz = canon.spacing
    nz, ny, nx = canon.array.shape
    boxes = []
    for roi in rois:
        idx = canon.physical_to_index(roi.corners())
        boxes.append((idx.min(axis=0), idx.max(axis=0)))  # continuous (i, j, k)
    axial, row = pick_slices(lab if focus is None else reo.apply(np.asarray(focus.array)))
    tiles = []
    for k in axial:
        tile, fr, fc = _tile(gray_all[k], lab[k], (sy, sx), height)
        for b_lo, b_hi in boxes:
            if b_lo[2] - 0.5 <= k <= b_hi[2] + 0.5:
                _rectangle(tile, (b_lo[1] + 0.5) * fr, (b_hi[1] + 0.5) * fr, (b_lo[0] + 0.5) * fc, (b_hi[0] + 0.5) * fc)
        tiles.append(tile)
    # coronal: rows are z, flipped so that superior is at the top
    tile, fr, fc = _tile(gray_all[::-1, row, :], lab[::-1, row, :], (sz, sx), height)
    for b_lo, b_hi in boxes:
        if b_lo[1] - 0.5 <= row <= b_hi[1] + 0.5:
            _rectangle(tile, (nz - 1 - b_hi[2] + 0.5) * fr, (nz - 1 - b_lo[2] + 0.5) * fr,
                       (b_lo[0] + 0.5) * fc, (b_hi[0] + 0.5) * fc)
    tiles.append(tile)
    gap = 6
    width = sum(t.shape[1] for t in tiles) + gap * (len(tiles) + 1)
    canvas = np.zeros((height + 2 * gap, width, 3), dtype=np.uint8)
    x = gap
    for t in tiles:
        canvas[gap:gap + height, x:x + t.shape[1]] = t
        x += t.shape[1] + gap
    return canvas


def save_png(image: np.ndarray, path, force: bool = False) -> Path:
    """Write atomically (see :mod:`outputs`)."""
    from skimage.io import imsave

    from .outputs import write_file

    return write_file(path, lambda tmp: imsave(str(tmp), image, check_contrast=False), force=force,
                      description="picture")


# ------------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bisc-demo",
        description="Generate a synthetic kidney CT (phantom, seed 0), segment it with the BiSC-UNet cascade "
                    "exactly as bisc-segment does, and report Dice against the phantom's ground truth.")
    p.add_argument("--out", default="demo_output", help="output folder (default demo_output/)")
    p.add_argument("--force", action="store_true", help="reuse the output folder, overwriting earlier results")
    p.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    p.add_argument("--model", metavar="NAME", help="bundled model name (default: the bundled default)")
    p.add_argument("--rough-model", metavar="FILE", help="rough-stage model file instead of the bundled one")
    p.add_argument("--fine-model", metavar="FILE", help="fine-stage model file instead of the bundled one")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--mirror", action="store_true", help="mirroring test-time augmentation (8x slower)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    t_start = time.perf_counter()
    out = Path(args.out)
    case_dir = out / CASE_ID
    paths = {"labels": out / "prediction.nii.gz", "seg": out / "prediction.seg.nrrd",
             "rois": out / "rois.json", "png": out / "overview.png"}
    if out.exists() and not out.is_dir():
        print(f"error: {out} is a file; give a folder with --out", file=sys.stderr)
        return EXIT_USAGE
    existing = [p for p in [case_dir, *paths.values()] if p.exists()]
    if existing and not args.force:
        print(f"error: {existing[0]} exists; pass --force to reuse {out} (nothing was written)", file=sys.stderr)
        return EXIT_USAGE
    if (args.rough_model is None) != (args.fine_model is None):
        print("error: give both --rough-model and --fine-model (or neither, to use the bundled model)",
              file=sys.stderr)
        return EXIT_USAGE
    if args.rough_model is None:
        from .model_file import ModelFileError, bundled_entry
        try:
            bundled_entry(args.model)
        except ModelFileError as exc:
            print(f"error: {exc} (or pass --rough-model FILE --fine-model FILE)", file=sys.stderr)
            return EXIT_USAGE

    from . import phantom
    from .metrics import kits19_case_scores

    t = time.perf_counter()
    ct, gt = phantom.make_case(args.seed)
    phantom.write_kits_case(out, CASE_ID, ct, gt, force=args.force)
    t_phantom = time.perf_counter() - t
    image_path = case_dir / "imaging.nii.gz"
    print(f"Phantom (seed {args.seed}) written to {case_dir} ({t_phantom:.1f} s)")

    argv_seg = [str(image_path), "-o", str(paths["labels"]), "--seg-nrrd", str(paths["seg"]),
                "--save-rois", str(paths["rois"]), "--device", args.device]
    if args.rough_model:
        argv_seg += ["--rough-model", args.rough_model, "--fine-model", args.fine_model]
    elif args.model:
        argv_seg += ["--model", args.model]
    if args.mirror:
        argv_seg.append("--mirror")
    if args.force:
        argv_seg.append("--force")
    print("Running: bisc-segment " + " ".join(argv_seg), flush=True)
    rc, outcome = run_segment_cli(argv_seg)
    if rc != 0:
        return rc

    # score the files that were written, as a user of the output would see them
    pred = read_volume(paths["labels"])
    truth = read_volume(case_dir / "segmentation.nii.gz")
    scores = kits19_case_scores(np.asarray(pred.array), np.asarray(truth.array))
    ct_file = read_volume(image_path)
    save_png(render_overview(ct_file, pred, outcome.rois, focus=truth), paths["png"], force=args.force)
    print(f"Wrote {paths['png']}")
    print(f"Dice (KiTS19): kidney {scores['kidney_dice']:.3f}, tumor {scores['tumor_dice']:.3f}")
    seg_t = outcome.timings
    stages = ", ".join(f"{k} {seg_t[k]:.1f} s" for k in ("rough stage", "fine stage") if k in seg_t)
    print(f"Time: phantom {t_phantom:.1f} s, segmentation {seg_t.get('total', 0.0):.1f} s ({stages}), "
          f"total {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
