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
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from BiSCSegmentationLib import backends as B
from BiSCSegmentationLib.cascade import CascadePredictor, label_argmax, sliding_window
from BiSCSegmentationLib.resample import resample_linear
from BiSCSegmentationLib.inference_settings import InferenceSettings
from BiSCSegmentationLib.metrics import kits19_case_scores, dice
from BiSCSegmentationLib.model_file import (StageModel, default_cache_dir, load_bundled, load_model_file,
                                            save_model_file)
from BiSCSegmentationLib.network import SCUNetConfig
from BiSCSegmentationLib.resample import AxisMap, spacing_map
from BiSCSegmentationLib.roi import rois_from_mask
from BiSCSegmentationLib.volume import Volume, to_canonical

from machine_limits import flops_per_voxel, log, machine_info
from processes import RAS_TO_LPS, child_memory, cold_cli, run_child, training_throughput
from report import _strip, chart, markdown

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

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
    predictor = CascadePredictor(rough, fine, InferenceSettings(device="cpu", backend=spec))
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
    predictor = CascadePredictor(mset["rough"], fine, InferenceSettings(device="cpu", backend=spec))
    rec = Recorder(predictor)
    runner = predictor._runners["fine"]
    t = time.perf_counter()
    canon, reo = to_canonical(ct)
    sp = fine.fine_spacing
    maps = [spacing_map(n, s_in, s_out) for n, s_in, s_out in
            zip(canon.array.shape, canon.spacing[::-1], sp[::-1])]
    image = CascadePredictor._normalise(resample_linear(canon.array, maps, fill=-1024.0), fine)
    probs = sliding_window(fine, image, torch.device("cpu"), False, lambda f: None, runner=runner)
    del image
    back = [m.inverse(n) for m, n in zip(maps, canon.array.shape)]
    out = np.zeros(ct.array.shape, np.uint8)
    view = reo.apply(out)
    step = 16  # restore slab by slab: bounded memory
    for z0 in range(0, canon.array.shape[0], step):
        z1 = min(z0 + step, canon.array.shape[0])
        bz = AxisMap(z1 - z0, back[0].start + z0 * back[0].step, back[0].step)
        view[z0:z1] = label_argmax(resample_linear(probs, [bz, back[1], back[2]], fill=None))
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

    preds = {
        s: CascadePredictor(mset["rough"], mset["fine"], InferenceSettings(device="cpu", backend=s)) for s in specs
    }
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
