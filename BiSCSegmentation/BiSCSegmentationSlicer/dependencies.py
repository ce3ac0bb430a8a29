"""Python packages the cascade needs inside Slicer, installed once after the user confirms.

Slicer ships numpy (and SimpleITK); the cascade also needs torch and scipy. torch comes through the PyTorch
extension's PyTorchUtils module (declared in the extension's DEPENDS), which picks the build matching the
computer's GPU driver; scipy is pip-installed at a pinned version that suits Slicer's Python. Nothing is
imported to find out what is missing (``importlib.util.find_spec`` only), so Slicer starts, and the module
loads, with none of them installed.
"""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

TORCH_REQUIREMENT = ">=2.0"   # what the cascade's torch code needs (passed to PyTorchUtils)


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
# 1.17.1 is the version this project is tested with (pyproject.toml).
PIP_REQUIREMENTS = (
    Requirement("scipy", (((3, 11), "scipy==1.17.1"), ((3, 10), "scipy==1.15.3"), ((3, 9), "scipy==1.13.1"))),
)


def installed(import_name: str) -> bool:
    try:
        return importlib.util.find_spec(import_name) is not None
    except (ImportError, ValueError):
        return False


def missing_pip() -> List[Requirement]:
    return [r for r in PIP_REQUIREMENTS if not installed(r.import_name)]


def torch_missing() -> bool:
    return not installed("torch")


def missing_summary() -> str:
    """Plain-language list of what will be installed ("" when nothing is missing)."""
    items = []
    if torch_missing():
        items.append("PyTorch (through the PyTorch extension; about 1-3 GB, picks a GPU build when one fits)")
    items += [r.pin() for r in missing_pip()]
    return ", ".join(items)


def ensure(confirm: Callable[[str], bool], pip_install: Optional[Callable[[str], None]] = None,
           install_torch: Optional[Callable[[], object]] = None) -> bool:
    """Install what is missing after ONE confirmation; True when everything is available afterwards.

    ``confirm(message)`` asks the user; ``pip_install(requirement)`` defaults to ``slicer.util.pip_install``;
    ``install_torch()`` defaults to PyTorchUtils (returns the torch module, or None when declined/failed).
    """
    summary = missing_summary()
    if not summary:
        return True
    if not confirm(f"BiSCSegmentation needs Python packages that are not installed yet: {summary}.\n\n"
                   f"Install them now? This needs an internet connection and can take several minutes; "
                   f"Slicer may need a restart afterwards."):
        return False
    if torch_missing():
        result = (install_torch or _pytorchutils_install)()
        if result is None or torch_missing():
            return False
    pip = pip_install or _slicer_pip_install
    for req in missing_pip():
        pip(req.pin())
    importlib.invalidate_caches()
    return not missing_summary()


def _slicer_pip_install(requirement: str) -> None:
    import slicer

    slicer.util.pip_install(requirement)


def _pytorchutils_install():
    """torch through the PyTorch extension (already confirmed by the user, so PyTorchUtils does not ask again)."""
    try:
        import PyTorchUtils
    except ImportError as exc:
        raise RuntimeError("The PyTorch extension is not installed. Install \"PyTorch\" from the Extensions "
                           "Manager (it is a dependency of BiSCSegmentation), restart Slicer and try again.") from exc
    logic = PyTorchUtils.PyTorchUtilsLogic()
    if logic.torchInstalled():
        return logic.torch
    return logic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)


def requirement_lines(version: Optional[Sequence[int]] = None) -> List[str]:
    """The pinned pip requirements for a Python version (documentation, tests)."""
    return [r.pin(version) for r in PIP_REQUIREMENTS]
