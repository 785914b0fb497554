"""What CI relies on: a hung test fails instead of stalling the run (pytest-timeout, configured in pyproject.toml)."""

import subprocess
import sys
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def pytest_config() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]


def test_every_test_has_a_timeout_of_minutes_not_hours():
    assert 60 <= pytest_config()["timeout"] <= 900


def test_a_hung_test_fails_under_the_projects_config(tmp_path):
    """The repository's own pytest config, on a test that sleeps for a day: it fails at its timeout (lowered to
    2 s here by the marker the slow tests use to set theirs) and the run goes on to the next test."""
    (tmp_path / "test_hang.py").write_text(
        "import time, pytest\n\n@pytest.mark.timeout(2)\ndef test_hangs():\n    time.sleep(86400)\n\n"
        "def test_next():\n    pass\n")
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "--rootdir",
                           str(tmp_path), "-p", "no:cacheprovider", str(tmp_path / "test_hang.py")],
                          capture_output=True, text=True, timeout=120)
    assert time.monotonic() - t0 < 60
    assert done.returncode == 1 and "Timeout" in done.stdout and "1 failed, 1 passed" in done.stdout, done.stdout


def test_accelerate_is_pinned_to_the_releases_checked_for_tied_embeddings_under_fsdp2():
    """docs/gpu.md: accelerate 1.15.0 and 1.16.0's fsdp2_prepare_model put tied input and output embeddings in one
    FSDP group (torch >= 2.13 raises otherwise); an unpinned accelerate could resolve to an unchecked release."""
    from importlib.metadata import version

    from packaging.requirements import Requirement
    from packaging.version import Version

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (accelerate,) = [Requirement(r) for r in extras["llm"] if Requirement(r).name == "accelerate"]
    allowed = [v for v in ("0.34.0", "1.14.0", "1.15.0", "1.16.0", "1.17.0") if Version(v) in accelerate.specifier]
    assert allowed == ["1.15.0", "1.16.0"]
    assert Version(version("accelerate")) in accelerate.specifier  # what the tests here ran with
