"""AIB on VGG-16, CUB-200-2011 (bird-box crops).

    python -m experiments.main --config=experiments/configs/cub_vgg16_aib.py --workdir=runs/cub_vgg16_aib \
        --config.data_dir=DATA_DIR

Should reach (Monte-Carlo test accuracy): not recovered from the paper (the official runs start from ImageNet
weights; from scratch expect far less).
"""

from ib_attention_jax.configs.official import cub


def get_config():
    return cub('vgg16')
