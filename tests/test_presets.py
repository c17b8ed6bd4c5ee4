"""Preset files, model sources and their errors: unknown presets, missing weights, offline
pulls, role/pipeline mismatches, single-file checkpoints, preset defaults."""

import json
import shutil
import time
from pathlib import Path

import pytest

from conftest import SMALL
from farm import models
from farm.errors import FarmError
from farm.models import families
from farm.plan import plan
from farm.queue import digest
from farm.spec import spec


@pytest.fixture
def presets(tmp_path, monkeypatch):
    """A presets folder of our own (FARM_PRESETS), seeded with the shipped tiny ones."""
    folder = tmp_path / "presets"
    shutil.copytree(models.presets_dir(), folder)
    monkeypatch.setenv("FARM_PRESETS", str(folder))

    def write(name, text):
        (folder / f"{name}.toml").write_text(text)

    return write


def test_a_real_preset_without_weights_says_which_where_and_how(write_spec, cli, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    started = time.perf_counter()
    code, out, err = cli("render", write_spec(SMALL.replace('model = "tiny"', 'model = "flux-dev"')))
    assert code == 2 and out == "" and "Traceback" not in err
    assert "model 'flux-dev' (black-forest-labs/FLUX.1-dev@main) has no weights on this machine" in err
    assert "empty-hf-cache" in err and "farm models pull flux-dev" in err and "'tiny-flux'" in err
    assert time.perf_counter() - started < 10  # looks in the cache only: never waits on a network


def test_pull_fails_fast_and_clearly_when_the_hub_is_unreachable(cli, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    started = time.perf_counter()
    code, out, err = cli("models", "pull", "sdxl-turbo")
    assert code == 1 and out == "" and "Traceback" not in err
    assert "the model hub http://127.0.0.1:9 is unreachable" in err and "farm models pull sdxl-turbo" in err
    assert time.perf_counter() - started < 10
    code, out, err = cli("models", "pull", "sdxl-trubo")
    assert code == 2 and "unknown preset 'sdxl-trubo' (did you mean 'sdxl-turbo'?)" in err


def test_pull_of_a_built_in_twin_builds_it(cli, farm_home):
    code, out, err = cli("models", "pull", "tiny-ltx")
    assert code == 0 and Path(out.strip()).parent == farm_home / "models"
    assert (Path(out.strip()) / "model_index.json").is_file()


def test_unknown_and_mismatched_models_are_input_errors(write_spec, cli, presets):
    code, out, err = cli("models", "show", "fluxdev")
    assert code == 2 and "unknown preset 'fluxdev' (did you mean 'flux-dev'?)" in err
    # a video model asked to draw keyframes, an image model asked for motion
    text = SMALL.replace('model = "tiny"', 'model = "tiny-ltx"').replace('model = "tiny-video"', 'model = "tiny-sdxl"')
    code, out, err = cli("render", write_spec(text))
    assert code == 2 and "Traceback" not in err
    assert "'tiny-ltx' is a motion model (LTXConditionPipeline), but [keyframes] needs a keyframes model" in err
    assert "'tiny-sdxl' is a keyframes model (StableDiffusionXLPipeline), but [motion] needs a motion model" in err
    # a preset that gives a pipeline a role farm cannot drive it in
    presets("odd", 'role = "motion"\npipeline = "FluxPipeline"\nsource = "builtin:flux"\n')
    code, out, err = cli("render", write_spec(SMALL.replace('model = "tiny-video"', 'model = "odd"')))
    assert code == 2 and "cannot drive a FluxPipeline as a motion model" in err
    presets("remote", 'role = "keyframes"\npipeline = "FluxPipeline"\nsource = "acme/x"\ntrust_remote_code = "yes"\n')
    with pytest.raises(FarmError, match="trust_remote_code must be true or false"):
        models.resolve("remote")
    presets("typo", 'role = "keyframes"\npipeline = "FluxPipeline"\nsource = "builtin:flux"\n'
                    '[memory]\noffload = true\n')
    with pytest.raises(FarmError, match="unknown \\[memory\\] keys offload"):
        models.resolve("typo")


def test_preset_defaults_size_scheduler_and_memory(write_spec, presets, farm_home):
    presets("tiny-euler", 'role = "keyframes"\npipeline = "StableDiffusionPipeline"\nsource = "builtin:text-to-image"\n'
                          '[defaults]\nsteps = 3\nscheduler = "EulerDiscreteScheduler"\nsize = [48, 32]\n'
                          '[memory]\nvae_tiling = true\ncpu_offload = true\n')
    no_size = SMALL.replace("size = [64, 64]\n", "").replace('model = "tiny"\nsteps = 2', 'model = "tiny-euler"')
    s = spec.load(write_spec(no_size))
    assert (s.width, s.height) == (48, 32) and s.panels[0].keyframe.steps == 3
    task = plan.build(s).by_name()["keyframe[0]"]
    assert task.params.model.scheduler == "EulerDiscreteScheduler"
    assert task.params.model.memory == {"vae_tiling": True, "cpu_offload": True}
    plain = plan.build(spec.load(write_spec(no_size.replace('"tiny-euler"', '"tiny"\nsteps = 3').replace(
        "[shot]", "[shot]\nsize = [48, 32]")))).by_name()["keyframe[0]"]
    assert task.key != plain.key  # same weights, another scheduler: other pixels
    pipe = models.load_pipeline(models.ref_from_params(task.params.model.to_json()))
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler" and pipe.vae.use_tiling
    assert pipe.device.type == "cpu"  # offload is for accelerators; the CPU just runs it


def test_existing_tiny_keys_are_unchanged(write_spec):
    """Keys made before presets grew options, schedulers and LoRAs stay valid (cache hits)."""
    tasks = plan.build(spec.load(write_spec(SMALL))).by_name()
    assert tasks["keyframe[0]"].params.model.options == {}
    assert "scheduler" not in tasks["keyframe[0]"].params.to_json()["model"]  # absent, as before it existed
    assert "loras" not in tasks["segment[0]"].params.to_json()["model"]
    assert tasks["segment[0]"].params.model.options == {"max_sequence_length": 64}


def test_single_file_checkpoint_preset(presets, write_spec, tmp_path, monkeypatch):
    """A .safetensors checkpoint through a preset: content-hash identity, loaded with the
    pipeline class's from_single_file and a local config folder, never from the network."""
    from diffusers import StableDiffusionPipeline

    ckpt = tmp_path / "my-style.safetensors"
    ckpt.write_bytes(b"not really weights")
    presets("mine", f'role = "keyframes"\npipeline = "StableDiffusionPipeline"\nsource = "{ckpt}"\nconfig = "tiny"\n')
    ref = models.resolve("mine")
    assert ref.identity == f"file:{digest.file_digest(ckpt)}+pipeline+config:builtin:text-to-image@recipe1"
    assert ref.config.endswith("text-to-image-recipe1")
    seen = {}

    def fake(cls, path, **kw):
        seen.update(path=path, **kw)
        return families.of_twin("text-to-image").twin.build()

    monkeypatch.setattr(StableDiffusionPipeline, "from_single_file", classmethod(fake))
    assert type(models.load_pipeline(ref)).__name__ == "StableDiffusionPipeline"
    assert seen["path"] == str(ckpt) and seen["config"] == ref.config and seen["local_files_only"] is True
    ckpt.write_bytes(b"other weights")
    digest._DIGESTS.clear()
    assert models.resolve("mine").identity != ref.identity
    with pytest.raises(FarmError, match="changed after the job was planned"):  # the old task's model
        models.load_pipeline(ref)
    presets("noconf", f'role = "keyframes"\npipeline = "StableDiffusionPipeline"\nsource = "{ckpt}"\n')
    with pytest.raises(FarmError, match="needs `config`"):
        models.resolve("noconf")
    with pytest.raises(FarmError, match="named through a preset"):
        models.resolve(str(tmp_path / "nope.safetensors"))


def test_a_large_files_digest_is_kept_across_processes(farm_home, tmp_path):
    """A checkpoint is hashed once per machine: a new process (here: an emptied in-process
    memo) reads the kept digest; any write to the file hashes it again."""
    import hashlib
    import time

    big = tmp_path / "big.safetensors"
    big.write_bytes(bytes(digest.MEMO_BYTES))
    real = hashlib.sha256(big.read_bytes()).hexdigest()
    assert digest.file_digest(big) == real
    (kept,) = (farm_home / "digests").iterdir()
    kept.write_text("f" * 64)  # were the file read again, this could not be the answer
    digest._DIGESTS.clear()
    assert digest.file_digest(big) == "f" * 64
    time.sleep(0.05)  # past the filesystem's timestamp granularity, as any later edit is
    with open(big, "r+b") as f:  # one byte, same size
        f.write(b"\1")
    digest._DIGESTS.clear()
    assert digest.file_digest(big) == hashlib.sha256(big.read_bytes()).hexdigest() != real
    small = tmp_path / "small.png"
    small.write_bytes(b"x")
    digest.file_digest(small)
    assert len(list((farm_home / "digests").iterdir())) == 2  # small files are not kept


def test_cache_checks_read_a_file_once_a_process_whatever_is_kept(farm_home, tmp_path, monkeypatch):
    """The cache checks its entries through the same hasher and memo, but a digest kept on disk
    (or taken from there into the memo) does not vouch for an entry: damage such as bit rot shows
    in no stat field, so each process reads an entry's bytes once. The memo is bounded, the least
    recently used forgotten first."""
    import hashlib

    big = tmp_path / "video.mp4"
    big.write_bytes(bytes(digest.MEMO_BYTES))
    real = hashlib.sha256(big.read_bytes()).hexdigest()
    digest.file_digest(big)
    (kept,) = (farm_home / "digests").iterdir()
    kept.write_text("f" * 64)
    digest._DIGESTS.clear()
    assert digest.file_digest(big) == "f" * 64  # a checkpoint's rule: the kept digest
    assert digest.file_digest(big, per_machine=False) == real  # the cache's: the bytes, read here
    hashed, hash_file = [], digest._hash
    monkeypatch.setattr(digest, "_hash", lambda p: hashed.append(p.name) or hash_file(p))
    assert digest.file_digest(big, per_machine=False) == real and hashed == []  # once a process
    assert len(list((farm_home / "digests").iterdir())) == 1  # and nothing kept for it

    monkeypatch.setattr(digest, "MEMO_ENTRIES", 2)
    digest._DIGESTS.clear()
    a, b, c = (tmp_path / f"{n}.png" for n in "abc")
    for p in (a, b, c):
        p.write_bytes(p.name.encode())
    for p in (a, b, a, c):  # a used again after b: b is the one forgotten
        digest.file_digest(p)
    assert hashed == ["a.png", "b.png", "c.png"] and len(digest._DIGESTS) == 2
    digest.file_digest(a)
    digest.file_digest(b)
    assert hashed == ["a.png", "b.png", "c.png", "b.png"]


def test_pull_downloads_the_pinned_revision_into_the_cache(cli, monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(models.hub, "_reachable", lambda *a: None)  # as if the hub answered
    asked = {}

    def fake(repo, **kw):
        asked.update(repo=repo, **kw)
        return str(tmp_path / "hf" / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    code, out, err = cli("models", "pull", "ltx-video")
    assert code == 0 and out.strip() == str(tmp_path / "hf" / "snapshot")
    assert asked["repo"] == "Lightricks/LTX-Video-0.9.5" and asked["revision"] == "main"
    assert asked["cache_dir"] == str(tmp_path / "hf") and asked["etag_timeout"] == 10.0
    code, out, err = cli("models", "pull", "acme/model@v2")
    assert code == 0 and (asked["repo"], asked["revision"]) == ("acme/model", "v2")


def test_a_single_file_transformer_renders_with_the_rest_from_its_config(presets, write_spec, cli, tmp_path):
    """A Flux fine-tune shared as one transformer .safetensors: loaded for real with
    from_single_file, the text encoders and VAE from the twin's folder."""
    import torch
    from safetensors.torch import save_file

    net = families.of_twin("flux").twin.build().transformer
    torch.manual_seed(5)
    weights = {k: v.contiguous() + 0.05 * torch.randn_like(v) for k, v in net.state_dict().items()}  # "fine-tuned"
    save_file(weights, tmp_path / "flux-ft.safetensors")
    presets("flux-ft", f'role = "keyframes"\npipeline = "FluxPipeline"\nsource = "{tmp_path / "flux-ft.safetensors"}"\n'
                       f'config = "tiny-flux"\ncomponent = "transformer"\n'
                       f'[defaults]\nsteps = 2\nmax_sequence_length = 32\n')
    ref = models.resolve("flux-ft")
    pipe = models.load_pipeline(ref)
    name = next(iter(weights))
    assert torch.equal(pipe.transformer.state_dict()[name], weights[name])  # the file's weights, not the twin's
    shots = []
    for model in ("flux-ft", "tiny-flux"):
        text = SMALL.replace('model = "tiny"', f'model = "{model}"').replace('model = "tiny-video"', 'model = "hold"')
        text = text.replace("out/small.mp4", f"out/{model}.mp4")
        code, out, err = cli("render", write_spec(text, f"{model}.toml"), "--json")
        assert code == 0, err
        shots.append(json.loads(out))
    assert Path(shots[0]["output"]).read_bytes() != Path(shots[1]["output"]).read_bytes()
    presets("bad-part", f'role = "keyframes"\npipeline = "FluxPipeline"\n'
                        f'source = "{tmp_path / "flux-ft.safetensors"}"\n'
                        f'config = "tiny-flux"\ncomponent = "unet"\n')
    with pytest.raises(FarmError, match="component 'unet' is not part of tiny-flux"):
        models.resolve("bad-part")


def test_a_hub_preset_in_the_local_cache_loads_with_the_presets_class(presets, write_spec, cli, tmp_path, monkeypatch):
    """The hub path, offline: a snapshot laid out as huggingface_hub caches it. Its
    model_index names LTXPipeline (as LTX-Video's repos do); the preset's class wins."""
    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--acme--ltx-mini"
    shutil.copytree(models.local_path(models.resolve("tiny-ltx")), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    index = repo / "snapshots" / commit / "model_index.json"
    index.write_text(index.read_text().replace('"LTXConditionPipeline"', '"LTXPipeline"'))
    presets("ltx-mini", 'role = "motion"\npipeline = "LTXConditionPipeline"\nsource = "acme/ltx-mini"\n'
                        'revision = "main"\ntwin = "tiny-ltx"\n[defaults]\nsteps = 2\nmax_sequence_length = 32\n')
    ref = models.resolve("ltx-mini")
    assert ref.identity == f"hub:acme/ltx-mini@{commit}" and ref.pipeline == "LTXConditionPipeline"
    assert models.describe("ltx-mini")["local"] is True
    text = SMALL.replace('model = "tiny-video"', 'model = "ltx-mini"').replace("size = [64, 64]", "size = [32, 32]")
    code, out, err = cli("render", write_spec(text), "--json")
    assert code == 0, err
    assert json.loads(out)["frames"] == 18


def test_remote_code_only_when_a_preset_says_so(presets, write_spec, monkeypatch):
    from diffusers import DiffusionPipeline

    seen = []
    real = DiffusionPipeline.from_pretrained.__func__

    def spy(cls, path, **kw):
        seen.append(kw["trust_remote_code"])
        return real(cls, path, **{k: v for k, v in kw.items() if k != "trust_remote_code"})

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(spy))
    folder = models.local_path(models.resolve("tiny"))
    presets("trusted", f'role = "keyframes"\npipeline = "StableDiffusionPipeline"\nsource = "{folder}"\n'
                       f'trust_remote_code = true\n')
    for name, trusted in (("tiny", False), (str(folder), False), ("trusted", True)):
        task = plan.build(spec.load(write_spec(SMALL.replace('model = "tiny"', f'model = "{name}"')))).by_name()
        models.load_pipeline(models.ref_from_params(task["keyframe[0]"].params.model.to_json()))
        assert seen[-1] is trusted, name


@pytest.mark.parametrize("table,said", [
    ('params = { unet = "big" }', "fit.params.unet: expected a number, got a string"),
    ("params = { unet = 2.6 }\ntoken_bytes = -5", "fit.token_bytes: expected a number > 0"),
    ("patch = [1, 2]", "fit.patch: expected [time, height, width]"),
    ('checks = [{ placement = "all", size = [64, 64], gb = 1.0, sorce = "x" }]', "fit.checks[0].sorce: unknown key"),
    ('checks = [{ placement = "everywhere", gb = 1.0 }]', "fit.checks[0].placement: expected one of all"),
    ('checks = [{ placement = "all" }]', "fit.checks[0].gb: a check needs the published figure"),
    ("checks = 3", "fit.checks: expected a list of tables"),
])
def test_a_preset_with_a_wrong_fit_table_is_refused_at_validation(presets, write_spec, cli, table, said):
    """Not a task run later without a memory estimate: the worker's fitting only lets a model go
    unmeasured when it has no weights here and no [fit] params at all (fit.Unmeasured)."""
    presets("wrong-fit", 'role = "keyframes"\npipeline = "StableDiffusionXLPipeline"\nsource = "builtin:sdxl"\n'
                         f"[fit]\n{table}\n")
    code, out, err = cli("plan", write_spec(SMALL.replace('model = "tiny"', 'model = "wrong-fit"')))
    assert code == 2 and out == "" and "Traceback" not in err
    assert "wrong-fit.toml has 1 problem" in err and said in err
