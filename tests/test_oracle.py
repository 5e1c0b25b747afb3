"""Self-checks of the authors'-loop port (models/authors_loop.py) in float64: hand-worked
single neurons, the NG delta rule (docs/algorithm.md, *Approximate backward*) checked end to end
inside a real network, the output scaling, and every arch's forward + backward with and without
dropout masks. Tiny widths, T = 3..5, batch 2: a few seconds."""
from __future__ import annotations

import math

import pytest
import torch

from models import authors_loop as oracle

DT = torch.float64


# ----------------------------------------------------------------------------------------------------
# helpers

def _shapes(arch: str, cin: int, hw: int, widths=(3, 4, 5, 6), hidden: int = 7, classes: int = 10):
    """Weight shapes and hidden-LIF output shapes (per sample) for a tiny ``arch``."""
    a, b, c, d = widths
    w: dict[str, tuple] = {}
    out: dict[str, tuple] = {}
    if arch == "lenet":
        w["cnn1"], out["cnn1"] = (a, cin, 5, 5), (a, hw, hw)
        w["cnn2"], out["cnn2"] = (b, a, 5, 5), (b, hw // 2, hw // 2)
        w["fc0"], out["fc0"] = (hidden, b * (hw // 4) ** 2), (hidden,)
    elif arch == "vgg9":
        for name, ci, co, s in [("cnn11", cin, a, hw), ("cnn12", a, a, hw),
                                ("cnn21", a, b, hw // 2), ("cnn22", b, b, hw // 2),
                                ("cnn31", b, c, hw // 4), ("cnn32", c, c, hw // 4), ("cnn33", c, c, hw // 4)]:
            w[name], out[name] = (co, ci, 3, 3), (co, s, s)
        w["fc0"], out["fc0"] = (hidden, c * (hw // 8) ** 2), (hidden,)
    else:
        h2, h4, h8 = hw // 2, hw // 4, hw // 8
        for name, ci, co, s in [("cnn11", cin, a, hw), ("cnn21", a, b, h2), ("cnn22", b, b, h2),
                                ("cnn31", b, c, h2), ("cnn32", c, c, h4),
                                ("cnn41", c, d, h4), ("cnn42", d, d, h4),
                                ("cnn51", d, d, h4), ("cnn52", d, d, h8)]:
            w[name], out[name] = (co, ci, 3, 3), (co, s, s)
        w["shortcut1.0"] = (b, a, 1, 1)
        w["shortcut2.0"] = (c, b, 1, 1)
        w["shortcut3.0"] = (d, c, 1, 1)
        if arch == "resnet13":
            for name in ("cnn61", "cnn62"):
                w[name], out[name] = (d, d, 3, 3), (d, h8, h8)
        w["fc0"], out["fc0"] = (hidden, d * h8 ** 2), (hidden,)
    w["fc1"] = (classes, hidden)
    return w, out


INPUT = {"lenet": (1, 8), "vgg9": (3, 8), "resnet11": (3, 16), "resnet13": (3, 16)}


# (gain, shift) of the test weights per arch: enough activity that every layer passes gradient
DRIVE = {"lenet": (2.0, 0.3), "vgg9": (3.0, 0.4), "resnet11": (1.0, 0.3), "resnet13": (1.0, 0.3)}


def _make(arch: str, T: int = 4, B: int = 2, p: float | None = 0.25, seed: int = 0):
    """Float64 weights ``(randn + shift) * sqrt(gain / fan_in)`` (positive mean so that spikes reach
    the deep layers within a few steps), input spikes [T, B, C, H, W] and dropout masks."""
    g = torch.Generator().manual_seed(seed)
    gain, shift = DRIVE[arch]
    cin, hw = INPUT[arch]
    wshapes, oshapes = _shapes(arch, cin, hw)
    weights = {}
    for name, shp in wshapes.items():
        fan_in = math.prod(shp[1:])
        weights[name + ".weight"] = ((torch.randn(shp, generator=g, dtype=DT) + shift)
                                     * math.sqrt(gain / fan_in)).requires_grad_()
    # signed rate code with mostly positive drive
    u = torch.rand((T, B, cin, hw, hw), generator=g, dtype=DT)
    spikes = (u < 0.6).to(DT) - (u > 0.9).to(DT)
    masks = None
    if p is not None:
        masks = {name: (torch.rand((B, *shp), generator=g, dtype=DT) > p).to(DT) / (1 - p)
                 for name, shp in oshapes.items()}
    return weights, spikes, masks


def _loss(out: torch.Tensor) -> torch.Tensor:
    target = torch.zeros_like(out)
    target[:, 3] = 1
    return ((out - target) ** 2).sum()


def _ng(spike_train: torch.Tensor, leak: float) -> torch.Tensor:
    """NG from a [T, ...] 0/1 spike train, via the closed-form sum (not the recurrence)."""
    T = spike_train.shape[0]
    powers = torch.tensor([leak ** (T - 1 - t) for t in range(T)], dtype=DT)
    lf = (powers.view(-1, *([1] * (spike_train.dim() - 1))) * spike_train).sum(0)
    n = spike_train.sum(0)
    return (lf > 1e-3).to(DT) + math.log(leak) * lf / (n + (n < 1e-3).to(DT))


def _delta_rule(g: torch.Tensor, s: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """dLoss/dI_t from g_t (= dLoss/ds_t) [T, ...] and spikes s [T, ...] by the backward's delta recursion."""
    delta = torch.zeros_like(g[0])
    res = torch.zeros_like(g)
    for t in reversed(range(g.shape[0])):
        delta = torch.where(s[t] > 0, scale * g[t], delta)
        res[t] = delta
    return res


# ----------------------------------------------------------------------------------------------------
# single neurons, worked by hand

def _run_single_lif(currents, threshold, leak, mask, loss_w):
    I = torch.tensor(currents, dtype=DT, requires_grad=True)
    lc = oracle.LeakCorrection(leak)
    mem = torch.zeros((), dtype=DT)
    mems, outs, loss = [], [], 0
    for t in range(len(currents)):
        mem, out = oracle.lif_step(mem, I[t], threshold, leak)
        lc.record("n", out)
        mems.append(mem.item())
        outs.append(out.item())
        loss = loss + loss_w[t] * (out * mask)
    lc.finalize()
    loss.backward()
    return mems, outs, lc, I.grad


def test_lif_single_neuron_hand_worked():
    # theta = 1.25, l = 0.9, I = [0.8, 0.6, 1.5, 0.3, 0.1]
    # t0: u = 0.8 -> no spike, m = 0.72; t1: u = 1.32 -> spike, m = 0; t2: u = 1.5 -> spike, m = 0
    # t3: u = 0.3 -> no, m = 0.27; t4: u = 0.37 -> no, m = 0.333
    mems, outs, lc, grad = _run_single_lif([0.8, 0.6, 1.5, 0.3, 0.1], 1.25, 0.9, 2.0, [1, 2, 3, 4, 5])
    assert outs == [0, 1, 1, 0, 0]
    assert mems == pytest.approx([0.72, 0.0, 0.0, 0.27, 0.333], abs=1e-15)
    # LF = 0.9^3 + 0.9^2 = 1.539, N = 2
    assert lc.LF["n"].item() == pytest.approx(1.539, abs=1e-15)
    assert lc.N["n"].item() == 2
    ng = 1 + math.log(0.9) * 1.539 / 2
    assert lc.NG["n"].item() == pytest.approx(ng, abs=1e-15)
    # g_t = mask * w_t = [2, 4, 6, 8, 10]; delta_t = NG/theta g_t at a spike, delta_{t+1} otherwise
    expected = [ng / 1.25 * 4, ng / 1.25 * 4, ng / 1.25 * 6, 0.0, 0.0]
    assert grad.tolist() == pytest.approx(expected, abs=1e-14)


def test_lif_strict_threshold_and_last_step_spike():
    # u = 1.0 == theta: no spike (strict); membrane leaks; t2 spikes at the last step only.
    mems, outs, lc, grad = _run_single_lif([1.0, -0.2, 0.5], 1.0, 0.99, 1.0, [1.0, 1.0, 3.0])
    assert outs == [0, 0, 1]
    assert mems[0] == 0.99 and mems[1] == pytest.approx(0.99 * (0.99 - 0.2), abs=1e-15) and mems[2] == 0
    ng = 1 + math.log(0.99)  # LF = 1, N = 1
    assert lc.NG["n"].item() == pytest.approx(ng, abs=1e-15)
    # every earlier current is credited with the step-2 spike's gradient (leak straight-through)
    assert grad.tolist() == pytest.approx([3 * ng] * 3, abs=1e-14)


def test_lif_silent_neuron_has_zero_ng_and_gradient():
    mems, outs, lc, grad = _run_single_lif([0.3, 0.3, 0.3], 1.0, 0.99, 1.0, [1.0, 1.0, 1.0])
    assert outs == [0, 0, 0]
    assert lc.NG["n"].item() == 0.0
    assert grad.tolist() == [0.0, 0.0, 0.0]


def test_pool_neuron_threshold_075_and_gradient():
    # one 2x2 window; pooled input 0.75, 0.25, 1.0, 0.0
    pats = [[1, 1, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
    s = torch.tensor(pats, dtype=DT).view(4, 1, 1, 2, 2).requires_grad_()
    mem = torch.zeros((1, 1, 1, 1), dtype=DT)
    mems, outs, loss = [], [], 0
    w = [1.0, 2.0, 3.0, 4.0]
    for t in range(4):
        mem, out = oracle.pool_step(mem, s[t], 0.75)
        mems.append(mem.item())
        outs.append(out.item())
        loss = loss + w[t] * out.sum()
    # 0.75 is not > 0.75: no spike, no leak; 0.75 + 0.25 = 1.0 spikes and resets to 0
    assert outs == [0, 1, 1, 0]
    assert mems == [0.75, 0.0, 0.0, 0.0]
    loss.backward()
    # delta = [g1, g1, g2, 0] = [2, 2, 3, 0], no NG, no 1/theta; avg-pool spreads 1/4 to each input
    expected = torch.tensor([2.0, 2.0, 3.0, 0.0], dtype=DT).view(4, 1, 1, 1, 1).expand(4, 1, 1, 2, 2) / 4
    torch.testing.assert_close(s.grad, expected, rtol=0, atol=1e-15)


def test_output_step_leak_value_and_straight_through_gradient():
    leak = 0.9
    W = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=DT, requires_grad=True)
    xs = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=DT).view(3, 1, 2)
    mem = torch.zeros((1, 2), dtype=DT)
    for t in range(3):
        mem = oracle.output_step(mem, xs[t], W, leak)
    cur = xs.squeeze(1) @ W.detach().T  # [T, classes]
    value = sum(leak ** (3 - t) * cur[t] for t in range(3))
    torch.testing.assert_close(mem.detach().squeeze(0), value, rtol=1e-15, atol=1e-15)
    mem.sum().backward()
    # every step's contribution has weight 1 in the gradient
    torch.testing.assert_close(W.grad, xs.squeeze(1).sum(0).expand(2, 2), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------
# the delta rule end to end inside a real network

@pytest.mark.parametrize("arch,threshold,seed", [("lenet", 1.25, 1), ("vgg9", 1.0, 0),
                                                 ("resnet11", 1.0, 0), ("resnet13", 1.0, 0)])
def test_delta_rule_end_to_end(monkeypatch, arch, threshold, seed):
    """For every hidden LIF layer: dLoss/dI_t == delta rule (NG/theta at spikes) of the gradient g_t
    arriving at the unmasked spike output (after the mask's backward); output = M_T / (theta T)."""
    leak, T = 0.95, 5
    weights, spikes, masks = _make(arch, T=T, seed=seed)
    records = []
    readouts = []
    orig_lif, orig_out = oracle.lif_step, oracle.output_step

    def lif_spy(mem, current, thr, lk):
        current.retain_grad()
        new_mem, out = orig_lif(mem, current, thr, lk)
        rec = {"I": current, "s": out.detach().clone()}
        # registered before the oracle's NG hook, so it sees the raw g_t (hooks run in order)
        out.register_hook(lambda g, rec=rec: rec.__setitem__("g", g.clone()))
        records.append(rec)
        return new_mem, out

    def out_spy(mem, x, w, lk):
        readouts.append(x.detach().clone())
        return orig_out(mem, x, w, lk)

    monkeypatch.setattr(oracle, "lif_step", lif_spy)
    monkeypatch.setattr(oracle, "output_step", out_spy)
    out = oracle.oracle_forward(arch, weights, spikes, masks, leak=leak, threshold=threshold)
    out.retain_grad()
    _loss(out).backward()

    K = len(records) // T
    assert K * T == len(records) and K == len(_shapes(arch, 1, 8)[1])
    checked = 0
    for k in range(K):
        recs = [records[t * K + k] for t in range(T)]
        s = torch.stack([r["s"] for r in recs])
        g = torch.stack([r["g"] for r in recs])
        dI = torch.stack([r["I"].grad for r in recs])
        assert set(s.unique().tolist()) <= {0.0, 1.0}
        expected = _delta_rule(g, s, _ng(s, leak) / threshold)
        torch.testing.assert_close(dI, expected, rtol=1e-12, atol=1e-15)
        checked += int(expected.abs().sum() > 0)
    assert checked == K, "every hidden layer should pass some gradient in this setup"

    # output layer: value l-weighted sum, gradient weight 1 per step, both / (theta T)
    x = torch.stack(readouts)  # [T, B, F]
    W1 = weights["fc1.weight"].detach()
    value = sum(leak ** (T - t) * (x[t] @ W1.T) for t in range(T)) / (threshold * T)
    torch.testing.assert_close(out.detach(), value, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(weights["fc1.weight"].grad, out.grad.T @ x.sum(0) / (threshold * T),
                               rtol=1e-13, atol=1e-15)


# ----------------------------------------------------------------------------------------------------
# every arch runs, with and without masks

@pytest.mark.parametrize("arch", ["lenet", "vgg9", "resnet11", "resnet13"])
def test_arch_forward_backward(arch):
    weights, spikes, masks = _make(arch, T=4)
    B = spikes.shape[1]
    results = {}
    for mode, m in [("eval", None), ("ones", {k: torch.ones_like(v) for k, v in masks.items()}),
                    ("masked", masks)]:
        for w in weights.values():
            w.grad = None
        out = oracle.oracle_forward(arch, weights, spikes, m)
        assert out.shape == (B, 10) and out.dtype == DT and torch.isfinite(out).all()
        _loss(out).backward()
        grads = {k: w.grad.clone() for k, w in weights.items()}
        for k, gr in grads.items():
            assert gr.shape == weights[k].shape and torch.isfinite(gr).all()
            assert gr.abs().sum() > 0, f"{arch} {mode}: no gradient reaches {k}"
        results[mode] = (out.detach(), grads)
    # all-ones masks are the same as no masks; real masks change the result
    torch.testing.assert_close(results["ones"][0], results["eval"][0], rtol=0, atol=0)
    for k in weights:
        torch.testing.assert_close(results["ones"][1][k], results["eval"][1][k], rtol=0, atol=0)
    assert not torch.equal(results["masked"][0], results["eval"][0])
    # evaluation without autograd also works
    with torch.no_grad():
        out = oracle.oracle_forward(arch, weights, spikes)
    torch.testing.assert_close(out, results["eval"][0], rtol=0, atol=0)


def test_missing_mask_key_means_no_mask():
    weights, spikes, masks = _make("vgg9", T=3)
    partial = {k: v for k, v in masks.items() if k != "cnn22"}
    with_ones = dict(partial, cnn22=torch.ones_like(masks["cnn22"]))
    a = oracle.oracle_forward("vgg9", weights, spikes, partial)
    b = oracle.oracle_forward("vgg9", weights, spikes, with_ones)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_unknown_arch_rejected():
    weights, spikes, _ = _make("lenet", T=3, p=None)
    with pytest.raises(ValueError):
        oracle.oracle_forward("resnet18", weights, spikes)
