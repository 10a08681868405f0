.PHONY: test demo bench packages lock clean
test:
	scripts/test
demo:
	scripts/demo
bench:
	.venv/bin/python -m bench

# Packages (docs/packaging.md): the .deb and .rpm, every Python library bundled, into $(DIST).
# LOCKED=1 fails instead of resolving when packaging/lock/ no longer matches pyproject.toml;
# SYSTEMD_DIR / CLOUD_INIT_DIR take the units / cloud-init examples from elsewhere.
DIST ?= dist
WORK ?= build/packaging
PYTHON ?= .venv/bin/python
packages:
	$(PYTHON) packaging/build.py --dist $(DIST) --work $(WORK) $(if $(LOCKED),--locked) \
		$(if $(SYSTEMD_DIR),--systemd-dir $(SYSTEMD_DIR)) \
		$(if $(CLOUD_INIT_DIR),--cloud-init-dir $(CLOUD_INIT_DIR))
# Re-pin the bundled libraries (packaging/lock/*.txt) after a dependency change.
lock:
	$(PYTHON) packaging/build.py lock --work $(WORK)
clean:
	rm -rf $(DIST) $(WORK)
