"""Baseline: the LTPA VGG without attention and bottleneck, CIFAR-10, same recipe.

    python -m experiments.main --config=experiments/configs/vgg_plain_cifar10.py --workdir=runs/vgg_plain_cifar10 \
        --config.data_dir=DATA_DIR

Should reach (Monte-Carlo test accuracy): not recovered (the LTPA reimplementation lists no numbers); measure
it as the baseline.
"""

from ib_attention_jax.configs.official import cifar_vgg


def get_config():
    return cifar_vgg('cifar10', plain=True)
