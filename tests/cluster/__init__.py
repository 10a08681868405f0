"""A real Kubernetes control plane for tests: binaries (build.py), processes (controlplane.py)."""
