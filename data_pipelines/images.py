"""Images: decode anything a user or a shard gives into RGB, then resize and normalise into the model's tensor.

`load_image` checks the pixel count from the header before decoding (PIL's `Image.open` is lazy), applies
the EXIF orientation and converts every mode to RGB faithfully: transparency composited on white, 16-bit
greys scaled (not clipped) to 8 bits. Failures raise `ImageTooLarge` or `BadImage` (both `ImageError`), so
the loader can count and skip them and the command line can say which file is wrong.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_PIXELS = 64_000_000
ImageSource = bytes | str | Path | Image.Image
ResizePolicy = Literal["squash", "center_crop", "pad", "idefics3"]
RESIZE_POLICIES = ("squash", "center_crop", "pad", "idefics3")
IDEFICS3_MAX_SIDE = 4096  # the Idefics3 processor's absolute limit on either side
WHITE = (255, 255, 255)


class ImageError(ValueError):
    """An image that cannot be used as model input."""


class BadImage(ImageError):
    """Not an image, corrupt or truncated."""


class ImageTooLarge(ImageError):
    """More pixels than max_pixels (a decompression bomb or a mistake); found before decoding."""


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: alpha over white, palette transparency honoured, 16/32-bit greys scaled to 8 bits."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey (Pillow opens 16-bit PNG/TIFF as I;16 or I): 0..65535 -> 0..255. PIL's own convert clips.
        grey = np.asarray(image).astype(np.float64)
        grey = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "F":
        grey = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode in ("P", "L", "RGB") and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, RGBX, ...


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own max_pixels decides
            if isinstance(source, (bytes, bytearray, memoryview)):
                return Image.open(io.BytesIO(bytes(source)))
            return Image.open(Path(source))
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"image too large: {error}") from error
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError) as error:  # UnidentifiedImageError is an OSError
        raise BadImage(f"not a readable image: {error}") from error


def load_image(source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """bytes, a path or a PIL image -> a decoded RGB PIL image, upright per its EXIF orientation.

    FileNotFoundError for a missing path; ImageTooLarge when width * height > max_pixels (None: no limit),
    checked before decoding; BadImage for anything unreadable.
    """
    image = _open(source)
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}")
    try:
        image.load()  # decode now, so truncation shows up here and not later in a worker
        try:
            upright = ImageOps.exif_transpose(image)
        except Exception:  # a malformed EXIF block: the pixels are fine, keep them as stored
            upright = image
        rgb = _to_rgb(upright if upright is not None else image)
        return rgb.copy() if rgb is image and image is not source else rgb  # the opened file is closed below
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImage(f"corrupt or truncated image: {error}") from error
    finally:
        if image is not source:
            image.close()


class ImageTransform:
    """RGB PIL image -> normalised FloatTensor (3, S, S), resized by torch (bicubic, antialiased, on uint8).

    resize: 'squash' stretches to S x S; 'center_crop' scales the short side to S and crops the middle;
    'pad' scales the long side to S and pads to a square with the mean colour (0 after normalisation);
    'idefics3' is the Idefics3/SmolVLM processor without image splitting: the long side scaled to
    `longest_edge` (aspect kept, the short side rounded up to even), then squashed to S x S, both by Pillow's
    Lanczos, as transformers' processor does, so an imported checkpoint sees the pixels it was trained on.
    With `splitting` (Idefics3's image splitting) `tiles` cuts the scaled image into S x S tiles and adds the
    whole image squashed to S x S; `__call__` is always the one unsplit image.
    No flips or crops that could contradict a caption ("on the left") are ever applied.

    Decoding stays with Pillow (`load_image`: the pixel guard before decoding, EXIF orientation, every mode to
    RGB faithfully). Resizing is torch's antialiased bicubic on the uint8 image, the kernel torchvision's
    resize runs: 3.8x faster than Pillow's resize plus a numpy conversion on a 640x480 photo, within one grey
    level of it (tests/data_pipelines/test_images.py). torchvision itself is not used: importing it adds 3 s to every
    command's start (it imports its model zoo), for nothing the project needs beyond this kernel.
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], resize: ResizePolicy = "squash",
                 longest_edge: int | None = None, splitting: bool = False):
        if resize not in RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {resize!r}")
        if resize == "idefics3" and not longest_edge:
            raise ValueError("resize 'idefics3' needs longest_edge")
        if splitting and resize != "idefics3":
            raise ValueError("image splitting needs resize 'idefics3'")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {list(mean)} and {list(std)}")
        import torch  # here, not at the top: the converters decode images without paying torch's import

        self.image_size = image_size
        self.resize = resize
        self.longest_edge = longest_edge
        self.splitting = splitting
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def _resized(self, pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
        from torch.nn.functional import interpolate

        # (3, H, W) uint8 -> (3, height, width) uint8, rounded and clamped as Pillow's is
        return interpolate(pixels[None], size=(height, width), mode="bicubic", antialias=True)[0]

    def _normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.float() / 255.0 - self.mean) / self.std  # uint8 (3, H, W) -> float (3, H, W)

    def _pil_pixels(self, image: Image.Image) -> torch.Tensor:
        import torch

        return self._normalise(torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1))

    def tiles(self, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        """(N, 3, S, S) and the (rows, cols) of the tiles: rows x cols tiles in reading order, then the whole
        image; without splitting, or when the scaled image fits in one tile, (1, 3, S, S) and (0, 0)."""
        if not self.splitting:
            return self(image)[None], (0, 0)
        import torch

        if image.mode != "RGB":
            image = _to_rgb(image)
        size = self.image_size
        width, height = idefics3_long_side(image.width, image.height, self.longest_edge)
        image = image.resize((width, height), Image.Resampling.LANCZOS)
        width, height = idefics3_tile_multiple(width, height, size)
        if width <= size and height <= size:
            return self._pil_pixels(image.resize((size, size), Image.Resampling.LANCZOS))[None], (0, 0)
        image = image.resize((width, height), Image.Resampling.LANCZOS)
        rows, cols = height // size, width // size
        tiles = [image.crop((col * size, row * size, (col + 1) * size, (row + 1) * size))
                 for row in range(rows) for col in range(cols)]
        tiles.append(image.resize((size, size), Image.Resampling.LANCZOS))
        return torch.stack([self._pil_pixels(tile) for tile in tiles]), (rows, cols)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        import torch

        if image.mode != "RGB":
            image = _to_rgb(image)
        if self.resize == "idefics3":
            width, height = idefics3_long_side(image.width, image.height, self.longest_edge)
            image = image.resize((width, height), Image.Resampling.LANCZOS)
            return self._pil_pixels(image.resize((self.image_size, self.image_size), Image.Resampling.LANCZOS))
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # (3, H, W) uint8, channels last
        size = self.image_size
        height, width = pixels.shape[-2:]
        if self.resize == "squash":
            return self._normalise(self._resized(pixels, size, size))
        if self.resize == "center_crop":
            scale = size / min(width, height)
            new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
            left, top = (new_w - size) // 2, (new_h - size) // 2
            return self._normalise(self._resized(pixels, new_h, new_w)[:, top:top + size, left:left + size])
        # pad: fit inside the square, centred; the rest is exactly the mean colour, i.e. zeros once normalised
        scale = size / max(width, height)
        new_w, new_h = min(size, max(1, round(width * scale))), min(size, max(1, round(height * scale)))
        canvas = torch.zeros(3, size, size)
        left, top = (size - new_w) // 2, (size - new_h) // 2
        canvas[:, top:top + new_h, left:left + new_w] = self._normalise(self._resized(pixels, new_h, new_w))
        return canvas


def idefics3_long_side(width: int, height: int, longest_edge: int) -> tuple[int, int]:
    """(width, height) with the long side scaled to longest_edge and the short one by the same ratio, truncated
    and then rounded up to even; then both shrunk again if a side passes IDEFICS3_MAX_SIDE (Idefics3's rule)."""
    aspect = width / height
    if width >= height:
        width, height = longest_edge, int(longest_edge / aspect)
        height += height % 2
    else:
        width, height = int(longest_edge * aspect), longest_edge
        width += width % 2
    aspect = width / height  # of the scaled image, as the processor computes it again
    if width >= height and width > IDEFICS3_MAX_SIDE:
        width, height = IDEFICS3_MAX_SIDE, int(IDEFICS3_MAX_SIDE / aspect)
    elif height > width and height > IDEFICS3_MAX_SIDE:
        width, height = int(IDEFICS3_MAX_SIDE * aspect), IDEFICS3_MAX_SIDE
    return max(width, 1), max(height, 1)


def idefics3_tile_multiple(width: int, height: int, tile: int) -> tuple[int, int]:
    """(width, height) rounded up to whole tiles, the short side first scaled with the long one (Idefics3's
    resize for the vision encoder before splitting)."""
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    return width, height
