"""Images: every mode becomes the right RGB pixels, size guard before decoding, errors, resize policies."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipelines.images import BadImage, ImageError, ImageTooLarge, ImageTransform, load_image


def _encode(image: Image.Image, format: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


def _pixels(image: Image.Image) -> list[tuple[int, int, int]]:
    assert image.mode == "RGB"
    return [tuple(int(v) for v in pixel) for pixel in np.asarray(image).reshape(-1, 3)]


def _close(actual, expected, tolerance=1):
    return all(abs(a - e) <= tolerance for pa, pe in zip(actual, expected) for a, e in zip(pa, pe))


def test_grey_l_becomes_equal_rgb_channels():
    assert _pixels(load_image(_encode(Image.new("L", (2, 2), 100)))) == [(100, 100, 100)] * 4


def test_one_bit_image_becomes_black_and_white():
    image = Image.new("1", (2, 1))
    image.putpixel((1, 0), 1)
    assert _pixels(load_image(_encode(image))) == [(0, 0, 0), (255, 255, 255)]


def test_la_transparent_pixels_become_white():
    image = Image.new("LA", (2, 1))
    image.putdata([(50, 0), (50, 255)])
    assert _pixels(load_image(_encode(image))) == [(255, 255, 255), (50, 50, 50)]


def test_rgba_is_composited_on_white():
    image = Image.new("RGBA", (3, 1))
    image.putdata([(255, 0, 0, 0), (255, 0, 0, 255), (0, 0, 255, 128)])
    half = round(255 * (1 - 128 / 255))  # white behind a half-opaque blue
    assert _close(_pixels(load_image(_encode(image))), [(255, 255, 255), (255, 0, 0), (half, half, 255)])


def test_palette_image_uses_its_palette_and_transparent_index_becomes_white():
    image = Image.new("P", (3, 1))
    image.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0] + [0] * (768 - 9))
    image.putdata([0, 1, 2])
    assert _pixels(load_image(_encode(image))) == [(10, 20, 30), (200, 100, 50), (0, 255, 0)]
    loaded = load_image(_encode(image, transparency=1))
    assert _pixels(loaded) == [(10, 20, 30), (255, 255, 255), (0, 255, 0)]


def test_cmyk_becomes_rgb():
    image = Image.new("CMYK", (3, 1))
    image.putdata([(0, 0, 0, 0), (0, 255, 255, 0), (0, 0, 0, 255)])
    assert _pixels(load_image(_encode(image, format="TIFF"))) == [(255, 255, 255), (255, 0, 0), (0, 0, 0)]


def test_sixteen_bit_grey_is_scaled_not_clipped():
    grey16 = np.array([[0, 257 * 128, 65535, 1000]], dtype=np.uint16)
    expected = [(v, v, v) for v in (0, 128, 255, round(1000 / 257))]
    from_png = load_image(_encode(Image.fromarray(grey16)))  # PNG keeps 16 bits: opened as I;16
    assert _pixels(from_png) == expected
    as_int32 = Image.fromarray(grey16.astype(np.int32))  # mode "I", as older Pillow opens 16-bit PNGs
    assert as_int32.mode == "I"
    assert _pixels(load_image(as_int32)) == expected


def test_exif_orientation_is_applied():
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))  # left half red as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    upright = load_image(_encode(stored, format="JPEG", quality=95, exif=exif.tobytes()))
    assert upright.size == (20, 40)
    top, bottom = np.asarray(upright)[5, 10], np.asarray(upright)[35, 10]
    assert top[0] > 200 and top[2] < 50  # the stored left (red) side is now on top
    assert bottom[2] > 200 and bottom[0] < 50


def test_pil_image_input_is_converted_and_left_usable():
    image = Image.new("RGBA", (2, 2), (0, 255, 0, 255))
    assert _pixels(load_image(image)) == [(0, 255, 0)] * 4
    assert image.getpixel((0, 0)) == (0, 255, 0, 255)


def test_path_input_is_read(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (3, 2), (255, 0, 0)).save(path)
    assert load_image(path).size == (3, 2)
    assert _pixels(load_image(str(path))) == [(255, 0, 0)] * 6


def test_size_guard_raises_from_the_header_without_decoding():
    data = _encode(Image.new("RGB", (100, 100), (1, 2, 3)))
    header_only = data[: data.index(b"IDAT") + 8]  # pixel data cut off: decoding would fail
    with pytest.raises(ImageTooLarge, match="100x100"):
        load_image(header_only, max_pixels=5000)
    with pytest.raises(BadImage):
        load_image(header_only, max_pixels=None)


def test_header_claiming_a_gigantic_image_is_too_large():
    data = bytearray(_encode(Image.new("L", (1, 1))))
    data[16:24] = struct.pack(">II", 30000, 30000)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    with pytest.raises(ImageTooLarge):
        load_image(bytes(data))


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n garbage"])
def test_garbage_bytes_raise_bad_image(data):
    with pytest.raises(BadImage):
        load_image(data)


def test_truncated_jpeg_raises_bad_image():
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(noise), format="JPEG")
    with pytest.raises(BadImage):
        load_image(data[: len(data) // 2])
    assert issubclass(BadImage, ImageError) and issubclass(ImageTooLarge, ImageError)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")


MEAN, STD = (0.2, 0.4, 0.6), (0.5, 0.25, 0.5)


def _normalised(rgb: tuple[int, int, int]) -> torch.Tensor:
    return (torch.tensor(rgb, dtype=torch.float32) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)


@pytest.mark.parametrize("resize", ["squash", "center_crop", "pad"])
@pytest.mark.parametrize("size", [(50, 20), (20, 50), (16, 16), (30, 90), (90, 30)])
def test_every_resize_policy_gives_a_square_tensor(resize, size):
    tensor = ImageTransform(16, MEAN, STD, resize)(Image.new("RGB", size, (10, 200, 30)))
    assert tensor.shape == (3, 16, 16) and tensor.dtype == torch.float32
    assert torch.allclose(tensor[:, 8, 8], _normalised((10, 200, 30)), atol=1e-5)


def test_squash_keeps_left_and_right_in_place():
    image = Image.new("RGB", (64, 32), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 32, 32))
    tensor = ImageTransform(16, MEAN, STD, "squash")(image)
    assert torch.allclose(tensor[:, :, 0], _normalised((255, 0, 0))[:, None].expand(3, 16), atol=1e-5)
    assert torch.allclose(tensor[:, :, -1], _normalised((0, 0, 255))[:, None].expand(3, 16), atol=1e-5)


def test_center_crop_keeps_the_middle():
    image = Image.new("RGB", (48, 16), (255, 0, 0))
    image.paste((0, 255, 0), (16, 0, 32, 16))
    image.paste((0, 0, 255), (32, 0, 48, 16))
    tensor = ImageTransform(16, MEAN, STD, "center_crop")(image)
    assert torch.allclose(tensor, _normalised((0, 255, 0))[:, None, None].expand(3, 16, 16), atol=1e-5)


def test_pad_fills_with_the_mean_colour_around_the_centred_image():
    wide = ImageTransform(16, MEAN, STD, "pad")(Image.new("RGB", (40, 20), (255, 255, 255)))
    white = _normalised((255, 255, 255))[:, None, None]
    assert torch.equal(wide[:, :4], torch.zeros(3, 4, 16)) and torch.equal(wide[:, 12:], torch.zeros(3, 4, 16))
    assert torch.allclose(wide[:, 4:12], white.expand(3, 8, 16), atol=1e-5)
    tall = ImageTransform(16, MEAN, STD, "pad")(Image.new("RGB", (20, 40), (255, 255, 255)))
    assert torch.equal(tall[:, :, :4], torch.zeros(3, 16, 4)) and torch.equal(tall[:, :, 12:], torch.zeros(3, 16, 4))
    assert torch.allclose(tall[:, :, 4:12], white.expand(3, 16, 8), atol=1e-5)


def test_transform_is_deterministic():
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    transform = ImageTransform(16, MEAN, STD, "squash")
    assert torch.equal(transform(noise), transform(noise))


def test_unknown_resize_policy_is_rejected():
    with pytest.raises(ValueError, match="resize must be one of"):
        ImageTransform(16, MEAN, STD, "random_crop")


@pytest.mark.parametrize("resize", ["squash", "center_crop", "pad"])
def test_transform_agrees_with_pillows_bicubic_resize_within_one_grey_level(resize):
    import numpy as np

    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((60, 90, 3)) * 255).astype(np.uint8))
    size = 32
    if resize == "squash":
        reference, box = image.resize((size, size), Image.Resampling.BICUBIC), (0, 0, size, size)
    elif resize == "center_crop":  # short side to 32: 48 x 32, the middle 32 columns
        reference, box = image.resize((48, 32), Image.Resampling.BICUBIC).crop((8, 0, 40, 32)), (0, 0, size, size)
    else:  # long side to 32: 32 x 21, centred with 5 rows of padding above
        reference, box = image.resize((32, 21), Image.Resampling.BICUBIC), (0, 5, 32, 26)
    expected = torch.from_numpy(np.asarray(reference, dtype=np.float32)).permute(2, 0, 1) / 255 * 2 - 1
    got = ImageTransform(size, (0.5,) * 3, (0.5,) * 3, resize)(image)
    left, top, right, bottom = box
    assert got.shape == (3, size, size)
    assert (got[:, top:bottom, left:right] - expected).abs().max() <= 2.5 / 255 * 2
    if resize == "pad":
        assert got[:, :top].abs().max() == 0 and got[:, bottom:].abs().max() == 0
