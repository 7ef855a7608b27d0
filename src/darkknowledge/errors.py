"""User-facing errors.

Anything the user can fix (a wrong path, an unknown name, a bad config value, a
checkpoint that does not fit the data) raises :class:`UserError` with a one-line
message saying *what* is wrong, *where*, and *how to fix it*. The CLI prints the
message and exits with status 2; library users can catch it.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input; the message is shown verbatim (one line)."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
