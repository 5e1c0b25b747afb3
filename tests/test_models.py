"""Architecture facts (docs/algorithm.md, *Initialisation* and *Architectures*): names, shapes,
defaults, initialisation, every network on every data set's image shape, dropout settings."""
import inspect
import math

import pytest
import torch

import models
from models.base import halved_by_pooling, halved_by_stride
from spiking import LIFNeuron, TimeHeldDropout
from training.data import DATASETS

AUTHORS_KEYS = {
    "lenet": ["cnn1", "cnn2", "fc0", "fc1"],
    "vgg9": ["cnn11", "cnn12", "cnn21", "cnn22", "cnn31", "cnn32", "cnn33", "fc0", "fc1"],
    "resnet11": ["cnn11", "cnn21", "cnn22", "shortcut1.0", "cnn31", "cnn32", "shortcut2.0",
                 "cnn41", "cnn42", "shortcut3.0", "cnn51", "cnn52", "fc0", "fc1"],
}
AUTHORS_KEYS["resnet13"] = AUTHORS_KEYS["resnet11"] + ["cnn61", "cnn62"]


@pytest.mark.parametrize("arch", list(AUTHORS_KEYS))
def test_state_dict_uses_the_authors_names(arch):
    model = models.get_model(arch, width=0.0625)
    assert sorted(model.state_dict()) == sorted(f"{k}.weight" for k in AUTHORS_KEYS[arch])


def test_full_size_shapes_match_the_architecture_table():
    shapes = {k: tuple(v.shape) for k, v in models.get_model("resnet11").state_dict().items()}
    assert shapes["cnn11.weight"] == (64, 3, 3, 3)
    assert shapes["shortcut1.0.weight"] == (128, 64, 1, 1)
    assert shapes["cnn52.weight"] == (512, 512, 3, 3)
    assert shapes["fc0.weight"] == (1024, 8192)
    vgg = {k: tuple(v.shape) for k, v in models.get_model("vgg9").state_dict().items()}
    assert vgg["fc0.weight"] == (1024, 4096) and vgg["cnn33.weight"] == (256, 256, 3, 3)
    lenet = {k: tuple(v.shape) for k, v in models.get_model("lenet").state_dict().items()}
    assert lenet == {"cnn1.weight": (20, 1, 5, 5), "cnn2.weight": (50, 20, 5, 5),
                     "fc0.weight": (200, 2450), "fc1.weight": (10, 200)}


@pytest.mark.parametrize("arch,gain,p", [("lenet", 2, 0.0), ("vgg9", 2, 0.2), ("resnet11", 1, 0.25)])
def test_initialisation_and_default_dropout(arch, gain, p):
    torch.manual_seed(0)
    model = models.get_model(arch)
    weight = model.fc0.weight
    assert weight.std().item() == pytest.approx(math.sqrt(gain / weight.shape[1]), rel=0.01)
    assert abs(weight.mean().item()) < 0.05 * weight.std().item()
    drops = [m.p for m in model.modules() if isinstance(m, TimeHeldDropout)]
    assert drops == [p] * len(drops) and (len(drops) > 0) == (p > 0)
    assert all(m.leak == 0.99 and m.threshold == 1.0
               for m in model.modules() if isinstance(m, LIFNeuron))


@pytest.mark.parametrize("arch,shape", [("lenet", (1, 28, 28)), ("vgg9", (3, 32, 32)),
                                        ("resnet11", (3, 32, 32)), ("resnet13", (3, 32, 32))])
def test_forward_shape_dtype_and_gradients(arch, shape):
    torch.manual_seed(0)
    model = models.get_model(arch, width=0.0625, num_classes=7).double()
    spikes = (torch.rand(3, 2, *shape, dtype=torch.float64) < 0.3).double()
    out = model(spikes)
    assert out.shape == (2, 7) and out.dtype == torch.float64
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("arch", list(models.MODELS))
def test_every_network_runs_on_every_data_sets_images(arch, dataset):
    torch.manual_seed(0)
    shape = DATASETS[dataset].input_shape
    model = models.get_model(arch, width=0.0625, input_shape=shape)
    with torch.no_grad():
        for weight in model.parameters():
            weight.abs_()  # all-excitatory, so spikes reach fc0 within 2 steps and grads flow
    spikes = (torch.rand(2, 2, *shape) < 0.5).float()
    out = model(spikes)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_feature_map_sides_follow_the_layer_arithmetic():
    # 2x2 pooling floors, stride-2 3x3/pad-1 convolutions round up: MNIST's 28 -> 14 -> 7 -> 4
    assert [halved_by_pooling(s) for s in (28, 14, 7, 1)] == [14, 7, 3, 0]
    assert [halved_by_stride(s) for s in (16, 14, 7, 1)] == [8, 7, 4, 1]
    fc0_inputs = {arch: models.get_model(arch, input_shape=(1, 28, 28)).fc0.in_features
                  for arch in models.MODELS}
    assert fc0_inputs == {"lenet": 50 * 7 * 7, "vgg9": 256 * 3 * 3, "resnet11": 512 * 4 * 4,
                          "resnet13": 512 * 4 * 4}
    lenet_on_cifar = models.get_model("lenet", input_shape=(3, 32, 32))
    assert lenet_on_cifar.fc0.in_features == 50 * 8 * 8 and lenet_on_cifar.cnn1.in_channels == 3


@pytest.mark.parametrize("arch", list(models.MODELS))
def test_images_too_small_for_the_network_are_refused(arch):
    with pytest.raises(ValueError, match=r"needs larger images than 1x1"):
        models.get_model(arch, width=0.0625, input_shape=(1, 1, 1))


@pytest.mark.parametrize("arch", list(models.MODELS))
def test_dropout_setting_reaches_every_dropout_module(arch):
    # named in the signature, so callers (and signature inspection) see that it is taken
    assert "dropout" in inspect.signature(models.MODELS[arch]).parameters
    model = models.MODELS[arch](dropout=0.1, width=0.0625)
    drops = [name for name, m in model.named_modules() if isinstance(m, TimeHeldDropout)]
    lifs = [name for name, m in model.named_modules() if isinstance(m, LIFNeuron)]
    assert len(drops) == len(lifs)  # one after every hidden LIF layer
    assert {model.get_submodule(name).p for name in drops} == {0.1}
    assert model.dropout == 0.1


def test_lenet_has_no_dropout_module_unless_asked():
    assert not any(isinstance(m, TimeHeldDropout) for m in models.get_model("lenet").modules())
    lenet = models.get_model("lenet", dropout=0.5, width=0.0625).train()
    spikes = torch.ones(3, 4, 1, 28, 28)
    lenet.cnn1.weight.data.fill_(1.0)  # every lif1 neuron fires at every step
    masked = []
    lenet.drop1.register_forward_hook(lambda m, args, out: masked.append(out))
    lenet(spikes)
    kept = masked[0][0] != 0
    assert 0 < kept.float().mean() < 1 and torch.equal(masked[0][1] != 0, kept)  # held over time


def test_constructor_arguments_reach_every_neuron():
    model = models.get_model("vgg9", leak=0.9, threshold=2.0, pool_threshold=0.5, dropout=0.1,
                             width=0.0625)
    assert {(m.leak, m.threshold) for m in model.modules() if isinstance(m, LIFNeuron)} == {(0.9, 2.0)}
    assert model.pool1.threshold == 0.5 and model.output.leak == 0.9
    assert {m.p for m in model.modules() if isinstance(m, TimeHeldDropout)} == {0.1}


def test_unknown_architecture_is_rejected():
    with pytest.raises(ValueError, match="unknown architecture"):
        models.get_model("resnet50")


def test_autocast_runs_synapses_in_bf16_and_scans_in_float32():
    torch.manual_seed(0)
    model = models.get_model("lenet", width=0.25)
    with torch.no_grad():
        for weight in model.parameters():
            weight.abs_().mul_(2.0)  # all-excitatory, so spikes reach fc0 within 6 steps
    spikes = (torch.rand(6, 2, 1, 28, 28) < 0.3).float()
    seen = []
    model.lif1.register_forward_hook(lambda m, args, out: seen.append((args[0].dtype, out.dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(spikes)
    assert seen == [(torch.bfloat16, torch.float32)] and out.dtype == torch.float32
    out.square().sum().backward()
    assert all(p.grad.dtype == torch.float32 and p.grad.abs().sum() > 0 for p in model.parameters())


def test_default_time_chunk_holds_about_cpu_chunk_images_images():
    lenet, vgg = models.get_model("lenet", width=0.1), models.get_model("vgg9", width=0.05)
    assert (lenet.cpu_chunk_images, vgg.cpu_chunk_images) == (128, 64)
    assert lenet.default_time_chunk(torch.zeros(100, 32, 1)) == 4
    assert vgg.default_time_chunk(torch.zeros(100, 16, 1)) == 4
    assert vgg.default_time_chunk(torch.zeros(3, 16, 1)) == 3  # never more than T
    assert vgg.default_time_chunk(torch.zeros(100, 256, 1)) == 1  # at least one step
