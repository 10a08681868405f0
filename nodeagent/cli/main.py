"""The ``nodeagent`` command line.

Imports are lazy: each command imports what it needs when it runs, so ``nodeagent
--version`` stays fast and never imports kubernetes or docker.

:func:`main` is the one error boundary: a :class:`NodeagentError` prints its one line and
exit code; any other exception is a bug and prints one line too (exit 70), never a
traceback (``-vv`` logs it).
"""

from __future__ import annotations

import argparse
import codecs
import dataclasses
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from nodeagent import __version__
from nodeagent.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NO_GPU,
    EXIT_OK,
    EXIT_SOFTWARE,
    InputError,
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

        raw: str = self.args.root
        if not raw:  # Path("") is ".": an empty --root would be the working directory
            raise InputError("--root: empty; give a directory (/ for this machine)")
        return HostRoot(Path(raw))

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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="nodeagent",
        description="Bootstrap and report NVIDIA GPU nodes for Kubernetes.",
    )
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
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    ap = sub.add_parser(
        "apply",
        help="the whole job: detect, configure the runtime, kubelet args, report to the Node",
    )
    ap.add_argument(
        "--phase",
        choices=("bootstrap", "report", "all"),
        default="all",
        help="bootstrap: before the kubelet registers (runtime, kubelet args); report: after "
        "(labels, condition, event); all: both (default)",
    )
    ap.add_argument(
        "--dry-run", action="store_true", help="print every file diff and API patch, change nothing"
    )
    ap.add_argument(
        "--allow-restart",
        action="store_const",
        const=True,
        help="allow a runtime restart that stops running containers (live-restore off)",
    )
    ap.add_argument("-o", "--output", choices=("text", "json"), default="text")
    ap.set_defaults(func=cmd_apply)

    ck = sub.add_parser(
        "check", help="read-only probes of the driver, runtime, kubelet and Node; exit 1 on a fail"
    )
    ck.add_argument("-o", "--output", choices=("table", "json"), default="table")
    ck.add_argument("--phase", choices=("bootstrap", "report", "all"), default="all")
    ck.add_argument("--strict", action="store_true", help="warnings fail too (exit 1)")
    ck.set_defaults(func=cmd_check)

    rn = sub.add_parser(
        "run",
        help="the daemon (systemd Type=notify): apply, then watch XIDs and GPUs and keep the "
        "Node's labels and GPUReady condition current",
    )
    rn.set_defaults(func=cmd_run)

    d = sub.add_parser("detect", help="show the GPU inventory and the labels the node would get")
    d.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    d.set_defaults(func=cmd_detect)

    rt = sub.add_parser("runtime", help="configure the container runtime")
    rt_sub = rt.add_subparsers(dest="runtime_command", metavar="ACTION")
    rt_sub.required = True
    c = rt_sub.add_parser(
        "configure", help="add the nvidia runtime to docker or containerd, safely"
    )
    _runtime_flags(c)
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
    c.add_argument(
        "--allow-restart",
        action="store_const",
        const=True,
        help="allow a restart that stops running containers (live-restore off)",
    )
    c.add_argument("--restart-mode", choices=("auto", "reload", "restart", "none"))
    c.set_defaults(func=cmd_runtime_configure)

    rb = sub.add_parser(
        "rollback", help="restore the newest backup of the runtime's config and reload/restart"
    )
    _runtime_flags(rb)
    rb.add_argument(
        "--allow-restart",
        action="store_const",
        const=True,
        help="allow a restart that stops running containers (live-restore off)",
    )
    rb.set_defaults(func=cmd_rollback)

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
    return p


def _runtime_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runtime",
        choices=("auto", "docker", "containerd"),
        help="which runtime (default: config runtime.engine, auto = what is installed and running)",
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
    from nodeagent.runtime.select import choose, make_engine
    from nodeagent.walk.steps import activation_done

    cfg = _runtime_config(ctx)
    root = ctx.root()
    name = choose(cfg, root, ctx.args.runtime)
    if name is None:
        print("runtime: skipped (runtime.engine is none)")
        return EXIT_OK
    engine = make_engine(name, cfg, root)
    plan = engine.plan(engine.read())
    for warning in plan.warnings:
        print(f"{name}: warning: {warning}")
    files = ", ".join(c.host_path for c in plan.changes if c.changed)
    if not plan.changed:
        print(f"{name}: unchanged (the nvidia runtime is already configured)")
        return EXIT_OK
    if ctx.args.dry_run:
        sys.stdout.write(plan.diff())
        print(f"{name}: would change {files}; then {plan.activation} ({plan.reason})")
        return EXIT_OK
    result = engine.apply(plan)
    if not result.written:  # a concurrent run configured it first, under the host lock
        print(f"{name}: unchanged (the nvidia runtime is already configured, by another run)")
        return EXIT_OK
    state = "verified" if result.verified else "not verified"
    detail = f" ({result.message})" if result.message else ""
    written = ", ".join(result.written)
    print(f"{name}: changed {written}; {activation_done(result.activation)}; {state}{detail}")
    return EXIT_OK


def cmd_apply(ctx: Context) -> int:
    from nodeagent.walk.agent import Agent
    from nodeagent.walk.steps import StepResult

    cfg = _runtime_config(ctx)
    text = ctx.args.output == "text"

    def emit(r: StepResult) -> None:
        if text:
            print(r.line(), flush=True)
            if r.diff:
                sys.stdout.write(r.diff if r.diff.endswith("\n") else r.diff + "\n")

    agent = Agent(cfg, ctx.root())
    try:
        outcome = agent.apply(ctx.args.phase, dry_run=ctx.args.dry_run, emit=emit)
    finally:
        agent.close()
    if text:
        print(outcome.summary())
    else:
        from nodeagent.cli.render import emit as emit_doc

        emit_doc(outcome.to_dict(), "json")
    return outcome.exit_code


def cmd_check(ctx: Context) -> int:
    from nodeagent.walk import check
    from nodeagent.walk.agent import Agent

    agent = Agent(ctx.config(), ctx.root())
    try:
        report = check.run(agent, ctx.args.phase)
    finally:
        agent.close()
    strict = ctx.args.strict
    if ctx.args.output == "json":
        from nodeagent.cli.render import emit

        emit(report.to_dict(strict), "json")
    else:
        colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        sys.stdout.write(check.render(report, colour, strict))
    return report.exit_code(strict)


def cmd_run(ctx: Context) -> int:
    from nodeagent.daemon.loop import Daemon
    from nodeagent.daemon.sdnotify import Notifier

    return Daemon(ctx.config, ctx.root(), Notifier.from_env()).run()


def cmd_rollback(ctx: Context) -> int:
    from nodeagent.runtime.select import choose, make_engine

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
