import json
import os
import shutil
import signal
import sqlite3
import textwrap
import time
from pathlib import Path

import pytest

# Kernel tests run under Triton's interpreter on the CPU, so they need no GPU. `triton.jit`
# reads the variable when a kernel is defined, hence here, before anything imports `kernels`.
# (Here and not in tests/kernels/conftest.py: a second module named `conftest` would shadow
# this one for the tests that `from conftest import SMALL`.)
os.environ.setdefault("TRITON_INTERPRET", "1")

# A suite started in the background by a non-interactive shell (`pytest &` in a script) inherits
# SIGINT ignored, and so would every farm process it starts: Python keeps an ignored SIGINT, and
# the Ctrl-C tests would see nothing. A handler here is reset to the default in each child at
# exec, so the children get Python's usual KeyboardInterrupt, as from a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parent.parent
# Torch threads for the renders a test makes in this process: the cores, shared among the
# pytest-xdist workers when there are several. A test that compares pixels with a render made
# elsewhere (a worker process, a Ray actor) gives that render the same count: on the CPU, torch
# sums in another order with another thread count, and the pixels differ.
THREADS = max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
os.environ["FARM_TORCH_THREADS"] = str(THREADS)  # `farm work --cpu` workers and Ray's CPU actors take as many
EXAMPLE = ROOT / "jobs" / "lighthouse.toml"  # the twins' example (noise, but every code path, fast)


def crash_clip_once(monkeypatch) -> list:
    """From now on, the first call of `pipeline.clip` for a chain's second clip (clip 1) raises,
    as a GPU falling over would; later calls run. Returns a list that holds "crashed" once it has."""
    from farm.models import pipeline

    real, made = pipeline.clip, []

    def flaky(pipe, params, first, last, frames, seed, on_step=None):
        if params.get("clip") == 1 and not made:
            made.append("crashed")
            raise RuntimeError("the GPU fell over")
        return real(pipe, params, first, last, frames, seed, on_step)

    monkeypatch.setattr(pipeline, "clip", flaky)
    return made


class Hold:
    """farm/models/pipeline.py's test hook (`pipeline.hold`) for one test: a farm process given `env()`
    (or this process, after `set()`) stops each task whose name starts with `tasks` after its
    first denoising step, until `release()`. A task caught this way is in flight for as long as
    the test needs, at 2 steps instead of hundreds."""

    def __init__(self, folder: Path, tasks: str = ""):
        self.folder, self.tasks = folder, tasks

    def vars(self) -> dict:
        return {"FARM_TEST_HOLD": str(self.folder), "FARM_TEST_HOLD_TASKS": self.tasks}

    def env(self) -> dict:
        """This process's environment (as it is now) with the hook set: for a subprocess."""
        return {**os.environ, **self.vars()}

    def set(self, monkeypatch):
        for k, v in self.vars().items():
            monkeypatch.setenv(k, v)

    def arm(self):
        """From now on, tasks hold (the folder exists); `hold()` arms at once unless told not to."""
        self.folder.mkdir(parents=True, exist_ok=True)

    def held(self) -> list[dict]:
        """The markers written so far ({task, pid} each), oldest name first."""
        return [json.loads(p.read_text()) for p in sorted(self.folder.glob("*.held"))]

    def wait(self, timeout: float = 120, proc=None) -> dict:
        """The first held task's marker, once there is one; fails if `proc` exits first."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = self.held()
            if found:
                return found[0]
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"process exited before a task was held: {proc.communicate()}")
            time.sleep(0.05)
        raise AssertionError(f"no task {self.tasks or ''}* was held within {timeout} s")

    def caught(self, db: Path, proc=None, timeout: float = 120) -> str:
        """The name of a task this hold applies to, once one is running in the queue database
        `db`: claimed, it cannot finish before its first step, where it holds, so it is caught
        in flight from here, seconds sooner than its marker (written once its model is loaded
        and a step is done). Not for a task the cache may answer: that one never holds."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"process exited before a task was caught: {proc.communicate()}")
            rows = []
            if Path(db).exists():
                try:
                    conn = sqlite3.connect(db)
                    try:
                        rows = conn.execute("SELECT name FROM tasks WHERE state = 'running' ORDER BY id").fetchall()
                    finally:
                        conn.close()
                except sqlite3.OperationalError:  # not made yet, or locked a moment
                    pass
            names = [name for (name,) in rows if name.startswith(self.tasks)]
            if names:
                return names[0]
            time.sleep(0.05)
        raise AssertionError(f"no task {self.tasks}* was running within {timeout} s")

    def release(self):
        """Let every held task go on; nothing holds after this."""
        self.arm()
        (self.folder / "release").touch()


@pytest.fixture
def hold(tmp_path):
    """`hold(tasks="segment", armed=True)`: a `Hold` in a folder of its own; every hold is
    released when the test ends, pass or fail, so that nothing it held waits on."""
    made = []

    def make(tasks: str = "", armed: bool = True) -> Hold:
        made.append(Hold(tmp_path / f"hold-{len(made)}", tasks))
        if armed:
            made[-1].arm()
        return made[-1]

    yield make
    for h in made:
        h.release()


@pytest.fixture(autouse=True)
def farm_home(tmp_path, monkeypatch):
    """Every test gets its own queue, cache and model folder."""
    home = tmp_path / "farm-home"
    monkeypatch.setenv("FARM_HOME", str(home))
    monkeypatch.delenv("FARM_FFMPEG", raising=False)
    for hook in ("FARM_TEST_HOLD", "FARM_TEST_HOLD_TASKS"):  # set by the `hold` fixture alone
        monkeypatch.delenv(hook, raising=False)
    return home


@pytest.fixture(autouse=True)
def _seed():
    import random

    import torch

    random.seed(0)
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)


@pytest.fixture(scope="session")
def built_models(tmp_path_factory):
    """The tiny models, built once per session and copied into each test's FARM_HOME."""
    from farm import models

    home = tmp_path_factory.mktemp("models-home")
    old = os.environ.get("FARM_HOME")
    os.environ["FARM_HOME"] = str(home)
    try:
        for name in ("tiny", "tiny-video"):
            models.local_path(models.resolve(name))
    finally:
        if old is None:
            os.environ.pop("FARM_HOME")
        else:
            os.environ["FARM_HOME"] = old
    return home / "models"


@pytest.fixture
def home_with_models(farm_home, built_models):
    shutil.copytree(built_models, farm_home / "models")
    return farm_home


@pytest.fixture
def write_spec(tmp_path):
    """Write a spec file (dedented) into a job folder that also holds refs/boat.png."""
    folder = tmp_path / "job"
    (folder / "refs").mkdir(parents=True)
    shutil.copy(ROOT / "jobs" / "refs" / "boat.png", folder / "refs" / "boat.png")

    def write(text, name="shot.toml"):
        path = folder / name
        path.write_text(textwrap.dedent(text))
        return path

    write.folder = folder
    return write


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process through its real entry point; return (code, stdout, stderr)."""
    from farm.cli import main

    def run(*args):
        capsys.readouterr()
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


SMALL = """
[shot]
name = "small"
fps = 8
size = [64, 64]
seed = 3
out = "out/small.mp4"

[keyframes]
model = "tiny"
steps = 2

[motion]
model = "tiny-video"
steps = 2

[[frames]]
prompt = "a red boat"
seconds = 1.0

[[frames]]
prompt = "a blue boat"
seconds = 0.5

[[frames]]
image = "refs/boat.png"
seconds = 0.75
"""
