"""Contact sheets, manifests and the review page, checked on pixels, database rows and files."""

import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat

from conftest import EXAMPLE, SMALL
from farm import home
from farm.media import encode, sheet
from farm.review import review

HOLD = SMALL.replace('model = "tiny-video"', 'model = "hold"')  # no video model: seconds, not tens


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def render_json(cli, path):
    code, out, err = cli("render", path, "--json", "--quiet")
    assert code == 0, err
    return json.loads(out)


def variant(write_spec, seed, name=None, text=HOLD):
    """The small spec with another seed, name and output: one variant of a seed sweep."""
    name = name or f"seed{seed}"
    return write_spec(text.replace("seed = 3", f"seed = {seed}").replace('name = "small"', f'name = "{name}"')
                      .replace("out/small.mp4", f"out/{name}.mp4"), f"{name}.toml")


def test_example_has_a_contact_sheet_and_a_manifest_that_match_the_database(home_with_models, cli, tmp_path):
    import diffusers
    import torch

    import farm

    spec_path = tmp_path / "example" / EXAMPLE.name
    shutil.copytree(EXAMPLE.parent, spec_path.parent, ignore=shutil.ignore_patterns("renders"))
    result = render_json(cli, spec_path)
    renders = spec_path.parent / "renders"
    assert result["contact_sheet"] == str(renders / "lighthouse.contact.png")
    assert result["manifest"] == str(renders / "lighthouse.manifest.json")
    assert result["tasks"] == {"total": 7, "run": 7, "cached": 0}  # no task added for them

    # The contact sheet: three 240-px tiles in one row under the header, each showing its keyframe.
    db = sqlite3.connect(home.db_path())
    db.row_factory = sqlite3.Row
    keyframes = db.execute("SELECT key FROM tasks WHERE job_id = ? AND kind = 'keyframe' ORDER BY id",
                           (result["job"],)).fetchall()
    im = Image.open(result["contact_sheet"]).convert("RGB")
    lay = sheet.layout(3, 128, 128)
    assert (lay.columns, lay.rows, lay.thumb) == (3, 1, (240, 240))
    assert im.size == lay.size == (3 * 240 + 4 * sheet.GAP, sheet.HEADER + sheet.GAP + 240 + 3 * sheet.LINE
                                   + 2 * sheet.GAP)
    # A line through the middle of the thumbnails: picture runs split by gutters of >= 8 px of
    # background or tile colour (a stray noise pixel of that colour does not split a tile).
    y = lay.box(0)[1] + 120
    picture = [im.getpixel((x, y)) not in (sheet.BACKGROUND, sheet.TILE) for x in range(im.width)]
    runs, start, gap = [], None, 0
    for x, p in enumerate(picture + [False] * 8):
        if p:
            start, gap = (x if start is None else start), 0
        elif start is not None:
            gap += 1
            if gap == 8:
                runs.append((start, x - 8 + 1))
                start = None
    assert runs == [lay.box(i)[::2] for i in range(3)]  # three tiles, where the layout puts them
    assert [b - a for a, b in runs] == [240, 240, 240]
    for i, (key,) in enumerate(keyframes):
        drawn = im.crop(lay.box(i))
        expected = Image.open(home.cache_dir() / key[:2] / key / "image.png").convert("RGB").resize(
            (240, 240), Image.Resampling.LANCZOS)
        assert max(ImageStat.Stat(ImageChops.difference(drawn, expected)).mean) < 0.5, f"tile {i}"

    # The manifest: every field against the database and the files.
    m = json.loads(Path(result["manifest"]).read_text())
    job = db.execute("SELECT * FROM jobs WHERE id = ?", (result["job"],)).fetchone()
    assert m["job"]["id"] == job["id"] and m["job"]["finished_at"] == job["finished_at"]
    assert m["spec"] == {"path": str(spec_path), "sha256": job["spec_digest"]} and job["spec_digest"] == sha(spec_path)
    assert m["video"]["sha256"] == sha(result["output"]) and m["video"]["frames"] == 48
    assert m["contact_sheet"] == result["contact_sheet"]
    rows = {r["name"]: r for r in db.execute("SELECT * FROM tasks WHERE job_id = ?", (result["job"],))}
    assert [t["name"] for t in m["tasks"]] == list(rows) and len(rows) == 7
    for t in m["tasks"]:
        row = rows[t["name"]]
        assert (t["key"], t["kind"], t["worker"], t["device"], t["started_at"], t["finished_at"], t["cached"]) == (
            row["key"], row["kind"], row["worker"], row["device"], row["started_at"], row["finished_at"],
            bool(row["cached"]))
        assert t["params"] == json.loads(row["params"]) and t["device"] == "cpu"
        assert t["seconds"] == pytest.approx(row["finished_at"] - row["started_at"], abs=1e-3) and t["seconds"] > 0
    seeds = {t["name"]: t["params"].get("seed") for t in m["tasks"]}
    assert seeds["keyframe[0]"] == 7 and seeds["keyframe[1]"] == 11 and "seed" not in rows["keyframe[2]"]["params"]
    assert {(x["name"], x["identity"], x["revision"], x["source"]) for x in m["models"]} == {
        ("tiny", "builtin:text-to-image@recipe1", "recipe1", "builtin:text-to-image"),
        ("tiny-video", "builtin:image-to-video@recipe1", "recipe1", "builtin:image-to-video")}
    v = m["versions"]
    assert (v["farm"], v["diffusers"], v["torch"]) == (farm.__version__, diffusers.__version__, torch.__version__)
    assert v["ffmpeg"].startswith("ffmpeg version")


def test_a_cached_rerender_keeps_the_video_and_says_where_tasks_were_made(home_with_models, write_spec, cli):
    path = write_spec(HOLD)
    first = render_json(cli, path)
    video = sha(first["output"])
    second = render_json(cli, path)
    assert second["tasks"] == {"total": 7, "run": 0, "cached": 7}
    assert sha(second["output"]) == video  # the sheet and manifest live beside it, not in it
    m = json.loads(Path(second["manifest"]).read_text())
    assert m["job"]["id"] == second["job"] == first["job"] + 1
    assert all(t["cached"] and t["made_by"]["job"] == first["job"] and t["made_by"]["device"] == "cpu"
               for t in m["tasks"])
    assert not list(Path(second["output"]).parent.glob(".*"))  # no temporary files left


def test_review_writes_a_self_contained_page_from_jobs_specs_and_folders(home_with_models, write_spec, cli,
                                                                         tmp_path):
    a, b = render_json(cli, variant(write_spec, 3)), render_json(cli, variant(write_spec, 4))
    out = tmp_path / "page"
    code, stdout, err = cli("review", str(a["job"]), variant(write_spec, 4), "--out", out)
    assert code == 0, err
    page = out / "index.html"
    assert stdout.strip() == str(page)
    text = page.read_text()
    media = sorted(p.name for p in (out / "media").iterdir())
    assert media == [f"job{a['job']}-seed3.contact.png", f"job{a['job']}-seed3.manifest.json",
                     f"job{a['job']}-seed3.mp4",
                     f"job{b['job']}-seed4.contact.png", f"job{b['job']}-seed4.manifest.json",
                     f"job{b['job']}-seed4.mp4"]
    assert sha(out / "media" / f"job{a['job']}-seed3.mp4") == sha(a["output"])
    assert text.count("<video ") == 2 and text.count('class="sheets"') == 1
    # Every reference is a relative file inside the folder: nothing is fetched from a network.
    refs = re.findall(r'(?:src|href)="([^"]+)"', text)
    assert refs and all((out / r).is_file() for r in refs), refs
    assert "http://" not in text and "https://" not in text and "//" not in "".join(refs)
    # The differences table names the swept setting with both values, and only what differs.
    table = text[text.index("<table>"):text.index("</table>")]
    assert "keyframe[0].seed</td><td>3</td><td>4</td>" in table
    assert "keyframe[1].seed</td><td>3</td><td>4</td>" in table
    assert "keyframe[0].prompt" not in table and "fps" not in table

    # A folder of renders: every manifest under it.
    folder = tmp_path / "by-folder"
    code, _, err = cli("review", Path(a["output"]).parent, "--out", folder)
    assert code == 0, err
    assert (folder / "index.html").read_text().count("<video ") == 2


def test_review_rejects_what_it_cannot_review_with_exit_2(home_with_models, write_spec, cli, tmp_path):
    code, out, err = cli("review", "42", "--out", tmp_path / "p")
    assert code == 2 and "farm: " in err and "render something first" in err
    render_json(cli, variant(write_spec, 3))
    empty = tmp_path / "empty"
    empty.mkdir()
    for target, words in (("42", "no job 42"), (tmp_path / "nothing-here", "no such job id, file or folder"),
                          (write_spec(HOLD, "never.toml"), "no finished render"), (empty, "no render manifests")):
        code, out, err = cli("review", target, "--out", tmp_path / "p")
        assert code == 2 and words in err and "Traceback" not in err, err
    assert not (tmp_path / "p" / "index.html").exists()


def test_review_makes_a_browser_playable_preview_of_h265(home_with_models, write_spec, cli, tmp_path):
    text = HOLD.replace('out = "out/small.mp4"', 'out = "out/small.mp4"\ncodec = "h265"')
    result = render_json(cli, variant(write_spec, 3, text=text))
    code, _, err = cli("review", str(result["job"]), "--out", tmp_path / "page")
    assert code == 0, err
    preview = tmp_path / "page" / "media" / f"job{result['job']}-seed3.preview.webm"
    info = encode.probe(preview)
    assert (info["codec"], info["frames"], info["width"], info["height"]) == ("vp9", 18, 64, 64)
    assert 'src="media/job1-seed3.preview.webm"' in (tmp_path / "page" / "index.html").read_text()


def test_a_job_rendered_over_is_reviewed_from_the_cache(home_with_models, write_spec, cli, tmp_path):
    """Job 1's output path was rendered again from an edited spec: its own video comes from the cache."""
    first = render_json(cli, variant(write_spec, 3))
    render_json(cli, variant(write_spec, 3, text=HOLD.replace("a red boat", "a green boat")))
    job1 = json.loads(Path(first["manifest"]).read_text())  # now job 2's manifest: same path
    assert job1["job"]["id"] == 2
    code, _, err = cli("review", "1", "2", "--out", tmp_path / "page")
    assert code == 0, err
    media = tmp_path / "page" / "media"
    m1 = json.loads((media / "job1-seed3.manifest.json").read_text())
    assert m1["job"]["id"] == 1 and sha(media / "job1-seed3.mp4") == m1["video"]["sha256"]
    assert sha(first["output"]) != m1["video"]["sha256"]  # the file on disk is job 2's now
    assert sha(media / "job1-seed3.mp4") != sha(media / "job2-seed3.mp4")
    assert Image.open(media / "job1-seed3.contact.png").size == sheet.layout(3, 64, 64).size
    assert "keyframe[0].prompt" in (tmp_path / "page" / "index.html").read_text()


def _fake(job, seed, model):
    params = {"frame": 0, "prompt": "p", "seed": seed, "steps": 2, "guidance": 1.0, "negative_prompt": "",
              "width": 64, "height": 64, "model": {"name": model, "identity": f"builtin:{model}@recipe1",
                                                   "pipeline": "StableDiffusionPipeline"}}
    return {"job": {"id": job, "name": "s"}, "tasks": [{"name": "keyframe[0]", "kind": "keyframe", "params": params}]}


def test_a_seed_by_model_sweep_is_laid_out_as_a_grid():
    renders = [_fake(i, seed, model) for i, (seed, model) in
               enumerate([(s, m) for m in ("tiny", "big") for s in (1, 2, 3)], 1)]
    diff = review.differences(renders)
    assert list(diff) == ["keyframe[0].model", "keyframe[0].seed"]
    (rname, rows), (cname, cols), cells = review.grid(renders, review.axes(renders, diff))
    assert (rname, cname) == ("model", "seed") and len(rows) == 2 and cols == ["1", "2", "3"]
    assert cells[("big (recipe1)", "3")] == 5
    assert review.grid(renders[:5], review.axes(renders[:5], review.differences(renders[:5]))) is None  # not full


def test_review_serve_prints_the_url_serves_ranges_and_exits_0_on_ctrl_c(home_with_models, write_spec, cli,
                                                                        tmp_path):
    result = render_json(cli, variant(write_spec, 3))
    proc = subprocess.Popen([sys.executable, "-m", "farm.cli", "review", str(result["job"]), "--out",
                             str(tmp_path / "page"), "--serve"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=os.environ.copy())
    try:
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/index\.html", url), (url, proc.stderr.read())
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200 and "<video " in r.read().decode()
        video = url.replace("index.html", f"media/job{result['job']}-seed3.mp4")
        req = urllib.request.Request(video, headers={"Range": "bytes=100-199"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
            assert r.status == 206 and r.headers["Content-Range"].endswith(f"/{Path(result['output']).stat().st_size}")
        assert body == Path(result["output"]).read_bytes()[100:200]
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err, err


def test_a_sidecar_that_cannot_be_written_is_reported_and_the_video_kept(home_with_models, write_spec, cli,
                                                                        monkeypatch):
    import errno

    def full(image, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(sheet, "write", full)
    code, out, err = cli("render", variant(write_spec, 3), "--json", "--quiet")
    assert code == 1 and out == "" and "Traceback" not in err
    assert "contact sheet and manifest could not be written" in err and "No space left" in err
    folder = write_spec(HOLD).parent / "out"
    assert encode.probe(folder / "seed3.mp4")["frames"] == 18  # the render itself is complete
    assert not list(folder.glob("*.manifest.json")) and not list(folder.glob(".*"))
