"""The `imgproc` command: thin click commands over the library."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

import click

from imgproc.config import AFTER, FORMATS, PROVIDERS, Config, WatchRule, find_config, load_config
from imgproc.errors import ImgprocError, UsageError
from imgproc.logs import configure_logging
from imgproc.processor import parse_assignments
from imgproc.registry import Registry, describe, load_registry


@dataclass(frozen=True)
class Env:
    """What the top-level options decided, handed to every command."""

    config: Config
    plugins_dir: Path | None

    def registry(self) -> Registry:
        """Return the plugin registry (entry points plus --plugins-dir)."""
        return load_registry(plugins_dir=self.plugins_dir)


class _UsageError(click.ClickException):
    """A request that cannot run as given: one line on stderr, exit code 2."""

    exit_code = 2


class _Group(click.Group):
    """Adds plugins' commands, and turns the library's typed errors into messages: usage
    errors exit 2, the rest 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_plugin_commands(ctx)})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return super().get_command(ctx, name) or _plugin_commands(ctx).get(name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            raise _UsageError(str(exc)) from None
        except ImgprocError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group)
@click.version_option(metadata.version("imgproc"), prog_name="imgproc")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="config.toml to use (default: $IMGPROC_CONFIG, then ./config.toml).")
@click.option("--plugins-dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              envvar="IMGPROC_PLUGINS_DIR", help="Also load plugins from the .py files here.")
@click.option("--log-json", is_flag=True, help="Log JSON lines (default when not a terminal).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, plugins_dir: Path | None,
        log_json: bool, log_level: str | None) -> None:
    """Batch image processing with plugins: colorize, upscale, merge, resize."""
    config = load_config(find_config(config_path))
    config = config.replace("logging", level=log_level, format="json" if log_json else None)
    configure_logging(level=config.logging.level, fmt=config.logging.format)
    ctx.obj = Env(config, plugins_dir)


def _plugin_commands(ctx: click.Context) -> dict[str, click.Command]:
    # --help is eager and runs before --plugins-dir is stored: fall back to its variable.
    plugins_dir = ctx.find_root().params.get("plugins_dir") or os.environ.get(
        "IMGPROC_PLUGINS_DIR")
    return load_registry(plugins_dir=Path(plugins_dir) if plugins_dir else None).commands


def _complete_plugin(ctx: click.Context, param: click.Parameter,
                     incomplete: str) -> list[str]:
    plugins_dir = ctx.find_root().params.get("plugins_dir")
    return [n for n in load_registry(plugins_dir=plugins_dir).processors
            if n.startswith(incomplete)]


@cli.command()
@click.option("--plugin", "-p", "plugin", required=True, shell_complete=_complete_plugin,
              help="Processor to run (see `imgproc plugins`).")
@click.option("--option", "-O", "options", multiple=True, metavar="KEY=VALUE",
              help="Processor option; repeat for several.")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output", "-o", "outdir", required=True,
              type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--recursive", "-r", is_flag=True, help="Descend into sub-folders.")
@click.option("--follow-symlinks", is_flag=True,
              help="Follow links found in folders (only to files inside the same folder).")
@click.option("--skip-existing", is_flag=True, help="Skip inputs whose output exists (resume).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="Output format [same].")
@click.option("--provider", type=click.Choice(PROVIDERS), help="Execution provider [auto].")
@click.option("--workers", type=click.IntRange(min=1), help="Images processed in parallel [1].")
@click.option("--engine", help="Where images run: local threads, or dask [config engine.kind].")
@click.option("--address", help="Dask scheduler, e.g. tcp://host:8786 (implies --engine dask) "
              "[$DASK_SCHEDULER_ADDRESS; none: a local cluster].")
@click.option("--dry-run", is_flag=True, help="Show what would be written; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@click.pass_obj
def run(env: Env, plugin: str, options: tuple[str, ...], inputs: tuple[Path, ...],
        outdir: Path, recursive: bool, follow_symlinks: bool, skip_existing: bool,
        fmt: str | None, provider: str | None, workers: int | None, engine: str | None,
        address: str | None, dry_run: bool, as_json: bool) -> None:
    """Run a processor over INPUT files and folders, writing into OUTDIR."""
    from imgproc import batch
    from imgproc.engine import open_engine
    from imgproc.runtime import Runtime

    config = env.config.replace("runtime", provider=provider, workers=workers)
    config = config.replace("output", format=fmt)
    config = config.replace("engine", kind=engine or ("dask" if address else None),
                            address=address, workers=workers)  # a local cluster's processes
    registry = env.registry()
    processor = registry.get(plugin).processor
    try:
        cli_options = parse_assignments(options)
    except ValueError as exc:
        raise UsageError(f"--option: {exc}") from None
    values = processor.resolve_options(config.plugins.get(plugin, {}), cli_options)
    plan = batch.plan_batch(list(inputs), outdir, arity=processor.arity(values),
                            recursive=recursive, fmt=config.output.format,
                            follow_symlinks=follow_symlinks)
    if dry_run:
        _report_plan(plan, skip_existing, as_json)
        sys.exit(1 if any(o.status == "failed" for o in plan.rejected) else 0)
    batch.check_output_folder(outdir)
    steps, runtime = [batch.Step(processor, values)], Runtime(config.runtime)
    with open_engine(registry, config, steps, runtime, plugins_dir=env.plugins_dir) as where, \
            _progress(len(plan.jobs), enabled=not as_json) as tick:
        summary = batch.run_batch(plan, steps, runtime, config.output,
                                  workers=config.runtime.workers, skip_existing=skip_existing,
                                  progress=tick, engine=where)
    _report_summary(summary, as_json)
    sys.exit(summary.exit_code)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def plugins(env: Env, as_json: bool) -> None:
    """List every processor found, its options and models, and plugins that failed to load."""
    registry = env.registry()
    data = describe(registry)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for p in data["processors"]:
        click.echo(f"{p['name']}  ({p['distribution']} {p['version']}, plugin {p['plugin']})")
        click.echo(f"  {p['summary']}  [inputs: {p['inputs']}]")
        if p["api_warning"]:
            click.echo(f"  warning: {p['api_warning']}")
        for o in p["options"]:
            extra = f" one of {', '.join(o['choices'])}" if "choices" in o else ""
            if "min" in o or "max" in o:
                extra += f" in [{o.get('min', '')}, {o.get('max', '')}]"
            click.echo(f"  --option {o['name']}=<{o['type']}> default {o['default']!r}{extra}"
                       f"  {o['help']}")
        for m in p["models"]:
            click.echo(f"  model {m['name']}: {m['file']} sha256 {m['sha256'][:12]}... "
                       f"in {m['inputs']} out {m['outputs']}")
    if not data["processors"]:
        click.echo("no processors installed")
    for f in data["failures"]:
        click.echo(f"FAILED {f['plugin']} ({f['distribution']}): {f['reason']}")


@cli.command()
@click.option("--provider", type=click.Choice(PROVIDERS), help="Provider to try [config].")
@click.option("--check", is_flag=True, help="Run every shipped model once on each usable "
              "provider (CUDA, then the CPU) and compare with the CPU; exit 1 on a failure.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def doctor(env: Env, provider: str | None, check: bool, as_json: bool) -> None:
    """Show Python, ONNX Runtime, its providers and the provider each model actually gets."""
    from imgproc import doctor as diagnosis

    settings = env.config.replace("runtime", provider=provider).runtime
    if check:
        result = diagnosis.check(env.registry(), settings)
        click.echo(json.dumps(result, indent=2) if as_json else diagnosis.format_check(result))
        sys.exit(0 if result["ok"] else 1)
    report = diagnosis.diagnose(env.registry(), settings)
    click.echo(json.dumps(report, indent=2) if as_json else diagnosis.format_report(report))


@cli.command()
@click.argument("input_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--plugin", "-p", "plugins", multiple=True, shell_complete=_complete_plugin,
              help="Processor to run; repeat for a pipeline (steps run in order).")
@click.option("--option", "-O", "options", multiple=True, metavar="[PLUGIN.]KEY=VALUE",
              help="Processor option; prefix with the plugin name in a pipeline.")
@click.option("--output", "-o", "outdir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--recursive", "-r", is_flag=True, help="Watch sub-folders too.")
@click.option("--after", type=click.Choice(AFTER), default="keep", show_default=True,
              help="What to do with an input once processed.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="same", show_default=True)
@click.option("--poll", is_flag=True, help="Poll instead of OS events (network drives).")
@click.option("--follow-symlinks", is_flag=True,
              help="Follow links dropped in the folder (only to files inside it).")
@click.option("--poll-interval", type=float, default=1.0, show_default=True)
@click.option("--journal", type=click.Path(dir_okay=False, path_type=Path),
              help="Journal file [config daemon.journal].")
@click.option("--workers", type=click.IntRange(min=1), help="Images in parallel [1].")
@click.option("--provider", type=click.Choice(PROVIDERS), help="Execution provider [auto].")
@click.pass_obj
def watch(env: Env, input_dir: Path | None, plugins: tuple[str, ...], options: tuple[str, ...],
          outdir: Path | None, recursive: bool, after: str, fmt: str, poll: bool,
          follow_symlinks: bool, poll_interval: float, journal: Path | None,
          workers: int | None, provider: str | None) -> None:
    """Watch folders and process every complete new file exactly once.

    With INPUT_DIR, --plugin and -o: one ad-hoc rule. Without: the [[watch]] rules of
    config.toml. Stop with Ctrl-C or SIGTERM; the images in hand are finished first.
    """
    from imgproc.engine import open_watch_engines
    from imgproc.journal import Journal
    from imgproc.runtime import Runtime
    from imgproc.watch import Daemon, build_watches, check_watches

    config = env.config.replace("runtime", provider=provider, workers=workers)
    rules = config.watch
    if input_dir is not None:
        if not plugins or outdir is None:
            raise UsageError("an ad-hoc watch needs INPUT_DIR, --plugin and -o OUTDIR")
        rules = (WatchRule(input=input_dir, output=outdir, plugins=plugins,
                           options=_pipeline_options(plugins, options), recursive=recursive,
                           after=after, format=fmt, poll=poll, poll_interval=poll_interval,
                           follow_symlinks=follow_symlinks),)
    elif not rules:
        raise UsageError("no [[watch]] rules in the config; or give INPUT_DIR --plugin -o OUTDIR")
    registry = env.registry()
    watches = build_watches(rules, registry, config.plugins)
    check_watches(watches)  # before the journal file is created
    runtime = Runtime(config.runtime)
    with ExitStack() as engines_in_use:  # a cluster started for the daemon stops after it
        engines = open_watch_engines(registry, config, watches, runtime, stack=engines_in_use,
                                     plugins_dir=env.plugins_dir)
        store = Journal(journal or config.journal_path())
        daemon = Daemon(watches, runtime=runtime, journal=store, output=config.output,
                        settings=config.daemon, workers=config.runtime.workers, engines=engines)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: daemon.request_stop())
        daemon.start()
        try:
            daemon.wait()
        finally:
            daemon.stop()
            store.close()


def _pipeline_options(plugins: tuple[str, ...], pairs: tuple[str, ...]) -> dict[str, Any]:
    try:
        flat = parse_assignments(pairs)
    except ValueError as exc:
        raise UsageError(f"--option: {exc}") from None
    per_plugin: dict[str, dict[str, str]] = {name: {} for name in plugins}
    for key, value in flat.items():
        plugin, dot, option = key.partition(".")
        if dot and plugin in per_plugin:
            per_plugin[plugin][option] = value
        elif len(plugins) == 1:
            per_plugin[plugins[0]][key] = value
        else:
            raise UsageError(f"--option {key}: in a pipeline, name the plugin: PLUGIN.{key}")
    return per_plugin


@cli.command()
@click.option("--journal", type=click.Path(dir_okay=False, path_type=Path),
              help="Journal file [config daemon.journal].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status(env: Env, journal: Path | None, as_json: bool) -> None:
    """Show the watch journal: inputs in each state, the backlog of each watched folder (files
    with no entry and no output yet, counted now), retries waiting on a fault, the last errors."""
    from imgproc.status import journal_status

    path = journal or env.config.journal_path()
    if not path.exists():
        raise UsageError(f"no journal at {path} (has `imgproc watch` run?)")
    report = journal_status(path)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"journal: {path} (daemon {'running' if report['daemon_running'] else 'stopped'})")
    click.echo(", ".join(f"{state} {n}" for state, n in report["counts"].items()))
    if report["counts"]["running"] and not report["daemon_running"]:
        click.echo(f"{report['counts']['running']} entry(ies) left running by a stopped daemon: "
                   "re-run at its next start")
    for folder, count in report["backlog"].items():
        click.echo(f"backlog {folder}: {count} file(s) with no entry and no output yet")
    for w in report["waiting"]:
        click.echo(f"waiting {w['path']} (next retry {w['next_retry']}): {w['error']}")
    for e in report["last_errors"]:
        click.echo(f"{e['state']} {e['path']} (attempt {e['attempts']}): {e['error']}")


@cli.command()
@click.option("--host", help="Address to listen on [127.0.0.1]; others need a token.")
@click.option("--port", type=click.IntRange(0, 65535), help="Port [8000].")
@click.option("--token", envvar="IMGPROC_TOKEN", help="Bearer token every /v1 route requires "
              "(default: $IMGPROC_TOKEN, then serve.token).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Jobs and uploads [serve.data_dir].")
@click.option("--max-upload-mb", type=click.IntRange(min=1), help="Largest upload [50].")
@click.option("--workers", type=click.IntRange(min=1), help="Images processed at once [1].")
@click.option("--queue-size", type=click.IntRange(min=1),
              help="Images accepted and unfinished before 429 [32].")
@click.option("--provider", type=click.Choice(PROVIDERS), help="Execution provider [auto].")
@click.option("--engine", help="Where job images run: local threads, or dask (workers must "
              "see --data-dir at the same path) [config engine.kind].")
@click.option("--address", help="Dask scheduler for --engine dask [$DASK_SCHEDULER_ADDRESS; "
              "none: a local cluster per job].")
@click.pass_obj
def serve(env: Env, host: str | None, port: int | None, token: str | None,
          data_dir: Path | None, max_upload_mb: int | None, workers: int | None,
          queue_size: int | None, provider: str | None, engine: str | None,
          address: str | None) -> None:
    """Serve the HTTP API (/v1, docs at /docs) and the web page (/) until Ctrl-C or SIGTERM.

    Needs `pip install 'imgproc[serve]'`. Jobs are kept under --data-dir and resume after a
    restart.
    """
    from imgproc.serve.server import run_server

    config = env.config.replace("runtime", provider=provider).replace(
        "serve", host=host, port=port, token=token, max_upload_mb=max_upload_mb,
        workers=workers, queue_size=queue_size,
        data_dir=str(data_dir.resolve()) if data_dir else None)
    config = config.replace("engine", kind=engine or ("dask" if address else None),
                            address=address)
    run_server(config, registry=env.registry(), plugins_dir=env.plugins_dir)


class _progress:
    """A thread-safe progress bar on a terminal; nothing otherwise."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.bar = (click.progressbar(length=total, label="imgproc", file=sys.stderr)
                    if enabled and sys.stderr.isatty() and total else None)
        self.lock = threading.Lock()

    def __enter__(self) -> Any:
        if self.bar is not None:
            self.bar.__enter__()
        return self.tick

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.__exit__(kind, value, tb)

    def tick(self, _outcome: object) -> None:
        if self.bar is not None:
            with self.lock:
                self.bar.update(1)


def _report_plan(plan: Any, skip_existing: bool, as_json: bool) -> None:
    planned = [{"inputs": [str(p) for p in j.inputs], "output": str(j.output),
                "exists": j.output.exists(),
                "action": "skip" if skip_existing and j.output.exists() else "write"}
               for j in plan.jobs]
    if as_json:
        click.echo(json.dumps({"planned": planned,
                               "rejected": [o.to_json() for o in plan.rejected]}, indent=2))
        return
    for p in planned:
        note = " (exists, skipped)" if p["action"] == "skip" else (
            " (overwrites)" if p["exists"] else "")
        click.echo(f"{' + '.join(p['inputs'])} -> {p['output']}{note}")
    for o in plan.rejected:
        click.echo(f"{o.status} {', '.join(map(str, o.inputs))}: {o.reason}")
    click.echo(f"dry run: {len(planned)} to write, {len(plan.rejected)} set aside")


def _report_summary(summary: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary.to_json(), indent=2))
        return
    for o in summary.outcomes:
        if o.status != "done":
            click.echo(f"{o.status} {', '.join(map(str, o.inputs))}: {o.reason}")
    click.echo(f"done {summary.count('done')}, skipped {summary.count('skipped')}, "
               f"failed {summary.count('failed')} in {summary.seconds:.2f} s")


def main() -> None:
    """Entry point of the `imgproc` console script."""
    cli(prog_name="imgproc")


if __name__ == "__main__":
    main()
