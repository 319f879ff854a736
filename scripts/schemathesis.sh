#!/usr/bin/env bash
# Runs schemathesis (the OpenAPI fuzzer, from PyPI) at a pinned version, installing it on
# first use into a virtualenv under target/ (so `make clean` removes it and nothing lands
# outside the checkout). Installs python3-venv with apt if it is missing and we may (root or
# passwordless sudo; BERTH_NO_INSTALL=1 forbids). Arguments go to `schemathesis`.
# Run from a scratch directory: schemathesis writes .hypothesis/ and .schemathesis/ there.
set -euo pipefail

VERSION=4.32.5
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${CARGO_TARGET_DIR:-$ROOT/target}/tools/schemathesis-$VERSION"

die() { printf 'schemathesis.sh: %s\n' "$*" >&2; exit 2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo "$@"
  else return 1; fi
}

# The stamp is written last: an interrupted install is redone, not half-used.
if [ ! -f "$VENV/.installed" ]; then
  command -v python3 >/dev/null 2>&1 || die "python3 is required (apt-get install python3 python3-venv)"
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    { [ -z "${BERTH_NO_INSTALL:-}" ] && command -v apt-get >/dev/null 2>&1 \
      && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; } \
      || die "python3's venv module is missing: apt-get install python3-venv"
  fi
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION" \
    || die "could not install schemathesis==$VERSION from PyPI"
  touch "$VENV/.installed"
fi
exec "$VENV/bin/schemathesis" "$@"
