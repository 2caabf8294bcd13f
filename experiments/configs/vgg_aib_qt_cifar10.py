"""AIB-QT (20 anchors) on the LTPA VGG, CIFAR-10.

    python -m experiments.main --config=experiments/configs/vgg_aib_qt_cifar10.py --workdir=runs/vgg_aib_qt_cifar10 \
        --config.data_dir=DATA_DIR

Should reach (Monte-Carlo test accuracy): not recovered from the paper; about vgg_aib_cifar10's.
"""

from ib_attention_jax.configs.official import cifar_vgg


def get_config():
    return cifar_vgg('cifar10', quantized=True)
