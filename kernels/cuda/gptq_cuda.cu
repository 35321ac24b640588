// SPDX-License-Identifier: Apache-2.0
// The CUDA GPTQ kernels (kernels layer). See gptq_cuda.h for the contract and
// gptq_cuda_layout.h for the weight layouts; gptq-reference.md Part D for the design they follow.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>

#include "kernels/cuda/gptq_cuda.h"
#include "kernels/cuda/gptq_cuda_layout.h"

namespace gptqd::kernels::cuda {
namespace {

// ================================ device helpers ===================================================

// The tensor-core kernel's body exists for sm80 and newer only (cp.async, m16n8k16); on sm75 the
// dispatch table never launches it.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define GPTQD_TC_ARCH 1
#endif

#ifdef GPTQD_TC_ARCH
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ __half2 as_h2(uint32_t u) {
  union {
    uint32_t u;
    __half2 h;
  } v{u};
  return v.h;
}

__device__ __forceinline__ uint32_t as_u32(__half2 h) {
  union {
    __half2 h;
    uint32_t u;
  } v{h};
  return v.u;
}

// 16 bytes global -> shared, bypassing L1; src_bytes 0 writes zeros without reading.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}

// The same with an L2 cache policy (weights are read once: evict them first).
__device__ __forceinline__ void cp_async16_hint(uint32_t dst, const void* src, uint64_t policy) {
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "l"(policy));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c += a . b for one m16n8k16 tile, fp16 inputs, fp32 accumulators.
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <int Lut>
__device__ __forceinline__ uint32_t lop3(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t r;
  asm volatile("lop3.b32 %0, %1, %2, %3, %4;\n" : "=r"(r) : "r"(a), "r"(b), "r"(c), "n"(Lut));
  return r;
}

// One tc-layout word -> the four operand registers of its 16x16 tile, as fp16 (q - 8)
// (gptq-reference.md D.6): (q & mask) | 0x6400 is 1024 + v (or 1024 + 16v), one sub or fma
// removes the 1024 and the zero point 8; no int->float conversion.
__device__ __forceinline__ void dequant_tc_word(uint32_t q, uint32_t (&f)[4]) {
  constexpr uint32_t kLo = 0x000f000fu, kHi = 0x00f000f0u, kExp = 0x64006400u;
  constexpr int kAndOr = (0xf0 & 0xcc) | 0xaa;  // (a & b) | c
  const uint32_t lo0 = lop3<kAndOr>(q, kLo, kExp), hi0 = lop3<kAndOr>(q, kHi, kExp);
  q >>= 8;
  const uint32_t lo1 = lop3<kAndOr>(q, kLo, kExp), hi1 = lop3<kAndOr>(q, kHi, kExp);
  const __half2 sub = as_h2(0x64086408u);  // 1032: 1024 + the zero point
  const __half2 mul = as_h2(0x2c002c00u);  // 1/16
  const __half2 add = as_h2(0xd480d480u);  // -72: -(1024/16 + 8)
  f[0] = as_u32(__hsub2(as_h2(lo0), sub));
  f[1] = as_u32(__hfma2(as_h2(hi0), mul, add));
  f[2] = as_u32(__hsub2(as_h2(lo1), sub));
  f[3] = as_u32(__hfma2(as_h2(hi1), mul, add));
}
#endif  // GPTQD_TC_ARCH

// ================================ tensor-core kernel ===============================================

constexpr int kTcThreads = 128;  // 4 warps; each takes 2 of a stage's 8 k16 tiles, all 64 columns
constexpr int kTcStages = 4;

template <int MB>
struct TcSmem {
  static constexpr int kRows = 16 * MB;
  static constexpr int kABytes = kRows * layout::kTcStageK * 2;
  static constexpr int kBBytes = (layout::kTcStageK / 16) * layout::kTcWordsPerSlab * 4;
  static constexpr int kSBytes = 4 * layout::kTcSlabN * 2;  // up to 4 group rows (group size 32)
  static constexpr int kStageBytes = kABytes + kBBytes + kSBytes;
  static constexpr int kPipeBytes = kStageBytes * kTcStages;
  static constexpr int kRedBytes = 4 * kRows * layout::kTcSlabN * 4;
  static constexpr int kBytes = kPipeBytes > kRedBytes ? kPipeBytes : kRedBytes;
};

// grid (N/64, row blocks, splits). Block (x, y, z) computes rows [16*MB*y, +16*MB) and columns
// [64x, +64) over k chunks [z*chunks_per_split, ...) and writes fp16 to C, or fp32 to partial
// [splits][M][N] when split.
template <int MB>
__global__ void __launch_bounds__(kTcThreads) tc_gemm_kernel(const __half* __restrict__ A, const uint4* __restrict__ B,
                                                             const __half* __restrict__ S, float* __restrict__ partial,
                                                             __half* __restrict__ C, int M, int K, int N, int group_size,
                                                             int chunks_per_split) {
#ifdef GPTQD_TC_ARCH
  using L = TcSmem<MB>;
  extern __shared__ __align__(16) unsigned char smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int slab = blockIdx.x, slabs = N / layout::kTcSlabN;
  const int m0 = blockIdx.y * L::kRows;
  const int n_chunks = K / layout::kTcStageK;
  const int c_begin = blockIdx.z * chunks_per_split;
  const int n_iter = min(n_chunks, c_begin + chunks_per_split) - c_begin;
  const int scale_rows = group_size >= layout::kTcStageK ? 1 : layout::kTcStageK / group_size;
  const uint64_t policy = evict_first_policy();

  auto load_stage = [&](int s, int chunk) {
    unsigned char* base = smem + s * L::kStageBytes;
    const int k0 = chunk * layout::kTcStageK;
#pragma unroll
    for (int i = 0; i < L::kRows * layout::kTcChunksPerRow / kTcThreads; ++i) {
      const int idx = threadIdx.x + i * kTcThreads;
      const int row = idx / layout::kTcChunksPerRow, ch = idx % layout::kTcChunksPerRow;
      const int m = m0 + row;
      const __half* src = A + static_cast<size_t>(m < M ? m : 0) * K + k0 + ch * 8;
      cp_async16(smem_addr(base + row * layout::kTcStageK * 2 + layout::tc_a_chunk(row, ch) * 16), src, m < M ? 16 : 0);
    }
#pragma unroll
    for (int i = 0; i < L::kBBytes / 16 / kTcThreads; ++i) {
      const int idx = threadIdx.x + i * kTcThreads;  // (k16 tile, lane)
      const int kb = idx / 32, l = idx % 32;
      const uint4* src = B + (static_cast<size_t>(k0 / 16 + kb) * slabs + slab) * 32 + l;
      cp_async16_hint(smem_addr(base + L::kABytes + idx * 16), src, policy);
    }
    if (threadIdx.x < scale_rows * 8) {
      const int r = threadIdx.x / 8, ch = threadIdx.x % 8;
      const int g = k0 / group_size + r;
      const __half* src = S + static_cast<size_t>(g) * N + slab * layout::kTcSlabN + ch * 8;
      cp_async16(smem_addr(base + L::kABytes + L::kBBytes + r * layout::kTcSlabN * 2 + ch * 16), src, 16);
    }
  };

  float acc[MB][8][4];
#pragma unroll
  for (int mi = 0; mi < MB; ++mi) {
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mi][nt][r] = 0.0f;
    }
  }

  auto compute_stage = [&](int s) {
    const unsigned char* base = smem + s * L::kStageBytes;
    const __half* scales = reinterpret_cast<const __half*>(base + L::kABytes + L::kBBytes);
    const int g = lane / 4;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int kb = warp + 4 * h;
      const uint4 bq = *reinterpret_cast<const uint4*>(base + L::kABytes + (kb * 32 + lane) * 16);
      const int srow = group_size >= layout::kTcStageK ? 0 : kb * 16 / group_size;
      const __half* sc = scales + srow * layout::kTcSlabN;
      uint32_t a[MB][4];
#pragma unroll
      for (int mi = 0; mi < MB; ++mi) {
        const int row = mi * 16 + lane % 16, ch = kb * 2 + lane / 16;
        ldmatrix_x4(a[mi], smem_addr(base + row * layout::kTcStageK * 2 + layout::tc_a_chunk(row, ch) * 16));
      }
      const uint32_t words[4] = {bq.x, bq.y, bq.z, bq.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t f[4];
        dequant_tc_word(words[j], f);
        const __half2 s0 = __half2half2(sc[j * 16 + g]), s1 = __half2half2(sc[j * 16 + 8 + g]);
        f[0] = as_u32(__hmul2(as_h2(f[0]), s0));
        f[1] = as_u32(__hmul2(as_h2(f[1]), s0));
        f[2] = as_u32(__hmul2(as_h2(f[2]), s1));
        f[3] = as_u32(__hmul2(as_h2(f[3]), s1));
#pragma unroll
        for (int mi = 0; mi < MB; ++mi) {
          mma_16816(acc[mi][2 * j], a[mi], f[0], f[1]);
          mma_16816(acc[mi][2 * j + 1], a[mi], f[2], f[3]);
        }
      }
    }
  };

#pragma unroll
  for (int s = 0; s < kTcStages - 1; ++s) {
    if (s < n_iter) load_stage(s, c_begin + s);
    cp_async_commit();
  }
  for (int it = 0; it < n_iter; ++it) {
    cp_async_wait<kTcStages - 2>();
    __syncthreads();  // stage `it` landed for every thread; stage `it - 1` is free again
    const int next = it + kTcStages - 1;
    if (next < n_iter) load_stage(next % kTcStages, c_begin + next);
    cp_async_commit();
    compute_stage(it % kTcStages);
  }
  cp_async_wait<0>();
  __syncthreads();

  // The 4 warps hold partial sums of the same tile over different k: add them in a fixed order.
  float* red = reinterpret_cast<float*>(smem);
  {
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int mi = 0; mi < MB; ++mi) {
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int row = mi * 16 + g + (r >= 2 ? 8 : 0), col = nt * 8 + 2 * t + (r & 1);
          red[(warp * L::kRows + row) * layout::kTcSlabN + col] = acc[mi][nt][r];
        }
      }
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < L::kRows * layout::kTcSlabN; i += kTcThreads) {
    const int row = i / layout::kTcSlabN, col = i % layout::kTcSlabN;
    const int m = m0 + row;
    if (m >= M) continue;
    float v = red[i];
#pragma unroll
    for (int w = 1; w < 4; ++w) v += red[w * L::kRows * layout::kTcSlabN + i];
    const size_t n = static_cast<size_t>(slab) * layout::kTcSlabN + col;
    if (partial) partial[(static_cast<size_t>(blockIdx.z) * M + m) * N + n] = v;
    else C[static_cast<size_t>(m) * N + n] = __float2half_rn(v);
  }
#endif  // GPTQD_TC_ARCH
}

// ================================ GEMV kernel ======================================================

constexpr int kGemvCols = 128;  // per block: 32 threads x 4 columns
constexpr int kGemvWarps = 8;   // split the block's k range

template <int BITS>
__device__ __forceinline__ uint32_t unit_code(const uint32_t (&w)[BITS], int j) {
  const int bit = BITS * j, word = bit / 32, off = bit % 32;
  uint32_t v = w[word] >> off;
  if (off + BITS > 32) v |= w[word + 1] << (32 - off);
  return v & ((1u << BITS) - 1u);
}

__device__ __forceinline__ uint32_t component(const uint4& v, int c) {
  return c == 0 ? v.x : c == 1 ? v.y : c == 2 ? v.z : v.w;
}

// grid (ceil(N/128), splits), block (32, 8). Thread (x, y) owns columns n..n+3 (n = 128 bx + 4x)
// and every 8th unit of the split's k range starting at y; x rows come from shared memory as
// fp32, read through perm.
template <int BITS, int MT>
__global__ void __launch_bounds__(kGemvCols / 4 * kGemvWarps, 1) gemv_kernel(
    const __half* __restrict__ x, const int32_t* __restrict__ perm, const uint32_t* __restrict__ qweight,
    const __half* __restrict__ scales, const __half* __restrict__ zeros, const int32_t* __restrict__ unit_group,
    float* __restrict__ partial, __half* __restrict__ y, int M, int K, int N, int units_per_split) {
  extern __shared__ __align__(16) float xs[];  // [MT][units_per_split * 32], then the reduction
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  const int units = K / layout::kGemvUnitK;
  const int u_begin = blockIdx.y * units_per_split;
  const int u_end = min(units, u_begin + units_per_split);
  const int kstride = units_per_split * layout::kGemvUnitK;
  const int k0 = u_begin * layout::kGemvUnitK, klen = (u_end - u_begin) * layout::kGemvUnitK;
  for (int i = tid; i < MT * klen; i += blockDim.x * blockDim.y) {
    const int m = i / klen, kk = i % klen, k = k0 + kk;
    xs[m * kstride + kk] = m < M ? __half2float(x[static_cast<size_t>(m) * K + (perm ? perm[k] : k)]) : 0.0f;
  }
  __syncthreads();

  const int n = blockIdx.x * kGemvCols + threadIdx.x * 4;
  float acc[MT][4];
#pragma unroll
  for (int m = 0; m < MT; ++m) {
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[m][c] = 0.0f;
  }
  if (n < N) {
    for (int u = u_begin + threadIdx.y; u < u_end; u += kGemvWarps) {
      uint4 w[BITS];
#pragma unroll
      for (int b = 0; b < BITS; ++b) {
        w[b] = __ldg(reinterpret_cast<const uint4*>(qweight + (static_cast<size_t>(u) * BITS + b) * N + n));
      }
      const size_t gbase = static_cast<size_t>(unit_group[u]) * N + n;
      const float* xu = xs + (u - u_begin) * layout::kGemvUnitK;
      float zb[4], sc[4];
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        zb[c] = 8388608.0f + __half2float(zeros[gbase + c]);
        sc[c] = __half2float(scales[gbase + c]);
      }
      // Eight k at a time: dequantize 8 x 4 weights ((q - z) exactly as 2^23 + q read as a float
      // minus 2^23 + z, then times the scale), then every row's 32 FMAs with them.
#pragma unroll
      for (int j0 = 0; j0 < layout::kGemvUnitK; j0 += 8) {
        float wq[4][8];
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          uint32_t cw[BITS];
#pragma unroll
          for (int b = 0; b < BITS; ++b) cw[b] = component(w[b], c);
#pragma unroll
          for (int j = 0; j < 8; ++j) wq[c][j] = (__uint_as_float(0x4b000000u | unit_code<BITS>(cw, j0 + j)) - zb[c]) * sc[c];
        }
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          const float4 xa = *reinterpret_cast<const float4*>(xu + m * kstride + j0);
          const float4 xb = *reinterpret_cast<const float4*>(xu + m * kstride + j0 + 4);
          const float xv[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
#pragma unroll
          for (int c = 0; c < 4; ++c) {
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[m][c] = fmaf(xv[j], wq[c][j], acc[m][c]);
          }
        }
      }
    }
  }
  __syncthreads();  // xs is reused for the reduction below

  // Add the 8 warps' partial sums in a fixed order (deterministic).
  float* red = xs;  // [MT][128]
  for (int w = 0; w < kGemvWarps; ++w) {
    if (threadIdx.y == w) {
#pragma unroll
      for (int m = 0; m < MT; ++m) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int i = m * kGemvCols + threadIdx.x * 4 + c;
          red[i] = (w == 0 ? 0.0f : red[i]) + acc[m][c];
        }
      }
    }
    __syncthreads();
  }
  if (threadIdx.y == 0 && n < N) {
    for (int m = 0; m < M && m < MT; ++m) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const float v = red[m * kGemvCols + threadIdx.x * 4 + c];
        if (partial) partial[(static_cast<size_t>(blockIdx.y) * M + m) * N + n + c] = v;
        else y[static_cast<size_t>(m) * N + n + c] = __float2half_rn(v);
      }
    }
  }
}

// ================================ small kernels ====================================================

// y = the ordered sum over splits of partial [splits][M*N], as fp16.
__global__ void reduce_partials_kernel(const float* __restrict__ partial, int64_t splits, int64_t mn,
                                       __half* __restrict__ y) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= mn) return;
  float v = 0.0f;
  for (int64_t z = 0; z < splits; ++z) v += partial[z * mn + i];
  y[i] = __float2half_rn(v);
}

// xp[m][k] = x[m][perm[k]].
__global__ void permute_cols_kernel(const __half* __restrict__ x, const int32_t* __restrict__ perm, int64_t M,
                                    int64_t K, __half* __restrict__ xp) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M * K) return;
  const int64_t m = i / K, k = i % K;
  xp[i] = x[m * K + perm[k]];
}

// W [K][N] fp16 (sorted k order) from the GEMV layout: thread = one unit x 4 columns.
template <int BITS>
__global__ void dequant_kernel(const uint32_t* __restrict__ qweight, const __half* __restrict__ scales,
                               const __half* __restrict__ zeros, const int32_t* __restrict__ unit_group, int K, int N,
                               __half* __restrict__ out) {
  const int64_t quads = N / 4;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= quads * (K / layout::kGemvUnitK)) return;
  const int64_t u = i / quads, n = (i % quads) * 4;
  uint4 w[BITS];
#pragma unroll
  for (int b = 0; b < BITS; ++b) w[b] = __ldg(reinterpret_cast<const uint4*>(qweight + (u * BITS + b) * N + n));
  const size_t gbase = static_cast<size_t>(unit_group[u]) * N + n;
  float s[4], z[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    s[c] = __half2float(scales[gbase + c]);
    z[c] = 8388608.0f + __half2float(zeros[gbase + c]);
  }
#pragma unroll
  for (int j = 0; j < layout::kGemvUnitK; ++j) {
    __half v[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      uint32_t cw[BITS];
#pragma unroll
      for (int b = 0; b < BITS; ++b) cw[b] = component(w[b], c);
      v[c] = __float2half_rn(s[c] * (__uint_as_float(0x4b000000u | unit_code<BITS>(cw, j)) - z[c]));
    }
    __half2* dst = reinterpret_cast<__half2*>(out + (u * layout::kGemvUnitK + j) * N + n);
    dst[0] = __halves2half2(v[0], v[1]);
    dst[1] = __halves2half2(v[2], v[3]);
  }
}

// ================================ host side ========================================================

KernelStatus launched() { return cudaGetLastError() == cudaSuccess ? KernelStatus::ok : KernelStatus::device_error; }

int blocks_for(int64_t n, int threads) { return static_cast<int>((n + threads - 1) / threads); }

template <typename T>
KernelStatus copy_up(const std::vector<T>& host, const T** dev) {
  *dev = nullptr;
  if (host.empty()) return KernelStatus::ok;
  void* p = nullptr;
  if (cudaMalloc(&p, host.size() * sizeof(T)) != cudaSuccess) return KernelStatus::device_error;
  if (cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice) != cudaSuccess) {
    cudaFree(p);
    return KernelStatus::device_error;
  }
  *dev = static_cast<const T*>(p);
  return KernelStatus::ok;
}

template <typename T>
void free_dev(const T*& p) {
  if (p) cudaFree(const_cast<T*>(p));
  p = nullptr;
}

template <int MB>
KernelStatus launch_tc(const TcPlan& p, const __half* x, const DeviceTcLinear& w, float* partial, __half* y, int64_t M,
                       cudaStream_t stream) {
  using L = TcSmem<MB>;
  // Above 48 KiB of dynamic shared memory a kernel must opt in, once per device: not on every
  // call, which runs per linear per token.
  static std::atomic<uint64_t> opted_in{0};  // bit d: done on device d (ordinals >= 64: every call)
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return KernelStatus::device_error;
  const uint64_t bit = dev >= 0 && dev < 64 ? uint64_t{1} << dev : 0;
  if (bit == 0 || !(opted_in.load(std::memory_order_acquire) & bit)) {
    if (cudaFuncSetAttribute(tc_gemm_kernel<MB>, cudaFuncAttributeMaxDynamicSharedMemorySize, L::kBytes) != cudaSuccess) {
      return KernelStatus::device_error;
    }
    opted_in.fetch_or(bit, std::memory_order_release);
  }
  const dim3 grid(static_cast<unsigned>(p.slabs), static_cast<unsigned>(p.row_blocks), static_cast<unsigned>(p.splits));
  tc_gemm_kernel<MB><<<grid, kTcThreads, L::kBytes, stream>>>(
      x, reinterpret_cast<const uint4*>(w.words), reinterpret_cast<const __half*>(w.scales), partial, y,
      static_cast<int>(M), static_cast<int>(w.K), static_cast<int>(w.N), static_cast<int>(w.group_size),
      static_cast<int>(p.chunks_per_split));
  return launched();
}

template <int BITS, int MT>
KernelStatus launch_gemv(const GemvPlan& p, const DeviceGemvLinear& w, const __half* x, float* partial, __half* y,
                         int64_t M, cudaStream_t stream) {
  const size_t xs_floats = static_cast<size_t>(MT) * p.units_per_split * layout::kGemvUnitK;
  const size_t smem = std::max<size_t>(xs_floats, static_cast<size_t>(MT) * kGemvCols) * sizeof(float);
  const dim3 grid(static_cast<unsigned>(p.col_blocks), static_cast<unsigned>(p.splits));
  const dim3 block(kGemvCols / 4, kGemvWarps);
  gemv_kernel<BITS, MT><<<grid, block, smem, stream>>>(
      x, w.perm, w.qweight, reinterpret_cast<const __half*>(w.scales), reinterpret_cast<const __half*>(w.zeros),
      w.unit_group, partial, y, static_cast<int>(M), static_cast<int>(w.K), static_cast<int>(w.N),
      static_cast<int>(p.units_per_split));
  return launched();
}

template <int BITS>
KernelStatus launch_gemv_bits(const GemvPlan& p, const DeviceGemvLinear& w, const __half* x, float* partial,
                              __half* y, int64_t M, cudaStream_t stream) {
  switch (p.m_tile) {
    case 1: return launch_gemv<BITS, 1>(p, w, x, partial, y, M, stream);
    case 4: return launch_gemv<BITS, 4>(p, w, x, partial, y, M, stream);
    default: return launch_gemv<BITS, 16>(p, w, x, partial, y, M, stream);
  }
}

template <int BITS>
KernelStatus launch_dequant(const DeviceGemvLinear& w, __half* out, cudaStream_t stream) {
  const int64_t threads = w.N / 4 * (w.K / layout::kGemvUnitK);
  dequant_kernel<BITS><<<blocks_for(threads, 256), 256, 0, stream>>>(
      w.qweight, reinterpret_cast<const __half*>(w.scales), reinterpret_cast<const __half*>(w.zeros), w.unit_group,
      static_cast<int>(w.K), static_cast<int>(w.N), out);
  return launched();
}

KernelStatus reduce_into(const float* partial, int64_t splits, int64_t mn, __half* y, cudaStream_t stream) {
  reduce_partials_kernel<<<blocks_for(mn, 256), 256, 0, stream>>>(partial, splits, mn, y);
  return launched();
}

bool fits_int(int64_t v) { return v > 0 && v <= (int64_t{1} << 30); }

}  // namespace

KernelStatus upload(const TcLinear& host, DeviceTcLinear* dev) {
  DeviceTcLinear d;
  d.K = host.K;
  d.N = host.N;
  d.n_groups = host.n_groups;
  d.group_size = host.group_size;
  if (copy_up(host.words, &d.words) != KernelStatus::ok || copy_up(host.scales, &d.scales) != KernelStatus::ok ||
      copy_up(host.perm, &d.perm) != KernelStatus::ok) {
    release(&d);
    return KernelStatus::device_error;
  }
  *dev = d;
  return KernelStatus::ok;
}

KernelStatus upload(const GemvLinear& host, DeviceGemvLinear* dev) {
  DeviceGemvLinear d;
  d.K = host.K;
  d.N = host.N;
  d.n_groups = host.n_groups;
  d.bits = host.bits;
  if (copy_up(host.qweight, &d.qweight) != KernelStatus::ok || copy_up(host.scales, &d.scales) != KernelStatus::ok ||
      copy_up(host.zeros, &d.zeros) != KernelStatus::ok || copy_up(host.unit_group, &d.unit_group) != KernelStatus::ok ||
      copy_up(host.perm, &d.perm) != KernelStatus::ok) {
    release(&d);
    return KernelStatus::device_error;
  }
  *dev = d;
  return KernelStatus::ok;
}

void release(DeviceTcLinear* dev) {
  free_dev(dev->words);
  free_dev(dev->scales);
  free_dev(dev->perm);
}

void release(DeviceGemvLinear* dev) {
  free_dev(dev->qweight);
  free_dev(dev->scales);
  free_dev(dev->zeros);
  free_dev(dev->unit_group);
  free_dev(dev->perm);
}

KernelStatus tc_gemm(const DeviceTcLinear& w, const uint16_t* x, int64_t M, uint16_t* y, void* workspace,
                     size_t workspace_bytes, const Launch& launch) {
  if (!fits_int(M) || !fits_int(w.K) || !fits_int(w.N) || w.K % layout::kTcStageK != 0 || w.N % layout::kTcSlabN != 0 ||
      !x || !y || !w.words || !w.scales) {
    return KernelStatus::bad_shape;
  }
  if (w.group_size != w.K && w.group_size != 32 && w.group_size != 64 && w.group_size != 128) {
    return KernelStatus::unsupported;
  }
  const TcPlan p = plan_tc(M, w.K, w.N, w.perm != nullptr, launch.sm_count);
  if (workspace_bytes < p.workspace_bytes() || (p.workspace_bytes() > 0 && !workspace)) return KernelStatus::bad_shape;
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  const __half* xin = reinterpret_cast<const __half*>(x);
  if (w.perm) {
    __half* xp = reinterpret_cast<__half*>(ws);
    permute_cols_kernel<<<blocks_for(M * w.K, 256), 256, 0, launch.stream>>>(xin, w.perm, M, w.K, xp);
    if (launched() != KernelStatus::ok) return KernelStatus::device_error;
    xin = xp;
  }
  float* partial = p.splits > 1 ? reinterpret_cast<float*>(ws + p.perm_bytes) : nullptr;
  __half* out = reinterpret_cast<__half*>(y);
  KernelStatus st;
  switch (p.m_blocks) {
    case 1: st = launch_tc<1>(p, xin, w, partial, out, M, launch.stream); break;
    case 2: st = launch_tc<2>(p, xin, w, partial, out, M, launch.stream); break;
    default: st = launch_tc<4>(p, xin, w, partial, out, M, launch.stream); break;
  }
  if (st != KernelStatus::ok || !partial) return st;
  return reduce_into(partial, p.splits, M * w.N, out, launch.stream);
}

KernelStatus gemv(const DeviceGemvLinear& w, const uint16_t* x, int64_t M, uint16_t* y, void* workspace,
                  size_t workspace_bytes, const Launch& launch) {
  if (M <= 0 || M > kGemvMaxM || !fits_int(w.K) || !fits_int(w.N) || w.K % layout::kGemvUnitK != 0 || w.N % 4 != 0 ||
      !x || !y || !w.qweight) {
    return KernelStatus::bad_shape;
  }
  const GemvPlan p = plan_gemv(M, w.K, w.N, launch.sm_count);
  if (workspace_bytes < p.workspace_bytes() || (p.workspace_bytes() > 0 && !workspace)) return KernelStatus::bad_shape;
  float* partial = p.splits > 1 ? static_cast<float*>(workspace) : nullptr;
  const __half* xin = reinterpret_cast<const __half*>(x);
  __half* out = reinterpret_cast<__half*>(y);
  KernelStatus st;
  switch (w.bits) {
    case 2: st = launch_gemv_bits<2>(p, w, xin, partial, out, M, launch.stream); break;
    case 3: st = launch_gemv_bits<3>(p, w, xin, partial, out, M, launch.stream); break;
    case 4: st = launch_gemv_bits<4>(p, w, xin, partial, out, M, launch.stream); break;
    case 8: st = launch_gemv_bits<8>(p, w, xin, partial, out, M, launch.stream); break;
    default: return KernelStatus::unsupported;
  }
  if (st != KernelStatus::ok || !partial) return st;
  return reduce_into(partial, p.splits, M * w.N, out, launch.stream);
}

KernelStatus dequant_gemm(const DeviceGemvLinear& w, cublasHandle_t blas, const uint16_t* x, int64_t M, uint16_t* y,
                          void* workspace, size_t workspace_bytes, const Launch& launch) {
  if (!fits_int(M) || !fits_int(w.K) || !fits_int(w.N) || w.K % layout::kGemvUnitK != 0 || w.N % 4 != 0 || !x || !y ||
      !w.qweight || !blas) {
    return KernelStatus::bad_shape;
  }
  const size_t need = dequant_gemm_workspace_bytes(M, w.K, w.N, w.perm != nullptr);
  if (workspace_bytes < need || !workspace) return KernelStatus::bad_shape;
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  __half* wd = reinterpret_cast<__half*>(ws);
  KernelStatus st;
  switch (w.bits) {
    case 2: st = launch_dequant<2>(w, wd, launch.stream); break;
    case 3: st = launch_dequant<3>(w, wd, launch.stream); break;
    case 4: st = launch_dequant<4>(w, wd, launch.stream); break;
    case 8: st = launch_dequant<8>(w, wd, launch.stream); break;
    default: return KernelStatus::unsupported;
  }
  if (st != KernelStatus::ok) return st;
  const __half* xin = reinterpret_cast<const __half*>(x);
  if (w.perm) {
    __half* xp = reinterpret_cast<__half*>(ws + align_up(static_cast<size_t>(w.K * w.N) * 2));
    permute_cols_kernel<<<blocks_for(M * w.K, 256), 256, 0, launch.stream>>>(xin, w.perm, M, w.K, xp);
    if (launched() != KernelStatus::ok) return KernelStatus::device_error;
    xin = xp;
  }
  // Column-major view: y^T [N x M] = Wd^T-as-stored [N x K, ld N] . x^T [K x M, ld K].
  if (cublasSetStream(blas, launch.stream) != CUBLAS_STATUS_SUCCESS) return KernelStatus::device_error;
  const float alpha = 1.0f, beta = 0.0f;
  const int K = static_cast<int>(w.K), N = static_cast<int>(w.N);
  const cublasStatus_t bs = cublasGemmEx(blas, CUBLAS_OP_N, CUBLAS_OP_N, N, static_cast<int>(M), K, &alpha, wd,
                                         CUDA_R_16F, N, xin, CUDA_R_16F, K, &beta, y, CUDA_R_16F, N,
                                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  return bs == CUBLAS_STATUS_SUCCESS ? KernelStatus::ok : KernelStatus::device_error;
}

}  // namespace gptqd::kernels::cuda
