.PHONY: test demo bench
test:
	scripts/test
demo:
	scripts/demo
bench:
	.venv/bin/python -m bench
