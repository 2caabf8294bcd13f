"""Tests of the attention overlays and PNG writers (numpy + PIL only)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ib_attention_jax.evaluation.overlays import (
    GRID_PAD,
    GRID_TEXT_HEIGHT,
    colorize,
    denormalize,
    examples_grid,
    grid_size,
    overlay,
    save_attention_grid,
    save_attention_maps,
)


def batch(b: int = 3, size: int = 16, map_size: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images (b, size, size, 3) and float maps (b, map_size, map_size)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)
    maps = rng.random((b, map_size, map_size)).astype(np.float32)
    return images, maps


def test_colorize_range_endpoints_and_constant_maps() -> None:
    maps = np.stack([np.linspace(-3.0, 5.0, 16).reshape(4, 4), np.full((4, 4), 0.7)])
    rgb = colorize(maps)
    assert rgb.shape == (2, 4, 4, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0, 0], [0, 0, 255])  # minimum: blue
    np.testing.assert_array_equal(rgb[0, 3, 3], [255, 0, 0])  # maximum: red
    np.testing.assert_array_equal(rgb[1], np.broadcast_to([0, 0, 255], (4, 4, 3)))  # constant: colour of 0
    mid = colorize(np.array([[[0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0]]]))[0, 0]
    np.testing.assert_array_equal(mid, [[0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0]])
    # Per-map normalisation: scaling and shifting a map does not change its colours.
    np.testing.assert_array_equal(colorize(maps[:1] * 10 + 3), rgb[:1])
    assert colorize(maps[..., None]).shape == (2, 4, 4, 3)


def test_denormalize_inverts_normalization() -> None:
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    images, _ = batch()
    normalised = (images / 255.0 - np.array(mean)) / np.array(std)
    out = denormalize(normalised, mean, std)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, images)
    np.testing.assert_array_equal(denormalize(np.full((1, 2, 2, 3), 100.0), mean, std), 255)


def test_overlay_shape_dtype_and_alpha() -> None:
    images, maps = batch()
    out = overlay(images, maps)
    assert out.shape == images.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(overlay(images, maps[..., None], alpha=0.0), images)
    full = overlay(images, np.zeros_like(maps), alpha=1.0)  # constant map: all blue
    np.testing.assert_array_equal(full, np.broadcast_to([0, 0, 255], images.shape))
    with pytest.raises(ValueError, match="alpha"):
        overlay(images, maps, alpha=1.5)
    with pytest.raises(ValueError, match=r"\(3, 16, 16, 3\).*\(2, 4, 4\)"):
        overlay(images, maps[:2])
    with pytest.raises(ValueError, match="uint8"):
        overlay(images.astype(np.float32), maps)


def test_grid_size_layout() -> None:
    # 3 examples, 16x16 images, scale 2, 2 columns: 2 rows of cells 32 wide.
    h, w = grid_size(3, (16, 16), columns=2, scale=2, with_text=True, with_quantized=True)
    cell_h = GRID_TEXT_HEIGHT + 3 * 32 + 2 * GRID_PAD
    assert (h, w) == (2 * cell_h + 3 * GRID_PAD, 2 * 32 + 3 * GRID_PAD)
    assert grid_size(3, (16, 16), columns=8, scale=1) == (2 * 16 + 3 * GRID_PAD, 3 * 16 + 4 * GRID_PAD)


def test_save_attention_grid_writes_png_atomically(tmp_path: Path) -> None:
    images, maps = batch(b=3)
    quantized = np.round(maps * 4) / 4
    boxes = np.array([[2, 3, 10, 12], [0, 0, 16, 16], [4, 4, 8, 8]])
    path = save_attention_grid(
        tmp_path / "grid.png",
        images,
        maps[..., None],
        labels=[1, 2, 3],
        predictions=np.array([1, 0, 3]),
        quantized_maps=quantized,
        boxes=boxes,
        columns=2,
        scale=2,
    )
    assert path == tmp_path / "grid.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        width, height = image.size
        pixels = np.asarray(image)
    cell_h = GRID_TEXT_HEIGHT + 3 * 32 + 2 * GRID_PAD
    assert (height, width) == (2 * cell_h + 3 * GRID_PAD, 2 * 32 + 3 * GRID_PAD) == (234, 70)
    # First cell's quantised tile: grayscale value * 255, nearest upsampling, no normalisation.
    top = GRID_PAD + GRID_TEXT_HEIGHT + 2 * (32 + GRID_PAD)
    q_tile = pixels[top : top + 32, GRID_PAD : GRID_PAD + 32]
    expected = np.rint(np.repeat(np.repeat(quantized[0], 8, axis=0), 8, axis=1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(q_tile[..., 0], expected)
    np.testing.assert_array_equal(q_tile[..., 0], q_tile[..., 2])
    # Box outline on the first image tile: box [2, 3, 10, 12) at scale 2 -> top-left pixel (4, 6).
    image_top = GRID_PAD + GRID_TEXT_HEIGHT
    np.testing.assert_array_equal(pixels[image_top + 4, GRID_PAD + 6], [255, 0, 255])
    np.testing.assert_array_equal(pixels[image_top + 19, GRID_PAD + 23], [255, 0, 255])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]  # no temporary file left behind


def test_save_attention_grid_minimal_and_errors(tmp_path: Path) -> None:
    images, maps = batch(b=2)
    path = save_attention_grid(str(tmp_path / "sub" / "g.png"), images, maps, scale=1)
    with Image.open(path) as image:
        assert image.size[::-1] == grid_size(2, (16, 16), scale=1) == (2 * 16 + 3 * GRID_PAD, 2 * 16 + 3 * GRID_PAD)
    with pytest.raises(ValueError, match="boxes"):
        save_attention_grid(tmp_path / "x.png", images, maps, boxes=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="labels"):
        save_attention_grid(tmp_path / "x.png", images, maps, labels=[1])
    assert not (tmp_path / "x.png").exists()


def test_save_attention_maps_file_names_and_contents(tmp_path: Path) -> None:
    images, maps = batch(b=2)
    quantized = np.clip(np.round(maps * 2) / 2, 0, 1)
    paths = save_attention_maps(tmp_path, images, maps, quantized_maps=quantized, prefix="val")
    names = [p.name for p in paths]
    assert names == [
        "val_0000.png",
        "val_0000_att00.png",
        "val_0000_att00_q.png",
        "val_0001.png",
        "val_0001_att00.png",
        "val_0001_att00_q.png",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    with Image.open(tmp_path / "val_0001.png") as image:
        np.testing.assert_array_equal(np.asarray(image), images[1])
    with Image.open(tmp_path / "val_0000_att00.png") as image:
        att = np.asarray(image)
    assert att.shape == (16, 16) and att.dtype == np.uint8
    assert att.min() == 0 and att.max() == 255  # min-max scaled
    with Image.open(tmp_path / "val_0000_att00_q.png") as image:
        q = np.asarray(image)
    np.testing.assert_array_equal(q, np.rint(np.repeat(np.repeat(quantized[0], 4, 0), 4, 1) * 255))
    default = save_attention_maps(tmp_path / "plain", images[:1], maps[:1])
    assert [p.name for p in default] == ["test_0000.png", "test_0000_att00.png"]


def test_examples_grid_is_the_saved_sheet_as_an_array(tmp_path: Path) -> None:
    images, maps = batch(b=3)
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    normalised = (images / 255.0 - 0.5) / 0.5
    examples = {"image": normalised, "attention": maps, "label": np.array([1, 2, 3]), "pred_mc": np.array([1, 0, 3]),
                "box": np.array([[0, 0, 8, 8]] * 3)}
    grid = examples_grid(examples, mean, std)
    assert grid.dtype == np.uint8 and grid.shape == (*grid_size(3, (16, 16), with_text=True), 3)
    path = save_attention_grid(tmp_path / "g.png", denormalize(normalised, mean, std), maps, labels=[1, 2, 3],
                               predictions=[1, 0, 3], boxes=examples["box"])
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), grid)
    assert examples_grid({"image": normalised, "label": np.array([1, 2, 3])}, mean, std) is None
