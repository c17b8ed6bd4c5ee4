"""LoRA adapters: validated paths, part of the task key by content and scale, applied with peft."""

import hashlib
import shutil
import sqlite3

import pytest

from conftest import SMALL
from farm import home
from farm.plan import plan
from farm.queue.cache import Cache
from farm.queue.queue import Queue
from farm.run.render import render
from farm.run.worker import Worker
from farm.spec import spec

LORA_SPEC = SMALL.replace('model = "tiny-video"', 'model = "hold"').replace(
    'steps = 2\n\n[motion]', 'steps = 2\nloras = [{ path = "style.safetensors", scale = 0.8 }]\n\n[motion]', 1)


@pytest.fixture(scope="session")
def lora_file(tmp_path_factory):
    """A random LoRA for the tiny SD UNet's attention, made with peft and saved the way
    diffusers saves trained LoRAs (`save_lora_weights`)."""
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    from farm.models import families

    pipe = families.of_twin("text-to-image").twin.build()
    torch.manual_seed(1)
    # init_lora_weights=False: random A and B (peft's default B = 0 would be a no-op adapter)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    folder = tmp_path_factory.mktemp("lora")
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(pipe.unet),
                                              weight_name="style.safetensors", safe_serialization=True)
    return folder / "style.safetensors"


def keyframe_keys(job):
    db = sqlite3.connect(home.db_path())
    return dict(db.execute("SELECT name, key FROM tasks WHERE job_id = ? AND kind = 'keyframe'", (job,)).fetchall())


def image(key):
    return hashlib.sha256((home.cache_dir() / key[:2] / key / "image.png").read_bytes()).hexdigest()


def test_lora_changes_pixels_and_keys_and_one_warm_model_serves_both(home_with_models, write_spec, lora_file):
    shutil.copy(lora_file, write_spec("").parent / "style.safetensors")
    worker = Worker(Queue(home.db_path()), Cache(home.cache_dir()))
    plain = render(write_spec(SMALL.replace('model = "tiny-video"', 'model = "hold"'), "plain.toml"), worker=worker)
    styled = render(write_spec(LORA_SPEC, "styled.toml"), worker=worker)
    again = render(write_spec(SMALL.replace('model = "tiny-video"', 'model = "hold"').replace("seed = 3", "seed = 4"),
                              "plain2.toml"), worker=worker)
    a, b = keyframe_keys(plain["job"]), keyframe_keys(styled["job"])
    assert a["keyframe[0]"] != b["keyframe[0]"] and a["keyframe[2]"] == b["keyframe[2]"]  # the picture: no model
    assert image(a["keyframe[0]"]) != image(b["keyframe[0]"])  # the adapter changed what was drawn
    assert worker.runner.calls["load"] == 1  # one base model, adapters switched per call
    # after a LoRA call, a plain call draws as if no LoRA had ever been loaded
    c = keyframe_keys(again["job"])
    worker2 = Worker(Queue(home.db_path()), Cache(home.cache_dir() / "fresh"))
    fresh = render(write_spec(SMALL.replace('model = "tiny-video"', 'model = "hold"').replace("seed = 3", "seed = 4"),
                              "plain3.toml"), worker=worker2)
    d = keyframe_keys(fresh["job"])
    assert c == d
    assert (home.cache_dir() / c["keyframe[0]"][:2] / c["keyframe[0]"] / "image.png").read_bytes() == \
        (home.cache_dir() / "fresh" / d["keyframe[0]"][:2] / d["keyframe[0]"] / "image.png").read_bytes()


def test_lora_identity_is_content_and_scale_not_path(write_spec, lora_file, tmp_path):
    folder = write_spec("").parent
    shutil.copy(lora_file, folder / "style.safetensors")
    key = plan.build(spec.load(write_spec(LORA_SPEC))).by_name()["keyframe[0]"].key
    shutil.copy(lora_file, folder / "moved.safetensors")
    moved = LORA_SPEC.replace("style.safetensors", "moved.safetensors")
    assert plan.build(spec.load(write_spec(moved))).by_name()["keyframe[0]"].key == key
    scaled = LORA_SPEC.replace("scale = 0.8", "scale = 0.5")
    assert plan.build(spec.load(write_spec(scaled))).by_name()["keyframe[0]"].key != key
    with open(folder / "style.safetensors", "ab") as f:
        f.write(b" ")  # other bytes: another LoRA
    assert plan.build(spec.load(write_spec(LORA_SPEC))).by_name()["keyframe[0]"].key != key


def test_bad_lora_paths_are_input_errors(write_spec, cli):
    (write_spec("").parent / "notes.bin").write_bytes(b"x")
    text = LORA_SPEC.replace("style.safetensors", "missing.safetensors")
    text = text.replace('seconds = 0.5\n', 'seconds = 0.5\nloras = [{ path = "notes.bin" }, { scale = 2 }]\n', 1)
    code, out, err = cli("render", write_spec(text))
    assert code == 2 and out == "" and "Traceback" not in err
    assert "keyframes.loras[0].path: no such LoRA file" in err and "missing.safetensors" in err
    assert "frames[1].loras[0].path: notes.bin: farm loads LoRAs from .safetensors files only" in err
    assert "frames[1].loras[1].path: missing" in err


def test_loras_on_an_animatic_are_an_error(write_spec, lora_file, cli):
    shutil.copy(lora_file, write_spec("").parent / "style.safetensors")
    text = LORA_SPEC.replace('[motion]\nmodel = "hold"',
                             '[motion]\nmodel = "hold"\nloras = [{ path = "style.safetensors" }]')
    code, out, err = cli("render", write_spec(text))
    assert code == 2 and "motion.loras: LoRAs apply to diffusers models; 'hold' is an ffmpeg animatic" in err
    assert err.count("ffmpeg animatic") == 1  # once, not once per frame


MOTION_SPEC = """
[shot]
fps = 8
size = [32, 32]
out = "out/{name}.mp4"

[keyframes]
model = "tiny"
steps = 2

[motion]
model = "tiny-video"
steps = 2
{loras}

[[frames]]
prompt = "a kite"
seconds = 0.5
"""


def test_a_motion_lora_changes_the_segment(home_with_models, write_spec, tmp_path):
    import torch
    from diffusers import WanImageToVideoPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    from farm.models import families

    pipe = families.of_twin("image-to-video").twin.build()
    torch.manual_seed(1)
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                            target_modules=["to_q", "to_v"]))
    folder = write_spec("").parent
    WanImageToVideoPipeline.save_lora_weights(folder,
                                              transformer_lora_layers=get_peft_model_state_dict(pipe.transformer),
                                              weight_name="motion.safetensors")
    worker = Worker(Queue(home.db_path()), Cache(home.cache_dir()))
    plain = render(write_spec(MOTION_SPEC.format(name="plain", loras="")), worker=worker)
    styled = render(write_spec(MOTION_SPEC.format(name="styled", loras='loras = [{ path = "motion.safetensors" }]'),
                               "styled.toml"), worker=worker)
    assert styled["tasks"] == {"total": 3, "run": 2, "cached": 1}  # the keyframe is shared
    db = sqlite3.connect(home.db_path())
    seg = [db.execute("SELECT key FROM tasks WHERE job_id = ? AND name = 'segment[0]'", (r["job"],)).fetchone()[0]
           for r in (plain, styled)]
    frames = [sorted((home.cache_dir() / k[:2] / k).glob("*.png")) for k in seg]
    assert seg[0] != seg[1] and len(frames[0]) == len(frames[1]) == 4
    assert frames[0][-1].read_bytes() != frames[1][-1].read_bytes()
    assert worker.runner.calls["load"] == 2  # tiny + tiny-video, the adapter added to the warm one


def test_lora_on_an_accelerated_model(home_with_models, write_spec, lora_file):
    """Issues 5 and 6 together: a LoRA applies to a model with `accelerate = ["kernels"]` (the
    adapter changes the picture), and one loaded accelerated pipeline serves both calls."""
    shutil.copy(lora_file, write_spec("").parent / "style.safetensors")
    worker = Worker(Queue(home.db_path()), Cache(home.cache_dir()))
    # one keyframe of one step drawn: under Triton's interpreter each kernel launch costs milliseconds
    styled_spec = LORA_SPEC.replace("steps = 2\n", 'steps = 1\naccelerate = ["kernels"]\n', 1).replace(
        '[[frames]]\nprompt = "a blue boat"\nseconds = 0.5\n\n', "")
    plain_spec = styled_spec.replace('loras = [{ path = "style.safetensors", scale = 0.8 }]\n', "")
    plain = render(write_spec(plain_spec, "fast.toml"), worker=worker)
    styled = render(write_spec(styled_spec, "fast-styled.toml"), worker=worker)
    a, b = keyframe_keys(plain["job"]), keyframe_keys(styled["job"])
    assert image(a["keyframe[0]"]) != image(b["keyframe[0]"])
    assert worker.runner.calls["load"] == 1


def test_a_lora_edited_after_planning_is_refused(home_with_models, write_spec, lora_file):
    """A task's key holds its LoRA's digest from planning time; the file edited while the job
    waited must not be applied under that key."""
    folder = write_spec("").parent
    shutil.copy(lora_file, folder / "style.safetensors")
    queue = Queue(home.db_path())
    job = queue.submit(plan.build(spec.load(write_spec(LORA_SPEC))))
    data = bytearray((folder / "style.safetensors").read_bytes())
    data[-1] ^= 0xFF  # the last byte of the last tensor: still a valid file, other weights
    (folder / "style.safetensors").write_bytes(bytes(data))
    Worker(queue, Cache(home.cache_dir())).drain(until_empty=True)
    rows = queue.tasks(job)
    failed = [t for t in rows if t["state"] == "failed"]
    assert failed and all("style.safetensors changed after the job was planned" in t["error"] for t in failed)
    assert not any(t["kind"] == "keyframe" and "loras" in t["params"].get("model", {}) and t["state"] == "done"
                   for t in rows)
