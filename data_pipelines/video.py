"""Video clips as model input: frames sampled uniformly over a clip, each with its timestamp, and the chat text that
places them.

A clip (mp4, webm, gif: any container PyAV's FFmpeg reads) becomes `frames` images, one from the middle of each of
`frames` equal spans of the clip (with `fps`, one every 1/fps seconds instead, at most `frames`). Each is the frame
showing at that instant. The chat's `<video>` marker becomes SmolVLM2's layout: a line saying how many frames of how
long a clip follow, then one line per frame with its timestamp and an `<image>`, so a video sample is a multi-image
chat from there on. A clip that cannot be decoded raises BadVideo (counted as "corrupt video", never fatal); one
longer than `max_seconds` raises VideoTooLong.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional

from PIL import Image

VIDEO_EXTENSIONS: tuple[str, ...] = ("mp4", "webm", "gif")
VIDEO_MARKER = "<video>"


class BadVideo(ValueError):
    """Not a video, corrupt, or without a video stream."""


class VideoTooLong(ValueError):
    """A clip longer than the configured limit."""


@dataclass(frozen=True)
class VideoOptions:
    """data.video: {frames: 8, fps: null, max_seconds: null}."""

    frames: int = 8
    fps: Optional[float] = None
    max_seconds: Optional[float] = None

    def __post_init__(self) -> None:
        if not isinstance(self.frames, int) or self.frames < 1:
            raise ValueError(f"data.video.frames must be a positive integer, got {self.frames!r}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"data.video.fps must be positive, got {self.fps!r}")


def sample_times(duration: float, options: VideoOptions) -> list[float]:
    """The instants to show: the middles of `frames` equal spans, or every 1/fps s from 1/(2 fps) (at most frames)."""
    if options.fps is None:
        return [duration * (i + 0.5) / options.frames for i in range(options.frames)]
    count = max(1, min(options.frames, int(duration * options.fps)))
    return [(i + 0.5) / options.fps for i in range(count)]


def decode_frames(clip: bytes, options: VideoOptions = VideoOptions()) -> tuple[list[tuple[float, Image.Image]], float]:
    """([(timestamp in s, RGB frame)], the clip's duration in s): the frame showing at each of sample_times."""
    import av

    try:
        with av.open(io.BytesIO(clip)) as container:
            if not container.streams.video:
                raise BadVideo("no video stream")
            stream = container.streams.video[0]
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration:
                duration = container.duration / 1_000_000
            frames = []
            if duration is None:  # no length in the header: read the frames' times first
                frames = [(float(frame.time), frame.to_image()) for frame in container.decode(stream)]
                if not frames:
                    raise BadVideo("no frames")
                duration = frames[-1][0] + (frames[1][0] - frames[0][0] if len(frames) > 1 else 0.0)
            if options.max_seconds is not None and duration > options.max_seconds:
                raise VideoTooLong(f"the clip is {duration:.1f} s, above the limit of {options.max_seconds:g} s")
            targets = sample_times(duration, options)
            chosen: list[tuple[float, Image.Image]] = []
            previous = None
            for time, frame in (frames or ((float(f.time), f) for f in container.decode(stream))):
                while len(chosen) < len(targets) and previous is not None and time > targets[len(chosen)]:
                    chosen.append(_rgb(previous))  # the frame on screen at that instant
                previous = (time, frame)
                if len(chosen) == len(targets):
                    break
            if previous is None:
                raise BadVideo("no frames")
            while len(chosen) < len(targets):
                chosen.append(_rgb(previous))
            return chosen, duration
    except (av.error.FFmpegError, OSError, IndexError) as error:
        raise BadVideo(f"corrupt or unreadable video: {error}") from error


def _rgb(timed) -> tuple[float, Image.Image]:
    time, frame = timed
    image = frame if isinstance(frame, Image.Image) else frame.to_image()
    return time, image.convert("RGB")


def frames_text(times: list[float], duration: float) -> str:
    """What replaces `<video>` in the chat: the frames' count and the clip's length, then a line per frame."""
    lines = [f"{len(times)} frames from a {duration:.1f} s clip:"]
    lines += [f"Frame at {time:.1f} s: <image>" for time in times]
    return "\n".join(lines)
