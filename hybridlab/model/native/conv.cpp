// The causal depthwise conv1d + bias + SiLU of the mixers, channel-last, forward and backward.
#include "kernels.h"

#include <type_traits>

namespace hybridlab_native {
namespace {

// dp = go * silu'(pre)
inline void silu_grad_row(const float* pre, const float* go, float* dp, int64_t ch) {
  int64_t c = 0;
#ifdef __AVX2__
  for (; c + 8 <= ch; c += 8) {
    const __m256 v = _mm256_loadu_ps(pre + c);
    const __m256 sig = sigmoid8(v);
    const __m256 slope = silu_slope8(v, sig);
    _mm256_storeu_ps(dp + c, _mm256_mul_ps(_mm256_loadu_ps(go + c), slope));
  }
#endif
  for (; c < ch; ++c) {
    const float sig = sigmoid(pre[c]);
    dp[c] = go[c] * sig * (1.f + pre[c] * (1.f - sig));
  }
}

// The SiLU's slope silu'(pre), which the forward can keep for the backward: [b, L, ch] contiguous
// float32, or empty (not kept: the backward recomputes the pre-activation and the sigmoid, which took
// 2x as long as the rest of its work).
void check_slope(const at::Tensor& slope, int64_t b, int64_t L, int64_t ch) {
  TORCH_CHECK(slope.numel() == 0 || (slope.scalar_type() == at::kFloat && slope.is_contiguous() &&
                                     slope.dim() == 3 && slope.size(0) == b && slope.size(1) == L &&
                                     slope.size(2) == ch),
              "slope: contiguous float32 [b, L, ch] or empty");
}

#ifdef __AVX2__
// conv_forward on rows [t0, t1) of one sequence for 4 taps and channels in whole vectors: per 8
// channels one sweep down the rows with the taps and the last three rows of x in registers (the row
// by row loop reloads all four taps and rows for every vector: ~1.5x the time).
inline void conv_forward_rows4(const float* __restrict x, int64_t sxt, const float* __restrict wt,
                               const float* __restrict bias, float* __restrict out, float* __restrict slope,
                               int64_t ch, int64_t t0, int64_t t1) {
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t c = 0; c < ch; c += 8) {
    const __m256 w0 = _mm256_loadu_ps(wt + c), w1 = _mm256_loadu_ps(wt + ch + c);
    const __m256 w2 = _mm256_loadu_ps(wt + 2 * ch + c), w3 = _mm256_loadu_ps(wt + 3 * ch + c);
    const __m256 b = bias ? _mm256_loadu_ps(bias + c) : zero;
    const auto row = [&](int64_t t) { return t < 0 ? zero : _mm256_loadu_ps(x + t * sxt + c); };
    __m256 x3 = row(t0 - 3), x2 = row(t0 - 2), x1 = row(t0 - 1);  // x_{t-3}, x_{t-2}, x_{t-1}
    const auto rows = [&](int64_t t, auto count) {  // rows t .. t + count - 1, their chains side by side
      constexpr int R = decltype(count)::value;
      __m256 xs[R + 3] = {x3, x2, x1}, acc[R], sig[R];
      for (int k = 0; k < R; ++k) {
        if ((c & 15) == 0 && t + k + kPrefetch < t1) __builtin_prefetch(x + (t + k + kPrefetch) * sxt + c, 0, 3);
        xs[k + 3] = _mm256_loadu_ps(x + (t + k) * sxt + c);
      }
      for (int k = 0; k < R; ++k) {
        acc[k] = _mm256_fmadd_ps(w0, xs[k], b);  // zeros before the start, as the padded conv
        acc[k] = _mm256_fmadd_ps(w1, xs[k + 1], acc[k]);
        acc[k] = _mm256_fmadd_ps(w2, xs[k + 2], acc[k]);
        acc[k] = _mm256_fmadd_ps(w3, xs[k + 3], acc[k]);
      }
      for (int k = 0; k < R; ++k) sig[k] = sigmoid8(acc[k]);
      for (int k = 0; k < R; ++k) {
        _mm256_storeu_ps(out + (t + k) * ch + c, _mm256_mul_ps(acc[k], sig[k]));
        if (slope) _mm256_storeu_ps(slope + (t + k) * ch + c, silu_slope8(acc[k], sig[k]));
      }
      x3 = xs[R], x2 = xs[R + 1], x1 = xs[R + 2];
    };
    // four rows at a time: one row's sum and sigmoid are a chain of ~30 dependent operations, which
    // alone kept the FP units waiting (1.5x the time)
    int64_t t = t0;
    for (; t + 4 <= t1; t += 4) rows(t, std::integral_constant<int, 4>());
    for (; t < t1; ++t) rows(t, std::integral_constant<int, 1>());
  }
}
#endif

#ifdef __AVX2__
// conv_backward's work on rows [t0, t1) of one sequence where the forward kept the slope, the kernel
// has 4 taps and the channels fill whole vectors: per 8 channels one sweep down the rows, with the
// taps, their gradients and the last three rows' x and dL/d(pre-activation) in registers (the general
// path below makes ~14 passes over each row: 3x the time on the demo mixer). dw [4, ch], db [ch] +=.
inline void conv_backward_rows4(const float* __restrict x, int64_t sxt, const float* __restrict go, int64_t sgt,
                                const float* __restrict slope, int64_t sst, float* __restrict dx, int64_t sdt,
                                const float* __restrict wt, float* __restrict dw, float* __restrict db, int64_t ch,
                                int64_t L, int64_t t0, int64_t t1) {
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t c = 0; c < ch; c += 8) {
    const __m256 w0 = _mm256_loadu_ps(wt + c), w1 = _mm256_loadu_ps(wt + ch + c);
    const __m256 w2 = _mm256_loadu_ps(wt + 2 * ch + c), w3 = _mm256_loadu_ps(wt + 3 * ch + c);
    __m256 g0 = zero, g1 = zero, g2 = zero, g3 = zero, gb = zero;  // dL/dw_j, dL/dbias
    const auto row = [&](int64_t t) { return t < 0 ? zero : _mm256_loadu_ps(x + t * sxt + c); };
    __m256 x3 = row(t0 - 3), x2 = row(t0 - 2), x1 = row(t0 - 1);  // x_{t-3}, x_{t-2}, x_{t-1}
    __m256 d3 = zero, d2 = zero, d1 = zero;  // dL/d(pre) at t-3, t-2, t-1
    for (int64_t t = t0; t < t1 + 3; ++t) {
      if ((c & 15) == 0 && t + kPrefetch < L) {  // a sweep's rows are kilobytes apart: fetch the line early
        __builtin_prefetch(x + (t + kPrefetch) * sxt + c, 0, 3);
        __builtin_prefetch(go + (t + kPrefetch) * sgt + c, 0, 3);
        __builtin_prefetch(slope + (t + kPrefetch) * sst + c, 0, 3);
      }
      __m256 xt = zero, dt = zero;  // past the end: no rows, no gradient
      if (t < L) {
        xt = _mm256_loadu_ps(x + t * sxt + c);
        dt = _mm256_mul_ps(_mm256_loadu_ps(go + t * sgt + c), _mm256_loadu_ps(slope + t * sst + c));
      }
      if (t < t1) {  // this run's row: its share of the weight and bias gradients
        gb = _mm256_add_ps(gb, dt);
        g0 = _mm256_fmadd_ps(dt, x3, g0);
        g1 = _mm256_fmadd_ps(dt, x2, g1);
        g2 = _mm256_fmadd_ps(dt, x1, g2);
        g3 = _mm256_fmadd_ps(dt, xt, g3);
      }
      if (t >= t0 + 3) {  // dx[t - 3] = sum_j w_j dpre[t - j]
        __m256 acc = _mm256_mul_ps(w0, dt);
        acc = _mm256_fmadd_ps(w1, d1, acc);
        acc = _mm256_fmadd_ps(w2, d2, acc);
        _mm256_storeu_ps(dx + (t - 3) * sdt + c, _mm256_fmadd_ps(w3, d3, acc));
      }
      x3 = x2, x2 = x1, x1 = xt;
      d3 = d2, d2 = d1, d1 = dt;
    }
    const __m256 g[4] = {g0, g1, g2, g3};
    for (int j = 0; j < 4; ++j)
      _mm256_storeu_ps(dw + j * ch + c, _mm256_add_ps(_mm256_loadu_ps(dw + j * ch + c), g[j]));
    _mm256_storeu_ps(db + c, _mm256_add_ps(_mm256_loadu_ps(db + c), gb));
  }
}
#endif

}  // namespace

// Causal depthwise conv1d + bias + SiLU on channel-last input: x [b, L, ch] (last dim contiguous,
// any row stride), weight [ch, k], bias [ch] or empty -> [b, L, ch]. out[t] = silu(bias +
// sum_j w[j] x[t - k + 1 + j]), zeros before the start; silu' of the same into slope_out when given.
at::Tensor conv_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                        const at::Tensor& out_given, const at::Tensor& slope_out) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 3 && x.stride(2) == 1, "x: float32 [b, L, ch]");
  const int64_t b = x.size(0), L = x.size(1), ch = x.size(2), k = weight.size(1);
  check_slope(slope_out, b, L, ch);
  at::Tensor w = weight.contiguous();
  const bool has_bias = bias.defined() && bias.numel() > 0;
  at::Tensor bc = has_bias ? bias.contiguous() : bias;
  auto out = output_or_new(out_given, {b, L, ch}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const float* bp = has_bias ? bc.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  float* sp = slope_out.numel() > 0 ? slope_out.data_ptr<float>() : nullptr;
  const int64_t sb = x.stride(0), st = x.stride(1);
#ifdef __AVX2__
  if (k == 4 && ch % 8 == 0) {
    std::vector<float> wt(k * ch);  // [k, ch]: contiguous over channels
    for (int64_t c = 0; c < ch; ++c)
      for (int64_t j = 0; j < k; ++j) wt[j * ch + c] = wp[c * k + j];
    constexpr int64_t kRows = 64;
    const int64_t runs = (L + kRows - 1) / kRows;
    at::parallel_for(0, b * runs, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bi = task / runs, t0 = (task % runs) * kRows, t1 = std::min(L, t0 + kRows);
        conv_forward_rows4(xp + bi * sb, st, wt.data(), bp, op + bi * L * ch, sp ? sp + bi * L * ch : nullptr, ch,
                           t0, t1);
      }
    });
    return out;
  }
#endif
  at::parallel_for(0, b * L, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> wt(k * ch);  // [k, ch]: contiguous over channels
    for (int64_t c = 0; c < ch; ++c)
      for (int64_t j = 0; j < k; ++j) wt[j * ch + c] = wp[c * k + j];
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bi = row / L, t = row % L;
      float* o = op + row * ch;
      int64_t c = 0;
#ifdef __AVX2__
      for (; c + 8 <= ch; c += 8) {  // one pass, the sum in a register: ~5% faster than a pass per tap
        __m256 acc = has_bias ? _mm256_loadu_ps(bp + c) : _mm256_setzero_ps();
        for (int64_t j = std::max<int64_t>(0, k - 1 - t); j < k; ++j)
          acc = _mm256_fmadd_ps(_mm256_loadu_ps(wt.data() + j * ch + c),
                                _mm256_loadu_ps(xp + bi * sb + (t - k + 1 + j) * st + c), acc);
        const __m256 sig = sigmoid8(acc);
        _mm256_storeu_ps(o + c, _mm256_mul_ps(acc, sig));
        if (sp) _mm256_storeu_ps(sp + row * ch + c, silu_slope8(acc, sig));
      }
#endif
      for (; c < ch; ++c) {
        float acc = has_bias ? bp[c] : 0.f;
        for (int64_t j = std::max<int64_t>(0, k - 1 - t); j < k; ++j)
          acc = std::fma(wt[j * ch + c], xp[bi * sb + (t - k + 1 + j) * st + c], acc);
        const float sig = sigmoid(acc);
        o[c] = acc * sig;
        if (sp) sp[row * ch + c] = silu_slope(acc, sig);
      }
    }
  });
  return out;
}

// dout [b, L, ch] (last dim contiguous) -> dx [b, L, ch] (into dx_out when given: a view with the
// last dim contiguous), dweight [ch, k], dbias [ch]; slope from the forward, or empty: the
// pre-activation and its slope are recomputed. Tasks are runs of
// kRows rows of one sequence: a task finds dL/d(pre-activation) for its rows and the k - 1 after them
// (dx needs those) in a buffer of its own, so no [b, L, ch] temporary is written and read back; its
// rows add their share of dweight and dbias to their block's partial sums (added up at the end).
std::vector<at::Tensor> conv_backward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                      const at::Tensor& dout_in, const at::Tensor& dx_out, const at::Tensor& slope) {
  const int64_t b = x.size(0), L = x.size(1), ch = x.size(2), k = weight.size(1);
  check_slope(slope, b, L, ch);
  const float* sp = slope.numel() > 0 ? slope.data_ptr<float>() : nullptr;
  at::Tensor w = weight.contiguous(), dout = dout_in.stride(2) == 1 ? dout_in : dout_in.contiguous();
  const bool has_bias = bias.defined() && bias.numel() > 0;
  at::Tensor bc = has_bias ? bias.contiguous() : bias;
  auto dx = dx_out.numel() > 0 ? dx_out : at::empty({b, L, ch}, x.options());
  TORCH_CHECK(dx.stride(2) == 1, "dx: last dim contiguous");
  constexpr int64_t kRows = 64, kBlocks = 16;
  const int64_t runs = (L + kRows - 1) / kRows, tasks = b * runs;
  const int64_t blocks = std::max<int64_t>(1, std::min(kBlocks, tasks)), per_block = (tasks + blocks - 1) / blocks;
  auto parts = at::zeros({blocks, k + 1, ch}, x.options());  // per block of tasks: dweight [k, ch], dbias [ch]
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const float* bp = has_bias ? bc.data_ptr<float>() : nullptr;
  const float* gp = dout.data_ptr<float>();
  float* dxp = dx.data_ptr<float>();
  float* partp = parts.data_ptr<float>();
  const int64_t sb = x.stride(0), st = x.stride(1);
  const int64_t sgb = dout.stride(0), sgt = dout.stride(1), sdb = dx.stride(0), sdt = dx.stride(1);
  std::vector<float> wt(k * ch);
  for (int64_t c = 0; c < ch; ++c)
    for (int64_t j = 0; j < k; ++j) wt[j * ch + c] = wp[c * k + j];
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> pre(ch), dpre_buf((kRows + k - 1) * ch);
    for (int64_t blk = begin; blk < end; ++blk) {
      float* __restrict dw = partp + blk * (k + 1) * ch;
      float* __restrict db = dw + k * ch;
      for (int64_t task = blk * per_block; task < std::min(tasks, (blk + 1) * per_block); ++task) {
        const int64_t bi = task / runs, t0 = (task % runs) * kRows, t1 = std::min(L, t0 + kRows);
#ifdef __AVX2__
        if (sp && k == 4 && ch % 8 == 0) {
          conv_backward_rows4(xp + bi * sb, st, gp + bi * sgb, sgt, sp + bi * L * ch, ch, dxp + bi * sdb, sdt,
                              wt.data(), dw, db, ch, L, t0, t1);
          continue;
        }
#endif
        const int64_t t_end = std::min(L, t1 + k - 1);
        for (int64_t t = t0; t < t_end; ++t) {
          float* __restrict dp = dpre_buf.data() + (t - t0) * ch;
          const float* __restrict go = gp + bi * sgb + t * sgt;
          if (sp) {
            const float* __restrict st_row = sp + (bi * L + t) * ch;
#pragma omp simd
            for (int64_t c = 0; c < ch; ++c) dp[c] = go[c] * st_row[c];
          } else {
            for (int64_t c = 0; c < ch; ++c) pre[c] = has_bias ? bp[c] : 0.f;
            for (int64_t j = 0; j < k; ++j) {
              const int64_t s = t - k + 1 + j;
              if (s < 0) continue;
              const float* __restrict xs = xp + bi * sb + s * st;
              const float* __restrict wj = wt.data() + j * ch;
#pragma omp simd
              for (int64_t c = 0; c < ch; ++c) pre[c] += wj[c] * xs[c];
            }
            silu_grad_row(pre.data(), go, dp, ch);
          }
          if (t >= t1) continue;  // a later task's row: needed here for dx only
#pragma omp simd
          for (int64_t c = 0; c < ch; ++c) db[c] += dp[c];
          for (int64_t j = 0; j < k; ++j) {
            const int64_t s = t - k + 1 + j;
            if (s < 0) continue;
            const float* __restrict xs = xp + bi * sb + s * st;
            float* __restrict dwj = dw + j * ch;
#pragma omp simd
            for (int64_t c = 0; c < ch; ++c) dwj[c] += dp[c] * xs[c];
          }
        }
        // dx[s] = sum_j w[j] dpre[s + k - 1 - j]
        for (int64_t s = t0; s < t1; ++s) {
          float* __restrict o = dxp + bi * sdb + s * sdt;
          std::fill(o, o + ch, 0.f);
          for (int64_t j = 0; j < k; ++j) {
            const int64_t t = s + k - 1 - j;
            if (t >= L) continue;
            const float* __restrict dpt = dpre_buf.data() + (t - t0) * ch;
            const float* __restrict wj = wt.data() + j * ch;
#pragma omp simd
            for (int64_t c = 0; c < ch; ++c) o[c] += wj[c] * dpt[c];
          }
        }
      }
    }
  });
  auto summed = parts.sum(0);  // [k + 1, ch]
  return {dx, summed.narrow(0, 0, k).t().contiguous(), summed[k].contiguous()};
}

}  // namespace hybridlab_native
