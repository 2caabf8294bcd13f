"""Baseline: ABN on WRN-28-10 (dropout 0.3), CIFAR-10, the public recipe (TRAINING.md, WRN-28-10-drop).

    python -m experiments.main --config=experiments/configs/abn_wrn_cifar10.py --workdir=runs/abn_wrn_cifar10 \
        --config.data_dir=DATA_DIR

Should reach (test accuracy, perception branch): at least the plain WRN-28-10 with this recipe, 96.2% (3.79%
error, bearpaw/pytorch-classification, which the ABN code is built on); the ABN README reports CIFAR-100 only.
"""

from ib_attention_jax.configs.baselines import abn_cifar


def get_config():
    return abn_cifar('cifar10')
