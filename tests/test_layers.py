"""The shape of the house: farm's packages stand in one declared order of layers, each importing
only from its own layer and those below it (counting the imports inside functions too), with no
cycle; and the stages before the render path load no model library."""

import ast
import subprocess
import sys
from pathlib import Path

FARM = Path(__file__).resolve().parent.parent / "farm"

# The layers, lowest first: a module imports from its own layer and those below, never above
# (docs/development.md's layout says the same, one line a layer). An entry is a module or a
# package (all its modules).
LAYERS = [
    ("farm.errors", "farm.files", "farm.units", "farm.home", "farm.quiet", "farm.checks",  # the foundations
     "farm.allocator", "farm.process"),
    ("farm.acceleration",),  # accelerate(pipe): attention backends, step caches, kernel rewrites
    ("farm.queue",),         # the SQLite queue, the cache, content digests
    ("farm.models",),        # presets, identity, loading, families and their twins, fit, placement, pipeline calls
    ("farm.spec",),          # a storyboard read and checked: spec, sweeps, outputs, the codec table
    ("farm.plan",),          # the task records, the task graph, the forecast
    ("farm.media",),         # ffmpeg encoding, contact sheets, manifests, probing
    ("farm.run",),           # workers, the runner, the supervisor, render, publish, gc, status, control
    ("farm.ray",),           # farm work --ray
    ("farm.review",),        # farm review, farm serve
    ("farm.cli",),           # the commands
]


def import_graph() -> dict[str, set[str]]:
    """farm module -> the farm modules it imports anywhere in its file (lazy imports included)."""
    files = {}
    for p in sorted(FARM.rglob("*.py")):
        parts = p.relative_to(FARM.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph = {}
    for name, p in files.items():
        package = name if p.name == "__init__.py" else name.rsplit(".", 1)[0]
        graph[name] = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                # `from pkg import sub` names the submodule (its package's __init__ runs, but
                # defines none of it); `from pkg import thing` the package (or module) itself
                names = [f"{target}.{a.name}" if f"{target}.{a.name}" in files else target for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {n for n in names if n in files and n != name and n != "farm"}
    return graph


def test_no_import_cycle():
    graph, cycles, state = import_graph(), [], {}

    def visit(module, path):
        state[module] = "open"
        for nxt in sorted(graph[module]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the longest entry that is the module or a package above it."""
    found = [(len(name), i) for i, layer in enumerate(LAYERS) for name in layer
             if module == name or module.startswith(name + ".")]
    return max(found)[1] if found else None


def test_every_module_has_a_layer():
    """A new module or package goes into LAYERS (and docs/development.md) when it is added."""
    graph = import_graph()
    assert sorted(m for m in graph if m != "farm" and layer_of(m) is None) == []
    named = [name for layer in LAYERS for name in layer]
    assert len(named) == len(set(named))
    assert all(name in graph for name in named), [name for name in named if name not in graph]


def test_imports_go_down_the_layers():
    """No module imports one of a higher layer: every offending edge is reported. (`farm` itself,
    the package's face, re-exports the errors and, when first asked, `accelerate`.)"""
    graph = import_graph()
    upward = [f"{module} ({LAYERS[layer_of(module)][0]}) -> {target} ({LAYERS[layer_of(target)][0]})"
              for module in sorted(graph) if module != "farm" and layer_of(module) is not None
              for target in sorted(graph[module]) if (layer_of(target) or 0) > layer_of(module)]
    assert upward == []


def test_what_the_layers_do_not_say():
    graph = import_graph()
    # Spec, plan and models (every module of each) see acceleration only through its torch-free settings.
    models = {m for m in graph if m == "farm.models" or m.startswith("farm.models.")}
    assert {"farm.models.presets", "farm.models.hub", "farm.models.identity", "farm.models.loading"} <= models
    acceleration = {m for m in graph if m.startswith("farm.acceleration")}
    stages = [m for m in graph if m.split(".")[:2] in (["farm", "spec"], ["farm", "plan"], ["farm", "models"])]
    for stage in sorted(stages):
        assert graph[stage] & acceleration <= {"farm.acceleration", "farm.acceleration.settings"}, stage
    # Inside farm/models/, each concern imports only those below it: presets, hub, identity, loading.
    order = ["farm.models.presets", "farm.models.hub", "farm.models.identity", "farm.models.loading"]
    for i, module in enumerate(order):
        assert not graph[module] & set(order[i + 1:]), module
        assert "farm.models" not in graph[module], module  # the package re-exports them: never imported back
    # The task records are a leaf: the plan writes them, the queue stores them, every later stage reads them.
    assert graph["farm.plan.tasks"] == set()
    # The render path works from queued tasks alone: it never reaches back to the spec (below it,
    # but the worker never reads a storyboard) or to `farm render`.
    for stage in ("farm.run.worker", "farm.run.runner", "farm.models.pipeline", "farm.run.publish", "farm.ray.cluster",
                  "farm.media.encode", "farm.media.manifest"):
        assert not graph[stage] & {"farm.spec.spec", "farm.run.render"}, stage
    # The runner runs tasks with no queue (a Ray actor has none); publishing and gc follow a job
    # through the hook its drainer passes in, never from the worker or the runner.
    assert not graph["farm.run.runner"] & {"farm.queue.queue", "farm.run.worker", "farm.run.publish", "farm.run.gc"}
    assert not graph["farm.run.worker"] & {"farm.run.publish", "farm.run.gc"}


def test_validating_and_planning_load_no_model_library():
    """Nor ffmpeg-python: the spec checks codecs against farm.spec.codecs' table, not the encoder."""
    code = ("import sys, farm.spec.spec, farm.plan.plan, farm.models, farm.queue.queue, farm.acceleration; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'ffmpeg') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
