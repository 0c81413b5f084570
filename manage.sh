#!/usr/bin/env bash
# Set-up and the two everyday commands. Idempotent: re-running skips what is done.
#   ./manage.sh run    install what is missing, then serve on embedded defaults
#   ./manage.sh test   install what is missing, then run the whole test suite
set -euo pipefail
cd "$(dirname "$0")"

VENV=${GATEWAY_VENV:-.venv}
# python3-venv: Debian's python3 makes no venv without it.
RUN_PACKAGES="python3 python3-venv libopenjp2-7"
# The tests also drive real clients: dcmtk, dicom3tools (dciodvfy), Info-ZIP unzip, Orthanc (conformance), OHIF in headless
# Chromium (npm fetches OHIF), an OpenID provider (npm's oidc-provider, run by Node: Debian's nodejs),
# and start a PostgreSQL cluster of their own when none answers on 127.0.0.1:5432 (postgresql: the server).
TEST_PACKAGES="dcmtk dicom3tools unzip chromium fonts-liberation orthanc orthanc-dicomweb postgresql"

say() { printf '[manage] %s\n' "$*" >&2; }

install_system_packages() {
  local missing=()
  local wanted="$RUN_PACKAGES"
  [ "${1:-}" = test ] && wanted="$wanted $TEST_PACKAGES"
  # Checked by command, not by package: a Node from elsewhere (NodeSource's nodejs carries npm) will do.
  [ "${1:-}" = test ] && ! command -v node >/dev/null 2>&1 && wanted="$wanted nodejs"
  [ "${1:-}" = test ] && ! command -v npm >/dev/null 2>&1 && wanted="$wanted npm"
  for pkg in $wanted; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; else
      say "missing Debian packages: ${missing[*]}; run as root: apt-get update && apt-get install -y ${missing[*]}"
      exit 1
    fi
  fi
  say "installing Debian packages: ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_python_packages() {
  local python=${PYTHON:-python3}
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    say "Python 3.11 or newer is needed ($python is $("$python" --version 2>&1))"; exit 1
  fi
  [ -x "$VENV/bin/python" ] || "$python" -m venv "$VENV"
  local stamp="$VENV/.installed" want
  want=$(cat setup.cfg pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing Python packages into $VENV"
    local log="$VENV/pip-install.log"
    # constraints.txt pins every version: a new release of a dependency cannot break a fresh set-up.
    if ! { "$VENV/bin/python" -m pip install --disable-pip-version-check -c constraints.txt pip &&
           "$VENV/bin/python" -m pip install --disable-pip-version-check -c constraints.txt -e ".[test,s3,postgres,dynamodb]"; } >"$log" 2>&1; then
      tail -n 40 "$log" >&2; say "pip install failed; full log in $log"; exit 1
    fi
    echo "$want" > "$stamp"
  fi
}

cmd=${1:-}
shift || true
case "$cmd" in
  run)
    install_system_packages
    install_python_packages
    exec "$VENV/bin/gateway" serve "$@"
    ;;
  test)
    install_system_packages test
    install_python_packages
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  setup)
    install_system_packages test
    install_python_packages
    ;;
  *)
    echo "usage: ./manage.sh run [--port N] | test [pytest args] | setup" >&2
    exit 2
    ;;
esac
