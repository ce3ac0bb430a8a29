#!/usr/bin/env python
"""Speed side by side with the tools users would run instead (issue 21), as ratios measured in one run.

On the same CT (a synthetic 300 x 512 x 512 CT at 0.78 x 0.78 x 1 mm made in-process, and any CT files given
with ``--ct``), with the same thread count, each method once, end to end from the CT file to a label map file,
each in a fresh process (its peak RSS is that process's VmHWM):

* ``cascade_cold``: ``bisc-segment`` with the bundled default models in a new process, timed from its start
  (interpreter, imports, model load and backend compile included); its time to first voxel (everything before
  the first network call: interpreter, imports, reading the CT, model load, backend compile) from the CLI's
  own timings. Run twice: with an empty export cache (the first run ever) and with it warm (every later run);
  the warm-cache run is the one the ratios use;
* ``cascade_warm``: ``CascadePredictor.bundled(settings=InferenceSettings(device="cpu"))`` in a process that
  has already segmented the CT once: read the file, ``predict``, write the labels. Network time recorded per
  call, so the glue (everything that is not a network) is known;
* ``nnunet_fullres`` / ``nnunet_fullres_mirror``: nnU-Net v2's own ``nnUNetPredictor`` (sliding window,
  Gaussian blending, tile_step_size 0.5; without and with test-time mirroring) on nnU-Net's KiTS19
  ``3d_fullres`` plan (see ``PLAN_SOURCES``) with random weights, file in (SimpleITK) -> preprocessing (crop,
  CT normalisation, resampling to the plan's spacing) -> sliding window -> resampling back -> label file;
* ``nnunet_3mm``: the same predictor on a 3 mm isotropic plan, how TotalSegmentator's ``--fast`` runs.

nnU-Net's plans are made by nnU-Net's own planner code (``ExperimentPlanner.get_plans_for_configuration``) from
a KiTS19 fingerprint, written with a random-weight checkpoint into a temporary folder that
``nnUNetPredictor.initialize_from_trained_model_folder`` loads. If a method's sliding window would take longer
than ``--max-minutes``, its first ``--sample-tiles`` tiles are timed, the remaining tiles are replaced by
zeros (so that nnU-Net's own preprocessing, blending, resampling back and writing still run and are measured),
and their network time is added as (tiles left) x (median measured tile time): such figures are marked
``"extrapolated": true`` with how they were computed.

Needs the ``[bench]`` extra (nnunetv2); never needed by the product or CI.

    python benchmarks/compare_peers.py --max-minutes 4              # full, writes benchmarks/results/peers.*
    python benchmarks/compare_peers.py --quick --out /tmp/peers     # small CT, smoke test
    python benchmarks/compare_peers.py --markdown-only              # peers.md (+ docs table) from peers.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

METHODS = ("cascade_warm", "cascade_cold", "nnunet_fullres", "nnunet_fullres_mirror", "nnunet_3mm")
PEERS = ("nnunet_fullres", "nnunet_fullres_mirror", "nnunet_3mm")
LABELS = {
    "cascade_warm": "BiSC cascade, warm (in-process, after one warm-up)",
    "cascade_cold": "BiSC cascade, cold CLI (new process, export cache warm)",
    "cascade_cold_first": "BiSC cascade, cold CLI, first run ever (empty export cache)",
    "nnunet_fullres": "nnU-Net v2, KiTS19 3d_fullres, no mirroring",
    "nnunet_fullres_mirror": "nnU-Net v2, KiTS19 3d_fullres, 8x mirroring (default TTA)",
    "nnunet_3mm": "nnU-Net v2, 3 mm plan (TotalSegmentator --fast style), no mirroring",
}
TARGETS = {"nnunet_fullres": 20.0, "nnunet_3mm": 3.0}  # issue 21, part 5: ours >= this many times faster

# Where nnU-Net's plan numbers come from (written into peers.json).
PLAN_SOURCES = {
    "fullres": (
        "KiTS19 3d_fullres: target spacing 0.78125 mm isotropic (Isensee et al., 'Automated design of deep "
        "learning methods for biomedical image segmentation', arXiv:1904.08128 (nnU-Net, Nature Methods 2021), "
        "KiTS19 = D17; confirmed by F. Isensee in github.com/MIC-DKFZ/nnUNet/issues/230: the out-of-plane target is "
        "the 10th percentile spacing (0.5 mm) raised to the in-plane 0.78125 mm); patch 128x128x128 (paper; "
        "at most 128^3 voxels, issue #113); median shape at that spacing ~525x512x512. Topology, widths and "
        "patch size then produced by nnunetv2's own planner (ExperimentPlanner.get_plans_for_configuration, "
        "8 GB target, PlainConvUNet) for that spacing and median shape: it gives patch 128^3, 6 stages, "
        "features 32-64-128-256-320-320, strides 1,2,2,2,2,2 (5 poolings per axis, as the paper's 5,5,5), "
        "2 convs per stage, instance norm, LeakyReLU. CT normalisation: clip [-79, 304], mean 101, std 76.9 "
        "(nnU-Net's KiTS19 entry, arXiv:1908.02182)."),
    "3mm": (
        "3 mm isotropic nnU-Net v2 3d_fullres plan as TotalSegmentator's fast model (Dataset297_TotalSegmentator"
        "_total_3mm_1559subj, nnUNetTrainer_4000epochs_NoMirroring, nnUNetPlans 3d_fullres) runs. Its shipped "
        "plans.json could not be read here (no network access), so the plan is what nnunetv2's own planner "
        "makes for 3 mm spacing and KiTS19's median field of view at 3 mm (137x133x133 voxels); 3 output "
        "classes like the KiTS plan (TotalSegmentator's model has 118, which makes its export slower than "
        "this)."),
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------- nnU-Net's tile grid (pure Python)
def compute_steps(image_size: Sequence[int], patch: Sequence[int], step: float) -> List[List[int]]:
    """nnU-Net v2's ``compute_steps_for_sliding_window``: tile start positions per axis (image >= patch)."""
    assert all(i >= p for i, p in zip(image_size, patch)), "image must be padded to at least the patch size"
    assert 0 < step <= 1
    target = [p * step for p in patch]
    n = [int(math.ceil((i - p) / t)) + 1 for i, p, t in zip(image_size, patch, target)]
    steps = []
    for d in range(len(patch)):
        max_step = image_size[d] - patch[d]
        actual = max_step / (n[d] - 1) if n[d] > 1 else 99999999999
        steps.append([int(round(actual * i)) for i in range(n[d])])
    return steps


def tile_count(shape: Sequence[int], patch: Sequence[int], step: float = 0.5) -> int:
    """Tiles nnU-Net's sliding window runs over an image of ``shape`` (after resampling): the image is first
    padded to at least the patch size."""
    padded = [max(s, p) for s, p in zip(shape, patch)]
    return int(math.prod(len(s) for s in compute_steps(padded, patch, step)))


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> List[int]:
    """nnU-Net's ``compute_new_shape``: round(shape * spacing / target spacing), per axis."""
    return [int(round(s * a / b)) for s, a, b in zip(shape, spacing, target)]


def extrapolate(measured_wall_s: float, tile_times: Sequence[float], n_tiles: int) -> Dict[str, float]:
    """Seconds of a run in which only the first ``len(tile_times)`` of ``n_tiles`` tiles ran the network
    (the others returned zeros at once): the measured wall time plus (tiles left) x (median measured tile)."""
    done = len(tile_times)
    if not done:
        raise ValueError("no tile was timed")
    med = sorted(tile_times)[done // 2] if done % 2 else sum(sorted(tile_times)[done // 2 - 1:done // 2 + 1]) / 2
    left = max(0, n_tiles - done)
    return {"seconds": measured_wall_s + left * med, "tile_s": med, "tiles_timed": done, "tiles_total": n_tiles,
            "tiles_extrapolated": left, "network_s": sum(tile_times) + left * med}


# --------------------------------------------------------------------------------------- nnU-Net's plans
def _jsonable(o):
    import numpy as np
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    return o


KITS_INTENSITY = {"mean": 101.0, "std": 76.9, "percentile_00_5": -79.0, "percentile_99_5": 304.0,
                  "median": 103.0, "min": -1024.0, "max": 3071.0}
PLAN_INPUTS = {"fullres": ([0.78125] * 3, [525, 512, 512]), "3mm": ([3.0] * 3, [137, 133, 133])}


def nnunet_plan(kind: str) -> Dict:
    """The 3d_fullres configuration nnunetv2's own planner makes for ``kind`` (see PLAN_SOURCES)."""
    import numpy as np
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    p = object.__new__(ExperimentPlanner)  # the planner without a dataset on disk: its defaults, set by hand
    p.UNet_base_num_features, p.UNet_class = 32, PlainConvUNet
    p.UNet_reference_val_3d, p.UNet_reference_val_2d, p.UNet_reference_com_nfeatures = 560000000, 85000000, 32
    p.UNet_reference_val_corresp_GB, p.UNet_reference_val_corresp_bs_2d, p.UNet_reference_val_corresp_bs_3d = 8, 12, 2
    p.UNet_featuremap_min_edge_length, p.UNet_min_batch_size = 4, 2
    p.UNet_blocks_per_stage_encoder, p.UNet_blocks_per_stage_decoder = (2,) * 14, (2,) * 13
    p.UNet_max_features_2d, p.UNet_max_features_3d, p.max_dataset_covered = 512, 320, 0.05
    p.UNet_vram_target_GB, p.preprocessor_name, p.plans_identifier = 8, "DefaultPreprocessor", "nnUNetPlans"
    p.anisotropy_threshold = 3
    p.dataset_json = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "kidney": 1, "tumor": 2}}
    p.dataset_fingerprint = {"foreground_intensity_properties_per_channel": {"0": KITS_INTENSITY},
                             "spacings": [[3.0, 0.78125, 0.78125]], "median_relative_size_after_cropping": 1.0}
    spacing, median = PLAN_INPUTS[kind]
    conf = p.get_plans_for_configuration(spacing, median, "nnUNetPlans_3d_fullres", 210 * float(np.prod(median)), {})
    return _jsonable(conf)


def write_nnunet_model(kind: str, folder: Path, seed: int = 0) -> Dict:
    """A trained-model folder (dataset.json, plans.json, fold_0/checkpoint_final.pth with random weights)."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    conf = nnunet_plan(kind)
    plans = {"dataset_name": f"Dataset999_peers_{kind}", "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": PLAN_INPUTS[kind][0],
             "original_median_shape_after_transp": PLAN_INPUTS[kind][1], "image_reader_writer": "SimpleITKIO",
             "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "configurations": {"3d_fullres": conf}, "experiment_planner_used": "ExperimentPlanner",
             "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {"0": KITS_INTENSITY}}
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "kidney": 1, "tumor": 2},
               "numTraining": 1, "file_ending": ".nii.gz"}
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    a = conf["architecture"]
    torch.manual_seed(seed)
    net = get_network_from_plans(a["network_class_name"], a["arch_kwargs"], a["_kw_requires_import"], 1, 3,
                                 allow_init=True, deep_supervision=False)
    torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               folder / "fold_0" / "checkpoint_final.pth")
    return conf


# ------------------------------------------------------------------------------------------ child processes
def vm_hwm_mib() -> float:
    from processes import vm_hwm_mib as f
    return f()


def cpu_s() -> float:
    """CPU seconds (user + system) this process has used: with wall time, how much of the cores it got."""
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child_nnunet(args) -> None:
    """In a fresh process: nnU-Net's predictor, file in -> label file out; JSON on stdout."""
    import numpy as np
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from machine_limits import conv_flops

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=args.mirror,
                           device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    pred.initialize_from_trained_model_folder(args.child_model, use_folds=(0,))
    t_init = time.perf_counter() - t0
    patch = [int(v) for v in pred.configuration_manager.patch_size]
    heads = pred.label_manager.num_segmentation_heads
    state = {"n_tiles": None, "shape": None, "times": [], "stub": False, "t_loop": None, "stubbed": 0}
    budget = args.budget_s
    sample = max(1, args.sample_tiles // 2) if args.mirror else max(1, args.sample_tiles)  # a mirrored tile: 8 calls
    orig_slicers = pred._internal_get_sliding_window_slicers

    def slicers(image_size):
        s = orig_slicers(image_size)
        state["n_tiles"], state["shape"], state["t_loop"] = len(s), [int(v) for v in image_size], time.perf_counter()
        return s

    orig_tile = pred._internal_maybe_mirror_and_predict

    def tile(x):
        if state["stub"]:
            state["stubbed"] += 1
            return torch.zeros((1, heads, *x.shape[2:]), dtype=torch.float32)
        t = time.perf_counter()
        out = orig_tile(x)
        state["times"].append(time.perf_counter() - t)
        done = len(state["times"])
        left = state["n_tiles"] - done
        if done >= sample and left > 0:
            projected = (time.perf_counter() - state["t_loop"]) + left * float(np.median(state["times"]))
            if projected > budget:
                log(f"  {done} tiles timed ({np.median(state['times']):.1f} s each); the other {left} would take "
                    f"{projected / 60:.1f} min > {budget / 60:.1f}: extrapolated")
                state["stub"] = True
        return out

    pred._internal_get_sliding_window_slicers = slicers
    pred._internal_maybe_mirror_and_predict = tile

    t1 = time.perf_counter()
    img, props = SimpleITKIO().read_images([args.child_input])
    t_read = time.perf_counter() - t1
    out_trunc = str(Path(args.child_output).with_suffix("").with_suffix(""))
    pred.predict_single_npy_array(img, props, None, out_trunc, False)
    wall = time.perf_counter() - t0
    peak = vm_hwm_mib()

    # network FLOPs per tile: the net scales with its input; count on a small input of the same divisibility
    net = pred.network
    strides = pred.configuration_manager.network_arch_init_kwargs["strides"]
    div = [int(np.prod([s[d] for s in strides])) for d in range(3)]
    small = [2 * d for d in div]
    fl_small = conv_flops(net, torch.zeros(1, 1, *small))
    per_tile = fl_small * math.prod(patch) / math.prod(small)
    calls_per_tile = 8 if args.mirror else 1
    times = state["times"]
    res = {"seconds": wall, "init_s": t_init, "read_s": t_read, "peak_rss_mib": peak, "patch": patch,
           "cpu_s": cpu_s(),
           "spacing": [float(v) for v in pred.configuration_manager.spacing],
           "resampled_shape": state["shape"], "tiles": state["n_tiles"], "network_calls_per_tile": calls_per_tile,
           "gflop_per_call": per_tile / 1e9, "mirror": bool(args.mirror)}
    n = state["n_tiles"]
    res["gflop"] = per_tile * calls_per_tile * n / 1e9
    res["tiles_check"] = tile_count(state["shape"], patch, 0.5) if state["shape"] else None
    if state["stub"]:
        ex = extrapolate(wall, times, n)
        res.update({"extrapolated": True, "measured_s": wall, "seconds": ex["seconds"], "network_s": ex["network_s"],
                    "tiles_timed": ex["tiles_timed"], "tile_s": ex["tile_s"],
                    "how": f"measured {wall:.1f} s end to end with {ex['tiles_timed']} of {n} tiles through the "
                           f"network (the other {ex['tiles_extrapolated']} returned zeros, so preprocessing, "
                           f"blending, resampling back and writing were all run) + {ex['tiles_extrapolated']} x "
                           f"{ex['tile_s']:.2f} s (median measured tile{', 8 network calls each' if args.mirror else ''})"})
        res["gflops"] = per_tile * calls_per_tile * ex["tiles_timed"] / sum(times) / 1e9
    else:
        res.update({"extrapolated": False, "network_s": sum(times), "tiles_timed": len(times),
                    "tile_s": float(np.median(times)) if times else None})
        res["gflops"] = res["gflop"] / res["network_s"] if res["network_s"] else None
    res["glue_s"] = res["seconds"] - res["network_s"]
    print(json.dumps(res))


def child_cascade_warm(args) -> None:
    """In a fresh process: bundled cascade; one warm-up, then file -> predict -> label file timed."""
    import numpy as np
    import torch

    from BiSCSegmentationLib.cascade import CascadePredictor
    from BiSCSegmentationLib.inference_settings import InferenceSettings
    from BiSCSegmentationLib.volume import read_volume, write_volume
    from benchmark_cascade import Recorder
    from machine_limits import flops_per_voxel

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    p = CascadePredictor.bundled(settings=InferenceSettings(device="cpu"))
    rec = Recorder(p)  # prepares (converts/compiles) both stages
    setup = time.perf_counter() - t0
    out = Path(args.child_output)

    def once():
        t = time.perf_counter()
        ct = read_volume(args.child_input)
        t_read = time.perf_counter() - t
        r = p.predict(ct)
        t_pred = time.perf_counter() - t - t_read
        labels = r.labels.with_array(np.asarray(r.labels.array).astype(np.uint8, copy=False))
        write_volume(labels, out, force=True)
        return time.perf_counter() - t, t_read, t_pred, r

    once()  # warm-up
    rec.calls.clear()
    total, t_read, t_pred, r = once()
    fpv = {"rough": flops_per_voxel(p.rough_model.network), "fine": flops_per_voxel(p.fine_model.network)}
    net_s = sum(c[2] for c in rec.calls)
    gflop = sum(float(np.prod(c[1])) * fpv[c[0]] for c in rec.calls) / 1e9
    print(json.dumps({"seconds": total, "read_s": t_read, "predict_s": t_pred, "write_s": total - t_read - t_pred,
                      "network_s": net_s, "glue_s": total - net_s, "glue_share": (total - net_s) / total,
                      "glue_share_predict_only": (t_pred - net_s) / t_pred, "gflop": gflop,
                      "gflops": gflop / net_s if net_s else None, "setup_s": setup, "backend": p.backend_name,
                      "calls": [[c[0], list(c[1]), c[2]] for c in rec.calls], "rois": len(r.rois),
                      "peak_rss_mib": vm_hwm_mib(), "cpu_s_process": cpu_s(), "extrapolated": False}))


CLI_WRAPPER = ("import sys, json; from BiSCSegmentationLib.cli import segment_main\n"
               "rc = segment_main(sys.argv[1:])\n"
               "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')]\n"
               "print('PEAKRSS ' + (hwm[0].split()[1] if hwm else '0'), file=sys.stderr)\n"
               "import resource; u = resource.getrusage(resource.RUSAGE_SELF)\n"
               "print('CPUS ' + str(u.ru_utime + u.ru_stime), file=sys.stderr)\n"
               "sys.exit(rc)")


def cascade_cold(ct_file: Path, work: Path, threads: int, env: Dict[str, str], cache: Path) -> Dict:
    """``bisc-segment`` in a new process with the bundled default models; wall time from before its start."""
    out = work / "cli-labels.nii.gz"
    cmd = [sys.executable, "-c", CLI_WRAPPER, str(ct_file), "-o", str(out), "--force", "--device", "cpu"]
    e = dict(env, BISC_CACHE_DIR=str(cache))
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=e)
    wall = time.perf_counter() - t
    if r.returncode:
        return {"error": (r.stderr or r.stdout).strip().splitlines()[-3:]}
    from processes import cli_timings

    timings = cli_timings(r.stdout)
    peak = next((float(l.split()[1]) / 1024 for l in r.stderr.splitlines() if l.startswith("PEAKRSS")), None)
    backend = next((l.split(":", 1)[1].strip() for l in r.stdout.splitlines() if l.startswith("Backend")), "")
    cpu = next((float(l.split()[1]) for l in r.stderr.splitlines() if l.startswith("CPUS")), None)
    res = {"seconds": wall, "timings": timings, "peak_rss_mib": peak, "backend": backend, "cpu_s": cpu,
           "extrapolated": False}
    if "total" in timings:
        startup = wall - timings["total"]  # interpreter start + imports (before run_segment's clock starts)
        res["startup_s"] = startup
        # imports + model load + compile; "load models" is the part of it the CT read (run alongside) did not hide
        res["cold_start_s"] = startup + timings.get("load models", 0.0)
        res["time_to_first_voxel_s"] = res["cold_start_s"] + timings.get("read input", 0.0)
        res["cold_start_share"] = res["cold_start_s"] / wall
        res["time_to_first_voxel_share"] = res["time_to_first_voxel_s"] / wall
    return res


def run_child(mode: str, extra: List[str], threads: int, env: Dict[str, str]) -> Dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--threads", str(threads)] + extra
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if r.returncode:
        log(r.stderr[-3000:])
        return {"error": (r.stderr or r.stdout).strip().splitlines()[-3:]}
    for line in r.stderr.splitlines():
        if line.startswith("  ") and "tiles timed" in line:
            log(line)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = wall
    return res


# ---------------------------------------------------------------------------------------------- the report
def fmt_s(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def summarize(case: Dict) -> Dict:
    """Ratios (peer seconds / our seconds) against the warm cascade and the cold CLI, and the targets."""
    m = case["methods"]
    out = {"ratios": {}, "ratios_cold": {}, "ratios_cold_first_run": {}}
    for key, base in (("ratios", "cascade_warm"), ("ratios_cold", "cascade_cold"),
                      ("ratios_cold_first_run", "cascade_cold_first")):
        b = m.get(base, {}).get("seconds")
        for peer in PEERS:
            s = m.get(peer, {}).get("seconds")
            out[key][peer] = (s / b) if (s and b) else None
    return out


def targets(res: Dict) -> List[Dict]:
    """Issue 21's targets, judged on the phantom case's measured figures."""
    case = res["cases"][0]
    m, rows = case["methods"], []
    for peer, goal in TARGETS.items():
        for key, label in (("ratios", "warm"), ("ratios_cold", "cold CLI")):
            r = case[key].get(peer)
            rows.append({"target": f">= {goal:g}x faster than {LABELS[peer]} ({label})", "value":
                         None if r is None else f"{r:.1f}x", "met": None if r is None else r >= goal,
                         "extrapolated": bool(m.get(peer, {}).get("extrapolated"))})
    cold = m.get("cascade_cold", {})
    if "time_to_first_voxel_share" in cold:
        rows.append({"target": "cold start (time to first voxel: interpreter, imports, read, model load, compile) "
                               "<= 15% of the CLI run", "value": f"{100 * cold['time_to_first_voxel_share']:.0f}% "
                               f"({100 * cold['cold_start_share']:.0f}% without reading the CT)",
                     "met": cold["time_to_first_voxel_share"] <= 0.15, "extrapolated": False})
    warm = m.get("cascade_warm", {})
    if "glue_share" in warm:
        rows.append({"target": "glue (everything not a network, file read and write included) <= 10% of the warm "
                               "total", "value": f"{100 * warm['glue_share']:.0f}% ({100 * warm['glue_share_predict_only']:.0f}%"
                               " of predict() alone)", "met": warm["glue_share"] <= 0.10, "extrapolated": False})
    peak = res.get("machine", {}).get("peak", {}).get("f32")
    if warm.get("gflops") and peak:
        rows.append({"target": "networks >= 80% of the measured FP32 peak", "value":
                     f"{100 * warm['gflops'] / peak:.0f}% ({warm['gflops']:.0f} of {peak:.0f} GFLOP/s)",
                     "met": warm["gflops"] / peak >= 0.8, "extrapolated": False})
    isa = str(res.get("machine", {}).get("isa", ""))
    if warm.get("backend"):
        has_bf16 = "avx512_bf16" in isa or "amx_bf16" in isa
        used = "bfloat16" in warm["backend"] or "bf16" in warm["backend"]
        rows.append({"target": "bf16 used automatically where the CPU has bf16 instructions", "value":
                     f"CPU bf16: {'yes' if has_bf16 else 'no'} ({isa}); default backend: {warm['backend']}",
                     "met": (used if has_bf16 else None), "extrapolated": False})
    return rows


def markdown(res: Dict) -> str:
    mach = res.get("machine", {})
    lines = ["# Speed against the tools users would run instead", "",
             f"Machine: {mach.get('cpu', '?')}, {res.get('threads')} thread(s) for every method "
             f"(torch.set_num_threads, OMP/MKL_NUM_THREADS) of {mach.get('logical_cpus', '?')} logical CPUs; "
             f"ISA: {mach.get('isa', '?')}. Software: Python {res.get('versions', {}).get('python', '?')}, "
             f"torch {res.get('versions', {}).get('torch', '?')}, nnunetv2 {res.get('versions', {}).get('nnunetv2', '?')}, "
             f"OpenVINO {res.get('versions', {}).get('openvino', '-')}. Date: {res.get('date', '?')}. "
             f"Load average (1 min) before / after: {_la(res, 'loadavg_before')} / {_la(res, 'loadavg_after')}" + (" (the machine was shared: absolute seconds are "
                                                       "inflated, ratios less so)" if res.get("loadavg_before", [0])[0] > 1.5 else "") + ".", ""]
    for case in res["cases"]:
        lines += [f"## {case['name']}", "",
                  f"CT {case.get('shape')} voxels (z, y, x) at {case.get('spacing')} mm; file to label-map file, "
                  f"one run each, every method in a fresh process (peak RSS = its VmHWM).", "",
                  "| method | seconds | peak RSS GiB | network GFLOP | network GFLOP/s | x our warm | x our cold CLI | note |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        m = case["methods"]
        warm_s = m.get("cascade_warm", {}).get("seconds")
        cold_s = m.get("cascade_cold", {}).get("seconds")
        for key in ("cascade_warm", "cascade_cold", "cascade_cold_first") + PEERS:
            r = m.get(key)
            if not r:
                continue
            if "error" in r:
                lines.append(f"| {LABELS[key]} | error | | | | | | {' '.join(map(str, r['error']))[:120]} |")
                continue
            ex = r.get("extrapolated")
            sec = ("~" if ex else "") + fmt_s(r["seconds"]) + (" **(extrapolated)**" if ex else "")
            rss = f"{r['peak_rss_mib'] / 1024:.2f}" if r.get("peak_rss_mib") else "-"
            gf = f"{r['gflop']:.0f}" if r.get("gflop") is not None else "-"
            gfs = f"{r['gflops']:.0f}" if r.get("gflops") else "-"
            rw = f"{r['seconds'] / warm_s:.1f}" if warm_s else "-"
            rc = f"{r['seconds'] / cold_s:.1f}" if cold_s else "-"
            note = ""
            if key.startswith("nnunet"):
                note = (f"{r['tiles']} tiles of {'x'.join(map(str, r['patch']))} at {r['spacing'][0]:g} mm "
                        f"(image {'x'.join(map(str, r['resampled_shape']))}), {r['gflop_per_call']:.0f} GFLOP per "
                        f"network call{', 8 calls per tile' if r.get('mirror') else ''}")
                if ex:
                    note += f"; {r['how']}"
            elif key == "cascade_warm":
                note = (f"network {fmt_s(r['network_s'])} s, glue {fmt_s(r['glue_s'])} s "
                        f"({100 * r['glue_share']:.0f}%; read {fmt_s(r['read_s'])} s, write {fmt_s(r['write_s'])} s); "
                        f"{r.get('backend', '')}")
            elif "time_to_first_voxel_s" in r:
                t = r["timings"]
                note = (f"time to first voxel {fmt_s(r['time_to_first_voxel_s'])} s "
                        f"({100 * r['time_to_first_voxel_share']:.0f}%): start + imports {fmt_s(r['startup_s'])} s, "
                        f"read {fmt_s(t.get('read input'))} s, load models {fmt_s(t.get('load models'))} s")
                gf = gfs = "as warm"
            lines.append(f"| {LABELS[key]} | {sec} | {rss} | {gf} | {gfs} | {rw} | {rc} | {note} |")
        lines += ["", "Ratios (peer seconds / ours; > 1: ours faster): " + "; ".join(
            f"{p}: warm {_r(case['ratios'].get(p))}, cold CLI {_r(case['ratios_cold'].get(p))}" for p in PEERS), ""]
    if res["cases"]:
        lines += ["## Issue 21's targets (phantom case)", "", "| target | measured | met |", "|---|---|---|"]
        for t in targets(res):
            met = "-" if t["met"] is None else ("yes" if t["met"] else "**no**")
            lines.append(f"| {t['target']} | {t['value'] or '-'}{' (extrapolated peer time)' if t['extrapolated'] else ''} | {met} |")
        lines += ["", "Not measured here: the 1000-slice CT's peak RSS (benchmarks/benchmark_memory.py and "
                      "benchmark_cascade.py --big measure it) and the bf16-vs-fp32 Dice (benchmark_cascade.py "
                      "--dice-cases).", ""]
    lines += ["## nnU-Net plans", ""]
    for kind, src in res.get("plan_sources", {}).items():
        plan = res.get("plans", {}).get(kind, {})
        a = plan.get("architecture", {}).get("arch_kwargs", {})
        lines.append(f"- **{kind}**: patch {plan.get('patch_size')}, spacing {plan.get('spacing')} mm, "
                     f"{a.get('n_stages')} stages, features {a.get('features_per_stage')}, strides "
                     f"{a.get('strides')}. Source: {src}")
    lines += ["", "Extrapolated figures: the first tiles of nnU-Net's sliding window were run and timed; the "
                  "others returned zeros at once, so nnU-Net's own preprocessing (resampling to its spacing), "
                  "Gaussian blending, resampling back and writing all ran for real and are in the measured part; "
                  "the skipped tiles' network time is added as (tiles skipped) x (median measured tile time). "
                  "Network GFLOP: 3D convolutions and transposed convolutions, 2 FLOP per multiply-add, counted "
                  "with forward hooks (benchmarks/machine_limits.py conv_flops); GFLOP/s over network time only.", ""]
    return "\n".join(lines)


def _la(res: Dict, key: str) -> str:
    v = res.get(key)
    return f"{v[0]:.2f}" if v else "?"


def _r(v) -> str:
    return "-" if v is None else f"{v:.1f}x"


def chart(res: Dict, path: Path) -> Optional[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    case = res["cases"][0]
    keys = [k for k in ("cascade_warm", "cascade_cold") + PEERS if case["methods"].get(k, {}).get("seconds")]
    vals = [case["methods"][k]["seconds"] for k in keys]
    fig, ax = plt.subplots(figsize=(11, 4.4))
    colors = ["#55a868" if k.startswith("cascade") else "#4c72b0" for k in keys]
    bars = ax.barh(range(len(keys)), vals, color=colors)
    for b, k in zip(bars, keys):
        if case["methods"][k].get("extrapolated"):
            b.set_hatch("//")
            b.set_alpha(0.6)
    ax.set_xscale("log")
    ax.set_yticks(range(len(keys)), [LABELS[k].replace(", ", "\n", 1) for k in keys], fontsize=8)
    ax.invert_yaxis()
    warm = case["methods"].get("cascade_warm", {}).get("seconds")
    for i, v in enumerate(vals):
        ex = case["methods"][keys[i]].get("extrapolated")
        ax.text(v, i, f" {fmt_s(v)} s" + (f" ({v / warm:.{0 if v / warm >= 10 else 1}f}x warm)" if warm and i else "") + (" extrapolated" if ex else ""),
                va="center", fontsize=8)
    ax.set_xlabel(f"seconds, file to label map, log scale; {res.get('threads')} threads; hatched: extrapolated")
    ax.set_title(case["name"], fontsize=9)
    ax.set_xlim(right=max(vals) * 15)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def docs_section(res: Dict) -> str:
    """The table for docs/performance.md (between markers), generated from peers.json."""
    case = res["cases"][0]
    m = case["methods"]
    rows = ["| method | seconds | peak RSS GiB | network GFLOP/s | peer / our warm | peer / our cold CLI |",
            "|---|---:|---:|---:|---:|---:|"]
    for key in ("cascade_warm", "cascade_cold") + PEERS:
        r = m.get(key)
        if not r or "error" in r:
            continue
        ex = r.get("extrapolated")
        rows.append(f"| {LABELS[key]} | {'~' if ex else ''}{fmt_s(r['seconds'])}{' (extrapolated)' if ex else ''} | "
                    f"{r['peak_rss_mib'] / 1024:.2f} | {fmt_s(r.get('gflops')) if r.get('gflops') else '-'} | "
                    f"{_r(case['ratios'].get(key)) if key in PEERS else '-'} | "
                    f"{_r(case['ratios_cold'].get(key)) if key in PEERS else '-'} |")
    mach = res.get("machine", {})
    head = (f"{case['name']}, {mach.get('cpu', '?')} ({mach.get('isa', '?')}), {res.get('threads')} threads, load "
            f"average {_la(res, 'loadavg_before')} before / {_la(res, 'loadavg_after')} after, "
            f"{res.get('date', '?')}. Generated by `benchmarks/compare_peers.py --markdown-only` from "
            f"`benchmarks/results/peers.json`; details and sources in `benchmarks/results/peers.md`.")
    return "\n".join([head, ""] + rows)


DOCS_BEGIN, DOCS_END = "<!-- peers table: begin -->", "<!-- peers table: end -->"


def update_docs(res: Dict, doc: Path) -> bool:
    if not doc.is_file():
        return False
    text = doc.read_text()
    if DOCS_BEGIN not in text or DOCS_END not in text:
        return False
    a, b = text.index(DOCS_BEGIN) + len(DOCS_BEGIN), text.index(DOCS_END)
    doc.write_text(text[:a] + "\n" + docs_section(res) + "\n" + text[b:])
    return True


def write_reports(res: Dict, out: Path, docs: Optional[Path] = REPO / "docs" / "performance.md") -> None:
    (out / "peers.md").write_text(markdown(res))
    png = chart(res, out / "peers.png")
    if docs is not None and update_docs(res, docs):
        log(f"updated {docs}")
    log(f"wrote {out / 'peers.md'}" + (f", {png}" if png else ""))


# -------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(HERE / "results"), help="folder for peers.json/.md/.png")
    p.add_argument("--ct", action="append", default=[], help="also a CT file (NIfTI, NRRD, ...); repeatable")
    p.add_argument("--threads", type=int, default=None, help="threads for every method (default: torch's default)")
    p.add_argument("--max-minutes", type=float, default=4.0,
                   help="per nnU-Net method: if its sliding window would take longer, extrapolate (default 4)")
    p.add_argument("--sample-tiles", type=int, default=2, help="tiles timed before extrapolating (default 2; with "
                                                               "mirroring half as many, at least 1: 8 calls each)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list of " + ", ".join(METHODS))
    p.add_argument("--quick", action="store_true", help="96 x 256 x 256 phantom, no machine peak (smoke test)")
    p.add_argument("--skip-peak", action="store_true", help="do not measure the machine's FMA/GEMM peak")
    p.add_argument("--work", default=None, help="temporary folder (default: a new one, removed at the end)")
    p.add_argument("--markdown-only", action="store_true", help="regenerate peers.md/.png and docs from peers.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-model", help=argparse.SUPPRESS)
    p.add_argument("--child-input", help=argparse.SUPPRESS)
    p.add_argument("--child-output", help=argparse.SUPPRESS)
    p.add_argument("--mirror", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--budget-s", type=float, default=1e9, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def versions() -> Dict[str, Optional[str]]:
    from importlib import metadata
    out = {"python": platform.python_version()}
    for pkg in ("torch", "nnunetv2", "dynamic_network_architectures", "openvino", "SimpleITK", "numpy", "scipy",
                "scikit-image", "bisc-segmentation"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if args.markdown_only:
        res = json.loads((out / "peers.json").read_text())
        write_reports(res, out)
        return 0
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = args.threads or torch.get_num_threads()
    if args.child:
        args.threads = threads
        {"nnunet": child_nnunet, "cascade-warm": child_cascade_warm}[args.child](args)
        return 0

    from BiSCSegmentationLib.volume import read_volume, write_volume
    from benchmark_cascade import phantom_case
    from machine_limits import cpu_flags, cpu_name, machine_info
    from BiSCSegmentationLib.model_file import default_cache_dir

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix="bisc-peers-") if args.work is None else None
    work = Path(args.work) if args.work else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), nnUNet_def_n_proc=str(threads),
               nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "pre"), nnUNet_results=str(work / "res"),
               PYTHONPATH=os.pathsep.join([str(HERE)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    res: Dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": threads,
                 "loadavg_before": list(os.getloadavg()), "versions": versions(), "max_minutes": args.max_minutes,
                 "sample_tiles": args.sample_tiles, "plan_sources": PLAN_SOURCES}
    running = subprocess.run(["pgrep", "-f", "bisc-train"], capture_output=True, text=True).stdout.split()
    res["other_training_processes"] = len(running)
    if args.quick or args.skip_peak:
        flags = cpu_flags()
        res["machine"] = {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "threads": threads,
                          "isa": " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)}
    else:
        res["machine"] = machine_info(threads)
    res["machine"]["isa_flags_all"] = sorted(f for f in cpu_flags() if f.startswith(("avx", "fma", "amx", "sse4")))

    # nnU-Net model folders (random weights) in the temporary folder
    plans = {}
    model_dirs = {}
    if any(m.startswith("nnunet") for m in methods):
        os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
        for kind in ("fullres", "3mm"):
            model_dirs[kind] = work / f"nnunet-{kind}" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
            plans[kind] = write_nnunet_model(kind, model_dirs[kind])
            log(f"nnU-Net {kind} plan: patch {plans[kind]['patch_size']}, spacing {plans[kind]['spacing']}, "
                f"features {plans[kind]['architecture']['arch_kwargs']['features_per_stage']}")
    res["plans"] = plans

    cases = []
    shape, spacing = ((96, 256, 256), (0.78, 0.78, 1.0)) if args.quick else ((300, 512, 512), (0.78, 0.78, 1.0))
    ct, _ = phantom_case(default_cache_dir() / "benchmark" / "phantom", 7, shape, spacing)
    f = work / "phantom-ct.nii.gz"
    write_volume(ct, f)
    cases.append({"name": f"phantom {shape[2]}x{shape[1]}x{shape[0]} (x, y, z) at {spacing[0]}x{spacing[1]}x{spacing[2]} mm",
                  "file": f, "shape": list(shape), "spacing": list(spacing)})
    del ct
    for c in args.ct:
        v = read_volume(c)
        cases.append({"name": Path(c).name, "file": Path(c), "shape": list(v.array.shape), "spacing": list(v.spacing)})
        del v

    budget = args.max_minutes * 60
    for case in cases:
        log(f"== {case['name']}")
        ms: Dict[str, Dict] = {}
        ctf = case["file"]
        if "cascade_cold" in methods:
            cache = work / "export-cache"
            log("cascade, cold CLI (empty export cache) ...")
            ms["cascade_cold_first"] = cascade_cold(ctf, work, threads, env, cache)
            log(f"  {ms['cascade_cold_first'].get('seconds', 0):.1f} s")
            log("cascade, cold CLI (export cache warm) ...")
            ms["cascade_cold"] = cascade_cold(ctf, work, threads, env, cache)
            log(f"  {ms['cascade_cold'].get('seconds', 0):.1f} s")
        if "cascade_warm" in methods:
            log("cascade, warm ...")
            ms["cascade_warm"] = run_child("cascade-warm", ["--child-input", str(ctf), "--child-output",
                                                            str(work / "warm-labels.nii.gz")], threads, env)
            log(f"  {ms['cascade_warm'].get('seconds', 0):.1f} s")
        for key, kind, mirror in (("nnunet_3mm", "3mm", False), ("nnunet_fullres", "fullres", False),
                                  ("nnunet_fullres_mirror", "fullres", True)):
            if key not in methods:
                continue
            log(f"{key} ...")
            extra = ["--child-model", str(model_dirs[kind]), "--child-input", str(ctf), "--child-output",
                     str(work / f"{key}.nii.gz"), "--budget-s", str(budget), "--sample-tiles", str(args.sample_tiles)]
            ms[key] = run_child("nnunet", extra + (["--mirror"] if mirror else []), threads, env)
            r = ms[key]
            log(f"  {r.get('seconds', 0):.1f} s" + (" (extrapolated)" if r.get("extrapolated") else "") +
                (f", {r['tiles']} tiles" if "tiles" in r else ""))
        case["methods"] = ms
        case.update(summarize(case))
        case["file"] = str(case["file"]) if case["file"].parent != work else "(in-process phantom, temporary file)"
    res["cases"] = cases
    res["loadavg_after"] = list(os.getloadavg())
    first = cases[0]
    res["ratios"], res["ratios_cold"] = first["ratios"], first["ratios_cold"]
    res["ratios_cold_first_run"] = first["ratios_cold_first_run"]
    res["targets"] = targets(res)
    (out / "peers.json").write_text(json.dumps(res, indent=1, default=str))
    write_reports(res, out, None if args.quick else REPO / "docs" / "performance.md")
    print(markdown(res))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
