"""How the project is installed and tested: pyproject.toml states ranges, constraints.txt pins the exact
versions `make venv` and CI install; tests that need ../shared fail without it."""
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


def test_a_test_that_needs_missing_shared_data_fails_unless_skipping_is_asked_for(tmp_path):
    """CI has ../shared: a test that reads it must fail when it is not there, never pass by skipping."""
    import os
    import shutil
    import subprocess
    import sys

    shutil.copy(ROOT / "Testing" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_shared.py").write_text(
        "from pathlib import Path\nfrom conftest import needs_shared\n\n\n"
        "@needs_shared(Path('/nonexistent/shared/kits19'), 'the KiTS19 label maps')\n"
        "def test_reads_shared():\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k != "BISC_SKIP_SHARED"}

    def run(**extra):
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
                              capture_output=True, text=True, cwd=tmp_path, env={**env, **extra}, timeout=120)
    failed = run()
    assert failed.returncode == 1 and "1 error" in failed.stdout, failed.stdout
    assert "the KiTS19 label maps not found at /nonexistent/shared/kits19" in failed.stdout
    assert "BISC_SKIP_SHARED=1" in failed.stdout
    skipped = run(BISC_SKIP_SHARED="1")
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout
