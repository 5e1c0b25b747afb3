"""The repository installs as a package (``pip install -e .``, pyproject.toml): the runtime
dependencies come from requirements.txt, the ``test`` and ``bench`` extras from their own files,
every listed package exists, and nothing outside tests/ reaches the packages by editing
``sys.path``."""
import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def requirement_names(path: Path) -> set[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {re.split(r"[<>=!~\[ ;]", line)[0].lower() for line in lines if line}


def test_dependencies_and_extras_come_from_the_requirements_files():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dynamic = setuptools["dynamic"]
    files = {"runtime": dynamic["dependencies"]["file"],
             **{extra: spec["file"] for extra, spec in dynamic["optional-dependencies"].items()}}
    assert files == {"runtime": ["requirements.txt"], "test": ["requirements-test.txt"],
                     "bench": ["requirements-bench.txt"]}
    runtime, test, bench = (requirement_names(ROOT / names[0]) for names in files.values())
    assert {"torch", "torchvision"} <= runtime and "pytest" in test
    assert {"snntorch", "spikingjelly"} <= bench
    assert not runtime & ({"pytest"} | bench), "test and benchmark tools are not runtime needs"
    for package in setuptools["packages"]["find"]["include"]:
        if not package.endswith(".*"):
            assert (ROOT / package / "__init__.py").is_file(), package
    for package, patterns in setuptools["package-data"].items():
        for pattern in patterns:
            assert list((ROOT / package.replace(".", "/")).glob(pattern)), (package, pattern)


def test_nothing_outside_tests_edits_sys_path():
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, text=True, check=True)
    sources = [ROOT / name for name in listed.stdout.splitlines()
               if name.endswith((".py", ".sh")) and not name.startswith("tests/")
               and (ROOT / name).is_file()]
    assert any(path.name == "bench.py" for path in sources)
    offenders = [str(path.relative_to(ROOT)) for path in sources
                 if re.search(r"sys\.path\b|PYTHONPATH", path.read_text())]
    assert not offenders, f"import the installed packages instead: {offenders}"
