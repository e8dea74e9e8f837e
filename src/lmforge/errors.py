"""The one exception users see.

Every failure caused by the user's input (a file, a config key, a checkpoint) is raised as a
`LmforgeError` whose message is a single line naming what was wrong, where, and how to fix it.
The CLI prints that line without a traceback; the Python API lets it propagate.
"""

from __future__ import annotations


class LmforgeError(Exception):
    """A user-facing error: one line, naming the file/key and the fix."""

    def __init__(self, message: str):
        # Collapse to one line so logs and terminals show the whole message.
        super().__init__(" ".join(str(message).split()))
