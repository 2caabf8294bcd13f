"""AIB-QT on VGG-16 (deeper mean head, 20 frozen anchors), CUB.

    python -m experiments.main --config=experiments/configs/cub_vgg16_aib_qt.py --workdir=runs/cub_vgg16_aib_qt \
        --config.data_dir=DATA_DIR

Should reach (Monte-Carlo test accuracy): see cub_vgg16_aib.
"""

from ib_attention_jax.configs.official import cub


def get_config():
    return cub('vgg16', quantized=True)
