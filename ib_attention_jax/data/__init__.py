"""Input pipelines: prepared TFDS data read with `tfds.data_source` and fed by grain (no TensorFlow needed).

    from ib_attention_jax import data
    info = data.dataset_info("cifar10", data_dir)             # sizes, classes, image shape
    train = data.make_train_iterator("cifar10", batch_size=128, seed=0, data_dir=data_dir)
    batch = next(train)                       # {'image': (128, 32, 32, 3) f32, 'label': (128,) i32}
    state = train.get_state()                 # goes into the checkpoint; train.set_state(state)
    for batch in data.make_eval_iterator("cifar10", batch_size=100, data_dir=data_dir):
        ...                                                   # plus 'mask': (100,) bool, False for padding

`normalize_images(uint8_images, "cifar10")` scales images read elsewhere as the pipelines do.
`python -m ib_attention_jax.data.prepare DATASET --data_dir DIR` prepares a dataset (`cluttered_digits`
offline in seconds; the official ones with TensorFlow installed); `prepare.prepare` is its function.
"""

from ib_attention_jax.data.cluttered_digits import build as build_cluttered_digits
from ib_attention_jax.data.images import normalize_images
from ib_attention_jax.data.iterator import BatchIterator
from ib_attention_jax.data.pipeline import (
    make_eval_dataset,
    make_eval_iterator,
    make_train_dataset,
    make_train_iterator,
    num_eval_batches,
    steps_per_epoch,
)
from ib_attention_jax.data.recipes import NORMALIZATIONS, RECIPES, Recipe, get_recipe
from ib_attention_jax.data.sources import (
    DatasetInfo,
    DatasetNotPreparedError,
    check_prepared,
    dataset_info,
    num_examples,
    open_source,
)

__all__ = [
    "NORMALIZATIONS",
    "RECIPES",
    "BatchIterator",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "Recipe",
    "build_cluttered_digits",
    "check_prepared",
    "dataset_info",
    "get_recipe",
    "make_eval_dataset",
    "make_eval_iterator",
    "make_train_dataset",
    "make_train_iterator",
    "normalize_images",
    "num_eval_batches",
    "num_examples",
    "open_source",
    "steps_per_epoch",
]
