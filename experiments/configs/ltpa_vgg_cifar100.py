"""Baseline: LTPA (AttnVGG_before, softmax attention at 32, 16 and 8 px), CIFAR-100, the public recipe.

    python -m experiments.main --config=experiments/configs/ltpa_vgg_cifar100.py --workdir=runs/ltpa_vgg_cifar100 \
        --config.data_dir=DATA_DIR

Should reach (test accuracy): 77.4% (22.62% top-1 error, SaoYan/LearnToPayAttention README, attention
before pooling; the LTPA paper reports 22.97% for (VGG-att3)-concat-pc).
"""

from ib_attention_jax.configs.baselines import ltpa_cifar


def get_config():
    return ltpa_cifar('cifar100')
