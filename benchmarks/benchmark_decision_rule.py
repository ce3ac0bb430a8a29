"""The cost of the fine stage's whole-case steps, same ROIs, same run; prints medians and ratios: v6's rule (step 3
by size only), v9's (step 3 by mean tumor probability, which keeps a uint8 p(tumor) map per ROI) and the bundled
rule (v10: v9's plus step 4, tumor margins, which keeps a bool candidate map per ROI, and islands at 0.5).

    .venv/bin/python benchmarks/benchmark_decision_rule.py
"""
import time, statistics, torch
from BiSCSegmentationLib.cascade import CascadePredictor
from BiSCSegmentationLib.decision import Decision
from BiSCSegmentationLib.inference_settings import InferenceSettings
from BiSCSegmentationLib.phantom import make_case
torch.set_num_threads(2)
ct, gt = make_case(seed=0)
p = CascadePredictor.bundled(settings=InferenceSettings(device="cpu"))
rois = p.locate(ct).rois
rules = {
    "v6 rule": Decision("foreground", foreground_bias=0.125, tumor_bias=0.125, min_tumor_ml=4.0),
    "v9 rule": Decision(
        "foreground", foreground_bias=0.125, tumor_bias=0.125, min_tumor_ml=0.0, min_tumor_probability=0.7
    ),
    "bundled rule": p.decision,
}
t = {k: [] for k in rules}
for rep in range(4):
    for k, d in rules.items():
        p.decision = d
        t0 = time.perf_counter(); p.segment(ct, rois); t[k].append(time.perf_counter() - t0)
for k in t: print(k, "median fine stage %.3f s" % statistics.median(t[k][1:]), [round(x, 3) for x in t[k]])
med = {k: statistics.median(v[1:]) for k, v in t.items()}
print("ratio bundled/v6 %.3f, bundled/v9 %.3f" % (med["bundled rule"] / med["v6 rule"], med["bundled rule"] / med["v9 rule"]),
      "shape", ct.array.shape)
