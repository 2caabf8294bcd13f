"""grain input pipelines over prepared TFDS data: per-host shards, seeded shuffle, augmentation, batches.

Batches are dicts of numpy arrays (b = per-host batch size, s = image side):
    image  float32 (b, s, s, 3)  normalised, NHWC
    label  int32   (b,)
    box    float32 (b, 4)        [ymin, xmin, ymax, xmax] output-image pixels (datasets with a box)
    mask   bool    (b,)          evaluation only: False for the padding rows of the last batch

Training iterators are infinite by default and checkpointable: `it.get_state()` is a small dict that goes into
the checkpoint and `it.set_state(state)` continues the same sequence of batches. Everything random is a
function of (seed, process_index), never of the number of threads or worker processes, and so is the state.

Sharding: host p of P reads examples p, p + P, p + 2P, ... (grain slicing, the equivalent of
`tfds.split_for_jax_process`). For training every host gets the same number of examples (the last
len % P are dropped) so hosts stay in step; for evaluation every example is read exactly once and each host
pads to the same number of batches, marking padding with mask False.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from ib_attention_jax.data import transforms
from ib_attention_jax.data.iterator import BatchIterator
from ib_attention_jax.data.recipes import NORMALIZATIONS, Recipe, get_recipe
from ib_attention_jax.data.sources import open_source


def resolve_process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """(index, count) of this host: the given values, else jax.process_index() / jax.process_count()."""
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside [0, {process_count})")
    return process_index, process_count


def host_seeds(seed: int, process_index: int) -> tuple[int, int]:
    """Two independent 32-bit seeds (shuffle, augmentation) for this host, derived from (seed, index)."""
    shuffle_seed, augment_seed = np.random.SeedSequence([seed, process_index]).generate_state(2)
    return int(shuffle_seed), int(augment_seed)


def steps_per_epoch(num_examples: int, batch_size: int, process_count: int = 1) -> int:
    """Training batches per host per epoch: each host holds num_examples // process_count examples."""
    return (num_examples // process_count) // batch_size


def num_eval_batches(num_examples: int, batch_size: int, process_count: int = 1) -> int:
    """Evaluation batches every host yields (the same on all hosts, the last one padded)."""
    return math.ceil(math.ceil(num_examples / process_count) / batch_size)


def _resolve_recipe(dataset: str | Recipe, normalization: str | None) -> Recipe:
    recipe = get_recipe(dataset)
    if normalization is not None:
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {normalization!r}; known: {sorted(NORMALIZATIONS)}")
        recipe = dataclasses.replace(recipe, normalization=normalization)
    return recipe


def make_train_dataset(
    dataset: str | Recipe,
    *,
    batch_size: int,
    seed: int,
    data_dir: str | None = None,
    split: str | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    num_epochs: int | None = None,
    image_size: int | None = None,
    normalization: str | None = None,
    augment: bool = True,
    source: Sequence[dict[str, Any]] | None = None,
) -> grain.MapDataset:
    """The training pipeline as a grain MapDataset of batches (see `make_train_iterator`)."""
    recipe = _resolve_recipe(dataset, normalization)
    index, count = resolve_process(process_index, process_count)
    if source is None:
        source = open_source(recipe, split or recipe.train_split, data_dir)
    per_host = len(source) // count
    if per_host < batch_size:
        raise ValueError(f"{per_host} examples per host cannot fill one batch of {batch_size}")
    shuffle_seed, augment_seed = host_seeds(seed, index)
    ds = grain.MapDataset.source(source)[index : per_host * count : count]  # (per_host,) equal on all hosts
    ds = ds.shuffle(seed=shuffle_seed).repeat(num_epochs)  # a new order every epoch
    ds = ds.random_map(transforms.TrainTransform(recipe, image_size, augment), seed=augment_seed)
    return ds.batch(batch_size, drop_remainder=True)


def make_train_iterator(
    dataset: str | Recipe,
    *,
    num_workers: int = 0,
    num_threads: int = 4,
    prefetch: int = 4,
    **dataset_options: Any,
) -> BatchIterator:
    """Checkpointable iterator of augmented training batches of `batch_size` (per host) examples.

    dataset_options: the keywords of `make_train_dataset` (batch_size and seed required).

    dataset: a name from `recipes.RECIPES` (or alias, or a `Recipe`); split: any tfds split string
    (default the recipe's train split; e.g. 'train[:90%]' to hold out a validation part); num_epochs: None
    repeats forever, with a new shuffle every epoch; batches may straddle epochs and never hold a partial
    batch. normalization: a key of `recipes.NORMALIZATIONS` overriding the recipe's default. augment=False
    keeps only the deterministic preprocessing. num_workers > 0 decodes and augments in that many processes
    (the batches are the same for any number of workers and threads). source: read these decoded examples
    instead of `tfds.data_source` (tests, benchmarks).
    """
    ds = make_train_dataset(dataset, **dataset_options)
    return BatchIterator(ds, num_threads=num_threads, prefetch=prefetch, num_workers=num_workers)


def make_eval_dataset(
    dataset: str | Recipe,
    *,
    batch_size: int,
    data_dir: str | None = None,
    split: str | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    image_size: int | None = None,
    normalization: str | None = None,
    source: Sequence[dict[str, Any]] | None = None,
) -> grain.MapDataset:
    """The evaluation pipeline as a grain MapDataset of padded, masked batches (see `make_eval_iterator`)."""
    recipe = _resolve_recipe(dataset, normalization)
    index, count = resolve_process(process_index, process_count)
    if source is None:
        source = open_source(recipe, split or recipe.eval_split, data_dir)
    ds = grain.MapDataset.source(source)[index::count].map(transforms.EvalTransform(recipe, image_size))
    padded_len = num_eval_batches(len(source), batch_size, count) * batch_size
    if padded_len > len(ds):
        padding = grain.MapDataset.range(padded_len - len(ds)).map(
            transforms.PaddingTransform(recipe, image_size)
        )
        ds = grain.MapDataset.concatenate([ds, padding])
    return ds.batch(batch_size, drop_remainder=False)


def make_eval_iterator(
    dataset: str | Recipe,
    *,
    num_workers: int = 0,
    num_threads: int = 4,
    prefetch: int = 4,
    **dataset_options: Any,
) -> BatchIterator:
    """One pass over `split` (default the recipe's eval split) in order, with the evaluation preprocessing.

    Every host yields `num_eval_batches(n, batch_size, process_count)` batches; rows with mask False are
    padding, so summing a metric over mask counts every example exactly once across all hosts.
    dataset_options: the keywords of `make_eval_dataset` (batch_size required).
    """
    ds = make_eval_dataset(dataset, **dataset_options)
    return BatchIterator(ds, num_threads=num_threads, prefetch=prefetch, num_workers=num_workers)
