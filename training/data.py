"""KiTS19 data for training: reading cases, the 4/5-1/5 split, preprocessing into a cache, patch sampling.

Each case is reoriented to canonical axes and resampled once (CT linear with antialiasing, labels nearest)
to the two grids the stages see, with the same code the cascade uses at inference:
- rough: in-plane resized to ``inplane_size`` (paper: 128x128), z at ``rough_z_spacing``;
- fine: ``fine_spacing`` (paper: 0.78 x 0.78 x 3 mm), cropped around each ground-truth kidney with room
  for the ROI jitter.
Edge targets (per-slice Canny of kidney and tumor masks) are computed then too. Where a case has no CT
(the label maps in ../shared), ``synthesize=True`` builds one around the real anatomy (phantom.py).
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from scipy import ndimage

from BiSCSegmentationLib.losses import kidney_and_tumor_edges
from BiSCSegmentationLib.cascade import rough_grid
from BiSCSegmentationLib.roi import paper_roi_voxels
from BiSCSegmentationLib.resample import AxisMap, resample_linear, resample_nearest, spacing_map
from BiSCSegmentationLib.outputs import write_json
from BiSCSegmentationLib.volume import Volume, read_volume, to_canonical

CASE_RE = re.compile(r"^case_\d{5}$")
AIR_HU = -1024.0


@dataclass
class PrepConfig:
    inplane_size: int = 128
    rough_z_spacing: float = 3.0
    fine_spacing: Tuple[float, float, float] = (0.78, 0.78, 3.0)  # x, y, z mm
    fine_margin_mm: Tuple[float, float, float] = (90.0, 90.0, 45.0)  # room around each kidney (x, y, z)
    synthesize: bool = False

    def to_dict(self) -> Dict:
        return {"inplane_size": self.inplane_size, "rough_z_spacing": self.rough_z_spacing,
                "fine_spacing": list(self.fine_spacing), "fine_margin_mm": list(self.fine_margin_mm),
                "synthesize": self.synthesize}


# --------------------------------------------------------------------------------------------- cases, split
def list_cases(kits_dir) -> List[str]:
    kits_dir = Path(kits_dir)
    if not kits_dir.is_dir():
        raise FileNotFoundError(f"{kits_dir}: no such KiTS19 folder (expected case_XXXXX/segmentation.nii.gz)")
    cases = sorted(p.name for p in kits_dir.iterdir() if CASE_RE.match(p.name) and (p / "segmentation.nii.gz").is_file())
    if not cases:
        raise FileNotFoundError(f"{kits_dir}: holds no case_XXXXX/segmentation.nii.gz")
    return cases


def pick_cases(split: Dict, which: str, n: int) -> List[str]:
    """The first ``n`` held-out cases, or ``n`` training cases spread evenly over the sorted list (every
    ``len // n``-th, from the fourth or, for short lists, the last of the first step)."""
    cases = sorted(split[which])
    if not n or n >= len(cases):
        return cases
    if which == "test":
        return cases[:n]
    step = len(cases) // n
    return cases[min(3, step - 1)::step][:n]


def read_labels(path) -> Volume:
    """A KiTS19 label map; some are stored as uint16, so values are checked and cast to uint8."""
    vol = read_volume(path)
    arr = vol.array
    if arr.size and (arr.min() < 0 or arr.max() > 2):
        raise ValueError(f"{path}: labels must be 0 (background), 1 (kidney), 2 (tumor); found {arr.min()}..{arr.max()}")
    return vol.with_array(arr.astype(np.uint8))


def read_case(kits_dir, case_id: str, synthesize: bool = False) -> Tuple[Volume, Volume]:
    """(ct, labels) of one case; with ``synthesize`` a phantom CT is built around the real label map."""
    case = Path(kits_dir) / case_id
    labels = read_labels(case / "segmentation.nii.gz")
    img = case / "imaging.nii.gz"
    if img.is_file() and not synthesize:
        ct = read_volume(img)
        if not ct.same_grid(labels):
            raise ValueError(f"{case}: imaging and segmentation grids differ")
        return ct, labels
    if not synthesize:
        raise FileNotFoundError(f"{img}: missing; pass --synthesize to build phantom CT around the label maps")
    from BiSCSegmentationLib.phantom import synthesize_ct
    return synthesize_ct(labels, seed=int(case_id[-5:])), labels


def make_split(cases: Sequence[str], path, test_fraction: float = 0.2, seed: int = 0, write: bool = True) -> Dict:
    """Deterministic 4/5-1/5 split written to ``path``; an existing split file is reused (and checked).
    ``write=False``: the split that would be used, nothing written (to check it before any work)."""
    path = Path(path)
    if path.is_file():
        split = json.loads(path.read_text())
        unknown = set(split["train"] + split["test"]) - set(cases)
        if unknown:
            raise ValueError(f"{path}: split names cases not in the data folder: {sorted(unknown)[:5]}")
        return split
    order = list(cases)
    np.random.default_rng(seed).shuffle(order)
    n_test = max(1, int(round(len(order) * test_fraction))) if len(order) > 1 else 0
    split = {"seed": seed, "test_fraction": test_fraction, "train": sorted(order[n_test:]), "test": sorted(order[:n_test])}
    if not write:
        return split
    write_json(path, split, force=True, description="split file", indent=1)
    return split


# ----------------------------------------------------------------------------------------------- preprocess
def rough_maps(canon: Volume, cfg: PrepConfig) -> Tuple[AxisMap, AxisMap, AxisMap]:
    return rough_grid(canon, cfg.inplane_size, cfg.rough_z_spacing)


def fine_maps(canon: Volume, cfg: PrepConfig) -> Tuple[AxisMap, AxisMap, AxisMap]:
    nz, ny, nx = canon.array.shape
    fx, fy, fz = cfg.fine_spacing
    return (spacing_map(nz, canon.spacing[2], fz), spacing_map(ny, canon.spacing[1], fy),
            spacing_map(nx, canon.spacing[0], fx))


def _sample(ct: np.ndarray, labels: np.ndarray, maps) -> Dict[str, np.ndarray]:
    img = resample_linear(ct, maps, fill=AIR_HU).numpy()
    lab = resample_nearest(labels, maps)
    kedge, tedge = kidney_and_tumor_edges(lab)
    return {"ct": np.round(img).astype(np.int16), "labels": lab.astype(np.uint8), "kidney_edge": kedge,
            "tumor_edge": tedge}


def kidney_boxes(labels: np.ndarray, spacing_zyx, margin_mm_zyx, min_voxels: int = 50) -> List[Tuple[slice, ...]]:
    """Crop boxes around each ground-truth kidney component (26-connected), grown by the margin."""
    comp, n = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), bool))
    boxes = []
    for idx, sl in enumerate(ndimage.find_objects(comp), start=1):
        if sl is None or np.count_nonzero(comp[sl] == idx) < min_voxels:
            continue
        grown = []
        for ax, s in enumerate(sl):
            m = int(math.ceil(margin_mm_zyx[ax] / spacing_zyx[ax]))
            grown.append(slice(max(0, s.start - m), min(labels.shape[ax], s.stop + m)))
        boxes.append(tuple(grown))
    return boxes


def preprocess_case(ct: Volume, labels: Volume, cfg: PrepConfig) -> Dict[str, np.ndarray]:
    """Arrays for the cache: rough_* (whole volume) and fine{n}_* (one crop per kidney)."""
    canon_ct, _ = to_canonical(ct)
    canon_lab, _ = to_canonical(labels)
    out = {f"rough_{k}": v for k, v in _sample(canon_ct.array, canon_lab.array, rough_maps(canon_ct, cfg)).items()}
    fine = _sample(canon_ct.array, canon_lab.array, fine_maps(canon_ct, cfg))
    spacing_zyx = cfg.fine_spacing[::-1]
    for n, box in enumerate(kidney_boxes(fine["labels"], spacing_zyx, cfg.fine_margin_mm[::-1])):
        for k, v in fine.items():
            out[f"fine{n}_{k}"] = np.ascontiguousarray(v[box])
    return out


def prepare_cache(kits_dir, cases: Sequence[str], cache_dir, cfg: PrepConfig, progress=None, workers: int = 1) -> Path:
    """Preprocess every case once into ``cache_dir/<case>/*.npy`` (skips cases already there)."""
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    meta = cache / "prep.json"
    if meta.is_file() and json.loads(meta.read_text()) != cfg.to_dict():
        raise ValueError(f"{cache}: prepared with other settings ({meta}); use another --cache folder")
    write_json(meta, cfg.to_dict(), force=True, description="cache settings", indent=1)
    todo = [c for c in cases if not (cache / c).is_dir()]
    jobs = [(str(kits_dir), c, str(cache), cfg) for c in todo]
    done = len(cases) - len(todo)
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(workers) as pool:
            for case in pool.imap_unordered(_prepare_one, jobs):
                done += 1
                if progress:
                    progress(done, len(cases), case)
    else:
        for job in jobs:
            case = _prepare_one(job)
            done += 1
            if progress:
                progress(done, len(cases), case)
    return cache


def _prepare_one(job) -> str:
    kits_dir, case, cache, cfg = job
    write_case_arrays(Path(cache) / case, preprocess_case(*read_case(kits_dir, case, cfg.synthesize), cfg))
    return case


def write_case_arrays(folder: Path, arrays: Dict[str, np.ndarray]) -> None:
    """One .npy per array (memory-mappable: training processes share them through the page cache);
    written into a temporary folder of this process, renamed at the end, so an interrupted run leaves no half
    case. If another process finished the same case meanwhile, its folder is kept and this copy dropped."""
    import shutil
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.part")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for key, value in arrays.items():
        np.save(tmp / f"{key}.npy", value)
    try:
        os.replace(tmp, folder)
    except OSError:
        if not folder.is_dir():
            raise
        shutil.rmtree(tmp)


def load_case_arrays(folder: Path, prefix: str = "") -> Dict[str, np.ndarray]:
    """The cached arrays of a case, memory-mapped; plain arrays only (``allow_pickle=False``: a cache file
    never runs code)."""
    out = {}
    for f in sorted(Path(folder).glob(f"{prefix}*.npy")):
        try:
            out[f.stem] = np.load(f, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{f}: not a plain array file (truncated, corrupt, or holding objects); delete the "
                             f"case folder {Path(folder)} and prepare the cache again") from exc
    return out


# ------------------------------------------------------------------------------------------------ sampling
def mirror_axis_numbers(axes: str) -> Tuple[int, ...]:
    """Array axes (0 z, 1 y, 2 x) of a string of the letters z, y, x."""
    bad = set(axes) - set("zyx")
    if bad or len(set(axes)) != len(axes):
        raise ValueError(f"mirror axes must be distinct letters of 'zyx' (e.g. 'x' or 'zyx'), got {axes!r}")
    return tuple(i for i, a in enumerate("zyx") if a in axes)


class PatchSampler:
    """Random training patches for one stage from the cache, deterministic given its numpy Generator.

    rough: a z-window of the whole low-resolution volume (all 128x128 in-plane);
    fine: a patch inside a kidney crop. With probability ``roi_prob`` its centre is uniform over the
    region an ROI around that kidney covers at inference (the kidney's box grown by ``roi_margin_mm``),
    so the network also learns what is *not* kidney there (bowel, vessels, spleen, ribs); otherwise it is
    centred on a tumor voxel (probability ``tumor_prob``) or a kidney voxel, jittered by up to
    ``jitter_mm`` (like the rough stage's localisation errors).
    Random mirroring in three directions (paper Sec. 3.1), or only along ``mirror_axes`` (letters of "zyx";
    "x": left-right only, so the network keeps the anatomy's front/back and head/feet priors).
    """

    def __init__(self, cache_dir, cases: Sequence[str], stage: str, patch_size: Sequence[int],
                 fine_spacing=PrepConfig.fine_spacing, tumor_prob: float = 0.5, jitter_mm: float = 25.0,
                 mirror: bool = True, roi_prob: float = 0.0, roi_margin_mm: Sequence[float] = (45.0, 45.0, 15.0),
                 mirror_axes: str = "zyx"):
        self.stage, self.patch = stage, tuple(int(p) for p in patch_size)
        self.mirror_axes = mirror_axis_numbers(mirror_axes)
        self.tumor_prob, self.mirror, self.roi_prob = tumor_prob, mirror, roi_prob
        self.jitter_vox = np.array([jitter_mm / s for s in fine_spacing[::-1]])
        self.roi_margin_vox = np.array([m / s for m, s in zip(roi_margin_mm, fine_spacing)])[::-1]
        self.items = []
        keys = ("ct", "labels", "kidney_edge", "tumor_edge")
        self.points = []  # per fine item: (kidney voxel sample, tumor voxel sample), found once
        point_rng = np.random.default_rng(0)
        for case in cases:
            z = load_case_arrays(Path(cache_dir) / case, "rough" if stage == "rough" else "fine")
            for p in sorted({k.split("_")[0] for k in z}):
                self.items.append(tuple(z[f"{p}_{k}"] for k in keys))
                if stage == "fine":
                    lab = np.asarray(z[f"{p}_labels"])
                    self.points.append(tuple(_subsample(np.argwhere(m), point_rng) for m in (lab > 0, lab == 2)))
        if not self.items:
            raise ValueError(f"no {stage} training data in {cache_dir} for {len(cases)} cases")

    def sample(self, rng: np.random.Generator):
        n = int(rng.integers(len(self.items)))
        ct, lab, ke, te = self.items[n]
        shape = np.array(lab.shape)
        patch = np.array(self.patch)
        if self.stage == "rough":
            centre = np.array([rng.uniform(0, shape[0]), shape[1] / 2, shape[2] / 2])
        elif self.roi_prob and rng.random() < self.roi_prob:
            kidney_pts = self.points[n][0]
            lo = kidney_pts.min(axis=0) - self.roi_margin_vox
            hi = kidney_pts.max(axis=0) + self.roi_margin_vox
            centre = np.clip(rng.uniform(lo, hi), 0, shape - 1)  # the ROI is clamped to the volume too
        else:
            kidney_pts, tumor_pts = self.points[n]
            want_tumor = rng.random() < self.tumor_prob and len(tumor_pts) > 0
            pts = tumor_pts if want_tumor else kidney_pts
            centre = pts[int(rng.integers(len(pts)))] + rng.uniform(-1, 1, 3) * self.jitter_vox
        start = np.round(centre - patch / 2).astype(int)
        arrays = [_crop(a, start, patch, fill) for a, fill in ((ct, AIR_HU), (lab, 0), (ke, 0), (te, 0))]
        if self.mirror:
            for ax in range(3):   # one draw per axis whichever axes mirror: the same stream as "zyx"
                if rng.random() < 0.5 and ax in self.mirror_axes:
                    arrays = [np.flip(a, ax) for a in arrays]
        return [np.ascontiguousarray(a) for a in arrays]

    def batch(self, rng: np.random.Generator, size: int):
        samples = [self.sample(rng) for _ in range(size)]
        return [np.stack([s[i] for s in samples]) for i in range(4)]


def roi_box(labels: np.ndarray, spacing_zyx: Sequence[float], margin_mm=(6.0, 10.0, 10.0)) -> np.ndarray:
    """(start, size) in voxels of the paper-sized ROI around the crop's kidney (its largest component), as
    ``rois_from_mask`` sizes it at inference."""
    comp, n = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return np.array([[0, 0, 0], list(labels.shape)])
    biggest = 1 + int(np.argmax(np.bincount(comp.ravel())[1:]))
    sl = ndimage.find_objects((comp == biggest).astype(np.int32))[0]
    lo, hi = np.array([s.start for s in sl]), np.array([s.stop for s in sl])
    extent = (hi - lo) + 2 * np.asarray(margin_mm) / np.asarray(spacing_zyx)
    size = np.array(paper_roi_voxels(extent[::-1], tuple(spacing_zyx)[::-1])[::-1])  # x, y, z there
    start = np.round((lo + hi) / 2 - size / 2).astype(int)
    return np.array([start, size])


def stage_crops(model, cache_dir, case: str):
    """(ct, labels) arrays a stage model sees for one cached case: the whole rough volume, or each kidney's
    paper-sized ROI around the ground truth (a perfect rough stage's box; for calibration and Table 1)."""
    arrays = load_case_arrays(Path(cache_dir) / case, model.stage)
    for p in sorted({k.split("_")[0] for k in arrays}):
        ct, labels = np.asarray(arrays[f"{p}_ct"]), np.asarray(arrays[f"{p}_labels"])
        if model.stage == "fine":
            start, size = roi_box(labels, tuple(model.fine_spacing[::-1]))
            ct, labels = _crop(ct, start, size, AIR_HU), _crop(labels, start, size, 0)
        yield ct, labels


def _subsample(points: np.ndarray, rng: np.random.Generator, keep: int = 20000) -> np.ndarray:
    if len(points) > keep:
        points = points[rng.choice(len(points), keep, replace=False)]
    return points.astype(np.int32)


def _crop(a: np.ndarray, start: np.ndarray, size: np.ndarray, fill) -> np.ndarray:
    """``size`` voxels from ``start`` (may lie partly or wholly outside ``a``), padded with ``fill``."""
    out = np.full(tuple(size), fill, dtype=a.dtype)
    lo = [min(max(0, int(s)), n) for s, n in zip(start, a.shape)]
    hi = [min(max(0, int(s) + int(p)), n) for s, p, n in zip(start, size, a.shape)]
    if all(h > l for l, h in zip(lo, hi)):
        src = tuple(slice(l, h) for l, h in zip(lo, hi))
        dst = tuple(slice(l - int(s), h - int(s)) for l, h, s in zip(lo, hi, start))
        out[dst] = a[src]
    return out
