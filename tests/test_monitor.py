"""SpikeMonitor: spike, AC and MAC counts worked out by hand on a tiny network, hooks removed on
exit, attribution of shared and masked spikes in the real architectures. CPU, well under a second."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from analysis.monitor import OutputCounts, SpikeMonitor, spiking_layer_names
from analysis.report import summarize
from models import get_model
from spiking import (LIFNeuron, OutputIntegrator, PoissonEncoder, PoolingNeuron, SpikingConv2d,
                     SpikingLinear, TimeFolded)


class TinyNet(nn.Module):
    """Input 1x5x5 -> block A (strided padded conv + 1x1 strided conv shortcut) 2x3x3 ->
    block B (strided padded conv + AvgPool(1, s2) shortcut) 2x2x2 -> pooling neuron 2x1x1 -> fc 3.

    Hand-set weights make the spikes easy to follow:
    conv_a: channel 0 all 1.5 (one +1 input spike in its window makes it fire), channel 1 all 0;
    shortcut_a: 0; conv_b: 2.0 from input channel 0 to output channel 1, else 0.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = SpikingConv2d(1, 2, 3, stride=2, padding=1)
        self.shortcut_a = SpikingConv2d(1, 2, 1, stride=2)
        self.lif_a = LIFNeuron()
        self.conv_b = SpikingConv2d(2, 2, 3, stride=2, padding=1)
        self.shortcut_b = TimeFolded(nn.AvgPool2d(1, stride=2))
        self.lif_b = LIFNeuron()
        self.pool = PoolingNeuron()
        self.fc = SpikingLinear(2, 3)
        self.output = OutputIntegrator()
        with torch.no_grad():
            for module in (self.conv_a, self.shortcut_a, self.conv_b):
                module.weight.zero_()
            self.conv_a.weight[0] = 1.5
            self.conv_b.weight[1, 0] = 2.0
            self.fc.weight.fill_(1.0)

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        a = self.lif_a(self.conv_a(spikes) + self.shortcut_a(spikes))
        b = self.lif_b(self.conv_b(a) + self.shortcut_b(a))
        return self.output(self.fc(self.pool(b).flatten(2)))


def hand_made_input() -> torch.Tensor:
    """``[T=2, B=2, 1, 5, 5]``: image 0 has 6 spikes (one of them -1), image 1 none."""
    x = torch.zeros(2, 2, 1, 5, 5)
    x[0, 0, 0, 0, 0] = 1
    x[0, 0, 0, 2, 2] = 1
    x[0, 0, 0, 4, 4] = -1
    x[1, 0, 0, 1, 1] = 1
    x[1, 0, 0, 2, 2] = 1
    x[1, 0, 0, 3, 4] = 1
    return x


def run_tiny(**monitor_kwargs) -> SpikeMonitor:
    model = TinyNet().eval()
    with torch.no_grad(), SpikeMonitor(model, **monitor_kwargs) as monitor:
        model(hand_made_input())
    return monitor


def test_spike_counts_by_hand():
    # input: the 6 spikes of image 0 (the -1 counts).
    # lif_a, channel 0, output (i, j) sees input rows/cols R(0)={0,1}, R(1)={1,2,3}, R(2)={3,4}:
    #   t0: +1@(0,0) -> out (0,0); +1@(2,2) -> (1,1); -1@(4,4) -> (2,2) gets -1.5.
    #       spikes (0,0), (1,1); (2,2) keeps -1.5 * 0.99 = -1.485.
    #   t1: +1@(1,1) -> (0,0),(0,1),(1,0),(1,1); +1@(2,2) -> (1,1); +1@(3,4) -> (1,2),(2,2).
    #       spikes (0,0),(0,1),(1,0),(1,1),(1,2); (2,2) reaches only 0.015. Total 7.
    # lif_b, channel 1 = 2 x (lif_a channel-0 spikes in rows/cols {0,1} or {1,2}): every one of
    #   its 4 neurons sees a spike at both steps -> 8; channel 0 = lif_a channel 0 at (0,0)
    #   through the AvgPool(1, s2) shortcut: 1 at t0 (not > 1), 0.99 + 1 at t1 -> 1 spike. Total 9.
    # pool: channel 0 averages 0 then 0.25 (< 0.75); channel 1 averages 1 at both steps -> 2.
    monitor = run_tiny()
    counts = {name: (layer.kind, layer.neurons, layer.spikes, layer.images, layer.time_steps)
              for name, layer in monitor.layers.items()}
    assert counts == {
        "input": ("input", 25, 6, 2, 2),
        "lif_a": ("lif", 18, 7, 2, 2),
        "lif_b": ("lif", 8, 9, 2, 2),
        "pool": ("pool", 2, 2, 2, 2),
    }
    assert list(monitor.layers) == ["input", "lif_a", "lif_b", "pool"]


def test_synaptic_operations_by_hand():
    # conv_a (3x3, stride 2, pad 1, 5 -> 3): input row h is covered by r = [1, 2, 1, 2, 1] output
    #   rows, so a spike at (h, w) reaches 2 channels x r[h] x r[w] synapses:
    #   t0: (0,0) 2 + (2,2) 2 + (4,4) 2;  t1: (1,1) 8 + (2,2) 2 + (3,4) 4  -> 20 ACs.
    #   ANN: 2 x 3 x 3 outputs x (1 x 3 x 3) fan-in = 162 MACs.
    # shortcut_a (1x1, stride 2): only even (h, w) are read, by 2 channels: (0,0), (2,2) twice,
    #   (4,4) -> 4 spikes x 2 = 8 ACs; (1,1) and (3,4) reach nothing. ANN: 18 outputs x 1 = 18.
    # conv_b (3x3, stride 2, pad 1, 3 -> 2): r = [1, 2, 1]; lif_a spikes
    #   t0: (0,0) 2 + (1,1) 8;  t1: (0,0) 2 + (0,1) 4 + (1,0) 4 + (1,1) 8 + (1,2) 4 -> 32 ACs.
    #   ANN: 2 x 2 x 2 outputs x (2 x 3 x 3) = 144 MACs.
    # shortcut_b AvgPool(1, s2): reads lif_a at even (h, w): (0,0) at t0 and t1 -> 2 additions.
    #   ANN: 8 outputs x 1 = 8 additions.
    # pool, as a synapse (2x2 average of the 2x2x2 lif_b output): each of the 9 spikes is one addition.
    #   ANN: 2 outputs x 4 = 8 additions.
    # fc (2 -> 3): 2 pool spikes x 3 = 6 ACs; ANN: 3 x 2 = 6 MACs.
    monitor = run_tiny()
    ops = {name: (s.source, s.weighted, s.snn_ac, s.ann_ops_per_image, s.images)
           for name, s in monitor.synapses.items()}
    assert ops == {
        "conv_a": ("input", True, 20, 162, 2),
        "shortcut_a": ("input", True, 8, 18, 2),
        "conv_b": ("lif_a", True, 32, 144, 2),
        "shortcut_b": ("lif_a", False, 2, 8, 2),
        "pool": ("lif_b", False, 9, 8, 2),
        "fc": ("pool", True, 6, 6, 2),
    }


def test_summary_per_image_by_hand():
    # Two images, the second silent: per-image figures are half the totals above.
    summary = summarize(run_tiny(), mac_energy_pj=4.0, ac_energy_pj=1.0)
    rows = {row["name"]: row for row in summary["layers"]}
    assert rows["input"]["targets"] == ["conv_a", "shortcut_a"]
    assert rows["input"]["spikes_per_neuron"] == pytest.approx(6 / (25 * 2))
    assert rows["input"]["firing_rate"] == pytest.approx(6 / (25 * 2 * 2))
    assert (rows["input"]["snn_ac"], rows["input"]["ann_mac"], rows["input"]["ann_ac"]) == (14, 180, 0)
    assert (rows["lif_a"]["snn_ac"], rows["lif_a"]["ann_mac"], rows["lif_a"]["ann_ac"]) == (17, 144, 8)
    assert rows["lif_a"]["op_ratio"] == pytest.approx(17 / 152)
    assert (rows["lif_b"]["snn_ac"], rows["lif_b"]["ann_ac"]) == (4.5, 8)
    assert rows["pool"]["snn_ac"] == 3 and rows["pool"]["ann_mac"] == 6
    totals = summary["totals"]
    assert totals["neurons"] == 25 + 18 + 8 + 2
    assert totals["spikes_per_image"] == pytest.approx((6 + 7 + 9 + 2) / 2)
    assert totals["firing_rate"] == pytest.approx(24 / (53 * 2 * 2))
    assert (totals["snn_ac"], totals["ann_mac"], totals["ann_ac"]) == (38.5, 330, 16)
    # SNN: 38.5 ACs x 1 pJ; ANN: 330 MACs x 4 pJ + 16 additions x 1 pJ = 1336 pJ.
    assert totals["snn_energy_uj"] == pytest.approx(38.5e-6)
    assert totals["ann_energy_uj"] == pytest.approx(1336e-6)
    assert totals["energy_ratio"] == pytest.approx(1336 / 38.5)
    assert summary["time_steps"] == 2 and summary["images"] == 2


def test_raster_of_one_image():
    # lif_a channel-0 spikes of image 0 (flat index 3 i + j): t0 at 0, 4; t1 at 0, 1, 3, 4, 5.
    monitor = run_tiny(raster_layer="lif_a", raster_image=0)
    expected = torch.zeros(2, 18, dtype=torch.bool)
    expected[0, [0, 4]] = True
    expected[1, [0, 1, 3, 4, 5]] = True
    assert torch.equal(monitor.raster, expected)
    assert run_tiny(raster_layer="lif_a", raster_image=1).raster.sum() == 0


def test_borders_of_a_padded_conv_on_lenet():
    # All-ones input at T = 1: with a 5x5 kernel and padding 2 on 28 pixels, input row h is
    # covered by [3, 4, 5 x 24, 4, 3] output rows (sum 134), so cnn1 performs c1 x 134^2 ACs,
    # while the dense ANN does c1 x 28^2 x 25 = c1 x 19600 MACs (padded taps included).
    model = get_model("lenet", width=0.1).eval()
    with torch.no_grad(), SpikeMonitor(model) as monitor:
        model(torch.ones(1, 1, 1, 28, 28))
    cnn1 = monitor.synapses["cnn1"]
    assert (cnn1.snn_ac, cnn1.ann_ops_per_image) == (2 * 134 ** 2, 2 * 19600)


def test_hooks_removed_and_output_unchanged():
    model = get_model("lenet", width=0.1).eval()
    spikes = PoissonEncoder(4, 0.5, torch.Generator().manual_seed(0))(torch.rand(2, 1, 28, 28))
    reference = model(spikes)
    with pytest.raises(KeyError), SpikeMonitor(model):
        assert any(m._forward_hooks for m in model.modules())
        assert torch.equal(model(spikes), reference)
        raise KeyError  # hooks must go even when the block fails
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_resnet_shared_and_masked_spikes():
    # The pooled spikes feed cnn21 and the 1x1 shortcut; in training mode dropout's masked
    # copies still count for the layer that fired them; the counts also work in inference mode.
    torch.manual_seed(0)
    model = get_model("resnet11", width=1 / 16)
    spikes = PoissonEncoder(3)(torch.rand(2, 3, 32, 32))
    with SpikeMonitor(model) as monitor:
        model(spikes)
    assert monitor.synapses["cnn21"].source == monitor.synapses["shortcut1.0"].source == "pool1"
    assert monitor.synapses["cnn22"].source == "lif21"
    assert monitor.synapses["shortcut4"].source == "lif42"
    model.eval()
    with torch.inference_mode(), SpikeMonitor(model) as monitor:
        model(spikes)
    linear = monitor.synapses["fc1"]
    assert linear.snn_ac == monitor.layers["lif_fc0"].spikes * model.fc1.out_features


def test_input_not_from_a_spiking_layer_is_an_error():
    class Doubling(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = SpikingLinear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x * 2)

    with SpikeMonitor(Doubling()) as monitor, pytest.raises(RuntimeError, match="'fc'"):
        monitor.model(torch.ones(1, 1, 4))


def test_observe_counts_silent_and_correct_outputs():
    monitor = SpikeMonitor()
    output = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.5, 0.0], [0.0, 0.0, 0.1], [0.3, 0.0, 0.0]])
    monitor.observe(output, torch.tensor([2, 1, 1, 0]))
    monitor.observe(torch.zeros(2, 3), torch.tensor([1, 2]))
    assert monitor.output == OutputCounts(images=6, silent=3, correct=2)


def test_attach_detach_protocol_and_layer_names():
    model = TinyNet().eval()
    assert spiking_layer_names(model) == ["input", "lif_a", "lif_b", "pool"]
    monitor = SpikeMonitor(raster_layer="pool")
    monitor.attach(model)
    with pytest.raises(RuntimeError, match="already attached"):
        monitor.attach(model)
    with torch.no_grad():
        output = model(hand_made_input())
        monitor.observe(output, torch.zeros(2, dtype=torch.long))
    monitor.detach()
    assert monitor.output.images == 2
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert monitor.layers["pool"].spikes == 2 and monitor.raster.shape == (2, 2)


@pytest.mark.parametrize("arch", ["lenet", "vgg9", "resnet11", "resnet13"])
def test_every_layer_and_synapse_of_the_networks_is_seen(arch):
    # A guard against refactors that hide a synapse from the hooks: every spiking layer feeds
    # at least one counted synapse and every weight layer is counted.
    model = get_model(arch, width=1 / 16).eval()
    with torch.no_grad(), SpikeMonitor(model) as monitor:
        model(torch.ones(2, 1, *model.input_shape))
    assert set(monitor.layers) == set(spiking_layer_names(model))  # firing vs definition order
    sources = {s.source for s in monitor.synapses.values()}
    assert sources == set(monitor.layers)
    weighted = {name for name, m in model.named_modules()
                if isinstance(m, (SpikingConv2d, SpikingLinear))}
    assert {n for n, s in monitor.synapses.items() if s.weighted} == weighted
    if arch == "resnet13":  # the identity shortcut: one addition per spike of block 4's output
        shortcut = monitor.synapses["shortcut5"]
        assert shortcut.source == "lif52" and not shortcut.weighted
        assert shortcut.snn_ac == monitor.layers["lif52"].spikes
        assert shortcut.ann_ops_per_image == monitor.layers["lif52"].neurons


def test_counts_and_raster_do_not_depend_on_time_chunks():
    # The network calls each layer once per chunk of time steps; the counts, the images and
    # the raster must be those of one call over all T steps.
    torch.manual_seed(3)
    model = get_model("lenet", width=0.2).eval()
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(0.05)  # drive spikes through every layer within a few steps
    spikes = PoissonEncoder(6, 0.5, torch.Generator().manual_seed(1))(torch.rand(3, 1, 28, 28))
    results = []
    for time_chunk in (6, 4, 1):
        model.time_chunk = time_chunk
        with torch.no_grad(), SpikeMonitor(model, raster_layer="lif2", raster_image=1) as monitor:
            model(spikes)
            model(spikes[:, :2])
        results.append(monitor)
    whole = results[0]
    assert whole.layers["lif_fc0"].spikes > 0 and whole.raster.any()
    for chunked in results[1:]:
        assert chunked.layers == whole.layers
        assert chunked.synapses == whole.synapses
        assert torch.equal(chunked.raster, whole.raster)
    assert whole.layers["lif2"].images == 5 and whole.layers["lif2"].time_steps == 6
    assert whole.synapses["cnn2"].images == 5 and whole.raster.shape[0] == 6
