"""The project carries its own data: the benchmarks ship inside the package (sharpening/data), intact, and an
installed wheel finds them with no environment variable and no sibling folder."""

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sharpening.llm.data import BENCHMARKS, data_dir, load_problems

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "sharpening" / "data"


def read_sums(folder: Path) -> dict:
    """SHA256SUMS (sha256sum's format: '<hex>  <name>') -> {name: hex}."""
    sums = {}
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name.lstrip("*")] = digest
    return sums


def test_shipped_data_matches_its_checksums():
    sums = read_sums(SHIPPED)
    assert set(sums) == {f"{name}.jsonl" for name in BENCHMARKS}
    for name, digest in sums.items():
        assert hashlib.sha256((SHIPPED / name).read_bytes()).hexdigest() == digest, name
    assert "licen" in (SHIPPED / "README.md").read_text().lower()  # sources and licences travel with the data


def test_data_is_found_in_the_package_without_any_environment_variable(monkeypatch):
    monkeypatch.delenv("SHARPENING_DATA", raising=False)
    assert data_dir().resolve() == SHIPPED.resolve()
    assert len(load_problems("hmmt25")) == 30


def test_missing_benchmark_says_which_file_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARPENING_DATA", str(tmp_path))
    with pytest.raises(ValueError) as err:
        load_problems("amc23")
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "amc23.jsonl") in message
    assert "SHARPENING_DATA" in message and "sharpening/data" in message


def test_an_installed_wheel_carries_the_data(tmp_path):
    """Build a (non-editable) wheel from a copy of the sources, install it into an empty folder and load every
    benchmark from a process that sees neither the checkout nor $SHARPENING_DATA."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "sharpening", src / "sharpening", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    [wheel] = (tmp_path / "dist").glob("sharpening-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    assert {f"sharpening/data/{n}" for n in [*read_sums(SHIPPED), "SHA256SUMS", "README.md"]} <= inside
    subprocess.run([*pip, "install", "--quiet", "--no-deps", "--no-index", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "SHARPENING_DATA"}
    env["PYTHONPATH"] = str(tmp_path / "site")
    code = ("from sharpening.llm.data import BENCHMARKS, data_dir, load_problems; "
            "print(data_dir()); print(sum(len(load_problems(b)) for b in BENCHMARKS))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert Path(out[0]) == tmp_path / "site" / "sharpening" / "data"
    assert int(out[1]) == 500 + 272 + 30 + 30 + 30 + 40 + 1319 + 7498  # the row counts of data/README.md
