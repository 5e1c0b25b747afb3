"""Precision is said, not inherited: TensorFloat-32 is set from --tf32 (off by default) and
named in the run's first line; --sync-debug makes the training step refuse host waits."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from test_resume import LENET

import models
from spiking import PoissonEncoder
from training import UsageError, run
from training import loop


@pytest.fixture
def restore_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("tf32", [False, True], ids=["default-off", "flag-on"])
def test_tf32_is_set_from_the_setting_and_said_once(tmp_path, capsys, restore_tf32, tf32):
    # the opposite of what the run should set, so that an inherited value fails the test
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not tf32
    run(replace(LENET, epochs=1, tf32=tf32, out_dir=str(tmp_path)))
    assert torch.backends.cuda.matmul.allow_tf32 is tf32
    assert torch.backends.cudnn.allow_tf32 is tf32
    assert capsys.readouterr().out.count(f"TF32 {'on' if tf32 else 'off'}") == 1


def test_the_tf32_flag_parses():
    import mnist_LeNet
    from training.experiment import parse_settings
    assert parse_settings(mnist_LeNet.EXPERIMENT, ["--tf32"]).tf32
    assert not parse_settings(mnist_LeNet.EXPERIMENT, []).tf32


def test_sync_debug_refuses_a_cpu_run(tmp_path):
    with pytest.raises(UsageError, match="--sync-debug"):
        run(replace(LENET, epochs=1, sync_debug=True, out_dir=str(tmp_path)))


def test_sync_debug_covers_the_forward_backward_and_update(monkeypatch):
    """On the CPU the CUDA mode is only recorded: it must be "error" inside the model's forward
    and the optimiser's step, and back to its old value after."""
    modes = ["warn"]
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: modes[-1])
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    seen = []
    torch.manual_seed(0)
    model = models.get_model("lenet", width=0.125)
    model.register_forward_hook(lambda *args: seen.append(("forward", modes[-1])))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    optimizer.register_step_pre_hook(lambda *args: seen.append(("step", modes[-1])))
    batch = torch.rand(2, *model.input_shape), torch.tensor([0, 1])
    loop.train_one_epoch(model, PoissonEncoder(2, 0.5), [batch], optimizer,
                         torch.device("cpu"), sync_debug=True)
    assert seen == [("forward", "error"), ("step", "error")] and modes[-1] == "warn"
