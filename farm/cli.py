"""The command line: a thin layer over the library. User mistakes are FarmErrors, printed
once in `main()` as a short paragraph with a non-zero exit; tracebacks only with FARM_DEBUG=1."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .errors import FarmError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="farm: render storyboards (TOML job specs) into videos with diffusers models.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout (for scripts): one object per output.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
DbOpt = Annotated[Optional[Path], typer.Option("--db", help="Queue database to use instead of $FARM_HOME/queue.db.")]


def _quiet_libraries():
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()  # "Loading pipeline components" bars; step bars are ours to switch
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()


@app.command()
def render(
    spec: Annotated[Path, typer.Argument(help="The job spec (a storyboard .toml file).")],
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    db: DbOpt = None,
):
    """Render a storyboard into a video; print the video's path (or a JSON summary).
    A spec with a [sweep] renders one video per variant: one line (or JSON object) each."""
    from .render import render_all

    _quiet_libraries()

    def report(result):  # as each output is written, so a long sweep shows its progress
        if json_out:
            typer.echo(json.dumps(result))
            return
        t = result["tasks"]
        if not quiet:
            typer.echo(f"{result['name']}: {result['frames']} frames, {t['run']} tasks run, {t['cached']} from cache, "
                       f"{result['seconds']:.1f}s", err=True)
        typer.echo(result["output"])

    render_all(spec, db=db, progress=not quiet, on_result=report)


models_app = typer.Typer(no_args_is_help=False, help="List, show and fetch model presets (presets/*.toml).")
app.add_typer(models_app, name="models")


@models_app.callback(invoke_without_command=True)
def models_list(ctx: typer.Context, json_out: Annotated[bool, typer.Option(
        "--json", help="Print the presets as one JSON list of objects (for scripts).")] = False):
    """List the presets: role, pipeline, source, and whether the weights are here."""
    if ctx.invoked_subcommand is not None:
        return
    from . import models

    rows = models.catalog()
    if json_out:
        typer.echo(json.dumps(rows))
        return
    w = max(len(r["name"]) for r in rows)
    typer.echo(f"{'NAME':<{w}}  {'ROLE':<9}  {'LOCAL':<5}  {'PIPELINE':<29}  SOURCE")
    for r in rows:
        typer.echo(f"{r['name']:<{w}}  {r['role']:<9}  {'yes' if r['local'] else 'no':<5}  {r['pipeline']:<29}  "
                   f"{r['source']}")


@models_app.command("show")
def models_show(name: Annotated[str, typer.Argument(help="A preset name (see `farm models`).")],
                json_out: JsonOpt = False):
    """Print one preset: source, role, defaults, memory options, twin, and where its weights are."""
    from . import models

    info = models.describe(name)
    if json_out:
        typer.echo(json.dumps(info))
        return
    for key, value in info.items():
        if value not in (None, {}, ""):
            typer.echo(f"{key:<12} {value if not isinstance(value, (dict, list)) else json.dumps(value)}")


@models_app.command("pull")
def models_pull(name: Annotated[str, typer.Argument(help="A preset name or a hub id (org/name[@revision]).")]):
    """Download a model's weights into the Hugging Face cache (needs a network); print the folder."""
    from . import models

    typer.echo(str(models.pull(name)))


@app.command()
def version():
    """Print farm's version."""
    typer.echo(__version__)


def main(argv: list[str] | None = None):
    debug = bool(os.environ.get("FARM_DEBUG"))
    try:
        app(args=argv, standalone_mode=False, prog_name="farm")
    except FarmError as e:
        if debug:
            traceback.print_exc()
        print(f"farm: {e.message}", file=sys.stderr)
        sys.exit(e.code)
    except KeyboardInterrupt:
        print("farm: interrupted.", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # click's usage errors carry their own exit codes
        code = getattr(e, "exit_code", None)
        if code is not None and hasattr(e, "show"):
            e.show()
            sys.exit(code)
        if debug:
            raise
        print(f"farm: internal error: {type(e).__name__}: {e}\n(set FARM_DEBUG=1 to see the traceback, "
              f"and please report it)", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
