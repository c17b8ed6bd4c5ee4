"""farm/process.py: the quick exit still does what an exit must: it waits for threads that are
not daemons, runs the exit handlers, flushes what was printed, and exits with the code given."""

import subprocess
import sys

SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
from farm.process import exit_now
folder = Path(sys.argv[1])
def late():
    time.sleep(0.5)
    (folder / "thread").write_text("done")
threading.Thread(target=late).start()
atexit.register(lambda: (folder / "handler").write_text("ran"))
sys.stdout.write("unflushed, no newline")
exit_now({code!r})
"""


def run(tmp_path, code):
    return subprocess.run([sys.executable, "-c", SCRIPT.format(code=code), str(tmp_path)], capture_output=True,
                          text=True, timeout=60)


def test_exit_now_waits_for_threads_runs_handlers_and_flushes(tmp_path):
    r = run(tmp_path, 3)
    assert r.returncode == 3 and r.stdout == "unflushed, no newline"
    assert (tmp_path / "thread").read_text() == "done" and (tmp_path / "handler").read_text() == "ran"


def test_exit_now_reads_its_code_as_sys_exit_does(tmp_path):
    assert run(tmp_path, None).returncode == 0
    r = run(tmp_path, "farm: a message")
    assert r.returncode == 1 and "farm: a message" in r.stderr


def test_the_farm_command_exits_with_its_errors_code_and_message(tmp_path):
    r = subprocess.run([sys.executable, "-m", "farm.cli", "render", str(tmp_path / "missing.toml")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("farm: ") and "Traceback" not in r.stderr
