"""End-to-end boot tests: a debootstrapped Debian booted with systemd as PID 1 (nspawn)."""
