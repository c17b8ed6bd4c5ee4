"""Time: segments at the model's own frame rate and window, chains of clips, retiming to the
shot's fps, the family limits checked at validation, and `farm plan`."""

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import crash_clip_once
from farm import models
from farm.errors import FarmError, SpecError
from farm.media import encode
from farm.models import families, pipeline, timing
from farm.plan import plan
from farm.queue.cache import Cache
from farm.queue.queue import Queue
from farm.run.render import render
from farm.run.worker import Worker
from farm.spec import spec

# Every motion twin (each family's, found from the presets: a new family's twin joins by itself)
MOTION_TWINS = sorted({models.load_preset(n)["twin"] for n in models.preset_names()
                       if models.load_preset(n)["role"] == "motion" and models.load_preset(n).get("twin")})

SHOT = """
[shot]
name = "{name}"
fps = {fps}
{size}
seed = 1
out = "out/{name}.mp4"
retries = 0

[keyframes]
model = "tiny"
steps = 1

[motion]
model = "{motion}"
steps = 1
{motion_extra}

[[frames]]
prompt = "a red boat"
seconds = {seconds}

[[frames]]
prompt = "a blue boat"
seconds = {last_seconds}
"""


def shot(name="t", fps=24, motion="tiny-wan", seconds=2, motion_extra="", size=(32, 32), last_seconds=0.25):
    """Two keyframes and a motion model; `size=None` leaves the size to the presets."""
    return SHOT.format(name=name, fps=fps, motion=motion, seconds=seconds, motion_extra=motion_extra,
                       size=f"size = [{size[0]}, {size[1]}]" if size else "", last_seconds=last_seconds)


@pytest.fixture
def spy(monkeypatch):
    """Record every generation call: (family, frames asked, first image, last image or None)."""
    calls = []
    condition = pipeline.condition

    def wrapped(family, params, first, last, n):
        calls.append((family.pipeline, n, np.asarray(first).copy(), None if last is None else np.asarray(last).copy()))
        return condition(family, params, first, last, n)

    monkeypatch.setattr(pipeline, "condition", wrapped)
    return calls


def worker_for(home):
    return Worker(Queue(home / "queue.db"), Cache(home / "cache"))


def frames_in(worker, key):
    return worker.runner.frames_of(key)


# --- the arithmetic ---------------------------------------------------------------------------


def test_every_motion_preset_states_its_time_and_twins_keep_their_familys():
    declared = {}
    for name in models.preset_names():
        preset = models.load_preset(name)
        if preset["role"] != "motion":
            continue
        assert "fps" in preset and "max_frames" in preset, name
        declared[name] = (preset["fps"], preset["max_frames"])
        text = (models.presets_dir() / f"{name}.toml").read_text()
        assert "Time" in text, f"{name}: say where fps and max_frames come from"
    assert declared["wan21-flf2v"] == declared["wan22-i2v"] == (16, 81)
    assert declared["cogvideox-i2v"] == (16, 81) and declared["ltx-video"] == (25, 257)
    for name, value in declared.items():
        twin = models.load_preset(name)["twin"]
        assert declared[twin] == value, (name, twin)
    assert declared["tiny-video"] == declared["tiny-wan"]


def test_two_seconds_at_24_on_a_16_fps_family_is_32_frames_of_motion_retimed_to_48():
    ref = models.resolve("tiny-wan")
    t = timing.segment(ref, 48, 24)  # 2 s of a 24-fps shot
    assert t.clips == (33,) and t.native == 33 and t.rate == 16  # 32 frames of motion + the next keyframe
    first_only = timing.segment(models.resolve("tiny-cogvideox"), 48, 24)
    assert first_only.clips == (33,) and first_only.rate == Fraction(33, 2)  # 8k+1, no end frame


def test_the_documented_example_twelve_seconds_at_24_on_wan_21():
    t = timing.segment(models.resolve("tiny-wan"), 12 * 24, 24)
    assert t.clips == (65, 65, 65) and t.native == 193 and t.rate == 16
    assert all(c <= 81 and (c - 1) % 4 == 0 for c in t.clips)
    assert "3 clips of 65 frames" in (Path(models.presets_dir()).parent / "docs" / "time.md").read_text()


def test_chains_fit_every_window_and_keep_the_rule():
    for name in MOTION_TWINS:
        ref = models.resolve(name)
        rule, (fps, window) = timing.shape(ref), timing.model_time(ref)
        for frames, shot_fps in ((1, 24), (7, 24), (48, 8), (300, 30), (1000, 24), (37, 23.976)):
            t = timing.segment(ref, frames, shot_fps)
            assert all(rule.valid_frames(c) and c <= window for c in t.clips), (name, frames, t.clips)
            want = float(Fraction(frames) / Fraction(shot_fps).limit_denominator(1001) * Fraction(fps))
            got = t.native - 1 if t.ends else t.native
            shortest = t.clips == (rule.offset + rule.step,)  # a clip is at least one step of the rule
            assert abs(got - want) <= rule.step / 2 + 1 or shortest, (name, frames, shot_fps, t.clips)


def test_twin_shapes_match_the_built_models():
    for family in families.FAMILIES:
        recipe, want = family.twin.recipe, family.twin.shapes
        if not want:
            continue
        pipe = family.twin.build()
        config = dict((pipe.transformer).config)
        for key, value in want.items():
            assert list(np.atleast_1d(config[key])) == list(np.atleast_1d(value)), (recipe, key)


# --- retiming ---------------------------------------------------------------------------------


def ramp(folder: Path, count: int) -> list[Path]:
    """Native frames whose grey level is 7 x their index: time, readable from any pixel."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        paths.append(folder / f"{i:06d}.png")
        Image.new("RGB", (32, 32), (7 * i,) * 3).save(paths[-1])
    return paths


@pytest.mark.parametrize("mode", ["interpolate", "blend", "nearest"])
def test_retiming_keeps_the_models_motion_speed(tmp_path, mode):
    from farm.plan.tasks import CHAIN, Segment
    from farm.run.runner import _retime

    native = ramp(tmp_path / "native", 33)  # 2 s at 16 fps, and the next keyframe
    out = tmp_path / "out"
    out.mkdir()
    segment = Segment(CHAIN, frame=0, frames=48, fps=24, width=32, height=32, clips=(33,), native=33, rate="16",
                      ends=True, model_fps=16, retime=mode)
    _retime(native, segment, out)
    frames = sorted(out.glob("*.png"))
    assert len(frames) == 48
    levels = [int(np.asarray(Image.open(p))[16, 16, 0]) for p in frames]
    for k, level in enumerate(levels):  # shot frame k shows native time k * 16 / 24
        t = k * 16 / 24
        want = 7 * round(t) if mode == "nearest" else 7 * t
        assert abs(level - want) <= 1.5, (mode, k, level, want)


def test_a_segment_is_generated_at_the_models_rate_and_retimed(write_spec, home_with_models, spy):
    result = render(write_spec(shot(seconds=2)), worker=(w := worker_for(home_with_models)))
    assert [n for _, n, _, _ in spy] == [33, 5]  # 2 s: 32 + 1 at 16 fps; 0.25 s: 4 + 1
    assert encode.probe(Path(result["output"]))["frames"] == 48 + 6
    p = plan.build(spec.load(write_spec(shot(seconds=2))))
    assert len(frames_in(w, p.by_name()["segment[0]"].key)) == 48


# --- chains of clips --------------------------------------------------------------------------


def test_a_long_segment_is_a_chain_of_clips(write_spec, home_with_models, spy):
    path = write_spec(shot(seconds=6, fps=8))  # 6 s at 16 fps: 96 + 1 frames, more than 81
    p = plan.build(spec.load(path))
    t = p.by_name()
    assert [x.name for x in p.tasks] == ["keyframe[0]", "keyframe[1]", "segment[0].clip[0]", "segment[0].clip[1]",
                                         "segment[0]", "segment[1]", "assemble"]
    assert t["segment[0].clip[0]"].deps == ("keyframe[0]",)
    assert t["segment[0].clip[1]"].deps == ("segment[0].clip[0]", "keyframe[1]")
    assert t["segment[0]"].deps == ("segment[0].clip[0]", "segment[0].clip[1]")
    w = worker_for(home_with_models)
    result = render(path, worker=w)
    assert encode.probe(Path(result["output"]))["frames"] == 48 + 2
    (_, n0, first0, last0), (_, n1, first1, last1) = spy[:2]
    assert (n0, n1) == (49, 49) and last0 is None  # the first clip runs free of an end frame
    keyframe0 = np.asarray(Image.open(w.runner.output(t["keyframe[0]"].key) / "image.png").convert("RGB"))
    keyframe1 = np.asarray(Image.open(w.runner.output(t["keyframe[1]"].key) / "image.png").convert("RGB"))
    clip0_last = np.asarray(Image.open(frames_in(w, t["segment[0].clip[0]"].key)[-1]).convert("RGB"))
    assert np.array_equal(first0, keyframe0)
    assert np.array_equal(first1, clip0_last)  # the next clip continues from the last frame
    assert np.array_equal(last1, keyframe1)  # ...and the last one ends on the next keyframe
    assert len(frames_in(w, t["segment[0]"].key)) == 48


def test_editing_the_next_keyframe_reruns_only_the_last_clip(write_spec, home_with_models):
    a = plan.build(spec.load(write_spec(shot(seconds=6, fps=8), "a.toml")))
    b = plan.build(spec.load(write_spec(shot(seconds=6, fps=8).replace("a blue boat", "a green boat"), "b.toml")))
    kb = {x.name: x.key for x in b.tasks}
    assert sorted(x.name for x in a.tasks if x.key != kb[x.name]) == [
        "assemble", "keyframe[1]", "segment[0]", "segment[0].clip[1]", "segment[1]"]


def test_a_crash_mid_chain_resumes_at_the_clip(write_spec, home_with_models, monkeypatch):
    path = write_spec(shot(seconds=6, fps=8))
    crash_clip_once(monkeypatch)
    w = worker_for(home_with_models)
    with pytest.raises(FarmError) as e:
        render(path, worker=w)
    assert e.value.code == 1 and "segment[0].clip[1]" in e.value.message
    result = render(path, worker=w)
    rows = {r["name"]: r for r in w.queue.tasks(result["job"])}
    assert rows["segment[0].clip[0]"]["cached"] == 1 and rows["keyframe[0]"]["cached"] == 1
    assert rows["segment[0].clip[1]"]["cached"] == 0
    assert encode.probe(Path(result["output"]))["frames"] == 50


# --- retime settings --------------------------------------------------------------------------


def test_retime_is_set_in_motion_per_frame_and_in_a_sweep(write_spec):
    s = spec.load(write_spec(shot(motion_extra='retime = "blend"').replace(
        'seconds = 0.25', 'seconds = 0.25\nmotion = { retime = "nearest" }')))
    assert [f.motion.retime for f in s.panels] == ["blend", "nearest"]
    assert spec.load(write_spec(shot())).panels[0].motion.retime == "interpolate"
    variants = spec.load_all(write_spec(shot() + '\n[sweep]\n"motion.retime" = ["interpolate", "nearest"]\n'))
    keys = [plan.build(v).by_name()["segment[0]"].key for v in variants]
    assert len(variants) == 2 and keys[0] != keys[1]
    with pytest.raises(SpecError) as e:
        spec.load(write_spec(shot(motion_extra='retime = "rife"')))
    assert "motion.retime" in str(e.value) and "'interpolate'" in str(e.value)


# --- limits at validation ---------------------------------------------------------------------


def test_sizes_a_family_cannot_generate_are_refused_with_the_nearest_valid(write_spec, cli):
    code, out, err = cli("render", write_spec(shot(motion="tiny-ltx").replace("[32, 32]", "[48, 48]")))
    assert code == 2 and "multiples of 32" in err and "nearest valid: 32x32 or 64x64" in err
    code, out, err = cli("render", write_spec(shot(motion="tiny-cogvideox").replace("[32, 32]", "[160, 144]")))
    assert code == 2 and "at most 128x128" in err and "rotary" in err and "nearest valid: 128x128" in err
    assert "Traceback" not in err


def test_a_window_that_breaks_the_frame_rule_is_refused(tmp_path, monkeypatch, write_spec):
    folder = tmp_path / "presets"
    folder.mkdir()
    for name in ("tiny", "tiny-ltx"):
        (folder / f"{name}.toml").write_text((models.presets_dir() / f"{name}.toml").read_text())
    text = (folder / "tiny-ltx.toml").read_text().replace("max_frames = 257", "max_frames = 100")
    (folder / "tiny-ltx.toml").write_text(text)
    monkeypatch.setenv("FARM_PRESETS", str(folder))
    with pytest.raises(SpecError) as e:
        spec.load(write_spec(shot(motion="tiny-ltx")))
    assert "max_frames 100" in str(e.value) and "97 or 105" in str(e.value)


# --- farm plan --------------------------------------------------------------------------------


def test_plan_says_what_render_then_runs(write_spec, home_with_models, cli):
    path = write_spec(shot(seconds=6, fps=8))
    code, out, err = cli("plan", path, "--json")
    assert code == 0, err
    first = json.loads(out)
    assert first["run"] == 7 and first["cached"] == 0 and first["estimate_s"] is None
    seg = next(t for t in first["tasks"] if t["name"] == "segment[0]")
    assert seg["clips"] == [{"frames": 49, "fps": 16.0}, {"frames": 49, "fps": 16.0}]
    assert set(first["tasks"][0]) == {"name", "kind", "model", "cached", "estimate_s", "memory_bytes"}
    assert not (home_with_models / "queue.db").exists()  # planning enqueues nothing
    code, out, err = cli("render", path, "--json")
    assert code == 0 and json.loads(out)["tasks"]["run"] == 7
    path.write_text(path.read_text().replace("a red boat", "a grey boat"))
    code, out, err = cli("plan", path, "--json")
    planned = json.loads(out)
    # keyframe[0], both clips of its chain, the retiming and the assembly; estimated from history
    assert planned["run"] == 5 and planned["estimate_s"] is not None
    assert all(t["estimate_s"] is not None for t in planned["tasks"])
    code, out, err = cli("render", path, "--json")
    assert code == 0 and json.loads(out)["tasks"]["run"] == planned["run"]
    code, out, err = cli("plan", path)
    assert code == 0 and "7 cached" in out and "0 to run" in out and "49@16fps + 49@16fps" in out
