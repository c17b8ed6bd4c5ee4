"""End to end: spec -> queue -> tiny diffusers models -> ffmpeg, checked on the files and rows."""

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from conftest import EXAMPLE, SMALL
from farm import home, models
from farm.media import encode
from farm.queue import digest as hasher


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def render_json(cli, path, *extra):
    code, out, err = cli("render", path, "--json", *extra)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1, out  # exactly one JSON object on stdout, progress or not
    return json.loads(lines[0])


def executed(job):
    db = sqlite3.connect(home.db_path())
    return sorted(n for (n,) in db.execute("SELECT name FROM tasks WHERE job_id = ? AND cached = 0", (job,)))


def test_example_renders_to_the_frames_fps_and_size_of_the_spec(home_with_models, cli, tmp_path):
    spec_path = tmp_path / "example" / EXAMPLE.name
    shutil.copytree(EXAMPLE.parent, spec_path.parent, ignore=shutil.ignore_patterns("renders"))
    result = render_json(cli, spec_path)
    video = spec_path.parent / "renders" / "lighthouse.mp4"
    assert result["output"] == str(video) and video.is_file()
    info = encode.probe(video)
    assert info == {"codec": "h264", "width": 128, "height": 128, "fps": 12.0, "frames": 48}  # (1.5+1.5+1)*12
    assert result["frames"] == 48 and result["job"] == 1
    assert result["tasks"] == {"total": 7, "run": 7, "cached": 0}
    if shutil.which("ffprobe"):  # the system's ffprobe agrees, where there is one
        import subprocess

        count = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                                "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", str(video)],
                               capture_output=True, text=True).stdout.strip()
        assert int(count) == 48


def test_rerender_runs_no_model_and_is_byte_identical(home_with_models, write_spec, cli, monkeypatch):
    path = write_spec(SMALL)
    first = render_json(cli, path)
    digest = sha(first["output"])

    def no_models(ref, *args):
        raise AssertionError(f"a model was loaded on a re-render: {ref.name}")

    def no_decoding(path):
        raise AssertionError(f"a cached video was decoded again: {path}")

    monkeypatch.setattr(models, "load_pipeline", no_models)
    monkeypatch.setattr(encode, "probe", no_decoding)  # the assembly recorded what decoding found
    hashed, hash_file = [], hasher._hash
    monkeypatch.setattr(hasher, "_hash", lambda p: hashed.append(Path(p).name) or hash_file(p))
    hasher._DIGESTS.clear()  # as a fresh process: the first render's hashes are not remembered
    Path(first["output"]).unlink()  # even a deleted output comes back from the cache
    second = render_json(cli, path)
    assert hashed.count("video.mp4") == 1  # verified when its task was answered, not again to publish
    assert second["tasks"] == {"total": 7, "run": 0, "cached": 7}
    assert sha(second["output"]) == digest
    assert executed(second["job"]) == []
    manifest = json.loads(Path(second["manifest"]).read_text())
    assert (manifest["video"]["frames"], manifest["video"]["width"], manifest["video"]["fps"]) == (18, 64, 8.0)


def test_an_encoder_that_drops_frames_fails_the_assembly(home_with_models, write_spec, cli, monkeypatch):
    """The assembly decodes what it encoded and compares the frame count with the plan's."""
    real = encode.probe
    monkeypatch.setattr(encode, "probe", lambda path: {**real(path), "frames": 17})
    path = write_spec(SMALL)
    code, out, err = cli("render", path, "--json")
    assert code == 1 and "the encoder wrote 17 frames into video.mp4; the plan has 18" in err, err
    assert not (path.parent / "out" / "small.mp4").exists()


def test_editing_one_prompt_reruns_exactly_the_affected_tasks(home_with_models, write_spec, cli):
    render_json(cli, write_spec(SMALL))
    result = render_json(cli, write_spec(SMALL.replace("a blue boat", "a blue boat at night")))
    assert executed(result["job"]) == ["assemble", "keyframe[1]", "segment[0]", "segment[1]"]
    assert result["tasks"] == {"total": 7, "run": 4, "cached": 3}


def test_output_is_deterministic_across_fresh_homes(built_models, write_spec, cli, tmp_path, monkeypatch):
    path = write_spec(SMALL)
    outputs = []
    for n in range(2):
        fresh = tmp_path / f"home{n}"
        shutil.copytree(built_models, fresh / "models")
        monkeypatch.setenv("FARM_HOME", str(fresh))
        result = render_json(cli, path)
        frames = sorted((fresh / "cache").rglob("*.png"))
        outputs.append(([f.relative_to(fresh) for f in frames], [sha(f) for f in frames], sha(result["output"])))
    assert outputs[0] == outputs[1]
    assert len(outputs[0][0]) == 3 + 18  # three keyframes, 18 segment frames


def test_task_order_does_not_change_pixels(home_with_models, write_spec, cli, tmp_path, monkeypatch):
    """A keyframe drawn alone equals the same keyframe drawn after others (per-task seeds)."""
    both = render_json(cli, write_spec(SMALL))
    one = SMALL.split("[[frames]]")[0] + '[[frames]]\nprompt = "a blue boat"\nseconds = 0.5\n'
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "other"))
    shutil.copytree(home_with_models / "models", tmp_path / "other" / "models")
    alone = render_json(cli, write_spec(one, "one.toml"))
    db_a, db_b = (sqlite3.connect(h / "queue.db") for h in (home_with_models, tmp_path / "other"))
    key_a = db_a.execute("SELECT key FROM tasks WHERE job_id=? AND name='keyframe[1]'", (both["job"],)).fetchone()[0]
    key_b = db_b.execute("SELECT key FROM tasks WHERE job_id=? AND name='keyframe[0]'", (alone["job"],)).fetchone()[0]
    assert key_a == key_b
    a = home_with_models / "cache" / key_a[:2] / key_a / "image.png"
    b = tmp_path / "other" / "cache" / key_b[:2] / key_b / "image.png"
    assert sha(a) == sha(b)


def test_animatic_hold_and_crossfade(home_with_models, write_spec, cli):
    from PIL import Image, ImageChops

    text = SMALL.replace('model = "tiny-video"', 'model = "crossfade"')
    result = render_json(cli, write_spec(text))
    assert result["frames"] == 18 and executed(result["job"]).count("segment[0]") == 1
    db = sqlite3.connect(home.db_path())
    keys = dict(db.execute("SELECT name, key FROM tasks WHERE job_id = ?", (result["job"],)).fetchall())
    cache = home.cache_dir()

    def img(key, name):
        return Image.open(cache / key[:2] / key / name).convert("RGB")

    seg = sorted((cache / keys["segment[0]"][:2] / keys["segment[0]"]).glob("*.png"))
    assert len(seg) == 8
    k0, k1 = img(keys["keyframe[0]"], "image.png"), img(keys["keyframe[1]"], "image.png")
    first, mid = Image.open(seg[0]).convert("RGB"), Image.open(seg[4]).convert("RGB")
    assert ImageChops.difference(first, k0).getbbox() is None  # starts on its keyframe
    halfway = Image.blend(k0, k1, 0.5)  # frame 4 of 8 is half-way to the next keyframe
    diff = max(max(b) for b in ImageChops.difference(mid, halfway).getextrema())
    assert diff <= 3
    last = sorted((cache / keys["segment[2]"][:2] / keys["segment[2]"]).glob("*.png"))
    assert len(last) == 6  # the last keyframe is held for its 0.75 s
    assert all(ImageChops.difference(Image.open(p).convert("RGB"), img(keys["keyframe[2]"], "image.png")).getbbox()
               is None for p in last)


@pytest.mark.parametrize("codec,out,ffcodec", [
    ("h265", "out/x.mp4", "hevc"), ("prores", "out/x.mov", "prores"), ("av1", "out/x.mkv", "av1"),
])
def test_other_codecs(home_with_models, write_spec, cli, codec, out, ffcodec):
    text = SMALL.replace('model = "tiny-video"', 'model = "hold"').replace(
        'out = "out/small.mp4"', f'out = "{out}"\ncodec = "{codec}"')
    result = render_json(cli, write_spec(text))
    info = encode.probe(Path(result["output"]))
    assert (info["codec"], info["frames"], info["width"], info["height"]) == (ffcodec, 18, 64, 64)


def test_png_sequence(home_with_models, write_spec, cli):
    text = SMALL.replace('model = "tiny-video"', 'model = "hold"').replace(
        'out = "out/small.mp4"', 'out = "out/frames"\ncodec = "png"')
    result = render_json(cli, write_spec(text))
    frames = sorted(Path(result["output"]).glob("*.png"))
    assert result["frames"] == 18 and len(frames) == 18 and frames[0].name == "000000.png"


def test_human_output_is_the_path(home_with_models, write_spec, cli):
    code, out, err = cli("render", write_spec(SMALL), "--quiet")
    assert code == 0 and out.strip().endswith("out/small.mp4") and err == ""


def test_a_failing_model_fails_the_job_with_its_error(home_with_models, write_spec, cli, monkeypatch):
    from farm.models import pipeline
    from farm.queue import queue

    monkeypatch.setattr(queue, "BACKOFF_CAP", 0)
    calls = []

    def broken(pipe, params, on_step=None):
        calls.append(params["prompt"])
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(pipeline, "keyframe", broken)
    code, out, err = cli("render", write_spec(SMALL), "--json")
    assert code == 1 and out == ""
    assert "failed at keyframe[0]" in err and "illegal memory access" in err and "Traceback" not in err
    db = sqlite3.connect(home.db_path())
    state, error = db.execute("SELECT state, error FROM jobs").fetchone()
    assert state == "failed" and "illegal memory access" in error
    assert db.execute("SELECT attempts, state FROM tasks WHERE name = 'keyframe[0]'").fetchone() == (3, "failed")
    assert len(calls) == 3  # retried up to max_attempts, then failed


def test_ffmpeg_failure_is_reported_with_its_stderr(home_with_models, write_spec, cli, monkeypatch, tmp_path):
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\necho 'Unknown encoder libx999' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("FARM_FFMPEG", str(fake))
    text = SMALL.replace('model = "tiny-video"', 'model = "hold"')
    code, out, err = cli("render", write_spec(text))
    assert code == 1 and "ffmpeg failed" in err and "Unknown encoder libx999" in err
    assert not list((write_spec(text).parent / "out").glob("*.mp4"))  # nothing half-written


CACHED_RENDER = """
import json, sys
from farm.cli import main
try:
    main(["render", sys.argv[1], "--json", "--quiet"])
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)
print(json.dumps({"code": code, "imported": heavy}))
"""


def test_a_cached_rerender_imports_no_model_library(home_with_models, write_spec, cli):
    """Nothing changed, nothing loaded: `farm render` answered wholly from the cache costs
    what `farm status` does, not torch's and diffusers' imports."""
    import subprocess
    import sys

    path = write_spec(SMALL)
    first = render_json(cli, path)
    run = subprocess.run([sys.executable, "-c", CACHED_RENDER, str(path)], capture_output=True, text=True)
    lines = run.stdout.strip().splitlines()
    again, outcome = json.loads(lines[0]), json.loads(lines[-1])
    assert outcome == {"code": 0, "imported": []}, run.stderr
    assert again["tasks"] == {"total": first["tasks"]["total"], "run": 0, "cached": first["tasks"]["total"]}
    assert sha(again["output"]) == sha(first["output"])
