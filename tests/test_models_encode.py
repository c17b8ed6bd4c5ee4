"""Model resolution and loading, and the ffmpeg layer."""

import json
import shutil
import stat
from pathlib import Path

import pytest
from PIL import Image

from farm import models
from farm.errors import FarmError
from farm.media import encode


def test_tiny_models_are_saved_then_loaded_with_from_pretrained(farm_home, monkeypatch):
    from diffusers import DiffusionPipeline

    loaded = []
    real = DiffusionPipeline.from_pretrained.__func__

    def spy(cls, path, **kw):
        loaded.append((Path(path), kw.get("local_files_only")))
        return real(cls, path, **kw)

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(spy))
    for name, cls in (("tiny", "StableDiffusionPipeline"), ("tiny-video", "WanImageToVideoPipeline")):
        ref = models.resolve(name)
        pipe = models.load_pipeline(ref)
        assert type(pipe).__name__ == cls
        folder = loaded[-1][0]
        assert folder.parent == farm_home / "models" and loaded[-1][1] is True
        index = json.loads((folder / "model_index.json").read_text())
        assert index["_class_name"] == cls and index["tokenizer"][0] == "transformers"
        assert (folder / "tokenizer" / "tokenizer.json").is_file()


def test_local_folder_models_have_content_identity(farm_home, tmp_path):
    ref = models.resolve("tiny")
    folder = tmp_path / "my-model"
    shutil.copytree(models.local_path(ref), folder)
    a = models.resolve(str(folder))
    assert a.role == "keyframes" and a.pipeline == "StableDiffusionPipeline" and a.identity.startswith("folder:")
    cfg = folder / "scheduler" / "scheduler_config.json"
    cfg.write_text(cfg.read_text().replace('"steps_offset": 1', '"steps_offset": 0'))
    assert models.resolve(str(folder)).identity != a.identity


def test_a_folder_model_changed_after_planning_is_not_loaded(farm_home, tmp_path):
    folder = tmp_path / "my-model"
    shutil.copytree(models.local_path(models.resolve("tiny")), folder)
    planned = models.resolve(str(folder))
    assert type(models.load_pipeline(planned, "cpu")).__name__ == "StableDiffusionPipeline"
    cfg = folder / "scheduler" / "scheduler_config.json"
    cfg.write_text(cfg.read_text().replace('"steps_offset": 1', '"steps_offset": 0'))  # retrained, say
    with pytest.raises(FarmError) as e:
        models.load_pipeline(planned, "cpu")
    assert e.value.code == 2 and f"{folder} changed after the job was planned" in e.value.message


def test_model_errors(tmp_path):
    with pytest.raises(FarmError, match="did you mean 'crossfade'"):
        models.resolve("crosfade")
    with pytest.raises(FarmError, match="not in the local Hugging Face cache.*hf download acme/video-model"):
        models.resolve("acme/video-model")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "model_index.json").write_text('{"_class_name": "AudioLDMPipeline"}')
    with pytest.raises(FarmError, match="AudioLDMPipeline, which farm cannot drive"):
        models.resolve(str(tmp_path / "odd"))


def test_ffmpeg_from_path_else_the_wheel(tmp_path, monkeypatch):
    import imageio_ffmpeg

    monkeypatch.setenv("PATH", str(tmp_path))  # no ffmpeg on PATH: the wheel's static build
    assert encode.executable() == imageio_ffmpeg.get_ffmpeg_exe()
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    assert encode.executable() == str(fake)  # a system ffmpeg wins
    monkeypatch.setenv("FARM_FFMPEG", "/opt/custom/ffmpeg")
    assert encode.executable() == "/opt/custom/ffmpeg"


def test_wheel_ffmpeg_encodes_and_probe_counts_frames(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    frames = []
    for i in range(7):
        p = tmp_path / f"f{i}.png"
        Image.new("RGB", (48, 32), (i * 30, 0, 0)).save(p)
        frames.append(p)
    out = tmp_path / "v" / "clip.mp4"
    encode.encode(frames, 10, "h264", None, out)
    assert encode.probe(out) == {"codec": "h264", "width": 48, "height": 32, "fps": 10.0, "frames": 7}
    assert [p.name for p in out.parent.iterdir()] == ["clip.mp4"]  # no temporary left behind


def test_missing_ffmpeg_binary(tmp_path, monkeypatch):
    monkeypatch.setenv("FARM_FFMPEG", str(tmp_path / "nope"))
    with pytest.raises(FarmError, match="ffmpeg could not be started"):
        encode.hold(tmp_path / "x.png", 3, tmp_path)
