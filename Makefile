.PHONY: test demo bench packages image lock repo clean
test:
	scripts/test
demo:
	scripts/demo
bench:
	.venv/bin/python -m bench

# Packages (docs/packaging.md): the .deb and .rpm, every Python library bundled, into $(DIST),
# for every architecture (amd64/x86_64 and arm64/aarch64); ARCH="aarch64" (or "x86_64") builds
# only those.
# LOCKED=1 fails instead of resolving when packaging/lock/ no longer matches pyproject.toml;
# SYSTEMD_DIR / CLOUD_INIT_DIR take the units / cloud-init examples from elsewhere.
DIST ?= dist
WORK ?= build/packaging
PYTHON ?= .venv/bin/python
packages:
	$(PYTHON) packaging/build.py --dist $(DIST) --work $(WORK) $(if $(LOCKED),--locked) \
		$(foreach a,$(ARCH),--arch $(a)) \
		$(if $(SYSTEMD_DIR),--systemd-dir $(SYSTEMD_DIR)) \
		$(if $(CLOUD_INIT_DIR),--cloud-init-dir $(CLOUD_INIT_DIR))
# The controller's container image (docs/install.md): $(DIST)/nodeagent-image-<ver>.tar, an OCI
# layout that is also a docker-archive, assembled with no registry; IMAGE=name:tag names it.
image:
	$(PYTHON) packaging/image.py --dist $(DIST) $(if $(IMAGE),--tag $(IMAGE))
# Re-pin the bundled libraries (packaging/lock/*.txt) after a dependency change, for every
# architecture (the others get x86_64's versions), or ARCH's.
lock:
	$(PYTHON) packaging/build.py lock --work $(WORK) $(foreach a,$(ARCH),--arch $(a))
# Signed APT and YUM repositories from $(DIST)'s packages, into REPO_OUT, to publish as is
# (docs/install.md, "Publishing the repositories"). SIGNING_KEY: the fingerprint of the signing
# key in gpg's keyring ($GNUPGHOME).
REPO_OUT ?= $(DIST)/repo
repo:
	$(PYTHON) packaging/repo.py --dist $(DIST) --out $(REPO_OUT) --key "$(SIGNING_KEY)"
clean:
	rm -rf $(DIST) $(WORK)
