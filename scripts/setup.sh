# Shared set-up for scripts/test and scripts/demo (sourced, not run).
# Installs the Debian packages the real-component tests drive (when root and missing) and
# a virtualenv in .venv with the project and its test dependencies.
set -euo pipefail

NODEAGENT_APT_PACKAGES=(gcc libc6-dev docker.io containerd busybox-static cloud-init make binutils python3 lintian rpm rpmlint shellcheck debootstrap systemd-container prometheus dpkg-dev iproute2 openssl apt-utils createrepo-c gpg qemu-user-static gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu libc6-dev-arm64-cross)

install_apt_packages() {
  local missing=()
  for pkg in "${NODEAGENT_APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "setup: not root or no apt-get; missing packages: ${missing[*]} (their tests will skip)" >&2
    return 0
  fi
  echo "setup: apt-get install ${missing[*]}" >&2
  apt-get update -qq
  # docker.io's postinst would start dockerd through systemd if it could; tests start their own.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_venv() {
  local py=${PYTHON:-python3}
  if [ ! -x .venv/bin/python ]; then
    "$py" -m venv .venv
  fi
  # Re-install only when pyproject.toml changed since the last install.
  local stamp=.venv/.nodeagent-installed
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
    touch "$stamp"
  fi
}

# The tests' caches under /var/cache (root only; a laptop's tests skip without them):
# newer and older runtimes unpacked from other Debian suites (tests/debcache.py), and
# Kubernetes 1.20.2 built from Debian's source (tests/cluster/build.py: ~7 min cold, once).
# Warmed here, before pytest, because a test's fixture would wait on a cold build longer
# than the per-test timeout.
warm_caches() {
  [ "$(id -u)" = 0 ] || return 0
  .venv/bin/python -m tests.debcache bookworm docker.io containerd etcd-server gpg gpgconf libassuan0 \
    docker-registry skopeo libgpgme11 >/dev/null
  .venv/bin/python -m tests.debcache trixie docker.io docker-cli containerd >/dev/null
  .venv/bin/python -m tests.debcache sid docker.io docker-cli containerd >/dev/null
  .venv/bin/python -m tests.cluster.build
}
