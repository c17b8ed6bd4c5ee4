"""The one error type for mistakes a user can make (bad spec, unknown model, ffmpeg failure...).

The CLI catches it once and prints its message as a short paragraph with a non-zero exit
code; a traceback is shown only with FARM_DEBUG=1.
"""


class FarmError(Exception):
    """A user-facing failure. `code` is the process exit status (2 for bad input)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.message = message
        self.code = code


class SpecError(FarmError):
    """The job spec is invalid; `problems` lists every problem found, not just the first."""

    def __init__(self, path, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        head = f"{self.path}: {len(problems)} problem{'s' if len(problems) != 1 else ''} in the job spec"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in problems), code=2)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (the terminal closed), handled as Ctrl-C is (what is finished stays;
    the rest is canceled), but reported with its own exit code, 128 + the signal's number."""

    def __init__(self, signum: int = 15):
        import signal

        super().__init__()
        self.signal = signal.Signals(signum).name
        self.code = 128 + signum
        self.why = "terminated" if signum == signal.SIGTERM else f"terminated ({self.signal})"


# What SQLite and the OS say when the disk under farm is full or failing.
_FULL = ("database or disk is full", "disk i/o error")
_NOTHING_LOST = ("Nothing was lost: finished tasks are in the cache and the job is canceled, or resumes where it "
                 "stopped. Free some space (`farm gc --max-size` trims the cache) and render again.")


def storage_error(e: BaseException, where=None) -> FarmError | None:
    """A FarmError (exit 1) for a full or failing disk, from the exception that met it: SQLite's
    "database or disk is full" / "disk I/O error", or an OSError ENOSPC, EDQUOT or EIO; None
    for anything else."""
    import errno
    import sqlite3

    if isinstance(e, sqlite3.Error) and any(m in str(e).lower() for m in _FULL):
        place = f"the queue database {where}" if where else "the queue database"
        what = "full" if "full" in str(e).lower() else "failing (I/O error)"
        return FarmError(f"The disk under {place} is {what}: SQLite said \"{e}\". {_NOTHING_LOST}", code=1)
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
        what = "failing (I/O error)" if e.errno == errno.EIO else "full"
        at = f" at {e.filename}" if e.filename else ""
        return FarmError(f"The disk{at} is {what} ({e.strerror}). {_NOTHING_LOST}", code=1)
    return None
