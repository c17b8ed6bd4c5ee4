"""Prompts and keyframes reach the pixels: farm renders with its trained miniatures (`mini`,
`mini-video`, presets/miniatures/) and every frame is read back by the world's own definition
(scripts/world.py): a keyframe shows its prompt, a segment starts on keyframe k, moves, and ends
on keyframe k+1, a chain is continuous at its joins, retiming keeps the speed of motion, and
animatics show the keyframes' objects."""

import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import crash_clip_once
from farm import models

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import eval_miniatures as ev  # noqa: E402
import world  # noqa: E402

pytestmark = [pytest.mark.skipif(not (models.presets_dir() / "miniatures" / "mini" / "model_index.json").is_file(),
                                reason="the miniatures are not trained (scripts/train_miniatures.py)")]

LEFT = "a red ball on the left, blue sky"
RIGHT = "a red ball on the right, blue sky"
MIDDLE = "a red ball in the middle, blue sky"
THRESHOLDS = {"background": 6, "colour": 6, "place": 6, "shape": 5}  # of 6 (the eval: 99.5/100/100/99% of 200)


def xs(frames):
    return [world.read(f).x for f in frames]


SAMPLE = ["a red ball on the left, blue sky", "a yellow box on the right, night sky",
          "a white triangle in the middle, grass", "a blue ball on the right, sand",
          "a purple box on the left, sunset", "a green triangle on the left, blue sky"]


def test_keyframes_show_their_prompts(tmp_path):
    """Six prompts, one keyframe each: thresholds below what the eval measured over 200
    (scripts/eval_miniatures.py; README, The miniatures), so that they hold for this sample."""
    images = ev.render_keyframes(tmp_path, [(p, i) for i, p in enumerate(SAMPLE)])
    right = {k: 0 for k in ("background", "colour", "shape", "place")}
    for prompt, image in zip(SAMPLE, images):
        for k, v in world.read(image).matches(prompt).items():
            right[k] += v
    assert right["background"] >= THRESHOLDS["background"] and right["colour"] >= THRESHOLDS["colour"], right
    assert right["place"] >= THRESHOLDS["place"] and right["shape"] >= THRESHOLDS["shape"], right


def test_a_segment_starts_on_keyframe_k_moves_and_ends_on_keyframe_k_plus_1(tmp_path):
    got = ev.render_motion(tmp_path, [LEFT, RIGHT], 1.0)
    (frames,) = got["segments"]
    assert len(frames) == 16  # 1 s at 16 fps; the 17th is keyframe k+1, the next segment's first
    judged = ev.judge_segment(frames, LEFT, RIGHT)
    assert judged["present"] and judged["starts"], judged
    x = xs(frames)
    assert x[-1] - x[0] > 0.35, x  # 15/16 of the way from 0.22 to 0.78 is 0.525
    assert world.read(frames[-1]).place == "on the right"


def test_editing_the_next_keyframes_prompt_makes_the_segment_end_on_the_new_picture(tmp_path):
    a = ev.render_motion(tmp_path, [LEFT, RIGHT], 1.0, drawn=True, name="a")
    b = ev.render_motion(tmp_path, [LEFT, MIDDLE], 1.0, drawn=True, name="b")
    assert a["tasks"]["keyframe[0]"].key == b["tasks"]["keyframe[0]"].key
    end_a, end_b = world.read(a["segments"][0][-1]), world.read(b["segments"][0][-1])
    assert (end_a.place, end_b.place) == ("on the right", "in the middle"), (end_a, end_b)


def test_a_chain_is_continuous_at_every_join_and_ends_on_the_next_keyframe(tmp_path):
    got = ev.render_motion(tmp_path, [LEFT, RIGHT], 6.0)  # 97 frames at 16 fps: two clips of 49
    tasks = got["tasks"]
    assert [n for n in tasks if n.startswith("segment[0].clip")] == ["segment[0].clip[0]", "segment[0].clip[1]"]
    (frames,) = got["segments"]
    assert len(frames) == 97
    judged = ev.judge_segment(frames, LEFT, RIGHT)
    assert judged["present"] and judged["starts"], judged
    assert judged["max_step"] <= 0.2, judged  # the join (frame 48) included
    assert world.read(frames[-1]).matches(RIGHT)["place"]


def test_a_crash_mid_chain_resumes_to_the_same_video(tmp_path, monkeypatch):
    from farm.errors import FarmError

    (tmp_path / "a").mkdir()
    clean = ev.render_motion(tmp_path / "a", [LEFT, RIGHT], 6.0)
    made = crash_clip_once(monkeypatch)
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home-b"))
    (tmp_path / "b").mkdir()
    with pytest.raises(FarmError):
        ev.render_motion(tmp_path / "b", [LEFT, RIGHT], 6.0)
    resumed = ev.render_motion(tmp_path / "b", [LEFT, RIGHT], 6.0)
    assert made == ["crashed"]
    assert len(resumed["shot"]) == len(clean["shot"])
    assert all(np.array_equal(np.asarray(p), np.asarray(q)) for p, q in zip(resumed["shot"], clean["shot"]))


def test_retiming_to_24_fps_interpolates_evenly_where_nearest_repeats(tmp_path):
    """2 s from the left to the right: 33 model frames at 16 fps, 48 shot frames at 24. `nearest`
    shows every second model frame twice (a step of 0 every third frame); `interpolate` moves
    the object at every shot frame."""
    steps = {}
    for retime in ("nearest", "interpolate"):
        got = ev.render_motion(tmp_path, [LEFT, RIGHT], 2.0, fps=24, retime=retime, name=retime)
        shot = got["shot"][:48]
        x = xs(shot)
        steps[retime] = np.diff(x)
    mean = np.mean(steps["nearest"][2:-2])
    still_nearest = int(np.sum(np.abs(steps["nearest"]) < 0.25 * mean))
    still_interp = int(np.sum(np.abs(steps["interpolate"]) < 0.25 * mean))
    assert still_nearest >= 12, steps["nearest"]  # about one step in three of 47
    assert still_interp <= 4, steps["interpolate"]


@pytest.mark.parametrize("motion", ["hold", "crossfade"])
def test_animatics_of_miniature_keyframes_show_the_same_objects(tmp_path, motion):
    got = ev.render_motion(tmp_path, [LEFT, "a red ball on the right, grass"], 1.0, drawn=True, motion=motion,
                           name=motion)
    k0, k1 = (world.read(k) for k in got["keyframes"])
    shot = got["shot"]
    first = world.read(shot[0])
    assert (first.background, first.colour, first.shape, first.place) == (k0.background, k0.colour, k0.shape, k0.place)
    if motion == "hold":
        assert all(np.array_equal(np.asarray(f), np.asarray(shot[0])) for f in shot[:16])
    else:  # the last frame of the segment is mostly keyframe k+1: its object, on its background
        last = world.read(shot[15])
        assert last.background == k1.background
        assert abs(last.x - k1.x) < abs(last.x - k0.x)


def test_the_bundled_example_shows_its_storyboard(tmp_path):
    """jobs/example.toml as shipped, rendered to its mp4 and decoded: a red ball on the left of
    a blue sky, on the right one second later, and in the middle of grass at the end (its third
    keyframe is a picture of the world in jobs/refs/)."""
    import shutil
    import subprocess

    from PIL import Image

    from farm.media import encode
    from farm.run.render import render

    shutil.copytree(ROOT / "jobs", tmp_path / "jobs", ignore=shutil.ignore_patterns("renders"))
    result = render(tmp_path / "jobs" / "example.toml")
    video = Path(result["output"])
    assert video.name == "red-ball.mp4" and video.is_file()
    frames = tmp_path / "frames"
    frames.mkdir()
    subprocess.run([encode.executable(), "-v", "error", "-i", str(video), str(frames / "%03d.png")], check=True)
    shot = [Image.open(p).convert("RGB") for p in sorted(frames.glob("*.png"))]
    assert len(shot) == 48  # 3 s at 16 fps
    start, second, end = world.read(shot[0]), world.read(shot[16]), world.read(shot[-1])
    assert (start.background, start.colour, start.place) == ("blue sky", "red", "on the left"), start
    assert (second.background, second.place) == ("blue sky", "on the right"), second
    assert (end.background, end.place) == ("grass", "in the middle"), end
    x = xs(shot[:17])
    assert x[16] - x[0] > 0.35, x
