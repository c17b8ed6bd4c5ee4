"""Library silencing: farm prints its own progress and errors, so the libraries under it
(diffusers, transformers, Python warnings) stay quiet.

Torch-free: `quiet_libraries()` silences diffusers and transformers only once they are
imported, so a command that never runs a model never imports them. `models.load_pipeline`
calls `silence_loaded()` after importing diffusers.
"""

from __future__ import annotations

import os
import sys
import warnings

_wanted = False


# The libraries under farm whose Python warnings (deprecations, "this CPU lacks ...") are theirs
# to fix, not a user's: silenced by the module that issues them. Everything else, farm's own
# modules and a user's code calling farm, still warns.
LIBRARIES = ("diffusers", "transformers", "huggingface_hub", "accelerate", "safetensors", "tokenizers", "torch",
             "torchao", "triton", "ray", "numpy", "PIL", "imageio_ffmpeg", "ffmpeg", "tqdm", "sqlite_utils")
# Loggers of the same libraries that speak at import: torchao says its CUDA-only extensions do not
# load on a CPU machine, and torch that torchao's enums need no registering. Real errors still show.
LOGGERS = ("torchao", "torch.utils._pytree")


def quiet_libraries():
    """Silence the libraries' warnings now, and diffusers' and transformers' logging and
    loading bars whenever they are (or have been) imported in this process. Called by the
    command line, the local workers and the Ray actors; `import farm` alone changes nothing."""
    import logging

    global _wanted
    _wanted = True
    for name in LIBRARIES:
        warnings.filterwarnings("ignore", module=rf"{name}(\.|$)")
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Read when the libraries set up their loggers, so messages logged while importing them
    # are silenced too; `silence_loaded` then sets the same level whatever these say.
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    silence_loaded()


def silence_loaded():
    """If `quiet_libraries()` was called, silence whichever of diffusers and transformers
    this process has imported so far."""
    if not _wanted:
        return
    if "diffusers" in sys.modules:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()  # "Loading pipeline components" bars; step bars are ours to switch
    if "transformers" in sys.modules:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
