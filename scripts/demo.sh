#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The main job on the built-in default model, from a fresh clone: installs dependencies, builds,
# starts gptqd in user mode (unless one already answers), imports SmolLM2-135M-Instruct, lists it
# and asks it a question. The daemon keeps running afterwards; stop it with:
#   kill $(pgrep -u $USER -x gptqd)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
build=${GPTQD_BUILD_DIR:-build/release}

scripts/install-deps.sh
model=$(scripts/fetch-test-model.sh)
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGPTQD_CUDA=AUTO >/dev/null
cmake --build "$build" -j "$(nproc)" --target gptqd gptqctl

gptqd=$build/daemon/gptqd
gptqctl=$build/ctl/gptqctl
if ! "$gptqctl" status >/dev/null 2>&1; then
  "$gptqd"     # detaches once its socket is listening
fi
"$gptqctl" status
if "$gptqctl" show smollm2-135m-instruct >/dev/null 2>&1; then
  echo "smollm2-135m-instruct is already registered"
else
  "$gptqctl" pull "$model"
fi
"$gptqctl" list
"$gptqctl" show smollm2-135m-instruct
echo '$ gptqctl run smollm2-135m-instruct "What is the capital of France?"'
"$gptqctl" run smollm2-135m-instruct "What is the capital of France?" --temperature 0 --verbose
