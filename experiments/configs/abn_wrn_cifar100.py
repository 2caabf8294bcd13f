"""Baseline: ABN on WRN-28-10 (dropout 0.3), CIFAR-100, the public recipe.

    python -m experiments.main --config=experiments/configs/abn_wrn_cifar100.py --workdir=runs/abn_wrn_cifar100 \
        --config.data_dir=DATA_DIR

Should reach (test accuracy, perception branch): 81.9% (18.1% top-1 error, attention_branch_network README).
"""

from ib_attention_jax.configs.baselines import abn_cifar


def get_config():
    return abn_cifar('cifar100')
