"""AIB-QT (50 anchors) on WRN-28-10, CIFAR-10.

    python -m experiments.main --config=experiments/configs/wrn_aib_qt_cifar10.py --workdir=runs/wrn_aib_qt_cifar10 \
        --config.data_dir=DATA_DIR

Should reach (Monte-Carlo test accuracy): about wrn_aib_cifar10's (at least 96.2%).
"""

from ib_attention_jax.configs.official import cifar_wrn


def get_config():
    return cifar_wrn('cifar10', quantized=True)
