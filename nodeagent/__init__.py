"""nodeagent: bootstrap and report NVIDIA GPU nodes for Kubernetes."""

__version__ = "0.1.0"
