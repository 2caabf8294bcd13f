"""AIB-QT on VGG-16 (deeper mean head, 20 frozen anchors), CUB.

    python -m experiments.main --config=experiments/configs/cub_vgg16_aib_qt.py --workdir=runs/cub_vgg16_aib_qt \
        --config.data_dir=DATA_DIR --config.init_from=vgg16-397923af.pth

Starts from ImageNet weights as the official run did: torchvision's ``vgg16-397923af.pth``
(https://download.pytorch.org/models/vgg16-397923af.pth) fills the backbone (VGG-16 ``features`` without the
last max-pool); the deeper attention head, encoder, decoder and the anchors keep their initialisation. Without
``--config.init_from`` the run starts from scratch.

Should reach (Monte-Carlo test accuracy): see cub_vgg16_aib.
"""

from ib_attention_jax.configs.official import cub


def get_config():
    return cub('vgg16', quantized=True)
