"""AIB on the LTPA VGG, SVHN (train split only, 0.5/0.5 normalisation).

    python -m experiments.main --config=experiments/configs/vgg_aib_svhn.py --workdir=runs/vgg_aib_svhn \
        --config.data_dir=DATA_DIR

Should reach (Monte-Carlo test accuracy): not recovered from the paper.
"""

from ib_attention_jax.configs.official import cifar_vgg


def get_config():
    return cifar_vgg('svhn')
