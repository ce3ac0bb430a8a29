"""Peak memory and time of ``bisc-segment`` on a large CT (issue #17): an int16 1100 x 512 x 512 CT by default.

The CT is synthesised (no patient data needed): a ``bisc-phantom`` case (seed ``--seed``) interpolated to
0.8 mm slices and lengthened with its kidney-free ends to ``--slices``, written as an uncompressed int16 NIfTI
(RAS, like KiTS19) into ``--work``. ``bisc-segment`` then runs in a fresh process with the bundled models; the child
reports its own peak RSS (``VmHWM``: a child's ``ru_maxrss`` on Linux starts from its parent's peak, so it
would report this process's synthesis). ``--profile`` also samples the child's RSS every few milliseconds and
prints the Python stack at its peak (where the memory goes).

    .venv/bin/python benchmarks/benchmark_memory.py                       # int16: 1.8-1.9 GiB (was 2.13-2.16)
    .venv/bin/python benchmarks/benchmark_memory.py --dtype rescaled      # 2.55 GiB (was 3.03)
    .venv/bin/python benchmarks/benchmark_memory.py --slices 300 --profile

10-40 s and up to the measured peak of memory per run; run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])

# Runs in the child: bisc-segment's own entry point, then this process's peak RSS as JSON into the file named
# by argv[1]. With --profile a thread samples RSS and keeps the main thread's stack at the highest sample.
CHILD = r"""
import json, sys, threading, time, traceback
result_path, profile, argv = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
stop = threading.Event()
peak = {"rss": 0, "stack": ""}
phases = {}  # innermost BiSCSegmentationLib function -> highest RSS seen while it ran
def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (__import__("os").sysconf("SC_PAGE_SIZE") // 1024)
def sample(main_id):
    while not stop.is_set():
        r = rss_kib()
        frame = sys._current_frames().get(main_id)
        f = frame
        while f is not None and "BiSCSegmentationLib" not in f.f_code.co_filename:
            f = f.f_back
        if f is not None:
            key = f.f_code.co_filename.rsplit("/", 1)[-1] + ":" + f.f_code.co_name
            phases[key] = max(phases.get(key, 0), r)
        if r > peak["rss"]:
            peak.update(rss=r, stack="".join(traceback.format_stack(frame)[-8:]) if frame else "")
        time.sleep(0.002)
sampler = threading.Thread(target=sample, args=(threading.main_thread().ident,), daemon=True)
if profile:
    sampler.start()
from BiSCSegmentationLib.cli import segment_main
t = time.perf_counter()
code = segment_main(argv)
wall = time.perf_counter() - t
stop.set()
if profile:
    sampler.join()
hwm = 0.0
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        hwm = float(line.split()[1]) / 1024
open(result_path, "w").write(json.dumps({"exit": code, "peak_rss_mib": hwm, "seconds": wall, "sampled_peak_mib": peak["rss"] / 1024,
                  "stack_at_peak": peak["stack"], "phases_mib": {k: v / 1024 for k, v in phases.items()}}))
"""


def _source_positions(n_out: int, n_src: int, step: float, band: int = 4) -> np.ndarray:
    """Source slice position of each output slice: the case in the middle at ``step`` source slices per output
    slice, and beyond it the case's outer ``band`` slices (no kidney there) back and forth, as more body."""
    centre = (n_out - 1) / 2.0 - (n_src - 1) / 2.0 / step
    pos = (np.arange(n_out) - centre) * step
    for lo, sign in ((0.0, -1.0), (n_src - 1.0, 1.0)):
        out = (pos - lo) * sign > 0
        d = np.abs(pos[out] - lo) % (2 * (band - 1))
        pos[out] = lo - sign * np.minimum(d, 2 * (band - 1) - d)
    return pos


def synthesize(path: Path, slices: int, size: int, z_spacing: float, seed: int, dtype: str = "int16") -> dict:
    """Write the synthetic CT to ``path`` (int16 NIfTI); returns its description: the bisc-phantom case of
    ``seed`` at 3 mm slices, interpolated to ``z_spacing`` and lengthened to ``slices`` with its kidney-free
    ends, in-plane cropped or padded (air) to ``size``."""
    import SimpleITK as sitk
    from BiSCSegmentationLib.phantom import make_case

    case, _ = make_case(seed, spacing=(0.78, 0.78, 3.0))
    src = np.asarray(case.array, dtype=np.float32)  # canonical (z: inferior -> superior, y, x), identity direction
    ny, nx = src.shape[1:]
    pos = _source_positions(slices, src.shape[0], z_spacing / 3.0)
    ct = np.full((slices, size, size), -1000, np.int16)
    oy, ox = (size - ny) // 2, (size - nx) // 2
    dst = (slice(max(0, oy), max(0, oy) + min(ny, size)), slice(max(0, ox), max(0, ox) + min(nx, size)))
    crop = (slice(max(0, -oy), max(0, -oy) + min(ny, size)), slice(max(0, -ox), max(0, -ox) + min(nx, size)))
    for z, p in enumerate(pos):
        i = int(np.floor(p))
        j, w = min(i + 1, src.shape[0] - 1), p - i
        ct[(z,) + dst] = np.rint((1 - w) * src[(i,) + crop] + w * src[(j,) + crop]).astype(np.int16)
    del src
    # stored like a NIfTI (RAS): x and y flipped with respect to LPS
    stored = (ct[:, ::-1, ::-1] + 1024).astype(np.uint16) if dtype == "rescaled" else ct[:, ::-1, ::-1].astype(dtype)
    image = sitk.GetImageFromArray(stored)
    del ct
    sp = (0.78, 0.78, float(z_spacing))
    image.SetSpacing(sp)
    image.SetDirection(tuple(RAS_TO_LPS.ravel()))
    sitk.WriteImage(image, str(path), False)
    if dtype == "rescaled":  # HU = stored - 1024, as many scanners write it: SimpleITK reads float32
        with open(path, "r+b") as f:
            f.seek(112)
            f.write(struct.pack("<ff", 1.0, -1024.0))
    return {"shape_zyx": [slices, size, size], "spacing_xyz_mm": list(sp), "dtype": dtype,
            "ct_mib": slices * size * size * (4 if dtype == "rescaled" else np.dtype(dtype).itemsize) / 2 ** 20}


def run_once(ct_path: Path, out: Path, extra, profile: bool, threads: int) -> dict:
    result = out.with_name("result.json")
    result.unlink(missing_ok=True)
    cmd = [sys.executable, "-c", CHILD, str(result), "1" if profile else "0", str(ct_path), "-o", str(out),
           "--force", "--quiet"] + list(extra)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    try:
        res = json.loads(result.read_text())
    except (OSError, ValueError):
        return {"error": r.stderr.strip()[-2000:], "returncode": r.returncode}
    res["wall_s_with_start"] = time.perf_counter() - t
    if res["exit"]:
        res["error"] = r.stderr.strip()[-2000:]
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, default=1100)
    p.add_argument("--size", type=int, default=512, help="in-plane size (default 512)")
    p.add_argument("--z-spacing", type=float, default=0.8, help="slice spacing in mm (default 0.8)")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--dtype", default="int16", choices=("int16", "float32", "rescaled"),
                   help="voxels of the file: int16 HU, float32 HU, or rescaled (uint16 HU + 1024 with scl_inter -1024 in "
                        "the header, as many scanners write it; read as float32)")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the child (default: unset)")
    p.add_argument("--work", default="/tmp/bisc-memory-benchmark", help="folder for the CT and labels")
    p.add_argument("--profile", action="store_true", help="print the child's Python stack at its RSS peak")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--input", metavar="CT", help="measure this CT file instead of a synthetic one")
    p.add_argument("segment_args", nargs="*", help="extra bisc-segment arguments (after --)")
    args = p.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ct_path = work / f"ct_{args.slices}x{args.size}x{args.size}_z{args.z_spacing:g}_s{args.seed}_{args.dtype}.nii"
    t = time.perf_counter()
    if args.input:
        import SimpleITK as sitk

        ct_path = Path(args.input)
        r = sitk.ImageFileReader()
        r.SetFileName(str(ct_path))
        r.ReadImageInformation()
        shape = list(r.GetSize())[::-1]
        desc = {"shape_zyx": shape, "dtype": sitk.GetPixelIDValueAsString(r.GetPixelID()), "file": str(ct_path),
                "ct_mib": float(np.prod(shape)) * sitk.Image(1, 1, 1, r.GetPixelID()).GetSizeOfPixelComponent() / 2 ** 20}
    elif not ct_path.exists():
        desc = synthesize(ct_path, args.slices, args.size, args.z_spacing, args.seed, args.dtype)
        print(f"Synthesised {ct_path} in {time.perf_counter() - t:.1f} s", flush=True)
    else:
        desc = {"shape_zyx": [args.slices, args.size, args.size], "dtype": args.dtype,
                "ct_mib": args.slices * args.size ** 2 * (4 if args.dtype == "rescaled" else np.dtype(args.dtype).itemsize) / 2 ** 20}
    results = []
    for n in range(args.runs):
        res = run_once(ct_path, work / "labels.nii.gz", args.segment_args, args.profile, args.threads)
        results.append(res)
        if "error" in res:
            print(f"run {n + 1}: FAILED\n{res['error']}")
            continue
        print(f"run {n + 1}: peak RSS {res['peak_rss_mib'] / 1024:.2f} GiB, {res['seconds']:.1f} s in segment_main "
              f"({res['wall_s_with_start']:.1f} s with interpreter start)", flush=True)
        if args.profile:
            print(f"  sampled peak {res['sampled_peak_mib'] / 1024:.2f} GiB at:\n{res['stack_at_peak']}")
            print("  highest RSS while each function ran (innermost BiSCSegmentationLib frame):")
            for key, mib in sorted(res["phases_mib"].items(), key=lambda kv: -kv[1])[:12]:
                print(f"    {mib / 1024:6.2f} GiB  {key}")
    print(f"CT {' x '.join(map(str, desc['shape_zyx']))} {desc['dtype']} ({desc['ct_mib'] / 1024:.2f} GiB)")
    if args.json:
        Path(args.json).write_text(json.dumps({"ct": desc, "runs": results}, indent=2) + "\n")
    return 0 if results and all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
