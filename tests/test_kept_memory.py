"""What a ResNet11 training step keeps for its backward stays within the budget of
docs/internals.md (*What the backward keeps*), counted on fake tensors at full width."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from benchmarks import kept_memory
from spiking import TimeFolded

DOCS = Path(__file__).resolve().parent.parent / "docs" / "internals.md"


def budget() -> int:
    found = re.search(r"at most ([\d,]+) B\s+per\s+image\s+and\s+step", DOCS.read_text())
    assert found, "docs/internals.md states no budget"
    return int(found[1].replace(",", ""))


def per_image_step_at_100() -> float:
    """From the counts at T = 2 and 4: every kept tensor is ``[T, B, ...]`` or ``[B, ...]``, so
    the bytes per image are affine in T (checked at T = 8)."""
    per_image = {t: kept_memory.kept_per_image_step("resnet11", t) * t for t in (2, 4, 8)}
    per_step = (per_image[4] - per_image[2]) / 2
    assert per_image[8] == pytest.approx(per_image[4] + 4 * per_step, rel=1e-12)
    return per_step + (per_image[2] - 2 * per_step) / 100


def test_resnet11_keeps_no_more_than_its_budget():
    assert per_image_step_at_100() <= budget()


def test_a_pool_that_keeps_its_input_breaks_the_budget(monkeypatch):
    """The count sees what autograd's own nodes keep: avg_pool2d keeps its float input."""
    monkeypatch.setattr(TimeFolded, "forward", lambda self, x: self.module(
        x.flatten(0, 1)).unflatten(0, x.shape[:2]))
    assert per_image_step_at_100() > budget()


def test_a_packing_kept_on_ctx_counts(monkeypatch):
    """The count sees what a custom Function keeps on its ctx: a synapse keeping its float
    input instead of int8 codes breaks the budget."""
    monkeypatch.setattr("models.base.derive_synapse_inputs", lambda network: False)
    assert per_image_step_at_100() > budget()


def test_the_batch_that_fits_is_printed_for_the_device_check(capsys):
    """cuda_check.sh starts its batch search from this line."""
    assert kept_memory.main(["--arch", "lenet", "-T", "4", "--width", "0.125", "--batch-only",
                             "--device-bytes", "1e6"]) == 0
    per_step = kept_memory.kept_per_image_step("lenet", 4, 0.125)
    assert int(capsys.readouterr().out) == kept_memory.batch_that_fits(per_step, 4, 10**6) > 0
