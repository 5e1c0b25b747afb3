"""The shipped MNIST model (pretrained/): it loads into LeNet with strict keys and reads real
digits (the first 32 of MNIST's test set, in tests/data/mnist_test_digits.pt)."""
from pathlib import Path

import torch

import models
from spiking import PoissonEncoder
from training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "pretrained" / "model_bestT1_mnist_lenet.pth.tar"
DIGITS = Path(__file__).parent / "data" / "mnist_test_digits.pt"


def test_the_shipped_lenet_reads_real_digits():
    checkpoint = load_checkpoint(str(PRETRAINED))
    assert checkpoint["arch"] == "lenet"
    model = models.get_model("lenet")
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    model.eval()
    digits = torch.load(DIGITS, weights_only=True)
    images = digits["images"].unsqueeze(1).float() / 255  # ToTensor: [32, 1, 28, 28] in [0, 1]
    encoder = PoissonEncoder(100, scale=0.5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        predictions = model(encoder(images)).argmax(1)
    # A network of random weights gets about 3 of 32; chance-level mistakes would show here.
    assert (predictions == digits["labels"]).sum() >= 31
