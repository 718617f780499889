"""Errors a user can cause (the command line turns them into one line on stderr and exit status 2), and the
file-system failures a run can meet (one line and exit status 1)."""

from __future__ import annotations

import os
import re


class UsageError(Exception):
    """A mistake of the user's (missing file, unreadable image, wrong model folder, bad option)."""


def write_failure(error: BaseException, path: str, what: str) -> OSError | None:
    """The OSError behind a failed write (a full disk, a quota), naming `path`, wherever the writing library put
    it: the error itself, the error it happened during (torch's zip writer raises RuntimeError while handling
    the OSError), or "(os error N)" in the message of a Rust library (safetensors). None for other failures."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno:
            return OSError(cause.errno, f"cannot write {what}: {cause.strerror}", path)
        cause = cause.__cause__ or cause.__context__
    found = re.search(r"\(os error (\d+)\)", str(error))
    if found:
        number = int(found.group(1))
        return OSError(number, f"cannot write {what}: {os.strerror(number)}", path)
    return None
