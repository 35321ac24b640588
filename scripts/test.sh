#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The whole test suite from a fresh clone: installs dependencies, fetches the test model, builds
# (CUDA code too when nvcc exists) and runs every test. Then the same tests under ASan+UBSan
# unless GPTQD_SKIP_SANITIZERS=1. Between the two, a short run of every fuzzer (scripts/fuzz.sh
# --smoke) unless GPTQD_SKIP_FUZZ=1. Exit status 0 only when everything passed.
#
#   scripts/test.sh                 # what CI runs (.ci/run)
#   GPTQD_BUILD_DIR=build/x scripts/test.sh -R gguf    # extra args go to ctest
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
build=${GPTQD_BUILD_DIR:-build/release}
asan_build=${GPTQD_ASAN_BUILD_DIR:-build/asan}
jobs=${GPTQD_JOBS:-$(nproc)}

echo "== dependencies"
scripts/install-deps.sh
echo "== test model"
export GPTQD_TEST_MODEL=$(scripts/fetch-test-model.sh)
export GPTQD_PYTHON=$repo/.venv/bin/python

echo "== build ($build)"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGPTQD_CUDA=AUTO -DGPTQD_PYTHON="$GPTQD_PYTHON" >/dev/null
cmake --build "$build" -j "$jobs"

echo "== tests"
ctest --test-dir "$build" --output-on-failure -j "$jobs" --timeout 900 "$@"

if [[ ${GPTQD_SKIP_FUZZ:-0} != 1 ]]; then
  echo "== fuzz smoke (libFuzzer harnesses, 15 s each)"
  scripts/fuzz.sh --smoke
fi

if [[ ${GPTQD_SKIP_SANITIZERS:-0} != 1 ]]; then
  echo "== build with ASan+UBSan ($asan_build)"
  cmake -S . -B "$asan_build" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DGPTQD_CUDA=OFF -DGPTQD_SANITIZE=ON \
    -DGPTQD_BENCH=OFF -DGPTQD_PYTHON="$GPTQD_PYTHON" >/dev/null
  cmake --build "$asan_build" -j "$jobs"
  echo "== tests under ASan+UBSan"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir "$asan_build" --output-on-failure -j "$jobs" --timeout 1800 -LE reference "$@"
fi
echo "== all tests passed"
