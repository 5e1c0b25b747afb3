"""Spiking LeNet on Fashion-MNIST, trained with spike-based backpropagation.

Not in the authors' release: Fashion-MNIST has MNIST's image shape and class count, so this run
keeps the authors' mnist_LeNet.py settings (docs/algorithm.md lists them), a starting point
rather than a published result. Every flag overrides one setting
(python fashion_mnist_LeNet.py --help).
"""
from training import Experiment, main  # first: it sets the CPU thread policy before torch loads

EXPERIMENT = Experiment(
    tag="fashion_mnist_lenet",
    dataset="fashion_mnist",
    arch="lenet",
    time_steps=100,
    leak=0.99,
    input_scale=0.5,         # Poisson rate = 0.5 * pixel value, as for MNIST
    dropout=0.0,
    lr=0.0085,
    momentum=0.0,
    weight_decay=5e-4,
    milestones=(75,),        # lr x0.2 from epoch index 75 on
    lr_gamma=0.2,
    epochs=125,
    batch_size=64,
    test_batch_size=64,
    crop_padding=0,          # no augmentation
    horizontal_flip=False,
    mean=None,               # ToTensor only, no normalisation
    std=None,
    seed=1,
)

if __name__ == "__main__":
    main(EXPERIMENT, description=__doc__)
