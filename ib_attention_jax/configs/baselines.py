"""The attention baselines' recipes, as their public training scripts run them.

* LTPA, SaoYan/LearnToPayAttention train.py (``--attn_mode before --normalize_attn``):
  SGD lr 0.1, momentum 0.9, weight decay 5e-4 on every parameter, batch 128 (test 100),
  300 epochs of ``num_aug = 3`` passes over the training set each (900 passes in all),
  ``LambdaLR(0.5 ** (epoch // 25))`` stepped at the start of every epoch (epoch e trains
  at ``0.1 * 0.5 ** ((e + 1) // 25)``), random crop (pad 4) and flip, CIFAR-100
  normalisation, cross entropy.
* ABN, attention_branch_network cifar.py (TRAINING.md, WRN-28-10-drop): SGD lr 0.1,
  momentum 0.9, weight decay 5e-4, batch 128 (test 100), 200 epochs, x0.2 at epochs 60,
  120 and 160, dropout 0.3, random crop (pad 4) and flip, CIFAR-10 normalisation for both
  CIFARs, loss ``CE(attention branch) + CE(perception branch)``.

The losses are in nats, as the public code computes them. Neither model has noise, so
evaluation takes one forward (``eval_num_samples = 1``).
"""

import ml_collections

from ib_attention_jax.configs.base import get_base_config

# The LTPA rate halves when (e + 1) // 25 grows, i.e. at epochs e = 25k - 1; an epoch being three
# passes over the data, that is at pass 3 * (25k - 1) (k = 1..12 within the 300 epochs).
LTPA_PASSES_PER_EPOCH = 3
LTPA_EPOCHS = 300
LTPA_MILESTONES = tuple(LTPA_PASSES_PER_EPOCH * (25 * k - 1) for k in range(1, LTPA_EPOCHS // 25 + 1))


def _baseline_objective(c: ml_collections.ConfigDict) -> None:
    """Cross entropies in nats, no KL; ABN's branch weight is ObjectiveConfig's ``aux_coef`` default, 1."""
    c.objective.update(beta=0.0, units="nats")
    c.eval_num_samples = 1


def ltpa_cifar(dataset: str = "cifar100") -> ml_collections.ConfigDict:
    """``ltpa_vgg`` with the LTPA train.py recipe (module docstring); the public script trains CIFAR-100."""
    c = get_base_config()
    c.model = "ltpa_vgg"
    c.dataset = dataset
    c.normalization = "cifar100"
    c.batch_size = 128
    c.eval_batch_size = 100
    c.num_epochs = LTPA_PASSES_PER_EPOCH * LTPA_EPOCHS
    c.optimizer.update(name="sgd", learning_rate=0.1, schedule="multistep", milestones=LTPA_MILESTONES, gamma=0.5,
                       momentum=0.9, weight_decay=5e-4)
    _baseline_objective(c)
    c.checkpoint_every_steps = 2000
    return c


def abn_cifar(dataset: str = "cifar100") -> ml_collections.ConfigDict:
    """``abn_wrn`` with the ABN cifar.py WRN-28-10-drop recipe (module docstring)."""
    c = get_base_config()
    c.model = "abn_wrn"
    c.dataset = dataset
    c.normalization = "cifar10"
    c.model_kwargs.dropout_rate = 0.3
    c.batch_size = 128
    c.eval_batch_size = 100
    c.num_epochs = 200
    c.optimizer.update(name="sgd", learning_rate=0.1, schedule="multistep", milestones=(60, 120, 160), gamma=0.2,
                       momentum=0.9, weight_decay=5e-4)
    _baseline_objective(c)
    c.checkpoint_every_steps = 2000
    return c
