"""The kubelet's extra-args file: ``--node-labels`` and ``--register-with-taints`` before
the kubelet registers.

The file is a systemd ``EnvironmentFile`` (``/etc/default/kubelet`` on Debian/Ubuntu,
``/etc/sysconfig/kubelet`` on the RHEL family) whose ``KUBELET_EXTRA_ARGS`` the kubeadm
drop-in expands into the kubelet's command line. Labels and taints given there apply only
when the Node registers (kubernetes/kubernetes#109569), which is exactly what the startup
taint needs: the Node exists with it from its first moment.

Editing rules: every other line and every other flag is kept as written; the agent's own
label keys are remembered in a marker comment, so a later run removes a label the agent no
longer wants but never one the operator added. Values are restricted to characters that
mean nothing to systemd or a shell (label values are already ``[A-Za-z0-9-_.]``), and the
whole value is double-quoted.

Reads the file (through the one host reader) and plans the change as a
:class:`~nodeagent.host.change.FileChange`; the walk writes it through the one writer.
Never writes, never talks to the API.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Mapping
from typing import Optional

from nodeagent.config import KubeConfig
from nodeagent.errors import InputError
from nodeagent.host.change import FileChange
from nodeagent.host.paths import HostRoot
from nodeagent.host.reader import read_text
from nodeagent.kube.node import Taint

VAR = "KUBELET_EXTRA_ARGS"
MARKER = "# nodeagent: owned node labels:"
DEBIAN_PATH = "/etc/default/kubelet"
RHEL_PATH = "/etc/sysconfig/kubelet"

# What may appear inside the quoted value we write: no quote, $, backslash, backtick, space
# inside a flag value.
_SAFE_RE = re.compile(r"^[A-Za-z0-9._/=:,\-]+$")
_LINE_RE = re.compile(r"^(\s*(?:export\s+)?)" + VAR + r"=(.*)$")


def startup_taint(kube: KubeConfig) -> Optional[Taint]:
    """The startup taint the kubelet registers the Node with (``kube.startup_taint``), or
    None when it is off. The one place it is built: ``apply`` writes it, ``check`` expects it."""
    return Taint(kube.startup_taint_key, "", "NoSchedule") if kube.startup_taint else None


@dataclasses.dataclass(frozen=True)
class KubeletArgs:
    """The extra args as a list of kubelet flags, plus the keys the agent owns."""

    args: tuple[str, ...]
    owned_labels: frozenset[str]


def parse(text: str, name: str) -> KubeletArgs:
    """Parse the file's ``KUBELET_EXTRA_ARGS`` (last assignment wins, as systemd reads it)."""
    args: tuple[str, ...] = ()
    owned: frozenset[str] = frozenset()
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.startswith(MARKER):
            owned = frozenset(k.strip() for k in line[len(MARKER) :].split(",") if k.strip())
            continue
        m = _LINE_RE.match(line)
        if not m:
            continue
        try:
            words = shlex.split(m.group(2), comments=False, posix=True)
        except ValueError as e:
            raise InputError(f"{name}:{lineno}: cannot parse {VAR}: {e}") from None
        # systemd strips the quotes, then splits $KUBELET_EXTRA_ARGS at whitespace.
        args = tuple(" ".join(words).split())
    return KubeletArgs(args=args, owned_labels=owned)


def _split_flag(args: tuple[str, ...], flag: str) -> tuple[list[str], list[str]]:
    """(values of ``flag`` in either ``--flag=v`` or ``--flag v`` form, the other args)."""
    values: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith(flag + "="):
            values.append(a[len(flag) + 1 :])
        elif a == flag and i + 1 < len(args):
            values.append(args[i + 1])
            i += 1
        else:
            rest.append(a)
        i += 1
    return values, rest


def _parse_map(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        for item in v.split(","):
            if not item:
                continue
            k, _, val = item.partition("=")
            out[k] = val
    return out


def merge(current: KubeletArgs, labels: Mapping[str, str], taint: Optional[Taint]) -> KubeletArgs:
    """Pure: ``current`` with our labels and startup taint in, stale owned labels out."""
    label_values, rest = _split_flag(current.args, "--node-labels")
    merged = _parse_map(label_values)
    for k in current.owned_labels - set(labels):
        merged.pop(k, None)
    merged.update(labels)
    taint_values, rest = _split_flag(tuple(rest), "--register-with-taints")
    taints = [t for v in taint_values for t in v.split(",") if t]
    if taint is not None:
        taints = [t for t in taints if t.split("=")[0].split(":")[0] != taint.key]
        taints.append(taint.flag_value())
    out = list(rest)
    if merged:
        out.append("--node-labels=" + ",".join(f"{k}={v}" for k, v in sorted(merged.items())))
    if taints:
        out.append("--register-with-taints=" + ",".join(taints))
    for a in out:
        if a not in current.args and not _SAFE_RE.match(a):
            raise InputError(f"refusing to write an unsafe kubelet argument: {a!r}")
    return KubeletArgs(args=tuple(out), owned_labels=frozenset(labels))


def render(text: Optional[str], new: KubeletArgs) -> str:
    """``text`` with the ``KUBELET_EXTRA_ARGS`` line and marker replaced (others kept).

    The assignment is written where the last one was (or appended), quoted as a whole.
    """
    lines = (text or "").splitlines()
    value = " ".join(new.args)
    assignment = f'{VAR}="{value}"'
    marker = f"{MARKER} {','.join(sorted(new.owned_labels))}"
    last = max((i for i, ln in enumerate(lines) if _LINE_RE.match(ln)), default=None)
    out: list[str] = []
    for i, ln in enumerate(lines):
        if ln.startswith(MARKER):
            continue
        if i == last:
            prefix = _LINE_RE.match(ln).group(1)  # type: ignore[union-attr]
            out.append(marker)
            out.append(prefix + assignment)
        else:
            out.append(ln)
    if last is None:
        out += [marker, assignment]
    return "\n".join(out) + "\n"


def find_path(kube: KubeConfig, os_release: Optional[str]) -> str:
    """The extra-args file's host path: ``kube.kubelet_args_file``, else the OS family's
    default (:func:`detect_path` on the contents of /etc/os-release)."""
    return kube.kubelet_args_file or detect_path(os_release)


def detect_path(os_release: Optional[str]) -> str:
    """``/etc/sysconfig/kubelet`` on the RHEL family (incl. Alibaba Cloud Linux), else
    ``/etc/default/kubelet``, from the contents of /etc/os-release."""
    if os_release:
        fields = dict(
            ln.split("=", 1)
            for ln in os_release.splitlines()
            if "=" in ln and not ln.startswith("#")
        )
        ids = " ".join(fields.get(k, "").strip('"').lower() for k in ("ID", "ID_LIKE"))
        if any(
            w in ids.split()
            for w in ("rhel", "centos", "fedora", "alinux", "rocky", "almalinux", "amzn")
        ):
            return RHEL_PATH
    return DEBIAN_PATH


def plan(
    root: HostRoot, host_path: str, labels: Mapping[str, str], taint: Optional[Taint]
) -> FileChange:
    """The change to the extra-args file at ``host_path`` (read only; nothing written)."""
    path = root.path(host_path)
    current = read_text(path, host_path)
    old = current.text if current is not None else None
    new = render(old, merge(parse(old or "", host_path), labels, taint))
    if old is not None and parse(old, host_path) == parse(new, host_path):
        new = old  # same flags and ownership: leave the file's bytes alone
    return FileChange.of(path, host_path, current, new)
