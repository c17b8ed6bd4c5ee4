"""Hostile input (issue 18): no file a user names can make farm wait forever, and no spec,
however mangled, ends in "internal error": each is exit 2 with a paragraph saying what to fix."""

import json
import os
import random
import shutil
import subprocess
import sys
import threading

import pytest
import tomli

from conftest import EXAMPLE
from farm.errors import FarmError
from farm.spec import spec

HANG = 60  # seconds: validation takes 2-3 s here; a read that waits on a FIFO never ends

ANIMATIC = """
[shot]
name = "anim"
fps = 8
size = [64, 64]
out = {out}
codec = {codec}

[keyframes]
model = {model}
steps = 2

[motion]
model = "hold"

[[frames]]
prompt = "a red boat"
seconds = 0.5

[[frames]]
image = {image}
seconds = 0.5
"""


def animatic(out="renders/anim.mp4", codec="h264", model="tiny", image="refs/boat.png"):
    """The spec with these values, each written as a TOML basic string (JSON's escapes, \\u0000
    included, are TOML's)."""
    return ANIMATIC.format(**{k: json.dumps(v) for k, v in dict(out=out, codec=codec, model=model,
                                                               image=image).items()})


def farm(*args, timeout=HANG):
    """The CLI as a subprocess (a hang is a TimeoutExpired, not a stuck suite)."""
    return subprocess.run([sys.executable, "-m", "farm.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=os.environ.copy())


def refused(result, *words):
    """Exit 2, a message with these words, and neither a traceback nor "internal error"."""
    err = result.stderr
    assert result.returncode == 2, (result.returncode, err[-2000:])
    assert "internal error" not in err and "Traceback" not in err, err[-2000:]
    for w in words:
        assert w in err, (w, err[-2000:])


# --- files that are not files ----------------------------------------------------------------


def test_a_fifo_picture_is_refused_by_plan_and_render(write_spec):
    path = write_spec(animatic(image="refs/pipe.png"))
    os.mkfifo(path.parent / "refs" / "pipe.png")
    for command in ("plan", "render"):
        refused(farm(command, path), "frames[1].image", str(path.parent / "refs" / "pipe.png"), "FIFO")


def test_files_a_user_names_must_be_regular_files(write_spec, tmp_path, monkeypatch):
    """A device as the picture (/dev/zero never ends), a FIFO as the spec itself, as a LoRA, as a
    preset and as the manifest beside the output (read to tell whether farm wrote the video)."""
    refused(farm("plan", write_spec(animatic(image="/dev/zero"), "dev.toml")), "/dev/zero is a character device")

    os.mkfifo(tmp_path / "pipe.toml")
    refused(farm("plan", tmp_path / "pipe.toml"), str(tmp_path / "pipe.toml"), "FIFO")

    lora = write_spec(animatic().replace("steps = 2", 'steps = 2\nloras = [{ path = "style.safetensors" }]'),
                      "lora.toml")
    os.mkfifo(lora.parent / "style.safetensors")
    refused(farm("plan", lora), "keyframes.loras[0].path", "style.safetensors is a FIFO")

    (lora.parent / "renders").mkdir()
    os.mkfifo(lora.parent / "renders" / "side.manifest.json")
    refused(farm("plan", write_spec(animatic(out="renders/side.mp4"), "side.toml")),
            "side.manifest.json exists and farm did not write it")

    from farm import models

    presets = tmp_path / "presets"
    shutil.copytree(models.presets_dir(), presets)
    (presets / "tiny.toml").unlink()
    os.mkfifo(presets / "tiny.toml")
    monkeypatch.setenv("FARM_PRESETS", str(presets))
    refused(farm("plan", write_spec(animatic(), "preset.toml")), "keyframes.model", "tiny.toml is a FIFO")


def test_a_path_swapped_for_a_fifo_after_its_check_is_still_refused(tmp_path, monkeypatch):
    """The race between os.stat and open: the open descriptor is checked too, and opening it
    does not wait for a writer (O_NONBLOCK)."""
    from farm import files

    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    monkeypatch.setattr(files, "regular_stat", lambda path: os.stat(tmp_path))  # "it was a file when checked"
    outcome = []

    def read():
        try:
            files.read_regular(pipe, 1 << 20, "a picture")
        except FarmError as e:
            outcome.append(e)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # unblock it: a writer ends the open, then EOF ends the read
        with open(pipe, "wb"):
            pass
        pytest.fail("reading a FIFO swapped in after the check blocked")
    assert outcome and "FIFO" in outcome[0].message and outcome[0].code == 2


def test_a_worker_refuses_a_picture_swapped_for_a_fifo_after_submit(home_with_models, write_spec, farm_home):
    import sqlite3

    path = write_spec(animatic())
    assert farm("submit", path).returncode == 0
    picture = path.parent / "refs" / "boat.png"
    picture.unlink()
    os.mkfifo(picture)
    farm("work", "--cpu", "--until-empty", "-q", timeout=120)
    state, error = sqlite3.connect(farm_home / "queue.db").execute(
        "SELECT state, error FROM tasks WHERE name = 'keyframe[1]'").fetchone()
    assert state == "failed" and str(picture) in error and "FIFO" in error


# --- specs that crashed validation -----------------------------------------------------------

HOSTILE = {
    "nested arrays past tomli's 400 levels": ("x = " + "[" * 1000 + "]" * 1000, "nested more than"),
    "nested inline tables past tomli's 400 levels": ("x = " + "{a = " * 1000 + "1" + "}" * 1000, "nested more than"),
    "an out name longer than NAME_MAX": (animatic(out="renders/" + "x" * 300 + ".mp4"), "shot.out"),
    "a model name longer than NAME_MAX": (animatic(model="m" * 300), "keyframes.model"),
    "a NUL byte in out": (animatic(out="renders/a\0b.mp4"), "NUL byte"),
    "a NUL byte in a picture's path": (animatic(image="refs/bo\0at.png"), "NUL byte"),
    'out = "/" with codec png': (animatic(out="/", codec="png"), "root folder"),
}


@pytest.mark.parametrize("kind", HOSTILE)
def test_specs_that_crashed_validation_are_exit_2(write_spec, kind):
    text, words = HOSTILE[kind]
    path = write_spec(text)
    for command in ("plan", "render"):
        refused(farm(command, path), words)


@pytest.mark.parametrize("values, words", [
    (dict(image="refs/" + "x" * 300 + ".png"), "frames[1].image: a file or folder name in it is 304 bytes"),
    (dict(out="/".join(["y" * 200] * 30) + "/a.mp4"), "shot.out: the path is"),
    (dict(model="org/" + "m" * 120), "not a valid hub id"),  # the hub's rule: at most 96 characters
    (dict(model="mo\0del"), "keyframes.model: model 'mo\\x00del': the path holds a NUL byte"),
    (dict(out="renders/" + "x" * 240 + ".mp4"), "names up to 32 bytes longer"),  # room for its manifest
    (dict(codec="x" * 100_000), "shot.codec"),
])
def test_more_bad_paths_are_spec_problems(write_spec, values, words):
    with pytest.raises(FarmError) as e:
        spec.load_all(write_spec(animatic(**values)))
    assert e.value.code == 2 and words in e.value.message and len(e.value.message) < 2000, e.value.message


def test_a_sweep_label_that_makes_out_too_long_is_a_spec_problem(write_spec):
    text = animatic(out="renders/" + "x" * 215 + ".mp4") + '\n[sweep]\n"shot.seed" = [1, 2]\n'
    with pytest.raises(FarmError) as e:
        spec.load_all(write_spec(text))
    assert "shot.out" in e.value.message and "bytes" in e.value.message


# --- fuzzing ---------------------------------------------------------------------------------

FUZZ_SPECS = 48
NASTY = [True, 0, -1, 2**63 - 1, -2**63, 1.5, float("inf"), float("nan"), "", " ", "x", "a\0b", "~nosuchuser/x",
         "/", ".", "..", "/dev/zero", "y" * 300, "z/" * 3000, "w" * 100_000, [], [1, "a"], {}, {"k": "v"}]


class Nested:
    """A value `depth` lists or tables deep, written as text (no recursion to write it)."""

    def __init__(self, depth: int, table: bool, leaf):
        self.depth, self.table, self.leaf = depth, table, leaf


def toml_value(v) -> str:
    """TOML for a parsed value: tomli has no writer and tomli-w is not a dependency; everything
    is written inline (a table as `{ k = v }`), which TOML accepts anywhere a value goes."""
    if isinstance(v, Nested):
        return ("{k = " if v.table else "[") * v.depth + toml_value(v.leaf) + ("}" if v.table else "]") * v.depth
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return "nan" if v != v else ("inf" if v > 0 else "-inf")
    if isinstance(v, (int, float, str)):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def to_toml(data: dict) -> str:
    return "\n".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in data.items()) + "\n"


def _containers(v, found):
    if isinstance(v, (dict, list)):
        found.append(v)
        for x in v.values() if isinstance(v, dict) else v:
            _containers(x, found)
    return found


def mutate(data: dict, rng: random.Random) -> dict:
    """One to three of: a key deleted, a value swapped for another type, a huge, NUL or long
    string, a value nested deep (past tomli's 400 levels too), a stray [sweep]."""
    for _ in range(rng.randint(1, 3)):
        where = rng.choice([c for c in _containers(data, []) if c])
        key = rng.choice(list(where)) if isinstance(where, dict) else rng.randrange(len(where))
        move = rng.choice(("delete", "swap", "swap", "nest", "sweep"))
        if move == "delete" and isinstance(where, dict):
            del where[key]
        elif move == "nest":
            where[key] = Nested(rng.choice((5, 40, 450)), rng.random() < 0.5, rng.choice(NASTY[:10]))
        elif move == "sweep":
            data["sweep"] = {rng.choice(("shot.seed", "keyframes.model", "shot.out", "frames[9].prompt", "x")):
                             rng.choice(([1, 2], ["tiny", "y" * 300], "a", [[1]], ["/", "a\0"]))}
        else:
            where[key] = rng.choice(NASTY)
    return data


def fuzzed(write_spec, n=FUZZ_SPECS, seed=18):
    rng = random.Random(seed)
    example = tomli.loads(EXAMPLE.read_text())
    return [write_spec(to_toml(mutate(json.loads(json.dumps(example)), rng)), f"fuzz{i}.toml") for i in range(n)]


def test_fuzzed_specs_are_valid_or_one_farm_error(write_spec):
    """Validation in-process: whatever the mangling, a Spec or a FarmError of one paragraph."""
    kinds = set()
    for path in fuzzed(write_spec):
        try:
            spec.load_all(path)
            kinds.add("valid")
        except FarmError as e:
            assert e.code == 2 and len(e.message) < 20_000, (path.name, e.message[:2000])
            kinds.add("refused")
        except Exception as e:  # noqa: BLE001 - what the CLI would print as "internal error"
            pytest.fail(f"{path.name}: {type(e).__name__}: {str(e)[:500]}")
    assert kinds == {"valid", "refused"}  # the fuzz reaches both sides


def test_fuzzed_specs_through_the_cli(write_spec):
    """The most hostile few through `farm plan` as a user runs it (the top-level handler, exit
    codes): those with a NUL, a `~user` path, a long string or deep nesting."""
    hostile = [p for p in fuzzed(write_spec) if any(w in p.read_text() for w in ("\\u0000", "~", "y" * 300, "[" * 40,
                                                                              "{k = " * 40))]
    assert len(hostile) >= 5
    for path in hostile[:5]:
        result = farm("plan", path)
        assert result.returncode in (0, 2), (path.name, result.stderr[-2000:])
        assert "internal error" not in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert len(result.stderr) < 20_000
