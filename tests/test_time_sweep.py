"""Every size and duration either renders or is refused up front.

Each motion twin (the real presets' families, with the real fps, windows and frame rules) is
swept over sizes (its preset's default among them) and durations (a fraction of a second, a
few seconds, one past its window: a chain). Every case must be either a finished render with
the right decoded frame count and size, or an exit-2 refusal from validation; never a failure
inside a pipeline. The default suite runs a representative case per twin; `-m slow` runs all.
"""

from pathlib import Path

import pytest

from farm import models
from farm.errors import SpecError
from farm.media import encode
from farm.models import timing
from farm.queue.cache import Cache
from farm.queue.queue import Queue
from farm.run.render import render
from farm.run.worker import Worker
from farm.spec import spec
from test_time import MOTION_TWINS, shot

TWINS = MOTION_TWINS
SIZES = [None, (32, 32), (48, 32), (40, 40), (96, 64), (160, 160)]  # None: the preset's default
SMALL = (32, 32)  # where chains are swept: a chain is 2 x 41-137 frames, the costly case


def small(twin: str) -> tuple[int, int]:
    """SMALL, or the least square size the twin's family takes (LTX-2: 64)."""
    side = max(SMALL[0], timing.shape(models.resolve(twin)).min_side)
    return side, side
FPS = 24


def past_window(twin: str) -> float:
    """Seconds just past the twin's window: its segment becomes a chain of two clips."""
    fps, window = timing.model_time(models.resolve(twin))
    return round(window / fps + 0.5, 2)


def durations(twin: str) -> list[float]:
    return [0.1, 1.0, past_window(twin)]


def check(twin, size, seconds, write_spec, worker) -> str:
    """Render one case; return "rendered" or "refused" (and assert it is one of them)."""
    name = f"{twin}-{size[0]}x{size[1]}-{seconds}" if size else f"{twin}-default-{seconds}"
    path = write_spec(shot(name=name, fps=FPS, motion=twin, seconds=seconds, size=size, last_seconds=0.1),
                      f"{name}.toml")
    try:
        s = spec.load(path)
    except SpecError as e:
        assert e.code == 2 and twin in e.message and "nearest valid" in e.message, e.message
        return "refused"
    result = render(path, worker=worker)  # a failure here (exit 1) is what this test forbids
    info = encode.probe(Path(result["output"]))
    assert (info["frames"], info["width"], info["height"]) == (s.frame_starts()[-1], s.width, s.height), name
    return "rendered"


def outcomes(twin, cases, write_spec, home):
    worker = Worker(Queue(home / "queue.db"), Cache(home / "cache"))
    return {(size, seconds): check(twin, size, seconds, write_spec, worker) for size, seconds in cases}


@pytest.mark.parametrize("twin", [t for t in TWINS if t != "tiny-video"])  # tiny-video is tiny-wan
def test_default_size_renders_and_a_bad_size_is_refused(twin, write_spec, home_with_models):
    """The representative subset: the preset's default size, a segment past its window (a
    chain, at 32x32 to keep it short), and a size no family takes (40: no multiple of 16 or 32)."""
    cases = [(None, 0.1), (small(twin), past_window(twin)), ((40, 40), 1.0)]
    got = outcomes(twin, cases, write_spec, home_with_models)
    assert list(got.values()) == ["rendered", "rendered", "refused"], got


def test_cogvideox_renders_up_to_its_rotary_grid_and_refuses_past_it(write_spec, home_with_models):
    got = outcomes("tiny-cogvideox", [((128, 128), 0.1), ((160, 160), 0.1)], write_spec, home_with_models)
    assert list(got.values()) == ["rendered", "refused"], got


@pytest.mark.slow
@pytest.mark.parametrize("twin", TWINS)
def test_every_size_and_duration_renders_or_is_refused(twin, write_spec, home_with_models):
    cases = [(size, seconds) for size in SIZES for seconds in durations(twin)[:2]]
    cases += [(size, past_window(twin)) for size in (None, small(twin), (40, 40))]
    got = outcomes(twin, cases, write_spec, home_with_models)
    rule = timing.shape(models.resolve(twin))
    for (size, seconds), outcome in got.items():
        w, h = size or tuple(models.load_preset(twin)["defaults"]["size"])
        fits = w % rule.multiple == 0 and h % rule.multiple == 0 and (rule.max_width or w) >= w \
            and (rule.max_height or h) >= h and min(w, h) >= rule.min_side
        assert outcome == ("rendered" if fits else "refused"), (twin, size, seconds, outcome)
