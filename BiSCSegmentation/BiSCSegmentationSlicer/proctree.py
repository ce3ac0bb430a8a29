"""Starting and stopping the worker's whole process tree, on Linux, macOS and Windows.

Inside Slicer the worker is started through the ``PythonSlicer`` launcher, which sets up the environment and
starts the real Python as its child. Killing the launcher's PID alone would leave that child running (and
holding memory or the GPU), so a cancel ends every descendant:

- the worker is started in its own process group (POSIX: a new session; Windows: a new process group), and
  on Windows without a console window (``CREATE_NO_WINDOW`` plus a hidden ``STARTUPINFO``);
- :func:`kill_tree` lists the descendants *before* killing anything (a killed parent's children are
  re-parented and can no longer be found through it), kills them all, waits for them (2 s by default) and
  returns the PIDs still alive. It uses psutil (bundled with Slicer) and falls back to the process group
  (POSIX ``killpg``) or ``taskkill /T`` (Windows) when psutil is missing.

:func:`watch_parent` is the other direction: the worker ends itself when Slicer disappears (crash, kill),
so no orphan keeps computing.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, List, Optional

# Windows process creation flags (subprocess has them only on Windows; the values are Win32's)
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000
STARTF_USESHOWWINDOW = 0x00000001
SW_HIDE = 0


def _psutil():
    try:
        import psutil
    except ImportError:
        return None
    return psutil


def is_windows(platform: Optional[str] = None) -> bool:
    return (platform or sys.platform).startswith("win")


def popen_kwargs(platform: Optional[str] = None, subprocess_module=None) -> dict:
    """Extra ``subprocess.Popen`` arguments for a worker: own process group, and no console on Windows.

    ``platform`` and ``subprocess_module`` default to this computer's; tests pass others to check what
    Windows gets on any machine.
    """
    if not is_windows(platform):
        return {"start_new_session": True}
    subprocess_module = subprocess_module or subprocess
    flags = (getattr(subprocess_module, "CREATE_NO_WINDOW", CREATE_NO_WINDOW)
             | getattr(subprocess_module, "CREATE_NEW_PROCESS_GROUP", CREATE_NEW_PROCESS_GROUP))
    info = subprocess_module.STARTUPINFO()
    info.dwFlags |= getattr(subprocess_module, "STARTF_USESHOWWINDOW", STARTF_USESHOWWINDOW)
    info.wShowWindow = getattr(subprocess_module, "SW_HIDE", SW_HIDE)
    return {"creationflags": flags, "startupinfo": info}


def descendants(pid: int) -> List[int]:
    """PIDs of all live descendants of ``pid`` (empty without psutil or when ``pid`` is gone)."""
    psutil = _psutil()
    if psutil is None:
        return []
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie, already dead but not yet reaped, is not)."""
    psutil = _psutil()
    if psutil is not None:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False
    if is_windows():   # pragma: no cover - Slicer ships psutil
        return True
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:   # our own child, now reaped
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # pragma: no cover
        return True
    try:   # Linux: a zombie nobody reaped yet is dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def kill_tree(pid: int, timeout: float = 2.0, known: Optional[List[int]] = None,
              platform: Optional[str] = None, run=None) -> List[int]:
    """Kill ``pid`` and all its descendants (``known``: PIDs found earlier, killed too); wait up to
    ``timeout`` seconds; return the PIDs still alive (empty: the tree is gone)."""
    psutil = _psutil()
    pids = [pid] + descendants(pid) + [p for p in (known or []) if p != pid]
    if psutil is not None:
        procs = []
        for p in dict.fromkeys(pids):
            try:
                procs.append(psutil.Process(p))
            except psutil.Error:
                pass
        for proc in reversed(procs):          # children first, so none is re-parented while we work
            try:
                proc.kill()
            except psutil.Error:
                pass
        _, survivors = psutil.wait_procs(procs, timeout=timeout)
        if not is_windows(platform):
            _killpg(pid)                      # anything in the group started meanwhile
        return [p.pid for p in survivors if alive(p.pid)]
    if is_windows(platform):
        (run or subprocess.run)(["taskkill", "/F", "/T", "/PID", str(pid)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL,
                                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", CREATE_NO_WINDOW))
    else:
        _killpg(pid)
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
    end = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < end:
        time.sleep(0.02)
        left = [p for p in left if alive(p)]
    return left


def _killpg(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (the worker's own group: see :func:`popen_kwargs`)."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def watch_parent(parent_pid: int, on_gone: Optional[Callable[[], None]] = None, interval: float = 1.0):
    """Daemon thread: call ``on_gone`` (default: end this process at once) when ``parent_pid`` is no longer
    running. Returns the thread; ``parent_pid`` <= 0 watches nothing (returns None)."""
    if not parent_pid or parent_pid <= 0:
        return None

    def loop():
        while alive(parent_pid):
            time.sleep(interval)
        (on_gone or (lambda: os._exit(3)))()

    thread = threading.Thread(target=loop, name="BiSCSegmentation parent watch", daemon=True)
    thread.start()
    return thread
