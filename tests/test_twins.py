"""Every preset family has a tiny twin, and each twin renders through farm end to end on the CPU.

The twin keeps its family's pipeline class and call path (conditioning, frame rule, size
granularity), so a twin that renders here proves the real preset's path short of its weights."""

import json
from pathlib import Path

import numpy as np
import pytest

from farm import models
from farm.media import encode
from farm.models import families, pipeline, timing
from farm.queue.cache import Cache
from farm.queue.queue import Queue
from farm.run.render import render
from farm.run.worker import Worker

# the presets of real weights on the hub (pinned to a revision); not the twins (built in code) nor
# the miniatures (a folder farm ships, trained by scripts/train_miniatures.py)
REAL = [n for n in models.preset_names() if models.load_preset(n).get("revision")]
TWINS = sorted({models.load_preset(n)["twin"] for n in models.preset_names()})


def test_every_real_preset_has_a_built_in_twin_of_its_family():
    assert {"sd15", "sdxl", "sdxl-turbo", "sd35-medium", "flux-schnell", "flux-dev", "qwen-image", "flux2-dev",
            "wan21-flf2v", "wan22-i2v", "wan22-ti2v-5b", "ltx-video", "cogvideox-i2v",
            "skyreels-v2-i2v", "ltx2", "hunyuan-framepack"} <= set(REAL)
    for name in REAL:
        preset, twin = models.load_preset(name), models.load_preset(models.load_preset(name)["twin"])
        assert twin["source"].startswith("builtin:"), name
        assert (twin["pipeline"], twin["role"]) == (preset["pipeline"], preset["role"]), name
        assert families.family(preset["pipeline"]) and preset.get("revision"), name
        assert models.is_hub_id(preset["source"]), name
    assert set(TWINS) >= {"tiny", "tiny-sdxl", "tiny-sd3", "tiny-flux", "tiny-qwen-image", "tiny-flux2", "tiny-wan",
                          "tiny-wan22", "tiny-ltx", "tiny-cogvideox", "tiny-wan22-5b", "tiny-skyreels-v2", "tiny-ltx2",
                          "tiny-framepack"}


def test_models_lists_every_preset_with_role_source_and_presence(cli):
    code, out, err = cli("models", "--json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(rows) == set(models.preset_names())
    assert rows["sdxl"]["role"] == "keyframes" and rows["sdxl"]["pipeline"] == "StableDiffusionXLPipeline"
    assert rows["sdxl"]["source"] == "stabilityai/stable-diffusion-xl-base-1.0@main"
    assert rows["sdxl"]["local"] is False and "farm models pull sdxl" in rows["sdxl"]["missing"]
    assert rows["tiny-ltx"]["local"] is True and rows["tiny-ltx"]["role"] == "motion"
    code, out, err = cli("models")
    assert code == 0 and len(out.strip().splitlines()) == len(rows) + 1  # a header, then one line each
    code, out, err = cli("models", "show", "wan22-i2v")
    assert code == 0 and "Wan-AI/Wan2.2-I2V-A14B-Diffusers" in out and "tiny-wan22" in out


SPEC = """
[shot]
name = "{name}"
fps = 8
size = [{side}, {side}]
seed = 1
out = "out/{name}.mp4"

[keyframes]
model = "{keyframes}"
steps = 2

[motion]
model = "{motion}"
steps = 2

[[frames]]
prompt = "a red boat"
seconds = 0.5

[[frames]]
prompt = "a blue boat"
seconds = 0.5
"""


@pytest.mark.parametrize("twin", TWINS)
def test_twin_renders_through_farm(twin, farm_home, write_spec, monkeypatch):
    role = models.load_preset(twin)["role"]
    cls = models.load_preset(twin)["pipeline"]
    kf, mo = (twin, "hold") if role == "keyframes" else ("tiny", twin)
    generated = []
    if role == "motion":
        condition = pipeline.condition

        def spy(family, params, first, last, n):
            generated.append(n)
            return condition(family, params, first, last, n)

        monkeypatch.setattr(pipeline, "condition", spy)
    queue = Queue(farm_home / "queue.db")
    worker = Worker(queue, Cache(farm_home / "cache"))
    side = max(32, timing.shape(models.resolve(twin)).min_side)  # 32, or the least a family takes (LTX-2: 64)
    result = render(write_spec(SPEC.format(name=twin, keyframes=kf, motion=mo, side=side)), worker=worker)
    info = encode.probe(Path(result["output"]))
    assert (info["frames"], info["width"], info["height"]) == (8, side, side)
    assert cls in {type(p).__name__ for p in worker.runner.pipelines.values()}
    if role == "keyframes":
        assert worker.runner.calls["keyframe"] == 2 and worker.runner.calls["segment"] == 0
    else:
        assert worker.runner.calls["segment"] == 2
        # 0.5 s per segment at the family's own rate (Wan, CogVideoX 16 fps; LTX 25), with the
        # next keyframe for end-frame families, rounded to the family's frame rule
        ref = models.resolve(twin)
        rule = timing.shape(ref)
        want = timing.segment(ref, 4, 8).clips
        assert len(want) == 1 and generated == [want[0]] * 2 and rule.valid_frames(want[0])
        # (LTX: 8k+1; Wan 2.2 TI2V-5B and SkyReels-V2: 24 fps, first frame only: 12 frames of motion, 13;
        # FramePack: 30 fps, 16 with the keyframe, at least one section: 37)
        want_n = {"tiny-ltx": 17, "tiny-ltx2": 17, "tiny-cogvideox": 9, "tiny-wan22-5b": 13, "tiny-skyreels-v2": 13,
                  "tiny-framepack": 37}
        assert want[0] == want_n.get(twin, 9)


def test_twins_build_in_code_without_the_network(monkeypatch):
    """No builder reaches for the network: every attempt to open a connection is recorded
    (and refused). HF_HUB_OFFLINE would not do: huggingface_hub reads it once, at import,
    long before this test runs."""
    import socket

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] if args and isinstance(args[0], socket.socket) else args)
        raise OSError("this test forbids the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for recipe in ("sdxl", "sd3", "flux", "qwenimage", "flux2", "wan22", "ltx", "cogvideox", "wan22-5b", "skyreels-v2",
                   "ltx2"):
        pipe = families.of_twin(recipe).twin.build()
        params = sum(p.numel() for c in pipe.components.values() if hasattr(c, "parameters") for p in c.parameters())
        assert params < 3_000_000, (recipe, params)  # really tiny: under 12 MB of fp32 weights
    assert attempts == []


KEYFRAME_TWINS = [t for t in TWINS if models.load_preset(t)["role"] == "keyframes"]

KEYFRAMES = """
[shot]
name = "{name}"
fps = 8
{size}
seed = 1
out = "out/{name}.mp4"

[keyframes]
model = "{twin}"
steps = 2

[motion]
model = "hold"

[[frames]]
prompt = "a red boat on a calm sea"
seed = 7
seconds = 0.25

[[frames]]
prompt = "a blue boat"
seed = 7
seconds = 0.25
"""


@pytest.mark.parametrize("twin", KEYFRAME_TWINS)
def test_keyframe_twin_renders_its_sizes_and_reads_its_prompt(twin, farm_home, write_spec, monkeypatch, cli):
    """A keyframe twin renders through farm at its preset's default size and at two others of
    its family's granularity; a size off it is refused at validation (exit 2); the prompt
    reaches its text encoder: two prompts under one seed draw two different keyframes."""
    rule = timing.shape(models.resolve(twin))
    m = max(rule.multiple, 16)
    drawn = []
    keyframe = pipeline.keyframe

    def spy(pipe, params, on_step=None):
        image = keyframe(pipe, params, on_step)
        drawn.append((params["prompt"], np.asarray(image).astype(int)))
        return image

    monkeypatch.setattr(pipeline, "keyframe", spy)
    worker = Worker(Queue(farm_home / "queue.db"), Cache(farm_home / "cache"))
    for size in (None, (3 * m, 2 * m), (2 * m, 5 * m)):
        name = f"{twin}-{size[0]}x{size[1]}" if size else f"{twin}-default"
        text = KEYFRAMES.format(name=name, twin=twin, size=f"size = [{size[0]}, {size[1]}]" if size else "")
        drawn.clear()
        result = render(write_spec(text, f"{name}.toml"), worker=worker)
        info = encode.probe(Path(result["output"]))
        want = size or tuple(models.load_preset(twin)["defaults"].get("size", (512, 512)))  # the spec's fallback
        assert (info["width"], info["height"]) == want, name
        assert [p for p, _ in drawn] == ["a red boat on a calm sea", "a blue boat"], name
        assert all(a.shape == (want[1], want[0], 3) for _, a in drawn), name
        assert np.abs(drawn[0][1] - drawn[1][1]).max() > 0, f"{name}: the prompt did not reach the text encoder"
    bad = (2 * rule.multiple + rule.multiple // 2, 2 * rule.multiple)
    path = write_spec(KEYFRAMES.format(name=f"{twin}-bad", twin=twin, size=f"size = [{bad[0]}, {bad[1]}]"), "bad.toml")
    code, out, err = cli("plan", path)
    assert code == 2 and f"multiples of {rule.multiple}" in err and "nearest valid" in err, (code, err)
