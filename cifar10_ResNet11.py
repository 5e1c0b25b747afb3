"""Spiking ResNet11 on CIFAR-10, trained with spike-based backpropagation (Lee et al. 2020).

The settings in this script are those of the authors' released cifar10_ResNet11.py
(docs/algorithm.md lists them); every command-line flag overrides one of them
(python cifar10_ResNet11.py --help). Their usage line works unchanged:
python cifar10_ResNet11.py --resume model_bestT1_cifar10_r11.pth.tar --evaluate
"""
from training import Experiment, main  # first: it sets the CPU thread policy before torch loads

EXPERIMENT = Experiment(
    tag="cifar10_r11",
    dataset="cifar10",
    arch="resnet11",
    time_steps=100,
    leak=0.99,
    input_scale=1.0,
    dropout=0.25,
    lr=0.0025,
    momentum=0.0,                   # the authors parsed --momentum but never passed it to SGD
    weight_decay=5e-4,
    milestones=(70, 100, 125),      # lr x0.2 at each (cumulative)
    lr_gamma=0.2,
    epochs=150,
    batch_size=16,
    test_batch_size=8,
    crop_padding=4,                 # RandomCrop(32, padding=4)
    horizontal_flip=True,
    mean=(0.4914, 0.4822, 0.4465),  # the authors' values: the std is theirs, not CIFAR's
    std=(0.557, 0.549, 0.5534),
    seed=3,
)

if __name__ == "__main__":
    main(EXPERIMENT, description=__doc__)
