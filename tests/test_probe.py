"""The linear probe's core on synthetic features with a known linear solution, and how it picks its target."""

import ml_collections
import numpy as np
import pytest

from ib_attention_jax.configs.quickstart import quickstart
from ib_attention_jax.data import cluttered_digits
from ib_attention_jax.evaluation.probe import fit_linear_probe, probe_dataset, probe_recipe, standardize


def linear_task(n: int, d: int = 12, classes: int = 4, seed: int = 0, true_w=None):
    """Features N(1, 3^2) per dimension and labels argmax(x W + b): a linear rule fits them exactly."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, classes)) if true_w is None else true_w
    x = rng.normal(1.0, 3.0, size=(n, d))
    return x, np.argmax(x @ w + np.arange(classes), axis=1), w


def test_recovers_a_known_multiclass_linear_rule():
    train_x, train_y, w = linear_task(3000)
    test_x, test_y, _ = linear_task(1000, seed=1, true_w=w)
    result = fit_linear_probe(train_x, train_y, test_x, test_y, regularization=(1e-3, 1e-1, 10.0, 1000.0))
    assert result.test_accuracy > 0.97
    assert result.regularization >= 10.0  # the data are noiseless: weak regularisation wins on held-out data
    assert result.validation_accuracy[1e-3] < result.validation_accuracy[result.regularization]
    assert (result.num_train, result.num_test, result.num_features) == (3000, 1000, 12)


@pytest.mark.parametrize("classifier", ["logistic", "linear_svm"])
def test_binary_rule_direction_is_recovered(classifier):
    rng = np.random.default_rng(3)
    w = rng.normal(size=8)
    x = rng.normal(size=(2000, 8))
    y = (x @ w > 0).astype(int)
    result = fit_linear_probe(x[:1500], y[:1500], x[1500:], y[1500:], classifier=classifier,
                              regularization=(0.1, 10.0))
    assert result.test_accuracy > 0.97
    # Refit the chosen model to read its weights: the direction of the true rule.
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    sx, = standardize(x[:1500])
    est = (LogisticRegression(C=result.regularization, max_iter=2000) if classifier == "logistic"
           else LinearSVC(C=result.regularization, dual="auto", max_iter=5000)).fit(sx, y[:1500])
    coef = est.coef_[0] / x[:1500].std(axis=0)  # back to the unstandardised features
    assert np.dot(coef, w) / np.linalg.norm(coef) / np.linalg.norm(w) > 0.98


def test_the_test_split_never_influences_the_choice_and_noise_gives_chance():
    train_x, train_y, w = linear_task(1000)
    test_x, test_y, _ = linear_task(500, seed=1, true_w=w)
    shuffled = np.random.default_rng(0).permutation(test_y)
    a = fit_linear_probe(train_x, train_y, test_x, test_y, regularization=(0.01, 1.0, 100.0))
    b = fit_linear_probe(train_x, train_y, test_x, shuffled, regularization=(0.01, 1.0, 100.0))
    assert a.regularization == b.regularization and a.validation_accuracy == b.validation_accuracy
    assert a.train_accuracy == b.train_accuracy
    majority = np.bincount(test_y).max() / len(test_y)  # what always guessing the commonest class scores
    assert b.test_accuracy < majority + 0.05 < a.test_accuracy  # labels unrelated to the features now
    noise = np.random.default_rng(5).normal(size=(600, 12))
    chance = fit_linear_probe(noise[:400], train_y[:400], noise[400:], train_y[400:600], regularization=(1.0,))
    assert chance.test_accuracy < np.bincount(train_y[400:600]).max() / 200 + 0.05


def test_pure_and_deterministic():
    train_x, train_y, w = linear_task(400)
    test_x, test_y, _ = linear_task(200, seed=1, true_w=w)
    first = fit_linear_probe(train_x, train_y, test_x, test_y, regularization=(0.1, 1.0))
    copy = train_x.copy()
    second = fit_linear_probe(train_x, train_y, test_x, test_y, regularization=(0.1, 1.0))
    assert first == second
    np.testing.assert_array_equal(train_x, copy)  # inputs untouched
    assert set(first.to_json()["validation_accuracy"]) == {"0.1", "1.0"}


def test_standardize_uses_train_statistics_and_keeps_constant_features():
    train = np.array([[1.0, 5.0], [3.0, 5.0]])
    test = np.array([[2.0, 7.0]])
    a, b = standardize(train, test)
    np.testing.assert_allclose(a, [[-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(b, [[0.0, 2.0]])


def test_bad_inputs_raise():
    x, y, _ = linear_task(100)
    with pytest.raises(ValueError, match="same d"):
        fit_linear_probe(x, y, x[:, :3], y)
    with pytest.raises(ValueError, match="two classes"):
        fit_linear_probe(x, np.zeros(100, int), x, y)
    with pytest.raises(ValueError, match="positive"):
        fit_linear_probe(x, y, x, y, regularization=(0.0, 1.0))
    with pytest.raises(ValueError, match="validation_fraction"):
        fit_linear_probe(x, y, x, y, validation_fraction=1.0)
    with pytest.raises(ValueError, match="classifier"):
        fit_linear_probe(x, y, x, y, classifier="forest")


def test_probe_targets():
    assert probe_dataset(quickstart()) == "cluttered_digits_shifted"
    assert probe_recipe("cluttered_digits_shifted") is cluttered_digits.SHIFTED_RECIPE
    assert probe_recipe("stl10").image_size == 96
    cifar = quickstart()
    cifar.dataset = "cifar10"
    assert probe_dataset(cifar) == "stl10"
    cifar.probe.dataset = "cluttered_digits"
    assert probe_dataset(cifar) == "cluttered_digits"
    svhn = ml_collections.ConfigDict({"dataset": "svhn", "probe": {"dataset": None}})
    with pytest.raises(ValueError, match="--config.probe.dataset"):
        probe_dataset(svhn)
