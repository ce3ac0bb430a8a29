"""Faults: a run never leaves a corrupt or partial output, never replaces a good file with a bad one, and
never runs code from a data file.

Disk-full and permission failures are simulated (the writer writes a short file, fsync reports ENOSPC,
os.access says no): tests run as root, where chmod does not stop writes. Signals are real, sent to a real
``bisc-segment`` process while it writes.
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from BiSCSegmentationLib import cli, outputs
from BiSCSegmentationLib.cli import phantom_main, segment_main
from BiSCSegmentationLib.model_file import ModelFileError, load_model_file
from BiSCSegmentationLib.outputs import OutputError, OutputSet
from BiSCSegmentationLib.volume import Volume, read_volume, write_volume
from test_cli import _args, ct_path, models  # noqa: F401 (fixtures: tiny constant models, a small CT)
from conftest import needs_shared


def _outs(folder: Path):
    return [folder / "x.nii.gz", folder / "x.seg.nrrd", folder / "x.json"]


def _run(models, ct_path, outs, *extra):
    return segment_main([str(ct_path), "-o", str(outs[0]), "--seg-nrrd", str(outs[1]), "--save-rois", str(outs[2]),
                         "--quiet", *extra] + _args(models))


def _one_error_line(err: str, *expected: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    for e in expected:
        assert e in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def existing(models, ct_path, tmp_path):
    """A folder holding a complete earlier set of outputs, and their bytes."""
    outs = _outs(tmp_path)
    assert _run(models, ct_path, outs) == 0
    return outs, {p: p.read_bytes() for p in outs}


def _unchanged(folder: Path, before):
    assert sorted(os.listdir(folder)) == sorted(p.name for p in before)  # no new file, no .part, no backup
    assert all(p.read_bytes() == data for p, data in before.items())


# ---------------------------------------------------------------------------------------------- disk full
def _short_image_writes(monkeypatch):
    """SimpleITK on a full disk: a short file, no exception."""
    real = outputs._write_image

    def short(image, path, compress):
        real(image, path, compress)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])

    monkeypatch.setattr(outputs, "_write_image", short)


def test_disk_full_short_image_write_leaves_nothing(models, ct_path, tmp_path, monkeypatch, capsys):
    _short_image_writes(monkeypatch)
    assert _run(models, ct_path, _outs(tmp_path)) == 2
    _one_error_line(capsys.readouterr().err, "disk full or write failed while writing the label map",
                    "nothing was written; free space and run again")
    assert os.listdir(tmp_path) == []


def test_disk_full_with_force_keeps_the_valid_existing_outputs(models, ct_path, existing, monkeypatch, capsys):
    outs, before = existing
    _short_image_writes(monkeypatch)
    assert _run(models, ct_path, outs, "--force") == 2
    _one_error_line(capsys.readouterr().err, "disk full")
    _unchanged(outs[0].parent, before)


def test_enospc_on_the_last_output_removes_the_others(models, ct_path, existing, monkeypatch, capsys):
    """fsync is where a full disk shows on many file systems; the ROI file is written last."""
    outs, before = existing
    real = outputs._sync

    def full(path):
        if Path(path).name.endswith(".json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path)

    monkeypatch.setattr(outputs, "_sync", full)
    assert _run(models, ct_path, outs, "--force") == 2
    _one_error_line(capsys.readouterr().err, "disk full or write failed while writing the ROI file")
    _unchanged(outs[0].parent, before)


def test_a_failed_rename_puts_back_every_file_already_replaced(tmp_path, monkeypatch):
    vol = Volume(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    a, b = write_volume(vol, tmp_path / "a.nrrd"), write_volume(vol, tmp_path / "b.nrrd")
    before = {p: p.read_bytes() for p in (a, b)}
    real, calls = outputs._place_one, []

    def second_fails(tmp, target, force, hint):
        calls.append(target)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real(tmp, target, force, hint)

    monkeypatch.setattr(outputs, "_place_one", second_fails)
    out = OutputSet(force=True)
    out.add_image(a, vol.with_array(vol.array + 1))
    out.add_image(b, vol.with_array(vol.array + 1))
    with pytest.raises(OutputError, match="nothing was written"):
        out.commit()
    assert len(calls) == 2
    _unchanged(tmp_path, before)


# ----------------------------------------------------------------------------------- folders and inputs
def _no_work(monkeypatch):
    def never(*a, **k):
        raise AssertionError("the run started computing before refusing an output")
    monkeypatch.setattr(cli, "read_volume", never)


def test_output_folder_under_a_file_is_refused_before_any_work(models, ct_path, tmp_path, monkeypatch, capsys):
    (tmp_path / "plain").write_text("a file")
    _no_work(monkeypatch)
    assert _run(models, ct_path, [tmp_path / "plain" / "sub" / p.name for p in _outs(tmp_path)]) == 2
    _one_error_line(capsys.readouterr().err, "cannot write the label map", "is a file")
    assert os.listdir(tmp_path) == ["plain"]


def test_unwritable_output_folder_is_refused_before_any_work(models, ct_path, tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == locked else real(p, mode, **k))
    _no_work(monkeypatch)
    assert _run(models, ct_path, _outs(locked)) == 2
    _one_error_line(capsys.readouterr().err, f"the folder {locked} is not writable (permission denied)")
    assert os.listdir(locked) == []


def test_unreadable_input_says_permission_denied(models, ct_path, tmp_path, monkeypatch, capsys):
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == ct_path else real(p, mode, **k))
    assert _run(models, ct_path, _outs(tmp_path)) == 2
    line = _one_error_line(capsys.readouterr().err, "cannot be read (permission denied)")
    assert "no such file" not in line and "does not exist" not in line
    assert os.listdir(tmp_path) == []


def test_concurrent_writer_output_is_never_replaced(models, ct_path, tmp_path, monkeypatch, capsys):
    """Another run writes the label map while this one writes its own: this run gives up, cleanly."""
    outs = _outs(tmp_path)
    real = outputs._write_image

    def other_run_finishes_first(image, path, compress):
        if not outs[0].exists():
            outs[0].write_bytes(b"the other run's label map")
        real(image, path, compress)

    monkeypatch.setattr(outputs, "_write_image", other_run_finishes_first)
    assert _run(models, ct_path, outs) == 2
    _one_error_line(capsys.readouterr().err, str(outs[0]), "--force", "nothing was written")
    _unchanged(tmp_path, {outs[0]: b"the other run's label map"})


def test_replace_file_writes_beside_flushes_then_renames(tmp_path, monkeypatch):
    target = tmp_path / "cache.json"
    target.write_text("old")
    seen = []
    real_sync = outputs._sync

    def sync(path):
        # flushed while still the temporary file beside the target, before the rename
        seen.append((Path(path).parent, Path(path).name != target.name, target.read_text()))
        return real_sync(path)

    monkeypatch.setattr(outputs, "_sync", sync)
    assert outputs.replace_file(target, lambda tmp: Path(tmp).write_text("new")) == target
    assert target.read_text() == "new" and seen == [(tmp_path, True, "old")]
    assert sorted(os.listdir(tmp_path)) == ["cache.json"]


def test_replace_file_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old")

    def half_written(tmp):
        Path(tmp).write_bytes(b"ne")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        outputs.replace_file(target, half_written)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["weights.bin"]
    with pytest.raises(KeyboardInterrupt):
        outputs.replace_file(tmp_path / "new.json", lambda tmp: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert os.listdir(tmp_path) == ["weights.bin"]


def test_library_messages_carry_no_api_wording(tmp_path):
    vol = Volume(np.zeros((2, 3, 4), np.uint8))
    path = write_volume(vol, tmp_path / "a.nrrd")
    with pytest.raises(FileExistsError) as info:
        write_volume(vol, path)
    assert "force=True" not in str(info.value) and "exists" in str(info.value)


# ----------------------------------------------------------------------------------------------- signals
_SLOW_WRITER = """
import os, sys, time
from BiSCSegmentationLib import cli, outputs
real = outputs._write_image
def slow(image, path, compress):  # the signal lands while the outputs are being written
    real(image, path, compress)
    open(os.environ["BISC_TEST_MARK"], "w").close()
    time.sleep(60)
outputs._write_image = slow
sys.exit(cli.segment_main(sys.argv[1:]))
"""


def _sigint_as_in_a_terminal():
    """The child gets Ctrl-C's default action even when the test run itself was started in the background
    (``cmd &`` makes a shell ignore SIGINT, and an ignored signal stays ignored in every child, as it should)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


SIGINT_DEFAULT = _sigint_as_in_a_terminal if os.name == "posix" else None


@pytest.mark.parametrize("name,code", [("SIGTERM", 143), ("SIGHUP", 129), ("SIGINT", 130)])
def test_signal_while_writing_leaves_nothing(name, code, models, ct_path, existing, tmp_path_factory):
    if not hasattr(signal, name):
        pytest.skip(f"no {name} here")
    outs, before = existing
    mark = tmp_path_factory.mktemp("mark") / "writing"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(ct_path), "-o", str(outs[0]), "--seg-nrrd",
                             str(outs[1]), "--save-rois", str(outs[2]), "--force", "--quiet"] + _args(models),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "BISC_TEST_MARK": str(mark)}, preexec_fn=SIGINT_DEFAULT)
    deadline = time.monotonic() + 120
    while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mark.exists(), proc.communicate(timeout=10)
    proc.send_signal(getattr(signal, name))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip() == "Cancelled: nothing was written.", err
    _unchanged(outs[0].parent, before)


def test_signal_while_placing_the_outputs_waits_until_they_are_all_in_place(models, ct_path, tmp_path,
                                                                            monkeypatch, capsys):
    outs = _outs(tmp_path)
    real, handler = outputs._place_one, signal.getsignal(signal.SIGTERM)

    def terminated_meanwhile(tmp, target, force, hint):
        if target == outs[0]:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(tmp, target, force, hint)

    monkeypatch.setattr(outputs, "_place_one", terminated_meanwhile)
    assert _run(models, ct_path, outs) == 143
    assert "after all outputs were written" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in outs)
    assert read_volume(outs[1]).array.shape == read_volume(outs[0]).array.shape
    assert signal.getsignal(signal.SIGTERM) == handler  # handlers only while the command runs


def test_sigterm_while_computing_cancels_like_ctrl_c(models, ct_path, tmp_path, monkeypatch, capsys):
    from BiSCSegmentationLib.cascade import CascadePredictor
    real = CascadePredictor.segment

    def terminated(self, ct, rois):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(self, ct, rois)

    monkeypatch.setattr(CascadePredictor, "segment", terminated)
    assert _run(models, ct_path, _outs(tmp_path)) == 143
    assert capsys.readouterr().err.strip() == "Cancelled: nothing was written."
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP here")
def test_signals_ignored_by_the_caller_stay_ignored():
    """``nohup bisc-segment ...`` must survive the terminal closing."""
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with outputs.signals_as_interrupts():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is outputs._on_signal
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


# ------------------------------------------------------------------------------------- no code from data
class _Evil:
    """Unpickling this creates the marker file: code from the data file would have run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_torch_file(path: Path, marker: Path, **plain) -> Path:
    torch.save({**plain, "payload": _Evil(marker)}, path)
    return path


def test_model_file_with_code_is_refused(models, ct_path, tmp_path, capsys):
    marker = tmp_path / "code_ran"
    evil = _evil_torch_file(tmp_path / "evil.pt", marker, format="bisc-unet-model")
    with pytest.raises(ModelFileError, match="could run code"):
        load_model_file(evil)
    out = tmp_path / "out"
    rc = segment_main([str(ct_path), "-o", str(out / "x.nii.gz"), "--rough-model", models["rough"],
                       "--fine-model", str(evil), "--quiet"])
    assert rc == 2
    _one_error_line(capsys.readouterr().err, str(evil), "refused")
    assert not marker.exists() and not out.exists()


def _tiny_train_config(tmp_path):
    from bisc_training.train import TrainConfig
    return TrainConfig(stage="fine", cache_dir=str(tmp_path / "no-cache"), out_dir=str(tmp_path / "run"),
                       widths=[4, 8, 16, 32], epochs=1, iterations=1, batch_size=1, patch_size=[8, 16, 16],
                       threads=1)


def test_checkpoint_with_code_is_refused(tmp_path):
    from bisc_training.train import train
    cfg = _tiny_train_config(tmp_path)
    marker = tmp_path / "code_ran"
    ckpt = Path(cfg.out_dir) / "fine_checkpoint.pt"
    ckpt.parent.mkdir()
    _evil_torch_file(ckpt, marker, iteration=1)
    with pytest.raises(ValueError, match="could run code") as info:
        train(cfg)
    assert str(ckpt) in str(info.value) and not marker.exists()


def test_truncated_checkpoint_says_so(tmp_path):
    from bisc_training.train import train
    cfg = _tiny_train_config(tmp_path)
    ckpt = Path(cfg.out_dir) / "fine_checkpoint.pt"
    ckpt.parent.mkdir()
    torch.save({"iteration": 1, "model": {"w": torch.zeros(1000)}}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:300])
    with pytest.raises(ValueError) as info:
        train(cfg)
    assert str(info.value) == f"{ckpt}: is truncated or corrupt; delete it to start over, or restore it"


def test_cache_array_with_code_is_refused(tmp_path):
    from bisc_training.data import load_case_arrays
    marker = tmp_path / "code_ran"
    case = tmp_path / "case_00000"
    case.mkdir()
    np.save(case / "fine0_ct.npy", np.array([_Evil(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a plain array file") as info:
        load_case_arrays(case)
    assert str(case / "fine0_ct.npy") in str(info.value) and not marker.exists()


# ------------------------------------------------------------------------------------------ bisc-phantom
@pytest.mark.parametrize("extra,expected", [(["--spacing", "500", "500", "500"], "--spacing"),
                                            (["--spacing", "0.1", "1", "1"], "--spacing"),
                                            (["--spacing", "nan", "1", "1"], "--spacing"),
                                            (["--spacing", "inf", "1", "1"], "--spacing"),
                                            (["--seed", "-5"], "--seed")])
def test_phantom_refuses_bad_numbers_and_writes_nothing(extra, expected, tmp_path, capsys):
    out = tmp_path / "cases"
    assert phantom_main([str(out), *extra]) == 2
    _one_error_line(capsys.readouterr().err, expected)
    assert not out.exists()


def test_phantom_case_is_written_whole_or_not_at_all(tmp_path, monkeypatch, capsys):
    real = outputs._write_image

    def label_map_fails(image, path, compress):
        if "segmentation" in Path(path).name:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(image, path, compress)

    monkeypatch.setattr(outputs, "_write_image", label_map_fails)
    assert phantom_main([str(tmp_path / "cases"), "--spacing", "4", "4", "8"]) == 2
    _one_error_line(capsys.readouterr().err, "disk full")
    assert not (tmp_path / "cases").exists()


def test_outputs_error_is_a_value_error():
    """Every caller's existing ``except ValueError`` turns these into one clear line."""
    assert issubclass(OutputError, ValueError) and issubclass(outputs.OutputExistsError, FileExistsError)


REAL_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "realct" / "totalseg_example" / "ct.nii.gz"


@pytest.mark.slow
@needs_shared(REAL_CT, "the shared real CT")
@pytest.mark.parametrize("stage,name,code", [("rough stage", "SIGINT", 130), ("rough stage", "SIGTERM", 143),
                                             ("fine stage", "SIGINT", 130), ("fine stage", "SIGTERM", 143)])
def test_a_signal_in_each_stage_stops_the_real_command_and_writes_nothing(stage, name, code, tmp_path):
    """The installed bisc-segment on a real CT with the bundled models: the signal is sent as soon as the
    progress bar names the stage."""
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    cmd = [str(Path(sys.executable).parent / "bisc-segment"), str(REAL_CT), "-o", str(out / "labels.nii.gz"),
           "--seg-nrrd", str(out / "labels.seg.nrrd"), "--summary", str(out / "summary.json"), "--device", "cpu"]
    if stage == "rough stage":
        cmd.append("--rough-only")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=SIGINT_DEFAULT)
    seen, end = b"", time.monotonic() + 120
    while stage.encode() not in seen and time.monotonic() < end and proc.poll() is None:
        seen += os.read(proc.stderr.fileno(), 256)
    assert stage.encode() in seen, seen[-400:]
    proc.send_signal(getattr(signal, name))
    err = (seen + proc.communicate(timeout=60)[1]).decode(errors="replace")
    assert proc.returncode == code and "Cancelled: nothing was written." in err and "Traceback" not in err
    assert not out.exists() or os.listdir(out) == []
