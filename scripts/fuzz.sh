#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds the libFuzzer harnesses (fuzz/, clang, ASan+UBSan) in build/fuzz, writes the seed
# corpora and runs each target for a fixed time, one after another. Exit status 0 only when no
# target found a crash, leak, timeout or memory blow-up; otherwise the reproducer paths are printed
# (replay one with: build/fuzz/fuzz/<target> <file>).
#
#   scripts/fuzz.sh                       # every target, 300 s each
#   scripts/fuzz.sh --smoke               # every target, 15 s each (what scripts/test.sh runs)
#   scripts/fuzz.sh --time 60 fuzz_gguf   # some targets, 60 s each
#   scripts/fuzz.sh --build-only
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
build=${GPTQD_FUZZ_BUILD_DIR:-build/fuzz}
jobs=${GPTQD_JOBS:-$(nproc)}
seconds=300
build_only=0
targets=()
while (($#)); do
  case $1 in
    --time) seconds=$2; shift 2 ;;
    --smoke) seconds=15; shift ;;
    --build-only) build_only=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    fuzz_*) targets+=("$1"); shift ;;
    *) echo "fuzz.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
all_targets=(fuzz_safetensors_header fuzz_safetensors_index fuzz_gguf fuzz_ggml_dequant fuzz_model_config
             fuzz_tokenizer_json fuzz_tokenizer_encode fuzz_chat_template fuzz_http_request fuzz_json_body
             fuzz_hub_json fuzz_daemon_config)
((${#targets[@]})) || targets=("${all_targets[@]}")

cc=${GPTQD_FUZZ_CC:-clang-14}
cxx=${GPTQD_FUZZ_CXX:-clang++-14}
command -v "$cxx" >/dev/null || { echo "fuzz.sh: $cxx not found (scripts/install-deps.sh installs clang-14)" >&2; exit 1; }

echo "== fuzz: build ($build)"
start=$SECONDS
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" \
  -DGPTQD_FUZZ=ON -DGPTQD_TESTS=OFF -DGPTQD_BENCH=OFF -DGPTQD_CUDA=OFF -DGPTQD_WERROR=OFF >/dev/null
cmake --build "$build" -j "$jobs" --target gptqd_fuzz
echo "fuzz: build took $((SECONDS - start)) s"
((build_only)) && exit 0

export GPTQD_SHARED_DATA=${GPTQD_SHARED_DATA:-$repo/../shared/data}
if [[ -z ${GPTQD_TEST_MODEL:-} ]]; then
  GPTQD_TEST_MODEL=$(scripts/fetch-test-model.sh 2>/dev/null || true)
  export GPTQD_TEST_MODEL
fi
seeds=$build/seeds
rm -rf "$seeds"
python3 fuzz/make_seeds.py "$seeds" --shared-data "$GPTQD_SHARED_DATA" ${GPTQD_TEST_MODEL:+--test-model "$GPTQD_TEST_MODEL"}

declare -A dict=([fuzz_safetensors_index]=json.dict [fuzz_model_config]=json.dict [fuzz_tokenizer_json]=json.dict
                 [fuzz_json_body]=json.dict [fuzz_http_request]=http.dict [fuzz_hub_json]=json.dict
                 [fuzz_daemon_config]=json.dict)
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0}
failed=()
summary=()
for t in "${targets[@]}"; do
  corpus=$build/corpus/$t
  artifacts=$build/artifacts/$t
  log=$build/logs/$t.log
  mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
  dirs=("$corpus" "$seeds/$t")
  [[ -d fuzz/regressions/$t ]] && dirs+=("fuzz/regressions/$t")
  args=(-rss_limit_mb=2048 -timeout=5 -max_total_time="$seconds" -print_final_stats=1
        -artifact_prefix="$artifacts/")
  [[ -n ${dict[$t]:-} ]] && args+=(-dict="$seeds/dict/${dict[$t]}")
  echo "== fuzz: $t (${seconds} s)"
  rc=0
  nice -n 10 "$build/fuzz/$t" "${args[@]}" "${dirs[@]}" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  units=$(find "$corpus" -type f | wc -l)
  if ((rc != 0)); then
    failed+=("$t")
    summary+=("$t: FAILED (exit $rc) after ${execs:-?} runs; log $log")
    grep -E "^(==[0-9]+==ERROR|SUMMARY|.*runtime error)" "$log" | head -5 || true
    grep -E "Test unit written to|^artifact_prefix" "$log" | sed 's/^/  reproducer: /' || true
    tail -n 30 "$log"
  else
    summary+=("$t: ok, ${execs:-?} runs in ${seconds} s, corpus $units files")
  fi
done
echo "== fuzz summary"
printf '  %s\n' "${summary[@]}"
if ((${#failed[@]})); then
  echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]}" >&2
  exit 1
fi
