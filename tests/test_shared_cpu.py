"""benchmarks/shared_cpu.py, the shared-CPU measurement: its arguments, its one-line errors, and
(slow) one run alone and beside the PyTorch neighbour. No time is asserted."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "shared_cpu.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args, message", [
    ([], "no command given: put it after --"),
    (["--env", "NOVALUE", "--", "true"], "expected NAME=VALUE, got 'NOVALUE'"),
    (["--repeats", "0", "--", "true"], "--repeats and --load-threads must be at least 1"),
])
def test_bad_arguments_end_in_an_error_and_status_2(args, message):
    result = _run(*args)
    assert result.returncode == 2 and message in result.stderr.splitlines()[-1]


def test_a_failing_command_is_one_error_line_naming_its_last_output():
    result = _run("--repeats", "1", "--", sys.executable, "-c", "import sys; sys.exit('boom')")
    assert result.returncode == 2
    assert result.stderr == "error: the command failed with status 1: boom\n"


@pytest.mark.slow
def test_one_run_alone_and_loaded_passes_its_variables_and_prints_the_ratio():
    check = "import os, sys; sys.exit(os.environ['POLICY_UNDER_TEST'] != 'x')"
    result = _run("--repeats", "1", "--load-seconds", "60", "--env", "POLICY_UNDER_TEST=x", "--",
                  sys.executable, "-c", check)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1] == "its variables: POLICY_UNDER_TEST=x"
    assert [line.split()[2] for line in lines if line.startswith("run ")] == ["alone", "loaded"]
    assert lines[-1].startswith("median alone ") and " loaded / alone " in lines[-1]
