"""The simulated GPU: a fake libnvidia-ml.so.1 driven by JSON profiles (see README.md)."""
