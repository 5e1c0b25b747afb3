"""Spiking ResNet13 on SVHN, trained with spike-based backpropagation.

Not in the authors' release: ResNet13 (ResNet11 plus one identity residual block)
and these settings are this project's own choice, not a published run. They follow ResNet11 on
CIFAR-10 except where SVHN differs: no horizontal flip (digits are not mirror-symmetric), SVHN's
own per-channel mean/std, and a shorter schedule, since the training split is
half again as large as CIFAR-10's. Every flag overrides one setting
(python svhn_ResNet13.py --help); --svhn-extra adds the 531k "extra" images.
"""
from training import Experiment, main  # first: it sets the CPU thread policy before torch loads

EXPERIMENT = Experiment(
    tag="svhn_r13",
    dataset="svhn",
    arch="resnet13",
    time_steps=100,
    leak=0.99,
    input_scale=1.0,
    dropout=0.25,
    lr=0.0025,
    momentum=0.0,
    weight_decay=5e-4,
    milestones=(30, 45, 55),        # lr x0.2 at each (cumulative)
    lr_gamma=0.2,
    epochs=60,
    batch_size=16,
    test_batch_size=8,
    crop_padding=4,                 # RandomCrop(32, padding=4); no flip
    horizontal_flip=False,
    mean=(0.4377, 0.4438, 0.4728),  # SVHN train split statistics
    std=(0.1980, 0.2010, 0.1970),
    extra_images=False,
    seed=3,
)

if __name__ == "__main__":
    main(EXPERIMENT, description=__doc__)
