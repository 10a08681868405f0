"""Exceptions that carry the process exit code, so the CLI maps them without guessing.

Exit codes (documented in docs/cli.md):
  0 ok; 1 a step failed; 2 bad input or configuration; 3 no NVIDIA driver or no GPU.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NO_GPU = 3


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
