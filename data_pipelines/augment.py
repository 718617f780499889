"""Image augmentation of training samples (`data.augment`), with torchvision.transforms.v2, imported only when on.

For small real sets: random resized crops, horizontal flips and colour jitter, each opt-in, because each can
make a label wrong. A flip turns "left of" into "right of", a jitter can turn "red" into "orange", a tight crop
can cut out the object a caption or count names. Turn on only what the labels survive. Validation and evaluation
images are never augmented.

The crop keeps the image's own size (the processor resizes it as usual afterwards), so tiling and the resize
policy see an image of the shape they expect. Randomness is torch's generator of the loading process (Lightning
seeds each worker from `seed_everything`), so a resumed run draws fresh augmentations: it continues the same
schedule on the same samples, but not bit for bit as the uninterrupted run would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from PIL import Image


@dataclass
class Augmentation:
    """What is done to each training image before the processor resizes it.

    Args:
        crop_scale: random resized crop keeping this fraction of the area or more (e.g. 0.7), at an aspect ratio
            within 3/4..4/3, resized back to the image's size; None: no crop.
        flip: horizontal flip with probability 1/2 (only for data whose labels say nothing of left and right).
        color_jitter: brightness, contrast and saturation each scaled by a random factor in [1 - x, 1 + x], hue left
            alone (only for data whose labels do not name colours); 0: none.
    """

    crop_scale: float | None = None
    flip: bool = False
    color_jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.crop_scale is not None and not 0 < self.crop_scale <= 1:
            raise ValueError(f"data.augment.crop_scale must be in (0, 1], got {self.crop_scale}")
        if not 0 <= self.color_jitter < 1:
            raise ValueError(f"data.augment.color_jitter must be in [0, 1), got {self.color_jitter}")

    @property
    def active(self) -> bool:
        return self.crop_scale is not None or self.flip or self.color_jitter > 0

    def __call__(self, image: Image.Image) -> Image.Image:
        return self.transform()(image)

    def transform(self) -> Callable[[Image.Image], Image.Image]:
        """The torchvision v2 pipeline (built once per process; PIL in, PIL out)."""
        built = self.__dict__.get("_built")
        if built is None:
            built = self.__dict__["_built"] = _build(self)
        return built

    def __getstate__(self) -> dict:  # worker processes build their own pipeline
        return {key: value for key, value in self.__dict__.items() if key != "_built"}


class _SameSizeCrop:
    """RandomResizedCrop whose output is the input's own size (torchvision's takes one fixed size)."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def __call__(self, image: Image.Image) -> Image.Image:
        from torchvision.transforms import v2

        width, height = image.size
        return v2.RandomResizedCrop((height, width), scale=(self.scale, 1.0), antialias=True)(image)


def _build(options: Augmentation) -> Callable[[Image.Image], Image.Image]:
    check_available()
    from torchvision.transforms import v2

    steps: list[Callable] = []
    if options.crop_scale is not None:
        steps.append(_SameSizeCrop(options.crop_scale))
    if options.flip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if options.color_jitter > 0:
        x = options.color_jitter
        steps.append(v2.ColorJitter(brightness=x, contrast=x, saturation=x))
    return v2.Compose(steps)


def check_available() -> None:
    """ImportError in one line now, not in a loader worker later, when torchvision is missing."""
    try:
        import torchvision  # noqa: F401
    except ImportError as error:
        raise ImportError("data.augment needs torchvision: pip install 'mmllm[augment]'") from error
