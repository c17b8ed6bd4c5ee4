"""`farm serve`: its JSON API against `farm status` and `farm logs`, its files, its actions
against the database, and who may use it (Host, token, origin, read-only), on a real uvicorn
server in a thread."""

import http.client
import json
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

pytest.importorskip("starlette", reason="farm serve's extra is not installed: pip install 'farm[serve]'")
pytest.importorskip("uvicorn", reason="farm serve's extra is not installed: pip install 'farm[serve]'")

from conftest import SMALL  # noqa: E402
from farm import home  # noqa: E402
from farm.queue.queue import Queue  # noqa: E402
from test_farm import flat_plan  # noqa: E402

TOKEN = "a-long-enough-test-token"


class Server:
    """A `farm serve` app on a free loopback port, in a thread."""

    def __init__(self, db, *, bind="127.0.0.1", token=None, read_only=False):
        import uvicorn

        from farm.review.serve.app import app

        config = uvicorn.Config(app(db, home.cache_dir(), bind=bind, token=token, read_only=read_only),
                                host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        sock = config.bind_socket()
        self.port = sock.getsockname()[1]
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started:
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.02)

    def request(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
        if body is not None:
            headers.setdefault("Content-Type", "application/json")
            body = json.dumps(body)
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r.status, dict(r.getheaders()), data

    def get(self, path, **kw):
        status, headers, data = self.request("GET", path, **kw)
        assert status == 200, (path, status, data[:300])
        return json.loads(data) if headers.get("content-type", "").startswith("application/json") else data

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body if body is not None else {}, **kw)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def serve():
    servers = []

    def start(db, **kw):
        servers.append(Server(db, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def test_the_api_answers_as_farm_status_and_logs_do(home_with_models, write_spec, cli, serve):
    code, out, _ = cli("render", write_spec(SMALL), "--json", "--quiet")
    assert code == 0
    job = json.loads(out)["job"]
    db = home.db_path()
    srv = serve(db)
    _, status_out, _ = cli("status", job, "--json")
    listed = srv.get("/api/jobs")
    assert listed["total"] == 1 and listed["pages"] == 1
    ignore = {"elapsed"}  # read a moment apart
    assert {k: v for k, v in listed["jobs"][0].items() if k not in ignore} == \
           {k: v for k, v in json.loads(status_out).items() if k not in ignore}

    one = srv.get(f"/api/jobs/{job}")
    assert one["job"]["state"] == "done" and one["job"]["tasks"]["done"] == one["job"]["tasks"]["total"]
    board = one["storyboard"]
    assert [(k["prompt"], k["image"]) for k in board] == [("a red boat", None), ("a blue boat", None),
                                                          (None, "boat.png")]
    for k in board:  # every finished keyframe's picture is served, as PNG, from the cache
        assert k["state"] == "done" and k["thumbnail"] == f"/files/tasks/{k['task']}/image.png"
        png = srv.get(k["thumbnail"])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert [s["state"] for s in one["segments"]] == ["done"] * len(board)
    assert srv.get(one["files"]["video"]) == (write_spec.folder / "out" / "small.mp4").read_bytes()
    manifest = srv.get(one["files"]["manifest"])
    assert manifest["job"]["id"] == job
    assert srv.get(one["files"]["contact_sheet"])[:4] == b"\x89PNG"

    _, logs_out, _ = cli("logs", job)
    assert srv.get(f"/api/jobs/{job}/events")["events"] == [json.loads(line) for line in logs_out.splitlines()]
    last = json.loads(logs_out.splitlines()[-2])["id"]
    assert [e["id"] for e in srv.get(f"/api/jobs/{job}/events?after={last}")["events"]] == [last + 1]

    farm = srv.get("/api/farm")
    assert farm["paused"] is False and farm["states"]["done"] == 1 and farm["read_only"] is False


def test_pages_and_filters_over_many_jobs(tmp_path, serve):
    db = tmp_path / "q.db"
    q = Queue(db)
    ids = [q.submit(flat_plan(2, prefix=f"j{i}-")) for i in range(7)]
    q.cancel(ids[1])
    q.cancel(ids[4])
    srv = serve(db)
    page = srv.get("/api/jobs?per_page=3&page=2")
    assert [j["job"] for j in page["jobs"]] == [ids[3], ids[2], ids[1]] and page["pages"] == 3 and page["total"] == 7
    canceled = srv.get("/api/jobs?state=canceled")
    assert [j["job"] for j in canceled["jobs"]] == [ids[4], ids[1]] and canceled["total"] == 2
    for bad in ("/api/jobs?state=lost", "/api/jobs?page=0", "/api/jobs?per_page=x", "/api/jobs?per_page=100000"):
        status, _, data = srv.request("GET", bad)
        assert status == 400 and "error" in json.loads(data), bad
    status, _, data = srv.request("GET", "/api/jobs/999")
    assert status == 404 and "No job 999" in json.loads(data)["error"]


def test_actions_change_the_database_as_the_cli_does(tmp_path, serve):
    db = tmp_path / "q.db"
    q = Queue(db)
    a, b = q.submit(flat_plan(2, prefix="a")), q.submit(flat_plan(2, prefix="b"))
    srv = serve(db)
    assert srv.post(f"/api/jobs/{a}/pause")[0] == 200 and q.job(a)["paused"] == 1
    assert q.claim("w")["job_id"] == b  # a is paused
    assert srv.post(f"/api/jobs/{a}/resume")[0] == 200 and q.job(a)["paused"] == 0
    assert srv.post(f"/api/jobs/{a}/priority", {"priority": 90})[0] == 200
    assert q.job(a)["priority"] == 90 and q.claim("w")["job_id"] == a
    status, _, data = srv.post(f"/api/jobs/{a}/priority", {"priority": "high"})
    assert status == 400 and "whole number" in json.loads(data)["error"] and q.job(a)["priority"] == 90
    assert srv.post(f"/api/jobs/{b}/cancel")[0] == 200 and q.job(b)["state"] == "canceled"
    status, _, data = srv.post(f"/api/jobs/{b}/cancel")
    assert status == 400 and json.loads(data)["error"] == f"Job {b} is already canceled."
    assert srv.post(f"/api/jobs/{b}/retry")[0] == 200 and q.job(b)["state"] != "canceled"
    assert srv.post("/api/farm/pause")[0] == 200 and q.farm_paused()
    assert srv.post("/api/farm/resume")[0] == 200 and not q.farm_paused()
    assert srv.post(f"/api/jobs/{a}/explode")[0] == 404


def test_no_other_site_can_act_and_read_only_serves_no_action(tmp_path, serve):
    db = tmp_path / "q.db"
    q = Queue(db)
    job = q.submit(flat_plan(2))
    srv = serve(db)
    # A form another site posts (no JSON), or a page of another origin: refused, nothing changes.
    status, _, _ = srv.request("POST", f"/api/jobs/{job}/cancel", body=None,
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415
    status, _, _ = srv.post(f"/api/jobs/{job}/cancel", headers={"Origin": "http://evil.example"})
    assert status == 403 and q.job(job)["state"] == "queued"
    # DNS rebinding: a name that resolves to 127.0.0.1 but is not a loopback name
    status, _, _ = srv.request("GET", "/api/jobs", headers={"Host": f"evil.example:{srv.port}"})
    assert status == 421
    assert srv.post(f"/api/jobs/{job}/cancel", headers={"Origin": f"http://127.0.0.1:{srv.port}"})[0] == 200

    job2 = q.submit(flat_plan(2, prefix="x"))
    ro = serve(db, read_only=True)
    assert ro.post(f"/api/jobs/{job2}/cancel")[0] in (404, 405) and q.job(job2)["state"] == "queued"
    assert ro.get("/api/farm")["read_only"] is True


def test_a_token_guards_every_request(tmp_path, serve):
    db = tmp_path / "q.db"
    Queue(db).submit(flat_plan(1))
    srv = serve(db, bind="0.0.0.0", token=TOKEN)
    for path in ("/", "/api/jobs", "/api/stream", "/files/jobs/1/video", "/static/app.js"):
        assert srv.request("GET", path)[0] == 401, path
    assert srv.request("GET", "/api/jobs", headers={"Authorization": "Bearer wrong-token-of-length"})[0] == 401
    assert srv.get("/api/jobs", headers={"Authorization": f"Bearer {TOKEN}"})["total"] == 1
    status, headers, _ = srv.request("GET", f"/?token={urllib.parse.quote(TOKEN)}")
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert srv.get("/api/jobs", headers={"Cookie": cookie.split(";")[0]})["total"] == 1
    assert srv.request("GET", "/?token=guess-guess-guess-guess")[0] == 401


def test_files_are_found_by_id_never_by_path(tmp_path, serve):
    db = tmp_path / "q.db"
    q = Queue(db)
    job = q.submit(flat_plan(1))
    srv = serve(db)
    for path in (f"/files/jobs/{job}/video", f"/files/jobs/{job}/..%2F..%2Fetc%2Fpasswd", "/files/jobs/1/../../q.db",
                 f"/files/jobs/{job}/%2Fetc%2Fpasswd", "/files/tasks/1/image.png", "/files/tasks/1/..%2Fimage.png",
                 "/static/..%2F__init__.py", "/static/guard.py"):
        status, _, data = srv.request("GET", path)
        assert status == 404 and b"root:" not in data, path


def test_the_stream_tells_of_each_change(tmp_path, serve):
    db = tmp_path / "q.db"
    q = Queue(db)
    job = q.submit(flat_plan(1))
    srv = serve(db)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request("GET", "/api/stream", headers={"Host": f"127.0.0.1:{srv.port}"})
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("content-type").startswith("text/event-stream")

    def next_change():
        while True:
            line = r.readline().decode()
            if line.startswith("data: "):
                return json.loads(line[6:])

    first = next_change()
    started = time.perf_counter()
    q.pause(job)  # another process's write: the stream says so within a poll
    second = next_change()
    assert time.perf_counter() - started < 2 and second["event"] > first["event"]
    conn.close()


def test_off_the_loopback_a_token_is_required(cli, farm_home):
    code, out, err = cli("serve", "--host", "0.0.0.0", "--port", "0")
    assert code == 2 and "give it a token" in err and "Traceback" not in err
    code, out, err = cli("serve", "--host", "0.0.0.0", "--port", "0", "--token", "short")
    assert code == 2 and "at least 16 characters" in err
    (farm_home).mkdir(parents=True, exist_ok=True)
    (farm_home / "config.toml").write_text("[serve]\ntoken = 5\n")
    code, out, err = cli("serve", "--host", "0.0.0.0", "--port", "0")
    assert code == 2 and "[serve] token must be a non-empty string" in err


def test_a_port_in_use_or_a_bad_address_is_a_clear_error(cli, farm_home):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        code, out, err = cli("serve", "--port", taken.getsockname()[1])
        assert code == 2 and "cannot listen on 127.0.0.1" in err and "Address already in use" in err
    finally:
        taken.close()
    code, out, err = cli("serve", "--host", "no-such-host.invalid", "--port", "0", "--token", TOKEN)
    assert code == 2 and "cannot listen on no-such-host.invalid" in err and "Traceback" not in err


def test_farm_serve_runs_from_the_command_line_and_stops_on_ctrl_c(tmp_path, farm_home):
    import os
    import signal

    db = tmp_path / "q.db"
    Queue(db).submit(flat_plan(1))
    proc = subprocess.Popen([sys.executable, "-m", "farm.cli", "serve", "--port", "0", "--db", str(db)],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "FARM_HOME": str(farm_home)})
    try:
        line = proc.stderr.readline()
        assert line.startswith("farm serve: http://127.0.0.1:"), line
        port = int(line.split(":")[3].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/jobs")
        assert json.loads(conn.getresponse().read())["total"] == 1
        conn.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    assert "Traceback" not in proc.stderr.read()
