"""The one bad-sample handler of the data pipeline: skip the sample, count it by reason, log at a throttled rate.

Every stage (tar reading, parsing, image decoding, tokenizing) sends its failures here, so a run never
dies on one broken JPEG and never hides how many it skipped. `BadSampleHandler` has webdataset's handler
signature (`handler(exn) -> True`, meaning "continue"), so it also serves as `handler=` of webdataset stages.

How counts reach the trainer: a handler lives in each dataloader worker (each process has its own copy).
The batching stage attaches the handler's counts since the worker's previous batch to the batch as
`batch["skipped"]` (a dict of reason -> samples). In the main process a `BadSampleCounter` pops that
key from every batch (`counter.absorb(batch)`, before the batch reaches the model) and keeps the totals
for logging. Counts of samples skipped after a worker's last batch of an epoch are not reported (the
stream stops at the epoch's last batch, so there are none).
"""

from __future__ import annotations

import logging
import tarfile
import time
import zlib
from collections import Counter
from typing import Any

logger = logging.getLogger(__name__)

SKIPPED_KEY = "skipped"  # batch key carrying a worker's Counter of skipped samples since its previous batch

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
    """Samples skipped, by reason: what every command prints when it ends."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()  # reason -> samples skipped

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """E.g. "skipped 7 bad samples: corrupt image 4, empty caption 3"."""
        return f"skipped {self.total} bad samples" + (f": {format_counts(self.counts)}" if self.counts else "")


class BadSampleHandler(SkippedCounts):
    """Counts and logs skipped samples; `handler(exn)` returns True ("skip it and continue"), never raises.

    Logging: the first `log_first` samples of each reason are logged one by one with their message; after
    that, one summary line at most every `log_interval_s` seconds or every `log_every` skipped samples.
    """

    def __init__(self, log_first: int = 5, log_every: int = 1000, log_interval_s: float = 60.0,
                 log: logging.Logger | None = None) -> None:
        self.log_first = log_first
        self.log_every = log_every
        self.log_interval_s = log_interval_s
        self.log = log or logger
        super().__init__()  # counts: reason -> samples skipped in this process
        self._unreported: Counter = Counter()  # reason -> skipped since the last `take_unreported()`
        self._last_summary = time.monotonic()

    def __call__(self, exn: BaseException) -> bool:
        reason = reason_of(exn)
        self.counts[reason] += 1
        self._unreported[reason] += 1
        self._maybe_log(reason, exn)
        return True

    def take_unreported(self) -> Counter:
        """Counts since the previous call (what the next batch carries as `skipped`); resets them."""
        unreported, self._unreported = self._unreported, Counter()
        return unreported

    def _maybe_log(self, reason: str, exn: BaseException) -> None:
        if self.counts[reason] <= self.log_first:
            self.log.warning("skipping a bad sample (%s): %s", reason, _short(exn))
            if self.counts[reason] == self.log_first:
                self.log.warning("further '%s' samples are counted and summarised, not logged one by one", reason)
            return
        now = time.monotonic()
        if self.total % self.log_every == 0 or now - self._last_summary >= self.log_interval_s:
            self._last_summary = now
            self.log.warning("skipped %d bad samples so far: %s", self.total, format_counts(self.counts))


class BadSampleCounter(SkippedCounts):
    """Main-process totals of skipped samples, fed by the `skipped` Counter each batch carries."""

    def absorb(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Remove `batch["skipped"]` (if any), add it to the totals, and return the batch."""
        skipped = batch.pop(SKIPPED_KEY, None)
        if skipped:
            self.counts.update(skipped)
        return batch


def format_counts(counts: Counter) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in counts.most_common())


def _short(exn: BaseException, limit: int = 300) -> str:
    text = f"{type(exn).__name__}: {exn}"
    return text if len(text) <= limit else text[:limit] + "..."
