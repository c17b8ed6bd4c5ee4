"""Fitting the machine (farm/models/fit.py): every real preset's memory needs and the published figures
they are checked against; the chooser's decisions for fake free-memory figures; each decision
applied to a twin; quantization (int8 weight-only on the CPU, FP8's refusal)."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from farm import models
from farm.errors import FarmError
from farm.models import fit
from farm.plan import plan
from farm.queue.cache import Cache
from farm.queue.queue import Queue
from farm.run.runner import Runner
from farm.run.worker import Worker
from farm.spec import spec

# the presets of real weights on the hub (pinned to a revision); not the twins (built in code) nor
# the miniatures (a folder farm ships, trained by scripts/train_miniatures.py)
REAL = [n for n in models.preset_names() if models.load_preset(n).get("revision")]

SHOT = """
[shot]
name = "fit"
fps = 4
size = [128, 128]
seed = 5
out = "out/fit.mp4"

[keyframes]
model = "tiny-sdxl"
steps = 2
{extra}

[motion]
model = "hold"

[[frames]]
prompt = "a lighthouse"
seconds = 0.5
"""


def test_every_real_preset_records_its_needs_and_their_sources():
    # every real preset (the fast ones: their base's weights plus LoRAs), none forgotten
    assert {"sd15", "wan21-flf2v", "qwen-image", "flux2-dev", "wan21-flf2v-fast", "wan22-i2v-fast",
            "wan22-ti2v-5b", "skyreels-v2-i2v", "ltx2"} <= set(REAL)
    for name in REAL:
        text = (models.presets_dir() / f"{name}.toml").read_text()
        table = fit.preset_fit(name)
        params = table["params"]
        assert "vae" in params and any(
            p in params for p in models.preset_family(models.load_preset(name)).denoisers), name
        assert any(p.startswith(("text_encoder", "image_encoder")) for p in params), name
        assert table["token_bytes"] > 0 and table["decode_bytes"] > 0, name
        comment = text.split("[fit]")[0].rsplit("# --- memory", 1)[1]
        for check in table.get("checks", []):
            assert len(check["source"]) > 30, (name, check)
        if table.get("checks"):  # says what each figure is and where it comes from
            assert "params:" in comment and "token_bytes" in comment and "decode_bytes" in comment, name
        else:  # an architecture twin of a checked preset says which, and its source
            assert re.search(r"presets/[\w-]+\.toml", comment) and "model card" in comment, name
    assert sum(bool(fit.preset_fit(n).get("checks")) for n in REAL) == 13


@pytest.mark.parametrize("name", [n for n in REAL if fit.preset_fit(n).get("checks")])
def test_each_estimate_meets_its_published_figure(name):
    """Within 25% of the figure (or under a stated ceiling): what the rule was checked against."""
    for check, got in fit.checks(name):
        if "gb_max" in check:
            assert got <= check["gb_max"] * 1e9, (name, check, got)
        else:
            ratio = got / (check["gb"] * 1e9)
            assert 0.75 <= ratio <= 1.25, f"{name}: {got / 1e9:.2f} GB for {check['gb']} GB ({check['source']})"


def test_the_estimate_follows_size_frames_dtype_and_quantization():
    need = fit.needs("WanImageToVideoPipeline", "wan21-flf2v")
    big = fit.estimate(need, 1280, 720, 81)
    assert fit.estimate(need, 1280, 720, 161).denoise > 1.9 * big.denoise  # linear in latent frames
    assert fit.estimate(need, 832, 480, 81).denoise < 0.5 * big.denoise  # ... and in area
    assert big.decode_tiled < big.decode / 10  # Wan's VAE tiles at 256 px
    peaks = [big.peaks[p] for p in fit.PLACEMENTS]
    assert peaks == sorted(peaks, reverse=True) and len(set(peaks)) == 4
    assert sum(big.weights.values()) == pytest.approx((16.4 + 5.68 + 0.63 + 0.127) * 2e9)
    int8 = fit.estimate(need, 1280, 720, 81, quantize="int8")
    assert int8.weights["transformer"] == pytest.approx(big.weights["transformer"] / 2)
    assert int8.weights["text_encoder"] == big.weights["text_encoder"]  # only the denoiser is quantized
    cpu = fit.estimate(need, 1280, 720, 81, dtype="float32")
    assert cpu.weights["transformer"] == 2 * big.weights["transformer"] and cpu.denoise == 2 * big.denoise


def test_a_twin_is_measured_from_its_safetensors_headers(home_with_models):
    folder = models.local_path(models.resolve("tiny-video"))
    pipe = models.load_pipeline(models.resolve("tiny-video"))
    counted = fit.folder_params(folder)
    assert set(counted) == {"text_encoder", "image_encoder", "transformer", "vae"}
    for part, count in counted.items():
        unique = {t.data_ptr(): t.numel() for t in getattr(pipe, part).state_dict().values()}  # tied: once
        assert count == sum(unique.values()), part
    import shutil

    hub = folder.parent / "as-on-the-hub"  # a hub repo often holds an fp16 variant beside the weights
    shutil.copytree(folder, hub)
    shutil.copy(hub / "transformer" / "diffusion_pytorch_model.safetensors",
                hub / "transformer" / "diffusion_pytorch_model.fp16.safetensors")
    assert fit.folder_params(hub) == counted
    need = fit.needs("WanImageToVideoPipeline", "tiny-video", folder)
    assert need.source.startswith("safetensors headers")
    assert need.token_bytes < 2000 and need.decode_bytes < 100  # a twin's rule, not its family's


def free_for(est, placement, device):
    """Just enough free memory for this placement's peak (with the chooser's headroom)."""
    return int(est.peaks[placement] * fit.HEADROOM) + (fit.CUDA_RESERVE if device.startswith("cuda") else 0) + 1


def test_the_chooser_takes_the_cheapest_way_that_fits():
    need = fit.needs("WanImageToVideoPipeline", "wan21-flf2v")
    est = fit.estimate(need, 1280, 720, 81, label="wan21-flf2v")
    ram = 512 * 10**9
    for placement in fit.PLACEMENTS:
        free = free_for(est, placement, "cuda:0")
        choice = fit.choose(est, free, "cuda:0", host_free=ram)
        assert choice.placement == placement and choice.tiling == (placement != "all")
        assert choice.resident == (sum(est.weights.values()) if placement in ("all", "vae_tiling") else 0)
        if placement != "sequential_offload":  # a byte less and it takes the next one down
            assert fit.rank(fit.choose(est, free - 2, "cuda:0", host_free=ram).placement) == fit.rank(placement) + 1
    assert fit.choose(est, 141 * 10**9, "cuda:0").placement == "all"  # an H200
    assert fit.choose(est, 56 * 10**9, "cuda:0").placement == "model_offload"  # an 80 GB card, 24 GB in use
    assert fit.choose(est, 24 * 10**9, "cuda:0").placement == "sequential_offload"  # a 4090
    with pytest.raises(FarmError) as e:
        fit.choose(est, 8 * 10**9, "cuda:0")
    assert e.value.code == 2 and "needs about 14.0 GB even with sequential offload" in e.value.message
    assert "8.0 GB of free memory on cuda:0" in e.value.message and 'quantize = "int8"' in e.value.message
    # offloading keeps the weights in host RAM: without room there it is no way out
    with pytest.raises(FarmError):
        fit.choose(est, 24 * 10**9, "cuda:0", host_free=30 * 10**9)
    # a preset's [memory] flags are a floor
    assert fit.choose(est, 141 * 10**9, "cuda:0", floor={"cpu_offload": True}).placement == "model_offload"
    assert fit.choose(est, 141 * 10**9, "cuda:0", floor={"vae_tiling": True}).placement == "vae_tiling"
    # torchao's tensors do not go through accelerate's layer-by-layer hooks
    q = fit.estimate(need, 1280, 720, 81, quantize="int8")
    with pytest.raises(FarmError, match="model offload"):
        fit.choose(q, free_for(q, "sequential_offload", "cuda:0"), "cuda:0")
    # the CPU has RAM and no offloading
    cpu = fit.estimate(need, 1280, 720, 81, dtype="float32", label="wan21-flf2v")
    assert fit.choose(cpu, free_for(cpu, "vae_tiling", "cpu"), "cpu").placement == "vae_tiling"
    with pytest.raises(FarmError, match="vae tiling .*free RAM"):
        fit.choose(cpu, free_for(cpu, "vae_tiling", "cpu") - 2, "cpu")


def run_job(write_spec, farm_home, text, free=None, monkeypatch=None, device=None, name="shot.toml"):
    s = spec.load(write_spec(text, name))
    q = Queue(farm_home / "queue.db")
    job = q.submit(plan.build(s))
    if free is not None:
        monkeypatch.setattr(models, "free_memory", lambda dev: free)
    with Worker(q, Cache(farm_home / "cache"), device=device) as w:
        w.drain(job)
    return q, job, w, s


def test_the_worker_tiles_the_vae_of_a_twin_when_only_that_fits(write_spec, farm_home, monkeypatch):
    text = SHOT.format(extra="")
    task = plan.build(spec.load(write_spec(text))).by_name()["keyframe[0]"]
    folder = models.local_path(models.resolve("tiny-sdxl"))
    est = fit.for_model(task.params.model, task.params.shape, "cpu", folder)
    assert est.decode_tiled < est.decode / 3  # the twin's VAE tiles at 64 px; 128 px is 4 tiles

    q, job, w, _ = run_job(write_spec, farm_home, text, free_for(est, "vae_tiling", "cpu"), monkeypatch)
    assert q.job(job)["state"] == "done"
    assert w.runner.last_fit.placement == "vae_tiling" and next(iter(w.runner.pipelines.values())).vae.use_tiling
    tiled = np.asarray(Image.open(w.runner.output(q.tasks(job)[0]["key"]) / "image.png")).astype(int)

    home2 = farm_home.parent / "home2"
    monkeypatch.setenv("FARM_HOME", str(home2))
    q, job, w, _ = run_job(write_spec, home2, text, 64 * 10**9, monkeypatch)
    assert w.runner.last_fit.placement == "all" and not next(iter(w.runner.pipelines.values())).vae.use_tiling
    plain = np.asarray(Image.open(w.runner.output(q.tasks(job)[0]["key"]) / "image.png")).astype(int)
    assert not np.array_equal(tiled, plain)  # tiles blend at their seams: the decode really was tiled

    home3 = farm_home.parent / "home3"
    monkeypatch.setenv("FARM_HOME", str(home3))
    q, job, w, _ = run_job(write_spec, home3, text, free_for(est, "vae_tiling", "cpu") - 2, monkeypatch)
    record = q.job(job)
    assert record["state"] == "failed"  # refused before it ran, with the figures, not an OOM mid-job
    failed = next(t for t in q.tasks(job) if t["state"] == "failed")
    assert "needs about" in failed["error"] and "free RAM" in failed["error"] and failed["attempts"] == 1


def test_offload_choices_are_applied_to_a_twin(write_spec, farm_home, monkeypatch):
    """A worker on a (fake) 'cuda:0' with little free memory chooses offload and loads the twin
    with it, here onto the CPU: model offload's hooks run there for real and draw the same
    pixels; sequential offload's, with the CPU as execution device, break inside accelerate
    (set_module_tensor_to_device to "meta"), so for it the call plan is checked."""
    from diffusers import DiffusionPipeline

    sequential = []
    monkeypatch.setattr(DiffusionPipeline, "enable_sequential_cpu_offload",
                        lambda self, device=None: sequential.append((type(self).__name__, device)))
    text = SHOT.format(extra="")
    task = plan.build(spec.load(write_spec(text))).by_name()["keyframe[0]"]
    folder = models.local_path(models.resolve("tiny-sdxl"))
    est = fit.for_model(task.params.model, task.params.shape, "cuda:0", folder)
    real_load, placed = models.load_pipeline, []

    def load_on_cpu(ref, dev=None, placement=None):
        placed.append((dev, placement))
        return fit.place(real_load(ref, "cpu"), placement, "cpu")

    monkeypatch.setattr(models, "load_pipeline", load_on_cpu)
    monkeypatch.setattr(models, "release_memory", lambda dev: None)
    images = {}
    for placement in fit.PLACEMENTS:
        home = farm_home.parent / f"home-{placement}"
        monkeypatch.setenv("FARM_HOME", str(home))
        free = free_for(est, placement, "cuda:0")
        q, job, w, _ = run_job(write_spec, home, text, free, monkeypatch, device="cuda:0")
        assert q.job(job)["state"] == "done", [t["error"] for t in q.tasks(job)]
        assert placed[-1] == ("cuda:0", placement) and w.runner.last_fit.placement == placement
        pipe = next(iter(w.runner.pipelines.values()))
        assert hasattr(pipe.unet, "_hf_hook") == (placement == "model_offload"), placement
        assert sequential == ([("StableDiffusionXLPipeline", "cpu")] if placement == "sequential_offload" else [])
        images[placement] = np.asarray(Image.open(w.runner.output(q.tasks(job)[0]["key"]) / "image.png")).astype(int)
    # offloading moves weights, not the picture (within one 8-bit level here); the offloads tile
    # the VAE as vae_tiling does, which blends tile seams: unlike the untiled decode
    assert np.abs(images["model_offload"] - images["vae_tiling"]).max() <= 1
    assert np.array_equal(images["sequential_offload"], images["vae_tiling"])
    assert not np.array_equal(images["all"], images["vae_tiling"])


def test_a_warm_pipeline_is_reloaded_with_more_offloading_when_a_bigger_task_needs_it(farm_home, monkeypatch):
    class Loaded:
        placement = None

        def set_progress_bar_config(self, **kw):
            pass

    def load(ref, dev=None, placement=None):
        pipe = Loaded()
        pipe.placement = placement
        return pipe

    monkeypatch.setattr(models, "load_pipeline", load)
    monkeypatch.setattr(models, "release_memory", lambda dev: None)
    folder = models.local_path(models.resolve("tiny-sdxl"))
    model = plan._model(models.resolve("tiny-sdxl"))
    small = fit.for_model(model, (128, 128, 1), "cuda:0", folder)
    device_free = free_for(small, "all", "cuda:0")
    monkeypatch.setattr(models, "free_memory", lambda dev: 10**12 if dev == "cpu" else device_free)
    w = Runner(Cache(farm_home / "cache"), device="cuda:0")
    first = w.pipe(model, (128, 128, 1))
    assert first.placement == "all" and w.calls["load"] == 1
    assert w.pipe(model, (128, 128, 1)) is first and w.calls["load"] == 1  # warm
    resident = sum(small.weights.values())

    def level(side):
        try:
            return fit.offload_level(fit.choose(fit.for_model(model, (side, side, 1), "cuda:0", folder),
                                                device_free + resident, "cuda:0").placement)
        except FarmError:  # fits no way at all
            return None

    sizes = [side for side in range(160, 1024, 32) if level(side)]
    bigger = w.pipe(model, (sizes[0], sizes[0], 1))  # all on the device no longer fits
    assert bigger is not first and bigger.placement in ("model_offload", "sequential_offload")
    assert (w.calls["load"], w.calls["unload"]) == (2, 1)
    assert w.pipe(model, (128, 128, 1)) is bigger  # a smaller task keeps the offloaded one


# --- quantization -------------------------------------------------------------------------


def test_int8_weight_only_on_a_twin_renders_and_differs_only_slightly(write_spec, cli, farm_home):
    import torch

    stock = plan.build(spec.load(write_spec(SHOT.format(extra=""), "stock.toml"))).by_name()["keyframe[0]"]
    text = SHOT.format(extra='quantize = "int8"').replace("out/fit.mp4", "out/int8.mp4")
    quant = plan.build(spec.load(write_spec(text, "int8.toml"))).by_name()["keyframe[0]"]
    assert "quantize" not in stock.params.to_json()["model"]  # keys of unquantized models are as they were
    assert quant.params.model.quantize == "int8" and quant.key != stock.key
    for name in ("stock.toml", "int8.toml"):
        code, out, err = cli("render", write_spec((SHOT.format(extra="") if name == "stock.toml" else text)
                                                  .replace("out/fit.mp4", f"out/{name}.mp4"), name), "--json")
        assert code == 0, err
        assert json.loads(out)["frames"] == 2
    cache = Cache(farm_home / "cache")
    a = np.asarray(Image.open(cache.path(stock.key) / "image.png")).astype(int)
    b = np.asarray(Image.open(cache.path(quant.key) / "image.png")).astype(int)
    diff = np.abs(a - b)
    assert 0 < diff.mean() < 1.0 and diff.max() <= 8  # int8 weights: another picture, barely
    pipe = models.load_pipeline(models.ref_from_params(quant.params.model.to_json()), "cpu")
    weight = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.weight
    assert type(weight).__module__.startswith("torchao")  # quantized by diffusers' TorchAO backend
    assert all(type(p) is torch.nn.Parameter for p in pipe.text_encoder.parameters())  # the denoiser only


def test_quantize_in_a_preset(write_spec, farm_home, tmp_path, monkeypatch):
    import shutil

    folder = tmp_path / "presets"
    shutil.copytree(models.presets_dir(), folder)
    monkeypatch.setenv("FARM_PRESETS", str(folder))
    (folder / "tiny-sdxl-int8.toml").write_text(
        'role = "keyframes"\npipeline = "StableDiffusionXLPipeline"\nsource = "builtin:sdxl"\nquantize = "int8"\n'
        '[defaults]\nsteps = 2\n')
    task = plan.build(spec.load(write_spec(SHOT.replace('"tiny-sdxl"', '"tiny-sdxl-int8"').format(extra=""))))
    assert task.by_name()["keyframe[0]"].params.model.quantize == "int8"
    est = fit.describe("tiny-sdxl-int8", device="cpu")
    unet = fit.folder_params(models.local_path(models.resolve("tiny-sdxl")))["unet"]
    assert est.quantize == "int8"  # a UNet's Linear weights in one byte, its convolutions in float32
    assert est.weights["unet"] == round(unet * (fit.UNET_LINEAR + (1 - fit.UNET_LINEAR) * 4))
    (folder / "bad.toml").write_text('role = "keyframes"\npipeline = "StableDiffusionXLPipeline"\n'
                                     'source = "builtin:sdxl"\nquantize = "int4"\n')
    with pytest.raises(FarmError, match="quantize: expected one of 'int8', 'fp8', got 'int4'"):
        models.resolve("bad")


def test_fp8_needs_compute_capability_8_9(write_spec, cli, monkeypatch):
    for capability in ((8, 9), (9, 0), (10, 0)):
        fit.check_quantize("fp8", "cuda:0", capability)
    for capability in ((8, 6), (8, 0), (7, 5)):
        with pytest.raises(FarmError,
                           match=f"needs compute capability 8.9 or newer.*has {capability[0]}.{capability[1]}"):
            fit.check_quantize("fp8", "cuda:0", capability)
    with pytest.raises(FarmError, match="this worker runs on the CPU"):
        fit.check_quantize("fp8", "cpu")
    fit.check_quantize("int8", "cpu")
    # at validation, against this machine's GPUs: exit 2 before anything runs
    text = SHOT.format(extra='quantize = "fp8"')
    monkeypatch.setattr(fit, "cuda_capabilities", lambda: [])
    code, out, err = cli("render", write_spec(text))
    assert code == 2 and "keyframes.quantize" in err and "runs on the CPU" in err and "Traceback" not in err
    monkeypatch.setattr(fit, "cuda_capabilities", lambda: [(9, 0), (8, 6)])
    code, out, err = cli("render", write_spec(text))
    assert code == 2 and "has 8.6" in err
    monkeypatch.setattr(fit, "cuda_capabilities", lambda: [(9, 0)])
    task = plan.build(spec.load(write_spec(text))).by_name()["keyframe[0]"]
    assert task.params.model.quantize == "fp8"
    # ...and where the model loads, before any weight is read
    from farm.models import placement

    monkeypatch.setattr(placement, "capability", lambda dev: (8, 0))
    with pytest.raises(FarmError, match="cuda:0 has 8.0"):
        models.load_pipeline(models.ref_from_params(task.params.model.to_json()), "cuda:0")
    code, out, err = cli("render", write_spec(SHOT.format(extra='quantize = "nf4"')))
    assert code == 2 and "keyframes.quantize: expected one of 'int8', 'fp8', got 'nf4'" in err


def test_models_show_prints_the_estimate(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    code, out, err = cli("models", "show", "wan21-flf2v")
    assert code == 0, err
    assert "1280x720, 81 frames, bfloat16: weights 45.7 GB" in out
    for placement in fit.PLACEMENTS:
        assert re.search(rf"{placement}\s+[\d.]+ GB peak", out), placement
    code, out, err = cli("models", "show", "wan21-flf2v", "--json", "--size", "832x480", "--frames", "49")
    est = json.loads(out)["estimate"]
    assert (est["width"], est["height"], est["frames"]) == (832, 480, 49)
    assert est["peaks"]["all"] > est["peaks"]["model_offload"] > est["peaks"]["sequential_offload"] > 0
    code, out, err = cli("models", "show", "sdxl", "--size", "big")
    assert code == 2 and "--size: expected WIDTHxHEIGHT" in err
    code, out, err = cli("models", "show", "hold")
    assert code == 2  # not a preset


def test_farm_plan_reports_each_tasks_peak_memory(write_spec, cli):
    text = SHOT.format(extra="").replace('model = "hold"', 'model = "tiny-video"\nsteps = 2')
    code, out, err = cli("plan", write_spec(text), "--json")
    assert code == 0, err
    tasks = {t["name"]: t for t in json.loads(out)["tasks"]}
    built = plan.build(spec.load(write_spec(text))).by_name()
    for name, task in tasks.items():
        expected = fit.task_memory(built[name].params)
        assert task["memory_bytes"] == expected, name
        assert (expected is None) == (built[name].params.model is None), name
    assert tasks["keyframe[0]"]["memory_bytes"] > 0 and tasks["assemble"]["memory_bytes"] is None


def test_farm_plan_of_a_sweep_estimates_each_model_and_shape_once(write_spec, monkeypatch):
    """`farm plan` of a sweep reports every task's own estimate, but makes each distinct one
    (model, kind, shape) once: a 500-variant sweep took 13.7 s making 3,500 of them."""
    from farm.plan.forecast import forecast

    text = SHOT.format(extra="").replace('model = "hold"', 'model = "tiny-video"\nsteps = 2') + \
        '\n[[frames]]\nprompt = "a gull"\nseconds = 0.5\n' \
        '\n[sweep]\n"shot.seed" = [1, 2, 3, 4]\n"keyframes.model" = ["tiny", "tiny-sdxl"]\n' \
        '"shot.size" = [[64, 64], [96, 64]]\n'
    path = write_spec(text)
    calls = []
    real = fit.task_memory
    monkeypatch.setattr(fit, "task_memory", lambda task, *a: calls.append(task.kind) or real(task, *a))
    results = forecast(path)
    assert len(results) == 16
    shapes = set()
    for variant, result in zip(spec.load_all(path), results):
        built = plan.build(variant).by_name()
        for task in result["tasks"]:
            params = built[task["name"]].params
            assert task["memory_bytes"] == real(params), (variant.name, task["name"])
            if params.model is not None:
                shapes.add((task["kind"], params.shape, json.dumps(params.model.to_json(), sort_keys=True)))
    assert len(calls) == len(shapes) < 16 * 3
