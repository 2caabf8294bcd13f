"""Baseline: LTPA (AttnVGG_before, softmax attention at 32, 16 and 8 px), CIFAR-10, the public CIFAR-100 recipe.

    python -m experiments.main --config=experiments/configs/ltpa_vgg_cifar10.py --workdir=runs/ltpa_vgg_cifar10 \
        --config.data_dir=DATA_DIR

Should reach (test accuracy): no published figure for this code on CIFAR-10 (the public script trains
CIFAR-100 only); at least the plain VGG with the AIB recipe (vgg_plain_cifar10.py): measure both.
"""

from ib_attention_jax.configs.baselines import ltpa_cifar


def get_config():
    return ltpa_cifar('cifar10')
