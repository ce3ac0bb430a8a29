"""Long work off Slicer's main thread: the cascade in a background thread or a separate Python process.

Both runners have the same interface: ``start()``, ``poll() -> Status`` (cheap; the widget calls it from a
timer), ``cancel()`` and ``wait()``. Only numpy arrays and plain data cross over; all MRML work stays on the
main thread. The process runner (default in Slicer) keeps Slicer responsive even where Python threads are
starved, survives crashes of the computation, and can always be stopped: ``cancel()`` ends the worker's
whole process tree (the ``PythonSlicer`` launcher and the Python it starts, see :mod:`proctree`), confirms
within 2 s that nothing of it is left, and removes the job folder. The worker runs without a console window
on Windows, and ends itself when Slicer's process disappears; live jobs are also ended when Python exits.

Process protocol (a job folder): ``request.json`` + ``ct.npy`` + ``ct.json`` in; ``progress.json`` (replaced
atomically while running); ``result.npz`` + ``result.json`` or ``error.json`` out; ``log.txt`` is stderr.
Run as ``python -c BOOT MODULE_DIR JOBDIR`` (or ``python -m BiSCSegmentationSlicer.worker JOBDIR``).
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np

from BiSCSegmentationLib.errors import error_record

from . import proctree

STAGE_TEXT = {"starting": "Starting", "loading models": "Loading the model", "download": "Downloading the model",
              "rough": "Locating kidneys (rough stage)", "fine": "Segmenting kidneys (fine stage)"}
TASKS = ("locate", "segment")
# The child finds this package through its first argument (and PYTHONPATH), whatever launcher runs it.
BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); from BiSCSegmentationSlicer.worker import main; "
        "sys.exit(main(sys.argv[2:]))")


@dataclass
class Status:
    state: str = "idle"            # idle | running | done | failed | cancelled
    stage: str = "starting"
    fraction: float = 0.0
    error: str = ""
    error_kind: str = ""  # BiSCSegmentationLib.errors.KINDS: input, roi, model, no_kidney, cancelled, ...
    error_type: str = ""  # the exception's class name, for the log only
    # locate: {"mask", "rois"}; segment: {"labels", "rois" (the boxes used)}; both: "backend", "seconds",
    # "warnings" (quality warnings as dicts: code, severity, message)
    result: Optional[dict] = None
    details: str = ""              # traceback / log tail for the Python console

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    @property
    def text(self) -> str:
        return STAGE_TEXT.get(self.stage, self.stage)

    @property
    def warnings(self) -> list:
        """The run's quality warnings (BiSCSegmentationLib.quality.QualityWarning), empty before a result."""
        from BiSCSegmentationLib.quality import QualityWarning

        return [QualityWarning.from_dict(w) for w in (self.result or {}).get("warnings", [])]

    @property
    def notes(self) -> list:
        """What the user should know about how the run went (device choices, the CPU fallback)."""
        return list((self.result or {}).get("notes", []))

    @property
    def ran_on(self) -> str:
        """" (OpenVINO f32 on CPU, 2.1 s)"-style suffix for the status line; empty before a result."""
        r = self.result or {}
        parts = [str(r[k]) if k == "backend" else f"{r[k]:.1f} s" for k in ("backend", "seconds") if r.get(k)]
        return f" ({', '.join(parts)})" if parts else ""


def make_request(task: str, model: dict, settings=None, rois=()) -> dict:
    """What a job needs, as plain data: the task, the model choice (models.ModelChoice.to_dict()), the inference
    settings (BiSCSegmentationLib.inference_settings.InferenceSettings; defaults when None) and the ROIs."""
    from BiSCSegmentationLib.inference_settings import InferenceSettings

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}")
    settings = InferenceSettings() if settings is None else settings
    return {"task": task, "model": dict(model), "settings": settings.to_dict(), "rois": [r.to_dict() for r in rois]}


def compute(request: dict, ct, progress: Callable[[str, float], None], cancel) -> dict:
    """The work itself (any thread or process): pick the device (devices.resolve), load the model, run one
    stage on ``ct`` (a Volume). A GPU that runs out of memory is replaced by the CPU once; ``notes`` in the
    result tell the user about such choices."""
    import torch
    from BiSCSegmentationLib.inference_settings import InferenceSettings

    from . import devices

    settings = InferenceSettings.from_dict(request.get("settings", {}))
    device, notes = devices.resolve(settings.device, torch)
    try:
        result = _compute_on(settings.replace(device=device), request, ct, progress, cancel)
    except Exception as exc:  # noqa: BLE001 - only a GPU out-of-memory error is retried
        if device == "cpu" or not devices.is_out_of_memory(exc):
            raise
        if hasattr(torch, "cuda") and device == "cuda":
            torch.cuda.empty_cache()
        notes.append(devices.OOM_FALLBACK_NOTE)
        progress("starting", 0.0)
        result = _compute_on(settings.replace(device="cpu"), request, ct, progress, cancel)
    result["notes"] = notes
    return result


def _compute_on(settings, request: dict, ct, progress, cancel) -> dict:
    from BiSCSegmentationLib.cascade import CascadePredictor
    from BiSCSegmentationLib.roi import KidneyROI

    from .models import ModelChoice, load_models, model_info

    progress("loading models", 0.0)
    choice = ModelChoice.from_dict(request["model"])
    rough, fine = load_models(choice, progress)
    predictor = CascadePredictor(rough, fine, settings, progress=progress, cancel=cancel)
    if request["task"] == "locate":
        rough_result = predictor.locate(ct)
        result = {"mask": np.asarray(rough_result.mask.array).astype(np.uint8), "rois": list(rough_result.rois)}
    else:
        rois = [KidneyROI(r["center"], r["size"], r.get("side", "unknown")) for r in request["rois"]]
        labels = predictor.segment(ct, rois)
        # the boxes the fine stage used: an ROI that cut the kidney off was grown (CascadePredictor.roi_growth)
        result = {"labels": np.asarray(labels.array).astype(np.uint8), "rois": list(predictor.used_rois)}
    # shown to the user: which backend ran (e.g. "OpenVINO f32 on CPU" or the torch fallback) and how long
    result["backend"] = predictor.backend_name
    result["seconds"] = round(sum(predictor.timings.values()), 2)
    result["warnings"] = [w.to_dict() for w in predictor.warnings]  # what the user must be told to check
    result["model"] = model_info(choice, rough, fine)                # recorded on the output (reports, DICOM SEG)
    return result


# ------------------------------------------------------------------------------------------------ thread
class ThreadJob:
    """Runs :func:`compute` in a daemon thread."""

    def __init__(self, request: dict, ct):
        self.request, self.ct = request, ct
        self._status = Status()
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "ThreadJob":
        self._set(state="running")
        self._thread = threading.Thread(target=self._run, name="BiSCSegmentation", daemon=True)
        self._thread.start()
        return self

    def _set(self, **kw) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self._status, k, v)

    def _progress(self, stage: str, fraction: float) -> None:
        self._set(stage=stage, fraction=float(fraction))

    def _run(self) -> None:
        try:
            result = compute(self.request, self.ct, self._progress, self._cancel)
            self._set(state="done", result=result, fraction=1.0)
        except BaseException as exc:  # noqa: B902 - reported to the main thread, never lost
            self._set(**_failure(error_record(exc)), details=traceback.format_exc())

    def poll(self) -> Status:
        with self._lock:
            return Status(**self._status.__dict__)

    def cancel(self) -> List[int]:
        """Ask the thread to stop (cooperative: the cascade checks between windows); nothing to kill."""
        self._cancel.set()
        return []

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> Status:
        return _wait(self, timeout, interval)


def _wait(job, timeout, interval) -> Status:
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        status = job.poll()
        if status.finished or (end is not None and time.monotonic() > end):
            return status
        time.sleep(interval)


# ----------------------------------------------------------------------------------------------- process
def python_executable() -> str:
    """PythonSlicer inside Slicer (its launcher sets up the environment), else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


_LIVE = set()   # ProcessJobs started and not finished: ended (and their folders removed) at interpreter exit


def cancel_all() -> int:
    """Cancel every live process job (application exit, module reload); returns how many were running."""
    jobs = [job for job in list(_LIVE) if job.running]
    for job in jobs:
        job.cancel()
    return len(jobs)


atexit.register(cancel_all)


class ProcessJob:
    """Runs :func:`compute` in a separate Python (see the module docstring for the protocol)."""

    KILL_TIMEOUT_S = 2.0      # cancel() confirms the whole tree is gone within this time
    WATCH_INTERVAL_S = 1.0    # how often poll() notes the worker's descendants (found even if the launcher dies)

    def __init__(self, request: dict, ct, python: Optional[str] = None, env: Optional[dict] = None):
        self.request, self.ct = request, ct
        self.python = python or python_executable()
        self.env = env
        self.dir = ""
        self.proc: Optional[subprocess.Popen] = None
        self._final: Optional[Status] = None
        self._log = None
        self._seen: List[int] = []       # descendants of the worker seen so far
        self._seen_at = 0.0
        self.survivors: List[int] = []   # PIDs a cancel could not end (empty: confirmed gone)

    @property
    def running(self) -> bool:
        return self.proc is not None and self._final is None

    def start(self) -> "ProcessJob":
        self.dir = tempfile.mkdtemp(prefix="bisc-job-")
        np.save(os.path.join(self.dir, "ct.npy"), np.ascontiguousarray(self.ct.array))
        _write_json(os.path.join(self.dir, "ct.json"), {"spacing": list(self.ct.spacing),
                                                        "origin": list(self.ct.origin),
                                                        "direction": np.asarray(self.ct.direction).tolist()})
        _write_json(os.path.join(self.dir, "request.json"), dict(self.request, parent_pid=os.getpid()))
        env = dict(os.environ if self.env is None else self.env)
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # holds BiSCSegmentationLib too
        env["PYTHONPATH"] = os.pathsep.join([here] + [p for p in [env.get("PYTHONPATH", "")] if p])
        self._log = open(os.path.join(self.dir, "log.txt"), "wb")
        try:
            self.proc = subprocess.Popen([self.python, "-c", BOOT, here, self.dir],
                                         stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                         env=env, cwd=self.dir, **proctree.popen_kwargs())
        except OSError:
            self._finish(Status(state="failed"))
            raise
        _LIVE.add(self)
        return self

    def poll(self) -> Status:
        if self._final is not None:
            return self._final
        code = self.proc.poll()
        if code is None:
            now = time.monotonic()
            if now - self._seen_at > self.WATCH_INTERVAL_S:
                self._seen_at = now
                self._seen = list(dict.fromkeys(self._seen + proctree.descendants(self.proc.pid)))
            progress = _read_json(os.path.join(self.dir, "progress.json")) or {}
            return Status(state="running", stage=progress.get("stage", "starting"),
                          fraction=float(progress.get("fraction", 0.0)))
        return self._finish(self._outcome(code))

    def _outcome(self, code: int) -> Status:
        error = _read_json(os.path.join(self.dir, "error.json"))
        if error:
            return Status(**_failure(error), details=error.get("traceback", ""))
        if code == 0 and os.path.isfile(os.path.join(self.dir, "result.json")):
            meta = _read_json(os.path.join(self.dir, "result.json"))
            with np.load(os.path.join(self.dir, "result.npz")) as data:
                result = {k: data[k] for k in data.files}
            if "rois" in meta:
                from BiSCSegmentationLib.roi import KidneyROI
                result["rois"] = [KidneyROI(r["center"], r["size"], r["side"]) for r in meta["rois"]]
            result.update({k: meta[k] for k in ("backend", "seconds", "warnings", "notes", "model") if k in meta})
            return Status(state="done", stage=meta.get("stage", ""), fraction=1.0, result=result)
        tail = self.log_tail()
        return Status(
            state="failed",
            error_kind="process",
            details=tail,
            error=f"the background process stopped unexpectedly (exit code {code})",
        )

    def _finish(self, status: Status) -> Status:
        self._final = status
        _LIVE.discard(self)
        if self._log is not None:
            self._log.close()
            self._log = None
        for _ in range(20):   # Windows: a file of a just-killed process can stay locked for a moment
            shutil.rmtree(self.dir, ignore_errors=True)
            if not os.path.exists(self.dir):
                break
            time.sleep(0.05)
        return status

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(os.path.join(self.dir, "log.txt"), "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def cancel(self) -> List[int]:
        """End the worker's whole process tree now, remove the job folder, and return the PIDs still alive
        after KILL_TIMEOUT_S (empty: confirmed gone). A finished job is left as it is."""
        if self._final is not None or self.proc is None:
            return []
        known = self._seen + proctree.descendants(self.proc.pid)
        self.survivors = proctree.kill_tree(self.proc.pid, self.KILL_TIMEOUT_S, known=known)
        try:
            self.proc.wait(timeout=self.KILL_TIMEOUT_S)
        except subprocess.TimeoutExpired:   # pragma: no cover - reported through survivors
            self.survivors = list(dict.fromkeys(self.survivors + [self.proc.pid]))
        self._finish(Status(state="cancelled", error="cancelled", error_kind="cancelled"))
        return self.survivors

    def wait(self, timeout: Optional[float] = None, interval: float = 0.1) -> Status:
        return _wait(self, timeout, interval)


def _failure(record: dict) -> dict:
    """Status fields for an errors.error_record (the structured error both runners pass back)."""
    kind = str(record.get("kind", "internal"))
    return {
        "state": "cancelled" if kind == "cancelled" else "failed",
        "error": str(record.get("message", "")),
        "error_kind": kind,
        "error_type": str(record.get("type", "")),
    }


def _write_json(path: str, doc) -> None:
    from BiSCSegmentationLib.outputs import replace_file

    replace_file(path, lambda tmp: tmp.write_text(json.dumps(doc)))


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------ child process
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    jobdir = argv[0]
    from BiSCSegmentationLib.volume import Volume

    request = _read_json(os.path.join(jobdir, "request.json"))
    proctree.watch_parent(int(request.get("parent_pid") or 0))   # Slicer gone (crash, kill): stop, no orphan
    geo = _read_json(os.path.join(jobdir, "ct.json"))
    ct = Volume(np.load(os.path.join(jobdir, "ct.npy")), geo["spacing"], geo["origin"], np.array(geo["direction"]))
    cancel_file = os.path.join(jobdir, "cancel")
    last = [0.0, ""]

    def progress(stage: str, fraction: float) -> None:
        now = time.monotonic()
        if stage != last[1] or now - last[0] > 0.2 or fraction >= 1.0:
            last[0], last[1] = now, stage
            _write_json(os.path.join(jobdir, "progress.json"), {"stage": stage, "fraction": float(fraction)})

    try:
        result = compute(request, ct, progress, lambda: os.path.exists(cancel_file))
    except BaseException as exc:  # noqa: B902 - everything goes back to the parent
        _write_json(os.path.join(jobdir, "error.json"), {**error_record(exc), "traceback": traceback.format_exc()})
        return 1
    arrays = {k: v for k, v in result.items() if isinstance(v, np.ndarray)}
    np.savez_compressed(os.path.join(jobdir, "result.npz"), **arrays)
    meta = {"stage": request["task"], "backend": result.get("backend", ""), "seconds": result.get("seconds"),
            "warnings": result.get("warnings", []), "notes": result.get("notes", []), "model": result.get("model")}
    if "rois" in result:
        meta["rois"] = [r.to_dict() for r in result["rois"]]
    _write_json(os.path.join(jobdir, "result.json"), meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
