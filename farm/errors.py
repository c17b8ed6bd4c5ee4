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
    """SIGTERM, handled as Ctrl-C is (what is finished stays; the rest is canceled), but
    reported with its own exit code, 143 (128 + 15)."""
