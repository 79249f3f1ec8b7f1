#!/usr/bin/env bash
# Idempotently install what medfed needs on a fresh Debian machine:
# system tools (dcmtk, orthanc, chromium, postgresql), a virtualenv with the package and
# the pinned OHIF viewer.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
# chromium: the web app's browser tests; npm: fetches the pinned OHIF viewer (below).
for pair in storescu:dcmtk Orthanc:orthanc chromium:chromium npm:npm; do
  cmd=${pair%%:*}; pkg=${pair##*:}
  [ -x "/usr/bin/$cmd" ] || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
done
# Orthanc's DICOMweb plugin: the anchor of bench/dicomweb.py
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=("orthanc-dicomweb")
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "bootstrap: installing system packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  # Debian starts the system Orthanc service; medfed never uses it (tests start their own).
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl stop orthanc 2>/dev/null || true; fi
  $SUDO service orthanc stop >/dev/null 2>&1 || true
fi
# PostgreSQL server programs (initdb, pg_ctl): the tests start a private cluster of their
# own; the system cluster Debian starts on install is not used, so it is stopped.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "bootstrap: installing system package: postgresql"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  $SUDO service postgresql stop >/dev/null 2>&1 || true
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  $PY -m venv .venv
fi
stamp=.venv/.medfed-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing medfed into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/pip install -q -e '.[test]'
  touch "$stamp"
fi

# The OHIF viewer the web app serves: the pinned @ohif/app tarball from the npm registry,
# checked against its sha256, its prebuilt dist/ unpacked to .cache/ (gitignored).
OHIF_VERSION=3.13.2
OHIF_SHA256=b189d3963bfc58e9394a9db8c7be75d07beb029ec211dbb126d47b62969dd3f1
ohif_dir=.cache/ohif/$OHIF_VERSION
if [ ! -f "$ohif_dir/dist/index.html" ]; then
  echo "bootstrap: fetching the OHIF viewer (@ohif/app@$OHIF_VERSION, about 50 MB)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null)
  if ! echo "$OHIF_SHA256  $tmp/ohif-app-$OHIF_VERSION.tgz" | sha256sum -c --quiet -; then
    echo "bootstrap: @ohif/app@$OHIF_VERSION does not have the pinned sha256; not installed" >&2
    exit 1
  fi
  mkdir -p "$tmp/unpacked"
  tar xzf "$tmp/ohif-app-$OHIF_VERSION.tgz" -C "$tmp/unpacked" package/dist
  rm -rf "$ohif_dir"
  mkdir -p "$(dirname "$ohif_dir")"
  mv "$tmp/unpacked/package" "$ohif_dir"
fi
