"""Ctrl-C and a full disk: a clear message, a consistent queue, nothing half-written."""

import errno
import signal
import sqlite3
import subprocess
import sys

from conftest import SMALL


def test_ctrl_c_cancels_cleanly_and_the_next_render_resumes(home_with_models, write_spec, farm_home, hold, cli):
    path = write_spec(SMALL)
    held = hold("segment")  # Ctrl-C reaches it mid-segment
    proc = subprocess.Popen([sys.executable, "-m", "farm.cli", "render", str(path), "--json", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=held.env())
    db_path = farm_home / "queue.db"
    held.caught(db_path, proc=proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert out == "" and "Interrupted" in err and "Traceback" not in err
    db = sqlite3.connect(db_path)
    assert db.execute("SELECT state FROM jobs").fetchone() == ("canceled",)
    assert db.execute("SELECT count(*) FROM tasks WHERE state = 'running'").fetchone() == (0,)
    done = db.execute("SELECT count(*) FROM tasks WHERE state = 'done'").fetchone()[0]
    assert done >= 3  # the keyframes finished before the segment was interrupted
    assert not list((farm_home / "cache").rglob(".tmp-*"))  # no half-written cache entry
    assert not (path.parent / "out" / "small.mp4").exists()
    db.close()

    # Resuming (in this process: the interrupted one was a process of its own): what finished is
    # reused, the rest runs.
    code, out, err = cli("render", path, "--json", "-q")
    assert code == 0, err
    assert f'"cached": {done}' in out


def test_disk_full_is_reported_without_a_traceback(home_with_models, write_spec, cli, monkeypatch, farm_home):
    from PIL import Image

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    code, out, err = cli("render", write_spec(SMALL), "--json")
    assert code == 1 and out == ""
    assert "disk full" in err and "Traceback" not in err
    assert not list((farm_home / "cache").rglob("*.png"))
    db = sqlite3.connect(farm_home / "queue.db")
    assert db.execute("SELECT state FROM jobs").fetchone() == ("failed",)
