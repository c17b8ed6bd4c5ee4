"""The task graph: its shape, its dependencies, and keys that change exactly downstream of an edit."""

from conftest import SMALL
from farm.plan import plan
from farm.spec import spec


def build(write_spec, text, name="shot.toml"):
    return plan.build(spec.load(write_spec(text, name)))


def test_shape_and_dependencies(write_spec):
    p = build(write_spec, SMALL)
    names = [t.name for t in p.tasks]
    assert names == ["keyframe[0]", "keyframe[1]", "keyframe[2]", "segment[0]", "segment[1]", "segment[2]",
                     "assemble"]
    t = p.by_name()
    assert t["segment[0]"].deps == ("keyframe[0]", "keyframe[1]")
    assert t["segment[2]"].deps == ("keyframe[2]",)  # the last frame's segment holds or animates it alone
    assert t["assemble"].deps == ("segment[0]", "segment[1]", "segment[2]")
    assert t["segment[1]"].params.first == t["keyframe[1]"].key
    assert t["segment[1]"].params.last == t["keyframe[2]"].key
    # 8 fps: 1.0 s, 0.5 s, 0.75 s -> boundaries 0, 8, 12, 18
    assert [t[f"segment[{i}]"].params.frames for i in range(3)] == [8, 4, 6]
    assert t["assemble"].params.frames == 18
    assert t["keyframe[2]"].model is None and t["keyframe[0]"].model.startswith("builtin:text-to-image")
    assert len({x.key for x in p.tasks}) == 7


def test_keys_are_stable_and_location_free(write_spec):
    a = build(write_spec, SMALL, "a.toml")
    b = build(write_spec, SMALL.replace('out = "out/small.mp4"', 'out = "elsewhere/other.mp4"'), "b.toml")
    assert [t.key for t in a.tasks] == [t.key for t in b.tasks]


def changed(a, b):
    kb = {t.name: t.key for t in b.tasks}
    return sorted(t.name for t in a.tasks if t.key != kb[t.name])


def test_editing_one_prompt_changes_only_what_it_touches(write_spec):
    a = build(write_spec, SMALL, "a.toml")
    b = build(write_spec, SMALL.replace("a blue boat", "a green boat"), "b.toml")
    assert changed(a, b) == ["assemble", "keyframe[1]", "segment[0]", "segment[1]"]


def test_swapping_the_keyframe_model_or_seed(write_spec, tmp_path):
    a = build(write_spec, SMALL, "a.toml")
    b = build(write_spec, SMALL.replace("seed = 3", "seed = 4"), "b.toml")
    # the picture keyframe ignores seeds; everything drawn or moved depends on it
    assert changed(a, b) == ["assemble", "keyframe[0]", "keyframe[1]", "segment[0]", "segment[1]", "segment[2]"]
    c = build(write_spec, SMALL.replace('[motion]\nmodel = "tiny-video"', '[motion]\nmodel = "crossfade"'), "c.toml")
    assert changed(a, c) == ["assemble", "segment[0]", "segment[1]", "segment[2]"]


def test_timing_edit_touches_its_segment_and_assembly(write_spec):
    a = build(write_spec, SMALL, "a.toml")
    b = build(write_spec, SMALL.replace("seconds = 0.75", "seconds = 1.25"), "b.toml")
    assert changed(a, b) == ["assemble", "segment[2]"]


def test_picture_content_is_in_the_key(write_spec):
    path = write_spec(SMALL)
    a = plan.build(spec.load(path))
    from PIL import Image

    Image.new("RGB", (32, 32), (1, 2, 3)).save(path.parent / "refs" / "boat.png")
    b = plan.build(spec.load(path))
    assert changed(a, b) == ["assemble", "keyframe[2]", "segment[1]", "segment[2]"]


def test_farm_plan_on_a_fresh_machine_prints_only_the_plan(farm_home, write_spec):
    """`farm plan` builds the built-in models it estimates from on first use; the libraries it
    loads for that print nothing (every command is quiet, not only `farm render`)."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "farm.cli", "plan", str(write_spec(SMALL))], capture_output=True,
                          text=True, timeout=600, env=os.environ.copy())
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith("small: 7 tasks, 7 to run, 0 cached")
    assert (farm_home / "models").is_dir()  # it did build them
