"""Lose nothing, hang never: what farm will and will not overwrite, renders that never wait
on nobody, time limits, signals and exit codes, a cache that never reuses a broken output,
workers that lost their task, and hostile input (issue 11)."""

import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

from conftest import SMALL

ANIMATIC = """
[shot]
name = "anim"
fps = 8
size = [64, 64]
out = "{out}"
codec = "{codec}"

[keyframes]
model = "tiny"
steps = 2

[motion]
model = "hold"

[[frames]]
prompt = "a red boat"
seconds = 0.5

[[frames]]
image = "refs/boat.png"
seconds = 0.5
"""


def animatic(out="renders/anim.mp4", codec="h264"):
    return ANIMATIC.format(out=out, codec=codec)


def farm(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "farm.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=os.environ.copy(), **kw)


def db(home):
    return sqlite3.connect(home / "queue.db")


# --- data loss ------------------------------------------------------------------------------


def test_png_output_never_replaces_a_folder_farm_did_not_write(home_with_models, write_spec, cli):
    path = write_spec(animatic("renders", "png"))
    users = path.parent / "renders"
    users.mkdir()
    (users / "old-final-cut.mp4").write_bytes(b"precious")
    (users / "notes.txt").write_text("notes")
    code, out, err = cli("render", path, "--force")  # not even --force replaces a folder farm did not write
    assert code == 2 and str(users) in err and "farm did not write" in err
    assert (users / "old-final-cut.mp4").read_bytes() == b"precious" and (users / "notes.txt").exists()

    for where in (".", ".."):  # the spec's own folder, a folder above it
        before = sorted(p.name for p in path.parent.iterdir())
        code, _, err = cli("render", write_spec(animatic(where, "png"), f"dot{len(where)}.toml"))
        assert code == 2 and "own folder or a folder above it" in err
        assert set(before) <= {p.name for p in path.parent.iterdir()}
        assert not list(path.parent.glob("000000.png"))


def test_png_output_replaces_its_own_earlier_render(home_with_models, write_spec, cli):
    path = write_spec(animatic("frames", "png"))
    assert cli("render", path)[0] == 0
    folder = path.parent / "frames"
    assert (folder / ".farm-output").is_file() and len(list(folder.glob("*.png"))) == 8
    path.write_text(path.read_text().replace("a red boat", "a green boat"))
    code, _, err = cli("render", path)
    assert code == 0, err
    assert len(list(folder.glob("*.png"))) == 8


def test_a_file_farm_did_not_write_needs_force(home_with_models, write_spec, cli):
    path = write_spec(animatic("../important.mov"))
    important = path.parent.parent / "important.mov"
    important.write_bytes(b"the only copy")
    code, _, err = cli("render", path)
    assert code == 2 and str(important) in err and "--force" in err
    assert important.read_bytes() == b"the only copy"

    code, out, err = cli("render", path, "--force")
    assert code == 0, err
    assert important.read_bytes() != b"the only copy" and important.stat().st_size > 0
    code, _, err = cli("render", path)  # now farm's own (its manifest names it): no --force needed
    assert code == 0, err

    other = path.parent / "mine.mp4"
    other.write_bytes(b"x")
    text = animatic("mine.mp4").replace('codec = "h264"', 'codec = "h264"\noverwrite = true')
    assert cli("render", write_spec(text, "ow.toml"))[0] == 0
    assert other.read_bytes() != b"x"


def test_a_sidecar_farm_did_not_write_is_not_replaced(home_with_models, write_spec, cli):
    path = write_spec(animatic("renders/anim.mp4"))
    notes = path.parent / "renders" / "anim.manifest.json"
    notes.parent.mkdir()
    notes.write_text("my own notes")
    code, _, err = cli("render", path)
    assert code == 2 and str(notes) in err
    assert notes.read_text() == "my own notes"


def test_shot_name_cannot_leave_the_spec_folder(home_with_models, write_spec, cli, tmp_path):
    path = write_spec(animatic().replace('out = "renders/anim.mp4"\n', "").replace('name = "anim"',
                                                                                    'name = "../../escaped"'))
    code, out, err = cli("render", path)
    assert code == 0, err
    written = Path(out.strip())
    assert written.parent == path.parent / "renders" and written.is_file()
    assert not list(tmp_path.parent.glob("escaped*")) and not list(tmp_path.glob("escaped*"))


# --- hangs ----------------------------------------------------------------------------------


def test_two_renders_at_once_both_finish(home_with_models, write_spec):
    a = write_spec(SMALL, "a.toml")
    b = write_spec(SMALL.replace('name = "small"', 'name = "other"').replace("out/small.mp4", "out/other.mp4")
                   .replace("a red boat", "a yellow boat"), "b.toml")
    procs = [subprocess.Popen([sys.executable, "-m", "farm.cli", "render", str(p), "--json", "-q"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in (a, b)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert json.loads(out)["frames"] == 18


@pytest.mark.slow  # test_hold's killed-render scenario renders after a SIGKILLed render too
def test_a_render_after_a_killed_render_finishes(home_with_models, write_spec, farm_home, hold):
    held = hold()  # killed at its first task
    proc = subprocess.Popen([sys.executable, "-m", "farm.cli", "render", str(write_spec(SMALL, "slow.toml")), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=held.env())
    held.caught(farm_home / "queue.db", proc=proc)
    proc.kill()  # SIGKILL: its worker row stays behind, its heartbeat fresh for a while
    proc.wait()
    assert db(farm_home).execute("SELECT count(*) FROM workers WHERE name LIKE 'render:%'").fetchone()[0] == 1
    r = farm("render", write_spec(animatic(), "next.toml"), "--json", "-q", timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["frames"] == 8


def test_ffmpeg_that_hangs_is_stopped_and_names_its_input(home_with_models, write_spec, cli, tmp_path,
                                                          monkeypatch):
    from farm.media import encode

    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\nexec sleep 600\n")
    fake.chmod(0o755)
    monkeypatch.setenv("FARM_FFMPEG", str(fake))
    monkeypatch.setattr(encode, "BASE_TIMEOUT", 1.0)
    started = time.time()
    code, _, err = cli("render", write_spec(animatic()))
    assert code == 1 and "time limit" in err and "image.png" in err  # the hold names the keyframe it reads
    assert time.time() - started < 60


@pytest.mark.slow  # the handler test_interrupt's Ctrl-C goes through, for another signal
def test_sigterm_cancels_a_render_like_ctrl_c(home_with_models, write_spec, farm_home, hold):
    held = hold("segment")
    proc = subprocess.Popen([sys.executable, "-m", "farm.cli", "render", str(write_spec(SMALL)), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=held.env())
    held.caught(farm_home / "queue.db", proc=proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Terminated" in err and "Traceback" not in err
    conn = db(farm_home)
    assert conn.execute("SELECT state FROM jobs").fetchone() == ("canceled",)
    assert conn.execute("SELECT count(*) FROM tasks WHERE state = 'running'").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM tasks WHERE state = 'done'").fetchone()[0] >= 3


def test_farm_work_exit_codes_reach_the_shell(home_with_models, write_spec, farm_home, tmp_path, hold):
    assert farm("work", "--cpu", "--until-empty", "-q").returncode == 0
    bad = farm("work", "--cpu", "--gpus", "0")
    assert bad.returncode == 2 and "not both" in bad.stderr
    (tmp_path / "file").write_text("")
    broken = farm("work", "--cpu", "--until-empty", "--db", tmp_path / "file" / "q.db")
    assert broken.returncode == 1 and "Cannot open the queue database" in broken.stderr

    assert farm("submit", write_spec(SMALL)).returncode == 0
    held = hold("segment")  # never released: the second Ctrl-C must release it
    proc = subprocess.Popen([sys.executable, "-m", "farm.cli", "work", "--cpu", "-q", "--grace", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=held.env())
    held.caught(farm_home / "queue.db", proc=proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)  # the second: release the task in flight now
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert db(farm_home).execute("SELECT count(*) FROM tasks WHERE state = 'running'").fetchone() == (0,)


# --- never reuse a broken output -------------------------------------------------------------


def test_a_damaged_cache_entry_is_recomputed_and_the_video_is_the_same(home_with_models, write_spec, cli,
                                                                         farm_home):
    path = write_spec(SMALL)
    code, out, _ = cli("render", path, "--json")
    first = json.loads(out)
    video = Path(first["output"]).read_bytes()
    keys = dict(db(farm_home).execute("SELECT name, key FROM tasks WHERE job_id = ?", (first["job"],)))
    cache = farm_home / "cache"
    image = cache / keys["keyframe[1]"][:2] / keys["keyframe[1]"] / "image.png"
    image.write_bytes(image.read_bytes()[:100])  # cut short
    frame = sorted((cache / keys["segment[0]"][:2] / keys["segment[0]"]).glob("*.png"))[3]
    damaged = bytearray(frame.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # same size, one byte flipped
    frame.write_bytes(bytes(damaged))

    code, out, err = cli("render", path, "--json")
    assert code == 0, err
    second = json.loads(out)
    assert Path(second["output"]).read_bytes() == video
    conn = db(farm_home)
    rerun = {n for (n,) in conn.execute("SELECT name FROM tasks WHERE job_id = ? AND cached = 0", (second["job"],))}
    assert {"keyframe[1]", "segment[0]"} <= rerun
    found = [json.loads(d) for (d,) in conn.execute(
        "SELECT data FROM events WHERE job_id = ? AND event = 'cache.discarded'", (second["job"],))]
    assert {f["key"] for f in found} == {keys["keyframe[1]"], keys["segment[0]"]}
    assert any("bytes" in f["problem"] for f in found) and any("digest" in f["problem"] for f in found)

    os.remove(frame)  # a deleted frame: found, recomputed, not an assembly that fails forever
    code, out, err = cli("render", path, "--json")
    assert code == 0, err
    assert Path(json.loads(out)["output"]).read_bytes() == video


def test_every_cache_entry_records_its_files(home_with_models, write_spec, cli, farm_home):
    assert cli("render", write_spec(animatic()))[0] == 0
    records = list((farm_home / "cache").rglob(".entry.json"))
    assert len(records) == 5  # 2 keyframes, 2 segments, 1 assembly
    for r in records:
        files = json.loads(r.read_text())["files"]
        for name, want in files.items():
            assert (r.parent / name).stat().st_size == want["size"] and len(want["sha256"]) == 64


def test_a_picture_edited_after_submit_is_refused_not_cached_under_its_old_key(home_with_models, write_spec,
                                                                               farm_home, cli):
    """A task's key holds its picture's digest from planning time: a picture edited while the
    job waited must not be rendered (and cached) under that key, or the old picture would
    later be answered with the new one's pixels."""
    from PIL import Image

    path = write_spec(SMALL)
    assert farm("submit", path).returncode == 0
    (key,) = db(farm_home).execute("SELECT key FROM tasks WHERE name = 'keyframe[2]'").fetchone()
    Image.new("RGB", (64, 64), (0, 200, 0)).save(path.parent / "refs" / "boat.png")
    farm("work", "--cpu", "--until-empty", "-q")
    state, error = db(farm_home).execute("SELECT state, error FROM tasks WHERE name = 'keyframe[2]'").fetchone()
    assert state == "failed" and "changed after the job was planned" in error and "boat.png" in error
    assert not (farm_home / "cache" / key[:2] / key).exists()

    code, out, err = cli("render", path, "--json")  # planned again: the new picture, under its own key
    assert code == 0, err
    conn = db(farm_home)
    (new_key,) = conn.execute("SELECT key FROM tasks WHERE job_id = ? AND name = 'keyframe[2]'",
                              (json.loads(out)["job"],)).fetchone()
    picture = Image.open(farm_home / "cache" / new_key[:2] / new_key / "image.png").convert("RGB")
    assert new_key != key and picture.getpixel((10, 10)) == (0, 200, 0)


# --- workers that lost their task ------------------------------------------------------------


def _queue_and_worker(farm_home, spec_path, **kw):
    from farm import home
    from farm.plan import plan
    from farm.queue.cache import Cache
    from farm.queue.queue import Queue
    from farm.run.worker import Worker
    from farm.spec import spec

    q = Queue(home.db_path())
    job = q.submit(plan.build(spec.load(spec_path)))
    return q, job, Worker(q, Cache(home.cache_dir()), name="w1", **kw)


def test_a_stale_attempt_never_completes_a_reclaimed_task(home_with_models, write_spec, farm_home):
    q, job, _ = _queue_and_worker(farm_home, write_spec(animatic()))
    first = q.claim("w1", lease=0.05, job=job)
    time.sleep(0.1)
    q._next_expiry = 0  # sweep expired leases on this claim (they are swept at most once a second)
    second = q.claim("w1", lease=30, job=job)  # the same worker name takes it again
    assert second["id"] == first["id"] and second["attempts"] == first["attempts"] + 1
    assert not q.complete(first, "w1", cached=False, seconds=0)  # the stale attempt is refused
    assert q.job(job)["tasks_left"] == q.job(job)["tasks_total"]
    assert q.complete(second, "w1", cached=False, seconds=0)


def test_a_worker_whose_job_is_canceled_abandons_the_task_at_the_next_step(home_with_models, write_spec,
                                                                           farm_home, monkeypatch, hold):
    held = hold("keyframe")  # never released: only the cancel can end the task
    held.set(monkeypatch)
    q, job, worker = _queue_and_worker(farm_home, write_spec(animatic()), lease=0.3)
    from farm.queue.queue import Queue

    def cancel_when_held():
        other = Queue(q.path)
        held.wait()
        other.cancel(job, "canceled by the user")

    threading.Thread(target=cancel_when_held, daemon=True).start()
    started = time.time()
    with worker:
        stats = worker.drain(job)
    events = [e for (e,) in q.conn.execute("SELECT event FROM events WHERE job_id = ?", (job,))]
    assert stats["lost"] == 1 and stats["run"] == 0, (stats, events)
    assert time.time() - started < 30  # it stopped at a step, while held
    events = [e for (e,) in q.conn.execute("SELECT event FROM events WHERE job_id = ?", (job,))]
    assert "task.abandoned" in events
    key = q.tasks(job)[0]["key"]
    assert not (farm_home / "cache" / key[:2] / key).exists()  # nothing published


def test_a_canceled_jobs_assembly_writes_no_video(home_with_models, write_spec, farm_home, monkeypatch):
    from farm.run import publish, runner

    path = write_spec(animatic())
    q, job, worker = _queue_and_worker(farm_home, path)
    real = runner.HANDLERS["assemble"]

    def cancel_then_assemble(w, params, out):
        q.cancel(job, "canceled by the user")
        real(w, params, out)

    monkeypatch.setitem(runner.HANDLERS, "assemble", cancel_then_assemble)
    with worker:
        worker.drain(job, on_job_done=publish.finish)
    assert q.job(job)["state"] == "canceled"
    assert not (path.parent / "renders" / "anim.mp4").exists()
    assert not (path.parent / "renders" / "anim.manifest.json").exists()


def test_the_heartbeat_renews_leases_in_every_variant_of_a_sweep(home_with_models, write_spec, farm_home,
                                                                  monkeypatch):
    from farm import home
    from farm.queue.cache import Cache
    from farm.queue.queue import Queue
    from farm.run import render, runner, worker as worker_mod

    path = write_spec(animatic() + '\n[sweep]\n"shot.seed" = [1, 2]\n')
    real = runner.HANDLERS["keyframe"]
    seen, left = {"n": 0}, []

    def slow_in_second_variant(w, params, out):
        seen["n"] += 1
        if seen["n"] > 1:  # the first variant's keyframe ran; this one is the second's
            time.sleep(2.0)  # 3 leases: without renewal the lease would have run out
            conn = sqlite3.connect(home.db_path())
            (expires,) = conn.execute("SELECT lease_expires FROM tasks WHERE state = 'running'").fetchone()
            conn.close()
            left.append(expires - time.time())
        real(w, params, out)

    monkeypatch.setitem(runner.HANDLERS, "keyframe", slow_in_second_variant)
    q = Queue(home.db_path())
    w = worker_mod.Worker(q, Cache(home.cache_dir()), name="sweeper", lease=0.6)
    results = render.render_all(path, worker=w)
    assert len(results) == 2
    assert left and all(t > 0 for t in left), left  # renewed while the second variant ran
    events = [e for (e,) in q.conn.execute("SELECT event FROM events")]
    assert "task.lease_expired" not in events and "task.abandoned" not in events


def test_a_database_error_does_not_stop_the_heartbeat(home_with_models, write_spec, farm_home, monkeypatch):
    from farm.queue.queue import Queue

    q, job, worker = _queue_and_worker(farm_home, write_spec(animatic()), lease=0.3)
    real, calls = Queue.heartbeat, {"n": 0}

    def flaky(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise sqlite3.OperationalError("database is locked")
        return real(self, *a, **kw)

    monkeypatch.setattr(Queue, "heartbeat", flaky)
    with worker:
        time.sleep(0.8)
        assert worker._beat.is_alive() and calls["n"] > 2
        beat = q.conn.execute("SELECT heartbeat_at FROM workers WHERE name = 'w1'").fetchone()[0]
        assert time.time() - beat < 0.5


# --- bad input ------------------------------------------------------------------------------


def _png_header(width, height) -> bytes:
    """A PNG that claims to be width x height (only its header: what a decompression bomb is)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_with_its_size(home_with_models, write_spec, cli):
    path = write_spec(animatic())
    (path.parent / "refs" / "boat.png").write_bytes(_png_header(20000, 20000))
    code, _, err = cli("render", path)
    assert code == 2 and "boat.png is 20000x20000" in err and "internal error" not in err


def test_preset_defaults_go_through_the_specs_checks(home_with_models, write_spec, cli, tmp_path, monkeypatch):
    import shutil

    from farm import models

    presets = tmp_path / "presets"
    shutil.copytree(models.presets_dir(), presets)
    monkeypatch.setenv("FARM_PRESETS", str(presets))
    import re

    tiny = re.sub(r"(?m)^steps = .*$", "", (presets / "tiny.toml").read_text())
    for bad, words in (("size = [1000000, 8]", "each side"), ("steps = -5", "steps"),
                       ('size = ["a", "b"]', "two integers"), ("colour = 3", "unknown key")):
        (presets / "tiny.toml").write_text(tiny.replace("[defaults]", "[defaults]\n" + bad, 1))
        code, _, err = cli("render", write_spec(animatic()))
        assert code == 2 and words in err and "internal error" not in err, (bad, err)
    code, out, err = cli("models", "--json")  # one bad preset: listed with its error, the others still shown
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert "unknown key" in rows["tiny"]["error"] and "error" not in rows["tiny-video"]


def test_a_huge_prompt_is_refused(home_with_models, write_spec, cli):
    code, _, err = cli("render", write_spec(animatic().replace("a red boat", "boat " * 2000)))
    assert code == 2 and "at most 4,096" in err
    code, _, err = cli("render", write_spec(animatic().replace("a red boat", "boat " * 4_000_000), "huge.toml"))
    assert code == 2 and "20 MB" in err and "at most 16 MB" in err


def test_caption_wrapping_is_linear():
    from PIL import Image, ImageDraw

    from farm.media import sheet

    class Counting:
        def __init__(self):
            self.draw, self.n = ImageDraw.Draw(Image.new("RGB", (8, 8))), 0

        def textlength(self, s, font=None):
            self.n += 1
            return self.draw.textlength(s, font=font)

    font = sheet._font(12)
    for text in ("x" * 8000, "word " * 1600):
        d = Counting()
        lines = sheet._fit(d, text, font, 120, 3)
        assert len(lines) == 3 and lines[-1].endswith("...")
        assert d.n < 100, d.n  # the character-by-character cut took ~8,000 measurements


def test_a_render_larger_than_the_free_disk_is_refused(home_with_models, write_spec, cli):
    from farm.spec import spec

    text = animatic("renders/huge.mov", "prores").replace("size = [64, 64]", "size = [8192, 8192]")
    text = text.replace("seconds = 0.5", "seconds = 600", 1)
    path = write_spec(text)
    code, _, err = cli("render", path)
    assert code == 2 and "free" in err and "--force" in err
    assert spec.load(path, force=True).width == 8192  # --force lets it through validation


def test_a_hub_id_that_matches_a_folder_is_ambiguous(home_with_models, write_spec, cli):
    import shutil

    from farm import home

    path = write_spec(animatic())
    folder = path.parent / "acme" / "tiny"
    shutil.copytree(home.models_dir() / "text-to-image-recipe1", folder)
    code, _, err = cli("render", write_spec(animatic().replace('model = "tiny"', 'model = "acme/tiny"'), "a.toml"))
    assert code == 2 and "ambiguous" in err and "./acme/tiny" in err
    code, _, err = cli("render", write_spec(animatic().replace('model = "tiny"', 'model = "./acme/tiny"'), "b.toml"))
    assert code == 0, err


# --- the review page -------------------------------------------------------------------------


def _rendered_manifest(cli, write_spec):
    code, out, _ = cli("render", write_spec(animatic()), "--json")
    return Path(json.loads(out)["manifest"])


def test_manifest_values_are_escaped_and_type_checked(home_with_models, write_spec, cli, tmp_path):
    path = _rendered_manifest(cli, write_spec)
    data = json.loads(path.read_text())
    data["job"]["name"] = '<img src=x onerror="alert(1)">'
    data["video"]["codec"] = "<script>alert(2)</script>"
    path.write_text(json.dumps(data))
    code, out, err = cli("review", path, "--out", tmp_path / "page")
    assert code == 0, err
    page = (tmp_path / "page" / "index.html").read_text()
    assert "<img src=x" not in page and "<script>alert(2)" not in page and "&lt;img src=x" in page

    data["video"]["frames"] = '<img onerror="x">'
    path.write_text(json.dumps(data))
    code, _, err = cli("review", path, "--out", tmp_path / "page2")
    assert code == 2 and "video.frames" in err and "internal error" not in err


def test_serve_keeps_to_its_folder_and_to_localhost(home_with_models, write_spec, cli, tmp_path):
    import http.client

    from farm.review import review

    path = _rendered_manifest(cli, write_spec)
    assert cli("review", path, "--out", tmp_path / "page")[0] == 0
    folder = tmp_path / "page"
    (folder / "etc").symlink_to("/etc")
    (folder / "host").symlink_to("/etc/hostname")
    srv = review.server(folder, 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]

    def get(url, host=f"127.0.0.1:{port}"):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", url, headers={"Host": host})
        r = c.getresponse()
        return r.status, r.read()

    try:
        assert get("/index.html")[0] == 200 and get("/")[0] == 200
        assert get("/index.html", host=f"localhost:{port}")[0] == 200
        assert get("/index.html", host="evil.example:80")[0] == 403
        assert get("/host")[0] == 404 and get("/etc/hostname")[0] == 404
        status, body = get("/media/")
        assert status == 404 and b"Directory listing" not in body
    finally:
        srv.shutdown()
        srv.server_close()


# --- farm gc --------------------------------------------------------------------------------


def test_gc_empties_the_cache_but_what_live_jobs_need(home_with_models, write_spec, cli, farm_home):
    path = write_spec(animatic())
    code, out, _ = cli("render", path, "--json")
    video = Path(json.loads(out)["output"]).read_bytes()
    entries = list((farm_home / "cache").rglob(".entry.json"))
    assert len(entries) == 5

    code, out, err = cli("gc", "--max-size", "0", "--dry-run", "--json")
    assert code == 0 and json.loads(out)["removed"] == 5
    assert len(list((farm_home / "cache").rglob(".entry.json"))) == 5  # a dry run removes nothing

    queued = write_spec(animatic().replace("a red boat", "a queued boat"), "queued.toml")
    assert cli("render", queued)[0] == 0
    assert cli("submit", queued)[0] == 0  # a queued job needs its entries (the same keys)
    code, out, err = cli("gc", "--max-size", "0", "--json")
    summary = json.loads(out)
    assert code == 0 and {"removed", "freed_bytes", "kept_bytes"} <= set(summary)
    assert summary["protected"] == 5 and summary["kept_bytes"] > 0
    left = {r.parent.name for r in (farm_home / "cache").rglob(".entry.json")}
    live = {k for (k,) in db(farm_home).execute(
        "SELECT key FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE j.state = 'queued'")}
    assert left == live

    code, out, err = cli("render", path, "--json")  # recomputed, to the same bytes
    assert code == 0, err
    again = json.loads(out)
    mine = {k for (k,) in db(farm_home).execute("SELECT key FROM tasks WHERE job_id = ?", (again["job"],))}
    assert again["tasks"]["run"] == len(mine - left) > 0
    assert Path(again["output"]).read_bytes() == video


def test_gc_needs_a_limit_and_reads_the_config(home_with_models, farm_home, cli):
    code, _, err = cli("gc")
    assert code == 2 and "Nothing to do" in err
    farm_home.mkdir(parents=True, exist_ok=True)
    (farm_home / "config.toml").write_text('cache_max_size = "1G"\n')
    from farm.run import gc

    assert gc.configured_max_size() == 1 << 30
    code, out, err = cli("gc", "--json")
    assert code == 0 and json.loads(out)["removed"] == 0
    code, _, err = cli("gc", "--max-size", "lots")
    assert code == 2 and "200G" in err


def test_cache_entries_are_fsynced_before_they_are_published(tmp_path, monkeypatch):
    from farm import files
    from farm.queue import cache as cache_mod

    synced, order = [], []
    real_sync, real_rename = files.fsync_path, os.rename
    monkeypatch.setattr(files, "fsync_path", lambda p: (synced.append(Path(p).name), real_sync(p)))
    monkeypatch.setattr(cache_mod.os, "rename", lambda a, b: (order.append(list(synced)), real_rename(a, b)))
    c = cache_mod.Cache(tmp_path / "cache")
    with c.writing("ab" * 32) as out:
        (out / "image.png").write_bytes(b"pixels")
    before_rename = order[0]
    assert "image.png" in before_rename and ".entry.json" in before_rename
    assert any(name.startswith(".tmp-") for name in before_rename)  # the folder itself
    assert synced[-1] == "ab"  # and the parent, after the rename
    assert c.has("ab" * 32)


def test_farm_work_prunes_the_cache_between_jobs(home_with_models, write_spec, farm_home, monkeypatch):
    from farm import home
    from farm.plan import plan
    from farm.queue.cache import Cache
    from farm.queue.queue import Queue
    from farm.run import publish
    from farm.run.worker import Worker
    from farm.spec import spec

    monkeypatch.setenv("FARM_CACHE_MAX_SIZE", "0")
    q = Queue(home.db_path())
    path = write_spec(animatic())
    first = q.submit(plan.build(spec.load(path)))
    second = q.submit(plan.build(spec.load(write_spec(animatic("renders/b.mp4").replace("a red boat", "a blue boat"),
                                                       "b.toml"))))
    worker = Worker(q, Cache(home.cache_dir()), name="w1")
    with worker:
        worker.drain(first, on_job_done=publish.finish)  # `farm work`'s job-done hook
        left = {r.parent.name for r in (farm_home / "cache").rglob(".entry.json")}
        assert left and left <= q.live_keys()  # only what the queued second job needs is kept
        worker.drain(second, on_job_done=publish.finish)
    assert not list((farm_home / "cache").rglob(".entry.json"))
    assert (path.parent / "renders" / "anim.mp4").is_file() and (path.parent / "renders" / "b.mp4").is_file()
