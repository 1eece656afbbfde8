// The mixers' time step: dt = clamp(softplus(dt_in + dt_bias), lo, hi), forward and backward, one pass
// each (PyTorch's is five small ops forward and six back, ~0.5 ms a demo mixer's training step).
#include "kernels.h"

namespace hybridlab_native {
namespace {

constexpr float kLinearAbove = 20.f;  // F.softplus's threshold: above it softplus(v) is v
// The rows are slices of the projection, kilobytes apart: each is fetched this many rows ahead
// (without it the kernels waited on memory for each row and took as long as PyTorch's five ops)
constexpr int64_t kRowsAhead = 8;

inline float softplus(float v) { return v > kLinearAbove ? v : std::log1p(std::exp(v)); }

#ifdef __AVX2__
// log(1 + u) for u in [0, 1] as 2 atanh(s), s = u / (2 + u) in [0, 1/3]: the odd series to s^15
// leaves < 2e-8 (about 1 ulp of float)
inline __m256 log1p_unit8(__m256 u) {
  const __m256 s = _mm256_div_ps(u, _mm256_add_ps(_mm256_set1_ps(2.f), u)), s2 = _mm256_mul_ps(s, s);
  __m256 p = _mm256_set1_ps(1.f / 15.f);
  for (const float c : {1.f / 13.f, 1.f / 11.f, 1.f / 9.f, 1.f / 7.f, 1.f / 5.f, 1.f / 3.f, 1.f})
    p = _mm256_fmadd_ps(p, s2, _mm256_set1_ps(c));
  return _mm256_mul_ps(_mm256_add_ps(s, s), p);
}

// softplus(v) = max(v, 0) + log1p(exp(-|v|)), which never overflows; v itself above the threshold
inline __m256 softplus8(__m256 v) {
  const __m256 magnitude = _mm256_andnot_ps(_mm256_set1_ps(-0.f), v);
  const __m256 smooth = _mm256_add_ps(_mm256_max_ps(v, _mm256_setzero_ps()),
                                      log1p_unit8(exp8(_mm256_sub_ps(_mm256_setzero_ps(), magnitude))));
  return _mm256_blendv_ps(smooth, v, _mm256_cmp_ps(v, _mm256_set1_ps(kLinearAbove), _CMP_GT_OQ));
}
#endif

void check_rows(const at::Tensor& t, int64_t b, int64_t L, int64_t h, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.dim() == 3 && t.size(0) == b && t.size(1) == L && t.size(2) == h &&
                  t.stride(2) == 1,
              name, ": float32 [b, L, h] with the last dim contiguous");
}

}  // namespace

// dt_in [b, L, h] (last dim contiguous, any row strides: a slice of the projection), bias [h]
//   -> dt [b, L, h] contiguous
at::Tensor time_step_forward(const at::Tensor& dt_in, const at::Tensor& bias_in, double lo, double hi) {
  const int64_t b = dt_in.size(0), L = dt_in.size(1), h = dt_in.size(2);
  check_rows(dt_in, b, L, h, "dt_in");
  at::Tensor bias = bias_in.contiguous();
  auto dt = at::empty({b, L, h}, dt_in.options());
  const float *ip = dt_in.data_ptr<float>(), *bp = bias.data_ptr<float>();
  float* op = dt.data_ptr<float>();
  const int64_t sb = dt_in.stride(0), st = dt_in.stride(1);
  const float low = static_cast<float>(lo), high = static_cast<float>(hi);
  at::parallel_for(0, b * L, 256, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const float* in = ip + (row / L) * sb + (row % L) * st;
      if (row + kRowsAhead < end) prefetch_span(ip + ((row + kRowsAhead) / L) * sb + ((row + kRowsAhead) % L) * st, h);
      float* out = op + row * h;
      int64_t c = 0;
#ifdef __AVX2__
      const __m256 lowv = _mm256_set1_ps(low), highv = _mm256_set1_ps(high);
      for (; c + 8 <= h; c += 8) {
        const __m256 v = softplus8(_mm256_add_ps(_mm256_loadu_ps(in + c), _mm256_loadu_ps(bp + c)));
        _mm256_storeu_ps(out + c, _mm256_min_ps(highv, _mm256_max_ps(lowv, v)));  // a NaN stays one, as clamp
      }
#endif
      for (; c < h; ++c) out[c] = std::min(std::max(softplus(in[c] + bp[c]), low), high);
    }
  });
  return dt;
}

// ddt [b, L, h] -> dL/d(dt_in) into d_in (a view like dt_in's), returns dL/d(bias) [h]. The gradient
// passes where softplus(dt_in + bias) lies within [lo, hi], as clamp's backward.
at::Tensor time_step_backward(const at::Tensor& dt_in, const at::Tensor& bias_in, double lo, double hi,
                              const at::Tensor& ddt_in, const at::Tensor& d_in) {
  const int64_t b = dt_in.size(0), L = dt_in.size(1), h = dt_in.size(2);
  check_rows(dt_in, b, L, h, "dt_in");
  check_rows(d_in, b, L, h, "d_in");
  at::Tensor bias = bias_in.contiguous(), ddt = ddt_in.contiguous();
  constexpr int64_t kBlocks = 16;
  const int64_t rows = b * L, per_block = std::max<int64_t>(1, (rows + kBlocks - 1) / kBlocks);
  auto parts = at::zeros({kBlocks, h}, dt_in.options());  // per block of rows: dL/d(bias)
  const float *ip = dt_in.data_ptr<float>(), *bp = bias.data_ptr<float>(), *gp = ddt.data_ptr<float>();
  float *dp = d_in.data_ptr<float>(), *partp = parts.data_ptr<float>();
  const int64_t sb = dt_in.stride(0), st = dt_in.stride(1), sdb = d_in.stride(0), sdt = d_in.stride(1);
  const float low = static_cast<float>(lo), high = static_cast<float>(hi);
  at::parallel_for(0, kBlocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      float* __restrict dbias = partp + blk * h;
      for (int64_t row = blk * per_block; row < std::min(rows, (blk + 1) * per_block); ++row) {
        const float* in = ip + (row / L) * sb + (row % L) * st;
        if (row + kRowsAhead < rows) {
          const int64_t ahead = row + kRowsAhead;
          prefetch_span(ip + (ahead / L) * sb + (ahead % L) * st, h);
          prefetch_span(dp + (ahead / L) * sdb + (ahead % L) * sdt, h);
        }
        const float* g = gp + row * h;
        float* d = dp + (row / L) * sdb + (row % L) * sdt;
        int64_t c = 0;
#ifdef __AVX2__
        const __m256 lowv = _mm256_set1_ps(low), highv = _mm256_set1_ps(high);
        for (; c + 8 <= h; c += 8) {
          const __m256 v = _mm256_add_ps(_mm256_loadu_ps(in + c), _mm256_loadu_ps(bp + c)), sp = softplus8(v);
          const __m256 kept = _mm256_and_ps(_mm256_cmp_ps(sp, lowv, _CMP_GE_OQ), _mm256_cmp_ps(sp, highv, _CMP_LE_OQ));
          const __m256 slope = _mm256_blendv_ps(sigmoid8(v), _mm256_set1_ps(1.f),
                                                _mm256_cmp_ps(v, _mm256_set1_ps(kLinearAbove), _CMP_GT_OQ));
          const __m256 dv = _mm256_and_ps(kept, _mm256_mul_ps(_mm256_loadu_ps(g + c), slope));
          _mm256_storeu_ps(d + c, dv);
          _mm256_storeu_ps(dbias + c, _mm256_add_ps(_mm256_loadu_ps(dbias + c), dv));
        }
#endif
        for (; c < h; ++c) {
          const float v = in[c] + bp[c], sp = softplus(v);
          const float slope = v > kLinearAbove ? 1.f : 1.f / (1.f + std::exp(-v));
          const float dv = sp >= low && sp <= high ? g[c] * slope : 0.f;
          d[c] = dv;
          dbias[c] += dv;
        }
      }
    }
  });
  return parts.sum(0);
}

}  // namespace hybridlab_native
