"""Python packages the cascade needs inside Slicer, installed once after the user confirms.

Slicer ships numpy (and SimpleITK); the cascade also needs torch and scipy. torch comes through the PyTorch
extension's PyTorchUtils module (declared in the extension's DEPENDS), which picks the build matching the
computer's GPU driver; scipy is pip-installed at a pinned version that suits Slicer's Python. Nothing is
imported to find out what is missing (``importlib.util.find_spec`` and package metadata only), so Slicer
starts, and the module loads, with none of them installed. A PyTorch older than devices.MIN_TORCH counts as
missing. :func:`ensure` asks once for everything, reports progress step by step, and with ``reinstall=True``
(the module's *Reinstall dependencies*) replaces the packages even when they are present.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

from .devices import MIN_TORCH, torch_too_old

TORCH_REQUIREMENT = ">=" + ".".join(map(str, MIN_TORCH))   # what the cascade's torch code needs (PyTorchUtils)


@dataclass(frozen=True)
class Requirement:
    import_name: str
    pins: tuple   # ((min_python, "pip requirement"), ...), newest Python first

    def pin(self, version=None) -> str:
        version = tuple(version or sys.version_info[:2])
        for min_python, spec in self.pins:
            if version >= tuple(min_python):
                return spec
        return self.pins[-1][1]


# scipy wheels per Python: 1.13.1 is the last for 3.9 (Slicer 5.0-5.8), 1.15.3 the last for 3.10;
# 1.17.1 is the version this project is tested with (constraints.txt).
PIP_REQUIREMENTS = (
    Requirement("scipy", (((3, 11), "scipy==1.17.1"), ((3, 10), "scipy==1.15.3"), ((3, 9), "scipy==1.13.1"))),
)


# what only the exports need (pyproject.toml's "report" and "dicom" extras), installed on first export
OPTIONAL_REQUIREMENTS = {"report": (("matplotlib", "matplotlib>=3.7,<4"),),
                         "dicom": (("highdicom", "highdicom>=0.23,<1"),)}


def missing_optional(feature: str) -> List[str]:
    """pip requirements of ``feature`` ("report" or "dicom") that are not installed."""
    importlib.invalidate_caches()      # a package installed a moment ago is found
    return [spec for name, spec in OPTIONAL_REQUIREMENTS[feature] if not installed(name)]


def installed(import_name: str) -> bool:
    try:
        return importlib.util.find_spec(import_name) is not None
    except (ImportError, ValueError):
        return False


def missing_pip() -> List[Requirement]:
    return [r for r in PIP_REQUIREMENTS if not installed(r.import_name)]


def installed_version(dist: str) -> Optional[str]:
    """The installed version of a distribution, from its metadata (nothing is imported)."""
    try:
        from importlib import metadata
        return metadata.version(dist)
    except Exception:  # noqa: BLE001 - not installed, or broken metadata
        return None


def torch_old_version() -> Optional[str]:
    """The installed torch's version when it is too old for the cascade, else None."""
    if not installed("torch"):
        return None
    version = installed_version("torch")
    return version if version and torch_too_old(version) else None


def torch_missing() -> bool:
    """No torch, or one too old for the cascade (both are fixed by installing it)."""
    return not installed("torch") or torch_old_version() is not None


def missing_summary() -> str:
    """Plain-language list of what will be installed ("" when nothing is missing)."""
    items = []
    old = torch_old_version()
    if old:
        items.append(f"a newer PyTorch (the installed {old} is too old; {TORCH_REQUIREMENT[2:]} or later is "
                     f"needed)")
    elif torch_missing():
        items.append("PyTorch (through the PyTorch extension; about 1-3 GB, picks a GPU build when one fits)")
    items += [r.pin() for r in missing_pip()]
    return ", ".join(items)


def ensure(confirm: Callable[[str], bool], pip_install: Optional[Callable[[str], None]] = None,
           install_torch: Optional[Callable[..., object]] = None,
           progress: Optional[Callable[[str, int, int], None]] = None, reinstall: bool = False) -> bool:
    """Install what is missing (everything, with ``reinstall``) after ONE confirmation; True when everything is
    available afterwards.

    ``confirm(message)`` asks the user; ``pip_install(args)`` defaults to ``slicer.util.pip_install``;
    ``install_torch(reinstall)`` defaults to PyTorchUtils (returns the torch module, or None when declined or
    failed); ``progress(text, step, steps)`` is told before each step and once at the end (step == steps).
    """
    summary = missing_summary()
    if not summary and not reinstall:
        return True
    if reinstall:
        what = ("PyTorch (through the PyTorch extension) and " + ", ".join(requirement_lines()))
        question = (f"Reinstall BiSCSegmentation's Python packages: {what}?\n\nThis needs an internet "
                    f"connection and can take several minutes; restart Slicer afterwards.")
    else:
        question = (f"BiSCSegmentation needs Python packages that are not installed yet: {summary}.\n\n"
                    f"Install them now? This needs an internet connection and can take several minutes; "
                    f"Slicer may need a restart afterwards.")
    if not confirm(question):
        return False
    torch_step = reinstall or torch_missing()
    pips = list(PIP_REQUIREMENTS) if reinstall else missing_pip()
    steps = int(torch_step) + len(pips)
    report = progress or (lambda text, step, total: None)
    step = 0
    if torch_step:
        report("Installing PyTorch through the PyTorch extension (this can take several minutes)...", step, steps)
        result = (install_torch or _pytorchutils_install)(reinstall)
        if result is None or torch_missing():
            return False
        step += 1
    pip = pip_install or _slicer_pip_install
    for req in pips:
        report(f"Installing {req.pin()}...", step, steps)
        # --no-deps on reinstall: numpy and the rest of Slicer's own packages are never replaced
        pip(f"--force-reinstall --no-deps {req.pin()}" if reinstall else req.pin())
        step += 1
    importlib.invalidate_caches()
    report("Done." if not missing_summary() else "Some packages are still missing.", steps, steps)
    return not missing_summary()


def _slicer_pip_install(requirement: str) -> None:
    import slicer

    slicer.util.pip_install(requirement)


def _pytorchutils_install(reinstall: bool = False):
    """torch through the PyTorch extension (already confirmed by the user, so PyTorchUtils does not ask again);
    ``reinstall``: uninstall the present torch first (PyTorchUtils picks the build for this GPU driver)."""
    try:
        import PyTorchUtils
    except ImportError as exc:
        raise RuntimeError("The PyTorch extension is not installed. Install \"PyTorch\" from the Extensions "
                           "Manager (it is a dependency of BiSCSegmentation), restart Slicer and try again.") from exc
    logic = PyTorchUtils.PyTorchUtilsLogic()
    if (reinstall or torch_old_version()) and logic.torchInstalled() and hasattr(logic, "uninstallTorch"):
        logic.uninstallTorch()
    elif logic.torchInstalled():
        return logic.torch
    return logic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)


def requirement_lines(version: Optional[Sequence[int]] = None) -> List[str]:
    """The pinned pip requirements for a Python version (documentation, tests)."""
    return [r.pin(version) for r in PIP_REQUIREMENTS]
