"""AIB-QT (50 anchors) on the LTPA VGG, CIFAR-100.

    python -m experiments.main --config=experiments/configs/vgg_aib_qt_cifar100.py --workdir=runs/vgg_aib_qt_cifar100 \
        --config.data_dir=DATA_DIR

Should reach (Monte-Carlo test accuracy): not recovered from the paper; about vgg_aib_cifar100's.
"""

from ib_attention_jax.configs.official import cifar_vgg


def get_config():
    return cifar_vgg('cifar100', quantized=True)
