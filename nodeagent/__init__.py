"""nodeagent: bootstrap and report NVIDIA GPU nodes for Kubernetes.

Holds the version and :class:`StrEnum`, the one base of the agent's string-valued enums
(statuses, states, reasons): it imports nothing of the agent, so every layer may use it.
"""

import enum

__version__ = "0.1.0"


class StrEnum(str, enum.Enum):
    """An enum whose members are their string values: compared, serialised and printed
    (``f"{x}"``) as the value on every Python the agent supports (3.9 has no
    ``enum.StrEnum``, and 3.11 changed how a ``str`` mixin formats)."""

    def __str__(self) -> str:
        return str(self.value)
