"""Training package: KiTS19 layout reading, split, exact resume after interruption, DDP with two processes."""
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from BiSCSegmentationLib.model_file import load_model_file
from BiSCSegmentationLib.phantom import procedural_labels, synthesize_ct, write_kits_case
from bisc_training import data as D
from bisc_training.train import TrainConfig, train
from conftest import REPO

PREP = D.PrepConfig(inplane_size=32, rough_z_spacing=8.0, fine_spacing=(3.0, 3.0, 4.0),
                    fine_margin_mm=(30.0, 30.0, 16.0))


@pytest.fixture(scope="module")
def kits_like(tmp_path_factory):
    """Three small phantom cases in KiTS19 layout, and their prepared cache."""
    root = tmp_path_factory.mktemp("kits")
    for n in range(3):
        labels = procedural_labels(n, spacing=(2.0, 2.0, 4.0))
        write_kits_case(root, f"case_{n:05d}", synthesize_ct(labels, n), labels)
    cases = D.list_cases(root)
    cache = D.prepare_cache(root, cases, root / "cache", PREP)
    return root, cases, cache


def test_reads_kits_layout_and_writes_a_reusable_split(kits_like, tmp_path):
    root, cases, cache = kits_like
    assert cases == ["case_00000", "case_00001", "case_00002"]
    ct, labels = D.read_case(root, "case_00001")
    assert ct.same_grid(labels) and labels.array.dtype == np.uint8
    split = D.make_split(cases, tmp_path / "split.json")
    assert sorted(split["train"] + split["test"]) == cases and len(split["test"]) == 1
    assert D.make_split(cases, tmp_path / "split.json") == split  # reused, not redrawn
    z = D.load_case_arrays(cache / "case_00000")
    assert z["rough_ct"].shape[1:] == (32, 32)
    assert {"fine0_labels", "fine0_kidney_edge", "fine0_tumor_edge"} <= set(z)


def test_uint16_label_maps_are_cast(tmp_path):
    from BiSCSegmentationLib.volume import Volume, write_volume
    write_volume(Volume(np.array([[[0, 1], [2, 0]]] * 2, dtype=np.uint16)), tmp_path / "seg.nii.gz")
    assert D.read_labels(tmp_path / "seg.nii.gz").array.dtype == np.uint8
    write_volume(Volume(np.array([[[0, 7], [2, 0]]] * 2, dtype=np.uint16)), tmp_path / "bad.nii.gz")
    with pytest.raises(ValueError, match="labels must be 0"):
        D.read_labels(tmp_path / "bad.nii.gz")


def small_config(cache, out, cases, **kw):
    return TrainConfig(stage="fine", cache_dir=str(cache), out_dir=str(out), cases=cases, widths=[4, 8, 16, 32],
                       epochs=2, iterations=3, batch_size=2, patch_size=[8, 16, 16], fine_spacing=[3.0, 3.0, 4.0],
                       inference_window=[16, 32, 32], checkpoint_every=2, threads=1, **kw)


def test_resume_after_interruption_gives_the_same_weights(kits_like, tmp_path):
    _, cases, cache = kits_like
    straight = train(small_config(cache, tmp_path / "a", cases))
    # interrupted after 4 of 6 iterations, then resumed by running the same command again
    cfg = small_config(cache, tmp_path / "b", cases)
    train(cfg, stop_after=4)
    assert torch.load(tmp_path / "b" / "fine_checkpoint.pt", weights_only=False)["iteration"] == 4
    # the model file of the last finished epoch is usable meanwhile
    assert load_model_file(tmp_path / "b" / "fine.pt").training["iterations_done"] == 3
    resumed = train(cfg)
    a = load_model_file(straight).network.state_dict()
    b = load_model_file(resumed).network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a resume with other settings is refused, not silently mixed
    with pytest.raises(ValueError, match="other settings"):
        train(replace(cfg, lr=1e-3))


def test_model_file_records_how_it_was_trained(kits_like, tmp_path):
    _, cases, cache = kits_like
    model = load_model_file(train(small_config(cache, tmp_path, cases, loss="ce")), stage="fine")
    assert model.training["loss"] == "ce" and model.training["cases"] == 3
    assert model.fine_spacing == (3.0, 3.0, 4.0)


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(kits_like, tmp_path):
    _, cases, cache = kits_like
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": cases, "test": []}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "bisc_training.cli", "stage", "rough", "--cache", str(cache), "--split", str(split),
           "--out", str(tmp_path / "ddp"), "--widths", "4,8,16,32", "--epochs", "1", "--iterations", "3",
           "--batch-size", "1", "--rough-patch-size", "8,32,32", "--threads", "1", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, encoding="utf-8",
                          errors="replace", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = load_model_file(tmp_path / "ddp" / "rough.pt", stage="rough")
    ck = torch.load(tmp_path / "ddp" / "rough_checkpoint.pt", weights_only=False)
    assert ck["iteration"] == 3 and len(ck["rng"]) == 2  # both ranks' sampler states saved
    assert model.grid["inplane_size"] == 128
