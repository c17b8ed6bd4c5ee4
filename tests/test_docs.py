"""Docs are tested: every command has help text and appears in the README, every preset is in
the README's table, and the sweep example of docs/spec.md expands as it says."""

import re

from conftest import ROOT
from farm import models
from farm.cli import app
from farm.spec import spec

README = (ROOT / "README.md").read_text()
SPEC_DOC = (ROOT / "docs" / "spec.md").read_text()  # the job spec in full, moved out of the README


def test_every_command_is_in_the_readme_and_has_help():
    readme = README
    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    groups = [g.name for g in app.registered_groups]
    assert "render" in commands and "work" in commands
    for name in commands + groups:
        assert f"farm {name}" in readme, f"`farm {name}` is not in the README"
    for c in app.registered_commands:
        assert (c.callback.__doc__ or "").strip(), f"{c.callback.__name__} has no help text"


def test_readme_opens_with_the_two_fresh_machine_commands():
    readme = README
    head = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert "jobs/example.toml" in head and "pytest" in head
    ci = (ROOT / ".ci" / "run").read_text()
    test_line = next(line for line in head.splitlines() if "pytest" in line).split("#")[0].strip()
    assert test_line in ci  # CI runs the README's test command, verbatim


def test_every_command_has_help_and_is_in_the_readme(cli):
    for command in (["render"], ["models"], ["models", "show"], ["models", "pull"], ["version"]):
        code, out, err = cli(*command, "--help")
        assert code == 0 and len(out.strip()) > 40, command
        if command != ["version"]:
            assert f"farm {' '.join(command)}" in README, command


def test_every_preset_is_in_the_readme_table():
    table = README.split("| preset | role | pipeline | source | twin |", 1)[1].split("\n\n", 1)[0]
    named = set(re.findall(r"`([\w.-]+)`", table))
    assert set(models.preset_names()) <= named, set(models.preset_names()) - named


def test_the_documented_sweep_expands_as_described(write_spec):
    block = SPEC_DOC.split("## Sweeps", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    base = '[shot]\nsize = [64, 64]\n[[frames]]\nprompt = "a kite"\nseconds = 0.5\n'
    variants = spec.load_all(write_spec(base + block))
    assert len(variants) == 6
    assert variants[0].name == "shot-seed1-prompt1-tiny" and variants[-1].name == "shot-seed3-prompt3-tiny-sdxl"
