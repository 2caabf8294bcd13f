"""Defaults shared by every experiment config; each config file changes what its recipe needs.

This is the schema: a key that is not here is an error, in a config file and on the command line
(``configs/schema.py``); ``model_kwargs`` takes the options of the model's builder. What a restart of a
workdir may change is in ``configs/changes.py``.
"""

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = "small_aib"
    c.model_kwargs = ml_collections.ConfigDict()  # the builder's options: num_anchors, latent_dim, conv_impl, ...
    c.num_classes = 0  # 0: the dataset's
    c.dataset = "cluttered_digits"
    c.data_dir = ml_collections.config_dict.placeholder(str)  # None: tfds's default (~/tensorflow_datasets)
    c.train_split = ml_collections.config_dict.placeholder(str)  # None: the recipe's, e.g. "train"
    c.eval_split = ml_collections.config_dict.placeholder(str)  # None: the recipe's test split
    c.normalization = ml_collections.config_dict.placeholder(str)  # None: the dataset's; "cifar100" for VGG
    c.validation_split = ml_collections.config_dict.placeholder(str)  # e.g. "train[45000:]": select on it
    c.init_from = ml_collections.config_dict.placeholder(str)  # starting weights: official/torchvision file, workdir
    c.seed = 0
    c.batch_size = 128  # global, over all hosts and devices
    c.eval_batch_size = 128
    c.num_epochs = 1.0
    c.num_steps = 0  # > 0 overrides num_epochs
    c.num_workers = 0  # grain worker processes for decoding and augmentation

    c.optimizer = ml_collections.ConfigDict(dict(
        name="sgd", learning_rate=0.1, schedule="constant", momentum=0.9, nesterov=False, b1=0.9, b2=0.999,
        eps=1e-8, weight_decay=0.0, anchor_lr_ratio=1.0, warmup_steps=0, milestones=(60, 120, 160), gamma=0.2,
        exp_gamma=0.97, exp_every_epochs=2, grad_clip_norm=0.0))
    c.objective = ml_collections.ConfigDict(dict(
        beta=1e-2, info_factor=ml_collections.config_dict.placeholder(float), kl_form="official", units="bits",
        vq_coef=0.4, commit_coef=0.1))
    c.beta_warmup_steps = 0
    c.num_samples = 1  # attention x latent samples per training step (official: 1)
    c.eval_num_samples = 4  # official CIFAR: 4 (4 x 4 logit samples); CUB: 12
    c.ema_decay = 0.0
    c.eval_ema = False
    c.half_precision = False  # bfloat16 compute, float32 parameters; KL and quantiser losses in float32
    c.remat = "none"  # recompute the backbone blocks' activations in the backward pass: "full", "dots_saveable"

    c.parallel = "shard_map"  # or "pmap"
    c.distributed = False  # jax.distributed.initialize() for multi-host runs (TPU pods, SLURM, Open MPI: automatic)
    c.coordinator_address = ml_collections.config_dict.placeholder(str)  # manual launch: "host:port" of process 0
    c.num_processes = ml_collections.config_dict.placeholder(int)  # manual launch: number of processes
    c.process_id = ml_collections.config_dict.placeholder(int)  # manual launch: this process's index
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.log_every_steps = 50
    c.eval_every_steps = 0  # > 0: evaluate every this many steps (default with validation_split: every epoch)
    c.tensorboard = False
    c.progress = True
    c.export_examples = 32  # test images in attention_overlays.png

    # Attention quality and transfer (ib_attention_jax/evaluation: attention_metrics.py, probe.py).
    c.attention_metrics_examples = 500  # test examples per host scored by deletion/insertion (0: off)
    c.attention_metrics_steps = 16  # deletion/insertion at the fractions 0, 1/16, ..., 1 of the pixels
    c.attention_metrics_baseline = "mean"  # removed pixels become the mean colour ("mean") or a blur ("blur")
    c.probe = ml_collections.ConfigDict(dict(  # --mode=linear_probe: frozen features -> linear classifier
        dataset=ml_collections.config_dict.placeholder(str),  # None: the default target of the training dataset
        train_split=ml_collections.config_dict.placeholder(str),  # None: the probe dataset's train split
        test_split=ml_collections.config_dict.placeholder(str),  # None: its test split
        max_train_examples=0, max_test_examples=0,  # 0: every example of the split
        classifier="logistic",  # "logistic" (multinomial, L2) or "linear_svm" (one-vs-rest, squared hinge)
        regularization=(1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0),  # C grid, chosen on a held-out part of train
        validation_fraction=0.2))  # that part (stratified); the chosen C is refitted on the whole train split
    return c
