#!/usr/bin/env python
"""CPU benchmark of the BiSC-UNet cascade: how close to the machine's limit it runs, per stage and backend.

One run measures, on this machine:

* the FP32 and bf16 FMA rate (a tiny AVX-512 / AVX2 kernel compiled with the system C compiler when there is
  one, one thread per core) and large-GEMM rates (torch.mm, oneDNN/MKL), i.e. the "peak" that % refer to;
* every network's FLOPs (convolutions of the label branch, counted with hooks; norms/ReLU/pooling ignored);
* the cascade on a synthetic 300 x 512 x 512 CT at 0.78 x 0.78 x 1 mm (array in -> label map out), warm,
  median of ``--runs``, for each backend (torch eager = the reference, OpenVINO f32, OpenVINO bf16): per stage
  network seconds, GFLOP/s, % of peak, and the glue share (resampling, argmax, connected components, pasting);
* the same for a paper-width network (widths 32-64-128-256, random weights);
* agreement between backends (Dice of kidney and tumor vs the torch labels; max logit difference);
* a non-cascaded baseline: one sliding-window pass of the same fine network over the whole CT at the fine
  spacing, its time and Dice next to the cascade's;
* peak RSS of a fresh process running the cascade (and of a 1000-slice CT at 0.5 mm, with ``--big``);
* a cold ``bisc-segment`` run (new process, file in -> file out), with the export cache warm and cold;
* CPU training throughput (steps/hour) in fp32 and with bf16 autocast;

and writes ``results.md`` (Markdown tables), ``results.json`` and ``cascade_benchmark.png`` into ``--out``.

    python benchmarks/benchmark_cascade.py --out benchmarks/results          # full (a few minutes)
    python benchmarks/benchmark_cascade.py --quick --out /tmp/bench          # smoke test (small CT)

With no bundled models installed (``BiSCSegmentationLib/models/models.json``), the "bundled-size" networks have
random weights (widths 8-16-32-64, instance norm, as the bundled ones): timings are the same, Dice against the
phantom's truth is then meaningless, and the ROIs come from the phantom's labels. This is a benchmark, not a
test: it asserts nothing.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from BiSCSegmentationLib import backends as B
from BiSCSegmentationLib.cascade import CascadePredictor, canonical_view, resample_view, label_argmax, sliding_window
from BiSCSegmentationLib.metrics import kits19_case_scores, dice
from BiSCSegmentationLib.model_file import (StageModel, default_cache_dir, load_bundled, load_model_file,
                                            save_model_file)
from BiSCSegmentationLib.network import SCUNet, SCUNetConfig
from BiSCSegmentationLib.resample import AxisMap, spacing_map
from BiSCSegmentationLib.roi import rois_from_mask
from BiSCSegmentationLib.volume import Volume

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])  # NIfTI files (KiTS19) come in RAS: the CT is flipped in x and y
PEERS = [("TotalSegmentator, fastest setting (CPU)", "~70 s"), ("TotalSegmentator, full resolution (CPU)", "40-50 min"),
         ("nnU-Net v2, no TTA (CPU)", "~3 min"), ("MONAI Auto3DSeg (10 CPU cores)", "55 s")]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------- machine
FMA_C = r"""
#include <immintrin.h>
#include <stdint.h>
#define REP16(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)
__attribute__((target("avx512f"))) double fma512(int64_t n) {
#define D(i) __m512 a##i = _mm512_set1_ps(1.0f + i * 1e-3f);
  REP16(D)
  const __m512 b = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
  for (int64_t k = 0; k < n; k++) {
#define F(i) a##i = _mm512_fmadd_ps(a##i, b, c);
    REP16(F)
  }
  __m512 s = _mm512_setzero_ps();
#define S(i) s = _mm512_add_ps(s, a##i);
  REP16(S)
  return _mm512_reduce_add_ps(s);
}
__attribute__((target("avx512f,avx512bf16"))) double dpbf16(int64_t n) {
#define E(i) __m512 a##i = _mm512_setzero_ps();
  REP16(E)
  const __m512bh b = (__m512bh)_mm512_set1_epi16(0x3f80);
  for (int64_t k = 0; k < n; k++) {
#define G(i) a##i = _mm512_dpbf16_ps(a##i, b, b);
    REP16(G)
  }
  __m512 s = _mm512_setzero_ps();
  REP16(S)
  return _mm512_reduce_add_ps(s);
}
__attribute__((target("avx2,fma"))) double fma256(int64_t n) {
#define H(i) __m256 a##i = _mm256_set1_ps(1.0f + i * 1e-3f);
  REP16(H)
  const __m256 b = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
  for (int64_t k = 0; k < n; k++) {
#define I(i) a##i = _mm256_fmadd_ps(a##i, b, c);
    REP16(I)
  }
  __m256 s = _mm256_setzero_ps();
#define J(i) s = _mm256_add_ps(s, a##i);
  REP16(J)
  float t[8]; _mm256_storeu_ps(t, s);
  return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
"""


def cpu_flags() -> set:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _kernel_rate(lib, fn: str, flop_per_iter: int, threads: int, seconds: float = 0.6) -> float:
    f = getattr(lib, fn)
    f.restype, f.argtypes = ctypes.c_double, [ctypes.c_int64]
    f(1000)
    n = 1 << 20
    while True:  # calibrate on one thread
        t = time.perf_counter()
        f(n)
        dt = time.perf_counter() - t
        if dt > 0.05:
            break
        n *= 4
    n = max(1, int(n * seconds / dt))
    best = 0.0
    for _ in range(3):
        ts = [threading.Thread(target=f, args=(n,)) for _ in range(threads)]  # ctypes releases the GIL
        t = time.perf_counter()
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        best = max(best, threads * n * flop_per_iter / (time.perf_counter() - t))
    return best / 1e9


def fma_peaks(threads: int) -> Dict[str, object]:
    """FP32 / bf16 FMA rate (GFLOP/s) of a register-only kernel, all ``threads`` at once."""
    flags = cpu_flags()
    out: Dict[str, object] = {"kernel": None}
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        out["note"] = "no C compiler: peak taken from large GEMMs"
        return out
    with tempfile.TemporaryDirectory() as tmp:
        src, lib_path = Path(tmp) / "fma.c", Path(tmp) / "fma.so"
        src.write_text(FMA_C)
        r = subprocess.run([cc, "-O2", "-shared", "-fPIC", str(src), "-o", str(lib_path)], capture_output=True, text=True)
        if r.returncode:
            out["note"] = "FMA kernel did not compile: peak taken from large GEMMs"
            return out
        lib = ctypes.CDLL(str(lib_path))
        if "avx512f" in flags:
            out["f32"] = _kernel_rate(lib, "fma512", 16 * 16 * 2, threads)
            out["kernel"] = "AVX-512 FMA (16 x 16 lanes)"
        elif {"avx2", "fma"} <= flags:
            out["f32"] = _kernel_rate(lib, "fma256", 16 * 8 * 2, threads)
            out["kernel"] = "AVX2 FMA"
        if "avx512_bf16" in flags:
            out["bf16"] = _kernel_rate(lib, "dpbf16", 16 * 16 * 2 * 2, threads)
            out["bf16_kernel"] = "AVX512-BF16 VDPBF16PS (16 x 32 bf16 pairs)"
    return out


def gemm_rate(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = 1e9
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def machine_info(threads: int) -> Dict[str, object]:
    flags = cpu_flags()
    info = {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "threads": threads,
            "isa": " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags),
            "python": platform.python_version(), "torch": torch.__version__, "openvino": B.openvino_version()}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError):
        pass
    info["loadavg_before"] = os.getloadavg()[0]
    log("measuring the FMA rate ...")
    one = fma_peaks(1)
    info["fma"] = fma_peaks(threads)
    info["fma_1thread"] = {k: v for k, v in one.items() if k in ("f32", "bf16")}
    log("measuring GEMM rates ...")
    info["gemm_f32"] = gemm_rate(torch.float32)
    info["gemm_bf16"] = gemm_rate(torch.bfloat16)
    torch.set_num_threads(1)
    info["gemm_f32_1thread"] = gemm_rate(torch.float32)
    info["gemm_bf16_1thread"] = gemm_rate(torch.bfloat16)
    torch.set_num_threads(threads)
    # peak: all cores at the single-core rate (the nominal peak: cores x FLOP/cycle x clock), or the measured
    # all-thread rate if higher. bf16: the best of the vector kernel and a bf16 GEMM (AMX tiles where present).
    f32 = max(info["fma"].get("f32") or 0.0, threads * (one.get("f32") or 0.0)) or \
        max(info["gemm_f32"], threads * info["gemm_f32_1thread"])
    bf16 = max(info["fma"].get("bf16") or 0.0, threads * (one.get("bf16") or 0.0), info["gemm_bf16"],
               threads * info["gemm_bf16_1thread"])
    info["peak"] = {"f32": f32, "bf16": bf16}
    return info


# -------------------------------------------------------------------------------------------------- FLOPs
def flops_per_voxel(net: SCUNet) -> float:
    """Convolution FLOPs (2 per multiply-add) of ``forward_labels`` per input voxel (exact for any input whose
    sizes are multiples of the divisor: every layer's size scales with the input)."""
    total = [0.0]

    def conv_hook(mod, inp, out):
        k = float(np.prod(mod.kernel_size))
        if isinstance(mod, torch.nn.ConvTranspose3d):
            total[0] += 2.0 * inp[0].numel() * mod.out_channels * k / mod.groups
        else:
            total[0] += 2.0 * out.numel() * (mod.in_channels / mod.groups) * k

    hooks = [m.register_forward_hook(conv_hook) for m in net.modules()
             if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    d = 2 * net.config.divisor
    try:
        with torch.no_grad():
            net.forward_labels(torch.zeros(1, net.config.in_channels, d, d, d))
    finally:
        for h in hooks:
            h.remove()
    return total[0] / d ** 3


# ------------------------------------------------------------------------------------------------- phantom
def phantom_case(cache: Path, seed: int, shape_zyx: Tuple[int, int, int], spacing) -> Tuple[Volume, Volume]:
    """(ct, labels) of a synthetic case, in RAS->LPS orientation like a NIfTI file; cached as .npy."""
    from BiSCSegmentationLib import phantom

    tag = f"phantom-{seed}-{'x'.join(map(str, shape_zyx))}-{'x'.join(f'{s:g}' for s in spacing)}"
    ct_p, lab_p = cache / f"{tag}-ct.npy", cache / f"{tag}-lab.npy"
    if ct_p.is_file() and lab_p.is_file():
        ct_a, lab_a = np.load(ct_p), np.load(lab_p)
    else:
        log(f"synthesizing the phantom {tag} (once; cached in {cache}) ...")
        lab = phantom.procedural_labels(seed, spacing=spacing, shape_zyx=shape_zyx)
        ct = phantom.synthesize_ct(lab, seed)
        ct_a, lab_a = np.ascontiguousarray(ct.array[:, ::-1, ::-1]), np.ascontiguousarray(lab.array[:, ::-1, ::-1])
        cache.mkdir(parents=True, exist_ok=True)
        np.save(ct_p, ct_a)
        np.save(lab_p, lab_a)
    nz, ny, nx = ct_a.shape
    origin = ((nx - 1) * spacing[0] / 2, (ny - 1) * spacing[1] / 2, -(nz - 1) * spacing[2] / 2)
    return Volume(ct_a, spacing, origin, RAS_TO_LPS), Volume(lab_a, spacing, origin, RAS_TO_LPS)


# -------------------------------------------------------------------------------------------------- models
def random_models(widths: Sequence[int], seed: int, out_dir: Path) -> Tuple[StageModel, StageModel]:
    """Random-weight rough/fine models of the bundled layout, saved and loaded back (so the export cache,
    keyed by the file's SHA-256, works as for real model files)."""
    torch.manual_seed(seed)
    rough = StageModel("rough", SCUNetConfig(widths=list(widths)), {"inplane_size": 128, "z_spacing": 3.0},
                       inference_window=(128, 128, 128))
    fine = StageModel("fine", SCUNetConfig(widths=list(widths)), {"spacing": [0.78, 0.78, 3.0]},
                      inference_window=(96, 192, 192))
    paths = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for m in (rough, fine):
        m.build().eval()
        # instance norm of a random network: give the affine parameters some spread, like trained ones
        with torch.no_grad():
            for mod in m.network.modules():
                if isinstance(mod, torch.nn.InstanceNorm3d) and mod.affine:
                    mod.weight.uniform_(0.5, 1.5)
                    mod.bias.uniform_(-0.2, 0.2)
        p = out_dir / f"random-{'-'.join(map(str, widths))}-s{seed}-{m.stage}.pt"
        if not p.exists():
            save_model_file(m, p)
        paths.append(p)
    return load_model_file(paths[0], stage="rough"), load_model_file(paths[1], stage="fine")


def model_sets(args, work: Path) -> List[Dict]:
    sets = []
    try:
        rough, fine = load_bundled(args.bundled)
        sets.append({"name": "bundled", "widths": rough.config.widths, "trained": True, "rough": rough, "fine": fine,
                     "paths": (rough.path, fine.path)})
    except Exception as exc:  # no bundled models yet: same architecture, random weights
        log(f"no bundled models ({str(exc)[:100]}): using random weights of the bundled size")
        rough, fine = random_models([8, 16, 32, 64], 0, work / "models")
        sets.append({"name": "bundled-size (random)", "widths": [8, 16, 32, 64], "trained": False,
                     "rough": rough, "fine": fine, "paths": (rough.path, fine.path)})
    if not args.skip_paper:
        rough, fine = random_models([32, 64, 128, 256], 0, work / "models")
        sets.append({"name": "paper-width (random)", "widths": [32, 64, 128, 256], "trained": False,
                     "rough": rough, "fine": fine, "paths": (rough.path, fine.path)})
    return sets


# --------------------------------------------------------------------------------------------------- runs
class Recorder:
    """Wraps a predictor's runners: records (stage, input shape, seconds) of each network call."""

    def __init__(self, predictor: CascadePredictor):
        self.calls: List[Tuple[str, Tuple[int, ...], float]] = []
        predictor.prepare()
        for stage, run in list(predictor._runners.items()):
            predictor._runners[stage] = self._wrap(stage, run)

    def _wrap(self, stage, run):
        def timed(x):
            t = time.perf_counter()
            out = run(x)
            self.calls.append((stage, tuple(x.shape[2:]), time.perf_counter() - t))
            return out
        return timed


def run_cascade(predictor: CascadePredictor, ct: Volume, gt_rois, fallback_rois=None
                ) -> Tuple[np.ndarray, Dict[str, float], list]:
    t = time.perf_counter()
    rough = predictor.locate(ct)
    rois = rough.rois if gt_rois is None else gt_rois
    if not rois:  # the rough stage found nothing: time the fine stage on the true kidneys' ROIs anyway
        log("  the rough stage found no kidney: ROIs from the phantom's labels")
        rois = fallback_rois
    labels = predictor.segment(ct, rois)
    return labels.array, {"total": time.perf_counter() - t}, rois


def bench_backend(mset: Dict, spec: str, ct: Volume, gt: Volume, gt_rois, runs: int, peaks: Dict,
                  fallback_rois=None) -> Dict:
    rough, fine = mset["rough"], mset["fine"]
    t = time.perf_counter()
    predictor = CascadePredictor(rough, fine, device="cpu", backend=spec)
    rec = Recorder(predictor)  # converts/compiles (or loads the cached export)
    setup = time.perf_counter() - t
    labels, _, rois = run_cascade(predictor, ct, gt_rois, fallback_rois)  # warm-up: first-shape compilation, page faults
    totals, per_stage = [], {"rough": [], "fine": []}
    shapes: Dict[str, List[Tuple[int, ...]]] = {}
    for _ in range(runs):
        rec.calls.clear()
        labels, tm, rois = run_cascade(predictor, ct, gt_rois, fallback_rois)
        totals.append(tm["total"])
        for st in per_stage:
            per_stage[st].append(sum(c[2] for c in rec.calls if c[0] == st))
            shapes[st] = [c[1] for c in rec.calls if c[0] == st]
    fpv = {"rough": flops_per_voxel(rough.network), "fine": flops_per_voxel(fine.network)}
    prec = getattr(predictor.backend, "precision", "f32")
    peak = peaks["bf16"] if prec == "bf16" else peaks["f32"]
    row = {"set": mset["name"], "backend": spec, "described": predictor.backend_name, "precision": prec,
           "setup_s": setup, "total_s": statistics.median(totals), "runs": totals, "labels": labels, "rois": len(rois),
           "roi_sizes_mm": [[round(v) for v in roi.size] for roi in rois]}
    net_total = 0.0
    for st in ("rough", "fine"):
        sec = statistics.median(per_stage[st])
        gflop = sum(float(np.prod(s)) for s in shapes.get(st, [])) * fpv[st] / 1e9
        row[st] = {"shapes": shapes.get(st, []), "seconds": sec, "gflop": gflop,
                   "gflops": gflop / sec if sec else 0.0, "pct_peak": 100.0 * gflop / sec / peak if sec else 0.0}
        net_total += sec
    row["net_s"] = net_total
    row["glue_s"] = row["total_s"] - net_total
    row["glue_share"] = row["glue_s"] / row["total_s"]
    row["gflops_all"] = (row["rough"]["gflop"] + row["fine"]["gflop"]) / net_total
    row["pct_peak_all"] = 100.0 * row["gflops_all"] / peak
    scores = kits19_case_scores(labels, gt.array)
    row.update({"kidney_dice_gt": scores["kidney_dice"], "tumor_dice_gt": scores["tumor_dice"]})
    return row


def logits_check(mset: Dict, specs: Sequence[str]) -> Dict[str, float]:
    """Max |logit difference| of each backend vs torch eager on one fine-stage block of normalised noise+shapes."""
    fine = mset["fine"]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, 32, 64, 64, generator=g)
    ref = B.TorchBackend("cpu", "f32").runner(fine)(x)
    out = {}
    for spec in specs:
        if spec == "torch":
            continue
        try:
            be = B.select_backend(spec, device="cpu")
            y = be.runner(fine)(x)
            out[spec] = float((y - ref).abs().max() / ref.abs().max())
        except Exception as exc:  # noqa: BLE001
            log(f"  logits check {spec}: {exc}")
    return out


def baseline(mset: Dict, spec: str, ct: Volume, gt: Volume) -> Dict:
    """Non-cascaded: the fine network by sliding window over the whole CT at the fine spacing."""
    fine = mset["fine"]
    predictor = CascadePredictor(mset["rough"], fine, device="cpu", backend=spec)
    rec = Recorder(predictor)
    runner = predictor._runners["fine"]
    t = time.perf_counter()
    canon, reo = canonical_view(ct)
    sp = fine.fine_spacing
    maps = [spacing_map(n, s_in, s_out) for n, s_in, s_out in
            zip(canon.array.shape, canon.spacing[::-1], sp[::-1])]
    image = CascadePredictor._normalise(resample_view(canon.array, maps, fill=-1024.0), fine)
    probs = sliding_window(fine, image, torch.device("cpu"), False, lambda f: None, runner=runner)
    del image
    back = [m.inverse(n) for m, n in zip(maps, canon.array.shape)]
    out = np.zeros(ct.array.shape, np.uint8)
    view = reo.apply(out)
    step = 16  # restore slab by slab: bounded memory
    for z0 in range(0, canon.array.shape[0], step):
        z1 = min(z0 + step, canon.array.shape[0])
        bz = AxisMap(z1 - z0, back[0].start + z0 * back[0].step, back[0].step)
        view[z0:z1] = label_argmax(resample_view(probs, [bz, back[1], back[2]], fill=None))
    total = time.perf_counter() - t
    net = sum(c[2] for c in rec.calls)
    voxels = sum(float(np.prod(c[1])) for c in rec.calls)
    gflop = voxels * flops_per_voxel(fine.network) / 1e9
    scores = kits19_case_scores(out, gt.array)
    return {"set": mset["name"], "backend": spec, "total_s": total, "net_s": net, "windows": len(rec.calls),
            "window": list(rec.calls[0][1]) if rec.calls else [], "gflop": gflop, "labels": out,
            "kidney_dice_gt": scores["kidney_dice"], "tumor_dice_gt": scores["tumor_dice"]}


def precision_dice(mset: Dict, specs: Sequence[str], cases: int, work: Path) -> Dict:
    """KiTS19 Dice (kidney, tumor) against the truth on held-out procedural phantoms (not used in training),
    per backend/precision, and the largest difference of each to the first (f32) one."""
    from BiSCSegmentationLib import phantom

    preds = {s: CascadePredictor(mset["rough"], mset["fine"], device="cpu", backend=s) for s in specs}
    scores = {s: [] for s in specs}
    for n in range(cases):
        ct, gt = phantom.make_case(5000 + n)
        for s, p in preds.items():
            try:
                lab = p.predict(ct).labels.array
            except Exception as exc:  # noqa: BLE001 - e.g. no kidney found: Dice 0
                log(f"  case {5000 + n} {s}: {type(exc).__name__}")
                lab = np.zeros_like(gt.array)
            scores[s].append(kits19_case_scores(lab, gt.array))
    out = {"cases": cases, "seeds": f"5000..{5000 + cases - 1}", "mean": {}}
    for s in specs:
        out["mean"][s] = {k: float(np.mean([c[k] for c in scores[s]])) for k in ("kidney_dice", "tumor_dice")}
    ref = specs[0]
    out["max_case_diff_vs_" + ref] = {
        s: max(abs(a[k] - b[k]) for a, b in zip(scores[s], scores[ref]) for k in ("kidney_dice", "tumor_dice"))
        for s in specs[1:]}
    return out


def agreement(a: np.ndarray, b: np.ndarray) -> Dict[str, float]:
    return {"kidney": dice(a > 0, b > 0), "tumor": dice(a == 2, b == 2), "voxels_differ": int(np.count_nonzero(a != b))}


# ------------------------------------------------------------------------------------------ child processes
def vm_hwm_mib() -> float:
    """Peak RSS of this process (VmHWM). Not ru_maxrss: Linux carries that over from the parent across
    fork + exec, so a child started by a big parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_memory(args) -> None:
    """In a fresh process: run the cascade once on a CT and print peak RSS (JSON on stdout)."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    base = vm_hwm_mib()
    rough = load_model_file(args.child_models[0], stage="rough")
    fine = load_model_file(args.child_models[1], stage="fine")
    if args.child_case == "big":
        from BiSCSegmentationLib import phantom
        sp = (0.78, 0.78, 0.5)
        lab = phantom.procedural_labels(3, spacing=sp, shape_zyx=(1000, 512, 512))
        rois = rois_from_mask(lab, fine.fine_spacing, min_component_ml=1.0)
        lut = np.array([40, 160, 110] + [0] * 253, np.int16)
        ct_a = lut[lab.array]
        geometry = (lab.origin, lab.direction)
        del lab
        yy, xx = np.ogrid[:512, :512]
        ct_a[:, ((yy - 256) / 200.0) ** 2 + ((xx - 256) / 240.0) ** 2 > 1] = -1000
        ct = Volume(ct_a, sp, *geometry)
    else:
        ct_a = np.load(args.child_case)
        sp = tuple(args.child_spacing)
        nz, ny, nx = ct_a.shape
        ct = Volume(ct_a, sp, ((nx - 1) * sp[0] / 2, (ny - 1) * sp[1] / 2, -(nz - 1) * sp[2] / 2), RAS_TO_LPS)
        rois = None
        if args.child_rois:
            from BiSCSegmentationLib.roi import load_rois
            rois = load_rois(args.child_rois)
    before = vm_hwm_mib()
    t = time.perf_counter()
    p = CascadePredictor(rough, fine, device="cpu", backend=args.child_backend)
    r = p.locate(ct)
    p.segment(ct, rois if rois is not None else r.rois)
    peak = vm_hwm_mib()
    print(json.dumps({"peak_rss_mib": peak, "after_start_mib": base, "with_ct_mib": before,
                      "ct_mib": ct.array.nbytes / 2 ** 20, "shape": list(ct.array.shape), "seconds": time.perf_counter() - t,
                      "backend": p.backend_name}))


def run_child(extra: List[str], threads: int, env=None) -> Dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--threads", str(threads)] + extra
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        return {"error": (r.stderr or r.stdout).strip().splitlines()[-1:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def cold_cli(mset: Dict, ct: Volume, rois, work: Path, threads: int, spec: str) -> Dict:
    """``bisc-segment`` in a new process: .nii.gz in -> .nii.gz out. Export cache cold (empty) and warm."""
    from BiSCSegmentationLib.roi import save_rois
    from BiSCSegmentationLib.volume import write_volume

    inp = work / "cli" / "ct.nii.gz"
    inp.parent.mkdir(parents=True, exist_ok=True)
    if not inp.exists():
        write_volume(ct, inp)
    cmd = [sys.executable, "-c", "import sys; from BiSCSegmentationLib.cli import segment_main; "
                                 "sys.exit(segment_main(sys.argv[1:]))",
           str(inp), "-o", str(work / "cli" / "labels.nii.gz"), "--force", "--device", "cpu", "--backend", spec]
    roi_file = work / "cli" / "rois.json"
    save_rois(rois, roi_file, force=True)
    cmd += ["--rough-model", str(mset["paths"][0]), "--fine-model", str(mset["paths"][1])]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = {}
    cache = work / "cli" / "export-cache"
    variants = (["end to end, cold cache", "end to end, warm cache", "end to end, warm cache "]
                if mset["trained"] else ["true ROIs (--rois), cold cache"]) + \
        ["true ROIs (--rois), warm cache", "true ROIs (--rois), warm cache "]
    for label in variants:
        if "cold" in label:
            shutil.rmtree(cache, ignore_errors=True)
        env["BISC_CACHE_DIR"] = str(cache)
        t = time.perf_counter()
        r = subprocess.run(cmd + (["--rois", str(roi_file)] if "--rois" in label else []), capture_output=True,
                           text=True, env=env)
        dt = time.perf_counter() - t
        if r.returncode:
            out[label.strip()] = {"error": r.stderr.strip().splitlines()[-1:] if r.stderr else r.returncode}
            continue
        timings = {}
        for line in r.stdout.splitlines():
            parts = line.strip().rsplit(None, 2)
            if len(parts) == 3 and parts[2] == "s":
                try:
                    timings[parts[0]] = float(parts[1])
                except ValueError:
                    pass
        backend_line = next((l for l in r.stdout.splitlines() if l.startswith("Backend")), "")
        prev = out.get(label.strip())
        if prev is None or dt < prev["wall_s"]:
            out[label.strip()] = {"wall_s": dt, "timings": timings, "backend": backend_line}
    out["note"] = ("end to end: both stages, with the bundled rough stage's own ROIs; --rois: the fine stage "
                   "only, inside the true kidneys' boxes (the rough stage is skipped)")
    return out


def training_throughput(widths=(8, 16, 32, 64), patch=(32, 96, 96), batch=2, steps=3) -> Dict[str, float]:
    """Steps/hour of a fine-stage training step (forward all 3 branches, loss, backward, Adam), fp32 vs bf16."""
    from BiSCSegmentationLib.losses import sc_unet_loss

    torch.manual_seed(0)
    net = SCUNet(SCUNetConfig(widths=list(widths))).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, *patch)
    lab = torch.randint(0, 3, (batch, *patch))
    ke, te = torch.randint(0, 2, (batch, *patch)), torch.randint(0, 2, (batch, *patch))
    out = {}
    for amp in ("fp32", "bf16"):
        times = []
        for i in range(steps + 1):
            t = time.perf_counter()
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if amp == "bf16" else torch.autocast("cpu", enabled=False)
            with ctx:
                outputs = net(x)
            loss = sc_unet_loss(outputs, lab, ke, te)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i:
                times.append(time.perf_counter() - t)
        out[amp] = 3600.0 / statistics.median(times)
    out["speedup"] = out["bf16"] / out["fp32"]
    out["setup"] = f"widths {list(widths)}, batch {batch}, patch {list(patch)}, {torch.get_num_threads()} thread(s)"
    return out


# --------------------------------------------------------------------------------------------------- report
def fmt(v, nd=2):
    return "-" if v is None else f"{v:.{nd}f}"


def markdown(res: Dict) -> str:
    m = res["machine"]
    lines = [f"# BiSC-UNet cascade benchmark", "",
             f"Machine: {m['cpu']}, {m['threads']} thread(s) used of {m['logical_cpus']} logical CPUs"
             + (f", {m['memory_gib']} GiB" if "memory_gib" in m else "") + f"; ISA: {m['isa']}.",
             f"Software: Python {m['python']}, torch {m['torch']}, OpenVINO {m['openvino'] or 'not installed'}. "
             f"Date: {res['date']}. Load average before / after: {m.get('loadavg_before', 0):.2f} / "
             f"{res.get('loadavg_after', 0):.2f} (1-minute; the benchmark's own load included).", "",
             "## Machine limits", "",
             "| measure | GFLOP/s |", "|---|---:|"]
    fma = m["fma"]
    if fma.get("f32"):
        lines.append(f"| FP32 FMA kernel ({fma['kernel']}) | {fma['f32']:.0f} |")
    if fma.get("bf16"):
        lines.append(f"| bf16 kernel ({fma['bf16_kernel']}) | {fma['bf16']:.0f} |")
    if m.get("fma_1thread", {}).get("f32"):
        lines.append(f"| FP32 FMA kernel, 1 thread | {m['fma_1thread']['f32']:.0f} |")
    lines += [f"| torch.mm fp32 2048^2 | {m['gemm_f32']:.0f} (1 thread: {m['gemm_f32_1thread']:.0f}) |",
              f"| torch.mm bf16 2048^2 | {m['gemm_bf16']:.0f} (1 thread: {m['gemm_bf16_1thread']:.0f}) |",
              "", f"% of peak below: fp32 against {m['peak']['f32']:.0f}, bf16 against {m['peak']['bf16']:.0f} GFLOP/s "
              "(the best of the bf16 kernel and the bf16 GEMM, which uses AMX where present).", ""]
    c = res["case"]
    lines += ["## Cascade, array in -> label map out (warm, median of %d runs)" % res["runs"], "",
              f"CT {c['shape']} voxels (z, y, x) at {c['spacing']} mm; ROIs: {c['roi_source']}.", "",
              "| networks | backend | total s | rough net s (GFLOP/s, % peak) | fine net s (GFLOP/s, % peak) "
              "| glue s (share) | Dice kidney/tumor vs torch | setup s |",
              "|---|---|---:|---|---|---|---|---:|"]
    for r in res["cascade"]:
        ag = r.get("agreement_vs_torch")
        agt = f"{ag['kidney']:.4f} / {ag['tumor']:.4f}" if ag else "reference"
        n_note = "" if r.get("n_runs", res["runs"]) == res["runs"] else f" ({r['n_runs']} runs)"
        lines.append(f"| {r['set']} {r['widths']} | {r['described']} | **{r['total_s']:.2f}**{n_note} | "
                     f"{r['rough']['seconds']:.2f} ({r['rough']['gflops']:.0f}, {r['rough']['pct_peak']:.0f}%) | "
                     f"{r['fine']['seconds']:.2f} ({r['fine']['gflops']:.0f}, {r['fine']['pct_peak']:.0f}%) | "
                     f"{r['glue_s']:.2f} ({100 * r['glue_share']:.0f}%) | {agt} | {r['setup_s']:.1f} |")
    firsts = list({r["set"]: r for r in reversed(res["cascade"])}.values())[::-1]
    lines += ["", "Network input shapes (z, y, x) and convolution GFLOP per cascade run: " + "; ".join(
        f"{r['set']}: rough {r['rough']['shapes']} {r['rough']['gflop']:.1f}, fine {r['fine']['shapes']} "
        f"{r['fine']['gflop']:.1f}" for r in firsts), ""]
    e = res.get("end_to_end")
    if e:
        true = next(r for r in res["cascade"] if r["set"] == e["set"] and r["backend"] == e["backend"])
        lines += ["### End to end with the bundled rough stage's own ROIs", "",
                  "| ROIs | ROI sizes mm (x, y, z) | fine voxels | total s | rough net s | fine net s | glue s | "
                  "Dice kidney / tumor vs truth |", "|---|---|---:|---:|---:|---:|---:|---|"]
        for name, r in (("true kidney boxes", true), ("bundled rough stage", e)):
            vox = sum(float(np.prod(sh)) for sh in r["fine"]["shapes"])
            lines.append(f"| {name} | {r['roi_sizes_mm']} | {vox / 1e6:.1f} M | {r['total_s']:.2f} | "
                         f"{r['rough']['seconds']:.2f} | {r['fine']['seconds']:.2f} | {r['glue_s']:.2f} | "
                         f"{r['kidney_dice_gt']:.3f} / {r['tumor_dice_gt']:.3f} |")
        lines += ["", f"({e['described']}, median of {len(e['runs'])} runs.)", ""]
    if res.get("logits"):
        lines += ["Max |logit difference| / max |logit| vs torch eager (fine network, 32x64x64 block): " + "; ".join(
            f"{s}: {k}: {v:.1e}" for s, d in res["logits"].items() for k, v in d.items()), ""]
    if res.get("dice_gt"):
        lines += ["Dice against the phantom's truth (kidney / tumor): " + "; ".join(
            f"{r['set']} {r['backend']}: {r['kidney_dice_gt']:.3f} / {r['tumor_dice_gt']:.3f}" for r in res["cascade"])
            + ("" if res["trained"] else " (random weights: meaningless)"), ""]
    if res.get("baseline"):
        b = res["baseline"]
        lines += ["## Cascade vs one sliding-window pass over the whole CT (non-cascaded baseline)", "",
                  "| | seconds | network GFLOP | Dice kidney / tumor vs truth |", "|---|---:|---:|---|",
                  f"| cascade ({b['backend']}) | {b['cascade_s']:.2f} | {b['cascade_gflop']:.0f} | "
                  f"{b['cascade_dice'][0]:.3f} / {b['cascade_dice'][1]:.3f} |",
                  f"| baseline: {b['windows']} windows of {b['window']} ({b['backend']}) | {b['total_s']:.2f} | "
                  f"{b['gflop']:.0f} | {b['kidney_dice_gt']:.3f} / {b['tumor_dice_gt']:.3f} |", "",
                  f"Cascade speed-up: **{b['speedup']:.1f}x**" + ("" if res["trained"] else
                  " (random weights: Dice meaningless)."), ""]
    pdice = res.get("precision_dice")
    if pdice:
        ref = next(k for k in pdice if k.startswith("max_case_diff_vs_"))
        lines += [f"## bf16 vs f32 accuracy ({pdice['cases']} held-out phantoms, seeds {pdice['seeds']})", "",
                  "| backend | mean kidney Dice | mean tumor Dice | largest per-case difference vs f32 |",
                  "|---|---:|---:|---:|"]
        for s, v in pdice["mean"].items():
            d = pdice[ref].get(s)
            lines.append(f"| {s} | {v['kidney_dice']:.4f} | {v['tumor_dice']:.4f} | {fmt(d, 4)} |")
        lines.append("")
    mem = res.get("memory") or {}
    if mem:
        lines += ["## Peak memory (fresh process, whole cascade)", "", "| case | CT MiB | peak RSS MiB | seconds |",
                  "|---|---:|---:|---:|"]
        for k, v in mem.items():
            if "error" in v:
                lines.append(f"| {k} | - | error: {v['error']} | - |")
            else:
                lines.append(f"| {k} {v['shape']} | {v['ct_mib']:.0f} | {v['peak_rss_mib']:.0f} | {v['seconds']:.2f} |")
        lines.append("")
    cli = res.get("cli")
    if cli:
        lines += ["## Cold command line (new process, .nii.gz in -> .nii.gz out)", "",
                  "| run | wall s | read s | load models s | rough s | fine s | write s |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for k in ("end to end, cold cache", "end to end, warm cache", "true ROIs (--rois), cold cache",
                  "true ROIs (--rois), warm cache"):
            v = cli.get(k)
            if not v:
                continue
            if "error" in v:
                lines.append(f"| {k} | error: {v['error']} | | | | | |")
                continue
            t = v["timings"]
            lines.append(f"| {k} | **{v['wall_s']:.2f}** | {fmt(t.get('read input'))} | {fmt(t.get('load models'))} | "
                         f"{fmt(t.get('rough stage'))} | {fmt(t.get('fine stage'))} | {fmt(t.get('write outputs'))} |")
        lines += ["", f"({cli['note']}; wall time includes Python start and imports.)", ""]
    tr = res.get("training")
    if tr:
        lines += ["## CPU training throughput", "", f"{tr['setup']}: fp32 {tr['fp32']:.0f} steps/hour, bf16 autocast "
                  f"{tr['bf16']:.0f} steps/hour (**{tr['speedup']:.2f}x**).", ""]
    lines += ["## Peers (published CPU figures, other machines)", "", "| tool | time per CT |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in PEERS]
    return "\n".join(lines) + "\n"


def chart(res: Dict, path: Path) -> Optional[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no chart")
        return None
    rows = res["cascade"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    names = [f"{r['set'].split(' ')[0]}\n{r['backend']}" for r in rows]
    y = np.arange(len(rows))
    parts = [("rough network", [r["rough"]["seconds"] for r in rows], "#4c72b0"),
             ("fine network", [r["fine"]["seconds"] for r in rows], "#55a868"),
             ("glue", [max(0.0, r["glue_s"]) for r in rows], "#c44e52")]
    left = np.zeros(len(rows))
    for label, vals, color in parts:
        ax1.barh(y, vals, left=left, color=color, label=label)
        left += np.array(vals)
    ax1.set_yticks(y, names, fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlabel("seconds (300x512x512 CT, warm, median)")
    ax1.legend(fontsize=8)
    ax1.set_title("Cascade time per backend")
    pk = res["machine"]["peak"]
    ax2.barh(y, [r["pct_peak_all"] for r in rows], color=["#8172b2" if r["precision"] == "bf16" else "#64b5cd"
                                                          for r in rows])
    ax2.set_yticks(y, names, fontsize=8)
    ax2.invert_yaxis()
    ax2.axvline(80, color="k", ls="--", lw=1)
    ax2.set_xlabel(f"network % of peak (fp32 {pk['f32']:.0f}, bf16 {pk['bf16']:.0f} GFLOP/s)")
    ax2.set_title("Network efficiency")
    fig.suptitle(f"{res['machine']['cpu']}, {res['machine']['threads']} threads", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _strip(o):
    if isinstance(o, dict):
        return {k: _strip(v) for k, v in o.items() if k != "labels"}
    if isinstance(o, list):
        return [_strip(v) for v in o]
    if isinstance(o, tuple):
        return [_strip(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return o


# ----------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(HERE / "results"), help="folder for results.md/.json and the chart")
    p.add_argument("--work", default=None, help="folder for the cached phantom (~250 MB) and model files "
                                                "(default: <BiSCSegmentation cache>/benchmark)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per backend (median reported)")
    p.add_argument("--threads", type=int, default=None, help="threads (default: torch's default = physical cores)")
    p.add_argument("--backends", default=None, help="comma list (default: torch, openvino, openvino-bf16 "
                                                    "where installed)")
    p.add_argument("--bundled", default=None, help="bundled model name (default: the default one)")
    p.add_argument("--quick", action="store_true", help="small CT, 1 run, no paper width/baseline/CLI/training")
    p.add_argument("--skip-paper", action="store_true")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--skip-cli", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--dice-cases", type=int, default=None, help="held-out phantoms for the f32/bf16 Dice check "
                                                                "(default 4 with trained models, else 0)")
    p.add_argument("--big", action="store_true", help="also the peak memory of a 1000-slice CT at 0.5 mm")
    # internal: child process modes
    p.add_argument("--child-case", help=argparse.SUPPRESS)
    p.add_argument("--child-models", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--child-spacing", type=float, nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--child-backend", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--child-rois", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_case:
        child_memory(args)
        return 0
    threads = torch.get_num_threads()
    if args.quick:
        args.runs, args.skip_paper, args.skip_baseline, args.skip_cli, args.skip_training = 1, True, True, True, True
    out = Path(args.out)
    work = Path(args.work) if args.work else default_cache_dir() / "benchmark"
    out.mkdir(parents=True, exist_ok=True)
    running = subprocess.run(["pgrep", "-f", "bisc-train stage"], capture_output=True, text=True).stdout.split()
    if running:
        log("WARNING: training processes are running; the figures below are not representative")
    res: Dict[str, object] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": args.runs}
    res["machine"] = machine_info(threads)
    log(f"peak fp32 {res['machine']['peak']['f32']:.0f} GFLOP/s, bf16 {res['machine']['peak']['bf16']:.0f} GFLOP/s")

    if args.backends:
        specs = [s.strip() for s in args.backends.split(",") if s.strip()]
    else:
        specs = ["torch"] + (["openvino", "openvino-bf16"] if B.openvino_version() else [])
    shape, spacing = ((96, 256, 256), (0.78, 0.78, 1.0)) if args.quick else ((300, 512, 512), (0.78, 0.78, 1.0))
    ct, gt = phantom_case(work / "phantom", 7, shape, spacing)
    sets = model_sets(args, work)
    trained = all(s["trained"] for s in sets[:1])
    res["trained"] = trained
    true_rois = rois_from_mask(gt, sets[0]["fine"].fine_spacing, min_component_ml=1.0)
    gt_rois = None if trained else true_rois
    res["case"] = {"shape": list(ct.array.shape), "spacing": list(spacing),
                   "roi_source": "the true kidneys' boxes (rois_from_mask of the phantom's labels: the box a good "
                                 "rough stage finds), so that every network and backend does the same work; the "
                                 "rough stage still runs and is timed. End to end with the bundled rough stage's "
                                 "own ROIs: see below"}

    rows = []
    for mset in sets:
        ref = None
        for spec in specs:
            log(f"cascade: {mset['name']} {mset['widths']} with {spec} ...")
            try:
                runs = min(args.runs, 2) if (spec.startswith("torch") and mset["widths"][0] >= 32) else args.runs
                r = bench_backend(mset, spec, ct, gt, true_rois, runs, res["machine"]["peak"])
                r["n_runs"] = runs
            except B.BackendError as exc:
                log(f"  skipped: {exc}")
                continue
            r["widths"] = mset["widths"]
            if spec == "torch":
                ref = r["labels"]
            elif ref is not None:
                r["agreement_vs_torch"] = agreement(r["labels"], ref)
            log(f"  total {r['total_s']:.2f} s, network {r['net_s']:.2f} s "
                f"({r['gflops_all']:.0f} GFLOP/s, {r['pct_peak_all']:.0f}% of peak), glue {r['glue_s']:.2f} s")
            rows.append(r)
    res["cascade"] = rows
    if trained:
        spec = next((s for s in specs if s == "openvino"), specs[0])
        log(f"end to end with the bundled rough stage's own ROIs ({spec}) ...")
        r = bench_backend(sets[0], spec, ct, gt, None, min(args.runs, 3), res["machine"]["peak"],
                          fallback_rois=true_rois)
        res["end_to_end"] = r
    res["dice_gt"] = True
    res["logits"] = {s["name"]: logits_check(s, specs) for s in sets}

    fast = next((s for s in specs if s.startswith("openvino") and not s.endswith("bf16")), specs[0])
    if not args.skip_baseline:
        mset = sets[0]
        log(f"baseline: sliding window over the whole CT with {fast} ...")
        b = baseline(mset, fast, ct, gt)
        casc = next(r for r in rows if r["set"] == mset["name"] and r["backend"] == fast)
        b.update({"cascade_s": casc["total_s"], "cascade_gflop": casc["rough"]["gflop"] + casc["fine"]["gflop"],
                  "cascade_dice": (casc["kidney_dice_gt"], casc["tumor_dice_gt"]),
                  "speedup": b["total_s"] / casc["total_s"]})
        log(f"  {b['total_s']:.1f} s ({b['windows']} windows): cascade {b['speedup']:.1f}x faster")
        res["baseline"] = b

    dice_cases = args.dice_cases if args.dice_cases is not None else (4 if trained and not args.quick else 0)
    ov_specs = [s for s in specs if s.startswith("openvino")]
    if dice_cases and ov_specs:
        log(f"f32 vs bf16 Dice on {dice_cases} held-out phantoms ...")
        res["precision_dice"] = precision_dice(sets[0], ov_specs, dice_cases, work)

    if not args.skip_memory:
        mset = sets[0]
        log("peak memory in a fresh process ...")
        case_file = work / "phantom" / f"phantom-7-{'x'.join(map(str, shape))}-{'x'.join(f'{s:g}' for s in spacing)}-ct.npy"
        extra = ["--child-models", str(mset["paths"][0]), str(mset["paths"][1]), "--child-backend", "auto"]
        from BiSCSegmentationLib.roi import save_rois
        save_rois(true_rois, work / "rois.json", force=True)
        roi_arg = ["--child-rois", str(work / "rois.json")]
        mem = {"phantom CT": run_child(["--child-case", str(case_file), "--child-spacing", *map(str, spacing)]
                                         + roi_arg + extra, threads)}
        if args.big:
            log("peak memory, 1000-slice CT at 0.5 mm ...")
            mem["1000-slice CT at 0.5 mm"] = run_child(["--child-case", "big"] + extra, threads)
        res["memory"] = mem

    if not args.skip_cli:
        log("cold command line ...")
        res["cli"] = cold_cli(sets[0], ct, true_rois, work, threads, "auto")

    if not args.skip_training:
        log("training throughput ...")
        res["training"] = training_throughput()

    res["loadavg_after"] = os.getloadavg()[0]
    (out / "results.json").write_text(json.dumps(_strip(res), indent=1, default=str))
    md = markdown(res)
    (out / "results.md").write_text(md)
    png = chart(res, out / "cascade_benchmark.png")
    print(md)
    log(f"wrote {out / 'results.md'}, {out / 'results.json'}" + (f", {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
