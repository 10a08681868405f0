"""Exceptions that carry the process exit code, so the CLI maps them without guessing.

Exit codes (the table is in docs/operations.md):
  0 ok; 1 a step failed; 2 bad input or configuration; 3 no NVIDIA driver or no GPU;
  70 an internal error (a bug: any exception that is not a :class:`NodeagentError`);
  130 interrupted (SIGINT).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NO_GPU = 3
EXIT_SOFTWARE = 70  # sysexits.h EX_SOFTWARE
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


class NodeagentError(Exception):
    """Base error: its message is one line fit to print as is."""

    exit_code = EXIT_FAILED


class InputError(NodeagentError):
    """Bad input: a malformed file, an invalid config value, a conflicting flag.

    The message names the file (``PATH:LINE[:COL]: what is wrong``) when there is one.
    """

    exit_code = EXIT_BAD_INPUT


class StepFailed(NodeagentError):
    """A step that was allowed to run did not succeed (docker did not come back, ...)."""

    exit_code = EXIT_FAILED


MAX_MESSAGE = 500  # characters: a line a person reads, whatever a library put into it


def one_line(text: str) -> str:
    """``text`` with its line breaks folded into spaces and cut to :data:`MAX_MESSAGE`:
    every message the agent prints is one readable line, whatever a library put into an
    exception (a 5,000-character path included)."""
    return shorten(" ".join(p.strip() for p in text.splitlines() if p.strip()), MAX_MESSAGE)


def shorten(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis: a path or value quoted inside
    a message (a 5,000-character import entry) without drowning the message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(e: BaseException) -> str:
    """One line for any exception: a :class:`NodeagentError`'s own message, anything else
    as ``internal error: Type: message`` (it is a bug, and the type says where to look)."""
    if isinstance(e, NodeagentError):
        return one_line(str(e)) or type(e).__name__
    text = one_line(str(e))
    return f"internal error: {type(e).__name__}" + (f": {text}" if text else "")


def exit_code_of(e: BaseException) -> int:
    """The exit code a failed step or probe carries: its own, else 1 (failed)."""
    return e.exit_code if isinstance(e, NodeagentError) else EXIT_FAILED
