"""The ``stylebox`` command line.

Exit status: 0 success, 1 a plugin failed, 2 bad input or bad config (one line saying why,
never a traceback), 130 interrupted (``run`` and ``batch`` by Ctrl-C or SIGTERM: run the
same command again to resume; ``train`` by Ctrl-C or SIGTERM: ``--resume`` continues), 141 standard
output closed early (``stylebox status --json | head``; quietly, as a program stopped by
SIGPIPE). ``serve`` exits 0 when SIGTERM or Ctrl-C stops it, as it is meant to stop.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import tomllib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import BaseModel, ValidationError

from stylebox import __version__, bundled, logs
from stylebox.config import (
    ImagesConfig,
    LoadedConfig,
    OutputConfig,
    StyleboxConfig,
    error_lines,
    invalid,
    json_schema,
    load_config,
    not_a_folder,
)
from stylebox.daemon import files
from stylebox.daemon.runner import PluginHandle
from stylebox.daemon.sources import close_plugin
from stylebox.entry import STOPPED_LIKE_CTRL_C, command_of, stop_listening
from stylebox.errors import BadInput, ConfigError, PluginError, StateError, StyleboxError, describe
from stylebox.images import decode_image
from stylebox.plugins.api import Runtime, companion_kind, path_argument
from stylebox.plugins.registry import Registry, discover, load_quietly, misgrouped

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

EXIT_OK, EXIT_FAILED, EXIT_BAD, EXIT_INTERRUPTED = 0, 1, 2, 130
#: Entry-point group through which plugins add their own subcommands.
COMMANDS_GROUP = "stylebox.commands"
#: Seconds that threads a plugin started may take to end after serve, batch or run did.
STRAY_THREAD_GRACE = 3.0
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # 141: what a shell reports for a pipe closed early

log = logging.getLogger("stylebox")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            # Output still in the buffer is written here, inside the handler below, and not
            # at interpreter exit, where a closed pipe can only print "Exception ignored".
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): nothing more to say to it, and not an error
        # worth a traceback. Exit with the status a shell gives a program that SIGPIPE
        # stopped, so `set -o pipefail` scripts see it as they would for any other tool.
        _discard_stdout()
        return EXIT_BROKEN_PIPE


def _discard_stdout() -> None:
    """Point standard output at /dev/null, so the flush at exit writes nowhere, silently."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by something without a file
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, descriptor)
    finally:
        os.close(devnull)


def _stdout_console() -> Console:
    """A rich console on standard output that leaves a closed pipe to :func:`main` (rich's
    own handling exits with status 1). Into a pipe or a file (no terminal, no ``COLUMNS``)
    lines are not wrapped: each stays whole for ``grep``, where rich would cut it at 80."""
    from rich.console import Console

    class PipeConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True  # nothing more to write
            raise BrokenPipeError

    console = PipeConsole()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = PipeConsole(width=UNWRAPPED_WIDTH, soft_wrap=True)
    return console


#: The width of output into a pipe: wider than any line it prints.
UNWRAPPED_WIDTH = 10_000


def _print_table(console: Console, table: Table) -> None:
    """Print ``table``; into a pipe or a file without the spaces rich pads every line with
    to the table's width (the description column is the last: each line ended in up to a
    hundred spaces)."""
    if console.is_terminal:
        console.print(table)
        return
    with console.capture() as captured:
        console.print(table)
    for line in captured.get().splitlines():
        console.out(line.rstrip(), highlight=False)


def _main(argv: Sequence[str] | None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    guarded = threading.current_thread() is threading.main_thread() and (
        command_of(given) in STOPPED_LIKE_CTRL_C
    )
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if guarded else None
    try:
        # The plugins' commands load here: a Ctrl-C meanwhile is the entry point's to say.
        args = _parser().parse_args(given)
        logs.setup(logging.WARNING if args.quiet else logging.INFO)
        return _handle(args)
    finally:
        # Not once the command stopped listening (it said "interrupted"): a second SIGTERM
        # on the way out would end it with 143.
        if guarded and signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
            # The entry point's guard, or a handler Python did not install (None): the
            # default stands in for them.
            if previous is None or previous is signal.default_int_handler:
                previous = signal.SIG_DFL
            signal.signal(signal.SIGTERM, previous)


def _handle(args: argparse.Namespace) -> int:
    """The command's exit status; each kind of error said in one line."""
    handler = getattr(args, "handler", None)
    if handler is None:  # a plugin's command that set none: a traceback said nothing useful
        logs.say(
            f"the command {args.command!r} has no handler: the plugin that adds it must call "
            "set_defaults(handler=...) on its parser"
        )
        return EXIT_FAILED
    try:
        return int(handler(args))
    except ConfigError as exc:
        logs.say(f"config error: {exc}", lines=True)
        return EXIT_BAD
    except BadInput as exc:
        logs.say(f"bad input: {exc}")
        return EXIT_BAD
    except StateError as exc:
        logs.say(str(exc))
        return EXIT_BAD
    except PluginError as exc:
        logs.say(f"failed: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        stop_listening()  # a second Ctrl-C here said "interrupted" twice
        logs.say("interrupted")
        if any(t is not threading.main_thread() for t in threading.enumerate()):
            # Threads are left (a job still running in a worker thread, inside PyTorch's
            # C++, after a second Ctrl-C during a drain): at a normal exit its thread pools
            # were torn down under it, "terminate called without an active exception",
            # SIGABRT. Its job resumes at the next run, as after a kill.
            _exit_now(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stylebox", description="Neural style transfer for folders of photos."
    )
    parser.add_argument("--version", action="version", version=f"stylebox {__version__}")
    default_config = f"default: {bundled.default_config_path()}"
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="stylise image files once, in the foreground",
        description="Stylise one or more image files with a plugin and write the results, "
        "snapshots, animation and manifest to --out. An interrupted run resumes where it "
        "stopped when the same command is given again.",
    )
    run.add_argument("images", nargs="+", type=path_argument, metavar="IMAGE")
    run.add_argument(
        "--out", type=path_argument, required=True, metavar="DIR", help="output folder"
    )
    run.add_argument("--plugin", help="plugin name (default: the inbox's, or gatys)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a plugin param; VALUE is read as TOML (50, 0.5, [256], true) or else as text",
    )
    run.add_argument(
        "--config", type=path_argument, help="take params (and state_dir) from this config"
    )
    run.add_argument("--inbox", help="which [[inbox]] of --config to take params from")
    run.add_argument(
        "--state-dir", type=path_argument, help="checkpoints and caches (default: var/state)"
    )
    run.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the config's)")
    run.add_argument(
        "--format", choices=["png", "jpeg", "webp"], help="result format (default: png)"
    )
    run.set_defaults(handler=_cmd_run)

    serve = commands.add_parser(
        "serve",
        help="run the daemon: watch the inboxes and stylise what is dropped in them",
        description="Watch every [[inbox]] of the config and process each settled file. "
        "SIGTERM drains (running jobs checkpoint and resume at the next start); SIGHUP "
        "reloads the config.",
    )
    serve.add_argument("--config", type=path_argument, help=default_config)
    serve.set_defaults(handler=_cmd_serve)

    batch = commands.add_parser(
        "batch",
        help="process every image of a [[batch]] folder that is not done yet",
        description="Queue each image of the [[batch]] NAME source folder that the journal "
        "has not done, and run them in the foreground. Killed runs continue where they were.",
    )
    batch.add_argument("name", help="the [[batch]] table's name")
    batch.add_argument("--config", type=path_argument, help=default_config)
    batch.add_argument("--dry-run", action="store_true", help="list what would run, run nothing")
    batch.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run the jobs on Ray actors: on the cluster at ADDRESS (as `ray start --head` "
        "prints it), or with none, at the batch's ray_address or on this machine "
        "(needs pip install 'stylebox[ray]')",
    )
    batch.set_defaults(handler=_cmd_batch)

    status = commands.add_parser("status", help="jobs per inbox and batch, from the journal")
    status.add_argument("--config", type=path_argument, help=default_config)
    status.add_argument(
        "--state-dir",
        type=path_argument,
        help="read the journal there (a `run --state-dir`'s, say), not the config's "
        "state_dir; without --config, no config is read at all",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--failed", action="store_true", help="list every failed job, not only the latest five"
    )
    status.set_defaults(handler=_cmd_status)

    plot = commands.add_parser(
        "plot",
        help="draw a result's loss curves from its manifest",
        description="Write the loss curves (total, content, style, TV per step, log scale) "
        "that MANIFEST records as an SVG file, <stem>.loss.svg beside it by default: for "
        "results made before the outbox got them.",
    )
    plot.add_argument(
        "manifest", type=path_argument, metavar="MANIFEST", help="a result's <stem>.json"
    )
    plot.add_argument("--out", type=path_argument, metavar="SVG", help="where to write the plot")
    plot.set_defaults(handler=_cmd_plot)

    plugins = commands.add_parser("plugins", help="list installed plugins and their params")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(handler=_cmd_plugins)

    config = commands.add_parser("config", help="check a config file or print its JSON Schema")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser("check", help="validate a config file")
    check.add_argument("file", type=path_argument, nargs="?", help=default_config)
    check.set_defaults(handler=_cmd_config_check)
    schema = config_commands.add_parser("schema", help="print the config's JSON Schema")
    schema.set_defaults(handler=_cmd_config_schema)
    _add_plugin_commands(commands)
    return parser


def _add_plugin_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """Commands that plugins bring (``stylebox train`` and ``export`` come with ``fast``):
    each entry point of the ``stylebox.commands`` group is a function that adds its
    subcommands to ``commands`` and sets their ``handler``. One that fails to load or to
    register is reported on stderr and left out; the other commands still work."""
    from importlib.metadata import entry_points

    for entry_point in sorted(entry_points(group=COMMANDS_GROUP), key=lambda ep: ep.name):
        try:
            load_quietly(entry_point)(commands)
        except Exception as exc:  # a broken plugin must not take the whole CLI down
            logs.say(
                f"plugin commands {entry_point.name!r} ({entry_point.value}) left out: "
                f"{describe(exc)}"
            )


# -- run -------------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    registry = discover()
    loaded = load_config(args.config, registry) if args.config else None
    plugin_name, params = _run_params(args, loaded, registry)
    # Refused now, before the (slow) plugin start-up; made once it started, so that a run
    # refused (a style that is no image, CUDA asked where there is none) leaves no folders.
    folders = [(o, f) for o, f in (("--out", args.out), ("--state-dir", args.state_dir)) if f]
    for option, folder in folders:
        if problem := not_a_folder(folder):
            raise ConfigError(f"{option} {problem}")
    runtime = loaded.runtime if loaded else Runtime(state_dir=Path("var/state").resolve())
    if args.state_dir:
        runtime = Runtime(
            device=runtime.device, state_dir=args.state_dir.resolve(), backbone=runtime.backbone
        )
    if args.device:
        runtime = Runtime(
            device=args.device, state_dir=runtime.state_dir, backbone=runtime.backbone
        )
    output = OutputConfig()
    if loaded and args.inbox:
        output = loaded.job("inbox", args.inbox).output
    if args.format:
        output = output.model_copy(update={"format": args.format})

    # Bad inputs are said before the (slow) plugin start-up, each in its line; the others
    # run (as a batch goes on past its bad files), and the exit status says one was bad.
    images_config = loaded.config.images if loaded else ImagesConfig()
    good: list[Path] = []
    # A photo's mask named beside it (`run photos/*.png`) is read by the photo's job, as in
    # an inbox; it is no photo of its own (run as one, it failed as a photo without a mask).
    photos = {(p.resolve().parent, p.stem) for p in args.images if companion_kind(p.name) is None}
    companions = 0
    for path in args.images:
        if (companion := companion_kind(path.name)) is not None:
            kind, stem = companion
            if not os.path.lexists(path):
                logs.say(f"bad input: {path} does not exist")
            elif (path.resolve().parent, stem) in photos:
                companions += 1
            else:
                logs.say(
                    f"bad input: {path} is the {kind} of a photo named {stem}, not a photo: "
                    f"name the photo, and its {kind} is read from beside it"
                )
            continue
        try:
            if not os.path.lexists(path):  # a name given here, not a file that went away
                raise BadInput(f"{path} does not exist")
            with logs.unwarned():  # its job's read says them, naming the job
                decode_image(
                    path,
                    max_pixels=images_config.max_pixels,
                    formats=frozenset(images_config.formats),
                )
        except BadInput as exc:
            logs.say(f"bad input: {exc}")
        else:
            good.append(path)
    if not good:
        return EXIT_BAD

    from stylebox.daemon.runfiles import run_files

    config = loaded.config if loaded else StyleboxConfig()
    config = config.model_copy(update={"state_dir": runtime.state_dir})
    try:
        instance = registry.get(plugin_name)(params, runtime)
    except StyleboxError:
        raise
    except Exception as exc:  # a plugin bug: said in one line, as the daemon says it
        raise PluginError(f"plugin {plugin_name} failed to start: {describe(exc)}") from exc
    try:
        for option, folder in folders:
            files.make_folder(option, folder)
        handle = PluginHandle(plugin_name, registry.plugins[plugin_name].version, instance, params)
        status = run_files(good, handle, args.out, output, config)
    finally:
        close_plugin(instance)
    if status == EXIT_OK and len(good) + companions < len(args.images):
        status = EXIT_BAD
    return _leave(status)


def _run_params(
    args: argparse.Namespace, loaded: LoadedConfig | None, registry: Registry
) -> tuple[str, BaseModel]:
    """The plugin and its validated params: the inbox's, then each ``--set`` on top."""
    base: dict[str, Any] = {}
    plugin_name = args.plugin
    if loaded is not None:
        inboxes = loaded.config.inbox
        if args.inbox is None and len(inboxes) == 1:
            args.inbox = inboxes[0].name
        if args.inbox is not None:
            inbox = loaded.job("inbox", args.inbox)
            if plugin_name in (None, inbox.plugin):
                plugin_name = inbox.plugin
                # What the inbox sets, as validated with the config's root (so its paths are
                # absolute now); not the defaults filled in, nor those a setting chose
                # (Adam's learning rate, a preset's layers), which the --set on top may change.
                validated = loaded.params_for("inbox", inbox.name).model_dump(mode="json")
                base = {key: validated[key] for key in inbox.params if key in validated}
    elif args.inbox:
        raise ConfigError("--inbox needs --config")
    plugin_name = plugin_name or "gatys"
    plugin_cls = registry.get(plugin_name)
    for item in args.overrides:
        key, separator, raw = item.partition("=")
        if not separator or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        base[key.strip()] = _parse_value(raw)
    try:
        params = plugin_cls.Params.model_validate(base, context={"base_dir": Path.cwd()})
    except ValidationError as exc:
        lines = error_lines(exc, plugin_cls.Params, noun="param", top="(params)")
        raise ConfigError("; ".join(f"{plugin_name} param {line}" for line in lines)) from None
    return plugin_name, params


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw


# -- serve, batch, status ----------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from stylebox.daemon.service import serve

    return _leave(serve(args.config or bundled.default_config_path()))


def _cmd_batch(args: argparse.Namespace) -> int:
    from stylebox.daemon.batch import run_batch

    return _leave(
        run_batch(
            args.config or bundled.default_config_path(), args.name, args.dry_run, ray=args.ray
        )
    )


def _leave(status: int) -> int:
    """``status``; or, where threads that are not stylebox's (a plugin's: all of stylebox's
    own are daemon threads) are still running a few seconds after the work ended, exit
    with it at once: the interpreter would wait for them at exit, for good."""
    stray = [
        thread
        for thread in threading.enumerate()
        if thread is not threading.main_thread() and not thread.daemon and thread.is_alive()
    ]
    deadline = time.monotonic() + STRAY_THREAD_GRACE
    for thread in stray:
        thread.join(max(0.0, deadline - time.monotonic()))
    stray = [thread for thread in stray if thread.is_alive()]
    if not stray:
        return status
    log.warning(
        "exiting without waiting for threads a plugin left running: %s",
        ", ".join(thread.name for thread in stray),
        extra={"event": "stray_threads"},
    )
    _exit_now(status)


def _exit_now(status: int) -> NoReturn:
    """Exit with ``status`` at once, the logs and output written first; no thread is
    waited for, nothing of the interpreter's or its libraries' is torn down."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _cmd_status(args: argparse.Namespace) -> int:
    from stylebox.daemon.status import print_status

    # --state-dir alone reads that journal without any config: one being edited (a reload
    # refused) must not hide the queue when it is most wanted.
    config = args.config or (None if args.state_dir else bundled.default_config_path())
    try:
        return print_status(
            config, as_json=args.json, state_dir=args.state_dir, all_failed=args.failed
        )
    except ConfigError as exc:
        raise ConfigError(
            f"{exc}\n(`stylebox status --state-dir DIR` reads a journal without the config)"
        ) from None


def _cmd_plot(args: argparse.Namespace) -> int:
    from stylebox.lossplot import plot_manifest

    print(plot_manifest(args.manifest, args.out))
    return EXIT_OK


# -- train, export ----------------------------------------------------------------------------


# -- plugins ---------------------------------------------------------------------------------


def _cmd_plugins(args: argparse.Namespace) -> int:
    registry = discover()
    if args.json:
        listing = {
            "plugins": {
                name: {
                    "version": info.version,
                    "source": info.source,
                    "description": info.cls.description,
                    "params": info.cls.Params.model_json_schema(),
                }
                for name, info in registry.plugins.items()
            },
            "failures": {name: f.reason for name, f in registry.failures.items()},
            "ignored": [
                {"name": f.name, "source": f.source, "reason": f.reason} for f in registry.ignored
            ],
            "misgrouped": misgrouped(),
        }
        print(json.dumps(listing, indent=2))
        return EXIT_OK
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    console = _stdout_console()
    for name, info in registry.plugins.items():
        said = f"{escape(info.version)}  ({escape(info.source)})"
        console.print(f"[bold]{escape(name)}[/bold] {said}")
        if info.cls.description:
            console.print(f"  {escape(info.cls.description)}")
        table = Table(show_header=True, header_style="dim", box=None, padding=(0, 2))
        for column in ("param", "type", "default", "description"):
            table.add_column(column)
        for field_name, field in info.cls.Params.model_fields.items():
            default = (
                "(required)"
                if field.is_required()
                else repr(field.get_default(call_default_factory=True))
            )
            kind = _type_text(field.annotation) + _bounds_text(field.metadata)
            cells = (field_name, kind, default, field.description or "")
            table.add_row(*(Text(cell) for cell in cells))  # as written: list[float] is no markup
        _print_table(console, table)
        console.print()
    for name, failure in registry.failures.items():
        console.print(
            f"[bold red]{escape(name)}[/bold red] failed to load ({escape(failure.source)}): "
            f"{escape(failure.reason)}"
        )
    for ignored in registry.ignored:
        console.print(
            f"[bold yellow]{escape(ignored.name)}[/bold yellow] of {escape(ignored.source)} is "
            f"{escape(ignored.reason)}"
        )
    for said in misgrouped():  # a plugin that never loads, for a typo in its group
        console.print(f"[bold yellow]not loaded[/bold yellow]: {escape(said)}")
    if not registry.plugins and not registry.failures:
        console.print("no plugins installed")
    return EXIT_OK


def _type_text(annotation: Any) -> str:
    """A param's type as its user writes it: ``list[float] | None``, ``'none' | 'luminance'``
    (not ``Optional``, ``Union`` or ``list[Annotated]``)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_text(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_text(arg) for arg in args)
    if origin is typing.Literal:
        return " | ".join(repr(arg) for arg in args)
    if annotation is type(None):
        return "None"
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_text(arg) for arg in args)}]" if args else name
    name = getattr(annotation, "__name__", None)
    return name if isinstance(name, str) else str(annotation).replace("typing.", "")


def _bounds_text(metadata: list[Any]) -> str:
    """A param's range as its constraints give it: ``" > 0"``, ``" 0 to 1"``,
    ``" > 0, <= 8192"``; ``""`` for none."""
    bounds = {
        symbol: getattr(item, attr)
        for item in metadata
        for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
        if getattr(item, attr, None) is not None
    }
    if set(bounds) == {">=", "<="}:
        return f" {bounds['>=']:g} to {bounds['<=']:g}"
    order = [symbol for symbol in (">", ">=", "<", "<=") if symbol in bounds]  # low first
    return ",".join(f" {symbol} {bounds[symbol]:g}" for symbol in order)


# -- config ----------------------------------------------------------------------------------


def _cmd_config_check(args: argparse.Namespace) -> int:
    path = args.file or bundled.default_config_path()
    registry = discover()
    loaded = load_config(path, registry)
    # Each plugin's own cheap checks of the files its params name (the fast plugin reads
    # its model's manifest and graph): what would disable an inbox at start is said here.
    problems = []
    for (table, name), params in loaded.params.items():
        if (table, name) in loaded.unavailable:
            continue
        plugin = registry.get(loaded.job(table, name).plugin)
        try:
            plugin.check(params, loaded.runtime)
        except ConfigError as exc:  # a bad setting: serve refuses the whole config for it too
            problems.append(f"{loaded.label(table, name)}.params: {exc}")
        except Exception as exc:  # as a plugin failing to start: that inbox, not the config
            loaded.unavailable[(table, name)] = describe(exc)
    if problems:  # all of them at once, as for the config's own fields
        raise invalid(str(path), problems)
    from stylebox.daemon.batch import source_problem

    inboxes = ", ".join(f"{i.name} ({i.plugin})" for i in loaded.config.inbox) or "none"
    batches = ", ".join(f"{b.name} ({b.plugin})" for b in loaded.config.batch) or "none"
    # A batch whose source is missing: serve runs without it, but the batch would refuse.
    sources = [problem for b in loaded.config.batch if (problem := source_problem(b))]
    if loaded.unavailable or sources:
        broken = "some plugins are broken" if loaded.unavailable else "a batch cannot run"
        print(f"{path}: valid, but {broken}; inboxes: {inboxes}; batches: {batches}")
        for (table, name), reason in sorted(loaded.unavailable.items()):
            print(f"  [[{table}]] {name} is disabled: {reason}", file=sys.stderr)
        for problem in sources:
            print(
                f"  {problem}; stylebox batch refuses it until it is a folder it can read",
                file=sys.stderr,
            )
        return EXIT_FAILED
    print(f"{path}: OK; inboxes: {inboxes}; batches: {batches}")
    return EXIT_OK


def _cmd_config_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


if __name__ == "__main__":  # as the installed command starts: the entry point's guard
    from stylebox import entry

    sys.exit(entry.main())
