"""The worker's life in a real Slicer session (issue #20, items 1-3): Cancel ends the whole process tree that
Slicer starts through the PythonSlicer launcher (a launcher whose child does the work, as here) within 2 s and
leaves no job folder; the worker starts without a console window on Windows (platform faked); closing the
scene, reloading the module (logic.close) or leaving the application during a run cancels it cleanly, and a
result that arrives after its CT was closed adds nothing to the scene."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest

from slicer_fixtures import ROOT, case_files, ct_node, ctx, needs_slicer_core  # noqa: F401 - fixtures

pytestmark = [needs_slicer_core, pytest.mark.slicer]

CHILD = "import os, sys, time\nopen(sys.argv[1], 'a').write(f'{os.getpid()}\\n')\ntime.sleep(120)\n"


def launcher(tmp_path):
    """A stand-in for PythonSlicer: it starts the real work in a child Python and waits for it, as the
    launcher does. Both PIDs are appended to ``tmp_path/pids``; the job folder is kept in ``tmp_path/jobdir``."""
    (tmp_path / "child.py").write_text(CHILD)
    path = tmp_path / "PythonSlicer"
    path.write_text(f"#!{sys.executable}\n" + "\n".join([
        "import os, subprocess, sys",
        f"pids = {str(tmp_path / 'pids')!r}",
        f"open({str(tmp_path / 'jobdir')!r}, 'w').write(sys.argv[-1])",
        f"child = subprocess.Popen([sys.executable, {str(tmp_path / 'child.py')!r}, pids])",
        "open(pids, 'a').write(f'{os.getpid()}\\n')",
        "sys.exit(child.wait())", ""]))
    path.chmod(0o755)
    return str(path)


def wait_for_pids(tmp_path, n=2, timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        f = tmp_path / "pids"
        if f.exists():
            pids = [int(x) for x in f.read_text().split()]
            if len(pids) >= n:
                return pids
        time.sleep(0.02)
    raise AssertionError("the fake launcher did not start its child")


def tiny_ct():
    from BiSCSegmentationLib.volume import Volume
    return Volume(np.zeros((4, 4, 4), np.int16) - 1000)


def _files_choice(case):
    from BiSCSegmentationSlicer.models import ModelChoice
    return ModelChoice(kind="files", rough_path=case["rough"], fine_path=case["fine"])


@pytest.mark.parametrize("with_psutil", [True, False], ids=["psutil", "process-group"])
def test_cancel_ends_the_launcher_and_its_child_within_2s(tmp_path, monkeypatch, with_psutil):
    from BiSCSegmentationSlicer import proctree
    from BiSCSegmentationSlicer.worker import ProcessJob, make_request

    if not with_psutil:   # Slicer bundles psutil; without it the process group still ends the tree
        monkeypatch.setattr(proctree, "_psutil", lambda: None)
    else:
        assert proctree._psutil() is not None, "psutil is a dependency (pyproject's slicer extra)"
    job = ProcessJob(make_request("locate", {}), tiny_ct(), python=launcher(tmp_path)).start()
    pids = wait_for_pids(tmp_path)
    jobdir = (tmp_path / "jobdir").read_text()
    assert json.load(open(os.path.join(jobdir, "request.json")))["parent_pid"] == os.getpid()
    assert all(proctree.alive(p) for p in pids)
    t0 = time.monotonic()
    survivors = job.cancel()
    took = time.monotonic() - t0
    assert survivors == [] and took < 2.0, (survivors, took)
    assert not any(proctree.alive(p) for p in pids), "a process of the worker tree is still running"
    assert not os.path.exists(jobdir) and not os.path.exists(job.dir), "the job folder was left behind"
    status = job.poll()
    assert status.state == "cancelled" and status.error_kind == "cancelled" and not job.running


def test_worker_starts_without_a_console_window_on_windows(tmp_path, monkeypatch):
    """Platform faked: what Popen gets on Windows (no console, own process group), and the taskkill
    fallback, on any machine."""
    from BiSCSegmentationSlicer import proctree, worker

    class FakeStartupInfo:
        def __init__(self):
            self.dwFlags, self.wShowWindow = 0, 1

    fake = types.SimpleNamespace(STARTUPINFO=FakeStartupInfo)   # constants missing: Win32 values are used
    kw = proctree.popen_kwargs("win32", fake)
    assert kw["creationflags"] & 0x08000000 and kw["creationflags"] & 0x00000200      # NO_WINDOW, NEW_GROUP
    assert kw["startupinfo"].dwFlags & 0x1 and kw["startupinfo"].wShowWindow == 0      # SW_HIDE
    assert "start_new_session" not in kw
    assert proctree.popen_kwargs("linux") == {"start_new_session": True}
    assert proctree.popen_kwargs("darwin") == {"start_new_session": True}

    # ProcessJob passes them to Popen; a start that fails leaves no job folder
    seen = {}

    def fake_popen(args, **kwargs):
        seen.update(kwargs)
        raise OSError("not really starting anything")
    monkeypatch.setattr(proctree, "sys", types.SimpleNamespace(platform="win32"))
    monkeypatch.setattr(proctree, "subprocess", types.SimpleNamespace(STARTUPINFO=FakeStartupInfo))
    monkeypatch.setattr(worker.subprocess, "Popen", fake_popen)
    job = worker.ProcessJob(worker.make_request("locate", {}), tiny_ct(), python=sys.executable)
    with pytest.raises(OSError):
        job.start()
    assert seen["creationflags"] & 0x08000000 and seen["startupinfo"].wShowWindow == 0
    assert not os.path.exists(job.dir)

    # without psutil, Windows ends the tree with taskkill /T, itself without a console window
    calls = []
    monkeypatch.undo()
    monkeypatch.setattr(proctree, "_psutil", lambda: None)
    proctree.kill_tree(4242, timeout=0.05, platform="win32", run=lambda args, **kw: calls.append((args, kw)))
    assert calls[0][0] == ["taskkill", "/F", "/T", "/PID", "4242"]
    assert calls[0][1]["creationflags"] & 0x08000000


def test_scene_close_and_module_reload_cancel_the_run(ctx, ct_node, case_files, tmp_path):
    from BiSCSegmentationSlicer import proctree
    from BiSCSegmentationSlicer.logic import CANCELLED_MESSAGE, BiSCLogic, Options, WorkflowError

    logic = BiSCLogic(ctx, python=launcher(tmp_path))
    from test_slicer_planning_updates import written
    _, seg, _ = written(ctx, ct_node, logic)
    logic.observe(seg, ct_node, schedule=lambda flush: None)
    run = logic.start_locate(ct_node, Options(model=_files_choice(case_files)))
    pids = wait_for_pids(tmp_path)
    t0 = time.monotonic()
    ctx.scene.Clear(0)                                    # File > Close scene
    assert time.monotonic() - t0 < 2.5
    assert not any(proctree.alive(p) for p in pids) and not os.path.exists(run.job.dir)
    status = run.job.poll()
    assert status.state == "cancelled" and logic.active == [] and logic.observers == {}
    with pytest.raises(WorkflowError, match=CANCELLED_MESSAGE):   # the widget's timer sees it: no dialog
        logic.finish_locate(run, status)
    assert not ctx.nodes_by_class("vtkMRMLMarkupsROINode") and not ctx.nodes_by_class("vtkMRMLSegmentationNode")

    # module reload / application exit: the widget's cleanup closes the logic, which cancels
    (tmp_path / "pids").unlink()
    from BiSCSegmentationSlicer.scene import load_volume
    node = load_volume(ctx, case_files["ct"])
    run = logic.start_locate(node, Options(model=_files_choice(case_files)))
    pids = wait_for_pids(tmp_path)
    logic.close()
    assert not any(proctree.alive(p) for p in pids) and run.job.poll().state == "cancelled"
    assert not os.path.exists(run.job.dir)


def test_a_result_for_a_closed_ct_adds_nothing(ctx, ct_node):
    from BiSCSegmentationLib.roi import KidneyROI
    from BiSCSegmentationSlicer.logic import CLOSED_MESSAGE, BiSCLogic, Run, WorkflowError
    from BiSCSegmentationSlicer.scene import volume_from_node
    from BiSCSegmentationSlicer.worker import Status

    logic = BiSCLogic(ctx)
    ct = volume_from_node(ct_node)
    roi = KidneyROI(tuple(ct.index_to_physical((np.array(ct.size_ijk) - 1) / 2)), (100, 100, 100), "right")
    done = Status(state="done", result={"mask": np.ones(ct.array.shape, np.uint8), "rois": [roi]})
    ctx.scene.RemoveNode(ct_node)
    n = ctx.scene.GetNumberOfNodes()
    with pytest.raises(WorkflowError) as info:
        logic.finish_locate(Run("locate", ct_node, ct, None), done)
    assert str(info.value) == CLOSED_MESSAGE
    assert ctx.scene.GetNumberOfNodes() == n


def test_application_exit_ends_running_workers(tmp_path):
    """Python leaving (Slicer quitting) with a run going: the atexit hook ends the worker tree."""
    from BiSCSegmentationSlicer import proctree

    code = "\n".join([
        "import sys, time, numpy as np",
        f"sys.path[:0] = [{str(ROOT / 'BiSCSegmentation')!r}]",
        "from BiSCSegmentationLib.volume import Volume",
        "from BiSCSegmentationSlicer.worker import ProcessJob, make_request",
        f"job = ProcessJob(make_request('locate', {{}}), Volume(np.zeros((4, 4, 4), np.int16)), python={launcher(tmp_path)!r}).start()",
        f"while not __import__('os').path.exists({str(tmp_path / 'pids')!r}) or len(open({str(tmp_path / 'pids')!r}).read().split()) < 2:",
        "    time.sleep(0.02)",
        "print(job.dir)"])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pids = wait_for_pids(tmp_path)
    end = time.monotonic() + 2.0
    while any(proctree.alive(p) for p in pids) and time.monotonic() < end:
        time.sleep(0.02)
    assert not any(proctree.alive(p) for p in pids), "the worker outlived the application"
    assert not os.path.exists(out.stdout.strip())


def test_worker_ends_itself_when_slicer_disappears():
    from BiSCSegmentationSlicer import proctree

    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = threading.Event()
    assert proctree.watch_parent(parent.pid, gone.set, interval=0.02) is not None
    time.sleep(0.1)
    assert not gone.is_set()
    parent.kill()
    parent.wait()
    assert gone.wait(2.0), "the watch did not notice that its parent ended"
    assert proctree.watch_parent(0) is None
