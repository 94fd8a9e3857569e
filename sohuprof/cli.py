"""The ``sohuprof`` command line: parses arguments, shows progress and prints; the work is done
by library calls (no logic lives here)."""

from __future__ import annotations

import logging
import os
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

import sohuprof
from sohuprof.errors import SohuprofError

__all__ = ["main", "cli"]

log = logging.getLogger("sohuprof")


@dataclass
class CliContext:
    """Options of the ``sohuprof`` group, shared by every command."""

    verbose: int = 0
    quiet: bool = False

    @property
    def show_progress(self) -> bool | None:
        return False if self.quiet else None


class SohuprofGroup(click.Group):
    """Turns user errors into one line on stderr and a non-zero exit; ``-v`` keeps tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:  # every failure ends as one line unless -v asks for the traceback
            obj = ctx.obj if isinstance(ctx.obj, CliContext) else None
            if obj is not None and obj.verbose:
                raise
            if isinstance(exc, SohuprofError):
                raise click.ClickException(str(exc)) from None
            if isinstance(exc, OSError):
                where = f" {exc.filename!r}" if exc.filename else ""
                raise click.ClickException(f"{exc.strerror or exc}{where}") from None
            raise click.ClickException(f"internal error: {type(exc).__name__}: {exc} "
                                       "(run with -v for the traceback, and report it)") from None


pass_cli = click.make_pass_decorator(CliContext)

#: Marks a directory whose run/ and store/ `sohuprof demo` wrote (so a re-run may replace them).
DEMO_MARKER = ".sohuprof-demo"
#: The rank `sohuprof demo` makes a straggler, and how much slower, for the findings to name.
DEMO_STRAGGLER, DEMO_SLOWDOWN = 5, 1.3


class FiniteFloat(click.FloatRange):
    """A float range that refuses nan and inf, which compare False against any bound and so
    slip through ``click.FloatRange``."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


class LengthSpec(click.ParamType):
    """A request-length distribution (``fixed``, ``uniform:min=A,max=B``, ``lognormal:sigma=S``,
    ``hist:FILE.csv``), parsed into a :class:`~sohuprof.emulator.config.LengthDist`."""

    name = "DIST"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from sohuprof.emulator.config import LengthDist, parse_lengths
        if isinstance(value, LengthDist):
            return value
        try:
            return parse_lengths(str(value), f"--{param.name.replace('_', '-')}" if param and param.name else "")
        except SohuprofError as exc:
            self.fail(str(exc).split(": ", 1)[-1], param, ctx)


class _SlashPath(type(Path())):  # type: ignore[misc]
    """An -o path given with a trailing '/': the user means a directory."""


class OutputPath(click.Path):
    """An output path that remembers a trailing '/' (``Path`` drops it), so that a file output
    given as ``outdir/`` is refused rather than written as a file named ``outdir``."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = super().convert(value, param, ctx)
        text = str(value)
        return _SlashPath(path) if text.endswith(("/", os.sep)) and len(text) > 1 else path


def _check_file_out(out: Path | None, example: str) -> None:
    """Refuse ``DIR/`` as a file output when DIR is not a directory (an existing one is refused,
    by name, when the output is checked)."""
    if isinstance(out, _SlashPath) and not out.is_dir():
        raise click.ClickException(f"-o {str(out) + '/'!r} ends in '/', a directory, but this writes one file: "
                                   f"give a file name such as {str(out / example)!r}")


def _check_inputs(*paths: Path, store: bool = False) -> None:
    """A missing input is said first, before any other check."""
    for path in paths:
        if not path.exists():
            hint = "; create a trace store with `sohuprof collect`" if store else ""
            raise click.ClickException(f"{str(path)!r} does not exist{hint}")


#: Counts (requests, token lengths, parallel degrees) fit int32, what the tables store them as.
_COUNT = click.IntRange(1, 2**31 - 1)
#: A window bound in ms whose ns offset from the trace start fits int64.
_MAX_WINDOW_MS = (2**63 - 1) / 1e6


@click.group(cls=SohuprofGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(sohuprof.__version__, prog_name="sohuprof")
@click.option("-v", "--verbose", count=True, help="More detail; tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summaries, errors only.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Profile transformer inference on Sohu (emulated) and PyTorch profiler traces.

    \b
    Start with:  sohuprof demo
    Each command's --help has an example.
    """
    ctx.obj = CliContext(verbose=verbose, quiet=quiet)
    logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _fault(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple:
    from sohuprof.emulator.config import parse_fault
    faults = []
    for value in values:
        try:
            faults.append(parse_fault(value))
        except SohuprofError as exc:
            raise click.BadParameter(str(exc).removeprefix("--inject ")) from None
    return tuple(faults)


@cli.command(epilog="""\b
Example:
  sohuprof emulate --model llama3-70b --nodes 2 --tp 8 --requests 64 -o run/
  sohuprof emulate --model mixtral-8x7b --nodes 2 --chips-per-node 4 --tp 4 --ep 8 \\
      --inject straggler:rank=5,slowdown=1.3 --inject slow-link:node=1,factor=0.3 -o moe-run/
  sohuprof emulate --model deepseek-v3 --hw h200 --nodes 2 --tp 1 --ep 16 --prompt-dist lognormal:sigma=1 \\
      --prefix-len 512 --spec-tokens 1 --spec-accept 0.85 -o ds-run/""")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Run directory to create (raw per-chip traces + run.json).")
@click.option("--model", default="llama3-70b", show_default=True, help="Model preset or a HuggingFace config.json.")
@click.option("--hw", "hw_name", default="sohu", show_default=True, help="Hardware preset (sohu, h100, h200, b200) or a TOML file.")
@click.option("--nodes", default=2, show_default=True, type=click.IntRange(1, 65535),
              help="Nodes (at most 65535: the raw header's 16-bit node id).")
@click.option("--chips-per-node", type=click.IntRange(1, 65535), help="Chips used per node [default: the hardware's].")
@click.option("--tp", default=8, show_default=True, type=_COUNT, help="Tensor-parallel degree.")
@click.option("--ep", default=1, show_default=True, type=_COUNT, help="Expert-parallel degree (MoE models).")
@click.option("--pp", default=1, show_default=True, type=_COUNT, help="Pipeline-parallel degree.")
@click.option("--requests", default=64, show_default=True, type=_COUNT)
@click.option("--rate", type=FiniteFloat(min=0, min_open=True),
              help="Poisson arrival rate, requests/s; --requests/--rate at most a day [default: all at once].")
@click.option("--prompt-len", default=2048, show_default=True, type=_COUNT)
@click.option("--output-len", default=128, show_default=True, type=_COUNT)
@click.option("--prompt-dist", default="fixed", show_default=True, type=LengthSpec(),
              help="Prompt lengths: fixed, uniform:min=A,max=B, lognormal:sigma=S[,max=M] (mean --prompt-len) "
                   "or hist:FILE.csv (length,weight rows).")
@click.option("--output-dist", default="fixed", show_default=True, type=LengthSpec(),
              help="Output lengths, as --prompt-dist (mean --output-len).")
@click.option("--prefix-len", default=0, show_default=True, type=click.IntRange(0, 2**31 - 1),
              help="Shared system-prompt tokens before every prompt's own (prefix caching: computed once per replica).")
@click.option("--spec-tokens", default=0, show_default=True, type=click.IntRange(0, 16),
              help="Speculative decoding (MTP): draft tokens verified per decode step.")
@click.option("--spec-accept", default=0.8, show_default=True, type=FiniteFloat(0, 1),
              help="Acceptance probability of each draft token, 0..1.")
@click.option("--max-batch-tokens", default=8192, show_default=True, type=_COUNT, help="Token budget of a scheduler step.")
@click.option("--dtype", default="fp8", show_default=True, type=click.Choice(["fp8", "bf16"]), help="Weight and matrix-math format.")
@click.option("--kv-dtype", type=click.Choice(["fp8", "bf16"]), help="KV-cache format [default: --dtype].")
@click.option("--prefill-replicas", default=0, show_default=True, type=click.IntRange(0, 2**31 - 1),
              help="Disaggregated serving: this many data-parallel replicas prefill and send the KV over "
                   "the NIC to the others, which decode (0: colocated).")
@click.option("--expert-skew", type=FiniteFloat(0, 4),
              help="MoE routing: Zipf exponent of each layer's expert popularity, 0..4 (0 uniform) "
                   "[default: a mild random skew].")
@click.option("--two-batch-overlap/--no-two-batch-overlap", default=True, show_default=True,
              help="Overlap collectives with compute by splitting a step in two micro-batches where that is faster.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**63 - 1), help="Random seed, 0..2**63-1.")
@click.option("--clock-skew-us", default=50.0, show_default=True, type=FiniteFloat(0, 1e5),
              help="Node clock offset scale, 0..1e5 (0: perfect clocks).")
@click.option("--inject", multiple=True, callback=_fault, metavar="SPEC",
              help="Fault: straggler:rank=R,slowdown=F or slow-link:node=N,factor=F (repeatable).")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option("--allow-large", is_flag=True,
              help="Run even past the size ceiling (1e9 records, 100 GB or an hour) or the free disk space.")
@pass_cli
def emulate(obj: CliContext, out: Path, model: str, hw_name: str, chips_per_node: int | None,
            inject: tuple, allow_large: bool, **options: Any) -> None:
    """Run the emulated Sohu runtime and write raw per-chip traces.

    Serves --requests requests of a real model config on a simulated cluster of --nodes nodes and
    writes what each chip's trace unit would: node<N>/chip<C>.strace (binary, local clock cycles),
    node<N>/host.jsonl and run.json. A large run says how large before it starts; one the
    machine cannot hold is refused.
    """
    from sohuprof.emulator import EmulatorConfig, check_run, emulate as run_emulation, estimate_run
    from sohuprof.hardware import load_hardware
    from sohuprof.models import load_model

    hw = load_hardware(hw_name)
    force = options.pop("force")
    cfg = EmulatorConfig(model=load_model(model), hardware=hw, chips_per_node=chips_per_node or hw.chips_per_node,
                         faults=inject, **options)
    estimate = estimate_run(cfg)
    check_run(estimate, out, allow_large=allow_large)
    if estimate.large and not obj.quiet:
        click.echo(f"large run: {estimate.describe()}", err=True)
    summary = run_emulation(cfg, out, force=force, show_progress=obj.show_progress)
    if not obj.quiet:
        click.echo(f"wrote {summary.path}: {summary.records:,} records from {summary.ranks} chips, "
                   f"{summary.steps} steps, {summary.duration_ns / 1e6:,.1f} ms emulated, "
                   f"{summary.tokens_per_s:,.0f} tokens/s", err=True)
        extra = [f"{summary.preemptions:,} preemptions"] if summary.preemptions else []
        if cfg.prefix_len:
            extra.append(f"prefix cache hit rate {summary.prefix_hit_rate:.1%}")
        if cfg.spec_tokens:
            extra.append(f"{summary.tokens_per_decode:.2f} tokens per decode step")
        if cfg.prefill_replicas:
            extra.append(f"KV sent prefill -> decode: {summary.kv_transfer_bytes / 1e9:,.2f} GB, "
                         f"{summary.kv_transfer_ns / 1e6:,.2f} ms a request")
        if extra:
            click.echo("  " + ", ".join(extra), err=True)


@cli.command(epilog="""\b
Example:
  sohuprof demo               # emulate, collect and analyze a small 2-node run into ./sohuprof-demo
  sohuprof demo -o /tmp/demo --serve   # ... then open the dashboard on it""")
@click.option("-o", "--output", "out", default="sohuprof-demo", show_default=True, type=click.Path(path_type=Path),
              help="Directory for the demo's run.")
@click.option("--serve", is_flag=True, help="Then serve the dashboard on the demo's store (127.0.0.1).")
@click.option("--port", default=8050, show_default=True, type=click.IntRange(1, 65535), help="Port for --serve.")
@click.option("--force", is_flag=True, help="Replace a run/ or store/ in the directory that an earlier demo did not write.")
@click.pass_context
def demo(ctx: click.Context, out: Path, serve: bool, port: int, force: bool) -> None:
    """Emulate a small 2-node Llama-3-8B run with an injected straggler, collect it, print its
    findings (what is wrong, ranked by what fixing it would save) and say where to look."""
    run_dir, store = out / "run", out / "store"
    # A re-run replaces the demo's own run and store (the marker says they are its); anything
    # else under those names is the user's, replaced only with --force.
    marker = out / DEMO_MARKER
    theirs = [p.name for p in (run_dir, store) if os.path.lexists(p)]
    if theirs and not marker.is_file() and not force:
        raise click.ClickException(f"{str(out)!r} already holds {' and '.join(theirs)} that sohuprof demo did not "
                                   f"write; pass --force to replace them, or choose another -o")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"cannot create {str(out)!r}: {exc.strerror}") from None
    ctx.invoke(emulate, out=run_dir, model="llama3-8b", hw_name="sohu", nodes=2, chips_per_node=4, tp=4, ep=1,
               pp=1, requests=32, rate=None, prompt_len=1024, output_len=64, max_batch_tokens=8192, dtype="fp8",
               two_batch_overlap=True, seed=0, clock_skew_us=50.0,
               inject=_fault(ctx, None, (f"straggler:rank={DEMO_STRAGGLER},slowdown={DEMO_SLOWDOWN}",)),  # type: ignore[arg-type]
               force=True)
    obj: CliContext = ctx.obj
    if not obj.quiet:
        click.echo(f"raw traces: {run_dir}/node*/chip*.strace, run metadata: {run_dir}/run.json")
    ctx.invoke(collect, source=run_dir, out=store, force=True)
    marker.write_text("run/ and store/ here were written by `sohuprof demo`, which replaces them when run again\n")
    from sohuprof.analyzers.render.diagnosis import finding_naming, findings_text

    found = _compute_reports(obj, store, ["findings"]).to_json()["findings"]
    click.echo("\n" + findings_text(found, top=5, more_hint=f"sohuprof analyze {store} --report findings"))
    number = finding_naming(found, rank=DEMO_STRAGGLER, kind="straggler")
    click.echo(f"the demo injected a straggler, rank {DEMO_STRAGGLER} computing {DEMO_SLOWDOWN}x as long as its peers: "
               + (f"finding {number} names it\n" if number else "no finding names it (please report this)\n"))
    if not obj.quiet:
        click.echo(f"where to look: sohuprof dashboard {store}   (timelines, roofline, stalls, comm, serving)\n"
                   f"               sohuprof analyze {store}   (every report: findings first, then the tables)\n"
                   f"               sohuprof analyze {store} --format html -o {out}/report.html\n"
                   f"               sohuprof export perfetto {store} -o {out}/trace.pftrace   (Perfetto)")
    if serve:
        ctx.invoke(dashboard, store=store, host="127.0.0.1", port=port)


@cli.command(epilog="""\b
Examples:
  sohuprof collect run/ -o store/                 # a raw Sohu run directory
  sohuprof collect traces/ -o store/              # PyTorch profiler traces, one file per rank
  sohuprof collect trace.json.gz -o store/ --force""")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Trace store to create.")
@click.option("--force", is_flag=True, help="Replace an existing store.")
@click.option("--hosts", default=None, metavar="RANKS=HOST,...",
              help="Which host each rank of a PyTorch profiler job ran on, where the traces do not say "
                   "(e.g. 0-7=hostA,8-15=hostB): a node per host, clocks aligned across them.")
@pass_cli
def collect(obj: CliContext, source: Path, out: Path, force: bool, hosts: str | None) -> None:
    """Collect a trace into the Parquet trace store every analysis reads.

    SOURCE is detected: a raw Sohu run directory (run.json), a directory of PyTorch profiler
    (Kineto) traces, or one Kineto or Chrome trace file. Damaged parts of a raw trace are set
    aside in quarantine.parquet and counted; the rest is kept.
    """
    from sohuprof.collectors import collect as run_collect, losses_line

    _check_inputs(source)
    summary = run_collect(source, out, force=force, show_progress=obj.show_progress, hosts=hosts)
    warning = losses_line(summary["counts"], f"in {out}/quarantine.parquet")
    if warning:
        click.echo(warning, err=True)
    if not obj.quiet:
        click.echo(f"wrote {out}: {summary['events']:,} events from {summary['files']} file(s) ({summary['format']})",
                   err=True)


def _scheduler(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Check the address's form before anything is read or connected to."""
    if value is None:
        return None
    from sohuprof.analyzers.dask_engine import check_scheduler_address
    try:
        return check_scheduler_address(value)
    except SohuprofError as exc:
        raise click.BadParameter(str(exc).removeprefix("'--scheduler' ")) from None


def _report_names(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _check_report_output(fmt: str, out: Path | None, force: bool, source: Path) -> None:
    """Refuse an output before anything is read or computed (csv and html write files)."""
    from sohuprof import atomic
    from sohuprof.analyzers import render

    if fmt in ("csv", "html") and out is None:
        raise click.UsageError(f"--format {fmt} writes files: give -o {'DIR' if fmt == 'csv' else 'FILE.html'}"
                               + (" (or -o - for a report of one table)" if fmt == "csv" else ""))
    if fmt == "csv" and str(out) == atomic.STDOUT:
        return    # one table to stdout: how many there are is known once the reports ran
    if fmt != "csv":
        _check_file_out(out, f"report.{'txt' if fmt == 'table' else fmt}")
    if fmt == "csv":
        atomic.check_marked_directory(out, marker=render.CSV_MARKER, force=force, inputs=[source])  # type: ignore[arg-type]
    elif out is not None:
        atomic.check_file_output(out, force=force, inputs=[source])


def _compute_reports(obj: CliContext, source: Path, names: list[str] | None, **options: Any) -> Any:
    """Open SOURCE (collecting it on the fly if it is not a store) and run the reports."""
    from sohuprof.analyzers.report import run_reports
    from sohuprof.store import open_store_or_collect

    with open_store_or_collect(source, show_progress=obj.show_progress) as store:
        if store.path != source:   # collected on the fly: say what was not kept, as collect would
            from sohuprof.collectors import losses_line
            warning = losses_line(store.manifest.get("counts") or {},
                                  "(`sohuprof collect` keeps them in quarantine.parquet)")
            if warning:
                click.echo(warning, err=True)
        return run_reports(store, names, **options)


def _print_or_write(text: bytes, out: Path | None, force: bool) -> None:
    """Print ``text`` on stdout (``out`` None), or write it to ``out`` (``-``: stdout; a file
    appears whole, see :func:`sohuprof.atomic.open_output`)."""
    from sohuprof import atomic

    if out is None:
        click.echo(text.decode(), nl=False)
    else:
        with atomic.open_output(out, force=force) as fh:
            fh.write(text)


def _write_reports(obj: CliContext, reports: Any, fmt: str, out: Path | None, force: bool, *,
                   top: int = 20, sort: str | None = None) -> None:
    """Print or write the reports in ``fmt`` (checked by :func:`_check_report_output`); tables
    cut to ``top`` rows, ordered by ``sort`` where they have it (table and html only)."""
    from sohuprof import atomic
    from sohuprof.analyzers import render
    from sohuprof.analyzers.render.order import check_sort, table_sort

    if sort is not None:   # one line naming the columns there are, before anything is written
        check_sort(sort, ((t, df) for name, data in reports.to_json().items()
                          for t, df, _ in render.reading_tables(name, data, max_rows=None)))
    with table_sort(sort):
        if fmt == "csv" and str(out) == atomic.STDOUT:
            _print_or_write(render.csv_text(reports), out, force)
        elif fmt == "csv":
            render.write_csv(reports, out, force=force)  # type: ignore[arg-type]
        elif fmt == "html":
            render.write_html(reports, out, force=force)  # type: ignore[arg-type]
        else:
            text = render.render_json(reports) if fmt == "json" else render.render_table(reports, max_rows=top).encode()
            _print_or_write(text, out, force)
    if out is not None and atomic.output_kind(out) == "path" and not obj.quiet:
        click.echo(f"wrote {out}", err=True)


def _check_specs(specs: tuple[str, ...] | list[str]) -> None:
    """Read every what-if SPEC before the store is (a malformed one is one line, at once)."""
    if not specs:
        return    # importing the what-if engine costs a fresh process ~0.1 s
    from sohuprof.analyzers.diagnosis.whatif import parse_scenario

    for spec in specs:
        parse_scenario(spec)


@cli.command(epilog="""\b
Examples:
  sohuprof analyze store/                                  # every report that applies, as tables
  sohuprof analyze run/ --report roofline,stalls           # a raw run is collected on the fly
  sohuprof analyze store/ --report critical_path           # the chain that set the wall time
  sohuprof analyze store/ --what-if comm=free --what-if rank=5:compute=0.77
  sohuprof analyze store/ --format json > report.json
  sohuprof analyze store/ --format html -o report.html     # figures + tables, readable offline
  sohuprof analyze trace.json.gz --report temporal,comm --hta-compatible
  sohuprof analyze store/ --engine dask --scheduler tcp://10.0.0.5:8786""")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--report", "names", callback=_report_names,
              help="Comma-separated, from findings, summary, roofline, stalls, comm, serving, temporal, "
                   "sequences, kernels, annotations, idle, launches, queue, memory_bw, memory, critical_path, "
                   "whatif [default: all that apply].")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(["table", "json", "csv", "html"]))
@click.option("-o", "--output", "out", type=OutputPath(path_type=Path),
              help="Output file (json, html, table; - for stdout) or directory (csv). Default: stdout.")
@click.option("--force", is_flag=True,
              help="Replace an existing output file; for csv, write into a directory that is not an "
                   "earlier csv output (its other files are kept).")
@click.option("--what-if", "what_if", multiple=True, metavar="SPEC",
              help="A change to predict, e.g. rank=5:compute=0.77 or comm=free (repeatable; adds the whatif "
                   "report; `sohuprof whatif -h` lists the SPECs).")
@click.option("--hta-compatible", is_flag=True,
              help="Select events as Holistic Trace Analysis does (drops unlaunched kernels and the last step).")
@click.option("--engine", default="local", show_default=True, type=click.Choice(["local", "dask"]),
              help="local: in-process, a rank at a time; dask: the same kernels as Dask tasks.")
@click.option("--scheduler", metavar="tcp://HOST:PORT", callback=_scheduler,
              help="Dask scheduler to use with --engine dask [default: start a LocalCluster].")
@click.option("--dask-dashboard", is_flag=True,
              help="With --engine dask and no --scheduler: serve the LocalCluster's dashboard on 127.0.0.1:8787.")
@click.option("--by", default="op", show_default=True, type=click.Choice(["op", "name"]),
              help="Roofline rows per op class and phase (op), or per op class, op name and phase (name).")
@click.option("--ranks", callback=lambda c, p, v: None if v is None else RankList().convert(v, p, c),
              metavar="RANKS", help="Only these ranks, e.g. 0,3,8-15 [default: all].")
@click.option("--start-ms", type=FiniteFloat(0, _MAX_WINDOW_MS),
              help="Only events starting at or after this, in ms from the trace start (as export chrome).")
@click.option("--end-ms", type=FiniteFloat(0, _MAX_WINDOW_MS, min_open=True),
              help="Only events starting before this, in ms from the trace start.")
@click.option("--top", default=20, show_default=True, type=_COUNT,
              help="Rows per table (--format table), the worst by each table's ranking or --sort.")
@click.option("--sort", metavar="COLUMN",
              help="Order tables having COLUMN by it, largest first (e.g. delay_cost_ms) [default: each table's ranking].")
@pass_cli
def analyze(obj: CliContext, source: Path, names: list[str] | None, fmt: str, out: Path | None,
            force: bool, what_if: tuple[str, ...], hta_compatible: bool, engine: str, scheduler: str | None,
            by: str, ranks: list[int] | None, start_ms: float | None, end_ms: float | None, top: int,
            sort: str | None, dask_dashboard: bool) -> None:
    """Compute roofline, stall, communication, serving, temporal and diagnosis reports.

    SOURCE is a trace store, or anything `collect` accepts (collected on the fly).
    """
    _check_inputs(source)
    if scheduler and engine != "dask":   # before a store is read or collected
        raise click.UsageError("--scheduler needs --engine dask")
    if dask_dashboard and (engine != "dask" or scheduler):
        raise click.UsageError("--dask-dashboard needs --engine dask without --scheduler (a scheduler serves its own)")
    if names and "whatif" in names and not what_if:
        raise click.ClickException("--report whatif needs a change to predict: add --what-if SPEC "
                                   "(or run `sohuprof whatif STORE SPEC...`)")
    _check_specs(what_if)
    if names and what_if and "whatif" not in names:
        names = [*names, "whatif"]
    if start_ms is not None and end_ms is not None and end_ms <= start_ms:
        raise click.UsageError(f"--end-ms ({end_ms:g}) must be greater than --start-ms ({start_ms:g})")
    _check_report_output(fmt, out, force, source)   # refused before the analysis rather than after it
    from sohuprof.analyzers.engine import Selection

    reports = _compute_reports(obj, source, names, hta_compatible=hta_compatible, engine=engine,
                               scheduler=scheduler, what_if=what_if, dask_dashboard=dask_dashboard, by=by,
                               selection=Selection(ranks=ranks, start_ms=start_ms, end_ms=end_ms))
    _write_reports(obj, reports, fmt, out, force, top=top, sort=sort)


@cli.command(epilog="""\b
Examples:
  sohuprof whatif store/ rank=5:compute=0.77          # rank 5's compute in 77 % of its time
  sohuprof whatif store/ comm=free link=node1:bandwidth=3 hw:hbm_bandwidth=2
  sohuprof whatif run/ op=gemm,phase=decode:roof+comm=free --format json
  sohuprof whatif store/ rank=5:compute=0.77 --format csv -o whatif/""")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("specs", nargs=-1, metavar="SPEC...")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(["table", "json", "csv"]))
@click.option("-o", "--output", "out", type=OutputPath(path_type=Path),
              help="Output file (json, table; - for stdout) or directory (csv). Default: stdout.")
@click.option("--force", is_flag=True,
              help="Replace an existing output file; for csv, write into a directory that is not an "
                   "earlier csv output (its other files are kept).")
@pass_cli
def whatif(obj: CliContext, source: Path, specs: tuple[str, ...], fmt: str, out: Path | None, force: bool) -> None:
    """Predict the wall time and tokens/s of a run after a change, by replaying its dependency graph.

    SOURCE is a trace store, or anything `collect` accepts (collected on the fly). Each SPEC is
    one scenario, several changes joined by '+' replayed together:

    \b
      rank=R:compute=F        rank R's compute ops (and their memory stalls) F times as long
      rank=R:memory=F         rank R's DMA copies F times as long
      op=OP[,phase=P]:roof    those ops at their roofline roof
      op=OP[,phase=P]:scale=F those ops F times as long
      link=nodeN:bandwidth=F  node N's NIC F times as fast
      hw:hbm_bandwidth=F      every op re-timed with F times the HBM bandwidth (hw:peak_flops=F: FLOP/s)
      comm=free               transfers cost nothing (waiting for the last member still happens)

    The run is replayed whole: a change that shortens work others did not wait on buys nothing.
    """
    _check_inputs(source)
    if not specs:
        raise click.ClickException("whatif needs at least one SPEC, such as rank=5:compute=0.77 "
                                   "(`sohuprof whatif -h` lists them)")
    _check_specs(specs)
    _check_report_output(fmt, out, force, source)
    reports = _compute_reports(obj, source, ["whatif"], what_if=specs)
    _write_reports(obj, reports, fmt, out, force)


@contextmanager
def _opened(obj: CliContext, source: Path) -> Iterator[Any]:
    """SOURCE as a store, collected on the fly if it is not one (saying what was not kept)."""
    from sohuprof.collectors import losses_line
    from sohuprof.store import open_store_or_collect

    with open_store_or_collect(source, show_progress=obj.show_progress) as store:
        if store.path != source:
            warning = losses_line(store.manifest.get("counts") or {},
                                  "(`sohuprof collect` keeps them in quarantine.parquet)")
            if warning:
                click.echo(f"{source}: {warning}", err=True)
        yield store


@cli.command(epilog="""\b
Examples:
  sohuprof diff before/ after/                       # two stores, B against A
  sohuprof diff run-a/ run-b/ --top 10               # raw runs or traces are collected on the fly
  sohuprof diff a.json.gz b.json.gz --match-names short --format json -o diff.json
  sohuprof diff before/ after/ --format html -o diff.html""")
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option("--top", default=20, show_default=True, type=_COUNT, help="Largest changes to list, per rank and name.")
@click.option("--match-names", default="exact", show_default=True, type=click.Choice(["exact", "short"]),
              help="short: names without template or function arguments and trailing numbers (HTA's short names).")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(["table", "json", "html"]))
@click.option("-o", "--output", "out", type=OutputPath(path_type=Path),
              help="Output file (- for stdout). Default: stdout (html needs -o).")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@pass_cli
def diff(obj: CliContext, a: Path, b: Path, top: int, match_names: str, fmt: str, out: Path | None,
         force: bool) -> None:
    """Compare two runs, B against A: per kernel or op name, per rank, per collective kind.

    A and B are trace stores, or anything `collect` accepts (collected on the fly), of any source.
    Deltas are B - A: names added and removed, count and time per name, the largest changes per
    rank and name, each rank's busy time per category and its stalls (Sohu) or temporal (GPU)
    breakdown, collectives per kind, the wall time. Ranks are matched by number.
    """
    from sohuprof import atomic
    from sohuprof.analyzers.diff import diff_stores
    from sohuprof.analyzers.render.diff import diff_json, diff_text, write_diff_html

    _check_inputs(a, b)
    if fmt == "html" and out is None:
        raise click.UsageError("--format html writes a file: give -o FILE.html")
    _check_file_out(out, f"diff.{'txt' if fmt == 'table' else fmt}")
    if out is not None:
        atomic.check_file_output(out, force=force, inputs=[a, b])   # refused before anything is read
    with _opened(obj, a) as store_a, _opened(obj, b) as store_b:
        result = diff_stores(store_a, store_b, top=top, match_names=match_names)
    if fmt == "html":
        write_diff_html(result, out, force=force)  # type: ignore[arg-type]
    else:
        text = diff_json(result) if fmt == "json" else diff_text(result).encode()
        _print_or_write(text, out, force)
    if out is not None and atomic.output_kind(out) == "path" and not obj.quiet:
        click.echo(f"wrote {out}", err=True)


class RankList(click.ParamType):
    """Ranks and ranges such as ``0,3,8-15``."""

    name = "RANKS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        if isinstance(value, list):
            return value
        from sohuprof.export.selection import parse_ranks
        try:
            return parse_ranks(str(value))
        except ValueError as exc:
            self.fail(str(exc).removeprefix("'ranks' "), param, ctx)


@cli.group(epilog="""\b
Examples:
  sohuprof export chrome store/ -o trace.json.gz
  sohuprof export perfetto store/ -o trace.pftrace""")
def export() -> None:
    """Export a trace store to other tools' formats."""


def _export_selection(command: Any) -> Any:
    """The options every exporter shares: --force and the window and ranks to export."""
    for option in reversed([
        click.option("--force", is_flag=True, help="Replace an existing output file."),
        click.option("--start-ms", type=FiniteFloat(0, _MAX_WINDOW_MS),
                     help="Only events starting at or after this, in ms from the trace start."),
        click.option("--end-ms", type=FiniteFloat(0, _MAX_WINDOW_MS, min_open=True),
                     help="Only events starting before this, in ms from the trace start."),
        click.option("--ranks", type=RankList(), help="Only these ranks, e.g. 0,3,8-15 [default: all]."),
    ]):
        command = option(command)
    return command


@export.command(epilog="""\b
Examples:
  sohuprof export chrome store/ -o trace.json.gz         # open in ui.perfetto.dev or chrome://tracing
  sohuprof export chrome store/ -o part.json --start-ms 20 --end-ms 45 --ranks 0,3,8-15""")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=OutputPath(path_type=Path),
              help="JSON file to write; gzip-compressed when it ends in .gz; - for stdout (plain JSON).")
@_export_selection
@pass_cli
def chrome(obj: CliContext, store: Path, out: Path, force: bool, start_ms: float | None,
           end_ms: float | None, ranks: list[int] | None) -> None:
    """Write a Chrome trace-event JSON file that Perfetto and chrome://tracing open.

    One process per node, one thread per chip and engine, collectives linked by flow arrows,
    counters as counter tracks and the run's metadata under otherData.
    """
    from sohuprof.export.chrome import export_chrome

    _check_inputs(store, store=True)
    _check_file_out(out, "trace.json.gz")
    summary = export_chrome(store, out, start_ms=start_ms, end_ms=end_ms, ranks=ranks, force=force,
                            show_progress=obj.show_progress)
    for warning in summary.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not obj.quiet:
        click.echo(f"wrote {out}: {summary.events:,} events, {summary.flows:,} flows, "
                   f"{summary.counters:,} counter samples, {summary.bytes / 1e6:,.1f} MB uncompressed", err=True)


@export.command(epilog="""\b
Examples:
  sohuprof export perfetto store/ -o trace.pftrace       # open in ui.perfetto.dev
  sohuprof export perfetto store/ -o part.pftrace --start-ms 20 --end-ms 45 --ranks 0,3,8-15""")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=OutputPath(path_type=Path),
              help="Perfetto protobuf trace to write (.pftrace); - for stdout.")
@_export_selection
@pass_cli
def perfetto(obj: CliContext, store: Path, out: Path, force: bool, start_ms: float | None,
             end_ms: float | None, ranks: list[int] | None) -> None:
    """Write a Perfetto protobuf trace: about 3x smaller than the JSON (it loads as fast).

    Nested tracks node > chip > engine, collectives linked by flows, counter tracks under each
    chip and the run's metadata (chrome metadata "sohuprof").
    """
    from sohuprof.export.perfetto import export_perfetto

    _check_inputs(store, store=True)
    _check_file_out(out, "trace.pftrace")
    summary = export_perfetto(store, out, start_ms=start_ms, end_ms=end_ms, ranks=ranks, force=force,
                              show_progress=obj.show_progress)
    for warning in summary.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not obj.quiet:
        click.echo(f"wrote {out}: {summary.events:,} events, {summary.flows:,} flows, "
                   f"{summary.counters:,} counter samples, {summary.bytes / 1e6:,.1f} MB", err=True)


@cli.command(epilog="""\b
Examples:
  sohuprof dashboard store/                    # http://127.0.0.1:8050
  sohuprof dashboard store/ --port 8060
  sohuprof dashboard store/ --host 0.0.0.0     # reachable from other machines (warns)
  sohuprof dashboard store/ --allow-host box.example   # also answer http://box.example:8050 (a proxy, a DNS name)""")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8050, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--allow-host", "allow_host", multiple=True, metavar="NAME",
              help="Also answer requests for this Host name (NAME or NAME:PORT; repeatable; '*' any, which warns). "
                   "Others get 403: a guard against DNS rebinding.")
@pass_cli
def dashboard(obj: CliContext, store: Path, host: str, port: int, allow_host: tuple[str, ...] = ()) -> None:
    """Serve the web dashboard on a trace store: timelines across nodes linked to the analyses.

    Pages: overview, timeline (zoomable swimlanes of every node, chip and engine), roofline,
    stalls, communication and serving. Serves only STORE; stop it with Ctrl-C. The store is
    verified first (as `sohuprof check` does) and a damaged one refused.
    """
    from sohuprof.check import check_store
    from sohuprof.dashboards.app import check_port, create_app, host_warning, serve
    from sohuprof.dashboards.security import allow_host_warning

    _check_inputs(store, store=True)
    for warning in (host_warning(host), allow_host_warning(allow_host)):
        if warning:
            click.echo(warning, err=True)
    app = create_app(store, allowed_hosts=allow_host)
    # Opening checked the metadata; damage inside a page shows only when it is read, which the
    # pages would meet one callback at a time. Every page is decoded once here (~1.5x a bare
    # read), so a damaged store is refused before serving, with check's own line.
    report = check_store(store)
    if not report.ok:
        lines = report.lines()
        more = f" (and {len(lines) - 1} more: `sohuprof check {store}`)" if len(lines) > 1 else ""
        raise click.ClickException(lines[0] + more)
    check_port(host, port)
    if not obj.quiet:
        click.echo(f"serving {store} at http://{host}:{port}/ (Ctrl-C to stop)", err=True)
    serve(app, host=host, port=port)


@cli.command(epilog="""\b
Example:
  sohuprof check store/   # exit 0 when sound; else exit 1, one line per damaged file on stderr""")
@click.argument("store", type=click.Path(path_type=Path))
@pass_cli
def check(obj: CliContext, store: Path) -> None:
    """Verify a trace store deeply: every file's checksum, every page decoded, the values against
    the schema, row counts and the rank index against the manifest.

    Opening a store (analyze, export, dashboard) checks only its metadata; run this after a copy
    or a crash, or when a read fails.
    """
    from sohuprof.check import check_store

    _check_inputs(store, store=True)
    report = check_store(store)
    if not report.ok:
        for line in report.lines():
            click.echo(f"Error: {line}", err=True)
        raise click.exceptions.Exit(1)
    if not obj.quiet:
        what = "checksums, pages" if report.checksums else "pages (no checksums recorded: an older store)"
        click.echo(f"ok: {store}: {report.files} files, {sum(report.rows.values()):,} rows, "
                   f"{report.bytes / 1e6:,.1f} MB; {what}, row counts and rank index verified")


@cli.command(epilog="""\b
Examples:
  sohuprof query store/ 'DESCRIBE events'
  sohuprof query store/ 'SELECT name, count(*) AS n, sum(dur) / 1e6 AS total_ms FROM events GROUP BY name ORDER BY total_ms DESC LIMIT 10'
  sohuprof query store/ @waits.sql --format csv -o waits.csv""")
@click.argument("store", type=click.Path(path_type=Path))
@click.argument("sql", metavar="SQL")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(["table", "csv", "json"]))
@click.option("-o", "--output", "out", type=OutputPath(),
              help="Output file (- for stdout). Default: stdout.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@pass_cli
def query(obj: CliContext, store: Path, sql: str, fmt: str, out: Path | None, force: bool) -> None:
    """Run one SQL query (DuckDB) over a trace store; SQL may be @FILE.sql to read it from a file.

    \b
    Views: events (node from its partition), collectives, requests, counters, quarantine,
    ranks (rank, node, chip). Times are ns. Only queries run (SELECT, WITH, DESCRIBE, SHOW,
    SUMMARIZE, EXPLAIN): the store is read-only. The table format shows the first 100 rows.
    """
    from sohuprof import atomic
    from sohuprof.analyzers.render.query import render_query
    from sohuprof.query import load_sql, run_query

    _check_inputs(store, store=True)
    _check_file_out(out, f"result.{'txt' if fmt == 'table' else fmt}")
    if out is not None:
        atomic.check_file_output(out, force=force, inputs=[store])   # refused before the query runs
    result = run_query(store, load_sql(sql))
    _print_or_write(render_query(result, fmt), out, force)
    if out is not None and atomic.output_kind(out) == "path" and not obj.quiet:
        click.echo(f"wrote {out} ({result.num_rows:,} row{'' if result.num_rows == 1 else 's'})", err=True)


def main() -> None:
    """Entry point of the ``sohuprof`` console script."""
    cli(prog_name="sohuprof")


if __name__ == "__main__":
    main()
