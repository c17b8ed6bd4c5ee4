"""Sweeps: one spec, many variants, each its own job and output; shared tasks run once."""

import json
import shutil
import sqlite3
from pathlib import Path

from conftest import ROOT, SMALL
from farm import home
from farm.media import encode
from farm.models import pipeline
from farm.spec import spec


def test_sweep_example_renders_six_videos_and_runs_shared_tasks_once(home_with_models, cli, tmp_path, monkeypatch):
    folder = tmp_path / "jobs"
    shutil.copytree(ROOT / "jobs", folder, ignore=shutil.ignore_patterns("renders"))
    calls = {"keyframe": [], "segment": []}
    real_keyframe, real_clip = pipeline.keyframe, pipeline.clip

    def keyframe(pipe, params, on_step=None):
        calls["keyframe"].append((params["model"]["name"], params["seed"], params["prompt"]))
        return real_keyframe(pipe, params)

    def clip(pipe, params, first, last, frames, seed, on_step=None):
        calls["segment"].append(params["frame"])
        return real_clip(pipe, params, first, last, frames, seed)

    monkeypatch.setattr(pipeline, "keyframe", keyframe)
    monkeypatch.setattr(pipeline, "clip", clip)
    code, out, err = cli("render", folder / "sweep.toml", "--json")
    assert code == 0, err
    results = [json.loads(line) for line in out.strip().splitlines()]
    names = [r["name"] for r in results]
    assert names == [f"harbour-seed{s}-{m}" for s in (1, 2, 3) for m in ("tiny", "tiny-sdxl")]
    for r in results:
        assert Path(r["output"]) == folder / "renders" / f"{r['name']}.mp4"
        assert encode.probe(Path(r["output"]))["frames"] == 20  # (1 + 1 + 0.5) s x 8 fps
    # frame 0's keyframe depends on the swept seed and model: 6 draws; frame 1 has its own
    # seed: one draw per model; frame 2 is a picture: no draw.
    assert len(calls["keyframe"]) == 6 + 2 and len(set(calls["keyframe"])) == 8
    # segment 0 touches frame 0: 6; segment 1 runs from frame 1 (seed 11) to the picture: 2;
    # segment 2 loops on the picture with its own seed: 1.
    assert sorted(calls["segment"]) == [0] * 6 + [1] * 2 + [2]
    db = sqlite3.connect(home.db_path())
    assert db.execute("SELECT count(*) FROM jobs WHERE state = 'done'").fetchone()[0] == 6
    run = db.execute("SELECT count(DISTINCT key), count(*) FROM tasks WHERE cached = 0").fetchone()
    assert run[0] == run[1] == sum(r["tasks"]["run"] for r in results)  # no key ran twice
    assert sum(r["tasks"]["total"] for r in results) == 6 * 7

    code, out, err = cli("render", folder / "sweep.toml", "--quiet")  # again: every output from the cache
    assert code == 0 and out.strip().splitlines() == [r["output"] for r in results]
    assert len(calls["keyframe"]) == 8


def test_zipped_lists_advance_together(write_spec):
    text = SMALL + """
[sweep]
"shot.seed" = [4, 5]
"frames[0].prompt" = ["a red kite", "a green kite"]
"motion.steps" = [1, 3]
zip = [["shot.seed", "frames[0].prompt"]]
"""
    variants = spec.load_all(write_spec(text))
    assert [v.name for v in variants] == ["small-seed4-prompt1-steps1", "small-seed4-prompt1-steps3",
                                          "small-seed5-prompt2-steps1", "small-seed5-prompt2-steps3"]
    assert [(v.seed, v.panels[0].keyframe.prompt, v.panels[0].motion.steps) for v in variants] == [
        (4, "a red kite", 1), (4, "a red kite", 3), (5, "a green kite", 1), (5, "a green kite", 3)]
    assert variants[0].out.name == "small-seed4-prompt1-steps1.mp4"
    assert variants[3].panels[1].keyframe.seed == 5  # the swept shot seed reaches every frame


def test_sweep_mistakes_are_reported_at_once_with_their_keys(write_spec, cli):
    text = SMALL + """
[sweep]
"shot.seed" = 3
"scene.light" = [1, 2]
"frames[7].prompt" = ["x"]
"keyframes.model" = ["tiny", "tiny-nope"]
"motion.steps" = [1, 2]
zip = [["motion.steps", "keyframes.model", "shot.fps"]]
"""
    code, out, err = cli("render", write_spec(text))
    assert code == 2 and out == "" and "Traceback" not in err
    assert "sweep.shot.seed: expected a non-empty list" in err
    assert "sweep.scene.light: not a setting path" in err
    assert "shot.fps not swept" in err

    text = SMALL + '\n[sweep]\n"keyframes.model" = ["tiny", "tiny-nope"]\n"frames[7].prompt" = ["x"]\n'
    code, out, err = cli("render", write_spec(text))
    assert code == 2 and "sweep.frames[7].prompt: index [7] does not exist (there are 3)" in err

    text = SMALL + '\n[sweep]\n"keyframes.model" = ["tiny", "tiny-nope"]\n"shot.seed" = [1, 2]\n'
    code, out, err = cli("render", write_spec(text))
    assert code == 2 and "1 problem" in err  # once, naming the swept value that all failing variants share
    assert "sweep keyframes.model='tiny-nope' (2 of 4 variants): line 10: keyframes.model: unknown model" in err


def test_a_worker_keeps_at_most_max_warm_pipelines_loaded(home_with_models, write_spec, monkeypatch):
    """On a GPU only two pipelines stay loaded; a sweep over keyframe models then swaps the
    keyframe model and keeps the motion model (least recently used goes first)."""
    from farm.queue.cache import Cache
    from farm.queue.queue import Queue
    from farm.run.render import render_all
    from farm.run.worker import Worker

    text = '[shot]\nfps = 8\nsize = [32, 32]\n[motion]\nmodel = "tiny-video"\nsteps = 1\n' \
        '[[frames]]\nprompt = "a kite"\nseconds = 0.25\n' + \
        '\n[sweep]\n"keyframes.model" = ["tiny", "tiny-sdxl", "tiny"]\n"keyframes.steps" = [1, 2, 3]\n' \
        'zip = [["keyframes.model", "keyframes.steps"]]\n'
    worker = Worker(Queue(home.db_path()), Cache(home.cache_dir()), max_warm=2)
    evicted = []
    real = worker.runner.unload
    monkeypatch.setattr(worker.runner, "unload", lambda warm: (evicted.append(json.loads(warm)[0]), real(warm)))
    results = render_all(write_spec(text), worker=worker)
    assert len(results) == 3 and len(worker.runner.pipelines) == 2
    # tiny, tiny-video; then tiny-sdxl evicts tiny (tiny-video was used after it); then tiny evicts tiny-sdxl
    assert worker.runner.calls["load"] == 4
    assert [i.split("@")[0] for i in evicted] == ["builtin:text-to-image", "builtin:sdxl"]
