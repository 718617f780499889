"""Errors a user can cause. The command line turns them into one line on stderr and exit status 2."""


class UsageError(Exception):
    """A mistake of the user's (missing file, unreadable image, wrong model folder, bad option)."""
