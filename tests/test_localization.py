"""Known-input tests of the localisation metrics (pointing game, energy in box, box area)."""

import numpy as np
import pytest

from ib_attention_jax.evaluation.localization import box_area_fraction, energy_in_box, pointing_game, upsample_map


def one_hot(b: int, h: int, w: int, cells: list[tuple[int, int]]) -> np.ndarray:
    """(b, h, w) zeros with a 1 at cells[k] in map k."""
    maps = np.zeros((b, h, w), np.float32)
    for k, (i, j) in enumerate(cells):
        maps[k, i, j] = 1.0
    return maps


def test_upsample_map_blocks() -> None:
    maps = np.arange(4, dtype=np.float32).reshape(1, 2, 2)
    up = upsample_map(maps, 4)
    assert up.shape == (1, 4, 4)
    np.testing.assert_array_equal(up[0], [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])


def test_upsample_map_requires_divisible_size() -> None:
    with pytest.raises(ValueError, match="divisible"):
        upsample_map(np.zeros((1, 3, 3)), 32)


def test_pointing_game_peak_inside_and_outside() -> None:
    # 4x4 map on a 32x32 image: cell (1, 2) has centre (12, 20); cell (3, 0) has centre (28, 4).
    maps = one_hot(2, 4, 4, [(1, 2), (3, 0)])
    boxes = np.array([[8, 16, 16, 24], [8, 16, 16, 24]])
    np.testing.assert_array_equal(pointing_game(maps, boxes, 32), [True, False])


def test_pointing_game_cell_centre_at_exclusive_box_edges() -> None:
    # 4x4 map, 32x32 image: cell (1, 1) centre = (12, 12).
    maps = one_hot(4, 4, 4, [(1, 1)] * 4)
    boxes = np.array(
        [
            [12, 12, 20, 20],  # centre on ymin/xmin: inside (inclusive min)
            [4, 4, 12, 12],  # centre on ymax/xmax: outside (exclusive max)
            [4, 4, 13, 13],  # max just past the centre: inside
            [4, 4, 12.5, 11.9],  # float box, x-centre past xmax: outside
        ]
    )
    np.testing.assert_array_equal(pointing_game(maps, boxes, 32), [True, False, True, False])


def test_pointing_game_tie_takes_first_and_tolerance_grows_box() -> None:
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0] = maps[0, 3, 3] = 1.0  # tie: first in row-major order is (0, 0), centre (4, 4)
    box = np.array([[24, 24, 32, 32]])  # contains (28, 28) of the second peak only
    assert not pointing_game(maps, box, 32)[0]
    near = np.array([[6, 6, 20, 20]])  # 2 px past the centre (4, 4) on both axes
    assert not pointing_game(maps, near, 32)[0]
    assert not pointing_game(maps, near, 32, tolerance_px=1.5)[0]
    assert pointing_game(maps, near, 32, tolerance_px=2)[0]
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(maps, near, 32, tolerance_px=-1)


def test_energy_of_one_hot_map() -> None:
    # Cell (1, 2) of a 4x4 map covers image rows 8..15, cols 16..23 at 32x32.
    maps = one_hot(3, 4, 4, [(1, 2)] * 3)
    boxes = np.array(
        [
            [8, 16, 16, 24],  # exactly the cell: all mass
            [0, 0, 8, 16],  # disjoint: none
            [12, 16, 16, 20],  # a quarter of the block (4 x 4 of 8 x 8 pixels)
        ]
    )
    np.testing.assert_allclose(energy_in_box(maps, boxes, 32), [1.0, 0.0, 0.25])


def test_uniform_map_energy_equals_box_area_fraction() -> None:
    boxes = np.array([[2, 3, 10, 12], [0, 0, 32, 32], [5.2, 7.7, 30.1, 40.0], [-4, -4, 4, 4], [10, 10, 10, 20]])
    maps = np.full((5, 8, 8), 0.3)
    area = box_area_fraction(boxes, 32)
    np.testing.assert_allclose(area, [8 * 9 / 1024, 1.0, 25 * 24 / 1024, 16 / 1024, 0.0])
    np.testing.assert_allclose(energy_in_box(maps, boxes, 32), area)


def test_energy_clips_negatives_and_zero_mass_gives_zero() -> None:
    maps = np.zeros((2, 2, 2))
    maps[0] = [[1.0, -5.0], [-5.0, -5.0]]  # only the positive cell counts
    boxes = np.array([[0, 0, 4, 4], [0, 0, 4, 4]])
    np.testing.assert_allclose(energy_in_box(maps, boxes, 8), [1.0, 0.0])


def test_accepts_trailing_channel_axis() -> None:
    maps = one_hot(2, 4, 4, [(1, 2), (3, 0)])
    boxes = np.array([[8, 16, 16, 24], [8, 16, 16, 24]])
    np.testing.assert_array_equal(pointing_game(maps[..., None], boxes, 32), pointing_game(maps, boxes, 32))
    np.testing.assert_allclose(energy_in_box(maps[..., None], boxes, 32), [1.0, 0.0])
    assert upsample_map(maps[..., None], 32).shape == (2, 32, 32)


@pytest.mark.parametrize("fn", [pointing_game, energy_in_box])
def test_bad_shapes_raise(fn) -> None:
    boxes = np.zeros((2, 4))
    with pytest.raises(ValueError, match=r"\(2, 4, 4, 3\)"):
        fn(np.zeros((2, 4, 4, 3)), boxes, 32)
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        fn(np.zeros((4, 4)), boxes, 32)
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        fn(np.zeros((2, 4, 4)), np.zeros((2, 5)), 32)
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(2, 4, 4\)"):
        fn(np.zeros((2, 4, 4)), np.zeros((3, 4)), 32)
    with pytest.raises(ValueError, match=r"\(4,\)"):
        box_area_fraction(np.zeros(4), 32)


def box_maps() -> tuple[np.ndarray, np.ndarray]:
    """Maps equal to their boxes (8x8 maps on 32x32 images: 4 px cells) and the boxes."""
    boxes = np.array([[4, 8, 20, 24], [0, 0, 8, 8], [12, 4, 32, 16]])
    maps = np.zeros((3, 8, 8))
    for k, (y0, x0, y1, x1) in enumerate(boxes // 4):
        maps[k, y0:y1, x0:x1] = 1.0
    return maps, boxes


def test_a_map_equal_to_the_box_uniform_and_inverted() -> None:
    maps, boxes = box_maps()
    area = box_area_fraction(boxes, 32)
    np.testing.assert_allclose(area, [16 * 16 / 1024, 64 / 1024, 20 * 12 / 1024])
    # The box itself: every peak inside, all mass inside.
    assert pointing_game(maps, boxes, 32).all()
    np.testing.assert_allclose(energy_in_box(maps, boxes, 32), 1.0)
    # Uniform: the first cell is the peak (inside only the box touching the corner); mass = the area.
    uniform = np.full_like(maps, 0.5)
    np.testing.assert_array_equal(pointing_game(uniform, boxes, 32), [False, True, False])
    np.testing.assert_allclose(energy_in_box(uniform, boxes, 32), area)
    # Inverted: no peak inside, no mass inside.
    inverted = 1.0 - maps
    assert not pointing_game(inverted, boxes, 32).any()
    np.testing.assert_allclose(energy_in_box(inverted, boxes, 32), 0.0)
