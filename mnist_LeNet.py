"""Spiking LeNet on MNIST, trained with spike-based backpropagation (Lee et al. 2020).

The settings in this script are those of the authors' released mnist_LeNet.py (docs/algorithm.md
lists them); every command-line flag overrides one of them (python mnist_LeNet.py --help).
"""
from training import Experiment, main  # first: it sets the CPU thread policy before torch loads

EXPERIMENT = Experiment(
    tag="mnist_lenet",
    dataset="mnist",
    arch="lenet",
    time_steps=100,
    leak=0.99,
    input_scale=0.5,         # Poisson rate = 0.5 * pixel value
    dropout=0.0,             # LeNet has none
    lr=0.0085,
    momentum=0.0,            # the authors parsed --momentum but never passed it to SGD
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
