"""Share of each reference kidney inside a ``--save-rois`` file's boxes, and the boxes' sizes (validation of
the rough stage on a real CT: ``python -m bisc_training.synthesis.score_rois ROIS.json KIDNEYS.nii.gz
[ROUGH_MASK.nii.gz]``). Reference kidneys: 26-connected components of label > 0, largest two."""
from __future__ import annotations

import json
import sys

import numpy as np
from scipy import ndimage as ndi

from BiSCSegmentationLib.volume import read_volume


def score(rois_path, kidneys_path, mask_path=None) -> dict:
    rois = json.loads(open(rois_path).read())["rois"]
    ref = read_volume(kidneys_path)
    comp, n = ndi.label(ref.array > 0, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(comp.ravel())[1:]
    out = {"rois": [{"side": r.get("side"), "size_mm": [round(s, 1) for s in r["size"]]} for r in rois],
           "kidneys": []}
    for lab in (np.argsort(sizes)[::-1][:2] + 1):
        idx = np.argwhere(comp == lab)                              # (k, j, i)
        xyz = ref.index_to_physical(idx[:, ::-1])
        inside = np.zeros(len(xyz), bool)
        for r in rois:
            c, s = np.asarray(r["center"]), np.asarray(r["size"])
            inside |= np.all(np.abs(xyz - c) <= s / 2, axis=1)
        out["kidneys"].append({"ml": round(len(idx) * ref.voxel_volume_ml, 1), "x_mm": round(float(xyz[:, 0].mean()), 1),
                               "share_inside": round(float(inside.mean()), 3)})
    if mask_path:
        m = read_volume(mask_path)
        out["rough_kidney_ml"] = round(float((m.array == 1).sum() * m.voxel_volume_ml), 1)
        out["rough_tumor_ml"] = round(float((m.array == 2).sum() * m.voxel_volume_ml), 1)
    return out


if __name__ == "__main__":
    print(json.dumps(score(*sys.argv[1:4]), indent=1))
