// SPDX-License-Identifier: Apache-2.0
// The GPTQ solver and round-to-nearest for one linear layer, as gptq-reference.md A.3-A.8
// describes the reference implementations (quantizer layer).
//
// Internally the weight is held transposed, Wt [K, N] (one row per input feature), so that every
// per-column step of the solve (quantize, rank-1 update, group range) runs over contiguous memory.
#include "quantizer/gptq.h"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <thread>

#include "engine/error.h"
#include "kernels/cpu/half.h"

namespace gptqd::quantizer {
namespace {

constexpr double kDampIncrement = 0.01;  // GM damp_auto_increment
constexpr int kMaxFloorAttempts = 6;     // GM hessian_inverse
constexpr int64_t kTile = 64;            // transposition tile (cache lines stay resident)

void check_size(const char* what, size_t actual, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0 || actual != static_cast<size_t>(rows) * static_cast<size_t>(cols)) {
    fail(ErrorCode::invalid_argument, what, ": ", actual, " values for shape [", rows, ", ", cols, "]");
  }
}

// dst [cols, rows] = src [rows, cols]^T, both row-major.
void transpose(const float* src, int64_t rows, int64_t cols, float* dst) {
  for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
    for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
      const int64_t r1 = std::min(r0 + kTile, rows), c1 = std::min(c0 + kTile, cols);
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) dst[c * rows + r] = src[r * cols + c];
      }
    }
  }
}

// x[0, n) -= u * e[0, n): product rounded, then subtracted, as the references do. Eight lanes per
// step so that -O2's straight-line (SLP) vectorizer emits SIMD; its loop vectorizer would not.
void sub_scaled(float* __restrict x, const float* __restrict e, float u, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) x[i + l] -= u * e[i + l];
  }
  for (; i < n; ++i) x[i] -= u * e[i];
}

// Per-row quantizer parameters of one group (A.6), fp32 as the references compute them.
struct GroupParams {
  std::vector<float> scale;  // [N]
  std::vector<float> zero;   // [N] integer-valued
};

// find_params over `n_cols` columns of W, given as rows of Wt starting at `cols` ([n_cols, N]).
GroupParams find_params(const float* cols, int64_t n_cols, int64_t N, const QuantizeOptions& opt) {
  // The range always contains 0: start both ends there.
  std::vector<float> lo(static_cast<size_t>(N), 0.0f), hi(static_cast<size_t>(N), 0.0f);
  for (int64_t c = 0; c < n_cols; ++c) {
    const float* x = cols + c * N;
    for (int64_t n = 0; n < N; ++n) {
      lo[n] = std::min(lo[n], x[n]);
      hi[n] = std::max(hi[n], x[n]);
    }
  }
  const float maxq = static_cast<float>(opt.maxq());
  GroupParams p{std::vector<float>(static_cast<size_t>(N)), std::vector<float>(static_cast<size_t>(N))};
  for (int64_t n = 0; n < N; ++n) {
    float xmin = lo[n], xmax = hi[n];
    if (opt.sym) {
      const float a = std::max(std::fabs(xmin), xmax);
      xmax = a;
      if (xmin < 0) xmin = -a;  // a row with no negative value keeps xmin = 0 (A.6 quirk)
    }
    if (xmin == 0 && xmax == 0) {
      xmin = -1;
      xmax = 1;
    }
    p.scale[n] = (xmax - xmin) / maxq;
    p.zero[n] = opt.sym ? static_cast<float>(1 << (opt.bits - 1)) : std::nearbyint(-xmin / p.scale[n]);
  }
  return p;
}

// The solve of A.5-A.8 on W [N, K] (original order). `U` null: no error feedback, i.e. RTN with
// the groups the solve would have used. `dead` and `perm` come from prepare_hessian (or are
// all-clear / identity for plain RTN).
QuantizedLinear solve(std::span<const float> W, int64_t N, int64_t K, std::span<const uint8_t> dead,
                      std::span<const int32_t> perm, const float* U, const QuantizeOptions& opt) {
  const bool grouped = opt.group_size > 0;
  const bool static_groups = grouped && opt.static_groups;
  const int64_t gs = grouped ? opt.group_size : K;
  const int64_t G = opt.n_groups(K);
  const float maxq = static_cast<float>(opt.maxq());
  const size_t NK = static_cast<size_t>(N) * static_cast<size_t>(K);
  for (size_t i = 0; i < NK; ++i) {
    if (!std::isfinite(W[i])) {
      fail(ErrorCode::invalid_argument, "quantize: W[", i / static_cast<size_t>(K), ", ", i % static_cast<size_t>(K),
           "] = ", W[i], " is not finite");
    }
  }

  std::vector<float> wt(NK);  // [K, N], original order
  transpose(W.data(), N, K, wt.data());

  // A.3 step 1: the per-row parameters of the whole original W (final only for gs = -1).
  GroupParams current = find_params(wt.data(), K, N, opt);
  std::vector<GroupParams> groups;  // [G]: static groups by original index, dynamic in solve order
  if (!grouped) groups.push_back(current);

  int64_t n_dead = 0;
  for (int64_t k = 0; k < K; ++k) {
    if (!dead[k]) continue;
    ++n_dead;
    std::fill_n(wt.begin() + k * N, N, 0.0f);
  }
  if (static_groups) {
    for (int64_t g = 0; g < G; ++g) {
      groups.push_back(find_params(wt.data() + g * gs * N, std::min(gs, K - g * gs), N, opt));
    }
  }

  // Solve order: row j of `w` is original feature perm[j].
  std::vector<float> w(NK);
  for (int64_t j = 0; j < K; ++j) std::copy_n(wt.begin() + perm[j] * N, N, w.begin() + j * N);
  wt = {};

  std::vector<uint8_t> codes_t(NK);  // [K, N], solve order
  const int64_t B = opt.block_size;
  std::vector<float> w1(static_cast<size_t>(std::min(B, K) * N));   // [B, N] the block's working copy
  std::vector<float> err(U ? w1.size() : 0);                         // [B, N] (w - q) / d per column
  double loss = 0;
  for (int64_t i1 = 0; i1 < K; i1 += B) {
    const int64_t i2 = std::min(i1 + B, K), count = i2 - i1;
    std::copy_n(w.begin() + i1 * N, count * N, w1.begin());
    for (int64_t t = 0; t < count; ++t) {
      const int64_t j = i1 + t;
      const GroupParams* p = &current;
      if (static_groups) {
        p = &groups[perm[j] / gs];
      } else if (grouped) {
        if (j % gs == 0) {
          // From the block-level W, not w1: a group that starts inside a block sees the weights
          // as they were at the block start (A.7).
          groups.push_back(find_params(w.data() + j * N, std::min(gs, K - j), N, opt));
        }
        p = &groups.back();
      }
      float* col = w1.data() + t * N;
      uint8_t* code = codes_t.data() + j * N;
      const float d = U ? U[j * K + j] : 1.0f;
      float* e = U ? err.data() + t * N : nullptr;
      for (int64_t n = 0; n < N; ++n) {
        const float s = p->scale[n], z = p->zero[n];
        const float q = std::clamp(std::nearbyint(col[n] / s) + z, 0.0f, maxq);
        code[n] = static_cast<uint8_t>(q);
        if (!e) continue;
        const float diff = col[n] - s * (q - z);
        loss += diff * diff / (d * d) / 2.0f;
        e[n] = diff / d;
      }
      if (!e) continue;
      // Lazy batch update, part 1: only the columns left in this block (A.5 step 2.5).
      for (int64_t t2 = t + 1; t2 < count; ++t2) sub_scaled(w1.data() + t2 * N, e, U[j * K + i1 + t2], N);
    }
    // Part 2: every later column receives the block's errors at once, W[:, i2:] -= E U[i1:i2, i2:]
    // (transposed here: Wt[i2:] -= U[i1:i2, i2:]^T Et).
    if (U && i2 < K) {
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<blasint>(K - i2), static_cast<blasint>(N),
                  static_cast<blasint>(count), -1.0f, U + i1 * K + i2, static_cast<blasint>(K), err.data(),
                  static_cast<blasint>(N), 1.0f, w.data() + i2 * N, static_cast<blasint>(N));
    }
  }
  if (static_cast<int64_t>(groups.size()) != G) {
    fail(ErrorCode::internal, "quantize: made ", groups.size(), " groups, expected ", G);
  }

  QuantizedLinear out;
  out.N = N;
  out.K = K;
  out.bits = opt.bits;
  out.group_size = opt.group_size;
  out.sym = opt.sym;
  out.loss = loss;
  out.n_dead = n_dead;
  out.codes.resize(NK);
  for (int64_t j = 0; j < K; ++j) {
    const uint8_t* code = codes_t.data() + j * N;
    for (int64_t n = 0; n < N; ++n) out.codes[n * K + perm[j]] = code[n];
  }
  out.scales.resize(static_cast<size_t>(N * G));
  out.zeros.resize(static_cast<size_t>(N * G));
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t n = 0; n < N; ++n) {
      out.scales[n * G + g] = groups[g].scale[n];
      out.zeros[n * G + g] = static_cast<uint8_t>(groups[g].zero[n]);
    }
  }
  // A.8: dynamic groups are runs of the solve order; static groups and no grouping keep k / gs.
  out.g_idx.resize(static_cast<size_t>(K));
  for (int64_t j = 0; j < K; ++j) {
    out.g_idx[perm[j]] = static_cast<int32_t>((static_groups ? perm[j] : j) / gs);
  }
  return out;
}

// A.4: U (row-major upper, U^T U = inv(H)) from the damped `a` [K, K], in place.
// H is symmetric, so its row-major lower triangle is LAPACK's column-major upper one: calling
// LAPACK column-major ('U' for our lower) avoids LAPACKE's transposed copies of a K x K matrix.
bool inverse_cholesky_upper(std::vector<float>& a, int64_t K) {
  const auto k = static_cast<lapack_int>(K);
  if (LAPACKE_spotrf(LAPACK_COL_MAJOR, 'U', k, a.data(), k) != 0) return false;  // H = L L^T
  if (LAPACKE_spotri(LAPACK_COL_MAJOR, 'U', k, a.data(), k) != 0) return false;  // lower of inv(H)
  for (int64_t r0 = 0; r0 < K; r0 += kTile) {  // mirror lower onto upper
    for (int64_t c0 = r0; c0 < K; c0 += kTile) {
      const int64_t r1 = std::min(r0 + kTile, K), c1 = std::min(c0 + kTile, K);
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = std::max(c0, r + 1); c < c1; ++c) a[r * K + c] = a[c * K + r];
      }
    }
  }
  if (LAPACKE_spotrf(LAPACK_COL_MAJOR, 'L', k, a.data(), k) != 0) return false;  // upper: inv(H) = U^T U
  for (int64_t r = 0; r < K; ++r) {
    std::fill_n(a.begin() + r * K, r, 0.0f);
    for (int64_t c = r; c < K; ++c) {
      if (!std::isfinite(a[r * K + c])) return false;
    }
  }
  return true;
}

}  // namespace

void QuantizeOptions::validate() const {
  if (bits != 2 && bits != 3 && bits != 4 && bits != 8) {
    fail(ErrorCode::invalid_argument, "quantize: bits = ", bits, " (supported: 2, 3, 4, 8)");
  }
  if (group_size <= 0 && group_size != -1) {
    fail(ErrorCode::invalid_argument, "quantize: group_size = ", group_size, " (expected > 0, or -1 for one group)");
  }
  if (!(damp_percent > 0 && damp_percent < 1)) {
    fail(ErrorCode::invalid_argument, "quantize: damp_percent = ", damp_percent, " (expected 0 < damp_percent < 1)");
  }
  if (block_size <= 0) {
    fail(ErrorCode::invalid_argument, "quantize: block_size = ", block_size, " (expected > 0)");
  }
}

int64_t QuantizeOptions::n_groups(int64_t K) const { return group_size == -1 ? 1 : (K + group_size - 1) / group_size; }

HessianAccumulator::HessianAccumulator(int64_t K, int n_threads) : K_(K), n_threads_(std::max(1, n_threads)) {
  if (K <= 0) fail(ErrorCode::invalid_argument, "HessianAccumulator: K = ", K, " (expected > 0)");
  sum_.assign(static_cast<size_t>(K) * static_cast<size_t>(K), 0.0f);
}

void HessianAccumulator::add(const float* x, int64_t n_rows) {
  if (n_rows < 0) fail(ErrorCode::invalid_argument, "HessianAccumulator: n_rows = ", n_rows);
  if (n_rows == 0) return;
  // sum[c0:K, c0:c1] += x[:, c0:K]^T x[:, c0:c1] for one column block of the lower triangle: syrk
  // for its diagonal square, gemm for the rows below it.
  auto block = [&](int64_t c0, int64_t c1) {
    if (c1 <= c0) return;
    const auto w = static_cast<blasint>(c1 - c0), n = static_cast<blasint>(n_rows), ld = static_cast<blasint>(K_);
    cblas_ssyrk(CblasRowMajor, CblasLower, CblasTrans, w, n, 1.0f, x + c0, ld, 1.0f, sum_.data() + c0 * K_ + c0, ld);
    if (c1 < K_) {
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<blasint>(K_ - c1), w, n, 1.0f, x + c1, ld,
                  x + c0, ld, 1.0f, sum_.data() + c1 * K_ + c0, ld);
    }
  };
  const int64_t T = std::min<int64_t>(n_threads_, std::max<int64_t>(1, K_ / 64));
  // Block t spans columns [K(1 - sqrt(1 - t/T)), K(1 - sqrt(1 - (t+1)/T))): equal triangle areas.
  auto edge = [&](int64_t t) {
    return t >= T ? K_ : static_cast<int64_t>(static_cast<double>(K_) * (1.0 - std::sqrt(1.0 - double(t) / double(T))));
  };
  std::vector<std::thread> workers;
  for (int64_t t = 1; t < T; ++t) workers.emplace_back(block, edge(t), edge(t + 1));
  block(0, edge(1));
  for (auto& th : workers) th.join();
  n_ += n_rows;
}

std::vector<float> HessianAccumulator::hessian() const {
  if (n_ == 0) fail(ErrorCode::invalid_argument, "HessianAccumulator: no token was added");
  const auto s = static_cast<float>(2.0 / static_cast<double>(n_));
  std::vector<float> h(sum_.size());
  for (int64_t r = 0; r < K_; ++r) {
    for (int64_t c = 0; c <= r; ++c) h[r * K_ + c] = h[c * K_ + r] = s * sum_[r * K_ + c];
  }
  return h;
}

PreparedHessian prepare_hessian(std::vector<float> H, int64_t K, const QuantizeOptions& opt) {
  opt.validate();
  check_size("prepare_hessian: H", H.size(), K, K);
  PreparedHessian p;
  p.K = K;
  p.dead.assign(static_cast<size_t>(K), 0);
  p.perm.resize(static_cast<size_t>(K));
  std::iota(p.perm.begin(), p.perm.end(), 0);
  p.damp_attempts = 0;
  for (int64_t k = 0; k < K; ++k) {
    if (H[k * K + k] == 0) {
      p.dead[k] = 1;
      H[k * K + k] = 1;
    }
  }
  // No damping repairs a NaN or an infinity: skip the sweep (it would run ~700 factorizations).
  if (!std::all_of(H.begin(), H.end(), [](float v) { return std::isfinite(v); })) return p;
  if (opt.desc_act) {
    // Stable: equal diagonals keep the lower index first, so the checkpoint is reproducible.
    std::stable_sort(p.perm.begin(), p.perm.end(), [&](int32_t a, int32_t b) { return H[a * K + a] > H[b * K + b]; });
    std::vector<float> hp(H.size());
    for (int64_t r = 0; r < K; ++r) {
      const float* src = H.data() + p.perm[r] * K;
      float* dst = hp.data() + r * K;
      for (int64_t c = 0; c < K; ++c) dst[c] = src[p.perm[c]];
    }
    H = std::move(hp);
  }

  // A.4 "Failure handling": damp sweeps, the later ones on a floored diagonal.
  std::vector<float> diag0(static_cast<size_t>(K));
  float max_abs = 0;
  for (int64_t k = 0; k < K; ++k) {
    diag0[k] = H[k * K + k];
    max_abs = std::max(max_abs, std::fabs(diag0[k]));
  }
  const double floor_base = (max_abs == 0 ? 1.0 : static_cast<double>(max_abs)) * 1e-6;
  std::vector<float> a(H.size());
  std::vector<float> diag(diag0);
  for (int floor_attempt = 0; floor_attempt <= kMaxFloorAttempts; ++floor_attempt) {
    if (floor_attempt > 0) {
      const auto f = static_cast<float>(floor_base * std::pow(10.0, floor_attempt - 1));
      for (int64_t k = 0; k < K; ++k) diag[k] = std::max(diag0[k] + f, f);
    }
    const auto mean = static_cast<float>(std::accumulate(diag.begin(), diag.end(), 0.0) / static_cast<double>(K));
    for (double damp = opt.damp_percent; damp > 0 && damp < 1; damp += kDampIncrement) {
      ++p.damp_attempts;
      a = H;
      const float add = static_cast<float>(damp) * mean;
      for (int64_t k = 0; k < K; ++k) a[k * K + k] = diag[k] + add;
      if (inverse_cholesky_upper(a, K)) {
        p.U = std::move(a);
        p.damp_percent_used = damp;
        return p;
      }
    }
  }
  return p;
}

QuantizedLinear gptq_quantize(std::span<const float> W, int64_t N, int64_t K, const PreparedHessian& h,
                              const QuantizeOptions& opt) {
  opt.validate();
  check_size("gptq_quantize: W", W.size(), N, K);
  if (h.K != K || h.dead.size() != static_cast<size_t>(K) || h.perm.size() != static_cast<size_t>(K) ||
      (h.ok() && h.U.size() != static_cast<size_t>(K) * static_cast<size_t>(K))) {
    fail(ErrorCode::invalid_argument, "gptq_quantize: the prepared Hessian is for K = ", h.K, ", W has K = ", K);
  }
  QuantizedLinear q = solve(W, N, K, h.dead, h.perm, h.ok() ? h.U.data() : nullptr, opt);
  q.damp_percent_used = h.damp_percent_used;
  q.damp_attempts = h.damp_attempts;
  q.rtn_fallback = !h.ok();
  return q;
}

QuantizedLinear rtn_quantize(std::span<const float> W, int64_t N, int64_t K, const QuantizeOptions& opt) {
  opt.validate();
  check_size("rtn_quantize: W", W.size(), N, K);
  const std::vector<uint8_t> dead(static_cast<size_t>(K), 0);
  std::vector<int32_t> perm(static_cast<size_t>(K));
  std::iota(perm.begin(), perm.end(), 0);
  return solve(W, N, K, dead, perm, nullptr, opt);
}

std::vector<float> dequantize(const QuantizedLinear& q, bool fp16_scales) {
  const int64_t G = q.n_groups();
  std::vector<float> w(q.codes.size());
  for (int64_t n = 0; n < q.N; ++n) {
    for (int64_t k = 0; k < q.K; ++k) {
      const size_t gi = static_cast<size_t>(n * G + q.g_idx[k]);
      float s = q.scales[gi];
      if (fp16_scales) s = kernels::cpu::f16_to_f32(kernels::cpu::f32_to_f16(s));
      w[n * q.K + k] = s * (static_cast<float>(q.codes[n * q.K + k]) - static_cast<float>(q.zeros[gi]));
    }
  }
  return w;
}

}  // namespace gptqd::quantizer
