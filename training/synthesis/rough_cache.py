"""Rough-stage-only training cache from KiTS-layout cases, for rough-stage experiments: the same arrays
``preprocess_case`` writes for the rough stage, the same split rule (``make_split``), no fine crops (a full
``bisc-train prepare`` works too: 1.6 s for a 3 mm synthetic case here, fine crops included).
``python -m bisc_training.synthesis.rough_cache --kits DIR --cache DIR``."""
from __future__ import annotations

import argparse
from pathlib import Path

from BiSCSegmentationLib.volume import to_canonical

from bisc_training import data as D


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kits", required=True)
    p.add_argument("--cache", required=True)
    a = p.parse_args(argv)
    cfg = D.PrepConfig()
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    cases = D.list_cases(a.kits)
    D.make_split(cases, cache / "split.json")
    for case in cases:
        if (cache / case).is_dir():
            continue
        ct, lab = D.read_case(a.kits, case)
        cct, clab = to_canonical(ct)[0], to_canonical(lab)[0]
        arrays = D._sample(cct.array, clab.array, D.rough_maps(cct, cfg))
        D.write_case_arrays(cache / case, {f"rough_{k}": v for k, v in arrays.items()})
        print(case, arrays["ct"].shape, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
