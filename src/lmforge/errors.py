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


class TrainingStopped(LmforgeError):
    """Training was asked to stop (SIGTERM, as schedulers send, or a first Ctrl-C) and stopped
    after the step it was in, with a checkpoint of that step saved; `exit_code` is the shell's."""

    def __init__(self, signum: int, step: int, run_dir: object) -> None:
        import signal

        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} at step {step}, with a checkpoint saved; continue with --resume ({run_dir})"
        )
        self.exit_code = 128 + signum
