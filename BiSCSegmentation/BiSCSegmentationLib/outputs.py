"""All-or-nothing output files: a run leaves either every output it promised, complete, or none of them.

Each output of an :class:`OutputSet` is written to a hidden temporary file in its own folder, flushed to disk
(fsync) and checked (size; images read back and compared voxel for voxel; JSON and text read back), and
only when every output passed are they renamed into place. On any failure or interruption the temporary
files are removed and files that existed before are untouched, byte for byte. The read-back matters:
SimpleITK writes a short file on a full disk and only complains on stderr.

Command-line tools wrap their run in :func:`signals_as_interrupts`, so that SIGTERM and SIGHUP clean up like
Ctrl-C; while outputs are being renamed into place, signals wait until the set is complete.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from .errors import InputError

DEFAULT_HINT = "choose another name or allow overwriting it"
Writer = Callable[[Path], None]
Verifier = Callable[[Path], None]


class OutputError(InputError):
    """An output cannot be written; nothing was written. The message says what to do."""


class OutputExistsError(OutputError, FileExistsError):
    """An output file exists and overwriting was not asked for."""


class Interrupted(KeyboardInterrupt):
    """A signal (SIGINT, SIGTERM, SIGHUP) turned into an exception, so that cleanup code runs."""

    def __init__(self, signum: int, outputs_written: bool = False):
        super().__init__(f"signal {signum}")
        self.signum = int(signum)
        self.outputs_written = outputs_written  # arrived while a set was being placed: that set is complete

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 SIGINT, 143 SIGTERM, 129 SIGHUP

    @property
    def name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"


# ------------------------------------------------------------------------------------------------ signals
_SIGNALS = {"installed": False, "defer": 0, "pending": None, "raised": False}


def _on_signal(signum, frame) -> None:
    if _SIGNALS["defer"]:
        _SIGNALS["pending"] = _SIGNALS["pending"] or signum
        return
    if _SIGNALS["raised"]:  # a second signal must not interrupt the cleanup of the first
        return
    _SIGNALS["raised"] = True
    raise Interrupted(signum)


@contextmanager
def signals_as_interrupts():
    """For a command-line entry point: SIGINT, SIGTERM and SIGHUP (where it exists) raise :class:`Interrupted`
    inside the block, so temporary files are removed. Main thread only; signals the caller ignores (nohup)
    stay ignored; the previous handlers come back afterwards. Not for Slicer's process."""
    if threading.current_thread() is not threading.main_thread() or _SIGNALS["installed"]:
        yield
        return
    names = ("SIGINT", "SIGTERM", "SIGHUP")
    old = {s: signal.getsignal(s) for s in (getattr(signal, n) for n in names if hasattr(signal, n))}
    for s, handler in old.items():
        if handler is not signal.SIG_IGN:
            signal.signal(s, _on_signal)
    _SIGNALS.update(installed=True, defer=0, pending=None, raised=False)
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        _SIGNALS.update(installed=False, defer=0, pending=None, raised=False)


@contextmanager
def _signals_deferred(completes: bool = False):
    """Hold signals for a moment that must not be cut in half; on leaving, a held signal is raised.
    ``completes``: the block finishes a set, so a signal raised after it says the outputs were written."""
    _SIGNALS["defer"] += 1
    ok = False
    try:
        yield
        ok = True
    finally:
        _SIGNALS["defer"] -= 1
        pending = _SIGNALS["pending"] if not _SIGNALS["defer"] else None
        if pending:
            _SIGNALS["pending"] = None
            if ok and not _SIGNALS["raised"]:
                _SIGNALS["raised"] = True
                raise Interrupted(pending, outputs_written=completes)


# ------------------------------------------------------------------------------------------- primitives
def _read_umask() -> int:
    mask = os.umask(0o022)  # read once, at import (no other thread is writing files yet)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def make_readable_like_new_file(tmp) -> None:
    """Give a ``mkstemp`` file (always 0600) the mode an ordinary new file gets (0666 minus the umask), so
    an output written atomically can be read by the colleagues who can read the folder."""
    os.chmod(tmp, 0o666 & ~_UMASK)


def reason(exc: OSError) -> str:
    """A few words for why a file operation failed."""
    return {errno.ENOSPC: "disk full", getattr(errno, "EDQUOT", -1): "disk quota exceeded",
            errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.EROFS: "read-only file system", errno.ENOTDIR: "a part of the path is a file, not a folder",
            }.get(exc.errno, exc.strerror or str(exc))


def folder_problem(folder) -> Optional[str]:
    """Why files cannot be written into ``folder`` (made if missing); None when they can. Tries a real
    file, because ``os.access`` says yes to root even on a read-only mount."""
    folder = Path(folder)
    existing = folder
    while True:
        try:
            os.stat(existing)
            break
        except (FileNotFoundError, NotADirectoryError):
            if existing.parent == existing:
                return f"{folder} cannot be created"
            existing = existing.parent
        except OSError as exc:
            return f"the folder {existing} cannot be reached ({reason(exc)})"
    if not existing.is_dir():
        return f"{existing} is a file, so the folder {folder} cannot be created"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"the folder {existing} is not writable (permission denied)"
    try:
        fd, probe = tempfile.mkstemp(prefix=".bisc-probe.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"cannot create files in the folder {existing} ({reason(exc)})"
    return None


def check_target(path, force: bool = False, description: str = "output", hint: str = DEFAULT_HINT) -> Path:
    """Refuse, before any work, an output that exists (unless ``force``), is a folder, or whose folder
    cannot be made or written."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name for the {description}")
    if os.path.lexists(path) and not force:
        raise OutputExistsError(f"{path} exists; {hint} (nothing was written)")
    problem = folder_problem(path.parent)
    if problem:
        raise OutputError(f"cannot write the {description} {path}: {problem}; nothing was written")
    return path


def temp_sibling(path) -> Path:
    """A new hidden temporary file next to ``path`` with the same extension (writers pick the format by it)."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".part" + suffix, dir=path.parent)
    os.close(fd)
    make_readable_like_new_file(tmp)
    return Path(tmp)


def _sync(path: Path) -> int:
    """Flush a written file to the disk (a full disk may only show here); returns its size."""
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _sync_folder(folder: Path) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------ writers and checks
def _write_image(image, path: Path, compress: bool) -> None:
    import SimpleITK as sitk
    sitk.WriteImage(image, str(path), compress)


def image_output(volume, compress: bool = True, metadata: Optional[Dict[str, str]] = None) -> Tuple[Writer, Verifier]:
    """Write ``volume`` (a :class:`volume.Volume`) with SimpleITK; the check reads it back and compares
    shape, geometry, voxels and ``metadata``."""
    import numpy as np

    from .volume import from_sitk, to_sitk

    def write(tmp: Path) -> None:
        image = to_sitk(volume)
        for key, value in (metadata or {}).items():
            image.SetMetaData(key, value)
        _write_image(image, tmp, compress)

    def verify(tmp: Path) -> None:
        import SimpleITK as sitk
        image = sitk.ReadImage(str(tmp))
        got = from_sitk(image)
        if got.array.shape != volume.array.shape:
            raise ValueError(f"shape {got.array.shape} instead of {volume.array.shape}")
        if not (np.allclose(got.spacing, volume.spacing, rtol=1e-5, atol=1e-6)
                and np.allclose(got.origin, volume.origin, atol=1e-3)
                and np.allclose(got.direction, volume.direction, atol=1e-4)):
            raise ValueError("geometry differs")
        floats = np.issubdtype(got.array.dtype, np.floating)
        step = max(1, (1 << 24) // max(1, got.array[0].size))  # slabs of ~16 M voxels: no full-size temporary
        for k in range(0, got.array.shape[0], step):
            if not np.array_equal(got.array[k:k + step], volume.array[k:k + step], equal_nan=floats):
                raise ValueError("voxels differ")
        for key, value in (metadata or {}).items():
            if not image.HasMetaDataKey(key) or image.GetMetaData(key) != value:
                raise ValueError(f"header field {key} differs")

    return write, verify


def text_output(text: str) -> Tuple[Writer, Verifier]:
    data = text.encode("utf-8")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    def verify(tmp: Path) -> None:
        if Path(tmp).read_bytes() != data:
            raise ValueError("content differs")

    return write, verify


def json_output(doc, indent: Optional[int] = 2) -> Tuple[Writer, Verifier]:
    text = json.dumps(doc, indent=indent) + "\n"
    write, same_text = text_output(text)

    def verify(tmp: Path) -> None:
        same_text(tmp)
        json.loads(Path(tmp).read_text(encoding="utf-8"))

    return write, verify


# --------------------------------------------------------------------------------------------- the set
@dataclass
class _Output:
    path: Path
    write: Writer
    verify: Optional[Verifier]
    description: str


def _write_failed(item: _Output, detail: str) -> OutputError:
    return OutputError(f"disk full or write failed while writing the {item.description} {item.path} ({detail}): "
                       f"nothing was written; free space and run again")


class OutputSet:
    """Files that are written together or not at all.

    ``add`` (or ``add_image`` / ``add_json`` / ``add_text``) registers each output: ``write(tmp)`` writes it
    to the temporary path it is given, ``verify(tmp)`` raises if what is there is not what was meant.
    ``check()`` refuses up front what cannot work; ``commit()`` writes, checks, and places them all, or
    raises :class:`OutputError` / :class:`OutputExistsError` having changed nothing. ``hint`` finishes the
    "exists" message (a CLI passes "pass --force to overwrite it").
    """

    def __init__(self, force: bool = False, hint: str = DEFAULT_HINT):
        self.force = force
        self.hint = hint
        self._items: List[_Output] = []

    @property
    def paths(self) -> List[Path]:
        return [item.path for item in self._items]

    def add(self, path, write: Writer, verify: Optional[Verifier] = None, description: str = "output") -> Path:
        path = Path(path)
        if any(os.path.abspath(path) == os.path.abspath(p) for p in self.paths):
            raise OutputError(f"{path}: two outputs have the same file name; give each output its own path")
        self._items.append(_Output(path, write, verify, description))
        return path

    def add_image(self, path, volume, description: str = "image", compress: bool = True,
                  metadata: Optional[Dict[str, str]] = None) -> Path:
        return self.add(path, *image_output(volume, compress, metadata), description=description)

    def add_json(self, path, doc, description: str = "JSON file", indent: Optional[int] = 2) -> Path:
        return self.add(path, *json_output(doc, indent), description=description)

    def add_text(self, path, text: str, description: str = "text file") -> Path:
        return self.add(path, *text_output(text), description=description)

    def check(self) -> None:
        for item in self._items:
            check_target(item.path, self.force, item.description, self.hint)

    def commit(self) -> List[Path]:
        """Write, check and place every output; all of them or, on any failure or signal, none."""
        self.check()  # again: another run may have written one meanwhile
        temps: List[Path] = []
        made: List[Path] = []
        done = False
        try:
            for item in self._items:
                with _signals_deferred():
                    try:
                        made += _make_folder(item.path.parent)
                        temps.append(temp_sibling(item.path))
                    except OSError as exc:
                        raise OutputError(f"cannot write the {item.description} {item.path} ({reason(exc)}); "
                                          f"nothing was written") from exc
                self._write_one(item, temps[-1])
            with _signals_deferred(completes=True):
                try:
                    self._place(temps)
                except OutputError:
                    raise
                except OSError as exc:
                    raise OutputError(f"cannot put the outputs in place ({reason(exc)}); nothing was written "
                                      f"and earlier files are as they were") from exc
                made, done = [], True
        finally:
            with _signals_deferred(completes=done):
                for tmp in temps:
                    _unlink(tmp)
                for folder in reversed(made):
                    try:
                        folder.rmdir()
                    except OSError:
                        pass
        return self.paths

    def _write_one(self, item: _Output, tmp: Path) -> None:
        try:
            item.write(tmp)
            size = _sync(tmp)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EIO):
                raise _write_failed(item, reason(exc)) from exc
            raise OutputError(f"cannot write the {item.description} {item.path} ({reason(exc)}); nothing "
                              f"was written") from exc
        except RuntimeError as exc:  # SimpleITK
            lines = str(exc).strip().splitlines()
            raise _write_failed(item, lines[-1].strip() if lines else "writer error") from exc
        if size == 0:
            raise _write_failed(item, "the file is empty")
        if item.verify is not None:
            try:
                item.verify(tmp)
            except Exception as exc:  # any reader error means the file is not what was meant
                lines = str(exc).strip().splitlines()
                raise _write_failed(item, f"read back: {lines[-1].strip() if lines else type(exc).__name__}") from exc

    def _place(self, temps: List[Path]) -> None:
        """Rename every temporary file into place; if one fails, put back what was there before."""
        placed: List[Tuple[Path, Optional[Path], bool]] = []  # (target, backup of what it replaced, existed)
        try:
            for item, tmp in zip(self._items, temps):
                existed = os.path.lexists(item.path)
                placed.append((item.path, _place_one(tmp, item.path, self.force, self.hint), existed))
        except BaseException:
            for target, backup, existed in reversed(placed):
                if backup is not None:
                    os.replace(backup, target)
                elif not existed:
                    _unlink(target)
            raise
        finally:
            for _, backup, _ in placed:
                if backup is not None:
                    _unlink(backup)
        for folder in {item.path.parent for item in self._items}:
            _sync_folder(folder)


def _place_one(tmp: Path, target: Path, force: bool, hint: str) -> Optional[Path]:
    """Move ``tmp`` to ``target``; returns a hard-linked backup of a replaced file (None if it was new)."""
    if not force:
        try:
            os.link(tmp, target)  # fails if a file appeared meanwhile: never replaces another run's output
            return None
        except FileExistsError:
            raise OutputExistsError(f"{target} appeared while this run was writing it (another run?); {hint} "
                                    f"(nothing was written)") from None
        except OSError:  # no hard links here (e.g. FAT): check, then rename
            if os.path.lexists(target):
                raise OutputExistsError(f"{target} appeared while this run was writing it (another run?); "
                                        f"{hint} (nothing was written)") from None
            os.replace(tmp, target)
            return None
    backup = None
    if os.path.lexists(target):
        backup = target.with_name(f".{target.name}.{os.getpid()}.{id(tmp)}.bak")
        try:
            os.link(target, backup)
        except OSError:
            backup = None
    os.replace(tmp, target)
    return backup


def _make_folder(folder: Path) -> List[Path]:
    """``mkdir -p``; returns the folders it made (to remove them again if the set fails)."""
    missing = []
    for p in [folder] + list(folder.parents):
        if p.exists():
            break
        missing.append(p)
    folder.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_file(path, write: Writer, verify: Optional[Verifier] = None, force: bool = False,
               description: str = "file", hint: str = DEFAULT_HINT) -> Path:
    """One output, all or nothing (an :class:`OutputSet` of one)."""
    out = OutputSet(force, hint)
    out.add(path, write, verify, description)
    return out.commit()[0]


def replace_file(path, write: Writer) -> Path:
    """Write one file in place of ``path`` atomically: ``write(tmp)`` fills a hidden temporary file beside it,
    which is flushed to disk (fsync) and renamed over ``path`` (replacing any file there), then the folder is
    flushed. If ``write`` raises, the temporary file is removed and ``path`` is as it was. No existence check,
    no read-back, no folder is made: for caches, downloads and files exchanged between processes (outputs a
    user asked for go through :class:`OutputSet` / :func:`write_file`)."""
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        write(tmp)
        _sync(tmp)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    _sync_folder(path.parent)
    return path


def write_json(path, doc, force: bool = False, description: str = "JSON file", indent: Optional[int] = 2) -> Path:
    return write_file(path, *json_output(doc, indent), force=force, description=description)


def check_targets(paths: Iterable[Tuple[str, Path]], force: bool, hint: str = DEFAULT_HINT) -> None:
    """:func:`check_target` for (description, path) pairs."""
    for description, path in paths:
        check_target(path, force, description, hint)


__all__ = ["OutputSet", "OutputError", "OutputExistsError", "Interrupted", "signals_as_interrupts", "check_target",
           "check_targets", "folder_problem", "temp_sibling", "replace_file", "write_file", "write_json", "image_output",
           "json_output", "text_output", "make_readable_like_new_file"]
