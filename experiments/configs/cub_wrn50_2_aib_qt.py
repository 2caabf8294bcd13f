"""AIB-QT on Wide ResNet-50-2, CUB.

    python -m experiments.main --config=experiments/configs/cub_wrn50_2_aib_qt.py --workdir=runs/cub_wrn50_2_aib_qt \
        --config.data_dir=DATA_DIR

Should reach (Monte-Carlo test accuracy): see cub_vgg16_aib.
"""

from ib_attention_jax.configs.official import cub


def get_config():
    return cub('wrn50_2', quantized=True)
