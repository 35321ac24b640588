#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The GPU checks of the CUDA kernels, in two steps, because the GPU machine has nvcc but none of
# gptqd's build dependencies (GoogleTest, Boost, ...):
#
#   scripts/gpu-check.sh bundle [SM]   # here: build the CUDA tests and the kernel benchmark for one
#                                      # architecture only (default 90: H100/H200) into
#                                      # build/gpu-bundle (binaries + this script)
#   scripts/gpu-check.sh run [DIR]     # on the GPU machine: layout test, CUDA tests, a
#                                      # compute-sanitizer memcheck of the small case, the SASS
#                                      # checks, the benchmark; a short table last
#
# With the device tool: run(command="scripts/gpu-check.sh run", carry=["build/gpu-bundle"]).
# The run step takes about 3-5 minutes on an H100 (most of it the float64 reference on the CPU).
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mode=${1:-}

case "$mode" in
bundle)
  set -e
  sm=${2:-90}
  build=$repo/build/gpu-sm$sm
  out=$repo/build/gpu-bundle
  cmake -S "$repo" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGPTQD_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$sm" -DGPTQD_BENCH=ON >/dev/null
  start=$(date +%s)
  cmake --build "$build" -j "$(nproc)" --target gptq_cuda_test gptq_cuda_layout_test bench_cuda_int4
  echo "built for sm$sm in $(( $(date +%s) - start )) s"
  rm -rf "$out"
  mkdir -p "$out"
  cp "$build/tests/kernels/gptq_cuda_test" "$build/tests/kernels/gptq_cuda_layout_test" \
    "$build/bench/bench_cuda_int4" "$build/kernels/CMakeFiles/gptqd_cuda_kernels.dir/cuda/gptq_cuda.cu.o" "$out/"
  echo "$sm" >"$out/sm"
  du -sh "$out"
  ;;
run)
  dir=${2:-$repo/build/gpu-bundle}
  [[ -x $dir/gptq_cuda_test ]] || { echo "no bundle in $dir: run 'scripts/gpu-check.sh bundle' first" >&2; exit 2; }
  export PATH=$PATH:/usr/local/cuda/bin
  log=${OUT:-/tmp}/gpu-check.log
  declare -A result
  step() {  # step NAME COMMAND...: runs it, records PASS/FAIL
    local name=$1
    shift
    echo "== $name: $*" | tee -a "$log"
    local t0=$(date +%s)
    if "$@" >>"$log" 2>&1; then result[$name]="PASS ($(( $(date +%s) - t0 )) s)"; else result[$name]="FAIL rc=$? ($(( $(date +%s) - t0 )) s)"; fi
    tail -n 25 "$log"
  }
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader | tee -a "$log"
  step layout "$dir/gptq_cuda_layout_test"
  step cuda_tests "$dir/gptq_cuda_test"
  skipped=$(grep -oE '^\[  SKIPPED \] [0-9]+ test' "$log" | grep -oE '[0-9]+' | tail -n 1)
  [[ ${skipped:-0} -gt 0 ]] && result[cuda_tests]="${result[cuda_tests]} but $skipped tests SKIPPED (no usable GPU?)"
  step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 "$dir/gptq_cuda_test" --gtest_filter='*Small*'
  step racecheck compute-sanitizer --tool racecheck --error-exitcode 1 "$dir/gptq_cuda_test" --gtest_filter='*Small*'
  sm=$(cat "$dir/sm")
  sass=${OUT:-/tmp}/sass.txt
  if cuobjdump -sass -arch "sm_$sm" "$dir/gptq_cuda.cu.o" >"$sass" 2>>"$log"; then
    hmma=$(grep -c HMMA "$sass"); ldgsts=$(grep -c LDGSTS "$sass"); local_mem=$(grep -cE '\b(LDL|STL)\b' "$sass")
    result[sass]="HMMA $hmma, LDGSTS $ldgsts, local-memory ops $local_mem"
  else
    result[sass]="cuobjdump failed"
  fi
  step bench "$dir/bench_cuda_int4" --iters 30
  echo
  echo "==== summary"
  for k in layout cuda_tests memcheck racecheck sass bench; do printf '%-11s %s\n' "$k" "${result[$k]:-not run}"; done
  echo "==== benchmark"
  sed -n '/^device:/,$p' "$log" | grep -E '^(device|K x N| *[0-9]+ x)' | tail -n 40
  ;;
*)
  echo "usage: scripts/gpu-check.sh bundle [SM] | run [DIR]" >&2
  exit 2
  ;;
esac
