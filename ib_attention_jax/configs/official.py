"""The official recipes (METHOD.md section 4) as config builders; each experiment file picks one.

The paper's result tables could not be recovered, so the figures in the experiment
docstrings are the published accuracies of the same backbones and recipes, the level
a correct AIB run should reach or pass.
"""

import ml_collections

from ib_attention_jax.configs.base import get_base_config

# The official anchor counts per (backbone, dataset).
ANCHORS = {("vgg", "cifar10"): 20, ("vgg", "cifar100"): 50, ("wrn", "cifar10"): 50, ("wrn", "cifar100"): 20,
           ("vgg", "svhn"): 20, ("wrn", "svhn"): 50}


def _cifar(backbone: str, dataset: str, quantized: bool, plain: bool,
           cifar_normalization: str) -> ml_collections.ConfigDict:
    """What the two official CIFAR/SVHN scripts share: the model by flags, the official anchor count,
    the normalisation (SVHN: 0.5/0.5), 200 epochs, 4 x 4 test samples."""
    c = get_base_config()
    c.model = f"{backbone}_plain" if plain else (f"{backbone}_aib_qt" if quantized else f"{backbone}_aib")
    c.dataset = dataset
    c.normalization = "half" if dataset == "svhn" else cifar_normalization
    if quantized:
        c.model_kwargs.num_anchors = ANCHORS[(backbone, dataset)]
    c.num_epochs = 200
    c.eval_num_samples = 4
    c.checkpoint_every_steps = 2000
    return c


def cifar_vgg(dataset: str = "cifar10", quantized: bool = False, plain: bool = False) -> ml_collections.ConfigDict:
    """VGG-backbone-32/cifar_va.py: SGD 0.9, wd 5e-4 on everything (anchors included, at the base rate),
    batch 128, 200 epochs, LambdaLR from --lr 0.01 (AIB) or 0.001 (QT) to the 0.1 peak halving every
    25 epochs, beta 0.01 with c = 0.5, 4 x 4 test samples, CIFAR-100 normalisation for both CIFARs."""
    c = _cifar("vgg", dataset, quantized, plain, cifar_normalization="cifar100")
    c.batch_size = c.eval_batch_size = 128
    c.optimizer.update(name="sgd", learning_rate=0.001 if quantized else 0.01, schedule="vgg_lambda", momentum=0.9,
                       weight_decay=5e-4, anchor_lr_ratio=1.0)
    c.objective.update(beta=1e-2, info_factor=0.5, kl_form="official", units="bits", vq_coef=0.4, commit_coef=0.1)
    return c


def cifar_wrn(dataset: str = "cifar10", quantized: bool = False, plain: bool = False) -> ml_collections.ConfigDict:
    """WRN-backbone-32/cifar_va.py: WRN-28-10 (dropout 0.3), SGD 0.1, momentum 0.9, wd 5e-4, x0.2 at epochs
    60/120/160 of 200, batch 128 (test 100), K = 512, beta 0.01 with c = 1, anchors at 1e-4 x the rate,
    CIFAR-10 normalisation for both CIFARs. The official run uses apex AMP O1: half_precision is the analogue."""
    c = _cifar("wrn", dataset, quantized, plain, cifar_normalization="cifar10")
    c.batch_size = 128
    c.eval_batch_size = 100
    c.optimizer.update(name="sgd", learning_rate=0.1, schedule="multistep", milestones=(60, 120, 160), gamma=0.2,
                       momentum=0.9, weight_decay=5e-4, anchor_lr_ratio=1e-4)
    c.objective.update(beta=1e-2, info_factor=1.0, kl_form="official", units="bits", vq_coef=0.4, commit_coef=0.1)
    return c


def cub(backbone: str = "vgg16", quantized: bool = False, plain: bool = False) -> ml_collections.ConfigDict:
    """CUB-experiments: bird-box crop, 256 resize, 224 crop/flip; Adam 1e-4 (betas 0.5, 0.999), no weight
    decay, x0.97 every 2 epochs, 200 epochs, batch 16 (test 4), K = 256, beta 0.01 (c = 1), weight EMA
    0.999, anchors frozen at linspace(0, 1, 20), 12 x 12 test samples.

    The official runs start the backbone from torchvision's ImageNet weights; so does a run here with the
    one override ``--config.init_from=PATH`` to torchvision's file, ``vgg16-397923af.pth`` or
    ``wide_resnet50_2-95faca4d.pth`` from https://download.pytorch.org/models/ (the backbone loads under its
    torchvision names, the ImageNet classifier is dropped, the rest keeps its initialisation). Without it the
    configs start from scratch."""
    c = get_base_config()
    stem = f"cub_{backbone}"
    c.model = f"{stem}_plain" if plain else (f"{stem}_aib_qt" if quantized else f"{stem}_aib")
    c.dataset = "cub"
    if quantized:
        c.model_kwargs.num_anchors = 20
    c.batch_size = 16
    c.eval_batch_size = 4
    c.num_epochs = 200
    c.optimizer.update(name="adam", learning_rate=1e-4, b1=0.5, b2=0.999, schedule="exponential", exp_gamma=0.97,
                       exp_every_epochs=2, weight_decay=0.0, anchor_lr_ratio=0.0)
    c.objective.update(beta=1e-2, info_factor=1.0, kl_form="official", units="bits", vq_coef=0.4, commit_coef=0.1)
    c.ema_decay = 0.999
    c.eval_num_samples = 12
    c.checkpoint_every_steps = 1000
    return c
