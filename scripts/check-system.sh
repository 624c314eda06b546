#!/usr/bin/env sh
# Checks (and where it can, installs) what the Python packages need from the
# system: Python >= 3.11 with venv, and libmagic for MIME sniffing.
set -eu
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "fileimport needs Python 3.11 or newer as '$PYTHON' (set PYTHON=...)." >&2
  exit 1
fi
missing=""
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || missing="$missing python3-venv"
if ! ldconfig -p 2>/dev/null | grep -q 'libmagic\.so\.1'; then
  missing="$missing libmagic1"
fi
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages:$missing" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
else
  echo "missing system packages:$missing — install them, e.g.: sudo apt-get install$missing" >&2
  exit 1
fi
