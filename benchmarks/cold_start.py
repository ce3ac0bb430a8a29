"""Cold start of ``bisc-segment`` before and after a change, as a ratio measured in one run (issue 21, item 2).

    python benchmarks/cold_start.py --baseline REV [--runs 3] [--ct FILE] [--threads N] [--out DIR]

REV's tree is checked out into a temporary git worktree; each run starts ``bisc-segment`` in a new process
for REV and for the working tree in turn (alternating, so load on the machine falls on both alike), each with
its own cache folder warmed by one unmeasured run first (as a user's second run: exported and compiled
networks cached). Reported per tree, as medians: wall time, start + imports, model load the read did not
hide, the read, and the time to first voxel (all of them) as a share of the run. Default CT: the 512 x 512 x
300 phantom of ``compare_peers.py``. Writes ``cold_start.json`` into ``--out`` (default benchmarks/results).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", required=True, help="git revision to compare with (e.g. a commit before a change)")
    p.add_argument("--runs", type=int, default=3, help="measured runs per tree (default 3)")
    p.add_argument("--ct", help="CT file (default: the 512x512x300 phantom of compare_peers.py)")
    p.add_argument("--threads", type=int, default=0, help="threads for both (default: all logical CPUs)")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for cold_start.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from compare_peers import cascade_cold
    from benchmark_cascade import phantom_case
    from BiSCSegmentationLib.model_file import default_cache_dir
    from BiSCSegmentationLib.volume import write_volume

    threads = args.threads or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bisc-cold-") as tmp:
        work = Path(tmp)
        base = work / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base), args.baseline],
                       check=True, capture_output=True)
        try:
            ct = Path(args.ct) if args.ct else work / "phantom-ct.nii.gz"
            if not args.ct:
                write_volume(phantom_case(default_cache_dir() / "benchmark" / "phantom", 7, (300, 512, 512),
                                          (0.78, 0.78, 1.0))[0], ct)
            trees = {"baseline": base / "BiSCSegmentation", "current": REPO / "BiSCSegmentation"}
            env = {name: dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(src)) for name, src in trees.items()}
            runs = {name: [] for name in trees}
            for n in range(args.runs + 1):       # run 0 warms each tree's caches and is not counted
                for name in trees:
                    r = cascade_cold(ct, work, threads, env[name], work / f"cache-{name}")
                    if "error" in r:
                        raise SystemExit(f"{name}: bisc-segment failed: {r['error']}")
                    print(f"run {n} {name:8s} wall {r['seconds']:6.2f} s, first voxel {r['time_to_first_voxel_s']:5.2f} s"
                          f"{' (warm-up)' if n == 0 else ''}", flush=True)
                    if n:
                        runs[name].append(r)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], capture_output=True)

    def med(name, key):
        return statistics.median(r[key] for r in runs[name])

    keys = ("seconds", "startup_s", "cold_start_s", "time_to_first_voxel_s", "time_to_first_voxel_share")
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "baseline": args.baseline,
           "ct": str(args.ct or "phantom 512x512x300 at 0.78x0.78x1.0 mm"), "threads": threads,
           "loadavg": list(os.getloadavg()), "runs": runs,
           "median": {name: {k: med(name, k) for k in keys} for name in trees}}
    res["median"]["current"]["load_models_s"] = statistics.median(r["timings"].get("load models", 0) for r in runs["current"])
    res["ratio_first_voxel"] = res["median"]["baseline"]["time_to_first_voxel_s"] / res["median"]["current"]["time_to_first_voxel_s"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cold_start.json").write_text(json.dumps(res, indent=1))
    for name in trees:
        m = res["median"][name]
        print(f"{name:8s}: wall {m['seconds']:.2f} s, start + imports {m['startup_s']:.2f} s, time to first voxel "
              f"{m['time_to_first_voxel_s']:.2f} s ({100 * m['time_to_first_voxel_share']:.0f}% of the run)")
    print(f"time to first voxel, baseline / current: {res['ratio_first_voxel']:.2f}x; wrote {out / 'cold_start.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
