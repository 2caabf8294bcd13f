"""AIB on WRN-28-10, SVHN.

    python -m experiments.main --config=experiments/configs/wrn_aib_svhn.py --workdir=runs/wrn_aib_svhn \
        --config.data_dir=DATA_DIR

Should reach (Monte-Carlo test accuracy): not recovered from the paper.
"""

from ib_attention_jax.configs.official import cifar_wrn


def get_config():
    return cifar_wrn('svhn')
