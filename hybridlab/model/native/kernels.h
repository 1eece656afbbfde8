// Shared by the native CPU kernels for transformers' Mamba2 mixer and the model around it
// (hybridlab.model.native): output buffers, task hand-out, prefetching, and exp / sigmoid / SiLU on
// 8 lanes. One file per kernel family (scan.cpp, conv.cpp, gated_norm.cpp, time_step.cpp,
// relu2.cpp, cross_entropy.cpp), bound to Python in bindings.cpp. float32 only; the Python side checks dtypes,
// devices and layouts and falls back to PyTorch for anything else. Built with -fopenmp, which makes
// at::parallel_for parallel, and with -mavx2 -mfma where the CPU has them (the "avx2" variant): each
// kernel's AVX2 path sits beside the plain loops that the "generic" variant compiles alone.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/Parallel.h>

#ifdef __AVX2__
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>

namespace hybridlab_native {

// The kernels' output-buffer arguments (empty: a new tensor), which spare the caller fresh pages:
// `given` when it is a contiguous float32 tensor of `shape`, else a new one
inline at::Tensor output_or_new(const at::Tensor& given, at::IntArrayRef shape, const at::TensorOptions& opts) {
  if (given.defined() && given.numel() > 0) {
    TORCH_CHECK(given.sizes() == shape && given.is_contiguous() && given.scalar_type() == at::kFloat,
                "output buffer: contiguous float32 of the output's shape");
    return given;
  }
  return at::empty(shape, opts);
}

inline void check_inner(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32");
  TORCH_CHECK(t.dim() == 4 && t.stride(3) == 1 && t.stride(2) == t.size(3), name,
              " needs contiguous last two dimensions");
}

// Hands tasks [0, count) out one at a time to whichever of torch's threads asks next:
//   Claims claims(count);
//   at::parallel_for(0, claims.threads(), 1, [&](int64_t, int64_t) { for (int64_t task; claims.next(task);) ... });
// at::parallel_for alone splits a range once, evenly: when the machine delays one thread (a shared
// VM's other tenants) or some tasks cost more (heads with more anchored steps), the others then wait.
class Claims {
 public:
  explicit Claims(int64_t count) : count_(count) {}
  int64_t threads() const { return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), count_)); }
  bool next(int64_t& task) {
    task = next_.fetch_add(1, std::memory_order_relaxed);
    return task < count_;
  }

 private:
  const int64_t count_;
  std::atomic<int64_t> next_{0};
};

// How many steps (rows) ahead the scans and the 4-tap conv sweeps fetch into L1. A step's rows lie kilobytes apart (the
// mixer's conv output rows are 3 KB), which the hardware prefetchers do not follow across pages: the
// backward took 1.5x as long without (medians of 25 interleaved calls, demo shapes, 2 threads).
constexpr int64_t kPrefetch = 4;
inline void prefetch_span(const float* at, int64_t count) {
  for (int64_t k = 0; k < count; k += 16) __builtin_prefetch(at + k, 0, 3);
}

#ifdef __AVX2__
// Lane k of the result: the sum of v[k]'s eight lanes (eight horizontal sums for the price of ~one).
inline __m256 sum_lanes8(const __m256* v) {
  const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

inline float sum8(__m256 v) {
  const __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 d = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(d, _mm_shuffle_ps(d, d, 1)));
}
#endif

inline float sigmoid(float v) { return 1.f / (1.f + std::exp(-v)); }

// silu'(v) from v and sigmoid(v): the slope the conv and the gated norm keep or recompute
inline float silu_slope(float v, float sig) { return sig * (1.f + v * (1.f - sig)); }

#ifdef __AVX2__
// exp after Cephes' expf (about 1 ulp) on 8 lanes: std::exp is a scalar library call, which made the
// SiLU cost more than the convolution itself.
inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.f)), _mm256_set1_ps(88.f));
  const __m256 fk = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_fnmadd_ps(fk, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(fk, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i k = _mm256_cvtps_epi32(fk);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(127)), 23)));
}

inline __m256 sigmoid8(__m256 v) {
  const __m256 one = _mm256_set1_ps(1.f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), v))));
}

inline __m256 silu_slope8(__m256 v, __m256 sig) {
  const __m256 one = _mm256_set1_ps(1.f);
  return _mm256_mul_ps(sig, _mm256_fmadd_ps(v, _mm256_sub_ps(one, sig), one));
}
#endif

// The kernels, bound in bindings.cpp (shapes beside each definition)
std::vector<at::Tensor> scan_forward(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                                     const at::Tensor& B, const at::Tensor& C, const at::Tensor& D,
                                     const at::Tensor& s0, const at::Tensor& y_out);
std::vector<at::Tensor> scan_backward(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                                      const at::Tensor& B, const at::Tensor& C, const at::Tensor& D,
                                      const at::Tensor& entering, const at::Tensor& dy, const at::Tensor& dfinal,
                                      const at::Tensor& dx_out, const at::Tensor& dB_out, const at::Tensor& dC_out);
at::Tensor conv_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                        const at::Tensor& out_given, const at::Tensor& slope_out);
std::vector<at::Tensor> conv_backward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                      const at::Tensor& dout_in, const at::Tensor& dx_out, const at::Tensor& slope);
std::vector<at::Tensor> gated_norm_forward(const at::Tensor& y, const at::Tensor& z, const at::Tensor& weight,
                                           int64_t group_size, double eps, const at::Tensor& out_given);
std::vector<at::Tensor> gated_norm_backward(const at::Tensor& y, const at::Tensor& z, const at::Tensor& weight,
                                            const at::Tensor& rstd, const at::Tensor& dout_in, int64_t group_size,
                                            const at::Tensor& dz_out, const at::Tensor& dy_out);
at::Tensor time_step_forward(const at::Tensor& dt_in, const at::Tensor& bias_in, double lo, double hi);
at::Tensor time_step_backward(const at::Tensor& dt_in, const at::Tensor& bias_in, double lo, double hi,
                              const at::Tensor& ddt_in, const at::Tensor& d_in);
at::Tensor relu2_forward(const at::Tensor& x, const at::Tensor& out_given);
at::Tensor relu2_backward(const at::Tensor& x, const at::Tensor& grad_in);
std::vector<at::Tensor> cross_entropy_forward(const at::Tensor& logits, const at::Tensor& targets, int64_t ignore_index);
at::Tensor cross_entropy_backward(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& lse,
                                  const at::Tensor& dloss_in, int64_t ignore_index, const at::Tensor& grad_out);

}  // namespace hybridlab_native
