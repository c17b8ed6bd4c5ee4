"""The miniatures' world (scripts/world.py) and the training script: the reader reads back every
picture of the world, clips move as the world defines, and a few training steps from scratch
lower the losses and save diffusers folders that farm loads like any local model folder."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import world  # noqa: E402


def test_the_world_has_270_prompts_in_the_issues_form():
    prompts = world.prompts()
    assert len(prompts) == len(set(prompts)) == 270
    assert "a red ball on the left, blue sky" in prompts
    assert world.parse("a white triangle on the right, sand") == \
        world.Scene("white", "triangle", "on the right", "sand")
    with pytest.raises(ValueError):
        world.parse("a red boat")


def test_the_reader_reads_every_picture_of_the_world():
    for prompt in world.prompts():
        reading = world.read(world.picture(prompt))
        assert all(reading.matches(prompt).values()), (prompt, reading)


def test_a_clip_with_a_last_picture_travels_straight_and_cross_fades():
    frames = world.clip("a red ball on the left, blue sky", "a yellow ball on the right, grass", 17)
    xs = [world.read(f).x for f in frames]
    steps = [b - a for a, b in zip(xs, xs[1:])]
    assert abs(xs[0] - 0.22) < 0.01 and abs(xs[-1] - 0.78) < 0.01
    assert all(abs(s - 0.56 / 16) < 0.01 for s in steps)  # constant speed
    assert world.read(frames[0]).matches("a red ball on the left, blue sky") == dict.fromkeys(
        ("background", "colour", "shape", "place"), True)
    assert all(world.read(frames[-1]).matches("a yellow ball on the right, grass").values())
    middle = world.read(frames[8])
    assert middle.shape == "ball" and middle.place == "in the middle"


def test_a_clip_from_a_first_picture_only_drifts_to_the_middle_and_stays():
    frames = world.clip("a blue box on the right, sand", None, 81)  # 5 s at 16 fps
    xs = [world.read(f).x for f in frames]
    assert abs(xs[16] - (0.78 - 0.1)) < 0.01  # 0.1 W in the first second
    assert all(b <= a + 1e-3 for a, b in zip(xs, xs[1:]))  # always towards the middle
    assert all(abs(x - 0.5) < 0.01 for x in xs[-16:])  # there after 2.8 s, and stays
    assert all(world.read(f).matches("a blue box in the middle, sand")["colour"] for f in frames)
    with pytest.raises(ValueError):
        world.clip("a red ball on the left, blue sky", "a red box on the right, blue sky", 5)


@pytest.mark.slow  # a training run of its own (16 CPU-seconds); the shipped weights are checked by test_pixels
def test_training_a_few_steps_from_scratch_lowers_the_losses_and_saves_loadable_folders(tmp_path):
    import train_miniatures

    from farm import models

    report = train_miniatures.main(["--tiny", "--steps", "12", "--out", str(tmp_path)])
    for model, phase in (("mini", "unet"), ("mini-video", "dit")):
        r = report[model][phase]
        assert r["steps"] == 12 and r["loss_last"] < r["loss_first"], (model, phase, r)
    for name, pipeline in (("mini", "StableDiffusionPipeline"), ("mini-video", "WanImageToVideoPipeline")):
        folder = tmp_path / name
        assert not list(folder.rglob("*.bin")) and list(folder.rglob("*.safetensors"))
        assert json.loads((folder / "training.json").read_text())
        ref = models.resolve(str(folder))
        assert ref.pipeline == pipeline and ref.identity.startswith("folder:")
        assert type(models.load_pipeline(ref, "cpu")).__name__ == pipeline
