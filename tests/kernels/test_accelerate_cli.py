"""`farm accelerate --report`, and `accelerate = [...]` in specs and presets reaching task keys."""

import json

import pytest

from farm.plan import plan
from farm.spec import spec

SHOT = """
[shot]
size = [64, 64]
fps = 8

[keyframes]
model = "tiny"
steps = 2
{accel}

[[frames]]
prompt = "a boat"
seconds = 0.5
"""


@pytest.mark.slow  # the counts are test_accelerate's; this is the --json form of the same report
def test_report_json(home_with_models, cli):
    code, out, err = cli("accelerate", "--report", "tiny", "--json")
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["model"] == "UNet2DConditionModel" and report["attention"] == "native"
    assert report["replaced"] == {"group_norm_silu": 17, "adaln": 0, "gated_residual": 0, "rmsnorm_rope": 0,
                                  "glu": 4, "gelu": 0}


def test_report_text_names_every_pattern(home_with_models, cli):
    code, out, err = cli("accelerate", "--report", "tiny-video", "--features", "kernels")
    assert code == 0, err
    assert "model: WanTransformer3DModel" in out and "attention: unchanged" in out
    counts = dict(line.split() for line in out.splitlines() if line.startswith("  "))
    assert counts == {"group_norm_silu": "0", "adaln": "5", "gated_residual": "4", "rmsnorm_rope": "4",
                      "glu": "0", "gelu": "3"}


def test_user_mistakes_exit_2(cli):
    assert cli("accelerate", "--report", "tiny", "--features", "kernels,turbo")[0] == 2
    code, _, err = cli("accelerate", "--report", "hold")
    assert code == 2 and "nothing to accelerate" in err
    code, _, err = cli("accelerate", "tiny")
    assert code == 2 and "--report" in err


def test_spec_accelerate_changes_exactly_the_model_tasks_keys(write_spec):
    plain = plan.build(spec.load(write_spec(SHOT.format(accel=""))))
    fast = plan.build(spec.load(write_spec(SHOT.format(accel='accelerate = ["compile", "kernels"]'), "b.toml")))
    kf_plain, kf_fast = plain.by_name()["keyframe[0]"], fast.by_name()["keyframe[0]"]
    assert kf_plain.key != kf_fast.key
    assert kf_fast.params.model.accelerate == ("kernels", "compile")
    assert "accelerate" not in kf_plain.params.to_json()["model"] and "accelerate" not in kf_fast.params.model.options
    # Claims prefer workers holding the model's identity, accelerated or not; the worker holds the
    # accelerated pipeline apart from the plain one (see test_worker_holds_accelerated_apart).
    assert kf_fast.model == kf_plain.model == kf_plain.params.model.identity
    # The threshold is in the key only when the cache is on.
    a = plan.build(spec.load(write_spec(SHOT.format(accel='accelerate = ["cache"]\ncache_threshold = 0.1'), "c.toml")))
    b = plan.build(spec.load(write_spec(SHOT.format(accel='accelerate = ["cache"]\ncache_threshold = 0.2'), "d.toml")))
    assert a.by_name()["keyframe[0]"].key != b.by_name()["keyframe[0]"].key
    # TaylorSeer's schedule is in the key; a threshold it does not use is not.
    t = plan.build(spec.load(write_spec(SHOT.format(accel='accelerate = ["taylorseer"]\ncache_threshold = 0.1'),
                                        "t.toml"))).by_name()["keyframe[0]"]
    assert t.params.model.taylorseer == (5, 3) and "cache_threshold" not in t.params.to_json()["model"]
    assert t.key not in (kf_plain.key, kf_fast.key, a.by_name()["keyframe[0]"].key)


def test_spec_rejects_unknown_features(write_spec):
    import pytest

    from farm.errors import SpecError

    with pytest.raises(SpecError) as e:
        spec.load(write_spec(SHOT.format(accel='accelerate = ["kernels", "warp"]\ncache_threshold = -1')))
    text = str(e.value)
    assert "keyframes.accelerate: unknown 'warp'" in text and "keyframes.cache_threshold" in text
    with pytest.raises(SpecError, match="'cache' and 'taylorseer' are two step caches; choose one"):
        spec.load(write_spec(SHOT.format(accel='accelerate = ["cache", "taylorseer"]'), "two.toml"))


def test_preset_accelerate(tmp_path, monkeypatch, write_spec):
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "fast.toml").write_text('role = "keyframes"\npipeline = "StableDiffusionPipeline"\n'
                                       'source = "builtin:text-to-image"\naccelerate = ["kernels", "attention"]\n')
    monkeypatch.setenv("FARM_PRESETS", str(presets))
    p = plan.build(spec.load(write_spec(SHOT.format(accel="").replace('"tiny"', '"fast"'))))
    assert p.by_name()["keyframe[0]"].params.model.accelerate == ("kernels", "attention")


def test_render_with_acceleration(home_with_models, write_spec, cli, monkeypatch):
    """A render through the worker with kernels on: the accelerated pipeline draws the frame
    (its graphs rewritten: what the worker did, not only what the spec asked)."""
    from farm import acceleration

    reports, real = [], acceleration.accelerate
    monkeypatch.setattr(acceleration, "accelerate", lambda pipe, *a, **kw: reports.append(real(pipe, *a, **kw))
                        or reports[-1])
    # one step: under Triton's interpreter each kernel launch costs milliseconds of Python
    path = write_spec(SHOT.format(accel='accelerate = ["kernels", "attention"]').replace("steps = 2", "steps = 1"))
    code, out, err = cli("render", path, "--json", "--quiet")
    assert code == 0, err
    assert json.loads(out)["tasks"]["run"] == 3
    (report,) = reports  # the keyframe model, accelerated once
    assert report.model == "UNet2DConditionModel" and report.attention == "native"
    assert {k: v for k, v in report.replaced.items() if v} == {"group_norm_silu": 17, "glu": 4}


def test_worker_holds_accelerated_apart(home_with_models, write_spec, tmp_path):
    """One model, plain and accelerated: two loaded pipelines under one identity, which is
    what the worker offers claims; asking again loads neither twice."""
    from farm.queue.cache import Cache
    from farm.queue.queue import Queue
    from farm.run.worker import Worker

    plain = plan.build(spec.load(write_spec(SHOT.format(accel=""))))
    fast = plan.build(spec.load(write_spec(SHOT.format(accel='accelerate = ["attention"]'), "b.toml")))
    m_plain = plain.by_name()["keyframe[0]"].params.model
    m_fast = fast.by_name()["keyframe[0]"].params.model
    with Worker(Queue(tmp_path / "q.db"), Cache(tmp_path / "cache"), max_warm=2) as w:
        a, b = w.runner.pipe(m_plain), w.runner.pipe(m_fast)
        assert a is not b and len(w.runner.pipelines) == 2 and w.runner.calls["load"] == 2
        assert getattr(a, "_farm_acceleration", None) is None and b._farm_acceleration.model
        assert w.held() == {m_plain.identity}
        assert w.runner.pipe(m_plain) is a and w.runner.pipe(m_fast) is b and w.runner.calls["load"] == 2
