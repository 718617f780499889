"""Faces blurred out of images before they are written into shards (`--blur-faces`).

Detection is OpenCV's Haar cascades, which ship inside the opencv-python-headless wheel (frontal faces and
profiles, both directions): nothing is downloaded at run time. Each detected face, grown by a quarter on every side
to take in hair and chin, is replaced by a Gaussian blur strong enough (radius a fifth of the face) that the face
cannot be recognised, while the rest of the image is untouched. What it cannot see: faces turned away or much
smaller than `min_face` pixels, faces in drawings, and anything else that identifies a person (a name tag, a
licence plate).
"""

from __future__ import annotations

import os

from PIL import Image, ImageFilter

CASCADES = ("haarcascade_frontalface_default.xml", "haarcascade_profileface.xml")


class FaceBlurrer:
    """`blur(image) -> (image, faces found)`; the image is returned unchanged (the same object) without faces."""

    def __init__(self, min_face: int = 24) -> None:
        try:
            import cv2
            import numpy
        except ImportError as error:
            raise ImportError("--blur-faces needs OpenCV: pip install 'mmllm[privacy]'") from error
        folder = getattr(getattr(cv2, "data", None), "haarcascades", "")
        paths = [os.path.join(folder, name) for name in CASCADES]
        if not all(os.path.isfile(path) for path in paths):
            raise ImportError(f"--blur-faces needs OpenCV's bundled Haar cascades, which OpenCV {cv2.__version__} "
                              f"does not ship: pip install 'opencv-python-headless<5'")
        self._cv2, self._numpy = cv2, numpy
        self._cascades = [cv2.CascadeClassifier(path) for path in paths]
        self.min_face = min_face

    def faces(self, image: Image.Image) -> list[tuple[int, int, int, int]]:
        """(left, top, right, bottom) of each face found, profiles both ways, overlapping finds merged."""
        cv2 = self._cv2
        # no histogram equalisation: on flat graphics (logos, diagrams) it makes the frontal cascade see faces
        gray = cv2.cvtColor(self._numpy.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)
        width = gray.shape[1]
        boxes = []
        for index, cascade in enumerate(self._cascades):
            views = [(gray, False)] + ([(gray[:, ::-1].copy(), True)] if index else [])  # profiles face one way
            for view, mirrored in views:
                found = cascade.detectMultiScale(view, scaleFactor=1.1, minNeighbors=5,
                                                 minSize=(self.min_face, self.min_face))
                for x, y, w, h in found:
                    x = width - x - w if mirrored else x
                    boxes.append((int(x), int(y), int(x + w), int(y + h)))
        return _merged(boxes)

    def blur(self, image: Image.Image) -> tuple[Image.Image, int]:
        boxes = self.faces(image)
        if not boxes:
            return image, 0
        out = image.convert("RGB").copy()
        for left, top, right, bottom in boxes:
            grow_x, grow_y = (right - left) // 4, (bottom - top) // 4
            box = (max(0, left - grow_x), max(0, top - grow_y), min(out.width, right + grow_x),
                   min(out.height, bottom + grow_y))
            region = out.crop(box)
            out.paste(region.filter(ImageFilter.GaussianBlur(radius=max(2, (right - left) // 5))), box)
        return out, len(boxes)

    def blur_encoded(self, data: bytes | Image.Image) -> tuple[bytes | Image.Image, int]:
        """For the shard writer: compressed bytes (or a PIL image) in; the same bytes back when there is no face,
        else the blurred PIL image (the writer encodes it). An unreadable image raises the loader's ImageError, which
        the converters skip and count."""
        from data_pipelines.images import load_image

        image = data if isinstance(data, Image.Image) else load_image(bytes(data))
        blurred, count = self.blur(image)
        return (data, 0) if count == 0 else (blurred, count)


def _merged(boxes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Boxes that overlap (the frontal and the profile cascade on one face) joined into their union."""
    merged: list[tuple[int, int, int, int]] = []
    for box in sorted(boxes):
        for index, other in enumerate(merged):
            if box[0] < other[2] and other[0] < box[2] and box[1] < other[3] and other[1] < box[3]:
                merged[index] = (min(box[0], other[0]), min(box[1], other[1]), max(box[2], other[2]),
                                 max(box[3], other[3]))
                break
        else:
            merged.append(box)
    return merged
