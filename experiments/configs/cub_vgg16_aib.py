"""AIB on VGG-16, CUB-200-2011 (bird-box crops).

    python -m experiments.main --config=experiments/configs/cub_vgg16_aib.py --workdir=runs/cub_vgg16_aib \
        --config.data_dir=DATA_DIR --config.init_from=vgg16-397923af.pth

Starts from ImageNet weights as the official run did: torchvision's ``vgg16-397923af.pth``
(https://download.pytorch.org/models/vgg16-397923af.pth) fills the backbone (VGG-16 ``features`` without the
last max-pool); the attention head, encoder and decoder keep their initialisation. Without
``--config.init_from`` the run starts from scratch.

Should reach (Monte-Carlo test accuracy): not recovered from the paper (the official runs start from ImageNet
weights; from scratch expect far less).
"""

from ib_attention_jax.configs.official import cub


def get_config():
    return cub('vgg16')
