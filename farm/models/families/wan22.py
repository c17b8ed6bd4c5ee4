"""Wan 2.2 I2V A14B: Wan 2.1's pipeline class, VAE, patches, rotary table and time (the A14B
models keep sample_fps 16, frame_num 81; only TI2V-5B is 24 fps, 121 frames), with two 14B
experts: `transformer` for high noise, `transformer_2` past `boundary_ratio`, one running at a
time. No CLIP image encoder; `last_image` works, though it was trained on first frames only."""

from dataclasses import replace

from .family import Twin
from .wan21 import FAMILY as WAN21

FAMILY = replace(
    WAN21, name="Wan 2.2", requires=("transformer_2",), denoisers=("transformer", "transformer_2"),
    memory=replace(WAN21.memory, experts=2),
    twin=Twin("wan22", "build_wan22", {"patch_size": [1, 2, 2], "rope_max_seq_len": 64}),
)
