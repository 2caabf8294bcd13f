"""Prepare a dataset once as ArrayRecord, so training can read it with `tfds.data_source`.

    python -m ib_attention_jax.data.prepare cluttered_digits --data_dir DIR   # offline, no TensorFlow
    python -m ib_attention_jax.data.prepare cifar10 --data_dir DIR            # downloads; needs TensorFlow
    python -m ib_attention_jax.data.prepare cub --data_dir DIR --manual_dir DIR_WITH_THE_TWO_ARCHIVES
    python -m ib_attention_jax.data.prepare cifar10 --data_dir DIR --check    # only says whether it is ready

The official datasets are prepared by tfds's own builders, which read their downloads with TensorFlow:
`pip install tensorflow-cpu` (the optional extra `.[tensorflow]`) in the environment that prepares them.
The training environment does not need it.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

import tensorflow_datasets as tfds

from ib_attention_jax.data import cluttered_digits
from ib_attention_jax.data.recipes import TF_EXTRA, get_recipe
from ib_attention_jax.data.sources import preparation_problem, resolve_data_dir

EMBEDDED = (cluttered_digits.NAME,)  # datasets this library generates itself, offline


def missing_requirements(tfds_name: str) -> list[str]:
    """Install commands for what tfds's builder of `tfds_name` needs and this environment lacks."""
    if tfds_name == cluttered_digits.NAME:
        return []
    missing = []
    if importlib.util.find_spec("tensorflow") is None:
        missing.append(TF_EXTRA)
    if tfds_name == "caltech_birds2011" and importlib.util.find_spec("cv2") is None:
        missing.append(
            "pip install opencv-python-headless  # tfds's CUB builder decodes the masks with OpenCV"
        )
    return missing


def prepare(
    dataset: str, data_dir: str | None = None, manual_dir: str | None = None
) -> tfds.core.DatasetBuilder:
    """Prepares `dataset` (a recipe name or its TFDS name) as ArrayRecord in `data_dir`; returns its builder.

    A no-op when already prepared. `manual_dir` holds files tfds would otherwise download (by their file
    names, e.g. CUB_200_2011.tgz); default DATA_DIR/downloads/manual.
    """
    recipe = get_recipe(dataset)
    data_dir = resolve_data_dir(data_dir)
    if recipe.tfds_name == cluttered_digits.NAME:
        return cluttered_digits.build(data_dir)
    if missing := missing_requirements(recipe.tfds_name):
        raise RuntimeError(f"Preparing {recipe.tfds_name} needs:\n    " + "\n    ".join(missing))
    builder = tfds.builder(recipe.tfds_name, data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
        )
    return builder


def ensure_embedded(dataset: str, data_dir: str | None = None) -> bool:
    """Builds an embedded dataset in `data_dir` (default: $TFDS_DATA_DIR or ~/tensorflow_datasets) on first use.

    Returns True if it was built now. Official datasets are left alone: they must be prepared by the user,
    and reading one that is not raises `DatasetNotPreparedError` with the command.
    """
    recipe = get_recipe(dataset)
    if recipe.tfds_name not in EMBEDDED or not preparation_problem(recipe, data_dir):
        return False
    print(f"building {recipe.tfds_name} in {resolve_data_dir(data_dir)} (offline, once) ...", flush=True)
    prepare(recipe.name, data_dir)
    return True


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "dataset", help="cifar10, cifar100, svhn, stl10, cub or cluttered_digits (or a TFDS name)"
    )
    parser.add_argument(
        "--data_dir", default=None, help="TFDS data folder (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)"
    )
    parser.add_argument("--manual_dir", default=None, help="folder holding already-downloaded archives")
    parser.add_argument("--check", action="store_true", help="only report whether the dataset can be read")
    args = parser.parse_args(argv)
    recipe = get_recipe(args.dataset)
    if args.check:
        problem = preparation_problem(recipe, args.data_dir)
        print(problem or f"{recipe.tfds_name} is prepared and readable.")
        return 1 if problem else 0
    try:
        builder = prepare(args.dataset, args.data_dir, args.manual_dir)
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 2
    print(
        f"{recipe.tfds_name} ready in {builder.data_dir}: "
        + ", ".join(f"{name} {info.num_examples}" for name, info in builder.info.splits.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
