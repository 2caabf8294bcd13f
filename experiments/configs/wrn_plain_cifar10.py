"""Baseline: WRN-28-10 (dropout 0.3), CIFAR-10, same recipe.

    python -m experiments.main --config=experiments/configs/wrn_plain_cifar10.py --workdir=runs/wrn_plain_cifar10 \
        --config.data_dir=DATA_DIR

Should reach (Monte-Carlo test accuracy): 96.2% (3.79% error, bearpaw/pytorch-classification).
"""

from ib_attention_jax.configs.official import cifar_wrn


def get_config():
    return cifar_wrn('cifar10', plain=True)
