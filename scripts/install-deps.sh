#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs every Debian package gptqd needs to build and test, and the Python venv used only by
# tests and benchmarks. Idempotent: a second run only checks. Run as root or through sudo.
#
#   scripts/install-deps.sh            # packages + venv (.venv at the repo root)
#   GPTQD_VENV=/path scripts/install-deps.sh
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${GPTQD_VENV:-$repo/.venv}

packages=(
  build-essential cmake ninja-build ccache pkg-config git
  libboost-dev                      # Asio + Beast (header-only in 1.74)
  nlohmann-json3-dev libsqlite3-dev sqlite3 libsystemd-dev libssl-dev
  libsentencepiece-dev libcurl4-openssl-dev libpcre2-dev libicu-dev
  libeigen3-dev libopenblas-dev liblapacke-dev libcli11-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  curl socat python3 python3-venv python3-pip
  dbus-daemon dbus-bin systemd      # the D-Bus tests: a private dbus-daemon, dbus-send, busctl; systemd-analyze
  passwd util-linux                 # useradd for the authorization tests; setpriv, unshare
  fiu-utils                         # fiu-run/fiu-ctrl: fsync/write faults in tests/e2e/fault_test.cpp
  clang-14 libclang-rt-14-dev       # libFuzzer + ASan/UBSan runtimes for scripts/fuzz.sh
)

sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install-deps: run as root or install sudo" >&2; exit 1; }
  sudo_cmd=(sudo)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-deps: Debian packages present"
fi

# Python is for tests and reference checks only (no torch).
py_packages=(numpy==2.2.6 gguf==0.19.0 tokenizers==0.22.1 sentencepiece==0.2.1 safetensors==0.6.2 jinja2==3.1.6 httpx==0.28.1 openai==3.57.0)
if [[ ! -x $venv/bin/python ]]; then
  echo "install-deps: creating venv $venv"
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" - "${py_packages[@]}" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    if version(name) != want:
        sys.exit(1)
PY
then
  echo "install-deps: installing Python test packages into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${py_packages[@]}"
else
  echo "install-deps: Python test packages present"
fi
