"""Spec validation: every user mistake is one clear paragraph and exit code 2."""

import subprocess
import sys

import pytest

from conftest import EXAMPLE, SMALL
from farm.errors import FarmError, SpecError
from farm.spec import spec


def problems(path):
    with pytest.raises(SpecError) as e:
        spec.load(path)
    return e.value.problems


def test_example_is_valid():
    s = spec.load(EXAMPLE)
    assert (s.name, s.fps, s.width, s.height, s.seed) == ("lighthouse", 12, 128, 128, 7)
    assert [f.seconds for f in s.panels] == [1.5, 1.5, 1.0]
    assert s.out == EXAMPLE.parent / "renders" / "lighthouse.mp4"
    assert s.panels[1].keyframe.seed == 11 and s.panels[0].keyframe.seed == 7
    assert s.panels[2].keyframe.image.name == "boat.png" and s.panels[2].keyframe.model is None
    assert s.panels[0].keyframe.steps == 8 and s.panels[0].motion.model.name == "tiny-video"
    assert s.frame_starts() == [0, 18, 36, 48]


def test_unknown_key_suggests_the_right_one(write_spec):
    path = write_spec(SMALL.replace("seconds = 0.5", "secnds = 0.5"))
    found = problems(path)
    assert any("frames[1].secnds" in p and "did you mean `seconds`" in p for p in found)
    assert any("frames[1].seconds" in p and "missing" in p for p in found)


def test_every_problem_is_reported_at_once_with_lines(write_spec):
    text = SMALL.replace('fps = 8', 'fps = "fast"').replace("seconds = 0.5", "seconds = -2")
    path = write_spec(text)
    found = problems(path)
    lines = text.splitlines()
    fps_line = next(i for i, line in enumerate(lines, 1) if line.startswith("fps"))
    sec_line = next(i for i, line in enumerate(lines, 1) if "seconds = -2" in line)
    assert f"line {fps_line}: shot.fps: expected a number, got a string" in found
    assert any(p.startswith(f"line {sec_line}: frames[1].seconds: expected a number > 0") for p in found)


def test_timing_and_sizes_are_checked_beside_other_problems(write_spec):
    """A bad model does not hide a too-short frame or a size the motion model cannot take:
    one run lists all three."""
    text = (SMALL.replace('model = "tiny"\n', 'model = "tinyy"\n').replace("seconds = 0.75", "seconds = 0.05")
            .replace("size = [64, 64]", "size = [72, 64]"))
    found = problems(write_spec(text))
    assert any("keyframes.model" in p and "did you mean 'tiny'" in p for p in found), found
    assert any("frames[2].seconds" in p and "shorter than one frame" in p for p in found), found
    assert any("shot.size" in p and "multiples of 16" in p for p in found), found


def test_a_value_that_failed_is_not_checked_again(write_spec):
    """An fps of 0 is one problem, not also "every frame is shorter than one frame"; a size
    that is not two integers is not also checked against the models."""
    found = problems(write_spec(SMALL.replace("fps = 8", "fps = 0").replace("size = [64, 64]", 'size = "64x64"')))
    assert [p.split(": ", 2)[1] for p in found] == ["shot.fps", "shot.size"], found


@pytest.mark.parametrize("old,new,key,words", [
    ("seconds = 1.0", "seconds = 0", "frames[0].seconds", "> 0"),
    ("seconds = 1.0", "seconds = 259200", "frames[0].seconds", "<= 600"),
    ("size = [64, 64]", "size = [100000, 64]", "shot.size", "between 16 and"),
    ("size = [64, 64]", 'size = "64x64"', "shot.size", "two integers"),
    ("size = [64, 64]", "size = [72, 64]", "shot.size", "multiples of 16"),
    ("steps = 2\n\n[motion]", "steps = 2.5\n\n[motion]", "keyframes.steps", "an integer"),
    ("seed = 3", "seed = true", "shot.seed", "got a boolean"),
    ('model = "tiny"\n', 'model = "tinyy"\n', "keyframes.model", "did you mean 'tiny'"),
    ('model = "tiny"\n', 'model = "tiny-video"\n', "keyframes.model", "needs a keyframes model"),
    ('model = "tiny-video"', 'model = "someone/nowhere"', "motion.model", "not in the local Hugging Face cache"),
    ('image = "refs/boat.png"', 'image = "refs/ship.png"', "frames[2].image", "no such file"),
    ('image = "refs/boat.png"', 'image = "refs"', "frames[2].image", "is a folder"),
    ('out = "out/small.mp4"', 'out = "out/small.avi"', "shot.out", "writes .mp4 or .mkv or .mov"),
    ('seconds = 0.75', 'seconds = 0.05', "frames[2].seconds", "shorter than one frame"),
])
def test_bad_values(write_spec, old, new, key, words):
    assert old in SMALL
    found = problems(write_spec(SMALL.replace(old, new, 1)))
    assert any(key in p and words in p for p in found), found


def test_bad_image_content(write_spec, tmp_path):
    path = write_spec(SMALL)
    (path.parent / "refs" / "boat.png").write_bytes(b"not a png at all")
    assert any("frames[2].image" in p and "not a readable image" in p for p in problems(path))


def test_frame_needs_prompt_or_image(write_spec):
    path = write_spec(SMALL.replace('prompt = "a blue boat"\n', ""))
    assert any("frames[1]" in p and "needs a `prompt`" in p for p in problems(path))


@pytest.mark.parametrize("content,words", [
    (b"", "is empty"),
    (b"   \n\n", "is empty"),
    (b"\x00\x01\x02binary", "binary file"),
    (b"\xff\xfe[shot]", "not UTF-8"),
    (b"[shot]\nname = \n", "TOML syntax error"),
])
def test_unusable_files(tmp_path, content, words):
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(FarmError) as e:
        spec.load(path)
    assert words in e.value.message and e.value.code == 2


def test_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[shot]\nname = "x"\nfps = = 3\n')
    with pytest.raises(FarmError) as e:
        spec.load(path)
    assert "line 3" in e.value.message


def test_folder_missing_and_unreadable(tmp_path, monkeypatch):
    with pytest.raises(FarmError, match="is a folder"):
        spec.load(tmp_path)
    with pytest.raises(FarmError, match="no such file"):
        spec.load(tmp_path / "nope.toml")
    path = tmp_path / "locked.toml"
    path.write_text("[shot]\n")

    def denied(*args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(spec.files, "read_regular", denied)  # the one way spec reads a user's file
    with pytest.raises(FarmError, match="cannot read the job spec \\(Permission denied\\)"):
        spec.load(path)


def test_cli_reports_spec_errors_with_exit_2(write_spec, cli):
    path = write_spec(SMALL.replace("seconds = 1.0", "seconds = -1"))
    code, out, err = cli("render", path, "--json")
    assert code == 2 and out == ""
    assert "frames[0].seconds" in err and "Traceback" not in err


@pytest.mark.parametrize("content", ["", "[shot]\nfps = [", "[[frames]]\nprompt = 3\n"])
def test_console_script_never_shows_a_traceback(tmp_path, content):
    path = tmp_path / "shot.toml"
    path.write_text(content)
    proc = subprocess.run([sys.executable, "-m", "farm.cli", "render", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("farm: ") and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_the_documented_spec_is_valid(write_spec):
    """The schema docs/spec.md documents parses as written."""
    from conftest import ROOT

    doc = (ROOT / "docs" / "spec.md").read_text()
    section = doc.split("# The job spec", 1)[1]
    block = section.split("```toml", 1)[1].split("```", 1)[0]
    lora = write_spec("").parent / "loras" / "ink.safetensors"  # the LoRA it names
    lora.parent.mkdir()
    lora.write_bytes(b"weights")
    s = spec.load(write_spec(block))
    assert s.panels[1].keyframe.steps == 12 and s.panels[1].motion.steps == 4
    assert [(lo.path, lo.scale) for lo in s.panels[1].keyframe.loras] == [(lora, 0.8)]
    assert s.panels[1].motion.prompt == "the beam turns" and s.panels[0].motion.prompt == "slow dolly in"
    assert s.quality == 18 and s.codec == "h264"
