"""The review page in a real browser: headless Chromium loads it from a local server, both
videos of a two-variant sweep load and play, and a screenshot shows a page, not a blank."""

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading

import pytest
from PIL import Image, ImageChops, ImageStat

from farm.review import review
from test_review import render_json, variant

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def chromium():
    """Debian's `chromium`: used if present, else installed with apt-get (root only; about a
    minute), else the test is skipped saying why. FARM_TEST_NO_INSTALL=1 forbids installing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("FARM_TEST_NO_INSTALL"):
        pytest.skip("chromium is not installed and FARM_TEST_NO_INSTALL is set (apt-get install chromium)")
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("chromium is not installed, and installing it needs apt-get as root (apt-get install chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
            if proc.returncode != 0:
                tail = " ".join(proc.stderr.strip().splitlines()[-2:])
                pytest.skip(f"chromium is not installed and `{' '.join(cmd)}` failed: {tail}")
    except subprocess.TimeoutExpired:
        pytest.skip("chromium is not installed and apt-get took over 15 minutes")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed chromium, but there is no `chromium` on PATH")
    return found


def browse(chromium, url, *args, timeout=120):
    with tempfile.TemporaryDirectory(prefix="farm-chromium-") as profile:
        proc = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args, url],
                              capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def cards(shot):
    """The two video cards' inner areas in a 1200x900 screenshot of the page (cards of at most
    420 px from x = 20, under the title)."""
    im = Image.open(shot).convert("RGB")
    return tuple(im.crop((x, 130, x + 360, 480)) for x in (40, 474))


def test_review_page_of_a_two_variant_sweep_plays_both_videos(chromium, home_with_models, write_spec, cli,
                                                              tmp_path):
    a, b = render_json(cli, variant(write_spec, 3)), render_json(cli, variant(write_spec, 4))
    page = review.write(review.collect([str(a["job"]), str(b["job"])]), tmp_path / "page")
    srv = review.server(page.parent, 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        url = review.url(srv)
        # The page's script writes each video's readyState, duration and error into #status;
        # the virtual time budget lets the page load and the videos decode before the dump.
        dom = browse(chromium, url, "--virtual-time-budget=10000", "--dump-dom")
        # Headless Chromium under load (CI, 2 cores) has once painted the same video texture
        # into both cards; the DOM check above already proves both videos decode, so a
        # screenshot whose two cards match is taken again, up to three times, before failing.
        for attempt in range(3):
            shot = tmp_path / f"shot{attempt}.png"
            browse(chromium, url, "--virtual-time-budget=10000", "--window-size=1200,900", "--hide-scrollbars",
                   f"--screenshot={shot}")
            left, right = cards(shot)
            if max(ImageStat.Stat(ImageChops.difference(left, right)).mean) > 10:
                break
    finally:
        srv.shutdown()
        srv.server_close()

    status = json.loads(re.search(r'<pre id="status">(.*?)</pre>', dom, re.S).group(1))
    assert [s["src"] for s in status] == [f"media/job{a['job']}-seed3.mp4", f"media/job{b['job']}-seed4.mp4"]
    for s in status:
        assert s["error"] is None, s
        assert s["readyState"] >= 3, s  # HAVE_FUTURE_DATA: decoded, and can play on
        assert s["duration"] == pytest.approx(18 / 8, abs=0.01), s  # 18 frames at 8 fps
    assert "keyframe[0].seed" in dom
    media = [(page.parent / s["src"]).read_bytes() for s in status]
    assert media[0] != media[1], "the two seeds rendered the same video"

    im = Image.open(shot).convert("RGB")
    assert im.size == (1200, 900)
    colors = im.getcolors(maxcolors=1 << 20)
    assert len(colors) > 1000, "the screenshot has too few colors: a blank page?"
    assert max(ImageStat.Stat(im).stddev) > 20
    # The two videos sit side by side under the title (cards of at most 420 px from x = 20):
    # each shows a decoded frame of noise, and the two differ (seeds 3 and 4).
    left, right = cards(shot)
    assert all(len(v.getcolors(maxcolors=1 << 20)) > 500 for v in (left, right))
    assert max(ImageStat.Stat(ImageChops.difference(left, right)).mean) > 10


def test_farm_serve_shows_a_job_drain_live_and_its_buttons_act(chromium, home_with_models, write_spec, tmp_path):
    """The overnight monitor in a real browser: a submitted job goes from queued to done on the
    page while `farm work` drains it, its keyframes' thumbnails appear, and the page's own
    buttons pause and resume it and cancel another, as the database then says."""
    pytest.importorskip("starlette", reason="farm serve's extra is not installed: pip install 'farm[serve]'")
    import sys
    import time

    from cdp import Browser

    from conftest import SMALL
    from farm import home
    from farm.plan import plan
    from farm.queue.queue import Queue
    from farm.spec import spec
    from test_serve import Server

    q = Queue(home.db_path())
    a = q.submit(plan.build(spec.load(write_spec(SMALL, "a.toml"))))
    hostile = '<img src=x id=pwn onerror="document.title=1">'  # a spec's name is shown as text, never as HTML
    b = q.submit(plan.build(spec.load(write_spec(SMALL.replace('name = "small"', f"name = '{hostile}'")
                                                 .replace("small.mp4", "other.mp4"), "b.toml"))))
    srv = Server(home.db_path())
    browser = Browser(chromium)
    state = "document.querySelector('[data-state=\"{}\"]')?.textContent"
    click = "document.querySelector('tr[data-job=\"{}\"] button[data-action=\"{}\"]').click()"

    def db_says(check):
        deadline = time.time() + 10
        while not check():
            assert time.time() < deadline, "the database never changed"
            time.sleep(0.05)

    worker = None
    try:
        browser.open(f"http://127.0.0.1:{srv.port}/#job={a}")
        assert browser.wait(f"{state.format(a)} === 'queued' && {state.format(b)} === 'queued'")
        assert browser.js(f"document.querySelector('tr[data-job=\"{b}\"] td.name').textContent") == hostile
        assert browser.js("document.getElementById('pwn') === null && document.title === 'farm'")
        browser.js(click.format(a, "pause"))
        db_says(lambda: q.job(a)["paused"] == 1)
        browser.wait(f"{state.format(a)} === 'queued (paused)'")
        browser.js(click.format(a, "resume"))
        db_says(lambda: q.job(a)["paused"] == 0)
        browser.wait(f"{state.format(a)} === 'queued'")
        browser.js(click.format(b, "cancel"))
        db_says(lambda: q.job(b)["state"] == "canceled")
        browser.wait(f"{state.format(b)} === 'canceled'")
        assert browser.js("document.querySelectorAll('#board img').length") == 0  # nothing drawn yet

        worker = subprocess.Popen([sys.executable, "-m", "farm.cli", "work", "--cpu", "--workers", "1",
                                   "--until-empty"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        seen = []
        browser.wait(state.format(a), timeout=180, every=0.05, seen=seen, until=lambda v: v == "done")
        assert seen[0] == "queued" and "running" in seen and seen[-1] == "done", seen
        # the storyboard filled in: each keyframe's picture, loaded from the cache
        assert browser.wait("[...document.querySelectorAll('#board img')].filter(i => i.complete && "
                            "i.naturalWidth > 0).length === 3", timeout=20)
        assert browser.wait("document.querySelector('#media video')?.readyState >= 2", timeout=20)
        assert worker.wait(60) == 0
        assert q.job(a)["state"] == "done" and q.job(a)["published"] == "published"
        assert q.job(b)["state"] == "canceled"
        assert "job.paused" in [e["event"] for e in q.events(a)] and "job.resumed" in [e["event"] for e in q.events(a)]
        shot = tmp_path / "serve.png"
        browser.screenshot(shot)
        im = Image.open(shot).convert("RGB")
        assert im.size == (1400, 900) and len(im.getcolors(maxcolors=1 << 20)) > 500
        if os.environ.get("FARM_SAVE_SCREENSHOT"):  # how docs/serve.png is made
            shutil.copy(shot, os.environ["FARM_SAVE_SCREENSHOT"])
    finally:
        browser.close()
        srv.stop()
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
