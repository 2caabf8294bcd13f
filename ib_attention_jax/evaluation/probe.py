"""Cross-domain classification by a linear probe on a trained model's frozen features.

The official code has no cross-domain code; its leftovers point to the protocol of Learn To Pay Attention
(features of CIFAR-trained networks, a linear SVM on other datasets such as STL-10). This module's choices:

- features come from the mean path (``deterministic=True``, no noise) of the trained weights, on the probe
  dataset's images resized to the model's input (the dataset's evaluation preprocessing: bilinear resize,
  e.g. STL-10 96x96 -> 32x32) and normalised as the model was trained;
- two feature sets: ``latent_mean``, the bottleneck's mean (b, K) (AIB models only), and
  ``pooled_features``, the global average of the features the encoder reads: f * (1 + a) with the map the
  model uses (quantised for QT models) for AIB, the backbone's f for the plain baselines, so the two
  families are compared on the same layer;
- features are standardised with the probe train split's statistics; the classifier is multinomial
  logistic regression with an L2 penalty (``classifier="linear_svm"``: LTPA's linear SVM, one-vs-rest with
  the squared hinge, which fits a multi-class linear rule less well), its regularisation C chosen from a
  grid on a stratified held-out part of the probe's train split, then refitted on the whole train split
  and scored once on the test split.

``fit_linear_probe`` is the pure core, ``run_probe`` probes a restored state; ``--mode=linear_probe``
(``modes/probe.py``) restores a workdir's weights and writes ``probe.json``. ``probe_accuracy`` there is the
pooled features' test accuracy (defined for every model).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ib_attention_jax import data as data_lib
from ib_attention_jax.data import cluttered_digits
from ib_attention_jax.data.recipes import Recipe
from ib_attention_jax.errors import ConfigError
from ib_attention_jax.runtime.parallel import Runner, host_batch_index

CLASSIFIERS = ("logistic", "linear_svm")
# The dataset a model is probed on when config.probe.dataset is None.
DEFAULT_TARGETS = {"cluttered_digits": cluttered_digits.SHIFTED_NAME, "cifar10": "stl10", "cifar100": "stl10"}


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """One probe's outcome; ``validation_accuracy`` maps each C of the grid to its held-out accuracy."""

    test_accuracy: float
    train_accuracy: float
    regularization: float
    validation_accuracy: dict[float, float]
    num_train: int
    num_test: int
    num_features: int

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["validation_accuracy"] = {repr(c): a for c, a in self.validation_accuracy.items()}
        return d


def _classifier(kind: str, c: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    if kind == "linear_svm":
        return LinearSVC(C=c, dual="auto", max_iter=5000, random_state=seed)
    if kind == "logistic":
        return LogisticRegression(C=c, max_iter=2000)
    raise ValueError(f"unknown probe classifier {kind!r}; choose one of {CLASSIFIERS}")


def _fit(kind: str, c: float, x: np.ndarray, y: np.ndarray, seed: int):
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # large C on non-separable data: near enough
        return _classifier(kind, c, seed).fit(x, y)


def standardize(train_x: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Centres and scales every array by the train features' mean and std (a constant feature keeps scale 1)."""
    mean = train_x.mean(axis=0)
    std = train_x.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    return tuple((x - mean) / std for x in (train_x, *others))


def fit_linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                     classifier: str = "logistic", regularization: Sequence[float] = (1e-2, 1e-1, 1.0, 10.0),
                     validation_fraction: float = 0.2, seed: int = 0) -> ProbeResult:
    """Fits a linear classifier on (n, d) train features, choosing C on a held-out part; scores it on test.

    Pure: the result depends only on the arrays and the arguments. The test split is used once, after C is
    chosen; ties between C values keep the smallest (the strongest regularisation).
    """
    from sklearn.model_selection import train_test_split

    train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"features must be (n, d) with the same d, got train {train_x.shape}, test {test_x.shape}")
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError("features and labels differ in length")
    if len(np.unique(train_y)) < 2:
        raise ValueError("the probe's train split needs at least two classes")
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    grid = sorted(float(c) for c in regularization)
    if not grid or grid[0] <= 0:
        raise ValueError(f"regularization must be a non-empty list of positive C values, got {regularization}")
    _, counts = np.unique(train_y, return_counts=True)
    stratify = train_y if counts.min() >= 2 else None
    fit_x, val_x, fit_y, val_y = train_test_split(train_x, train_y, test_size=validation_fraction,
                                                  random_state=seed, stratify=stratify)
    fit_x, val_x = standardize(fit_x, val_x)
    scores = {c: float(np.mean(_fit(classifier, c, fit_x, fit_y, seed).predict(val_x) == val_y)) for c in grid}
    best = max(grid, key=lambda c: (scores[c], -c))
    full_x, full_test_x = standardize(train_x, test_x)
    model = _fit(classifier, best, full_x, train_y, seed)
    return ProbeResult(test_accuracy=float(np.mean(model.predict(full_test_x) == test_y)),
                       train_accuracy=float(np.mean(model.predict(full_x) == train_y)), regularization=best,
                       validation_accuracy=scores, num_train=len(train_x), num_test=len(test_x),
                       num_features=train_x.shape[1])


# -- features ------------------------------------------------------------------------------------------------

def make_feature_step(model: Any, use_ema: bool = False):
    """Per-device ``(state, batch) -> features`` on the mean path: ``pooled_features`` (b, C) always,
    ``latent_mean`` (b, K) for AIB models."""
    from ib_attention_jax.models.attention import modulate

    def feature_step(state, batch):
        out = model.apply(state.variables(use_ema), batch["image"], train=False, deterministic=True)
        features = out.features.astype(jnp.float32)  # (b, h, w, c)
        if out.attention_used is not None:
            features = modulate(features, out.attention_used.astype(jnp.float32))  # (1 * b, h, w, c)
        result = {"pooled_features": jnp.mean(features, axis=(1, 2))}
        if out.latent is not None:
            result["latent_mean"] = out.latent.mean.astype(jnp.float32)  # (1 * b, K)
        return result

    return feature_step


def _gather_hosts(array: np.ndarray) -> np.ndarray:
    if jax.process_count() == 1:
        return array
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def extract_features(runner: Runner, step, state: Any, batches: Iterable[dict[str, np.ndarray]]
                     ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Runs the compiled feature ``step`` over padded eval ``batches``: (features name -> (n, d), labels (n,)).

    Rows of every host are gathered (the probe is fitted on the complete split); padding rows are dropped.
    """
    parts: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        b = batch["image"].shape[0]
        feed = {"image": batch["image"], "label": batch["label"].astype(np.int32), "index": host_batch_index(b)}
        out = runner.gather(step(state, runner.shard_batch(feed)))
        for key, value in {**out, "label": batch["label"], "mask": batch.get("mask", np.ones(b, bool))}.items():
            parts.setdefault(key, []).append(np.asarray(value))
    if not parts:
        raise ValueError("the probe split holds no examples")
    arrays = {k: _gather_hosts(np.concatenate(v)) for k, v in parts.items()}
    mask = arrays.pop("mask").astype(bool)
    labels = arrays.pop("label")[mask]
    return {k: v[mask] for k, v in arrays.items()}, labels


# -- the mode ------------------------------------------------------------------------------------------------

def probe_recipe(name: str) -> Recipe:
    """The input recipe of a probe dataset name (the registered recipes plus ``cluttered_digits_shifted``)."""
    if name == cluttered_digits.SHIFTED_NAME:
        return cluttered_digits.SHIFTED_RECIPE
    try:
        return data_lib.get_recipe(name)
    except ValueError as err:
        raise ConfigError(f"probe.dataset: {err} (or {cluttered_digits.SHIFTED_NAME})") from None


def probe_dataset(config) -> str:
    """The dataset ``config`` is probed on: ``config.probe.dataset``, else the training dataset's default."""
    probe = config.get("probe") or {}
    name = probe.get("dataset") if probe else None
    if name:
        return name
    train = data_lib.get_recipe(config.dataset).name
    if train not in DEFAULT_TARGETS:
        raise ConfigError(f"no default probe dataset for {config.dataset!r}; set --config.probe.dataset "
                         f"(e.g. one of {sorted(set(DEFAULT_TARGETS.values()))})")
    return DEFAULT_TARGETS[train]


def ensure_probe_data(recipe: Recipe, data_dir: str | None) -> None:
    """Builds the embedded datasets offline on first use; others must be prepared (the error says how)."""
    from ib_attention_jax.data.sources import preparation_problem

    builders = {cluttered_digits.NAME: cluttered_digits.build, cluttered_digits.SHIFTED_NAME:
                cluttered_digits.build_shifted}
    if recipe.tfds_name in builders and preparation_problem(recipe, data_dir):
        print(f"building {recipe.tfds_name} (offline, once) ...", flush=True)
        builders[recipe.tfds_name](data_dir)
    data_lib.check_prepared(recipe, data_dir)


def _split(split: str | None, default: str, limit: int) -> str:
    split = split or default
    return f"{split}[:{limit}]" if limit and "[" not in split else split


def run_probe(config, model: Any, runner: Runner, state: Any, host_batch: int) -> dict[str, Any]:
    """Features of the trained ``state`` (in ``runner``'s layout) on the probe dataset, the linear probes fitted
    on them: ``probe.json``'s contents without the checkpoint it came from. ``host_batch``: this host's part of
    the eval batch; the embedded probe datasets are built on first use."""
    from ib_attention_jax.models.registry import get_spec

    probe = config.probe
    name = probe_dataset(config)
    recipe = probe_recipe(name)
    ensure_probe_data(recipe, config.get("data_dir"))
    image_size = get_spec(config.model).image_size
    normalization = config.get("normalization") or data_lib.get_recipe(config.dataset).normalization
    step = runner.compile_eval_step(make_feature_step(model, config.get("eval_ema", False)), name="probe_features")
    splits = {"train": _split(probe.get("train_split"), recipe.train_split, probe.get("max_train_examples", 0)),
              "test": _split(probe.get("test_split"), recipe.eval_split, probe.get("max_test_examples", 0))}
    features, labels = {}, {}
    for part, split in splits.items():
        batches = data_lib.make_eval_iterator(recipe, batch_size=host_batch, data_dir=config.get("data_dir"),
                                              split=split, image_size=image_size, normalization=normalization)
        features[part], labels[part] = extract_features(runner, step, state, batches)
    results = {}
    for key in features["train"]:
        results[key] = fit_linear_probe(features["train"][key], labels["train"], features["test"][key],
                                        labels["test"], classifier=probe.get("classifier", "logistic"),
                                        regularization=tuple(probe.get("regularization", (1.0,))),
                                        validation_fraction=probe.get("validation_fraction", 0.2),
                                        seed=config.get("seed", 0)).to_json()
    return {"model": config.model, "trained_on": config.dataset, "dataset": name, "splits": splits,
            "image_size": image_size, "normalization": normalization, "classifier": probe.get("classifier"),
            "features": results, "probe_accuracy": results["pooled_features"]["test_accuracy"],
            "probe_accuracy_latent": results["latent_mean"]["test_accuracy"] if "latent_mean" in results else None}
