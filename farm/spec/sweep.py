"""Sweeps: one spec file, many variants. A `[sweep]` table maps setting paths to lists of
values, expanded as a product; `zip` groups paths whose lists advance together (as
InvokeAI's batches do):

    [sweep]
    "shot.seed" = [1, 2, 3]
    "keyframes.model" = ["tiny", "tiny-sdxl"]        # 3 x 2 = 6 variants
    "frames[0].prompt" = ["a red boat", "a blue boat", "a green boat"]
    zip = [["shot.seed", "frames[0].prompt"]]        # seed and prompt in step: 3 x 2 = 6

Expansion only rewrites the parsed TOML; spec.py validates each variant as a whole spec.
Each variant gets a readable label (`seed1-tiny-sdxl`) that names its job and output.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from ..checks import shown

MAX_VARIANTS = 1000  # a product of a few lists grows fast; more than this is a typo, not a plan
TOP = ("shot", "keyframes", "motion", "frames")
_STEP = re.compile(r"([A-Za-z_][\w-]*)(?:\[(\d+)\])?")


@dataclass(frozen=True)
class Variant:
    values: tuple[tuple[str, object], ...]  # (path, value) in sweep order
    label: str
    data: dict

    def describe(self) -> str:
        return ", ".join(f"{k}={shown(v)}" for k, v in self.values)


def parse_path(path: str) -> list[str | int] | None:
    """`frames[0].motion.steps` -> ["frames", 0, "motion", "steps"]; None if malformed."""
    steps: list[str | int] = []
    for part in path.split("."):
        m = _STEP.fullmatch(part)
        if not m:
            return None
        steps.append(m.group(1))
        if m.group(2) is not None:
            steps.append(int(m.group(2)))
    return steps


def _set(data: dict, steps: list, value) -> str | None:
    """Set a value at a parsed path, creating missing tables; return a problem or None."""
    node = data
    for i, step in enumerate(steps[:-1]):
        nxt = steps[i + 1]
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                return f"index [{step}] does not exist (there are {len(node) if isinstance(node, list) else 0})"
            node = node[step]
        elif isinstance(nxt, int):
            if not isinstance(node.get(step), list):
                return f"`{step}` is not a list of tables in the spec"
            node = node[step]
        else:
            node = node.setdefault(step, {})
            if not isinstance(node, dict):
                return f"`{step}` is not a table"
    last = steps[-1]
    if isinstance(last, int):
        return "a sweep sets a setting, not a whole list entry"
    node[last] = value
    return None


def _label(path: str, steps: list, value, index: int) -> str:
    leaf = steps[-1]
    if isinstance(value, str):
        if leaf == "model":  # a preset name reads best; a folder or file by its last part
            return re.sub(r"[^\w.-]+", "_", Path(value.rstrip("/")).name or value)[:40]
        return f"{leaf}{index + 1}"  # a prompt: its position in the list
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{leaf}{index + 1}"
    return f"{leaf}{value:g}" if isinstance(value, float) else f"{leaf}{value}"


def expand(sweep, data: dict, c) -> list[Variant]:
    """The variants of a spec's [sweep]; problems go to the checker `c` (key `sweep.<path>`)."""
    if not isinstance(sweep, dict) or not sweep:
        c.fail("sweep", "expected a table of setting paths to lists of values, like \"shot.seed\" = [1, 2, 3]")
        return []
    zips = sweep.get("zip", [])
    settings = {k: v for k, v in sweep.items() if k != "zip"}
    parsed = {}
    for key, values in settings.items():
        steps = parse_path(key)
        if steps is None or steps[0] not in TOP:
            c.fail(f"sweep.{key}", f"not a setting path like \"shot.seed\", \"keyframes.model\" or "
                                   f"\"frames[0].prompt\" (the first part must be one of {', '.join(TOP)})")
        elif not isinstance(values, list) or not values:
            c.fail(f"sweep.{key}", "expected a non-empty list of values")
        else:
            parsed[key] = steps
    if not isinstance(zips, list) or not all(isinstance(g, list) and all(isinstance(k, str) for k in g) for g in zips):
        c.fail("sweep.zip", "expected a list of lists of setting paths, like [[\"shot.seed\", \"frames[0].prompt\"]]")
        zips = []
    axes: list[list[str]] = []
    zipped = set()
    for group in zips:
        missing = [k for k in group if k not in settings]
        if missing:
            c.fail("sweep.zip", f"{', '.join(missing)} not swept: every zipped path needs its own list in [sweep]")
            continue
        again = [k for k in group if k in zipped]
        if again:
            c.fail("sweep.zip", f"{', '.join(again)} in more than one zip group")
            continue
        lengths = {k: len(settings[k]) for k in group if k in parsed}
        if len(set(lengths.values())) > 1:
            c.fail("sweep.zip", "zipped lists must have the same length, got "
                                + ", ".join(f"{k}: {n}" for k, n in lengths.items()))
            continue
        zipped.update(group)
        axes.append(group)
    for key in settings:  # every other path is its own axis, in the order written
        if key not in zipped:
            axes.append([key])
    axes.sort(key=lambda group: list(settings).index(group[0]))
    if c.problems:
        return []
    count = 1
    for group in axes:
        count *= len(settings[group[0]])
    if count > MAX_VARIANTS:
        c.fail("sweep", f"{count} variants; at most {MAX_VARIANTS}")
        return []

    variants, labels = [], []
    for choice in itertools.product(*(range(len(settings[g[0]])) for g in axes)):
        values, parts, variant = [], [], copy.deepcopy(data)
        for group, i in zip(axes, choice):
            for key in group:
                value = settings[key][i]
                problem = _set(variant, parsed[key], value)
                if problem:
                    c.fail(f"sweep.{key}", problem)
                    return []
                values.append((key, value))
                parts.append(_label(key, parsed[key], value, i))
        labels.append("-".join(parts))
        variants.append((tuple(values), variant))
    if len(set(labels)) != len(labels):  # e.g. two model folders with the same name: number them
        labels = [f"{n + 1}-{label}" for n, label in enumerate(labels)]
    return [Variant(v, label, d) for (v, d), label in zip(variants, labels)]
