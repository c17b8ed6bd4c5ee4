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

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout at the end (for scripts).")]
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
    """Render a storyboard into a video; print the video's path (or a JSON summary)."""
    from .render import render as run

    _quiet_libraries()
    result = run(spec, db=db, progress=not quiet)
    if json_out:
        typer.echo(json.dumps(result))
    else:
        t = result["tasks"]
        if not quiet:
            typer.echo(f"{result['frames']} frames, {t['run']} tasks run, {t['cached']} from cache, "
                       f"{result['seconds']:.1f}s", err=True)
        typer.echo(result["output"])


@app.command()
def review(
    targets: Annotated[list[str], typer.Argument(
        help="What to review: job ids, spec files (their latest render), folders of renders, or manifests.",
        show_default=False, metavar="JOB|SPEC|FOLDER...")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write index.html and media/ into.")] = Path("review"),
    serve: Annotated[bool, typer.Option("--serve", help="Serve the page on 127.0.0.1 until Ctrl-C.")] = False,
    port: Annotated[int, typer.Option("--port", help="Port for --serve (0: any free port).")] = 0,
    db: DbOpt = None,
):
    """Write a static HTML page comparing renders side by side; print its path (or URL with --serve)."""
    from . import review as rv

    page = rv.write(rv.collect(targets, db=db), out)
    if not serve:
        typer.echo(str(page))
        return
    srv = rv.server(page.parent, port)
    typer.echo(rv.url(srv))
    sys.stdout.flush()
    try:
        srv.serve_forever()
    except KeyboardInterrupt:  # Ctrl-C is how a user stops serving: a clean exit, not 130
        pass
    finally:
        srv.server_close()


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
