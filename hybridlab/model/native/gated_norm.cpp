// The mixers' gated grouped RMSNorm (and, without a gate, the residual stream's RMSNorm).
#include "kernels.h"

namespace hybridlab_native {
namespace {

// silu(z) and its slope on a row (AVX2 where built with it)
inline void silu_and_slope_row(const float* z, float* act, float* slope, int64_t d) {
  int64_t c = 0;
#ifdef __AVX2__
  for (; c + 8 <= d; c += 8) {
    const __m256 v = _mm256_loadu_ps(z + c);
    const __m256 sig = sigmoid8(v);
    _mm256_storeu_ps(act + c, _mm256_mul_ps(v, sig));
    if (slope) _mm256_storeu_ps(slope + c, silu_slope8(v, sig));
  }
#endif
  for (; c < d; ++c) {
    const float sig = sigmoid(z[c]);
    act[c] = z[c] * sig;
    if (slope) slope[c] = silu_slope(z[c], sig);
  }
}

#ifdef __AVX2__
// gated_norm_forward's work on one row whose groups fill whole vectors: per group one sweep that keeps
// v = y silu(z) (y without a gate) in a row buffer and sums its squares, one that writes the output
// (the general path below makes four passes over the row: ~1.7x the time on the demo mixer).
inline void gated_norm_forward_row(const float* __restrict yr, const float* __restrict zr, const float* __restrict w,
                                   int64_t d, int64_t group_size, float eps, float* __restrict v,
                                   float* __restrict out, float* __restrict rstd) {
  for (int64_t c0 = 0; c0 < d; c0 += group_size) {
    __m256 sq = _mm256_setzero_ps();
    for (int64_t c = c0; c < c0 + group_size; c += 8) {
      __m256 vc = _mm256_loadu_ps(yr + c);
      if (zr) {
        const __m256 z = _mm256_loadu_ps(zr + c);
        vc = _mm256_mul_ps(_mm256_mul_ps(z, sigmoid8(z)), vc);  // silu(z) * y, as the general path
        _mm256_storeu_ps(v + c, vc);
      }
      sq = _mm256_fmadd_ps(vc, vc, sq);
    }
    const float r = 1.f / std::sqrt(sum8(sq) / static_cast<float>(group_size) + eps);
    rstd[c0 / group_size] = r;
    const __m256 rv = _mm256_set1_ps(r);
    const float* vr = zr ? v : yr;
    for (int64_t c = c0; c < c0 + group_size; c += 8)
      _mm256_storeu_ps(out + c, _mm256_mul_ps(_mm256_loadu_ps(w + c), _mm256_mul_ps(_mm256_loadu_ps(vr + c), rv)));
  }
}
#endif

#ifdef __AVX2__
// gated_norm_backward's work on one row with a gate (AVX2, groups of whole vectors): two sweeps per
// group, the first finding <dn, n> while it keeps sigmoid(z), v and dn in row buffers, the second
// writing dy and dz; the general path below took ~2x as long (passes over act, slope, v and dn).
inline void gated_norm_backward_row(const float* __restrict yr, const float* __restrict zr, const float* __restrict gr,
                                    const float* __restrict w, const float* __restrict rstd, int64_t d,
                                    int64_t group_size, float* __restrict dw, float* __restrict dyr,
                                    float* __restrict dzr, float* __restrict sig, float* __restrict v,
                                    float* __restrict dn) {
  for (int64_t c0 = 0; c0 < d; c0 += group_size) {
    const float r = rstd[c0 / group_size];
    const __m256 rv = _mm256_set1_ps(r);
    __m256 dot = _mm256_setzero_ps();  // sum of dn * n over the group
    for (int64_t c = c0; c < c0 + group_size; c += 8) {
      const __m256 z = _mm256_loadu_ps(zr + c), s = sigmoid8(z);
      const __m256 vc = _mm256_mul_ps(_mm256_loadu_ps(yr + c), _mm256_mul_ps(z, s));  // y * silu(z)
      const __m256 n = _mm256_mul_ps(vc, rv), g = _mm256_loadu_ps(gr + c);
      _mm256_storeu_ps(dw + c, _mm256_fmadd_ps(g, n, _mm256_loadu_ps(dw + c)));
      const __m256 dnc = _mm256_mul_ps(g, _mm256_loadu_ps(w + c));
      dot = _mm256_fmadd_ps(dnc, n, dot);
      _mm256_storeu_ps(sig + c, s);
      _mm256_storeu_ps(v + c, vc);
      _mm256_storeu_ps(dn + c, dnc);
    }
    const __m256 scale = _mm256_set1_ps(r * (sum8(dot) / static_cast<float>(group_size)));  // r * mean_dot
    for (int64_t c = c0; c < c0 + group_size; c += 8) {
      const __m256 z = _mm256_loadu_ps(zr + c), s = _mm256_loadu_ps(sig + c);
      const __m256 dv = _mm256_mul_ps(rv, _mm256_fnmadd_ps(_mm256_loadu_ps(v + c), scale, _mm256_loadu_ps(dn + c)));
      _mm256_storeu_ps(dyr + c, _mm256_mul_ps(dv, _mm256_mul_ps(z, s)));
      const __m256 slope = silu_slope8(z, s);
      _mm256_storeu_ps(dzr + c, _mm256_mul_ps(_mm256_mul_ps(dv, _mm256_loadu_ps(yr + c)), slope));
    }
  }
}
#endif

}  // namespace

// Gated RMSNorm of transformers' Mamba2 mixers: v = y * silu(z); out = weight * v / sqrt(mean over each
// group of group_size channels of v^2 + eps). y [rows, d] contiguous, z [rows, d] (last dim contiguous,
// any row stride) or empty (no gate, v = y: the residual stream's RMSNorm), weight [d]
// -> out [rows, d], rstd [rows, d / group_size]
std::vector<at::Tensor> gated_norm_forward(const at::Tensor& y, const at::Tensor& z, const at::Tensor& weight,
                                           int64_t group_size, double eps, const at::Tensor& out_given) {
  const bool gated = z.numel() > 0;
  TORCH_CHECK(y.is_contiguous() && (!gated || z.stride(1) == 1) && weight.is_contiguous(), "gated norm layout");
  const int64_t rows = y.size(0), d = y.size(1), groups = d / group_size;
  auto out = output_or_new(out_given, {rows, d}, y.options());
  auto rstd = at::empty({rows, groups}, y.options());
  const float *yp = y.data_ptr<float>(), *zp = gated ? z.data_ptr<float>() : nullptr, *wp = weight.data_ptr<float>();
  float *op = out.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  const int64_t sz = gated ? z.stride(0) : 0;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> v(d);
    for (int64_t row = begin; row < end; ++row) {
      const float* yr = yp + row * d;
#ifdef __AVX2__
      if (group_size % 8 == 0) {
        gated_norm_forward_row(yr, gated ? zp + row * sz : nullptr, wp, d, group_size, static_cast<float>(eps), v.data(),
                               op + row * d, rp + row * groups);
        continue;
      }
#endif
      if (gated) {
        silu_and_slope_row(zp + row * sz, v.data(), nullptr, d);
        for (int64_t c = 0; c < d; ++c) v[c] *= yr[c];
      } else {
        std::copy(yr, yr + d, v.data());
      }
      for (int64_t gi = 0; gi < groups; ++gi) {
        const float* vg = v.data() + gi * group_size;
        float sq = 0.f;
#pragma omp simd reduction(+ : sq)
        for (int64_t c = 0; c < group_size; ++c) sq += vg[c] * vg[c];
        const float r = 1.f / std::sqrt(sq / static_cast<float>(group_size) + static_cast<float>(eps));
        rp[row * groups + gi] = r;
        float* o = op + row * d + gi * group_size;
        const float* wg = wp + gi * group_size;
        for (int64_t c = 0; c < group_size; ++c) o[c] = wg[c] * (vg[c] * r);
      }
    }
  });
  return {out, rstd};
}

// -> dy [rows, d] (into dy_out when given), dz [rows, d] (into dz_out when given: a view with the last dim
// contiguous; empty without a gate), dweight [d]
std::vector<at::Tensor> gated_norm_backward(const at::Tensor& y, const at::Tensor& z, const at::Tensor& weight,
                                            const at::Tensor& rstd, const at::Tensor& dout_in, int64_t group_size,
                                            const at::Tensor& dz_out, const at::Tensor& dy_out) {
  const int64_t rows = y.size(0), d = y.size(1), groups = d / group_size;
  at::Tensor dout = dout_in.contiguous();
  const bool gated = z.numel() > 0;
  auto dy = output_or_new(dy_out, {rows, d}, y.options());
  auto dz = !gated ? at::empty({0}, y.options()) : dz_out.numel() > 0 ? dz_out : at::empty({rows, d}, y.options());
  TORCH_CHECK(!gated || dz.stride(1) == 1, "dz: last dim contiguous");
  constexpr int64_t kBlocks = 16;
  auto dw_parts = at::zeros({kBlocks, d}, y.options());
  const float *yp = y.data_ptr<float>(), *zp = gated ? z.data_ptr<float>() : nullptr, *wp = weight.data_ptr<float>();
  const float *rp = rstd.data_ptr<float>(), *gp = dout.data_ptr<float>();
  float *dyp = dy.data_ptr<float>(), *dzp = gated ? dz.data_ptr<float>() : nullptr, *dwp = dw_parts.data_ptr<float>();
  const int64_t sz = gated ? z.stride(0) : 0, sdz = gated ? dz.stride(0) : 0;
  const int64_t per_block = (rows + kBlocks - 1) / kBlocks;
  at::parallel_for(0, kBlocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> act(d), slope(d), v(d), dn(d);
    for (int64_t blk = begin; blk < end; ++blk) {
      float* dw = dwp + blk * d;
      for (int64_t row = blk * per_block; row < std::min(rows, (blk + 1) * per_block); ++row) {
        const float* yr = yp + row * d;
        const float* gr = gp + row * d;
#ifdef __AVX2__
        if (gated && group_size % 8 == 0) {
          gated_norm_backward_row(yr, zp + row * sz, gr, wp, rp + row * groups, d, group_size, dw, dyp + row * d,
                                  dzp + row * sdz, act.data(), v.data(), dn.data());
          continue;
        }
#endif
        if (gated) {
          silu_and_slope_row(zp + row * sz, act.data(), slope.data(), d);
          for (int64_t c = 0; c < d; ++c) v[c] = yr[c] * act[c];
        } else {
          std::copy(yr, yr + d, v.data());
        }
        for (int64_t gi = 0; gi < groups; ++gi) {
          const float r = rp[row * groups + gi];
          const int64_t c0 = gi * group_size, c1 = c0 + group_size;
          float dot = 0.f;  // sum of dn * n over the group
#pragma omp simd reduction(+ : dot)
          for (int64_t c = c0; c < c1; ++c) {
            const float n = v[c] * r;
            dw[c] += gr[c] * n;
            dn[c] = gr[c] * wp[c];
            dot += dn[c] * n;
          }
          const float mean_dot = dot / static_cast<float>(group_size);
          float* dyr = dyp + row * d;
          if (!gated) {
#pragma omp simd
            for (int64_t c = c0; c < c1; ++c) dyr[c] = r * (dn[c] - v[c] * r * mean_dot);
            continue;
          }
          float* dzr = dzp + row * sdz;
#pragma omp simd
          for (int64_t c = c0; c < c1; ++c) {
            const float dv = r * (dn[c] - v[c] * r * mean_dot);
            dyr[c] = dv * act[c];
            dzr[c] = dv * yr[c] * slope[c];
          }
        }
      }
    }
  });
  return {dy, dz, dw_parts.sum(0)};
}

}  // namespace hybridlab_native
