"""The shape of the house: farm's modules import in one direction (no cycle, counting the
imports inside functions too), and the stages before the render path load no model library."""

import ast
import subprocess
import sys
from pathlib import Path

FARM = Path(__file__).resolve().parent.parent / "farm"


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
                names = [target] + [f"{target}.{a.name}" for a in node.names]
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


def test_no_stage_reaches_back_to_the_commands():
    graph = import_graph()
    assert "farm.cli" not in graph["farm.run.supervisor"]  # library silencing is farm.quiet
    # Spec, plan and models (each module of farm/models/) see acceleration only through its torch-free settings.
    models = {m for m in graph if m == "farm.models" or m.startswith("farm.models.")}
    assert {"farm.models.presets", "farm.models.hub", "farm.models.identity", "farm.models.loading"} <= models
    for stage in ("farm.spec.spec", "farm.plan.plan", *sorted(models)):
        assert graph[stage] & {m for m in graph if m.startswith("farm.acceleration")} <= {
            "farm.acceleration", "farm.acceleration.settings"}, stage
    assert not graph["farm.acceleration"] & (models | {"farm.models.pipeline", "farm.media.probe"})
    # Inside farm/models/, each concern imports only those below it: presets, hub, identity, loading.
    order = ["farm.models.presets", "farm.models.hub", "farm.models.identity", "farm.models.loading"]
    for i, module in enumerate(order):
        assert not graph[module] & set(order[i + 1:]), module
        assert "farm.models" not in graph[module], module  # the package re-exports them: never imported back
    # The task records are a leaf: the plan writes them, the queue stores them, every later stage reads them.
    assert graph["farm.plan.tasks"] == set()
    # The render path works from queued tasks alone: it never reaches back to the spec or the commands.
    for stage in ("farm.run.worker", "farm.run.runner", "farm.models.pipeline", "farm.run.publish", "farm.ray.cluster",
                  "farm.media.encode", "farm.media.manifest"):
        assert not graph[stage] & {"farm.spec.spec", "farm.cli", "farm.run.render"}, stage
    # The runner runs tasks with no queue (a Ray actor has none); publishing and gc follow a job
    # through the hook its drainer passes in, never from the worker or the runner.
    assert not graph["farm.run.runner"] & {"farm.queue.queue", "farm.run.worker", "farm.run.publish", "farm.run.gc"}
    assert not graph["farm.run.worker"] & {"farm.run.publish", "farm.run.gc"}
    # The spec reads the codec table (farm.spec.codecs), not the encoder that drives ffmpeg.
    assert "farm.media.encode" not in graph["farm.spec.spec"]


def test_validating_and_planning_load_no_model_library():
    """Nor ffmpeg-python: the spec checks codecs against farm.spec.codecs' table, not the encoder."""
    code = ("import sys, farm.spec.spec, farm.plan.plan, farm.models, farm.queue.queue, farm.acceleration; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'ffmpeg') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
