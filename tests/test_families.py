"""The families registry (farm/models/families/): every family is complete and agrees with itself, with
its twin and with its presets, and no other module keeps a table of families.

What this rules out is the kind of disagreement farm once had, when one module said CogVideoX
makes 4k+1 frames and another 8k+1: a family's frame rule, window, rate, size granularity and
memory rule are each stated once, and checked here against each other and against the model
its twin builds."""

import ast
import json
from pathlib import Path

import pytest

from farm import models
from farm.models import families, fit, timing
from farm.models.families import cogvideox

FARM = Path(__file__).resolve().parent.parent / "farm"
NAMES = ["SD 1.x", "SDXL", "SD3", "Flux", "Qwen-Image", "FLUX.2", "Wan 2.1", "Wan 2.2", "Wan 2.2 TI2V-5B", "LTX-Video",
         "CogVideoX", "SkyReels-V2", "LTX-2", "HunyuanVideo FramePack"]
BY_NAME = {f.name: f for f in families.FAMILIES}


def test_the_registry_holds_every_family_once():
    assert sorted(f.name for f in families.FAMILIES) == sorted(NAMES)
    assert len({f.twin.recipe for f in families.FAMILIES}) == len(NAMES)
    for f in families.FAMILIES:  # each found by its class (and, for a shared class, its components and config)
        assert families.family(f.pipeline, f.requires, f.requires_config) is f, f.name
        assert families.of_twin(f.twin.recipe) is f, f.name
    # Wan 2.1, 2.2 A14B and 2.2 TI2V-5B share a class: a model with a second expert is the A14B,
    # one whose pipeline config says expand_timesteps the 5B, any other Wan 2.1
    wan = "WanImageToVideoPipeline"
    assert families.family(wan).name == "Wan 2.1"
    assert families.family(wan, ["transformer", "transformer_2", "vae"]).name == "Wan 2.2"
    assert families.family(wan, ["transformer", "transformer_2"], {"expand_timesteps": False}).name == "Wan 2.2"
    assert families.family(wan, ["transformer", "vae"], {"expand_timesteps": True}).name == "Wan 2.2 TI2V-5B"
    assert families.family(wan, ["transformer", "image_encoder"], {"expand_timesteps": False}).name == "Wan 2.1"
    assert families.family("NoSuchPipeline") is None


@pytest.mark.parametrize("name", NAMES)
def test_every_family_is_complete(name):
    f = BY_NAME[name]
    assert f.pipeline.endswith("Pipeline") and f.role in families.ROLES
    assert f.conditioning in families.CONDITIONING and f.multiple_of > 0 and callable(f.shape)
    assert f.denoisers and all(d in ("unet", "transformer", "transformer_2") for d in f.denoisers)
    assert set(f.requires) <= set(f.denoisers)
    m = f.memory
    assert m.spatial > 0 and m.temporal > 0 and len(m.patch) == 3 and m.tile > 0 and m.experts >= 1
    assert min(m.token_bytes, m.decode_bytes, m.ref_params, m.ref_vae) > 0 and m.decode_frames >= 0
    # its twin's builder is in its own module (farm/models/families/), built from what twins.py shares
    assert f.twin.builder.__name__ == "build_twin" and f.twin.builder.__module__.startswith("farm.models.families.")
    assert f.twin.version >= 1
    if f.role == "keyframes":
        assert f.conditioning == "prompt only" and f.time is None and f.adapter is None and m.temporal == 1
    else:
        assert f.conditioning != "prompt only" and f.time is not None and callable(f.adapter)
        assert f.time.fps > 0 and f.time.window > f.time.offset + f.time.step


@pytest.mark.parametrize("name", NAMES)
def test_every_family_agrees_with_itself(name):
    """Size granularity, frame rule, window and rate, as the family states them, as its shape
    rule gives them with no config, and as its memory rule's compression and patches imply."""
    f = BY_NAME[name]
    for config in ({}, f.twin.shapes):
        rule = f.shape(config)
        assert rule.family == f.pipeline and rule.multiple == f.multiple_of, config
        assert rule.ends == f.ends, config
        if f.time:
            assert (rule.step, rule.offset) == (f.time.step, f.time.offset), config
    m = f.memory
    assert m.spatial * m.patch[1] == m.spatial * m.patch[2] == f.multiple_of  # VAE x patch = side granularity
    if f.time:
        # a latent frame holds `temporal` frames (the causal first one alone: offset 1), and
        # the denoiser patches `patch[0]` latent frames: one step of the rule is both; a call
        # that packs its video in sections (FramePack) steps a whole section of them at a time
        assert f.time.offset == 1 and f.time.step == m.temporal * m.patch[0] * f.time.section
        assert f.time.valid(f.time.window) and f.fps_window({}) == (f.time.fps, f.time.window)
        rule = f.shape({})
        assert rule.max_frames is None or f.time.window <= rule.max_frames
        if f.time.section == 1:
            assert 2 <= f.time.window / f.time.fps <= 20  # a few seconds per call, as video models are trained
            assert f.call_frames is None and m.section_frames == 0  # asked for what it makes, sees it all at once
        else:  # its window is the longest video one call is known to make; each pass sees one section
            assert 2 <= f.time.window / f.time.fps <= 120 and 0 < m.section_frames < f.time.window
            for k in (1, 2, 5):  # asked in its own terms for k steps of the rule
                assert f.num_frames(f.time.offset + f.time.step * k) > 0
        assert f.ends == (f.conditioning in ("first and last frame", "keyframe conditions"))


V10 = {"patch_size": 2, "patch_size_t": None, "sample_width": 90, "sample_height": 60,
       "use_learned_positional_embeddings": True}  # CogVideoX-5b-I2V's transformer config


def test_cogvideox_10_and_15_each_keep_their_own_rule():
    """CogVideoX 1.0 (no temporal patches) makes 4k+1 frames, 49 at 8 fps; 1.5 (patch_size_t 2)
    8k+1, 81 at 16 fps. The version is read from the transformer's config."""
    v10 = V10
    rule, (fps, window) = cogvideox.shape(v10), cogvideox.native_time(v10)
    assert (rule.step, rule.offset, fps, window) == (4, 1, 8, 49) and rule.valid_frames(window)
    assert rule.fixed == (720, 480)
    rotary = dict(v10, use_learned_positional_embeddings=False)  # CogVideoX-5b (text-to-video)
    assert cogvideox.shape(rotary).step == 4 and cogvideox.shape(rotary).fixed is None
    v15 = dict(v10, patch_size_t=2, sample_width=300, sample_height=300, use_learned_positional_embeddings=False)
    rule, (fps, window) = cogvideox.shape(v15), cogvideox.native_time(v15)
    assert (rule.step, rule.offset, fps, window) == (8, 1, 16, 81) and rule.valid_frames(window)
    assert (rule.max_width, rule.max_height) == (2400, 2400)
    assert cogvideox.shape({}) == rule  # without a config: 1.5, as the family says


@pytest.fixture(scope="module")
def twins():
    return {f.name: f.twin.build() for f in families.FAMILIES}


def _compression(pipe) -> tuple[int, int]:
    spatial = (getattr(pipe, "vae_scale_factor_spatial", None) or getattr(pipe, "vae_spatial_compression_ratio", None)
               or pipe.vae_scale_factor)
    temporal = (getattr(pipe, "vae_scale_factor_temporal", None)
                or getattr(pipe, "vae_temporal_compression_ratio", None) or 1)
    return spatial, temporal


@pytest.mark.parametrize("name", NAMES)
def test_every_twin_builds_and_agrees_with_its_family(name, twins):
    f, pipe = BY_NAME[name], twins[name]
    assert type(pipe).__name__ == f.pipeline
    held = [k for k, v in pipe.components.items() if v is not None]
    assert families.of_pipe(f.pipeline, pipe) is f  # the twin is recognised as its family (components, config)
    assert [d for d in ("unet", "transformer", "transformer_2") if d in held] == list(f.denoisers)
    config = dict(getattr(pipe, f.denoisers[0]).config)
    for key, value in f.twin.shapes.items():  # timing reads these without building the twin
        assert config[key] == value or list(config[key]) == list(value), (key, config[key], value)
    assert f.shape(config) == f.shape(f.twin.shapes)
    assert _compression(pipe) == (f.memory.spatial, f.memory.temporal)


def test_every_preset_maps_to_a_registered_family():
    used = set()
    for name in models.preset_names():
        preset = models.load_preset(name)
        f = models.preset_family(preset)  # without its weights: its twin's family
        assert f is not None and f.role == preset["role"], name
        twin = models.load_preset(preset["twin"])
        recipe = twin["source"].removeprefix("builtin:")
        tf = families.of_twin(recipe)
        assert tf is f and tf.pipeline == preset["pipeline"], name
        used.add(tf.name)
        if preset["source"].startswith("builtin:"):
            assert preset["twin"] == name, name
        if f.time:  # a motion preset states its time, under its family's rule
            rule = tf.shape(tf.twin.shapes)
            assert rule.valid_frames(preset["max_frames"]), name
            assert (preset["fps"], preset["max_frames"]) == (twin["fps"], twin["max_frames"]), name
    assert used == set(NAMES)  # every family has a preset that uses its twin


def test_no_module_outside_the_families_names_a_family():
    """A pipeline class named in a string anywhere else would be a table outside its family."""
    classes = {f.pipeline for f in families.FAMILIES}
    found = []
    for path in FARM.rglob("*.py"):
        if path.parent.name == "families":  # the families and their twins' builders
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in classes:
                found.append(f"{path.relative_to(FARM)}:{node.lineno}: {node.value}")
    assert found == []


def test_the_registry_loads_no_model_library():
    import subprocess
    import sys

    code = ("import sys, farm.models.families as f; f.FAMILIES; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


def test_the_docs_say_how_to_add_a_family():
    section = (FARM.parent / "docs" / "models.md").read_text().split("## Add a model family", 1)[1].split("\n## ", 1)[0]
    assert "one file (its twin's builder included) and a preset" in section
    assert "farm/models/families/<family>.py" in section and "build_twin" in section
    assert "tests/test_families.py" in section


def test_a_cogvideox_10_model_gets_its_rule_everywhere(tmp_path, monkeypatch):
    """A CogVideoX 1.0 folder is 4k+1 for validation and planning (timing), for `farm models
    show` (models) and for the memory estimate (fit) alike: once models.py said 8k+1 for every
    CogVideoX while timing.py said 4k+1 for 1.0."""
    folder = tmp_path / "CogVideoX-5b-I2V"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "CogVideoXImageToVideoPipeline", "transformer": ["diffusers", "CogVideoXTransformer3DModel"]}))
    (folder / "transformer" / "config.json").write_text(json.dumps(V10))
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "cog10.toml").write_text(f'role = "motion"\npipeline = "CogVideoXImageToVideoPipeline"\n'
                                        f'source = "{folder}"\ntwin = "cog10"\n')
    monkeypatch.setenv("FARM_PRESETS", str(presets))
    ref = models.resolve("cog10")
    rule = timing.shape(ref)
    assert (rule.step, rule.offset, rule.fixed) == (4, 1, (720, 480)) and timing.model_time(ref) == (8.0, 49)
    assert models.describe("cog10")["frames"] == [4, 1]
    assert fit.frame_rule(rule, 50) == 53  # 4k+1, not 8k+1's 57
    assert timing.segment(ref, 48, 8).clips == (49,)  # 6 s at 8 fps: the model card's 49 frames


def test_a_family_says_how_its_call_takes_guidance_and_a_negative_prompt():
    """Most calls take `guidance_scale` and `negative_prompt`; Qwen-Image is guided by true CFG
    (`true_cfg_scale`, on only with a negative prompt: " " when the spec gives none); FLUX.2 takes
    guidance as an input and no negative prompt; so does HunyuanVideo FramePack, whose call takes
    one that counts only with true CFG, which its model runs without. Each keyword is one its
    pipeline's call takes."""
    import inspect

    import diffusers

    params = {"guidance": 4.0, "negative_prompt": ""}
    assert BY_NAME["SD3"].guidance_call(params) == {"guidance_scale": 4.0, "negative_prompt": None}
    assert BY_NAME["Qwen-Image"].guidance_call(params) == {"true_cfg_scale": 4.0, "negative_prompt": " "}
    assert BY_NAME["Qwen-Image"].guidance_call({**params, "negative_prompt": "blur"})["negative_prompt"] == "blur"
    assert BY_NAME["Qwen-Image"].guidance_call({**params, "guidance": 1.0}) == {"true_cfg_scale": 1.0,
                                                                             "negative_prompt": None}
    assert BY_NAME["FLUX.2"].guidance_call(params) == {"guidance_scale": 4.0}
    assert BY_NAME["HunyuanVideo FramePack"].guidance_call(params) == {"guidance_scale": 4.0}
    for f in families.FAMILIES:
        accepted = inspect.signature(getattr(diffusers, f.pipeline).__call__).parameters
        assert set(f.guidance_call(params)) <= set(accepted), f.name
        # a family takes a negative prompt only where its call does; a call may take one it
        # ignores as farm calls it (FramePack's, off with true CFG): then the family takes none
        assert not f.negative or "negative_prompt" in accepted, f.name
        assert f.negative == ("negative_prompt" in f.guidance_call(params)), f.name


def test_a_negative_prompt_for_a_family_that_takes_none_is_refused(write_spec, farm_home):
    from farm.errors import SpecError
    from farm.spec import spec

    text = """
    [shot]
    size = [32, 32]
    out = "out/x.mp4"

    [keyframes]
    model = "{model}"
    negative_prompt = "blur"

    [motion]
    model = "hold"

    [[frames]]
    prompt = "a red boat"
    seconds = 0.25

    [[frames]]
    prompt = "a blue boat"
    seconds = 0.25
    """
    with pytest.raises(SpecError) as e:
        spec.load(write_spec(text.format(model="tiny-flux2"), "flux2.toml"))
    assert e.value.code == 2 and "takes no negative prompt" in e.value.message
    assert len(spec.load(write_spec(text.format(model="tiny-qwen-image"), "qwen.toml")).panels) == 2


WAN = "WanImageToVideoPipeline"
WAN_INDEXES = {  # what each published model_index.json holds that tells them apart (and their transformer's rope)
    "Wan 2.1": {"image_encoder": ["transformers", "CLIPVisionModel"], "image_processor": ["transformers",
                "CLIPImageProcessor"], "transformer": ["diffusers", "WanTransformer3DModel"]},
    "Wan 2.2": {"boundary_ratio": 0.9, "expand_timesteps": False, "image_encoder": [None, None],
                "transformer": ["diffusers", "WanTransformer3DModel"],
                "transformer_2": ["diffusers", "WanTransformer3DModel"]},
    "Wan 2.2 TI2V-5B": {"boundary_ratio": None, "expand_timesteps": True, "image_encoder": [None, None],
                        "transformer": ["diffusers", "WanTransformer3DModel"], "transformer_2": [None, None]},
}


@pytest.mark.parametrize("name", list(WAN_INDEXES))
def test_each_wan_model_folder_gets_its_own_family(name, tmp_path, monkeypatch):
    """Wan 2.1, 2.2 A14B and 2.2 TI2V-5B share a pipeline class; a model folder is told apart by
    its model_index.json (components and the pipeline's own settings) for validation and
    planning (timing), for `farm models show` (models) and at call time (of_pipe, below)."""
    folder = tmp_path / name.replace(" ", "-")
    (folder / "transformer").mkdir(parents=True)
    index = {"_class_name": WAN, "_diffusers_version": "0.35.0", "vae": ["diffusers", "AutoencoderKLWan"]}
    (folder / "model_index.json").write_text(json.dumps({**index, **WAN_INDEXES[name]}))
    (folder / "transformer" / "config.json").write_text(json.dumps({"patch_size": [1, 2, 2], "rope_max_seq_len": 1024}))
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "mine.toml").write_text(f'role = "motion"\npipeline = "{WAN}"\nsource = "{folder}"\ntwin = "mine"\n')
    monkeypatch.setenv("FARM_PRESETS", str(presets))
    ref = models.resolve("mine")
    f = BY_NAME[name]
    assert timing.family_of(ref) is f
    rule = timing.shape(ref)
    assert (rule.multiple, rule.ends) == (f.multiple_of, f.ends)
    assert timing.model_time(ref) == (f.time.fps, f.time.window)  # 16 fps / 81, or the 5B's 24 / 121
    assert models.describe("mine")["multiple_of"] == f.multiple_of
    assert fit._pipeline_config(folder) == {k: v for k, v in WAN_INDEXES[name].items() if not isinstance(v, list)}


def test_each_wan_preset_gets_its_family_without_its_weights():
    """With no weights here, a preset's family is its twin's (the 5B's components alone are
    Wan 2.1's): for the memory estimate, `farm models show` and the frame rule."""
    for preset, name in (("wan21-flf2v", "Wan 2.1"), ("wan22-i2v", "Wan 2.2"), ("wan22-ti2v-5b", "Wan 2.2 TI2V-5B"),
                         ("skyreels-v2-i2v", "SkyReels-V2")):
        assert models.preset_family(models.load_preset(preset)) is BY_NAME[name], preset
        assert fit.needs(models.load_preset(preset)["pipeline"], preset).family is BY_NAME[name], preset
        assert models.describe(preset)["multiple_of"] == BY_NAME[name].multiple_of, preset


class Spy:
    """A pipeline that records the keyword arguments of each call and passes them on."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, []
        self.components, self.config = pipe.components, pipe.config

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self.pipe(**kwargs)


@pytest.mark.parametrize("recipe", ["wan22-5b", "skyreels-v2", "image-to-video", "wan22"])
def test_only_end_frame_families_are_given_an_end_frame(recipe):
    """At call time the loaded pipeline's components and config pick its family: Wan 2.2 TI2V-5B
    (whose pipeline ignores `last_image`) and SkyReels-V2 (whose I2V transformer cannot take
    it) get the first frame only, though a keyframe to end on is there; Wan 2.1 and the A14B
    still get both."""
    from PIL import Image

    from farm.models import pipeline

    f = families.of_twin(recipe)
    pipe = Spy(f.twin.build())
    assert families.of_pipe(f.pipeline, pipe) is f
    params = {"prompt": "a boat", "negative_prompt": "", "steps": 1, "guidance": 1.0, "width": 32, "height": 32,
              "model": {"pipeline": f.pipeline, "options": {"max_sequence_length": 16}}}
    first, last = Image.new("RGB", (32, 32), (200, 20, 20)), Image.new("RGB", (32, 32), (20, 20, 200))
    frames = pipeline.clip(pipe, params, first, last, 5, seed=1).frames
    assert len(frames) == 5 and pipe.calls[0]["image"] is first
    assert ("last_image" in pipe.calls[0]) == f.ends == (f.conditioning == "first and last frame")
    assert f.ends == (recipe in ("image-to-video", "wan22"))


def test_framepack_is_asked_in_sections_and_returns_exactly_the_frames_farm_planned():
    """FramePack's call makes 36k+1 frames (k sections of 9 latent frames) for a `num_frames`
    of up to 33k: farm plans 36k+1, asks for 33k (its family's `call_frames`) and gets exactly
    what it planned, ending on the next keyframe; a segment of up to a minute is one call, a
    longer one a chain of calls."""
    from PIL import Image

    from farm.models import pipeline

    f = BY_NAME["HunyuanVideo FramePack"]
    assert [f.num_frames(1 + 36 * k) for k in (1, 2, 3, 50)] == [33, 66, 99, 1650]
    pipe = Spy(f.twin.build())
    assert families.of_pipe(f.pipeline, pipe) is f
    params = {"prompt": "a boat", "negative_prompt": "", "steps": 1, "guidance": 10.0, "width": 32, "height": 32,
              "model": {"pipeline": f.pipeline, "options": {"max_sequence_length": 16,
                                                            "prompt_template": {"template": "{}", "crop_start": 0}}}}
    first, last = Image.new("RGB", (32, 32), (200, 20, 20)), Image.new("RGB", (32, 32), (20, 20, 200))
    for frames in (37, 73):
        out = pipeline.clip(pipe, params, first, last, frames, seed=1).frames
        call = pipe.calls[-1]
        assert len(out) == frames and call["num_frames"] == (frames - 1) // 36 * 33
        assert call["image"] is first and call["last_image"] is last and "negative_prompt" not in call
    ref = models.resolve("tiny-framepack")
    assert timing.model_time(ref) == (30.0, 1801)
    assert timing.segment(ref, 48, 24).clips == (73,)  # 2 s: 60 frames of motion and the keyframe, 2 sections
    long = timing.segment(ref, 70 * 24, 24)  # 70 s: past the minute a call makes, a chain of two calls
    assert len(long.clips) == 2 and all(c <= 1801 and (c - 1) % 36 == 0 for c in long.clips)


def test_a_ti2v_5b_segment_is_planned_from_its_first_keyframe_only(write_spec):
    """Past its window (121 frames at 24 fps) a 5B segment is a chain whose last clip does not
    end on the next keyframe: the plan itself holds no end frame for it."""
    from farm.plan import plan
    from farm.plan.tasks import Clip
    from farm.spec import spec

    path = write_spec("""
        [shot]
        name = "five"
        fps = 24
        size = [64, 64]
        seed = 1
        out = "out/five.mp4"

        [keyframes]
        model = "tiny"
        steps = 1

        [motion]
        model = "tiny-wan22-5b"
        steps = 1

        [[frames]]
        prompt = "a red boat"
        seconds = 6

        [[frames]]
        prompt = "a blue boat"
        seconds = 0.5
        """)
    p = plan.build(spec.load(path))
    clips = [t.params for t in p.tasks if isinstance(t.params, Clip)]
    assert len(clips) == 2 and all(c.end is None for c in clips)
    assert p.by_name()["segment[0]"].params.ends is False
    assert p.by_name()["segment[0].clip[1]"].deps == ("segment[0].clip[0]",)  # not the next keyframe
