"""AIB on Wide ResNet-50-2, CUB-200-2011.

    python -m experiments.main --config=experiments/configs/cub_wrn50_2_aib.py --workdir=runs/cub_wrn50_2_aib \
        --config.data_dir=DATA_DIR --config.init_from=wide_resnet50_2-95faca4d.pth

Starts from ImageNet weights as the official run did: torchvision's ``wide_resnet50_2-95faca4d.pth``
(https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth) fills the backbone (conv1, bn1, layer1-3)
and the encoder's layer4; att_layer4, the attention convolutions, the encoder's Linear and the decoder keep
their initialisation. Without ``--config.init_from`` the run starts from scratch.

Should reach (Monte-Carlo test accuracy): see cub_vgg16_aib.
"""

from ib_attention_jax.configs.official import cub


def get_config():
    return cub('wrn50_2')
