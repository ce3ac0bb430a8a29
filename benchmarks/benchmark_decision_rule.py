"""The cost of the fine stage's tumor component step: v6's rule (size only) against the bundled rule (v7 and v9:
mean tumor probability, which keeps a uint8 p(tumor) map per ROI), same ROIs, same run; prints medians and the ratio.

    .venv/bin/python benchmarks/benchmark_decision_rule.py
"""
import time, statistics, torch
from BiSCSegmentationLib.cascade import CascadePredictor
from BiSCSegmentationLib.decision import Decision
from BiSCSegmentationLib.phantom import make_case
torch.set_num_threads(2)
ct, gt = make_case(seed=0)
p = CascadePredictor.bundled(device="cpu")
rois = p.locate(ct).rois
rules = {"v6 rule": Decision("foreground", 0.125, 0.125, 4.0), "bundled rule": p.decision}
t = {k: [] for k in rules}
for rep in range(4):
    for k, d in rules.items():
        p.decision = d
        t0 = time.perf_counter(); p.segment(ct, rois); t[k].append(time.perf_counter() - t0)
for k in t: print(k, "median fine stage %.3f s" % statistics.median(t[k][1:]), [round(x, 3) for x in t[k]])
print("ratio bundled/v6 %.3f" % (statistics.median(t["bundled rule"][1:]) / statistics.median(t["v6 rule"][1:])), "shape", ct.array.shape)
