"""The zoom-pair cache's images as zstd TIFF: the PNG rows' pixels bit for bit, PNG where Pillow cannot."""

import io

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

import coz_train.data.storage as storage
from coz_train.data import build_zoom_dataset
from coz_train.data.dataset import cache_target, image_source


def data_cfg(make_config, *overrides):
    return make_config("+experiment=smoke", "data.process_size=96", "data.depth=3", "data.max_images=2",
                       *overrides).data


@pytest.fixture
def png_only(monkeypatch):
    """This Pillow as one whose libtiff has no zstd."""
    def no_zstd(image):
        raise OSError("zstd compression not supported")

    storage.tiff_zstd_works.cache_clear()
    monkeypatch.setattr(storage, "tiff_zstd_bytes", no_zstd)
    yield
    storage.tiff_zstd_works.cache_clear()


@pytest.mark.parametrize("image", ["noise", "photo", "flat", "odd size"])
def test_tiff_holds_the_pixels_bit_for_bit(image):
    rng = np.random.default_rng(0)
    pixels = {"noise": rng.integers(0, 256, (64, 48, 3), dtype=np.uint8), "photo": skdata.astronaut(),
              "flat": np.full((32, 32, 3), 7, dtype=np.uint8),
              "odd size": rng.integers(0, 256, (1, 13, 3), dtype=np.uint8)}[image]
    assert storage.tiff_zstd_works() and storage.storage_key() == storage.STORAGE
    with Image.open(io.BytesIO(storage.tiff_zstd_bytes(Image.fromarray(pixels)))) as back:
        assert back.format == "TIFF" and back.mode == "RGB" and np.array_equal(np.asarray(back), pixels)


def test_rows_decode_to_the_png_rows_pixels_under_their_own_key(make_config, monkeypatch):
    cfg = data_cfg(make_config)
    tiff_target = cache_target(cfg, 0, None, image_source(cfg))
    tiff = build_zoom_dataset(cfg, seed=0)
    assert {type(im).__name__ for row in tiff for im in row["images"]} == {"TiffImageFile"}
    storage.tiff_zstd_works.cache_clear()
    monkeypatch.setattr(storage, "tiff_zstd_works", lambda: False)
    png_target = cache_target(cfg, 0, None, image_source(cfg))
    png = build_zoom_dataset(cfg, seed=0)
    assert png_target != tiff_target and (png_target / "dataset_info.json").is_file()
    assert {type(im).__name__ for row in png for im in row["images"]} == {"PngImageFile"}
    assert len(tiff) == len(png) == 2 * 3
    for a, b in zip(tiff, png, strict=True):
        assert a["depth"] == b["depth"] and a["source"] == b["source"] and a["crop_box"] == b["crop_box"]
        for x, y in zip(a["images"], b["images"], strict=True):
            assert x.mode == y.mode == "RGB" and np.array_equal(np.asarray(x), np.asarray(y))


def test_without_zstd_the_rows_are_png_under_the_old_key(png_only, make_config):
    assert not storage.tiff_zstd_works() and storage.storage_key() is None
    image = Image.new("RGB", (4, 4))
    assert storage.stored(image) is image  # datasets.Image writes it as PNG
    ds = build_zoom_dataset(data_cfg(make_config, "data.max_images=1"), seed=0)
    assert {type(im).__name__ for row in ds for im in row["images"]} == {"PngImageFile"}
