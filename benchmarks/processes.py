"""The cascade benchmark's measurements that need a fresh process (peak memory, the cold command line) and
the training step rate."""
from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from BiSCSegmentationLib import backends as B
from BiSCSegmentationLib.cascade import CascadePredictor
from BiSCSegmentationLib.inference_settings import InferenceSettings
from BiSCSegmentationLib.model_file import load_model_file
from BiSCSegmentationLib.network import SCUNet, SCUNetConfig
from BiSCSegmentationLib.roi import rois_from_mask
from BiSCSegmentationLib.volume import Volume

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])  # NIfTI files (KiTS19) come in RAS: the CT is flipped in x and y


def cli_timings(stdout: str) -> Dict[str, float]:
    """The "Timings:" lines bisc-segment prints ("  read input   0.35 s"), as {stage: seconds}."""
    timings = {}
    for line in stdout.splitlines():
        parts = line.strip().rsplit(None, 2)
        if len(parts) == 3 and parts[2] == "s":
            try:
                timings[parts[0]] = float(parts[1])
            except ValueError:
                pass
    return timings


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
    p = CascadePredictor(rough, fine, InferenceSettings(device="cpu", backend=args.child_backend))
    r = p.locate(ct)
    p.segment(ct, rois if rois is not None else r.rois)
    peak = vm_hwm_mib()
    print(json.dumps({"peak_rss_mib": peak, "after_start_mib": base, "with_ct_mib": before,
                      "ct_mib": ct.array.nbytes / 2 ** 20, "shape": list(ct.array.shape), "seconds": time.perf_counter() - t,
                      "backend": p.backend_name}))


def run_child(extra: List[str], threads: int, env=None) -> Dict:
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "benchmark_cascade.py"), "--threads", str(threads)] + extra
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
        timings = cli_timings(r.stdout)
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
    out = {"bf16": None}
    # without bf16 instructions PyTorch's bf16 is a scalar fallback: minutes per step, of no use for training
    for amp in ("fp32", "bf16") if B.cpu_has_fast_bf16() else ("fp32",):
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
    out["speedup"] = out["bf16"] / out["fp32"] if out["bf16"] else None
    out["setup"] = f"widths {list(widths)}, batch {batch}, patch {list(patch)}, {torch.get_num_threads()} thread(s)"
    return out
