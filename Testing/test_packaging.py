"""pyproject.toml states ranges; constraints.txt pins the exact versions `make venv` and CI install."""
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _pins():
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "constraints.txt").read_text().splitlines()]
    return {Requirement(ln).name.lower(): Requirement(ln) for ln in lines if ln}


def _declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    return [Requirement(r) for r in reqs]


def test_every_dependency_is_a_range_pinned_once_in_constraints_within_that_range():
    pins = _pins()
    declared = _declared()
    assert sorted(pins) == sorted({r.name.lower() for r in declared})
    for req in declared:
        assert not any(s.operator == "==" for s in req.specifier), f"{req}: pyproject states ranges, not pins"
        pin = pins[req.name.lower()]
        (spec,) = pin.specifier
        assert spec.operator == "==" and req.specifier.contains(spec.version), f"{pin} is outside {req}"


def test_make_installs_with_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    installs = [ln for ln in makefile.splitlines() if "pip install" in ln and "--upgrade pip" not in ln]
    assert installs and all("-c constraints.txt" in ln for ln in installs)
    assert re.search(r"^\$\(VENV\)/\.installed:.*constraints\.txt", makefile, re.M)
