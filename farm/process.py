"""A farm process's quick exit, once its work is done and written.

With torch and diffusers imported, the interpreter's own teardown (clearing hundreds of
thousands of module objects, then the C++ libraries' destructors) takes about 1.5 s of CPU that
nothing needs: `python -c "import torch, diffusers; from diffusers import WanPipeline"` spends
1.55 s after its last line, 0.07 s with `os._exit` (docs/benchmarks.md). Every `farm render` that
drew, and every `farm work` worker, paid it. `exit_now` runs what an exit must (the exit
handlers: multiprocessing's, Ray's, logging's, temporary folders'), flushes the streams, and
leaves without the teardown. farm writes every file through a temporary name and a rename and
commits every SQLite transaction before it returns, so nothing is left half-done by skipping it.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading


def exit_now(code: object = 0):
    """Exit with `code` (as `sys.exit` reads it) without the interpreter's teardown. What the
    interpreter's exit does first is done as it does it: wait for the threads that are not
    daemons (an idle thread pool is shut down), then run the exit handlers."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): printed, status 1
        print(code, file=sys.stderr)
        status = 1
    if threading.current_thread() is not threading.main_thread():
        sys.exit(status)
    threading._shutdown()  # type: ignore[attr-defined]  (Py_FinalizeEx's first step)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said
            pass
    os._exit(status)
