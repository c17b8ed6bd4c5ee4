"""Preset LoRAs (issue 21): a preset names LoRA files by hub repo, file and revision, each loaded
into one of its family's denoisers (`into`); `farm models pull` fetches them with the base, task
keys hold their content digests, and a warm base pipeline serves the plain and the LoRA preset.

The hub is faked (no network here): `hf_hub_download` writes the file into the Hugging Face
cache layout (HF_HUB_CACHE), where a render looks for it as for real. The LoRAs are made in code
with peft for the Wan 2.2 twin's two experts, random (init_lora_weights=False), and saved the way
diffusers saves trained LoRAs (`save_lora_weights`)."""

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from farm import home, models
from farm.errors import FarmError
from farm.plan import plan, tasks
from farm.queue.cache import Cache
from farm.queue.queue import Queue
from farm.run.render import render
from farm.run.worker import Worker
from farm.spec import spec

REPO = "acme/wan22-distill"

PRESET = """
description = "the Wan 2.2 twin with a LoRA from the (fake) hub"
role = "motion"
pipeline = "WanImageToVideoPipeline"
source = "builtin:wan22"
twin = "tiny-wan22"
fps = 16
max_frames = 81
loras = [{loras}]

[defaults]
steps = 2
guidance = 3.5
size = [32, 32]
max_sequence_length = 64
"""

SPEC = """
[shot]
fps = 8
size = [32, 32]
seed = 2
out = "out/{name}.mp4"

[keyframes]
model = "tiny"
steps = 2

[motion]
model = "{motion}"
steps = 2
{extra}

[[frames]]
prompt = "a kite"
seconds = 0.5
"""


def lora(file, into=None, scale=None, revision=None, repo=REPO):
    parts = [f'repo = "{repo}"', f'file = "{file}"']
    parts += [f'into = "{into}"'] if into else []
    parts += [f"scale = {scale}"] if scale is not None else []
    parts += [f'revision = "{revision}"'] if revision else []
    return "{ " + ", ".join(parts) + " }"


@pytest.fixture(scope="session")
def expert_loras(tmp_path_factory):
    """A random LoRA for each expert of the Wan 2.2 twin: high.safetensors (for `transformer`)
    and low.safetensors (for `transformer_2`), each saved as a transformer LoRA."""
    import torch
    from diffusers import WanImageToVideoPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    from farm.models import families

    pipe = families.of_twin("wan22").twin.build()
    folder = tmp_path_factory.mktemp("expert-loras")
    for seed, (part, name) in enumerate((("transformer", "high"), ("transformer_2", "low")), start=1):
        net = getattr(pipe, part)
        torch.manual_seed(seed)
        net.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                   target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        # init_lora_weights=False leaves B random but small; scale it up so the change is plain
        with torch.no_grad():
            for n, p in net.named_parameters():
                if "lora_B" in n:
                    p.mul_(50)
        WanImageToVideoPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(net),
                                                  weight_name=f"{name}.safetensors")
    return {"high": (folder / "high.safetensors").read_bytes(), "low": (folder / "low.safetensors").read_bytes()}


@pytest.fixture
def hub(tmp_path, monkeypatch, expert_loras):
    """A fake hub: `files[(repo, file, revision)] = bytes` is what it serves; `asked` what
    `farm models pull` asked it for. Downloads land in the cache layout huggingface_hub keeps."""
    import huggingface_hub

    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(models.hub, "_reachable", lambda *a: None)  # as if the hub answered

    class Hub:
        files = {(REPO, "high.safetensors", "main"): expert_loras["high"],
                 (REPO, "low.safetensors", "main"): expert_loras["low"],
                 (REPO, "renamed.safetensors", "main"): expert_loras["low"]}
        asked = []

    def download(repo, filename, revision=None, cache_dir=None, **kw):
        revision = revision or "main"
        Hub.asked.append((repo, filename, revision))
        data = Hub.files[(repo, filename, revision)]
        commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
        folder = Path(cache_dir) / f"models--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / revision).write_text(commit)
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(data)
        path = folder / "snapshots" / commit / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        path.symlink_to(blob)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return Hub


@pytest.fixture
def presets(tmp_path, monkeypatch):
    """A presets folder of our own (FARM_PRESETS), seeded with the shipped ones;
    `presets(name, loras)` writes a Wan 2.2 twin preset with these LoRA entries."""
    folder = tmp_path / "presets"
    shutil.copytree(models.presets_dir(), folder)
    monkeypatch.setenv("FARM_PRESETS", str(folder))

    def write(name, loras="", text=None):
        (folder / f"{name}.toml").write_text(text if text is not None else PRESET.format(loras=loras))

    write.folder = folder
    return write


def segment_key(path) -> str:
    return plan.build(spec.load(path)).by_name()["segment[0]"].key


def test_pull_fetches_a_presets_loras_and_models_says_whether_they_are_here(presets, hub, cli, write_spec):
    presets("tiny-wan22-lora", lora("high.safetensors", into="transformer") + ", "
            + lora("low.safetensors", into="transformer_2"))
    code, out, err = cli("models", "show", "tiny-wan22-lora", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["local"] is False and [lo["present"] for lo in info["loras"]] == [False, False]
    assert "farm models pull tiny-wan22-lora" in info["missing"]
    # a render whose preset LoRA is missing fails at validation, with the command to run
    code, out, err = cli("render", write_spec(SPEC.format(name="x", motion="tiny-wan22-lora", extra="")))
    assert code == 2 and out == "" and "Traceback" not in err
    assert "acme/wan22-distill/high.safetensors" in err and "farm models pull tiny-wan22-lora" in err
    code, out, err = cli("models", "pull", "tiny-wan22-lora")
    assert code == 0, err
    assert (Path(out.strip()) / "model_index.json").is_file()  # the twin, built
    assert hub.asked == [(REPO, "high.safetensors", "main"), (REPO, "low.safetensors", "main")]
    info = json.loads(cli("models", "show", "tiny-wan22-lora", "--json")[1])
    assert info["local"] is True and [lo["present"] for lo in info["loras"]] == [True, True]
    assert [(lo["file"], lo["into"]) for lo in info["loras"]] == [("high.safetensors", "transformer"),
                                                                   ("low.safetensors", "transformer_2")]
    code, out, err = cli("models")
    row = next(line for line in out.splitlines() if line.startswith("tiny-wan22-lora "))
    assert " yes " in row and row.endswith("builtin:wan22 + 2 LoRAs")


def test_the_fast_presets_pull_their_base_and_each_lora_file(presets, hub, cli, monkeypatch, tmp_path):
    import huggingface_hub

    snapshots = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, **kw: snapshots.append((repo, kw["revision"])) or str(tmp_path / "snap"))
    hub.files = {**hub.files, **{("lightx2v/Wan2.2-Distill-Loras", f, "main"): b"x" for f in (
        "wan2.2_i2v_A14b_high_noise_lora_rank64_lightx2v_4step_1022.safetensors",
        "wan2.2_i2v_A14b_low_noise_lora_rank64_lightx2v_4step_1022.safetensors")},
        ("lightx2v/Wan2.1-Distill-Loras", "wan2.1_i2v_lora_rank64_lightx2v_4step.safetensors", "main"): b"y"}
    for name in ("wan22-i2v-fast", "wan21-flf2v-fast"):
        code, out, err = cli("models", "pull", name)
        assert code == 0, err
    assert snapshots == [("Wan-AI/Wan2.2-I2V-A14B-Diffusers", "main"),
                         ("Wan-AI/Wan2.1-FLF2V-14B-720P-Diffusers", "main")]
    assert [(r, f.split("_lora")[0], v) for r, f, v in hub.asked] == [
        ("lightx2v/Wan2.2-Distill-Loras", "wan2.2_i2v_A14b_high_noise", "main"),
        ("lightx2v/Wan2.2-Distill-Loras", "wan2.2_i2v_A14b_low_noise", "main"),
        ("lightx2v/Wan2.1-Distill-Loras", "wan2.1_i2v", "main")]
    fast, base = models.load_preset("wan22-i2v-fast"), models.load_preset("wan22-i2v")
    assert (fast["source"], fast["revision"], fast["pipeline"]) == (base["source"], base["revision"], base["pipeline"])
    assert fast["defaults"]["steps"] == 4 and fast["defaults"]["guidance"] == 1.0
    assert [lo["into"] for lo in fast["loras"]] == ["transformer", "transformer_2"]
    fast = models.load_preset("wan21-flf2v-fast")
    assert fast["source"] == models.load_preset("wan21-flf2v")["source"]
    assert fast["defaults"]["steps"] == 4 and fast["defaults"]["guidance"] == 1.0


def test_a_lora_into_transformer_2_changes_only_the_low_noise_expert(presets, hub, farm_home):
    """Loaded by farm as a worker loads it: the adapter is on `transformer_2` alone, the first
    expert answers as before, the second differently; a call without LoRAs is the base again."""
    import torch

    presets("tiny-wan22-lora", lora("low.safetensors", into="transformer_2"))
    models.pull("tiny-wan22-lora")
    ref = models.resolve("tiny-wan22-lora")
    (lo,) = ref.loras
    assert (lo.into, lo.scale, lo.sha256) == ("transformer_2", 1.0, hashlib.sha256(hub.files[
        (REPO, "low.safetensors", "main")]).hexdigest())
    pipe = models.load_pipeline(models.resolve("tiny-wan22"), "cpu")
    net, net2 = pipe.transformer, pipe.transformer_2
    torch.manual_seed(0)
    args = {"hidden_states": torch.randn(1, 36, 2, 4, 4), "timestep": torch.tensor([500]),
            "encoder_hidden_states": torch.randn(1, 8, 32), "return_dict": False}

    def outputs():
        with torch.no_grad():
            return net(**args)[0], net2(**args)[0]

    before = outputs()
    entries = [{"path": str(lo.path), "sha256": lo.sha256, "scale": lo.scale, "into": lo.into}]
    models.use_loras(pipe, entries)
    name = models.loading.adapter_name(entries[0])
    assert name in net2.peft_config and not getattr(net, "peft_config", None)
    after = outputs()
    assert torch.equal(before[0], after[0]) and not torch.allclose(before[1], after[1])
    models.use_loras(pipe, [])  # a plain call on the same warm pipeline: no adapter leaks into it
    plain = outputs()
    assert torch.equal(before[0], plain[0]) and torch.equal(before[1], plain[1])
    models.use_loras(pipe, entries)  # and back, without loading it again
    assert torch.equal(outputs()[1], after[1])


def test_a_preset_lora_changes_the_render_and_one_warm_base_serves_both(presets, hub, home_with_models, write_spec):
    presets("tiny-wan22-lora", lora("high.safetensors", into="transformer") + ", "
            + lora("low.safetensors", into="transformer_2"))
    models.pull("tiny-wan22-lora")
    worker = Worker(Queue(home.db_path()), Cache(home.cache_dir()))
    runs = {}
    for name in ("tiny-wan22", "tiny-wan22-lora", "again"):
        motion = "tiny-wan22" if name == "again" else name
        runs[name] = render(write_spec(SPEC.format(name=name, motion=motion, extra=""), f"{name}.toml"), worker=worker)
    db = sqlite3.connect(home.db_path())
    keys = {n: db.execute("SELECT key FROM tasks WHERE job_id = ? AND name = 'segment[0]'", (r["job"],)).fetchone()[0]
            for n, r in runs.items()}
    frames = {n: sorted((home.cache_dir() / k[:2] / k).glob("*.png")) for n, k in keys.items()}
    assert keys["tiny-wan22"] != keys["tiny-wan22-lora"] and keys["again"] == keys["tiny-wan22"]
    assert [f.read_bytes() for f in frames["tiny-wan22"]] != [f.read_bytes() for f in frames["tiny-wan22-lora"]]
    assert worker.runner.calls["load"] == 2  # tiny and the Wan 2.2 twin, shared by both presets
    pipe = next(p for p in worker.runner.pipelines.values() if hasattr(p, "transformer_2"))
    high, low = (set(getattr(pipe, part).peft_config) for part in ("transformer", "transformer_2"))
    assert len(high) == len(low) == 1 and high.pop().endswith("_transformer") and low.pop().endswith("_transformer_2")
    # the plain preset on that warm pipeline, after the LoRA one, draws what a fresh worker draws
    fresh = Worker(Queue(home.db_path()), Cache(home.cache_dir() / "fresh"))
    render(write_spec(SPEC.format(name="fresh", motion="tiny-wan22", extra=""), "fresh.toml"), worker=fresh)
    fresh_frames = sorted((home.cache_dir() / "fresh" / keys["again"][:2] / keys["again"]).glob("*.png"))
    assert [f.read_bytes() for f in fresh_frames] == [f.read_bytes() for f in frames["tiny-wan22"]]


def test_the_key_holds_a_preset_loras_content_scale_and_target_not_its_name(presets, hub, farm_home, write_spec):
    def key(loras, name="tiny-wan22-lora"):
        presets(name, loras)
        models.pull(name)
        return segment_key(write_spec(SPEC.format(name="x", motion=name, extra="")))

    base = key(lora("low.safetensors", into="transformer_2"))
    assert key(lora("renamed.safetensors", into="transformer_2")) == base  # same bytes, another name
    assert key(lora("low.safetensors", into="transformer_2"), name="other-name") == base  # the preset's name neither
    assert key(lora("low.safetensors", into="transformer_2", scale=0.5)) != base
    assert key(lora("low.safetensors", into="transformer")) != base
    hub.files = {**hub.files, (REPO, "low.safetensors", "v2"): hub.files[(REPO, "low.safetensors", "main")] + b" "}
    assert key(lora("low.safetensors", into="transformer_2", revision="v2")) != base  # other bytes
    # the base preset without LoRAs keeps its key (tests/test_keys.py pins the shipped ones)
    plain = segment_key(write_spec(SPEC.format(name="x", motion="tiny-wan22", extra="")))
    assert plain not in (base,)
    text = (presets.folder / "tiny-wan22.toml").read_text()
    presets("tiny-wan22", text=text.replace('twin = "tiny-wan22"', 'twin = "tiny-wan22"\nloras = []'))
    assert segment_key(write_spec(SPEC.format(name="x", motion="tiny-wan22", extra=""))) == plain


def test_a_specs_own_loras_add_to_the_presets(presets, hub, farm_home, write_spec, expert_loras):
    presets("tiny-wan22-lora", lora("low.safetensors", into="transformer_2"))
    models.pull("tiny-wan22-lora")
    (write_spec("").parent / "mine.safetensors").write_bytes(expert_loras["high"])
    path = write_spec(SPEC.format(name="x", motion="tiny-wan22-lora",
                                  extra='loras = [{ path = "mine.safetensors", scale = 0.5 }]'))
    task = plan.build(spec.load(path)).by_name()["segment[0]"]
    assert [(lo.into, lo.scale) for lo in task.params.model.loras] == [("transformer_2", 1.0), (None, 0.5)]
    back = tasks.load(task.kind, json.dumps(task.stored()))  # what the queue keeps, and a worker reads
    assert back == task.params and back.key() == task.key
    assert [lo.get("into") for lo in back.model.to_json()["loras"]] == ["transformer_2", None]


@pytest.mark.parametrize("entry, message", [
    ('{ repo = "acme/x", file = "a.safetensors", strength = 1 }', "loras[0].strength: unknown key"),
    ('{ repo = "acme/x" }', "loras[0].file: missing"),
    ('{ file = "a.safetensors" }', "loras[0].repo: missing"),
    ('{ repo = "acme/x", file = "a.safetensors", scale = "high" }', "loras[0].scale: expected a number"),
    ('{ repo = "acme/x", file = "a.bin" }', "loras[0].file: expected a .safetensors file"),
    ('{ repo = "acme/x@v1", file = "a.safetensors" }', "loras[0].repo: expected a hub repo id"),
    ('{ repo = "acme/x", file = "a.safetensors", into = "unet" }',
     "loras[0].into: 'unet' is not a denoiser of this preset's family (transformer, transformer_2)"),
])
def test_bad_preset_loras_are_refused_naming_the_key(presets, cli, entry, message):
    presets("bad", entry)
    code, out, err = cli("models", "show", "bad")
    assert code == 2 and "Traceback" not in err and message in err, err


def test_an_into_the_family_lacks_is_refused(presets, cli):
    """Wan 2.1 has one transformer: a LoRA into `transformer_2` is an error when the preset is
    read, for the twin and for a real preset (whose family its twin tells), not a crash at load."""
    text = (presets.folder / "tiny-wan.toml").read_text() + "\n"
    entry = 'loras = [{ repo = "acme/x", file = "a.safetensors", into = "transformer_2" }]\n'
    presets("wan21-lora", text=text.replace("[defaults]", entry + "\n[defaults]"))
    code, out, err = cli("models", "show", "wan21-lora")
    assert code == 2 and "loras[0].into: 'transformer_2' is not a denoiser of this preset's family (transformer)" in err
    real = (presets.folder / "wan21-flf2v-fast.toml").read_text()
    presets("wan21-real", text=real.replace('into = "transformer" }', 'into = "transformer_2" }'))
    with pytest.raises(FarmError, match=r"loras\[0\]\.into: 'transformer_2' is not a denoiser") as e:
        models.load_preset("wan21-real")
    assert e.value.code == 2
