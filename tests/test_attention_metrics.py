"""Deletion, insertion and anchor statistics on hand-built maps with known answers.

The stand-in classifier's true-class probability is the share of the box's pixels still showing the image,
so every curve has a closed form: the box covers A = 1/4 of the image and the step grid holds the kink.
"""

import numpy as np
import pytest

from ib_attention_jax.evaluation.attention_metrics import (
    anchor_statistics,
    baseline_images,
    curve_auc,
    deletion_insertion,
    nearest_anchor_index,
    pixel_ranks,
    removal_counts,
    upsample_nearest,
)
from ib_attention_jax.evaluation.localization import upsample_map

S = 32
BOX = np.zeros((S, S), bool)
BOX[4:20, 8:24] = True  # 16 x 16 of 32 x 32: A = 1/4, aligned with the cells of an 8x8 map
A = 0.25


def box_probability(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Share of the box's pixels that still hold the image (the images are all ones, the baseline zeros)."""
    del labels
    return (images[:, BOX, 0] != 0).mean(axis=1)


def maps(kind: str, n: int = 16) -> np.ndarray:
    box_map = np.zeros((n, 8, 8))
    box_map[:, 1:5, 2:6] = 1.0  # the box at map resolution (4 px cells)
    return {"box": box_map, "inverted": 1.0 - box_map, "uniform": np.full((n, 8, 8), 0.3)}[kind]


def curves(kind: str, n: int = 16, steps: int = 16):
    images = np.ones((n, S, S, 3), np.float32)
    return deletion_insertion(box_probability, images, np.zeros(n, int), maps(kind, n), steps=steps,
                              rng=np.random.default_rng(0))


@pytest.mark.parametrize("kind, deletion, insertion", [
    ("box", A / 2, 1 - A / 2),  # the box goes first: the probability falls to 0 by the fraction A
    ("inverted", 1 - A / 2, A / 2),  # the background goes first: nothing happens until 1 - A
])
def test_deletion_and_insertion_of_the_box_and_the_inverted_map(kind, deletion, insertion):
    auc = curves(kind).auc()
    np.testing.assert_allclose(auc["deletion"], deletion, atol=1e-12)
    np.testing.assert_allclose(auc["insertion"], insertion, atol=1e-12)


def test_the_box_maps_curves_point_by_point():
    result = curves("box", n=2, steps=16)
    f = result.fractions
    np.testing.assert_allclose(f, np.arange(17) / 16)
    np.testing.assert_allclose(result.curves["deletion"][0], np.clip(1 - f / A, 0, 1), atol=1e-12)
    np.testing.assert_allclose(result.curves["insertion"][0], np.clip(f / A, 0, 1), atol=1e-12)


def test_a_uniform_map_scores_as_the_random_order():
    auc = curves("uniform", n=64).auc()
    for name in ("deletion", "insertion", "deletion_random", "insertion_random"):
        assert auc[name].mean() == pytest.approx(0.5, abs=0.03), name  # E[p(f)] = 1 - f, or f
    assert abs(auc["deletion"].mean() - auc["deletion_random"].mean()) < 0.04


def test_random_order_is_the_baseline_the_box_map_beats():
    auc = curves("box", n=64).auc()
    assert auc["deletion"].mean() < auc["deletion_random"].mean() - 0.3
    assert auc["insertion"].mean() > auc["insertion_random"].mean() + 0.3


def test_endpoints_are_the_image_and_the_baseline():
    calls = []

    def probability(images, labels):
        calls.append(images.copy())
        return box_probability(images, labels)

    result = deletion_insertion(probability, np.ones((3, S, S, 3)), np.zeros(3, int), maps("box", 3), steps=4,
                                with_random=False)
    assert len(calls) == 2 + 2 * 3  # the two shared endpoints, then deletion and insertion at 3 inner steps
    for name in ("deletion", "insertion"):
        assert result.curves[name].shape == (3, 5)
    np.testing.assert_array_equal(result.curves["deletion"][:, 0], 1.0)
    np.testing.assert_array_equal(result.curves["deletion"][:, -1], 0.0)
    np.testing.assert_array_equal(result.curves["insertion"][:, 0], 0.0)
    np.testing.assert_array_equal(result.curves["insertion"][:, -1], 1.0)


def test_pixel_ranks_follow_the_map_and_break_ties_randomly():
    m = np.array([[[3.0, 1.0], [2.0, 2.0]]])  # 2x2 map on a 4x4 image: cells of 2x2 pixels
    ranks = pixel_ranks(m, 4, np.random.default_rng(0)).reshape(4, 4)
    assert sorted(ranks[:2, :2].ravel()) == [0, 1, 2, 3]  # the top-left cell (3.0) goes first
    assert sorted(ranks[2:, :].ravel()) == list(range(4, 12))  # then both 2.0 cells, mixed
    assert sorted(ranks[:2, 2:].ravel()) == [12, 13, 14, 15]  # the 1.0 cell last
    other = pixel_ranks(m, 4, np.random.default_rng(1)).reshape(4, 4)
    assert not np.array_equal(ranks[2:], other[2:])  # the tie order depends on the generator


def test_upsample_nearest_is_block_replication_and_handles_odd_sizes():
    m = np.random.default_rng(0).random((2, 4, 4))
    np.testing.assert_array_equal(upsample_nearest(m, 32), upsample_map(m, 32))
    odd = upsample_nearest(np.arange(9.0).reshape(1, 3, 3), 8)
    assert odd.shape == (1, 8, 8)
    np.testing.assert_array_equal(odd[0, 0], [0, 0, 0, 1, 1, 2, 2, 2])  # pixel centres 0.5..7.5 over 3 cells


def test_removal_counts_and_auc():
    np.testing.assert_array_equal(removal_counts(10, 4), [0, 2, 5, 8, 10])  # rounded to whole pixels
    fractions = np.linspace(0, 1, 5)
    assert curve_auc(np.ones(5), fractions) == pytest.approx(1.0)
    assert curve_auc(fractions, fractions) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="steps"):
        removal_counts(10, 0)


def test_baselines():
    images = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(baseline_images(images, "mean"), 0.0)
    blurred = baseline_images(images, "blur")
    assert blurred.shape == images.shape and blurred.dtype == images.dtype
    assert blurred.std() < 0.6 * images.std()  # smoother
    np.testing.assert_allclose(baseline_images(np.full((1, 16, 16, 3), 2.0), "blur"), 2.0, rtol=1e-6)
    with pytest.raises(ValueError, match="baseline"):
        baseline_images(images, "noise")


def test_blur_baseline_changes_the_curves_not_the_order():
    images = np.ones((4, S, S, 3))
    result = deletion_insertion(box_probability, images, np.zeros(4, int), maps("box", 4), steps=8, baseline="blur")
    # A blur of a constant image is the image: nothing is removed, the probability stays 1.
    np.testing.assert_allclose(result.curves["deletion"], 1.0)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="disagree"):
        deletion_insertion(box_probability, np.ones((2, S, S, 3)), np.zeros(2), maps("box", 3))
    with pytest.raises(ValueError, match="square"):
        deletion_insertion(box_probability, np.ones((2, S, S + 1, 3)), np.zeros(2), maps("box", 2))


def test_anchor_statistics():
    stats = anchor_statistics(np.array([0, 30, 10, 0]), np.array([0.0, 1 / 3, 2 / 3, 1.0]))
    assert stats["anchors_used"] == 2 and stats["num_anchors"] == 4
    np.testing.assert_allclose(stats["anchor_usage"], [0, 0.75, 0.25, 0])
    entropy = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    assert stats["anchor_perplexity"] == pytest.approx(np.exp(entropy))
    uniform = anchor_statistics(np.full(5, 7.0), np.linspace(0, 1, 5))
    assert uniform["anchor_perplexity"] == pytest.approx(5.0) and uniform["anchors_used"] == 5
    one = anchor_statistics(np.array([0, 9.0, 0]), np.linspace(0, 1, 3))
    assert one["anchor_perplexity"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="usage"):
        anchor_statistics(np.ones(3), np.ones(4))


def test_nearest_anchor_index_takes_the_first_on_ties():
    anchors = np.array([0.0, 0.5, 0.5, 1.0])
    np.testing.assert_array_equal(nearest_anchor_index(np.array([0.1, 0.5, 0.74, 0.76, 2.0]), anchors),
                                  [0, 1, 1, 3, 3])
