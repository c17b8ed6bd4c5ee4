"""Sound: a family that makes sound (LTX-2) keeps it with its frames, cached per segment, and the
assembled video carries the shot's whole soundtrack, with silence where a segment has none."""

from pathlib import Path

import numpy as np
import pytest

from farm.media import encode, manifest, sound
from farm.models import families
from farm.plan import plan, tasks
from farm.queue.cache import Cache
from farm.queue.queue import Queue
from farm.run.render import render
from farm.run.worker import Worker
from farm.spec import spec

SHOT = """
[shot]
name = "{name}"
fps = 8
size = [64, 64]
seed = 1
out = "out/{out}"
retries = 0
{shot_extra}

[keyframes]
model = "tiny"
steps = 1

[motion]
model = "tiny-ltx2"
steps = 1

[[frames]]
prompt = "{first}"
seconds = 0.5
{frame_motion}

[[frames]]
prompt = "a blue boat"
seconds = 0.5
"""


def shot(name, out=None, shot_extra="", first="a red boat", frame_motion="", seconds=0.5):
    return SHOT.format(name=name, out=out or f"{name}.mp4", shot_extra=shot_extra, first=first,
                       frame_motion=frame_motion).replace("seconds = 0.5", f"seconds = {seconds}", 1)


@pytest.fixture
def worker(home_with_models):
    return Worker(Queue(home_with_models / "queue.db"), Cache(home_with_models / "cache"))


def test_ltx2_makes_sound_and_others_do_not():
    assert [f.name for f in families.FAMILIES if f.makes_sound] == ["LTX-2"]


def test_sounds_join_at_exact_boundaries_with_silence_for_the_silent():
    rate = 16000
    tone = np.ones((2, 4000), dtype=np.float32) * 0.5
    joined, got_rate = sound.join([((tone, rate), 0.25), (None, 0.125), ((tone[:1] * 0 + 0.25, 8000), 0.3)])
    assert got_rate == rate and joined.shape == (2, round(0.675 * rate))
    assert np.all(joined[:, 4000:6000] == 0) and np.allclose(joined[:, :4000], 0.5)
    assert np.allclose(joined[1, 6000:], 0.25)  # mono at 8 kHz: resampled, on both channels
    assert sound.join([(None, 1.0)]) is None


def test_the_mp4_carries_a_soundtrack_as_long_as_its_video(write_spec, worker):
    result = render(write_spec(shot("sound")), worker=worker)
    out = Path(result["output"])
    video, audio = encode.probe(out), encode.audio_stream(out)
    assert video["frames"] == 8 and audio is not None and audio["codec"] == "aac"
    assert abs(audio["seconds"] - video["frames"] / 8) <= 1 / 8, audio
    recorded = manifest.load(manifest.path_for(out))["video"]["audio"]  # the manifest says so too
    assert recorded["codec"] == "aac" and recorded["seconds"] == audio["seconds"]
    segments = [t for t in worker.queue.tasks(result["job"]) if t["kind"] == "segment"]
    for t in segments:  # each segment's sound is cached with its frames, as long as its seconds
        audio, rate = sound.of(worker.runner.output(t["key"]))
        assert audio.shape == (2, round(0.5 * rate)) and np.abs(audio).max() > 0


def test_a_silent_segment_contributes_silence_of_its_length(write_spec, worker):
    path = write_spec(shot("mixed", frame_motion='motion = { model = "hold" }'))
    result = render(path, worker=worker)
    out = Path(result["output"])
    audio = encode.audio_stream(out)
    assert audio is not None and abs(audio["seconds"] - 1.0) <= 1 / 8, audio
    keys = {t["name"]: t["key"] for t in worker.queue.tasks(result["job"])}
    assert sound.of(worker.runner.output(keys["segment[0]"])) is None  # the animatic
    assert sound.of(worker.runner.output(keys["segment[1]"])) is not None


def test_editing_a_prompt_redraws_that_segments_sound_only(write_spec, worker):
    before = plan.build(spec.load(write_spec(shot("edit"))))
    render(write_spec(shot("edit")), worker=worker)
    after = plan.build(spec.load(write_spec(shot("edit", first="a green boat"))))
    old, new = ({t.name: t.key for t in p.tasks} for p in (before, after))
    changed = {n for n in old if old[n] != new[n]}
    assert changed == {"keyframe[0]", "segment[0]", "assemble"}  # segment[1] (and its sound) is kept
    kept = worker.runner.output(old["segment[1]"]) / sound.AUDIO
    stamp = kept.stat().st_mtime_ns
    runs = worker.runner.calls["segment"]
    result = render(write_spec(shot("edit", first="a green boat")), worker=worker)
    # segment[0] alone drew again, its sound with its frames, into its new cache entry; the
    # other segment's sound is the one cached before, untouched. (The twin's random weights
    # make a sound that hardly hears its prompt: entries and runs are compared, not samples.)
    assert worker.runner.calls["segment"] == runs + 1
    assert sound.of(worker.runner.output(new["segment[0]"])) is not None
    assert sound.of(worker.runner.output(old["segment[0]"])) is not None  # the old one is still there
    assert kept.stat().st_mtime_ns == stamp
    assert encode.audio_stream(Path(result["output"])) is not None


def test_audio_false_gives_no_audio_stream_and_keeps_other_keys(write_spec, worker):
    on = plan.build(spec.load(write_spec(shot("quiet"))))
    result = render(write_spec(shot("quiet", shot_extra="audio = false")), worker=worker)
    off = plan.build(spec.load(write_spec(shot("quiet", shot_extra="audio = false"))))
    assert encode.audio_stream(Path(result["output"])) is None
    assert "audio" not in manifest.load(manifest.path_for(Path(result["output"])))["video"]
    assert encode.probe(Path(result["output"]))["frames"] == 8
    keys = [({t.name: t.key for t in p.tasks}) for p in (on, off)]
    assert {n for n in keys[0] if keys[0][n] != keys[1][n]} == {"assemble"}
    stored = [t for t in off.tasks if t.kind == "assemble"][0].params
    assert stored.to_json()["audio"] is False and tasks.Assemble.from_json(stored.to_json()) == stored
    assert "audio" not in [t for t in on.tasks if t.kind == "assemble"][0].params.to_json()


def test_audio_must_be_a_boolean(write_spec):
    with pytest.raises(spec.SpecError) as e:
        spec.load(write_spec(shot("bad", shot_extra='audio = "yes"')))
    assert "shot.audio" in e.value.message


def test_a_png_sequence_has_no_sound_and_renders(write_spec, worker):
    result = render(write_spec(shot("frames", out="frames", shot_extra='codec = "png"')), worker=worker)
    out = Path(result["output"])
    assert out.is_dir() and len(list(out.glob("*.png"))) == 8 and not list(out.glob("*.wav"))


def test_a_chains_clips_keep_their_sound_and_their_segment_joins_it(write_spec, worker):
    """5.5 s at LTX-2's 24 fps is past its 121-frame window: two clips, each with its sound as
    long as its frames, joined (the shared frame once) into the segment's 5.5 s."""
    result = render(write_spec(shot("chain", seconds=5.5)), worker=worker)
    by_name = {t["name"]: t for t in worker.queue.tasks(result["job"])}
    clips = [by_name[n] for n in sorted(by_name) if n.startswith("segment[0].clip[")]
    assert len(clips) == 2
    for t in clips:
        audio, rate = sound.of(worker.runner.output(t["key"]))
        frames = len(worker.runner.frames_of(t["key"]))
        assert audio.shape[1] == round(frames / 24 * rate)
    audio, rate = sound.of(worker.runner.output(by_name["segment[0]"]["key"]))
    assert audio.shape[1] == round(5.5 * rate)
    track = encode.audio_stream(Path(result["output"]))
    assert abs(track["seconds"] - 6.0) <= 1 / 8, track


@pytest.mark.parametrize("out, codec, want", [("sound.mov", "prores", "pcm_s16le"), ("sound.mkv", "h264", "aac"),
                                              ("sound.webm", "av1", "opus")])
def test_other_containers_carry_their_own_audio_codec(write_spec, worker, out, codec, want):
    result = render(write_spec(shot("other", out=out, shot_extra=f'codec = "{codec}"')), worker=worker)
    audio = encode.audio_stream(Path(result["output"]))
    assert audio is not None and audio["codec"] == want and abs(audio["seconds"] - 1.0) <= 1 / 8, audio
