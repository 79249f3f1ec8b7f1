#!/usr/bin/env bash
# Idempotently install what medfed needs on a fresh Debian machine:
# system tools (dcmtk, orthanc) and a virtualenv with the package.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pair in storescu:dcmtk Orthanc:orthanc; do
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
