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


# What to do about the operating system's refusals a user can meet: a full disk, a read-only or
# forbidden folder, a file where a folder is wanted (or the other way round).
_OS_FIXES = {
    "ENOSPC": "no space left on the device; free some space and run again (a training run continues "
    "from its last intact checkpoint with --resume)",
    "EDQUOT": "disk quota exceeded; free some space and run again (training resumes with --resume)",
    "EROFS": "the file system is read-only; choose a writable folder",
    "EACCES": "permission denied; choose a folder you can write to, or fix its permissions",
    "EPERM": "operation not permitted; choose a folder you can write to, or fix its permissions",
    "EISDIR": "is a folder, where a file is wanted; give a file path",
    "ENOTDIR": "part of the path is a file, where a folder is wanted; give another path",
    "ENAMETOOLONG": "the path is too long; give a shorter one",
}


def describe_os_error(error: OSError) -> str | None:
    """One line for an OSError the user can act on (naming the file and the fix), else None: the
    CLI prints it instead of a traceback. Temp files are removed where they are made (utils.io)."""
    import errno

    name = errno.errorcode.get(error.errno or 0, "")
    fix = _OS_FIXES.get(name)
    if fix is None:
        return None
    where = error.filename or error.filename2
    return f"{where}: {fix}" if where else fix
