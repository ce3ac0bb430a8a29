"""bf16 against f32 on the CPU: KiTS19 Dice and time per case of the bundled default model with OpenVINO in
each precision, on held-out procedural phantoms (seeds 5000 + N). Run on a CPU with bfloat16 instructions
(on others OpenVINO computes both in f32): `.venv/bin/python benchmarks/bf16_accuracy.py`."""
import time
import numpy as np
import torch
torch.set_num_threads(2)
from BiSCSegmentationLib.model_file import load_bundled
from BiSCSegmentationLib.cascade import CascadePredictor
from BiSCSegmentationLib.inference_settings import InferenceSettings
from BiSCSegmentationLib.metrics import kits19_case_scores
from BiSCSegmentationLib import phantom
rough, fine = load_bundled(None)
specs = ["openvino-f32", "openvino-bf16"]
preds = {s: CascadePredictor(rough, fine, InferenceSettings(device="cpu", backend=s)) for s in specs}
print({s: p.backend_name for s, p in preds.items()})
res = {s: [] for s in specs}; times = {s: [] for s in specs}
for n in range(14):
    ct, gt = phantom.make_case(5000 + n)
    for s, p in preds.items():
        t = time.perf_counter(); lab = p.predict(ct).labels.array; times[s].append(time.perf_counter() - t)
        res[s].append(kits19_case_scores(lab, gt.array))
    print(n, {s: (round(res[s][-1]["kidney_dice"], 4), round(res[s][-1]["tumor_dice"], 4), round(times[s][-1], 2)) for s in specs}, flush=True)
for s in specs:
    print(s, "mean kidney", np.mean([c["kidney_dice"] for c in res[s]]), "tumor", np.mean([c["tumor_dice"] for c in res[s]]), "time med", np.median(times[s]))
print("max case diff", max(abs(a[k]-b[k]) for a, b in zip(res[specs[0]], res[specs[1]]) for k in ("kidney_dice", "tumor_dice")))
