"""Stand-ins for host tools the tests cannot install: small programs that behave like the
real ones where the agent looks (tests/standins/nvidia_ctk.py: ``nvidia-ctk cdi generate``)."""
