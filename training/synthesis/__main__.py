"""Write synthetic cases in the KiTS19 layout (case_XXXXX/imaging.nii.gz + segmentation.nii.gz), so that
``bisc-train prepare --kits OUT`` reads them like real cases (no --synthesize).

    python -m bisc_training.synthesis --btcv ../shared/data/btcv_labels --kits ../shared/data/kits19 \\
        --out runs/synth --count 30 --seed 0
Case i uses BTCV map (seed + i) mod 30 and seed ``seed * 100000 + i``; a case already written is skipped.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from BiSCSegmentationLib.outputs import Interrupted, signals_as_interrupts
from BiSCSegmentationLib.phantom import write_kits_case

from .appearance import PHASES
from .core import synthesize_case


def _spacing(text):
    v = [float(t) for t in text.split(",")]
    if len(v) != 3 or min(v) <= 0:
        raise argparse.ArgumentTypeError("spacing: three positive numbers x,y,z in mm")
    return tuple(v)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bisc_training.synthesis", description=__doc__.splitlines()[0])
    p.add_argument("--btcv", required=True, help="folder of BTCV label maps (NNNN.nii.gz)")
    p.add_argument("--kits", help="KiTS19 folder: tumor donors (training cases of tuning_cases_72.txt only)")
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--first-index", type=int, default=0, help="case number of the first case written")
    p.add_argument("--spacing", type=_spacing, default=(2.0, 2.0, 2.0), help="output x,y,z mm (default 2,2,2)")
    p.add_argument("--phase", choices=PHASES, help="one contrast phase for all cases (default: drawn per case)")
    p.add_argument("--tumor-prob", type=float, default=0.8)
    p.add_argument("--force", action="store_true", help="overwrite existing cases")
    a = p.parse_args(argv)
    files = sorted(Path(a.btcv).glob("*.nii.gz"))
    if not files:
        print(f"{a.btcv}: no *.nii.gz label maps", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with signals_as_interrupts():   # SIGTERM/SIGINT: the case being written leaves no temporary file
            _write_cases(a, files, out)
    except Interrupted as exc:
        print(f"interrupted ({exc}): the cases written so far are complete; run again to go on", file=sys.stderr)
        return 130
    return 0


def _write_cases(a, files, out: Path) -> None:
    for i in range(a.count):
        case = f"case_{a.first_index + i:05d}"
        if (out / case / "segmentation.nii.gz").is_file() and not a.force:
            continue
        t0 = time.time()
        ct, lab, rec = synthesize_case(files[(a.seed + i) % len(files)], a.seed * 100000 + i, a.kits,
                                       spacing=a.spacing, tumor_prob=a.tumor_prob, phase=a.phase)
        write_kits_case(out, case, ct, lab, force=a.force)
        (out / case / "synthesis.json").write_text(json.dumps(rec, indent=1))
        print(f"{case}: {rec['btcv']} {rec['phase']} tumor={rec['tumor_kind']} "
              f"shape={ct.array.shape} {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
