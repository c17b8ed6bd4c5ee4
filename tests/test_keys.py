"""Task keys are what caches are found by: a refactor that changes one re-renders every
user's job. These are the keys of fixed specs (jobs/example.toml, and one spec per twin: each
motion twin with a segment long enough to chain clips, each keyframe twin), computed on the
code before the families registry (issue 20) and hard-coded: they must never change by
accident. A change meant to change pixels bumps plan.VERSIONS or a recipe, and updates these.

`wide` (WIDE below) adds what the others leave out: LoRAs, acceleration, per-frame overrides of
model, seed, steps and retiming, a crossfade and a hold in one shot, h265 with a quality; its
keys and stored params were computed on the code before typed tasks (issue 20), and the params
are kept in stored_tasks_before_format_1.json, as queues and manifests of that code hold them."""

import json
import shutil
from pathlib import Path

import pytest

from conftest import EXAMPLE, ROOT
from farm.plan import plan, tasks
from farm.spec import spec

TEMPLATE = """
[shot]
name = "pin"
fps = 24
size = [64, 64]
seed = 5
out = "out/pin.mp4"

[keyframes]
model = "{keyframes}"
steps = 2

[motion]
model = "{motion}"
steps = 2

[[frames]]
prompt = "a red boat"
seconds = 11.0

[[frames]]
image = "refs/boat.png"
seconds = 1.0

[[frames]]
prompt = "a blue boat"
seconds = 2.5
"""

# name -> (keyframes model, motion model); None: jobs/example.toml as shipped.
CASES = {"example": None, "tiny-video": ("tiny", "tiny-video"), "tiny-wan22": ("tiny", "tiny-wan22"),
         "tiny-ltx": ("tiny", "tiny-ltx"), "tiny-cogvideox": ("tiny", "tiny-cogvideox"),
         "crossfade": ("tiny", "crossfade"), "tiny-sdxl": ("tiny-sdxl", "hold"), "tiny-sd3": ("tiny-sd3", "hold"),
         "tiny-flux": ("tiny-flux", "hold"), "wide": "WIDE"}

WIDE = """
[shot]
name = "wide"
fps = 12
size = [64, 64]
seed = 9
out = "out/wide.mp4"
codec = "h265"
quality = 20

[keyframes]
model = "tiny"
steps = 2
guidance = 4.5
negative_prompt = "blurry"
loras = [{ path = "style.safetensors", scale = 0.8 }]
accelerate = ["cache"]

[motion]
model = "tiny-video"
steps = 2
negative_prompt = "static"
prompt = "slow dolly in"
retime = "blend"

[[frames]]
prompt = "a red ball on the left, blue sky"
seconds = 6.0

[[frames]]
prompt = "a red ball on the right, blue sky"
seconds = 1.0
seed = 11
steps = 3
model = "tiny-sdxl"
loras = []
motion = { steps = 3, retime = "nearest", seed = 4 }

[[frames]]
image = "refs/boat.png"
seconds = 0.5
motion = { model = "crossfade" }

[[frames]]
prompt = "a blue box in the middle, sand"
seconds = 0.5
motion = { model = "hold" }
"""

KEYS = {
    "example": {
        "keyframe[0]": "f6fcaa75f841bad48e44951bbed23ad9470430d439fc3319eac11a90f053c982",
        "keyframe[1]": "b6837e5a77177e418549bca9d57ee66816c58b95061c242c49245d21391d9e63",
        "keyframe[2]": "50ea11490e8fbaa2b97dc6b05b2f24ceee9e88057b44a47ef3f742955a1d310b",
        "segment[0]": "d2b96aeccdf40893f9262918ae2da3fc2c3dd8fe47753671deed4c2a5fd5fb1b",
        "segment[1]": "11bb8c1f3a020bfeaf1b155841257e6847712cf910ff4625933caa3d81ccd4c2",
        "segment[2]": "79a01d9a1aa2af1b4f5248816cde424b5cdd67dac33a43741575091a63714df6",
        "assemble": "dd9c9a5666974c68877c69186967d87f2a53e148cd29c77142a34e8c14c5ae4e",
    },
    "tiny-video": {
        "keyframe[0]": "0f2a369bc5da587f0a838cad2627dbd52ec778042fffed34b2aba0c9f9267215",
        "keyframe[1]": "b3ab2db48b5a032f424efb64bb5433eb7cb7a5d17f0f8af1dd53a82675e577c2",
        "keyframe[2]": "e40efa1502dbb2ed1a3acd75a52bb8b50ec1e15db49db0d6862f553b004a0c52",
        "segment[0].clip[0]": "69f353e9c8312400d0f5a7f280db20633bb5a06f425f532052cdba1590d3c0fb",
        "segment[0].clip[1]": "e8ed587e8a8ef909bc27d49793cbea338b46516917080ab88cb96b775a60a08b",
        "segment[0].clip[2]": "b5069c46649aa0c14bfa406127012757344b9a4f4a20f3d1a0d91bc30cc5d277",
        "segment[0]": "9fb1caba5fdc912b7846a6b7be491dcfa17732d82697b62095a49495964ad083",
        "segment[1]": "f7f177add2b381c818b1eb7c43708110a0c14edbff6b0fcf184d00f1447fa679",
        "segment[2]": "b781deeda0533ec62e79b32a2e3fca2040aaba59f1be690e0c39f3d8de29d640",
        "assemble": "5d8a93476f26308ac564de36e75f341a7dacec91a50020e80f18658e0e2101a3",
    },
    "tiny-wan22": {
        "keyframe[0]": "0f2a369bc5da587f0a838cad2627dbd52ec778042fffed34b2aba0c9f9267215",
        "keyframe[1]": "b3ab2db48b5a032f424efb64bb5433eb7cb7a5d17f0f8af1dd53a82675e577c2",
        "keyframe[2]": "e40efa1502dbb2ed1a3acd75a52bb8b50ec1e15db49db0d6862f553b004a0c52",
        "segment[0].clip[0]": "f5eb505bcfa9be47f4aa5485bd9e3cabb77e94dd2f8fd7a3bb67a073ac52a9c4",
        "segment[0].clip[1]": "926eb2f5093f6a5753ba2f7cf39395f60fcd414ee23614e8e7a09c415487091b",
        "segment[0].clip[2]": "e9a771ccb7a9a7c4db8c16fa00b202f47c617d8e711b5618382003c09ef4cb97",
        "segment[0]": "565f66050dd677bbb070058308c2ae10955485ef3790688ba3d5201cf72a32f5",
        "segment[1]": "4f14e10965bd9add22025d1140f7f2a98bbb8ad6f830ecada7804137aee4c9b3",
        "segment[2]": "ca7829efb8f7be5131eb81ac3e14271127fdc5f8abe039234f16b59a23a4c108",
        "assemble": "32876bf09b69aefb696b08d2334e677d325c4dd22afcda16cd23da26a5d693bf",
    },
    "tiny-ltx": {
        "keyframe[0]": "0f2a369bc5da587f0a838cad2627dbd52ec778042fffed34b2aba0c9f9267215",
        "keyframe[1]": "b3ab2db48b5a032f424efb64bb5433eb7cb7a5d17f0f8af1dd53a82675e577c2",
        "keyframe[2]": "e40efa1502dbb2ed1a3acd75a52bb8b50ec1e15db49db0d6862f553b004a0c52",
        "segment[0].clip[0]": "264e59168c500a8a6393dbcf94e7c22a86cf06cdb6670839fb6fd2b6c8beedd1",
        "segment[0].clip[1]": "1c0264dabcf3770e13e98ba7dbc8755b48e775f507de8f7db2aef349816144e0",
        "segment[0]": "c25863b6e2a7ffe8dcdad5c0e88f70895e1e4ee1cc5ca4f1168e1b4b9bebf859",
        "segment[1]": "f08d14c7b1806cd80f79cd03c580dc6965e34fa8df299b7eef85b9efedd317ee",
        "segment[2]": "ef2bf4d16073df6351008cd7f04730750d1e68e964039e5ae599030217ad5489",
        "assemble": "81052e72525bc091590dd9713d42982b2b0e22634c88f823df81cc141bdc90b5",
    },
    "tiny-cogvideox": {
        "keyframe[0]": "0f2a369bc5da587f0a838cad2627dbd52ec778042fffed34b2aba0c9f9267215",
        "keyframe[1]": "b3ab2db48b5a032f424efb64bb5433eb7cb7a5d17f0f8af1dd53a82675e577c2",
        "keyframe[2]": "e40efa1502dbb2ed1a3acd75a52bb8b50ec1e15db49db0d6862f553b004a0c52",
        "segment[0].clip[0]": "4fcf151397fbc2fd0d0628f20c9559ebd1adc2765da7b5ff6ec5b6c7081fb6b3",
        "segment[0].clip[1]": "43ea04f77f080aaa4b8d747627d978ebdeaee168a9894eb5df7f2c70c876bf3d",
        "segment[0].clip[2]": "d34886d9088247803252fac542bfbd1d3b5ef51a6eaafd8d2ba712fb4be682fe",
        "segment[0]": "ae764c5ac347a5fc123e5494f334a3e82f4dcf9476ec051c5708f368bd0e2537",
        "segment[1]": "330624a6e5494cd553daf09ac8e41ee726f7e9dede3e25759f9791234a54eeb1",
        "segment[2]": "5951f9e8b2a83ef840e1250e33b56188b6beb7d88cb7d52df6307eb7d55e17cc",
        "assemble": "3124b3edbebd44da81ae89ceb15587ba61f732993039b7cfa545063a87958a54",
    },
    "crossfade": {
        "keyframe[0]": "0f2a369bc5da587f0a838cad2627dbd52ec778042fffed34b2aba0c9f9267215",
        "keyframe[1]": "b3ab2db48b5a032f424efb64bb5433eb7cb7a5d17f0f8af1dd53a82675e577c2",
        "keyframe[2]": "e40efa1502dbb2ed1a3acd75a52bb8b50ec1e15db49db0d6862f553b004a0c52",
        "segment[0]": "c5783a33f5df5179a759e449fd183c6992648caa4548c5165280fc5f8a3d49f9",
        "segment[1]": "eb0a60a374524a0e8ad1d2b874dd85e6fc2c8bf3dac82a2d79ccd2edfbc53d81",
        "segment[2]": "6b77953e887776398be04c0efcf86defc1251e41fb9a3eda50b9a1d0bd30be82",
        "assemble": "64e5ca0e081d3e299df75b8c4b771b22e58f3904efaa95c3ad35d98e5b5cd440",
    },
    "tiny-sdxl": {
        "keyframe[0]": "5acae3ca217cdc8c01530e7ad5a2b2df21790ce881bbfc5db7e3680f76f49f65",
        "keyframe[1]": "b3ab2db48b5a032f424efb64bb5433eb7cb7a5d17f0f8af1dd53a82675e577c2",
        "keyframe[2]": "47d9c14a31cc7c1879e71d0837ee85ac3f822370394083c11acc34becc835bff",
        "segment[0]": "9af10ef960932bbccdf590de81b86a3f65db7009a4b07fdc2ffbe26459b51ef3",
        "segment[1]": "323eda862bdf8644706c5e2af80c75662f577e3a1d82dc697d293b5cfed6a9ea",
        "segment[2]": "9b2ea3cf845b1c2e4470bcbd218fb87a24e08e1ef617750bd9b4e09944d5b092",
        "assemble": "7383cb7e55f1d6f7bf99d2d2a2271489858402020962254706dfc433f2e934f7",
    },
    "tiny-sd3": {
        "keyframe[0]": "d2c0dfbf0c89bce3b07a63806c81c49c02f8ace13699b6eb17384de659f7c59b",
        "keyframe[1]": "b3ab2db48b5a032f424efb64bb5433eb7cb7a5d17f0f8af1dd53a82675e577c2",
        "keyframe[2]": "f99c7bf84e222cf3e5e2c51c501d1dbd60a8371ea0a8e7d04892152359c5cf33",
        "segment[0]": "240c0a29093357b47bdc890428c9a7b7f60783576090ef1d0c8cb8b4406eacac",
        "segment[1]": "4c0d0f28ef8080b70a9f3e54eecbb6d49f3305132caf83d5492ccac250dff58e",
        "segment[2]": "1f106ce8fd008f0678bce0812e34028513232a35201fa6da958a0f84288079b0",
        "assemble": "247308bd2bf6e383741990f5efa70c853e3ba59e8188da0f261e83afac0830e5",
    },
    "tiny-flux": {
        "keyframe[0]": "d33cfb985cd328d09cb7fbace7c9a0192edcda9e3f422b23d4087dd674018fa0",
        "keyframe[1]": "b3ab2db48b5a032f424efb64bb5433eb7cb7a5d17f0f8af1dd53a82675e577c2",
        "keyframe[2]": "a729464141fbfacd0e7a79d52f3e95b3370705dd4330c5e047ebbef6efaf3201",
        "segment[0]": "d7c1eed19122d689fb11ccbd42d12809e26a7d17c6c3b100fe5772991d032b69",
        "segment[1]": "4673d7b211aa73d6d227cc60219c90542fa309ad38d61f20b888136d3f22f222",
        "segment[2]": "3daa9ae7987657031a1fe18e32dbc65693e15e15a3b2ff3a9106d1f59fd0ab55",
        "assemble": "0646fbeac1696817fb6820a3d454f1118bab12b785d4eab5996edcf4f2254afd",
    },
    "wide": {
        "keyframe[0]": "610e7728f0dc11ef74f4605ac34cdbc588c8c1405cd9224029963a18e0bef702",
        "keyframe[1]": "0a5e5fbfd885306f510db3d277a6c11e47c03f907a3a5fe989de8fc21dba6074",
        "keyframe[2]": "b3ab2db48b5a032f424efb64bb5433eb7cb7a5d17f0f8af1dd53a82675e577c2",
        "keyframe[3]": "a358373e23ec2cc5a5d074f5b41c206e2e77b78054dcd3a93b5bcecee8aba4eb",
        "segment[0].clip[0]": "24010dedf8361345a4f714e751c455898497a7144d5d1bb2c4a035960522212c",
        "segment[0].clip[1]": "50109f4e9720f20dfcdf21e3bfc79af8e8811f1cff22f58f8f04600da2d64e8e",
        "segment[0]": "20e30e8e33386891b638905309b27551fe2da6947698c8d4bdc9393ef55c514a",
        "segment[1]": "3301fc39589e7662dfc4dd983ea7a0ac025d45251546dfd3149a65e299c6bd2c",
        "segment[2]": "acca0e42707c0180feb66c9095f1149b1e197ba01ef28360ff9dcb97edaea315",
        "segment[3]": "8fdd988df3e32ec6179204aae9dafded20f078ff7bc5995072b788a7c5bb8e2a",
        "assemble": "18c01ea639464cc740eddd309768d058983c8dd45f36e4dd49d1a87490ce7518",
    },
}


def shot(case: str, folder) -> Path:
    """The spec file of a case, with the picture (and the LoRA file) it reads beside it."""
    if CASES[case] is None:
        return EXAMPLE
    (folder / "refs").mkdir()
    shutil.copy(ROOT / "jobs" / "refs" / "boat.png", folder / "refs" / "boat.png")
    path = folder / "shot.toml"
    if CASES[case] == "WIDE":  # a plan reads a LoRA file's digest only, not its tensors
        (folder / "style.safetensors").write_bytes(b"not really a lora, only its digest matters to a plan")
        path.write_text(WIDE)
    else:
        keyframes, motion = CASES[case]
        path.write_text(TEMPLATE.format(keyframes=keyframes, motion=motion))
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_task_keys_are_what_they_were(case, tmp_path):
    got = {t.name: t.key for t in plan.build(spec.load(shot(case, tmp_path))).tasks}
    assert got == KEYS[case]


STORED = Path(__file__).parent / "stored_tasks_before_format_1.json"


def test_tasks_stored_before_format_1_read_back_whole_with_their_keys():
    """Queues and manifests hold tasks as the code before typed tasks stored them (no "format"):
    each reads back as its record, with its key, nothing lost or added."""
    for row in json.loads(STORED.read_text()):
        task = tasks.load(row["kind"], json.dumps(row["params"]))
        assert task.kind == row["kind"] and task.key() == row["key"] and task.identity == row["model"], row["name"]
        stored = task.to_json()
        assert stored.pop("format") == tasks.FORMAT
        stored.pop("form", None)
        assert stored == row["params"], row["name"]


def test_a_task_of_a_newer_format_an_unknown_kind_or_missing_fields_is_refused():
    with pytest.raises(tasks.TaskFormatError, match="newer farm"):
        tasks.load("assemble", {"format": tasks.FORMAT + 1})
    with pytest.raises(tasks.TaskFormatError, match="unknown task kind"):
        tasks.load("noop", {})
    with pytest.raises(tasks.TaskFormatError, match="lacks"):
        tasks.load("clip", {"format": tasks.FORMAT})
    with pytest.raises(tasks.TaskFormatError, match="unknown form"):
        tasks.load("segment", {"format": tasks.FORMAT, "form": "morph"})


@pytest.mark.parametrize("case", list(CASES))
def test_every_task_reads_back_from_the_queue_as_the_plan_built_it(case, tmp_path):
    for t in plan.build(spec.load(shot(case, tmp_path))).tasks:
        back = tasks.load(t.kind, json.dumps(t.stored()))  # what the queue keeps, and a worker reads
        assert back == t.params and back.key() == t.key and back.identity == t.model, t.name
