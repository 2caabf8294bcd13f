"""AIB on WRN-28-10, CIFAR-100.

    python -m experiments.main --config=experiments/configs/wrn_aib_cifar100.py --workdir=runs/wrn_aib_cifar100 \
        --config.data_dir=DATA_DIR

Should reach (Monte-Carlo test accuracy): at least the WRN-28-10 baseline: 81.9% (18.14% error,
bearpaw/pytorch-classification; ABN reports 18.1%).
"""

from ib_attention_jax.configs.official import cifar_wrn


def get_config():
    return cifar_wrn('cifar100')
