"""The command line: a thin layer over the library. User mistakes are FarmErrors, printed
once in `main()` as a short paragraph with a non-zero exit; tracebacks only with FARM_DEBUG=1."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer

from . import __version__
from .errors import FarmError, storage_error
from .quiet import quiet_libraries

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="farm: render storyboards (TOML job specs) into videos with diffusers models.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout (for scripts): one object per output.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
DbOpt = Annotated[Path | None, typer.Option("--db", help="Queue database to use instead of $FARM_HOME/queue.db.")]
RetriesOpt = Annotated[int | None, typer.Option("--retries", min=0, max=20,
                                                help="Times a failed task is tried again (default: the spec's, "
                                                     "else 2).")]
JobArg = Annotated[int, typer.Argument(help="A job id (see `farm status`).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Let outputs replace files farm did not write, and skip "
                                                        "the free-disk check (never replaces a folder farm did "
                                                        "not write).")]


def terminate_as_interrupt():
    """SIGTERM (a scheduler's stop, `kill`) and SIGHUP (its terminal closed) end a render as
    Ctrl-C does: what is finished stays cached, the job is canceled; the exit code is 143 or
    129 instead of 130. An ignored SIGHUP (`nohup farm render ...`) stays ignored."""
    import signal

    from .errors import Terminated

    def on_term(signum, frame):
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, on_term)
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
        signal.signal(signal.SIGHUP, on_term)


@app.command()
def render(
    spec: Annotated[Path, typer.Argument(help="The job spec (a storyboard .toml file).")],
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    db: DbOpt = None,
    retries: RetriesOpt = None,
    force: ForceOpt = False,
):
    """Render a storyboard into a video; print the video's path (or a JSON summary).

    Draws in this process, or, when `farm work` workers are running, enqueues the job and
    waits for them. A spec with a [sweep] renders one video per variant: one line (or JSON
    object) each."""
    from .run.render import render_all

    terminate_as_interrupt()

    def report(result):  # as each output is written, so a long sweep shows its progress
        if json_out:
            typer.echo(json.dumps(result))
            return
        t = result["tasks"]
        if not quiet:
            typer.echo(f"{result['name']}: {result['frames']} frames, {t['run']} tasks run, {t['cached']} from cache, "
                       f"{result['seconds']:.1f}s", err=True)
        typer.echo(result["output"])

    render_all(spec, db=db, progress=not quiet, on_result=report, retries=retries, force=force)


@app.command("plan")
def plan_cmd(
    spec: Annotated[Path, typer.Argument(help="The job spec (a storyboard .toml file).")],
    json_out: JsonOpt = False,
    db: DbOpt = None,
):
    """Validate and plan a storyboard without rendering: every task, whether the cache has it,
    each segment's clips at the model's frame rate, and the time it should take."""
    from .plan.forecast import forecast

    for result in forecast(spec, db=db):
        typer.echo(json.dumps(result) if json_out else _plan_text(result))


def _plan_text(result: dict) -> str:
    def seconds(s):
        return "unknown" if s is None else f"{s:.1f}s" if s < 120 else f"{s / 60:.1f} min"

    lines = [f"{result['name']}: {len(result['tasks'])} tasks, {result['run']} to run, {result['cached']} cached, "
             f"estimated {seconds(result['estimate_s'])}"]
    w = max(len(t["name"]) for t in result["tasks"])
    for t in result["tasks"]:
        clips = " + ".join(f"{c['frames']}@{c['fps']:g}fps" for c in t.get("clips") or [])
        state = "cached" if t["cached"] else f"run ~{seconds(t['estimate_s'])}"
        lines.append(f"  {t['name']:<{w}}  {t['kind']:<8}  {t['model'] or '-':<16}  {state:<16}  {clips}".rstrip())
    return "\n".join(lines)


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
        source = f"ERROR: {r['error']}" if r.get("error") else r["source"]
        if r.get("loras"):  # a preset's own LoRAs (docs/models.md, "Preset LoRAs")
            absent = sum(not lo["present"] for lo in r["loras"])
            source += f" + {len(r['loras'])} LoRA{'s' if len(r['loras']) > 1 else ''}" + \
                (f" ({absent} not pulled)" if absent else "")
        typer.echo(f"{r['name']:<{w}}  {r['role']:<9}  {'yes' if r['local'] else 'no':<5}  {r['pipeline']:<29}  "
                   f"{source}")


@models_app.command("show")
def models_show(name: Annotated[str, typer.Argument(help="A preset name (see `farm models`).")],
                json_out: JsonOpt = False,
                size: Annotated[str | None, typer.Option("--size", help="Estimate memory at WIDTHxHEIGHT "
                                                         "(default: the preset's size).")] = None,
                frames: Annotated[int | None, typer.Option("--frames", min=1, max=10_000, help="...and this "
                                                           "many generated frames (motion models).")] = None,
                device: Annotated[str, typer.Option("--device", help="cuda (the preset's dtype) or cpu "
                                                    "(float32).")] = "cuda"):
    """Print one preset: source, role, defaults, memory options, twin, where its weights are, and
    its estimated peak memory for each way to run it (farm/models/fit.py)."""
    from . import models
    from .models import fit

    info = models.describe(name)
    width = height = None
    if size is not None:
        try:
            width, height = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise FarmError(f"--size: expected WIDTHxHEIGHT like 1280x720, got {size!r}.", code=2) from None
    est = fit.describe(name, width, height, frames, device)
    info["estimate"] = est.to_json() if est is not None else None
    if json_out:
        typer.echo(json.dumps(info))
        return
    for key, value in info.items():
        if key != "estimate" and value not in (None, {}, ""):
            typer.echo(f"{key:<12} {value if not isinstance(value, (dict, list)) else json.dumps(value)}")
    if est is not None:
        lines = est.text().splitlines()
        typer.echo(f"{'estimate':<12} {lines[0]}")
        for line in lines[1:]:
            typer.echo(f"{'':<12} {line}")


@models_app.command("pull")
def models_pull(name: Annotated[str, typer.Argument(help="A preset name or a hub id (org/name[@revision]).")]):
    """Download a model's weights, and a preset's LoRA files, into the Hugging Face cache (needs a
    network); print the weights' folder."""
    from . import models

    typer.echo(str(models.pull(name)))


@app.command()
def submit(
    specs: Annotated[list[Path], typer.Argument(help="Job specs to enqueue (all are validated first).")],
    priority: Annotated[int, typer.Option("--priority", "-p", help="Higher runs first (default 50).")] = 50,
    retries: RetriesOpt = None,
    json_out: JsonOpt = False,
    db: DbOpt = None,
    force: ForceOpt = False,
):
    """Plan and enqueue jobs for `farm work` workers; print their job ids."""
    from .run.render import submit as enqueue

    for job in enqueue(specs, db=db, priority=priority, retries=retries, force=force):
        typer.echo(json.dumps(job) if json_out else f"job {job['job']}: {job['name']} ({job['tasks']} tasks) "
                   f"-> {job['output']}")


@app.command()
def work(
    gpus: Annotated[str | None, typer.Option("--gpus", help="`all` or indices like 0,1: one worker per GPU.")] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="CPU workers instead of GPUs.")] = False,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, max=256, help="Number of CPU workers.")] = 1,
    lease: Annotated[float, typer.Option("--lease", min=1, help="Seconds a claimed task is held between "
                                                                "heartbeats before others may take it.")] = 60.0,
    until_empty: Annotated[bool, typer.Option("--until-empty", help="Exit when the queue is drained.")] = False,
    grace: Annotated[float, typer.Option("--grace", min=0, help="On Ctrl-C/SIGTERM, seconds the task in flight "
                                                                "may take to finish before it is released.")] = 30.0,
    memory: Annotated[str | None, typer.Option("--memory", help="Memory for loaded models per worker, e.g. "
                                               "40G (default: what the device has free).")] = None,
    ray: Annotated[str | None, typer.Option("--ray", metavar="ADDRESS", help="Run on a Ray cluster instead: one "
                                            "actor per GPU in it. `auto` joins this machine's cluster (`ray "
                                            "start`), `local` starts Ray here, else the head's address. Needs "
                                            "`pip install 'farm[ray]'`.")] = None,
    quiet: QuietOpt = False,
    db: DbOpt = None,
):
    """Drain the queue with one worker process per GPU (or --cpu --workers N), or one Ray actor
    per GPU of a cluster (--ray), until stopped."""
    from .run import supervisor

    if ray is not None:
        if gpus:
            raise FarmError("--gpus does not apply with --ray: Ray gives each actor one GPU of the cluster.", code=2)
        from .ray import cluster

        code = cluster.work(ray, cpu=cpu, workers=workers, db=str(db) if db else None, lease=lease,
                            until_empty=until_empty, grace=grace, memory=supervisor.parse_memory(memory),
                            progress=not quiet)
        raise typer.Exit(code)
    chosen = supervisor.slots(gpus, cpu, workers)
    _queue(db).close()  # a database that cannot be opened is one error here, not a crash per worker
    code = supervisor.work(chosen, db=str(db) if db else None, lease=lease, until_empty=until_empty, grace=grace,
                           memory=supervisor.parse_memory(memory), progress=not quiet)
    raise typer.Exit(code)


def _queue(db):
    from . import home
    from .queue.queue import Queue

    return Queue(db or home.db_path())


def _job_or_fail(queue, job: int) -> dict:
    from .run import control

    return control.job(queue, job)


@app.command()
def status(
    job: Annotated[int | None, typer.Argument(help="One job's status; all jobs and workers without it.")] = None,
    json_out: JsonOpt = False,
    db: DbOpt = None,
):
    """Jobs (tasks by state, elapsed, ETA) and workers (device, loaded models, task in flight)."""
    from .run import status as st

    queue = _queue(db)
    if job is not None:
        _job_or_fail(queue, job)
        st.sweep(queue)
        summary = st.job(queue, job)
        typer.echo(json.dumps(summary) if json_out else st.text_job(summary))
    else:
        summary = st.farm(queue)
        typer.echo(json.dumps(summary) if json_out else st.text_farm(summary))


@app.command()
def cancel(job: JobArg, db: DbOpt = None):
    """Cancel a job: its queued tasks never run; tasks in flight finish but are not counted."""
    from .run import control

    typer.echo(control.cancel(_queue(db), job))


@app.command()
def retry(job: JobArg, db: DbOpt = None):
    """Requeue the failed and canceled tasks of a job, with fresh attempts."""
    from .run import control

    typer.echo(control.retry(_queue(db), job))


OptJobArg = Annotated[int | None, typer.Argument(help="A job; without it, the whole farm.")]


@app.command()
def pause(job: OptJobArg = None, db: DbOpt = None):
    """Stop workers claiming tasks (of one job, or all); tasks in flight finish."""
    from .run import control

    typer.echo(control.pause(_queue(db), job, True))


@app.command()
def resume(job: OptJobArg = None, db: DbOpt = None):
    """Let workers claim again (one job's tasks, or all)."""
    from .run import control

    typer.echo(control.pause(_queue(db), job, False))


@app.command()
def priority(job: JobArg, value: Annotated[int, typer.Argument(help="New priority; higher runs first.")],
             db: DbOpt = None):
    """Change a job's priority (its queued tasks move in the queue at once)."""
    from .run import control

    typer.echo(control.priority(_queue(db), job, value))


@app.command()
def logs(job: JobArg,
         follow: Annotated[bool, typer.Option("--follow", "-f",
                                              help="Keep printing new events until the job ends.")] = False,
         db: DbOpt = None):
    """A job's events as JSON lines (task started/finished/failed, with worker and timings)."""
    import time

    from .queue.queue import TERMINAL
    from .run import status as st

    queue = _queue(db)
    _job_or_fail(queue, job)
    last, names = 0, {}
    while True:
        for e in queue.events(job, after=last):
            typer.echo(st.event_line(queue, e, names))
            last = e["id"]
        if not follow or (queue.job(job)["state"] in TERMINAL and not queue.events(job, after=last)):
            return
        time.sleep(0.5)


@app.command()
def review(
    targets: Annotated[list[str], typer.Argument(
        help="What to review: job ids, spec files (their latest render), folders of renders, or manifests.",
        show_default=False, metavar="JOB|SPEC|FOLDER...")],
    out: Annotated[Path, typer.Option("--out", "-o",
                                      help="Folder to write index.html and media/ into.")] = Path("review"),
    serve: Annotated[bool, typer.Option("--serve", help="Serve the page on 127.0.0.1 until Ctrl-C.")] = False,
    port: Annotated[int, typer.Option("--port", help="Port for --serve (0: any free port).")] = 0,
    db: DbOpt = None,
):
    """Write a static HTML page comparing renders side by side; print its path (or URL with --serve)."""
    from .review import review as rv

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
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on. Anything but the loopback needs a "
                                                     "token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free one).")] = 8188,
    token: Annotated[str | None, typer.Option("--token", help="Every request must carry it (default: [serve] token "
                                                              "in $FARM_HOME/config.toml).")] = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="Serve the page and the API without any "
                                                                "action.")] = False,
    db: DbOpt = None,
):
    """A live web page of the farm (jobs, storyboards, workers, actions) and a JSON API beside it."""
    from . import home
    from .review.serve import serve as run

    def ready(url: str):
        typer.echo(f"farm serve: {url} (Ctrl-C to stop)", err=True)

    try:
        run(db or home.db_path(), home.cache_dir(), host=host, port=port, token=token, read_only=read_only,
            ready=ready)
    except KeyboardInterrupt:
        pass


@app.command("accelerate")
def accelerate_cmd(
    model: Annotated[str, typer.Argument(help="A preset name (see presets/), a diffusers folder or a hub id.")],
    report: Annotated[bool, typer.Option("--report", help="Run one small denoising call and print what the "
                                                          "pass replaced (pattern -> count).")] = False,
    features: Annotated[str | None, typer.Option(
        "--features", help="Comma-separated: kernels, compile, attention, and one step cache: cache "
                           "(First Block Cache) or taylorseer (default: the preset's `accelerate` list, "
                           "else kernels,attention).")] = None,
    threshold: Annotated[float | None, typer.Option("--cache-threshold", min=0, max=10,
                                                    help="First Block Cache threshold (default 0.05).")] = None,
    json_out: JsonOpt = False,
):
    """Accelerate a model (fused Triton kernels, torch.compile, attention backend, step caching) and
    report what was chosen and replaced."""
    from .media.probe import probe

    if not report:
        raise FarmError("Nothing to do: `farm accelerate --report MODEL` reports what acceleration does to a "
                        "model; renders turn it on with `accelerate = [...]` in a spec or preset.", code=2)
    chosen = [f.strip() for f in features.split(",") if f.strip()] if features is not None else None
    result = probe(model, chosen, cache_threshold=threshold)
    typer.echo(json.dumps(result.to_json()) if json_out else result.text())


@app.command()
def gc(
    max_size: Annotated[str | None, typer.Option("--max-size", help="Remove least recently used entries until "
                                                 "the cache holds at most this much, e.g. 200G (default: "
                                                 "cache_max_size in $FARM_HOME/config.toml).")] = None,
    older_than: Annotated[str | None, typer.Option("--older-than", help="Remove entries not used for this "
                                                   "long, e.g. 30d, 12h.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object: removed, freed_bytes, "
                                           "kept_bytes, protected, dry_run.")] = False,
    db: DbOpt = None,
):
    """Shrink the task cache, least recently used first; never what a queued or running job needs."""
    from . import home
    from .queue.cache import Cache
    from .run import gc as collector
    from .units import human, parse_age, parse_size

    limit = parse_size(max_size) if max_size is not None else collector.configured_max_size()
    age = parse_age(older_than) if older_than is not None else None
    if limit is None and age is None:
        raise FarmError("Nothing to do: give --max-size (e.g. 200G) or --older-than (e.g. 30d), or set "
                        f"cache_max_size in {home.home() / 'config.toml'}.", code=2)
    summary = collector.collect(_queue(db), Cache(home.cache_dir()), max_size=limit, older_than=age, dry_run=dry_run)
    if json_out:
        typer.echo(json.dumps({k: v for k, v in summary.items() if k != "keys"}))
        return
    verb = "would remove" if dry_run else "removed"
    typer.echo(f"{verb} {summary['removed']} cache entries ({human(summary['freed_bytes'])}); kept "
               f"{human(summary['kept_bytes'])}, {summary['protected']} of them for live jobs")


@app.command()
def version():
    """Print farm's version."""
    typer.echo(__version__)


def main(argv: list[str] | None = None):
    debug = bool(os.environ.get("FARM_DEBUG"))
    quiet_libraries()  # every command: farm prints its own progress and errors, the libraries under it none
    try:
        # Without standalone mode click returns a command's `typer.Exit(code)` instead of
        # exiting: pass it on, or `farm work`'s 130 would reach the shell as 0.
        code = app(args=argv, standalone_mode=False, prog_name="farm")
    except FarmError as e:
        if debug:
            traceback.print_exc()
        print(f"farm: {e.message}", file=sys.stderr)
        sys.exit(e.code)
    except KeyboardInterrupt as e:
        from .errors import Terminated

        print("farm: terminated." if isinstance(e, Terminated) else "farm: interrupted.", file=sys.stderr)
        sys.exit(e.code if isinstance(e, Terminated) else 130)
    except Exception as e:  # click's usage errors carry their own exit codes
        code = getattr(e, "exit_code", None)
        if code is not None and hasattr(e, "show"):
            e.show()
            sys.exit(code)
        if debug:
            raise
        problem = storage_error(e)
        if problem is not None:  # a full or failing disk is the machine's state, not farm's bug
            print(f"farm: {problem.message}", file=sys.stderr)
            sys.exit(problem.code)
        print(f"farm: internal error: {type(e).__name__}: {e}\n(set FARM_DEBUG=1 to see the traceback, "
              f"and please report it)", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)


def run():
    """The `farm` command and `python -m farm.cli`: `main`, then an exit without the
    interpreter's teardown (farm/process.py). Callers in Python (the tests) call `main`."""
    from .process import exit_now

    try:
        main()
    except SystemExit as e:
        exit_now(e.code)
    exit_now(0)


if __name__ == "__main__":
    run()
