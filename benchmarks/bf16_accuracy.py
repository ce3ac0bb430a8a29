"""bf16 against f32 on the CPU: KiTS19 Dice and time per case of a bundled model run by OpenVINO in each precision,
on held-out procedural phantoms (seeds 5000 + N, never used in training). Run on a CPU with bfloat16 instructions
(elsewhere OpenVINO computes both in f32): `.venv/bin/python benchmarks/bf16_accuracy.py [--cases 14]`."""
import argparse
import time

import numpy as np
import torch

from BiSCSegmentationLib import phantom
from BiSCSegmentationLib.cascade import CascadePredictor
from BiSCSegmentationLib.inference_settings import InferenceSettings
from BiSCSegmentationLib.metrics import kits19_case_scores

SPECS = ("openvino-f32", "openvino-bf16")
KEYS = ("kidney_dice", "tumor_dice")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=14, help="held-out phantoms (default 14: seeds 5000-5013)")
    ap.add_argument("--model", default=None, help="bundled model name (default: the bundled default)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    preds = {s: CascadePredictor.bundled(args.model, InferenceSettings(device="cpu", backend=s)) for s in SPECS}
    print({s: p.backend_name for s, p in preds.items()})
    scores, times = {s: [] for s in SPECS}, {s: [] for s in SPECS}
    for n in range(args.cases):
        ct, gt = phantom.make_case(5000 + n)
        for s, p in preds.items():
            t = time.perf_counter()
            labels = p.predict(ct).labels.array
            times[s].append(time.perf_counter() - t)
            scores[s].append(kits19_case_scores(labels, gt.array))
        print(5000 + n, {s: tuple(round(scores[s][-1][k], 4) for k in KEYS) + (round(times[s][-1], 2),)
                         for s in SPECS}, flush=True)
    for s in SPECS:
        means = " / ".join(f"{np.mean([c[k] for c in scores[s]]):.4f}" for k in KEYS)
        print(f"{s}: mean kidney / tumor Dice {means}, median {np.median(times[s]):.2f} s per case")
    diff = max(abs(a[k] - b[k]) for a, b in zip(*scores.values()) for k in KEYS)
    print(f"largest per-case Dice difference: {diff:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
