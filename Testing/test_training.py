"""Training package: KiTS19 layout reading, split, exact resume after interruption, DDP with two processes."""
import json
import os
import subprocess
import sys
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from BiSCSegmentationLib.inference_settings import InferenceSettings
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
                       inference_window=[48, 160, 160], checkpoint_every=2, threads=1, **kw)


def test_resume_after_interruption_gives_the_same_weights(kits_like, tmp_path):
    _, cases, cache = kits_like
    settings = dict(roi_prob=0.5, lr_schedule="poly")  # the bundled recipe's sampling and schedule
    straight = train(small_config(cache, tmp_path / "a", cases, **settings))
    # interrupted after 4 of 6 iterations, then resumed by running the same command again
    cfg = small_config(cache, tmp_path / "b", cases, **settings)
    train(cfg, stop_after=4)
    assert torch.load(tmp_path / "b" / "fine_checkpoint.pt", weights_only=True)["iteration"] == 4
    # the model file of the last finished epoch is usable meanwhile
    assert load_model_file(tmp_path / "b" / "fine.pt").training["iterations_done"] == 3
    resumed = train(cfg)
    a = load_model_file(straight).network.state_dict()
    b = load_model_file(resumed).network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a resume with other settings is refused, not silently mixed
    with pytest.raises(ValueError, match="other settings"):
        train(replace(cfg, lr=1e-3))


@pytest.mark.slow
def test_sigterm_saves_the_checkpoint_of_a_background_training_and_the_same_command_resumes(kits_like, tmp_path):
    """A background job ignores SIGINT, so SIGTERM is how a scheduler or a user stops it: exit 143, checkpoint
    written at the iteration reached (not the last multiple of --checkpoint-every), and resumable."""
    import signal
    import time

    _, cases, cache = kits_like
    (tmp_path / "split.json").write_text(json.dumps({"train": cases, "test": []}))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "bisc_training.cli", "stage", "fine", "--cache", str(cache), "--split",
           str(tmp_path / "split.json"), "--out", str(out), "--fine-spacing", "3,3,4", "--widths", "4,8,16,32",
           "--epochs", "1", "--iterations", "100000", "--batch-size", "1", "--patch-size", "8,16,16",
           "--device", "cpu", "--threads", "1", "--checkpoint-every", "100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # as `cmd &` does
    try:
        deadline = time.time() + 120
        while "train fine" not in (proc.stderr.readline() or "") and time.time() < deadline:
            pass
        time.sleep(3)  # some iterations done
        proc.send_signal(signal.SIGINT)  # ignored, like in a background job
        time.sleep(0.5)
        assert proc.poll() is None
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "checkpoint saved" in err
    reached = torch.load(out / "fine_checkpoint.pt", weights_only=True)["iteration"]
    assert 0 < reached < 100000
    # resuming from a checkpoint is exact (test_resume_after_interruption_gives_the_same_weights); this one is
    # the run's own, so the same command picks it up
    assert torch.load(out / "fine_checkpoint.pt", weights_only=True)["config"]["cases"] == cases


def test_model_file_records_how_it_was_trained(kits_like, tmp_path):
    _, cases, cache = kits_like
    model = load_model_file(train(small_config(cache, tmp_path, cases, loss="ce")), stage="fine")
    assert model.training["loss"] == "ce" and model.training["cases"] == 3
    assert model.fine_spacing == (3.0, 3.0, 4.0)


def test_checkpoints_from_before_a_setting_existed_resume_with_the_value_runs_had_then(kits_like, tmp_path):
    _, cases, cache = kits_like
    cfg = small_config(cache, tmp_path, cases, roi_prob=0.0)   # no ROI-region patches, as before --roi-prob
    train(cfg, stop_after=2)
    ck_path = tmp_path / "fine_checkpoint.pt"
    ck = torch.load(ck_path, weights_only=True)
    del ck["config"]["roi_prob"], ck["config"]["lr_schedule"]  # as written by an older version
    torch.save(ck, ck_path)
    with pytest.raises(ValueError, match=r"other settings \(roi_prob\)"):   # today's default is not what it ran with
        train(replace(cfg, roi_prob=TrainConfig("fine", "", "").roi_prob))
    assert load_model_file(train(cfg)).training["iterations_done"] == 6
    # the folder may be moved: out_dir is not a training setting
    moved = tmp_path.parent / (tmp_path.name + "_moved")
    tmp_path.rename(moved)
    assert train(replace(cfg, out_dir=str(moved), epochs=3)).parent == moved


def test_warm_start_begins_from_a_model_files_network_as_trained(kits_like, tmp_path):
    _, cases, cache = kits_like
    from BiSCSegmentationLib.model_file import save_model_file
    from bisc_training.train import apply_prior
    plain = load_model_file(train(replace(small_config(cache, tmp_path / "a", cases, loss="bce",
                                                       prior_correction=False), epochs=1)))
    save_model_file(apply_prior(plain, [-0.1, -2.5, -3.2], cache, cases, scale=0.5), tmp_path / "first.pt")
    first = load_model_file(tmp_path / "first.pt")  # its label bias carries a correction
    # zero iterations: the weights the run starts from are what it writes
    cfg = replace(small_config(cache, tmp_path / "b", cases, loss="bce", init_from=str(first.path),
                               prior_correction=False), epochs=0)
    started = load_model_file(train(cfg))
    ck = torch.load(tmp_path / "a" / "fine_checkpoint.pt", weights_only=True)["model"]
    b, bias = started.network.state_dict(), "label_branch.head.bias"
    assert all(torch.equal(b[k], ck[k]) for k in b if k != bias)
    assert torch.allclose(b[bias], ck[bias], atol=1e-6)  # the network as trained: correction taken off
    assert started.training["init_from"]["sha256"] == first.sha256
    # it then trains on from there, and resumes like any run
    more = small_config(cache, tmp_path / "c", cases, loss="bce", init_from=str(first.path), prior_correction=False)
    train(more, stop_after=2)
    assert load_model_file(train(more)).training["iterations_done"] == 6
    with pytest.raises(ValueError, match="differs from this run"):
        train(replace(small_config(cache, tmp_path / "d", cases, init_from=str(first.path)), widths=[8, 8, 16, 32]))


def test_bisc_train_stage_trains_with_the_training_defaults(tmp_path, monkeypatch):
    """The option defaults of `bisc-train stage` are TrainConfig's (one source), and they are these."""
    from bisc_training import cli
    from bisc_training.train import default_config

    (tmp_path / "split.json").write_text(json.dumps({"train": ["case_00000"], "test": []}))
    made = {}

    def fake_train(cfg, progress=None):
        made[cfg.stage] = cfg
        (tmp_path / "model.pt").write_bytes(b"")
        return tmp_path / "model.pt"

    monkeypatch.setattr(cli, "train", fake_train)
    for stage in ("rough", "fine"):
        assert cli.main(["stage", stage, "--cache", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
        run = asdict(made[stage])
        assert {k: v for k, v in run.items() if k not in ("cache_dir", "out_dir", "cases", "command")} == \
            {k: v for k, v in asdict(default_config(stage)).items() if k not in ("cache_dir", "out_dir", "cases", "command")}
    fine, rough = made["fine"], made["rough"]
    assert (fine.roi_prob, fine.patch_size, fine.inference_window) == (0.33, [48, 160, 160], [48, 128, 128])
    assert (rough.roi_prob, rough.patch_size, rough.inference_window) == (0.0, [48, 128, 128], [128, 128, 128])
    assert (fine.threshold, fine.fine_spacing, fine.rough_grid, fine.lr, fine.calibration_cases) == \
        (0.1, [0.78, 0.78, 3.0], {"inplane_size": 128, "z_spacing": 3.0}, 1e-4, 24)


def test_poly_learning_rate_decays_to_zero():
    from bisc_training.train import learning_rate
    cfg = TrainConfig(stage="fine", cache_dir="", out_dir="", lr=1e-3, lr_schedule="poly")
    rates = [learning_rate(cfg, it, 100) for it in (0, 50, 99, 100)]
    assert rates[0] == 1e-3 and rates[0] > rates[1] > rates[2] > rates[3] == 0.0
    assert learning_rate(replace(cfg, lr_schedule="constant"), 99, 100) == 1e-3


def test_fine_patches_cover_the_whole_roi_region_not_only_the_kidney(kits_like):
    _, cases, cache = kits_like
    near = D.PatchSampler(cache, cases, "fine", (4, 8, 8), fine_spacing=(3.0, 3.0, 4.0), jitter_mm=0.0)
    wide = D.PatchSampler(cache, cases, "fine", (4, 8, 8), fine_spacing=(3.0, 3.0, 4.0), roi_prob=1.0, jitter_mm=0.0,
                          roi_margin_mm=(30.0, 30.0, 16.0))
    rng = np.random.default_rng(1)
    near_empty = [not s[1].any() for s in (near.sample(rng) for _ in range(200))]
    wide_patches = [wide.sample(rng) for _ in range(200)]
    assert not any(near_empty)  # centred on a kidney or tumor voxel: always some kidney
    wide_empty = [not s[1].any() for s in wide_patches]
    assert 0.1 < np.mean(wide_empty) < 0.95  # background near the kidney is seen too
    assert all(s[0].shape == (4, 8, 8) and s[1].shape == (4, 8, 8) for s in wide_patches)


def test_left_right_only_mirroring_keeps_front_back_and_head_feet(kits_like):
    """--mirror-axes x: patches are the all-axes sampler's patches with only the x flips applied (same draws)."""
    _, cases, cache = kits_like
    args = (cache, cases, "fine", (4, 8, 8))
    kw = dict(fine_spacing=(3.0, 3.0, 4.0), jitter_mm=0.0)
    plain = D.PatchSampler(*args, mirror=False, **kw)
    only_x = D.PatchSampler(*args, mirror_axes="x", **kw)
    seen_flip = seen_plain = False
    for seed in range(40):
        ref = plain.sample(np.random.default_rng(seed))[0]
        rng = np.random.default_rng(seed)
        got = only_x.sample(rng)[0]
        rng2 = np.random.default_rng(seed)
        plain.sample(rng2)            # the same position draws, then the three mirror draws of the sampler
        flips = [rng2.random() < 0.5 for _ in range(3)]
        assert np.array_equal(got, ref[:, :, ::-1] if flips[2] else ref)
        assert rng.random() == rng2.random()   # one draw per axis even where the axis is not mirrored
        seen_flip |= flips[2] and not np.array_equal(ref, ref[:, :, ::-1])
        seen_plain |= not flips[2]
    assert seen_flip and seen_plain
    with pytest.raises(ValueError, match="zyx"):
        D.PatchSampler(*args, mirror_axes="xa", **kw)


def test_test_time_mirroring_uses_only_the_axes_the_model_was_trained_on():
    from BiSCSegmentationLib.windows import mirror_flips
    assert mirror_flips("zyx") == [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    assert mirror_flips("x") == [(), (4,)]
    assert mirror_flips("zx") == [(), (2,), (4,), (2, 4)]


def test_patch_crop_pads_outside_the_array():
    a = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    assert (D._crop(a, np.array([-100, 0, 0]), np.array([3, 3, 3]), -1) == -1).all()  # wholly outside
    assert (D._crop(a, np.array([10, 0, 0]), np.array([3, 3, 3]), -1) == -1).all()
    c = D._crop(a, np.array([-1, -2, 5]), np.array([3, 4, 4]), -1)
    assert (c[1:, 2:, :2] == a[:2, :2, 5:]).all() and (c[0] == -1).all() and (c[:, :, 2:] == -1).all()


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
    ck = torch.load(tmp_path / "ddp" / "rough_checkpoint.pt", weights_only=True)
    assert ck["iteration"] == 3 and len(ck["rng"]) == 2  # both ranks' sampler states saved
    assert model.grid["inplane_size"] == 128


def test_evaluate_with_two_worker_processes_gives_the_same_report(kits_like, tmp_path):
    import csv
    from BiSCSegmentationLib.model_file import save_model_file
    from bisc_training.cli import main
    from conftest import tiny_stage_models

    root, cases, _ = kits_like
    models = tmp_path / "models"
    for m in tiny_stage_models(rough_grid={"inplane_size": 32, "z_spacing": 8.0}, fine_spacing=(3.0, 3.0, 4.0)):
        save_model_file(m, models / f"{m.stage}.pt")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [], "test": cases}))
    common = ["evaluate", "--kits", str(root), "--split", str(split), "--models", str(models), "--device", "cpu"]
    assert main(common + ["--out", str(tmp_path / "one")]) == 0
    assert main(common + ["--out", str(tmp_path / "two"), "--workers", "2"]) == 0

    def scores(name):
        with open(tmp_path / name / "per_case.csv") as f:
            return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in csv.DictReader(f)]
    # the same cases and scores; one process runs 2 threads, each worker 1, and a different reduction order
    # may flip a voxel whose top-two probabilities nearly tie (random-weight networks have many)
    one, two = scores("one"), scores("two")
    assert [r["case"] for r in one] == [r["case"] for r in two] == cases
    assert all(abs(float(a[k]) - float(b[k])) < 1e-4 for a, b in zip(one, two) for k in a if k != "case")
    assert main(common + ["--out", str(tmp_path / "two"), "--workers", "2"]) == 2  # never overwrites
    # --mirror reaches the predictor (test-time mirroring itself: test_backends)
    from bisc_training.cli import _predictor, build_parser, eval_settings
    for extra, mirror in ((["--mirror"], True), ([], False)):
        settings = eval_settings(build_parser().parse_args(common + extra))
        assert settings.mirror is mirror and _predictor(models, settings).settings.mirror is mirror


def test_eq1_models_carry_the_scaled_prior_correction_and_the_command_gives_the_same_file(kits_like, tmp_path):
    from bisc_training.cli import main
    root, cases, cache = kits_like
    corrected = load_model_file(train(small_config(cache, tmp_path / "on", cases, loss="bce")))
    plain = train(small_config(cache, tmp_path / "off", cases, loss="bce", prior_correction=False))
    t = corrected.training
    prior, scale = t["label_log_prior"], t["prior_scale"]
    assert len(prior) == 3 and prior[0] > prior[1] > prior[2]  # background > kidney > tumor voxels
    assert np.allclose(np.exp(prior).sum(), 1.0, atol=1e-4)
    # the scale is the calibration's best (a tie goes to the larger scale), over the training cases
    assert 0.0 <= scale <= 1.0 and t["prior_calibration_cases"] == len(cases)
    best = max(t["prior_scale_scores"].values())
    assert t["prior_scale_scores"][scale] == best and all(s <= scale for s, v in t["prior_scale_scores"].items()
                                                          if v == best)
    # only the label logits' bias moves, by exactly scale x prior; the trained network itself is untouched
    ck = torch.load(tmp_path / "on" / "fine_checkpoint.pt", weights_only=True)["model"]
    a, b = corrected.network.state_dict(), load_model_file(plain).network.state_dict()
    bias = "label_branch.head.bias"
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], ck[k]) for k in a if k != bias)
    assert torch.allclose(a[bias] - b[bias], scale * torch.tensor(prior), atol=1e-6)
    # bisc-train prior-correct on the uncorrected file gives the same network
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": cases, "test": []}))
    args = ["prior-correct", str(plain), "--cache", str(cache), "--split", str(split)]
    assert main(args + ["-o", str(tmp_path / "fixed.pt")]) == 0
    fixed = load_model_file(tmp_path / "fixed.pt")
    assert torch.allclose(fixed.network.state_dict()[bias], a[bias]) and fixed.training["prior_scale"] == scale
    assert main(args + ["-o", str(tmp_path / "fixed.pt")]) == 2           # never overwrites
    # correcting a corrected file starts from the network as trained: a given scale replaces the old one
    assert main(["prior-correct", str(tmp_path / "fixed.pt"), "--cache", str(cache), "--split", str(split),
                 "--scale", "0.25", "-o", str(tmp_path / "quarter.pt")]) == 0
    quarter = load_model_file(tmp_path / "quarter.pt")
    assert quarter.training["prior_scale"] == 0.25 and "prior_scale_scores" not in quarter.training
    assert torch.allclose(quarter.network.state_dict()[bias] - b[bias], 0.25 * torch.tensor(prior), atol=1e-6)
    assert main(["prior-correct", str(tmp_path / "fixed.pt"), "--cache", str(cache), "--split", str(split),
                 "--scale", "1.5", "-o", str(tmp_path / "bad.pt")]) == 2  # out of [0, 1]
    ce = train(small_config(cache, tmp_path / "ce", cases, loss="ce"))
    assert "label_log_prior" not in load_model_file(ce).training
    assert main(["prior-correct", str(ce), "--cache", str(cache), "--split", str(split),
                 "-o", str(tmp_path / "ce.pt")]) == 2                    # CE needs no correction


def test_set_window_changes_only_the_inference_window_and_records_it(tmp_path, capsys):
    from bisc_training.cli import main
    from BiSCSegmentationLib.model_file import save_model_file
    from conftest import tiny_stage_models
    _, fine = tiny_stage_models()
    save_model_file(fine, tmp_path / "fine.pt")
    before = load_model_file(tmp_path / "fine.pt")
    assert main(["set-window", str(tmp_path / "fine.pt"), "--window", "16,32,48", "-o", str(tmp_path / "w.pt")]) == 0
    after = load_model_file(tmp_path / "w.pt")
    assert after.inference_window == (16, 32, 48) and before.inference_window == (32, 64, 64)
    a, b = before.network.state_dict(), after.network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert after.training["inference_window_history"] == [{"window": [32, 64, 64], "sha256": before.sha256}]
    assert main(["set-window", str(tmp_path / "fine.pt"), "--window", "16,32,48", "-o", str(tmp_path / "w.pt")]) == 2
    capsys.readouterr()
    assert main(["set-window", str(tmp_path / "fine.pt"), "--window", "12,32,48", "-o", str(tmp_path / "x.pt")]) == 2
    assert "three positive multiples of 8" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()


def _tiny_models_and_split(folder, cases):
    """rough.pt + fine.pt (tiny random networks on the kits_like grids) and a split with every case in training."""
    from BiSCSegmentationLib.model_file import save_model_file
    from conftest import tiny_stage_models
    rough, fine = tiny_stage_models(rough_grid={"inplane_size": 32, "z_spacing": 8.0}, fine_spacing=(3.0, 3.0, 4.0))
    save_model_file(rough, folder / "rough.pt")
    save_model_file(fine, folder / "fine.pt")
    (folder / "split.json").write_text(json.dumps({"train": cases, "test": []}))


def test_window_comparison_scores_the_cascade_with_each_window(kits_like, tmp_path, capsys):
    from bisc_training.compare_windows import main
    from bisc_training.data import pick_cases
    root, cases, _ = kits_like
    _tiny_models_and_split(tmp_path, cases)
    assert pick_cases({"train": [f"c{n:02d}" for n in range(40)]}, "train", 4) == ["c03", "c13", "c23", "c33"]
    assert pick_cases({"train": cases}, "train", 1) == ["case_00002"] and pick_cases({"test": cases}, "test", 2) == cases[:2]
    args = ["--kits", str(root), "--split", str(tmp_path / "split.json"), "--models", str(tmp_path), "--n", "2",
            "--backend", "torch", "--window", "fine=32,96,96", "--window", "fine=48,160,160", "--out", str(tmp_path / "w.json")]
    assert main(args) == 0
    rows = json.loads((tmp_path / "w.json").read_text())
    assert [r["case"] for r in rows] == cases[:2]
    assert all(len(r["fine=32x96x96"]) == 2 and len(r["fine=48x160x160"]) == 2 for r in rows)
    assert "| fine=48x160x160 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(args[:-6] + ["--window", "middle=32,96,96"])


def test_decision_tuning_writes_the_best_rules_it_reports(kits_like, tmp_path, capsys):
    from bisc_training.tune_decision import main
    from BiSCSegmentationLib.decision import ARGMAX, Decision
    from BiSCSegmentationLib.model_file import sha256_of
    root, cases, _ = kits_like
    _tiny_models_and_split(tmp_path, cases)
    args = ["--kits", str(root), "--split", str(tmp_path / "split.json"), "--models", str(tmp_path), "--n", "2",
            "--rough-foreground-bias", "2", "--foreground-bias", "0,1", "--tumor-bias", "0", "--min-tumor-ml", "0,5",
            "--min-tumor-probability", "0,0.6", "--out", str(tmp_path / "t.json"), "--write", str(tmp_path / "tuned")]
    assert main(args) == 0
    report = json.loads((tmp_path / "t.json").read_text())
    assert report["cases"] == sorted(cases[:2]) and report["seed_offset"] is None  # the cases' own CT
    first, best = report["scores"][0], report["scores"][1]
    assert first["rough"] == ARGMAX.to_dict() and first["fine"] == ARGMAX.to_dict()  # the files' own rules
    assert len(report["scores"]) == 1 + 2 * 8 * 4 and all(len(r["per_case"]) == 2 for r in report["scores"])
    assert best["mean"] == max((r["mean"] for r in report["scores"][1:]), key=sum)
    tuned_rough, tuned_fine = (load_model_file(tmp_path / "tuned" / n) for n in ("rough.pt", "fine.pt"))
    assert tuned_fine.decision == Decision(**best["fine"]) and tuned_rough.decision == Decision(**best["rough"])
    assert tuned_fine.training["decision_tuning"]["from_sha256"] == sha256_of(tmp_path / "fine.pt")
    if tuned_rough.decision == ARGMAX:  # the rough file's own rule won: copied byte for byte
        assert sha256_of(tmp_path / "tuned" / "rough.pt") == sha256_of(tmp_path / "rough.pt")
    assert "| rough rule | fine rule |" in capsys.readouterr().out
    assert main(args) == 2 and "exists" in capsys.readouterr().err  # never overwrites without --force


def test_decision_tuning_on_a_case_list_with_island_fractions(kits_like, tmp_path, capsys):
    from bisc_training.tune_decision import main
    root, cases, _ = kits_like
    _tiny_models_and_split(tmp_path, cases)
    (tmp_path / "list.txt").write_text(f"# tuning cases\n{cases[1]}  # the second\n\n")
    base = ["--kits", str(root), "--split", str(tmp_path / "split.json"), "--models", str(tmp_path)]
    args = base + ["--case-list", str(tmp_path / "list.txt"), "--foreground-bias", "0", "--tumor-bias", "0",
                   "--min-tumor-ml", "0", "--min-tumor-probability", "0", "--min-island-fraction", "0,0.2,1",
                   "--tumor-margin-bias", "0",
                   "--out", str(tmp_path / "new" / "t.json")]
    assert main(args) == 0  # the report's folder is made
    report = json.loads((tmp_path / "new" / "t.json").read_text())
    assert report["cases"] == [cases[1]]
    assert sorted(r["fine"]["min_island_fraction"] for r in report["scores"][1:]) == [0.0, 0.2, 1.0]
    assert "list.txt cases" in capsys.readouterr().out
    (tmp_path / "split.json").write_text(json.dumps({"train": cases[1:], "test": cases[:1]}))
    for text, words in ((f"{cases[0]}\n", f"held-out cases ({cases[0]})"), ("case_99999\n", "not in the split"),
                        ("# nothing\n", "names no cases"), (f"{cases[1]}\n{cases[1]}\n", "more than once")):
        (tmp_path / "bad.txt").write_text(text)
        assert main(base + ["--case-list", str(tmp_path / "bad.txt")]) == 2
        assert words in capsys.readouterr().err, text
    assert main(base + ["--case-list", str(tmp_path / "missing.txt")]) == 2
    assert "cannot read the case list" in capsys.readouterr().err
    # an invalid grid is refused before any case is scored, and nothing is written
    for flag, value, words in (("--min-island-fraction", "0.2,2", "min_island_fraction must be in [0, 1]"),
                               ("--tumor-margin-bias", "-1", "tumor_margin_bias and"),
                               ("--rough-foreground-bias", "nan", "rough rule")):
        assert main(base + ["--n", "1", flag, value, "--out", str(tmp_path / "bad.json")]) == 2
        err = capsys.readouterr()
        assert words in err.err and "(1/" not in err.out and not (tmp_path / "bad.json").exists(), flag


def test_prior_scale_scores_find_the_shift_that_made_the_labels():
    from bisc_training.calibrate import SCALES, scale_scores
    from BiSCSegmentationLib.metrics import kits19_case_scores
    rng = np.random.default_rng(3)
    logp = torch.from_numpy(rng.normal(size=(3, 6, 20, 20)).astype(np.float32))
    prior = [-0.1, -2.5, -4.0]
    labels = (logp + 0.4 * torch.tensor(prior).view(-1, 1, 1, 1)).argmax(0).numpy().astype(np.uint8)
    for stage in ("rough", "fine"):
        scores = scale_scores(logp, labels, prior, stage)
        assert scores[SCALES.index(0.4)] == 1.0 and scores.argmax() == SCALES.index(0.4)
        # the same as argmax + the KiTS19 metric at every scale (ties: the lower class, as argmax)
        for s, got in zip(SCALES, scores):
            d = kits19_case_scores((logp + s * torch.tensor(prior).view(-1, 1, 1, 1)).argmax(0).numpy(), labels)
            want = d["kidney_dice"] if stage == "rough" else (d["kidney_dice"] + d["tumor_dice"]) / 2
            assert got == pytest.approx(want, abs=1e-12)


def test_loss_comparison_scores_each_model_on_ground_truth_rois(kits_like, tmp_path, capsys):
    from bisc_training.compare_losses import main
    from bisc_training.data import roi_box
    _, cases, cache = kits_like
    labels = np.zeros((40, 300, 300), np.uint8)
    labels[10:20, 100:180, 120:160] = 1
    start, size = roi_box(labels, (3.0, 0.78, 0.78))
    assert list(size) == [16, 160, 160]  # paper sizing: 160 in-plane, z a multiple of 16 above the kidney
    assert (start <= [10, 100, 120]).all() and (start + size >= [20, 180, 160]).all()
    model = train(small_config(cache, tmp_path / "m", cases, loss="bce"))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [], "test": cases[:2]}))
    assert main(["--cache", str(cache), "--split", str(split), "--model", f"bce={model}",
                 "-o", str(tmp_path / "t1.json")]) == 0
    scores = json.loads((tmp_path / "t1.json").read_text())
    assert set(scores) == {"bce", "bce without prior correction"} and set(scores["bce"]) == set(cases[:2])
    assert "| bce without prior correction |" in capsys.readouterr().out


def test_rough_check_measures_the_rois_against_the_truth():
    """The bundled rough stage on the demo's procedural phantom: both kidneys found, all of them inside the
    ROIs; the check must agree with a direct count on an ROI that covers only half the kidney voxels."""
    from BiSCSegmentationLib.cascade import CascadePredictor
    from bisc_training.check_rough import check_case
    labels = procedural_labels(0)
    ct = synthesize_ct(labels, 0)
    predictor = CascadePredictor.bundled(settings=InferenceSettings(device="cpu"))
    r = check_case(predictor, ct, labels)
    # the bundled rough stage's decision rule leans to the foreground (larger kidneys, so larger ROIs): 1.56x here
    assert r["rois"] == 2 and r["inside_rois"] == 1.0 and 0.7 < r["volume_ratio"] < 2.0 and r["dice"] > 0.7
    # a predictor whose only ROI is cut at the kidneys' median x: about half the kidney voxels inside
    real = predictor.locate(ct)
    pts = labels.index_to_physical(np.argwhere(np.asarray(labels.array) > 0)[:, ::-1].astype(float))
    cut = float(np.median(pts[:, 0]))
    lo, hi = pts.min(axis=0) - 1, pts.max(axis=0) + 1
    from BiSCSegmentationLib.roi import KidneyROI
    half = KidneyROI(tuple((np.array([lo[0], lo[1], lo[2]]) + np.array([cut, hi[1], hi[2]])) / 2),
                     tuple(np.array([cut - lo[0], hi[1] - lo[1], hi[2] - lo[2]])), "right")

    class HalfROI:
        def locate(self, _ct):
            return type(real)(real.mask, real.lowres, [half])

    assert check_case(HalfROI(), ct, labels)["inside_rois"] == pytest.approx(np.mean(pts[:, 0] <= cut), abs=1e-3)


def test_case_written_twice_keeps_the_first_and_leaves_no_temporary_folder(tmp_path):
    # two preparers racing on one case (e.g. a script without a __main__ guard re-run in spawned workers)
    from bisc_training.data import load_case_arrays, write_case_arrays
    write_case_arrays(tmp_path / "case_00001", {"a": np.arange(3)})
    write_case_arrays(tmp_path / "case_00001", {"a": np.arange(5)})
    assert np.array_equal(load_case_arrays(tmp_path / "case_00001")["a"], np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_00001"]


def test_all_prepares_trains_tunes_and_evaluates_in_one_command(kits_like, tmp_path, capsys):
    from bisc_training.cli import main
    root, cases, _ = kits_like
    out = tmp_path / "run"
    args = ["all", "--kits", str(root), "--out", str(out), "--inplane-size", "32", "--rough-z-spacing", "8",
            "--fine-spacing", "3,3,4", "--widths", "4,8,16,32", "--epochs", "1", "--iterations", "2",
            "--batch-size", "2", "--patch-size", "8,16,16", "--calibration-cases", "1", "--tune-cases", "1",
            "--device", "cpu", "--threads", "1", "--checkpoint-every", "1"]
    assert main(args) == 0, capsys.readouterr().err
    split = json.loads((out / "split.json").read_text())
    assert sorted(split["train"] + split["test"]) == cases and all((out / "cache" / c).is_dir() for c in cases)
    rough, fine = load_model_file(out / "rough.pt", stage="rough"), load_model_file(out / "fine.pt", stage="fine")
    assert rough.training["iterations_done"] == fine.training["iterations_done"] == 2
    tuned = fine.training["decision_tuning"]["cases"]  # the tuning step wrote its rules, from a training case
    assert len(tuned) == 1 and set(tuned) <= set(split["train"])
    tuning = json.loads((out / "tuning.json").read_text())
    assert tuning["cases"] == tuned and tuning["scores"]
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    per_case = (out / "evaluation" / "per_case.csv").read_text()
    assert all(c in per_case for c in split["test"]) and not any(c in per_case for c in split["train"])
    assert summary["n_cases"] == len(split["test"]) and 0.0 <= summary["metrics"]["kidney_dice"]["mean"] <= 1.0
