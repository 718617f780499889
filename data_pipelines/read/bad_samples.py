"""The one bad-sample handler of the data pipeline: skip the sample, count it by reason, log at a throttled rate.

Every stage (tar reading, parsing, image decoding, tokenizing) sends its failures here, so a run never
dies on one broken JPEG and never hides how many it skipped. `BadSampleHandler` has webdataset's handler
signature (`handler(exn) -> True`, meaning "continue"), so it also serves as `handler=` of webdataset stages.

Counts are of samples, not of failures: a sample is named `shard.tar:key` (or, where no sample is at hand, by
its failure's message), and a bad sample met again on a later pass over the data is not counted again.

How counts reach the trainer: a handler lives in each dataloader worker (each process has its own copy).
The batching stage attaches the names of the samples the worker skipped for the first time since its previous
batch to the batch as `batch["skipped"]` (a dict of reason -> names). In the main process a `BadSampleCounter`
pops that key from every batch (`counter.absorb(batch)`, before the batch reaches the model) and keeps the
distinct names for logging. Samples skipped after a worker's last batch of an epoch are not reported (the
stream stops at the epoch's last batch, so there are none).
"""

from __future__ import annotations

import logging
import re
import tarfile
import time
import zlib
from collections import Counter
from typing import Any

logger = logging.getLogger(__name__)

SKIPPED_KEY = "skipped"  # batch key carrying a worker's newly skipped samples since its previous batch
ADDRESS = re.compile(r" ?<[\w.]+ object at 0x[0-9a-f]+>")  # Pillow's "cannot identify image file <_io.BytesIO ...>"

# The reasons samples are skipped for. Exceptions with a `reason` attribute (shards.BadSample) carry their
# own; others are classified by exception class name (so this module imports no stage).
CORRUPT_IMAGE = "corrupt image"
IMAGE_TOO_LARGE = "image too large"
TRUNCATED_TAR = "truncated tar member"
NO_SUPERVISED_TOKEN = "no supervised token"
INVALID_JSON = "invalid json"
NON_UTF8_TEXT = "non-utf8 text"
INVALID_CONVERSATION = "invalid conversation"

REASON_BY_EXCEPTION = {
    "BadImage": CORRUPT_IMAGE,  # images.load_image
    "BadVideo": "corrupt video",  # video.decode_frames
    "VideoTooLong": "video too long",
    "UnidentifiedImageError": CORRUPT_IMAGE,  # Pillow
    "ImageTooLarge": IMAGE_TOO_LARGE,  # images.load_image's pixel guard
    "DecompressionBombError": IMAGE_TOO_LARGE,  # Pillow's own pixel guard
    "NoSupervisedTokens": NO_SUPERVISED_TOKEN,  # chat template / processor
    "ReadError": TRUNCATED_TAR,  # tarfile: unexpected end of data
    "TruncatedHeaderError": TRUNCATED_TAR,
    "EOFError": TRUNCATED_TAR,
    "JSONDecodeError": INVALID_JSON,
    "UnicodeDecodeError": NON_UTF8_TEXT,
}


def reason_of(exn: BaseException) -> str:
    """The short category a failure is counted under: known exception classes first, then `exn.reason`."""
    for cls in type(exn).__mro__:
        if cls.__name__ in REASON_BY_EXCEPTION:
            return REASON_BY_EXCEPTION[cls.__name__]
    reason = getattr(exn, "reason", None)
    if isinstance(reason, str) and reason:
        return reason
    if isinstance(exn, (tarfile.TarError, zlib.error)):
        return TRUNCATED_TAR
    return f"other: {type(exn).__name__}"


class SkippedCounts:
    """Samples skipped, by reason, each counted once however often it is met: what every command prints when it
    ends."""

    def __init__(self) -> None:
        self.names: dict[str, set[str]] = {}  # reason -> the skipped samples' names

    @property
    def counts(self) -> Counter:
        """reason -> distinct samples skipped."""
        return Counter({reason: len(names) for reason, names in self.names.items()})

    @property
    def total(self) -> int:
        return sum(len(names) for names in self.names.values())

    def add(self, reason: str, names) -> list[str]:
        """Record `names` under `reason`; the ones not seen before."""
        seen = self.names.setdefault(reason, set())
        new = [name for name in names if name not in seen]
        seen.update(new)
        return new

    def summary(self) -> str:
        """E.g. "skipped 7 bad samples: corrupt image 4, empty caption 3"."""
        counts = self.counts
        return f"skipped {self.total} bad samples" + (f": {format_counts(counts)}" if counts else "")


class BadSampleHandler(SkippedCounts):
    """Counts and logs skipped samples; `handler(exn)` returns True ("skip it and continue"), never raises.

    `handler(exn, sample="shard.tar:key")` names the sample the failure belongs to (the stages after parsing,
    whose exceptions do not name it); without it the failure's message names it.

    Logging: the first `log_first` samples of each reason are logged one by one with their message; after
    that, one summary line at most every `log_interval_s` seconds or every `log_every` skipped samples. A sample
    met again is neither counted nor logged again.
    """

    def __init__(self, log_first: int = 5, log_every: int = 1000, log_interval_s: float = 60.0,
                 log: logging.Logger | None = None) -> None:
        self.log_first = log_first
        self.log_every = log_every
        self.log_interval_s = log_interval_s
        self.log = log or logger
        super().__init__()
        self._unreported: dict[str, list[str]] = {}  # reason -> names first skipped since `take_unreported()`
        self._last_summary = time.monotonic()

    def __call__(self, exn: BaseException, sample: str | None = None) -> bool:
        reason = reason_of(exn)
        name = sample or _short(exn)
        if self.add(reason, [name]):
            self._unreported.setdefault(reason, []).append(name)
            self._maybe_log(reason, exn, sample)
        return True

    def take_unreported(self) -> dict[str, list[str]]:
        """Names first skipped since the previous call (what the next batch carries as `skipped`); resets them."""
        unreported, self._unreported = self._unreported, {}
        return unreported

    def _maybe_log(self, reason: str, exn: BaseException, sample: str | None) -> None:
        count = len(self.names[reason])
        if count <= self.log_first:
            self.log.warning("skipping a bad sample (%s): %s%s", reason, f"{sample}: " if sample else "",
                             _short(exn))
            if count == self.log_first:
                self.log.warning("further '%s' samples are counted and summarised, not logged one by one", reason)
            return
        now = time.monotonic()
        if self.total % self.log_every == 0 or now - self._last_summary >= self.log_interval_s:
            self._last_summary = now
            self.log.warning("skipped %d bad samples so far: %s", self.total, format_counts(self.counts))


class BadSampleCounter(SkippedCounts):
    """Main-process totals of skipped samples, fed by the names each batch carries under `skipped`."""

    def absorb(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Remove `batch["skipped"]` (if any), add its names to the totals, and return the batch."""
        skipped = batch.pop(SKIPPED_KEY, None)
        for reason, names in (skipped or {}).items():
            self.add(reason, names)
        return batch

    def state_dict(self) -> dict[str, list[str]]:
        return {reason: sorted(names) for reason, names in self.names.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """From `state_dict()`; a checkpoint of before names were kept holds counts: each becomes that many names."""
        for reason, names in state.items():
            self.add(reason, names if isinstance(names, (list, tuple)) else
                     [f"(counted in an earlier run) {index}" for index in range(int(names))])


def format_counts(counts: Counter) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in counts.most_common())


def _short(exn: BaseException, limit: int = 300) -> str:
    text = f"{type(exn).__name__}: {ADDRESS.sub('', str(exn))}"
    return text if len(text) <= limit else text[:limit] + "..."
