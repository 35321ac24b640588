// SPDX-License-Identifier: Apache-2.0
// GPTQ INT4/INT8 x fp32 on the CPU through the engine's backend (the kernel the dispatch table
// picks, threads included), next to OpenBLAS sgemm/sgemv on the same weights dequantized to fp32,
// in the same run (bench). Weights are random; several copies rotate so that a matrix that fits
// the L3 cache is not read from it every time. Prints one row per (shape, M): median ms, effective
// GB/s of weight bytes, GFLOP/s, for both. docs/performance.md has the figures.
//
//   bench_int4_gemm [--threads 2] [--bits 4] [--group-size 128] [--act-order] [--runs 9] [--m 1,16,64]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "engine/backend.h"
#include "kernels/cpu/half.h"
#include "kernels/dispatch.h"

namespace {

using namespace gptqd;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// A random GPTQ linear N x K packed for the kernels, and the same weights dense fp32.
struct Pair {
  engine::DenseMatrix packed;
  engine::DenseMatrix dense;
};

Pair make_pair(int64_t K, int64_t N, int bits, int64_t group_size, bool act_order, std::mt19937_64& rng) {
  const int64_t gs = group_size < 0 ? K : group_size, G = (K + gs - 1) / gs;
  const int per = 32 / bits;  // bits 2/4/8 here
  std::uniform_int_distribution<uint32_t> word;
  std::vector<int32_t> qweight(static_cast<size_t>(K / per * N));
  for (auto& w : qweight) w = static_cast<int32_t>(word(rng));
  std::vector<int32_t> qzeros(static_cast<size_t>(G * N / per));
  for (auto& z : qzeros) z = static_cast<int32_t>(word(rng) & 0x77777777u);
  std::uniform_real_distribution<float> sd(0.002f, 0.02f);
  std::vector<uint16_t> scales(static_cast<size_t>(G * N));
  for (auto& s : scales) s = kernels::cpu::f32_to_f16(sd(rng));
  std::vector<int32_t> order(static_cast<size_t>(K)), g_idx(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) order[static_cast<size_t>(k)] = static_cast<int32_t>(k);
  if (act_order) std::shuffle(order.begin(), order.end(), rng);
  for (int64_t p = 0; p < K; ++p) g_idx[static_cast<size_t>(order[static_cast<size_t>(p)])] = static_cast<int32_t>(p / gs);
  const kernels::cpu::GptqTensors t{qweight.data(), qzeros.data(), scales.data(), g_idx.data(), K, N, G, bits, 1};
  Pair p;
  engine::GptqPart part;
  part.desc = kernels::LinearDesc{bits, group_size, act_order, true, K, N};
  if (kernels::cpu::gptq_repack(t, &part.packed) != kernels::KernelStatus::ok) std::abort();
  p.packed.rows = p.dense.rows = N;
  p.packed.cols = p.dense.cols = K;
  p.dense.data.resize(static_cast<size_t>(N * K));
  if (kernels::cpu::gptq_unpack_rows(part.packed, 0, N, p.dense.data.data()) != kernels::KernelStatus::ok) std::abort();
  p.packed.gptq.push_back(std::move(part));
  return p;
}

// Median seconds of one matmul. Each run makes one pass over every copy, back to back as the
// matmuls of a forward pass follow each other (the pool's threads stay awake).
double time_matmul(engine::Backend& b, const std::vector<const engine::DenseMatrix*>& ws, const std::vector<float>& x,
                   int64_t M, int runs) {
  std::vector<float> y(static_cast<size_t>(M * ws[0]->rows));
  for (const auto* w : ws) b.matmul(*w, x.data(), M, y.data());  // warm-up
  std::vector<double> t;
  for (int r = 0; r < runs; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (const auto* w : ws) b.matmul(*w, x.data(), M, y.data());
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() /
                static_cast<double>(ws.size()));
  }
  return median(t);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_int4_gemm: GPTQ kernels vs fp32 BLAS on the same weights"};
  int threads = 2, bits = 4, runs = 9;
  int64_t group_size = 128;
  bool act_order = false;
  std::vector<int64_t> ms{1, 16, 64};
  app.add_option("--threads", threads)->capture_default_str();
  app.add_option("--bits", bits, "2, 4 or 8")->capture_default_str()->check(CLI::IsMember({2, 4, 8}));
  app.add_option("--group-size", group_size)->capture_default_str();
  app.add_flag("--act-order", act_order);
  app.add_option("--runs", runs)->capture_default_str();
  app.add_option("--m", ms, "Input rows")->delimiter(',')->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  auto backend = engine::make_backend("cpu", threads);
  const kernels::DeviceDesc& cpu = kernels::host_cpu_device();
  std::printf("CPU: %s, %d threads; %d-bit, group size %lld%s; median of %d runs\n", cpu.name.c_str(), threads, bits,
              static_cast<long long>(group_size), act_order ? ", act-order" : "", runs);
  std::printf("%-12s %4s  %-18s %9s %8s %9s   %9s %8s %9s  %7s\n", "K x N", "M", "kernel", "int ms", "GB/s", "GFLOP/s",
              "fp32 ms", "GB/s", "GFLOP/s", "speedup");
  const std::pair<int64_t, int64_t> shapes[] = {{4096, 4096}, {4096, 12288}, {4096, 22016},
                                                {11008, 4096}, {576, 1536},   {1536, 576}};
  std::mt19937_64 rng(42);
  for (auto [K, N] : shapes) {
    // Enough copies that the packed weights of one pass exceed the 32 MiB L3 of the test machine.
    const double packed_mb = static_cast<double>(K) * static_cast<double>(N) * bits / 8 / 1e6;
    const int copies = std::clamp(static_cast<int>(96 / packed_mb) + 1, 1, 16);
    std::vector<Pair> pairs;
    for (int c = 0; c < copies; ++c) pairs.push_back(make_pair(K, N, bits, group_size, act_order, rng));
    std::vector<const engine::DenseMatrix*> packed, dense;
    for (const auto& p : pairs) {
      packed.push_back(&p.packed);
      dense.push_back(&p.dense);
    }
    for (int64_t M : ms) {
      std::normal_distribution<float> nd;
      std::vector<float> x(static_cast<size_t>(M * K));
      for (auto& v : x) v = nd(rng);
      const double ti = time_matmul(*backend, packed, x, M, runs);
      const double tf = time_matmul(*backend, dense, x, M, runs);
      const double flops = 2.0 * static_cast<double>(M) * static_cast<double>(K) * static_cast<double>(N);
      const double qbytes = static_cast<double>(pairs[0].packed.size_bytes());
      const double fbytes = static_cast<double>(pairs[0].dense.size_bytes());
      const auto kernel = kernels::pick_kernel(cpu, pairs[0].packed.gptq[0].desc, M);
      std::printf("%5lldx%-6lld %4lld  %-18s %9.3f %8.1f %9.1f   %9.3f %8.1f %9.1f  %6.2fx\n", static_cast<long long>(K),
                  static_cast<long long>(N), static_cast<long long>(M), kernels::kernel_name(kernel), ti * 1e3,
                  qbytes / ti / 1e9, flops / ti / 1e9, tf * 1e3, fbytes / tf / 1e9, flops / tf / 1e9, tf / ti);
      std::fflush(stdout);
    }
  }
  return 0;
}
