"""AIB on the LTPA VGG, CIFAR-10.

    python -m experiments.main --config=experiments/configs/vgg_aib_cifar10.py --workdir=runs/vgg_aib_cifar10 \
        --config.data_dir=DATA_DIR

Should reach (Monte-Carlo test accuracy): not recovered from the paper; at least vgg_plain_cifar10 trained
with the same recipe.
"""

from ib_attention_jax.configs.official import cifar_vgg


def get_config():
    return cifar_vgg('cifar10')
