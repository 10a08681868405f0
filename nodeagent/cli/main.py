"""The ``nodeagent`` command line.

Imports are lazy: each command imports what it needs when it runs, so ``nodeagent
--version`` stays fast and never imports kubernetes or docker.

:func:`main` is the one error boundary: a :class:`NodeagentError` prints its one line and
exit code; any other exception is a bug and prints one line too (exit 70), never a
traceback (``-vv`` logs it). Each command turns its flags into a call on the walk (or the
daemon, the controller, the runtime engines) and prints through :mod:`nodeagent.cli.render`;
no other layer imports this one.
"""

from __future__ import annotations

import argparse
import codecs
import dataclasses
import io
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from nodeagent import __version__
from nodeagent.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NO_GPU,
    EXIT_OK,
    EXIT_SOFTWARE,
    NodeagentError,
    describe,
    one_line,
)

if TYPE_CHECKING:
    from nodeagent.config import Config
    from nodeagent.host.paths import HostRoot


@dataclasses.dataclass(frozen=True)
class Context:
    """What every command gets: the parsed arguments, the host root, the config."""

    args: argparse.Namespace

    def root(self) -> HostRoot:
        from nodeagent.host.paths import HostRoot

        return HostRoot.of(self.args.root)

    def config(self) -> Config:
        """The validated config: ``--config`` as given, else the default path under --root."""
        from nodeagent import config

        if self.args.config:
            return config.load(Path(self.args.config), must_exist=True)
        return config.load(self.root().path(config.DEFAULT_CONFIG_PATH))


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, minus its ``shutil`` import (lzma, bz2: ~3 ms of every
    command, because argparse builds a formatter for each ``add_argument``)."""

    def __init__(self, prog: str) -> None:
        try:
            width = int(os.environ["COLUMNS"])
        except (KeyError, ValueError):
            try:
                width = os.get_terminal_size().columns
            except OSError:
                width = 80
        super().__init__(prog, width=max(width - 2, 40))


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


if TYPE_CHECKING:
    # The subcommands' collection: its add_parser makes one command's parser.
    Commands = argparse._SubParsersAction[_Parser]


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="nodeagent",
        description="Bootstrap and report NVIDIA GPU nodes for Kubernetes.",
    )
    _global_flags(p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (
        _add_apply,
        _add_check,
        _add_run,
        _add_detect,
        _add_runtime,
        _add_rollback,
        _add_controller,
    ):
        add(sub)
    return p


def _global_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", action="version", version=f"nodeagent {__version__}")
    p.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: /etc/nodeagent/config.yaml under --root; absent = defaults)",
    )
    p.add_argument(
        "--root",
        metavar="DIR",
        default="/",
        help="treat DIR as / for every host path read or written (like dpkg --root)",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv debug)")
    p.add_argument(
        "--log-format",
        choices=("json", "console"),
        help="log format on stderr (default: console on a TTY, JSON lines otherwise)",
    )


# walk.steps.Phase's values (tests/test_cli.py holds them together): written out, so that
# building the parser imports no walk module.
PHASE_CHOICES = ("bootstrap", "report", "all")


def _add_apply(sub: Commands) -> None:
    ap = sub.add_parser(
        "apply",
        help="the whole job: detect, configure the runtime, kubelet args, report to the Node",
    )
    ap.add_argument(
        "--phase",
        choices=PHASE_CHOICES,
        default="all",
        help="bootstrap: before the kubelet registers (runtime, kubelet args); report: after "
        "(labels, condition, event); all: both (default)",
    )
    ap.add_argument(
        "--dry-run", action="store_true", help="print every file diff and API patch, change nothing"
    )
    _allow_restart(ap, "allow a runtime restart that stops running containers (live-restore off)")
    ap.add_argument("-o", "--output", choices=("text", "json"), default="text")
    ap.set_defaults(func=cmd_apply)


def _add_check(sub: Commands) -> None:
    ck = sub.add_parser(
        "check", help="read-only probes of the driver, runtime, kubelet and Node; exit 1 on a fail"
    )
    ck.add_argument("-o", "--output", choices=("table", "json"), default="table")
    ck.add_argument("--phase", choices=PHASE_CHOICES, default="all")
    ck.add_argument("--strict", action="store_true", help="warnings fail too (exit 1)")
    ck.set_defaults(func=cmd_check)


def _add_run(sub: Commands) -> None:
    rn = sub.add_parser(
        "run",
        help="the daemon (systemd Type=notify): apply, then watch XIDs and GPUs and keep the "
        "Node's labels and GPUReady condition current",
    )
    rn.set_defaults(func=cmd_run)


def _add_detect(sub: Commands) -> None:
    d = sub.add_parser("detect", help="show the GPU inventory and the labels the node would get")
    d.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    d.set_defaults(func=cmd_detect)


def _add_runtime(sub: Commands) -> None:
    rt = sub.add_parser("runtime", help="configure the container runtime")
    rt_sub = rt.add_subparsers(dest="runtime_command", metavar="ACTION")
    rt_sub.required = True
    c = rt_sub.add_parser(
        "configure", help="add the nvidia runtime to docker or containerd, safely"
    )
    _runtime_flag(c)
    default = c.add_mutually_exclusive_group()
    default.add_argument(
        "--set-as-default",
        dest="set_as_default",
        action="store_const",
        const=True,
        help="make the nvidia runtime the default (config: runtime.set_as_default)",
    )
    default.add_argument("--no-default", dest="set_as_default", action="store_const", const=False)
    c.add_argument("--dry-run", action="store_true", help="print the diff, change nothing")
    _allow_restart(c)
    c.add_argument("--restart-mode", choices=("auto", "reload", "restart", "none"))
    c.set_defaults(func=cmd_runtime_configure)


def _add_rollback(sub: Commands) -> None:
    rb = sub.add_parser(
        "rollback", help="restore the newest backup of the runtime's config and reload/restart"
    )
    _runtime_flag(rb)
    _allow_restart(rb)
    rb.set_defaults(func=cmd_rollback)


def _add_controller(sub: Commands) -> None:
    ctl = sub.add_parser(
        "controller",
        help="in the cluster: lift the startup taint when GPUReady is True, taint nodes whose "
        "GPUs stay unhealthy",
    )
    ctl.add_argument(
        "--kubeconfig",
        metavar="PATH",
        help="credential that may get/list/watch/patch nodes (default: the pod's service account)",
    )
    ctl.set_defaults(func=cmd_controller)


def _allow_restart(
    p: argparse.ArgumentParser,
    text: str = "allow a restart that stops running containers (live-restore off)",
) -> None:
    p.add_argument("--allow-restart", action="store_const", const=True, help=text)


class _EngineChoices:
    """``--runtime``'s choices: ``auto`` and the registry's engines, read from the registry
    only when argparse looks (on ``--runtime`` or help), since the registry imports every
    engine and most commands need none."""

    def _names(self) -> tuple[str, ...]:
        from nodeagent.runtime.registry import names

        return ("auto", *names())

    def __contains__(self, value: object) -> bool:
        return value in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())


def _runtime_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runtime",
        metavar="ENGINE",  # a metavar from the choices would read the registry now
        choices=_EngineChoices(),  # type: ignore[arg-type]
        help="which runtime: %(choices)s (default: config runtime.engine; auto = what is "
        "installed and running)",
    )


def _runtime_config(ctx: Context) -> Config:
    """The config with the command's flags applied over ``runtime``."""
    cfg = ctx.config()
    a = ctx.args
    changes: dict[str, Any] = {}
    for flag in ("set_as_default", "allow_restart", "restart_mode"):
        value = getattr(a, flag, None)
        if value is not None:
            changes[flag] = value
    return dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, **changes))


def cmd_runtime_configure(ctx: Context) -> int:
    """The runtime step of ``apply`` alone (one code path, one wording): the diff on
    --dry-run, then one line; a failed step is the one error line on stderr."""
    from nodeagent.cli.render import runtime_line
    from nodeagent.walk.agent import Agent
    from nodeagent.walk.steps import Status

    agent = Agent(_runtime_config(ctx), ctx.root())
    r, _ = agent.step_runtime(configure=True, dry_run=ctx.args.dry_run, engine=ctx.args.runtime)
    if r.status is Status.FAILED:
        print(f"nodeagent: {r.detail}", file=sys.stderr)
        return r.exit_code
    sys.stdout.write(r.diff)
    print(runtime_line(r))
    return EXIT_OK


def cmd_apply(ctx: Context) -> int:
    from nodeagent.cli.render import apply_summary, emit, step_line
    from nodeagent.walk.agent import Agent
    from nodeagent.walk.steps import Phase, StepResult

    cfg = _runtime_config(ctx)
    text = ctx.args.output == "text"

    def show(r: StepResult) -> None:
        if text:
            print(step_line(r), flush=True)
            if r.diff:
                sys.stdout.write(r.diff if r.diff.endswith("\n") else r.diff + "\n")

    agent = Agent(cfg, ctx.root())
    try:
        outcome = agent.apply(Phase(ctx.args.phase), dry_run=ctx.args.dry_run, emit=show)
    finally:
        agent.close()
    if text:
        print(apply_summary(outcome))
    else:
        emit(outcome.to_dict(), "json")
    return outcome.exit_code


def cmd_check(ctx: Context) -> int:
    from nodeagent.cli.render import check_table, emit
    from nodeagent.walk import check
    from nodeagent.walk.agent import Agent
    from nodeagent.walk.steps import Phase

    agent = Agent(ctx.config(), ctx.root())
    try:
        report = check.run(agent, Phase(ctx.args.phase))
    finally:
        agent.close()
    strict = ctx.args.strict
    if ctx.args.output == "json":
        emit(report.to_dict(strict), "json")
    else:
        colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        sys.stdout.write(check_table(report, colour, strict))
    return report.exit_code(strict)


def cmd_run(ctx: Context) -> int:
    from nodeagent.daemon.loop import Daemon
    from nodeagent.daemon.sdnotify import Notifier

    return Daemon(ctx.config, ctx.root(), Notifier.from_env()).run()


def cmd_rollback(ctx: Context) -> int:
    from nodeagent.runtime.registry import make_engine
    from nodeagent.runtime.select import choose

    cfg = _runtime_config(ctx)
    root = ctx.root()
    name = choose(cfg, root, ctx.args.runtime)
    if name is None:
        print("runtime: skipped (runtime.engine is none)")
        return EXIT_OK
    result = make_engine(name, cfg, root).rollback()
    print(f"{name}: {result.message}")
    return EXIT_OK


def cmd_detect(ctx: Context) -> int:
    cfg = ctx.config()  # validate before anything else runs

    from nodeagent.cli.render import detect_table
    from nodeagent.gpu.inventory import STATE_OK
    from nodeagent.gpu.nvml import detect
    from nodeagent.labels.registry import node_labels

    inv = detect(library=cfg.nvml_library, root=ctx.root())
    labels = node_labels(inv, cfg.labels)
    from nodeagent.log import get_logger

    get_logger("nodeagent.detect").info(
        "detect.done", state=inv.state, error=inv.error, gpus=len(inv.gpus), labels=len(labels)
    )
    fmt = ctx.args.output
    if fmt == "table":
        if inv.state != STATE_OK:
            print(f"nodeagent: {inv.message}", file=sys.stderr)
        else:
            sys.stdout.write(detect_table(inv, labels))
    else:
        from nodeagent.cli.render import emit

        doc = inv.to_dict()
        doc["labels"] = dict(sorted(labels.items()))
        emit(doc, fmt)
    return EXIT_OK if inv.state == STATE_OK else EXIT_NO_GPU


def cmd_controller(ctx: Context) -> int:
    cfg = ctx.config()
    import signal

    from nodeagent.kube.client import KubeAPI, read_kubeconfig
    from nodeagent.kube.controller import Controller, Rules, Terminated

    kubeconfig = Path(ctx.args.kubeconfig) if ctx.args.kubeconfig else None
    if kubeconfig is not None:
        read_kubeconfig(kubeconfig)  # a bad file given at start is exit 2, not a retry loop
    api = KubeAPI(kubeconfig, deadline_s=cfg.kube.api_deadline_s)
    rules = Rules(
        condition_type=cfg.kube.condition_type,
        startup_taint_key=cfg.kube.startup_taint_key,
        unhealthy_taint_key=cfg.kube.unhealthy_taint_key,
        grace_s=cfg.kube.unhealthy_grace_s,
    )
    controller = Controller(api, rules)

    def on_term(signum: int, frame: object) -> None:
        controller.stop()
        raise Terminated  # out of whatever the main thread waits in, an API retry included

    signal.signal(signal.SIGTERM, on_term)
    import contextlib

    with contextlib.suppress(Terminated):
        controller.run()
    return EXIT_OK


# What an ASCII-only stream shows for the few non-ASCII characters the output uses.
_ASCII = {"\u00b7": "-", "\u00d7": "x", "\u2192": "->", "\u2014": "-", "\u2026": "..."}


def _ascii_fallback(e: UnicodeError) -> tuple[str, int]:
    if not isinstance(e, UnicodeEncodeError):
        raise e
    return "".join(_ASCII.get(c, "?") for c in e.object[e.start : e.end]), e.end


codecs.register_error("nodeagent-ascii", _ascii_fallback)


def _tolerant_streams() -> None:
    """stdout and stderr never raise on a character their encoding lacks (an ASCII
    ``PYTHONIOENCODING``, a C locale): it is written in ASCII (\u00b7 as -) or as ?."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="nodeagent-ascii")


def main(argv: Optional[Sequence[str]] = None) -> int:
    _tolerant_streams()
    args = build_parser().parse_args(argv)
    try:
        from nodeagent import log

        log.configure(args.log_format, args.verbose)
        func: Callable[[Context], int] = args.func
        return func(Context(args=args))
    except NodeagentError as e:
        print(f"nodeagent: {one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader left (`| head`): nothing more to tell it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as e:  # a bug: one line and EX_SOFTWARE, the traceback only at -vv
        from nodeagent.log import get_logger

        get_logger("nodeagent.cli.main").debug("internal_error", exc_info=True)
        print(f"nodeagent: {describe(e)} (a bug: please report it)", file=sys.stderr)
        return EXIT_SOFTWARE


if __name__ == "__main__":
    sys.exit(main())
