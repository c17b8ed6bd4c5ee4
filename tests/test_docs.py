"""The README documents every command, and every command has help text."""

from conftest import ROOT
from farm.cli import app


def test_every_command_is_in_the_readme_and_has_help():
    readme = (ROOT / "README.md").read_text()
    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    groups = [g.name for g in app.registered_groups]
    assert "render" in commands and "work" in commands
    for name in commands + groups:
        assert f"farm {name}" in readme, f"`farm {name}` is not in the README"
    for c in app.registered_commands:
        assert (c.callback.__doc__ or "").strip(), f"{c.callback.__name__} has no help text"


def test_readme_opens_with_the_two_fresh_machine_commands():
    readme = (ROOT / "README.md").read_text()
    head = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert "jobs/example.toml" in head and "pytest" in head
    ci = (ROOT / ".ci" / "run").read_text()
    test_line = next(line for line in head.splitlines() if "pytest" in line).split("#")[0].strip()
    assert test_line in ci  # CI runs the README's test command, verbatim
