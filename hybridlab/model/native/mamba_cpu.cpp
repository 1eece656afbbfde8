// Native CPU kernels for transformers' Mamba2 mixer (hybridlab.model.native): the selective scan as a
// sequential recurrence per (batch, head) and the causal depthwise conv1d + bias + SiLU, each with a
// hand-written backward. float32 only; the Python side checks dtypes, devices and layouts and falls
// back to PyTorch for anything else. Inner loops run over contiguous state / channel vectors so the
// compiler vectorises them (`omp simd` reductions, built with -fopenmp, which also makes at::parallel_for parallel).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#ifdef __AVX2__
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// The kernels' output-buffer arguments (empty: a new tensor), which spare the caller fresh pages:
// `given` when it is a contiguous float32 tensor of `shape`, else a new one
at::Tensor output_or_new(const at::Tensor& given, at::IntArrayRef shape, const at::TensorOptions& opts) {
  if (given.defined() && given.numel() > 0) {
    TORCH_CHECK(given.sizes() == shape && given.is_contiguous() && given.scalar_type() == at::kFloat,
                "output buffer: contiguous float32 of the output's shape");
    return given;
  }
  return at::empty(shape, opts);
}

void check_inner(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32");
  TORCH_CHECK(t.dim() == 4 && t.stride(3) == 1 && t.stride(2) == t.size(3), name,
              " needs contiguous last two dimensions");
}

// The state of one (batch, head) is held transposed, as [n, p]: the loops then run over a head's p
// channels, contiguous vectors in every operand, so the output y_t = h_t C_t needs no horizontal sum
// per channel (with [p, n] each of the p outputs ended in one). s0, the final state and dL/ds0 keep
// transformers' [p, n].

// [p, n] <-> [n, p]
inline void transpose_into(const float* src, float* dst, int64_t rows, int64_t cols) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) dst[j * rows + i] = src[i * cols + j];
}

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

// One forward step for channels [c0, c0 + 32) of a head (n even): S [n, P] updated in place, out[0..32) =
// the sums over the state of S * C for those channels, in float32 as two partial sums (even and odd
// states) that halve the rounding a single running sum collects; the demo teacher's mixers stay within
// 1.5e-6 of transformers, a float64 sum cost 1.2x the forward.
template <int64_t P>
inline void forward_step_avx2(float* __restrict S, int64_t n, int64_t c0, const float* __restrict xdt,
                              const float* __restrict Bt, const float* __restrict Ct, float a,
                              double* __restrict out) {
  const __m256 av = _mm256_set1_ps(a);
  __m256 x[4], y0[4], y1[4];
  for (int v = 0; v < 4; ++v) {
    x[v] = _mm256_loadu_ps(xdt + c0 + 8 * v);
    y0[v] = y1[v] = _mm256_setzero_ps();
  }
  for (int64_t j = 0; j < n; j += 2) {
    float* __restrict Sj = S + j * P + c0;
    const __m256 bj = _mm256_set1_ps(Bt[j]), cj = _mm256_set1_ps(Ct[j]);
    const __m256 bk = _mm256_set1_ps(Bt[j + 1]), ck = _mm256_set1_ps(Ct[j + 1]);
    for (int v = 0; v < 4; ++v) {
      const __m256 s = _mm256_fmadd_ps(av, _mm256_loadu_ps(Sj + 8 * v), _mm256_mul_ps(bj, x[v]));
      _mm256_storeu_ps(Sj + 8 * v, s);
      y0[v] = _mm256_fmadd_ps(s, cj, y0[v]);
      const __m256 u = _mm256_fmadd_ps(av, _mm256_loadu_ps(Sj + P + 8 * v), _mm256_mul_ps(bk, x[v]));
      _mm256_storeu_ps(Sj + P + 8 * v, u);
      y1[v] = _mm256_fmadd_ps(u, ck, y1[v]);
    }
  }
  for (int v = 0; v < 4; ++v) {
    const __m256 y = _mm256_add_ps(y0[v], y1[v]);
    _mm256_storeu_pd(out + c0 + 8 * v, _mm256_cvtps_pd(_mm256_castps256_ps128(y)));
    _mm256_storeu_pd(out + c0 + 8 * v + 4, _mm256_cvtps_pd(_mm256_extractf128_ps(y, 1)));
  }
}

// The backward replays the recurrence forward, then runs the reverse one, a segment of kSegment steps
// at a time from the state the forward kept at the segment's start. The forward pass reads h_t while
// it makes it (dC_t = h_t^T dy_t); the reverse pass needs only G = dL/dh_t. So neither reads stored
// states back, and each keeps one [n, P] state in L1; the earlier backward (recomputed chunks of 33
// states, read back in reverse from L2) took 1.5x as long.
// dL/d(dt_t A) = <G_t, exp(dt_t A) h_{t-1}> comes as a reverse sum: it equals <G_t, h_t> - <G_t, xdt_t
// B_t^T> = <C_t, dc_t> + dL/d(dt_{t+1} A) - <B_t, db_t>, with dc_t, db_t the step's own terms of dC_t,
// dB_t. That difference loses what the float h_t cannot hold: where a step keeps little of its state
// (exp(dt A) < kExactBelow) a h_{t-1} drowns in h_t's rounding. There, and every kAnchor steps, the
// replay keeps h_{t-1} and the sum restarts from the exact product; its rounding then gathers over a
// few steps of well-kept state only (float64 sums alone left dA 1.7e-4 off at dt ~ 1.3, A ~ -16).
constexpr int64_t kSegment = 256;
constexpr int64_t kAnchor = 32;
constexpr float kExactBelow = 0.5f;

// One replay step of a head (n a multiple of 8): S [n, P] <- a S + B_t xdt^T; adds dc_j = sum_i
// dy_i S[j, i] to dC[j]; returns <C_t, dc>.
template <int64_t P>
inline float replay_step_avx2(float* __restrict S, int64_t n, const float* __restrict xdt,
                              const float* __restrict dyt, const float* __restrict Bt, const float* __restrict Ct,
                              float a, float* __restrict dCt) {
  constexpr int V = P / 8;
  const __m256 av = _mm256_set1_ps(a);
  __m256 x[V], dy[V];
  for (int v = 0; v < V; ++v) {
    x[v] = _mm256_loadu_ps(xdt + 8 * v);
    dy[v] = _mm256_loadu_ps(dyt + 8 * v);
  }
  __m256 cdc = _mm256_setzero_ps(), dcv[8];
  for (int64_t jb = 0; jb < n; jb += 8) {
    for (int jj = 0; jj < 8; ++jj) {
      float* __restrict Sj = S + (jb + jj) * P;
      const __m256 bj = _mm256_set1_ps(Bt[jb + jj]);
      __m256 dc = _mm256_setzero_ps();
      for (int v = 0; v < V; ++v) {
        const __m256 s = _mm256_fmadd_ps(av, _mm256_loadu_ps(Sj + 8 * v), _mm256_mul_ps(bj, x[v]));
        _mm256_storeu_ps(Sj + 8 * v, s);
        dc = _mm256_fmadd_ps(dy[v], s, dc);
      }
      dcv[jj] = dc;
    }
    const __m256 dcs = sum_lanes8(dcv);
    cdc = _mm256_fmadd_ps(_mm256_loadu_ps(Ct + jb), dcs, cdc);
    _mm256_storeu_ps(dCt + jb, _mm256_add_ps(_mm256_loadu_ps(dCt + jb), dcs));
  }
  return sum8(cdc);
}

// One reverse step of a head (n a multiple of 8): G [n, P] = the part of dL/dh_t from later steps on
// entry, a (G + C_t dy^T) on exit; adds db_j = sum_i dL/dh_t[j, i] xdt_i to dB[j]; gB[i] = sum_j
// dL/dh_t[j, i] B_j; returns <B_t, db>.
template <int64_t P>
inline float reverse_step_avx2(float* __restrict G, int64_t n, const float* __restrict xdt,
                               const float* __restrict dyt, const float* __restrict Bt, const float* __restrict Ct,
                               float a, float* __restrict dBt, float* __restrict gB) {
  constexpr int V = P / 8;
  const __m256 av = _mm256_set1_ps(a);
  __m256 x[V], dy[V], gBv[V];
  for (int v = 0; v < V; ++v) {
    x[v] = _mm256_loadu_ps(xdt + 8 * v);
    dy[v] = _mm256_loadu_ps(dyt + 8 * v);
    gBv[v] = _mm256_setzero_ps();
  }
  __m256 bdb = _mm256_setzero_ps(), dbv[8];
  for (int64_t jb = 0; jb < n; jb += 8) {
    for (int jj = 0; jj < 8; ++jj) {
      float* __restrict Gj = G + (jb + jj) * P;
      const __m256 cj = _mm256_set1_ps(Ct[jb + jj]), bj = _mm256_set1_ps(Bt[jb + jj]);
      __m256 db = _mm256_setzero_ps();
      for (int v = 0; v < V; ++v) {
        const __m256 gij = _mm256_fmadd_ps(dy[v], cj, _mm256_loadu_ps(Gj + 8 * v));
        db = _mm256_fmadd_ps(gij, x[v], db);
        gBv[v] = _mm256_fmadd_ps(gij, bj, gBv[v]);
        _mm256_storeu_ps(Gj + 8 * v, _mm256_mul_ps(av, gij));
      }
      dbv[jj] = db;
    }
    const __m256 dbs = sum_lanes8(dbv);
    bdb = _mm256_fmadd_ps(_mm256_loadu_ps(Bt + jb), dbs, bdb);
    _mm256_storeu_ps(dBt + jb, _mm256_add_ps(_mm256_loadu_ps(dBt + jb), dbs));
  }
  for (int v = 0; v < V; ++v) _mm256_storeu_ps(gB + 8 * v, gBv[v]);
  return sum8(bdb);
}
#endif

// y_t = h_t C_t + D x_t with h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, per (batch, head); heads
// r*gi .. r*gi+r-1 read group gi's B and C.
//   x [b, L, h, p], dt [b, L, h], A [h], B, C [b, L, g, n], D [h] or empty, s0 [b, h, p, n] or empty
//   -> y [b, L, h, p], final state [b, h, p, n], the state entering each segment [b, h, L / kSegment, n, p]
template <int64_t P>
std::vector<at::Tensor> scan_forward_impl(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                                          const at::Tensor& B, const at::Tensor& C, const at::Tensor& D,
                                          const at::Tensor& s0, const at::Tensor& y_out) {
  check_inner(x, "x");
  check_inner(B, "B");
  check_inner(C, "C");
  TORCH_CHECK(dt.is_contiguous() && A.is_contiguous(), "dt and A must be contiguous");
  const int64_t b = x.size(0), L = x.size(1), h = x.size(2), p = P ? P : x.size(3);
  const int64_t g = B.size(2), n = B.size(3), r = h / g, pn = p * n;
  auto y = output_or_new(y_out, {b, L, h, p}, x.options());
  auto final_state = at::empty({b, h, p, n}, x.options());
  const int64_t segments = (L + kSegment - 1) / kSegment;
  auto entering = at::empty({b, h, segments, n, p}, x.options());
  float* ep = entering.data_ptr<float>();
  const bool has_d = D.defined() && D.numel() > 0, has_s0 = s0.defined() && s0.numel() > 0;
  at::Tensor s0c = has_s0 ? s0.contiguous() : s0;
  const float* xp = x.data_ptr<float>();
  const float* dtp = dt.data_ptr<float>();
  const float* Ap = A.data_ptr<float>();
  const float* Bp = B.data_ptr<float>();
  const float* Cp = C.data_ptr<float>();
  const float* Dp = has_d ? D.data_ptr<float>() : nullptr;
  const float* s0p = has_s0 ? s0c.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  float* fp = final_state.data_ptr<float>();
  const int64_t sxb = x.stride(0), sxt = x.stride(1), sbb = B.stride(0), sbt = B.stride(1);
  const int64_t scb = C.stride(0), sct = C.stride(1);
  at::parallel_for(0, b * h, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> state(pn), xdt_buf(p);
    std::vector<double> acc_buf(p);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bi = task / h, hi = task % h, gi = hi / r;
      float* __restrict S = state.data();  // [n, p]
      float* __restrict xdt = xdt_buf.data();
      double* __restrict acc = acc_buf.data();
      if (has_s0) {
        transpose_into(s0p + task * pn, S, p, n);
      } else {
        std::fill(S, S + pn, 0.f);
      }
      const float a_log = Ap[hi], d_skip = has_d ? Dp[hi] : 0.f;
      for (int64_t t = 0; t < L; ++t) {
        if (t + kPrefetch < L) {
          const int64_t u = t + kPrefetch;
          prefetch_span(xp + bi * sxb + u * sxt + hi * p, p);
          prefetch_span(Bp + bi * sbb + u * sbt + gi * n, n);
          prefetch_span(Cp + bi * scb + u * sct + gi * n, n);
        }
        if (t % kSegment == 0) std::copy(S, S + pn, ep + (task * segments + t / kSegment) * pn);
        const float d = dtp[(bi * L + t) * h + hi];
        const float a = std::exp(d * a_log);
        const float* __restrict xt = xp + bi * sxb + t * sxt + hi * p;
        const float* __restrict Bt = Bp + bi * sbb + t * sbt + gi * n;
        const float* __restrict Ct = Cp + bi * scb + t * sct + gi * n;
        float* __restrict yt = yp + ((bi * L + t) * h + hi) * p;
#pragma omp simd
        for (int64_t i = 0; i < p; ++i) {
          xdt[i] = xt[i] * d;
          acc[i] = 0.0;  // the generic loop sums y in float64
        }
#ifdef __AVX2__
        if (P > 0 && P % 32 == 0 && n % 2 == 0) {
          for (int64_t c0 = 0; c0 < P; c0 += 32) forward_step_avx2<P>(S, n, c0, xdt, Bt, Ct, a, acc);
        } else
#endif
        {
          for (int64_t j = 0; j < n; ++j) {
            const float bj = Bt[j];
            const double cj = Ct[j];
            float* __restrict Sj = S + j * p;
#pragma omp simd
            for (int64_t i = 0; i < p; ++i) {
              const float s = a * Sj[i] + bj * xdt[i];
              Sj[i] = s;
              acc[i] += static_cast<double>(s) * cj;
            }
          }
        }
#pragma omp simd
        for (int64_t i = 0; i < p; ++i) yt[i] = static_cast<float>(acc[i] + static_cast<double>(d_skip) * xt[i]);
      }
      transpose_into(S, fp + task * pn, n, p);
    }
  });
  return {y, final_state, entering};
}

// replay_step_avx2's and reverse_step_avx2's work in plain loops (any head size, any state size)
inline double replay_step_generic(float* __restrict S, int64_t p, int64_t n, const float* __restrict xdt,
                                 const float* __restrict dyt, const float* __restrict Bt,
                                 const float* __restrict Ct, float a, float* __restrict dCt) {
  double cdc = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const float bj = Bt[j];
    float* __restrict Sj = S + j * p;
    double dc = 0.0;
#pragma omp simd reduction(+ : dc)
    for (int64_t i = 0; i < p; ++i) {
      const float s = a * Sj[i] + bj * xdt[i];
      Sj[i] = s;
      dc += static_cast<double>(dyt[i]) * s;
    }
    dCt[j] += static_cast<float>(dc);
    cdc += Ct[j] * dc;
  }
  return cdc;
}

inline double reverse_step_generic(float* __restrict G, int64_t p, int64_t n, const float* __restrict xdt,
                                  const float* __restrict dyt, const float* __restrict Bt,
                                  const float* __restrict Ct, float a, float* __restrict dBt,
                                  float* __restrict gB) {
  double bdb = 0.0;
  for (int64_t i = 0; i < p; ++i) gB[i] = 0.f;
  for (int64_t j = 0; j < n; ++j) {
    const float bj = Bt[j], cj = Ct[j];
    float* __restrict Gj = G + j * p;
    double db = 0.0;
#pragma omp simd reduction(+ : db)
    for (int64_t i = 0; i < p; ++i) {
      const float gij = Gj[i] + dyt[i] * cj;  // dL/dh_t
      db += static_cast<double>(gij) * xdt[i];
      gB[i] += gij * bj;
      Gj[i] = a * gij;  // on to h_{t-1}
    }
    dBt[j] += static_cast<float>(db);
    bdb += bj * db;
  }
  return bdb;
}

// The reverse recurrence, as planned above kSegment. Tasks are
// (batch, group) so that a group's dB, dC are written by one thread; dA, dD come per (batch, head) and
// are summed by the caller. G and the state are [n, p] as in the forward.
//   entering [b, h, L / kSegment, n, p] from scan_forward, dfinal [b, h, p, n] or empty
//   -> dx [b, L, h, p], ddt [b, L, h], dA [b, h], dB, dC [b, L, g, n], dD [b, h], ds0 [b, h, p, n]
template <int64_t P>
std::vector<at::Tensor> scan_backward_impl(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                                           const at::Tensor& B, const at::Tensor& C, const at::Tensor& D,
                                           const at::Tensor& entering_in, const at::Tensor& dy_in,
                                           const at::Tensor& dfinal_in, const at::Tensor& dx_out,
                                           const at::Tensor& dB_out, const at::Tensor& dC_out) {
  check_inner(x, "x");
  check_inner(B, "B");
  check_inner(C, "C");
  const int64_t b = x.size(0), L = x.size(1), h = x.size(2), p = P ? P : x.size(3);
  const int64_t g = B.size(2), n = B.size(3), r = h / g, pn = p * n;
  const int64_t segments = (L + kSegment - 1) / kSegment;
  TORCH_CHECK(entering_in.numel() == b * h * segments * pn, "entering states: one per segment of ", kSegment);
  const bool has_d = D.defined() && D.numel() > 0;
  const bool has_dfinal = dfinal_in.defined() && dfinal_in.numel() > 0;
  at::Tensor dy = dy_in.contiguous(), entering = entering_in.contiguous();
  at::Tensor dfinal = has_dfinal ? dfinal_in.contiguous() : dfinal_in;
  auto opts = x.options();
  // dx, dB, dC go into the given views when there are any (the mixer's fused path hands slices of one
  // buffer, so no cat joins them afterwards); a task zeroes its own group's dB, dC rows first
  const bool given = dx_out.numel() > 0;
  auto dx = given ? dx_out : at::empty({b, L, h, p}, opts);
  auto dB = given ? dB_out : at::empty({b, L, g, n}, opts);
  auto dC = given ? dC_out : at::empty({b, L, g, n}, opts);
  check_inner(dx, "dx");
  check_inner(dB, "dB");
  check_inner(dC, "dC");
  auto ddt = at::empty({b, L, h}, opts);
  auto dA = at::empty({b, h}, opts);
  auto dD = at::empty({b, h}, opts);
  auto ds0 = at::empty({b, h, p, n}, opts);
  const float* xp = x.data_ptr<float>();
  const float* dtp = dt.data_ptr<float>();
  const float* Ap = A.data_ptr<float>();
  const float* Bp = B.data_ptr<float>();
  const float* Cp = C.data_ptr<float>();
  const float* Dp = has_d ? D.data_ptr<float>() : nullptr;
  const float* ep = entering.data_ptr<float>();
  const float* dyp = dy.data_ptr<float>();
  const float* dfp = has_dfinal ? dfinal.data_ptr<float>() : nullptr;
  float *dxp = dx.data_ptr<float>(), *ddtp = ddt.data_ptr<float>(), *dAp = dA.data_ptr<float>();
  float *dDp = dD.data_ptr<float>(), *dBp = dB.data_ptr<float>(), *dCp = dC.data_ptr<float>();
  float* ds0p = ds0.data_ptr<float>();
  const int64_t sxb = x.stride(0), sxt = x.stride(1), sbb = B.stride(0), sbt = B.stride(1);
  const int64_t scb = C.stride(0), sct = C.stride(1);
  const int64_t sdxb = dx.stride(0), sdxt = dx.stride(1), sdbb = dB.stride(0), sdbt = dB.stride(1);
  const int64_t sdcb = dC.stride(0), sdct = dC.stride(1);
#ifdef __AVX2__
  const bool avx2 = P > 0 && P % 8 == 0 && n % 8 == 0;
#endif
  at::parallel_for(0, b * g, 1, [&](int64_t begin, int64_t end) {
    // per thread and kept between calls: fresh pages would fault in on every call
    thread_local std::vector<float> anchors;  // h_{t-1} of a segment's anchor steps
    if (anchors.size() < static_cast<size_t>(kSegment * pn)) anchors.resize(kSegment * pn);
    float* anchors_at = anchors.data();
    std::vector<float> S_buf(pn), G_buf(pn), xdt_buf(p), gB_buf(p), decay_buf(kSegment);
    std::vector<double> cdc_buf(kSegment);
    std::vector<int64_t> anchor_buf(kSegment);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bi = task / g, gi = task % g;
      for (int64_t t = 0; t < L; ++t) {
        std::fill_n(dBp + bi * sdbb + t * sdbt + gi * n, n, 0.f);
        std::fill_n(dCp + bi * sdcb + t * sdct + gi * n, n, 0.f);
      }
      for (int64_t hi = gi * r; hi < gi * r + r; ++hi) {
        const int64_t bh = bi * h + hi;
        const float a_log = Ap[hi], d_skip = has_d ? Dp[hi] : 0.f;
        float* __restrict S = S_buf.data();  // [n, p]
        float* __restrict G = G_buf.data();  // [n, p]
        float* __restrict xdt = xdt_buf.data();
        float* __restrict gB = gB_buf.data();  // dL/d(x_t dt_t), per channel
        float* __restrict decay = decay_buf.data();  // exp(dt_t A), by step in the segment
        double* __restrict cdc = cdc_buf.data();  // <C_t, dc_t>
        int64_t* __restrict anchor_of = anchor_buf.data();  // the step's kept h_{t-1}, or -1
        double dD_acc = 0.0, dA_acc = 0.0;
        double d_log_next = 0.0;  // dL/d(dt_{t+1} A)
        if (has_dfinal) {  // dL/dh past the last token (with no token at all, dL/ds0)
          transpose_into(dfp + bh * pn, G, p, n);
        } else {
          std::fill(G, G + pn, 0.f);
        }
        for (int64_t seg = segments - 1; seg >= 0; --seg) {
          const int64_t t0 = seg * kSegment, t1 = std::min(L, t0 + kSegment);
          const float* seg_start = ep + (bh * segments + seg) * pn;
          std::copy(seg_start, seg_start + pn, S);
          int64_t kept = 0;
          for (int64_t t = t0; t < t1; ++t) {
            if (t + kPrefetch < t1) {
              const int64_t u = t + kPrefetch;
              prefetch_span(xp + bi * sxb + u * sxt + hi * p, p);
              prefetch_span(Bp + bi * sbb + u * sbt + gi * n, n);
              prefetch_span(Cp + bi * scb + u * sct + gi * n, n);
              prefetch_span(dyp + ((bi * L + u) * h + hi) * p, p);
              prefetch_span(dCp + bi * sdcb + u * sdct + gi * n, n);
            }
            const float d = dtp[(bi * L + t) * h + hi];
            const float a = decay[t - t0] = std::exp(d * a_log);
            const float* __restrict xt = xp + bi * sxb + t * sxt + hi * p;
            const float* __restrict Bt = Bp + bi * sbb + t * sbt + gi * n;
            const float* __restrict Ct = Cp + bi * scb + t * sct + gi * n;
            const float* __restrict dyt = dyp + ((bi * L + t) * h + hi) * p;
            float* __restrict dCt = dCp + bi * sdcb + t * sdct + gi * n;
            anchor_of[t - t0] = -1;
            if (a < kExactBelow || (t - t0) % kAnchor == 0) {
              std::copy(S, S + pn, anchors_at + kept * pn);
              anchor_of[t - t0] = kept++;
            }
            double dD_t = 0.0;
#pragma omp simd reduction(+ : dD_t)
            for (int64_t i = 0; i < p; ++i) {
              xdt[i] = xt[i] * d;
              dD_t += static_cast<double>(dyt[i]) * xt[i];
            }
            dD_acc += dD_t;
#ifdef __AVX2__
            if constexpr (P > 0 && P % 8 == 0) {
              if (avx2) {
                cdc[t - t0] = replay_step_avx2<P>(S, n, xdt, dyt, Bt, Ct, a, dCt);
                continue;
              }
            }
#endif
            cdc[t - t0] = replay_step_generic(S, p, n, xdt, dyt, Bt, Ct, a, dCt);
          }
          if (seg == segments - 1 && has_dfinal) {  // S is the final state now, G still dL/dfinal
            for (int64_t k = 0; k < pn; ++k) d_log_next += static_cast<double>(G[k]) * S[k];
          }
          for (int64_t t = t1 - 1; t >= t0; --t) {
            if (t - kPrefetch >= t0) {
              const int64_t u = t - kPrefetch;
              prefetch_span(xp + bi * sxb + u * sxt + hi * p, p);
              prefetch_span(Bp + bi * sbb + u * sbt + gi * n, n);
              prefetch_span(Cp + bi * scb + u * sct + gi * n, n);
              prefetch_span(dyp + ((bi * L + u) * h + hi) * p, p);
              prefetch_span(dxp + bi * sdxb + u * sdxt + hi * p, p);
              prefetch_span(dBp + bi * sdbb + u * sdbt + gi * n, n);
            }
            const float d = dtp[(bi * L + t) * h + hi];
            const float a = decay[t - t0];
            const float* __restrict xt = xp + bi * sxb + t * sxt + hi * p;
            const float* __restrict Bt = Bp + bi * sbb + t * sbt + gi * n;
            const float* __restrict Ct = Cp + bi * scb + t * sct + gi * n;
            const float* __restrict dyt = dyp + ((bi * L + t) * h + hi) * p;
            float* __restrict dxt = dxp + bi * sdxb + t * sdxt + hi * p;
            float* __restrict dBt = dBp + bi * sdbb + t * sdbt + gi * n;
#pragma omp simd
            for (int64_t i = 0; i < p; ++i) xdt[i] = xt[i] * d;
            double bdb;
#ifdef __AVX2__
            if constexpr (P > 0 && P % 8 == 0) {
              bdb = avx2 ? reverse_step_avx2<P>(G, n, xdt, dyt, Bt, Ct, a, dBt, gB)
                         : reverse_step_generic(G, p, n, xdt, dyt, Bt, Ct, a, dBt, gB);
            } else
#endif
            {
              bdb = reverse_step_generic(G, p, n, xdt, dyt, Bt, Ct, a, dBt, gB);
            }
            float d_dt = 0.f;
#pragma omp simd reduction(+ : d_dt)
            for (int64_t i = 0; i < p; ++i) {
              dxt[i] = d * gB[i] + d_skip * dyt[i];
              d_dt += xt[i] * gB[i];
            }
            double d_log_acc = cdc[t - t0] + d_log_next - bdb;  // dL/d(dt_t A)
            if (anchor_of[t - t0] >= 0) {  // exact: G is a_t dL/dh_t now
              const float* __restrict prev = anchors_at + anchor_of[t - t0] * pn;
              d_log_acc = 0.0;  // in float64: the products cancel (a float sum left dA 1e-5 off at dt ~ 3)
#pragma omp simd reduction(+ : d_log_acc)
              for (int64_t k = 0; k < pn; ++k) d_log_acc += static_cast<double>(G[k]) * prev[k];
            }
            d_log_next = d_log_acc;
            const float d_log = static_cast<float>(d_log_acc);
            ddtp[(bi * L + t) * h + hi] = d_dt + d_log * a_log;
            dA_acc += static_cast<double>(d_log) * d;
          }
        }
        transpose_into(G, ds0p + bh * pn, n, p);
        dAp[bh] = static_cast<float>(dA_acc);
        dDp[bh] = static_cast<float>(dD_acc);
      }
    }
  });
  return {dx, ddt, dA, dB, dC, dD, ds0};
}

// Fixed head sizes let the compiler unroll the channel loops into whole registers.
std::vector<at::Tensor> scan_forward(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                                     const at::Tensor& B, const at::Tensor& C, const at::Tensor& D,
                                     const at::Tensor& s0, const at::Tensor& y_out) {
  switch (x.size(3)) {
    case 32: return scan_forward_impl<32>(x, dt, A, B, C, D, s0, y_out);
    case 64: return scan_forward_impl<64>(x, dt, A, B, C, D, s0, y_out);
    default: return scan_forward_impl<0>(x, dt, A, B, C, D, s0, y_out);
  }
}

std::vector<at::Tensor> scan_backward(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                                      const at::Tensor& B, const at::Tensor& C, const at::Tensor& D,
                                      const at::Tensor& entering, const at::Tensor& dy, const at::Tensor& dfinal,
                                      const at::Tensor& dx_out, const at::Tensor& dB_out, const at::Tensor& dC_out) {
  switch (x.size(3)) {
    case 32: return scan_backward_impl<32>(x, dt, A, B, C, D, entering, dy, dfinal, dx_out, dB_out, dC_out);
    case 64: return scan_backward_impl<64>(x, dt, A, B, C, D, entering, dy, dfinal, dx_out, dB_out, dC_out);
    default: return scan_backward_impl<0>(x, dt, A, B, C, D, entering, dy, dfinal, dx_out, dB_out, dC_out);
  }
}

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
    for (int64_t t = t0; t < t1; ++t) {
      if ((c & 15) == 0 && t + kPrefetch < t1) __builtin_prefetch(x + (t + kPrefetch) * sxt + c, 0, 3);
      const __m256 xt = _mm256_loadu_ps(x + t * sxt + c);
      __m256 acc = _mm256_fmadd_ps(w0, x3, b);  // zeros before the start, as the padded conv
      acc = _mm256_fmadd_ps(w1, x2, acc);
      acc = _mm256_fmadd_ps(w2, x1, acc);
      acc = _mm256_fmadd_ps(w3, xt, acc);
      const __m256 sig = sigmoid8(acc);
      _mm256_storeu_ps(out + t * ch + c, _mm256_mul_ps(acc, sig));
      if (slope) _mm256_storeu_ps(slope + t * ch + c, silu_slope8(acc, sig));
      x3 = x2, x2 = x1, x1 = xt;
    }
  }
}
#endif

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

// ReLU² of Nemotron-H's MLPs in one pass each way (PyTorch's takes two, plus a saved temporary):
// out = relu(x)^2; dx = (grad * relu(x)) * 2, the same bits as relu, square and their backward.
//   x, grad [N] contiguous float32 -> out / dx [N] (into the given buffer when there is one)
at::Tensor relu2_forward(const at::Tensor& x, const at::Tensor& out_given) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous float32");
  auto out = output_or_new(out_given, x.sizes(), x.options());
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, x.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
#ifdef __AVX2__
    for (; i + 8 <= end; i += 8) {  // max(0, x): x where it is a NaN, as clamp_min
      const __m256 r = _mm256_max_ps(_mm256_setzero_ps(), _mm256_loadu_ps(xp + i));
      _mm256_storeu_ps(op + i, _mm256_mul_ps(r, r));
    }
#endif
    for (; i < end; ++i) {
      const float r = xp[i] < 0.f ? 0.f : xp[i];
      op[i] = r * r;
    }
  });
  return out;
}

at::Tensor relu2_backward(const at::Tensor& x, const at::Tensor& grad_in) {
  at::Tensor grad = grad_in.contiguous();
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && grad.sizes() == x.sizes() &&
                  grad.scalar_type() == at::kFloat, "x, grad: float32 of one shape");
  auto dx = at::empty_like(x);
  const float *xp = x.data_ptr<float>(), *gp = grad.data_ptr<float>();
  float* dp = dx.data_ptr<float>();
  at::parallel_for(0, x.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
#ifdef __AVX2__
    for (; i + 8 <= end; i += 8) {
      const __m256 r = _mm256_max_ps(_mm256_setzero_ps(), _mm256_loadu_ps(xp + i));
      const __m256 gr = _mm256_mul_ps(_mm256_loadu_ps(gp + i), r);
      _mm256_storeu_ps(dp + i, _mm256_add_ps(gr, gr));
    }
#endif
    for (; i < end; ++i) {
      const float r = xp[i] < 0.f ? 0.f : xp[i];
      dp[i] = (gp[i] * r) * 2.f;
    }
  });
  return dx;
}

// Next-token cross-entropy, row by row, without the [N, V] log-probabilities F.cross_entropy writes
// and the zero-filled gradient its NLL backward scatters into (each a fresh 64 MB block for a demo
// batch, whose pages fault in again on every step).
//   logits [N, V] float32 (rows contiguous), targets [N] int64 (ignore_index rows: loss 0, gradient 0)
//   -> losses [N] (lse - logit of the target), lse [N]
std::vector<at::Tensor> cross_entropy_forward(const at::Tensor& logits, const at::Tensor& targets, int64_t ignore_index) {
  TORCH_CHECK(logits.scalar_type() == at::kFloat && logits.dim() == 2 && logits.stride(1) == 1, "logits: float32 [N, V]");
  at::Tensor t = targets.contiguous();
  const int64_t rows = logits.size(0), V = logits.size(1), stride = logits.stride(0);
  auto losses = at::empty({rows}, logits.options());
  auto lse = at::empty({rows}, logits.options());
  const float* lp = logits.data_ptr<float>();
  const int64_t* tp = t.data_ptr<int64_t>();
  float *loss_p = losses.data_ptr<float>(), *lse_p = lse.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const float* x = lp + row * stride;
      float top = -INFINITY;
      bool has_nan = false;  // max and the exp's clamp would drop a NaN; F.cross_entropy returns NaN
      int64_t v = 0;
#ifdef __AVX2__
      __m256 topv8 = _mm256_set1_ps(-INFINITY), nan8 = _mm256_setzero_ps();
      for (; v + 8 <= V; v += 8) {
        const __m256 xv = _mm256_loadu_ps(x + v);
        topv8 = _mm256_max_ps(topv8, xv);
        nan8 = _mm256_or_ps(nan8, _mm256_cmp_ps(xv, xv, _CMP_UNORD_Q));
      }
      alignas(32) float tops[8];
      _mm256_store_ps(tops, topv8);
      for (float lane : tops) top = std::max(top, lane);
      has_nan = _mm256_movemask_ps(nan8) != 0;
#endif
      for (; v < V; ++v) {
        top = std::max(top, x[v]);
        has_nan = has_nan || std::isnan(x[v]);
      }
      const int64_t target = tp[row];
      TORCH_CHECK(target == ignore_index || (target >= 0 && target < V), "target ", target, " is outside the ", V,
                  "-token vocabulary");
      if (has_nan) {  // an ignored row's NaN is dropped, as F.cross_entropy drops the row
        lse_p[row] = NAN;
        loss_p[row] = target == ignore_index ? 0.f : NAN;
        continue;
      }
      double total = 0.0;
      v = 0;
#ifdef __AVX2__
      const __m256 topv = _mm256_set1_ps(top);
      __m256 acc = _mm256_setzero_ps();
      for (; v + 8 <= V; v += 8) acc = _mm256_add_ps(acc, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + v), topv)));
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, acc);
      for (float lane : lanes) total += lane;
#endif
      for (; v < V; ++v) total += std::exp(x[v] - top);
      const float log_total = static_cast<float>(std::log(total));
      lse_p[row] = top + log_total;
      // (top - x[target]) first: both large and close on a confident row, their difference is exact
      loss_p[row] = target == ignore_index ? 0.f : (top - x[target]) + log_total;
    }
  });
  return {losses, lse};
}

// -> dlogits [N, V] = (softmax - onehot(target)) * dloss[row] (into grad_out when given)
at::Tensor cross_entropy_backward(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& lse,
                                  const at::Tensor& dloss_in, int64_t ignore_index, const at::Tensor& grad_out) {
  at::Tensor t = targets.contiguous(), dloss = dloss_in.contiguous();
  const int64_t rows = logits.size(0), V = logits.size(1), stride = logits.stride(0);
  auto grad = output_or_new(grad_out, {rows, V}, logits.options());
  const float* lp = logits.data_ptr<float>();
  const int64_t* tp = t.data_ptr<int64_t>();
  const float *lse_p = lse.data_ptr<float>(), *dp = dloss.data_ptr<float>();
  float* gp = grad.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const float* x = lp + row * stride;
      float* g = gp + row * V;
      const int64_t target = tp[row];
      const float scale = target == ignore_index ? 0.f : dp[row], shift = lse_p[row];
      if (std::isnan(shift)) {  // a NaN logit: a NaN row, as F.cross_entropy gives
        std::fill(g, g + V, target == ignore_index ? 0.f : NAN);
        continue;
      }
      int64_t v = 0;
#ifdef __AVX2__
      const __m256 shiftv = _mm256_set1_ps(shift), scalev = _mm256_set1_ps(scale);
      for (; v + 8 <= V; v += 8)
        _mm256_storeu_ps(g + v, _mm256_mul_ps(exp8(_mm256_sub_ps(_mm256_loadu_ps(x + v), shiftv)), scalev));
#endif
      for (; v < V; ++v) g[v] = std::exp(x[v] - shift) * scale;
      if (target != ignore_index) g[target] -= scale;
    }
  });
  return grad;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("relu2_forward", &relu2_forward, "relu(x)^2 forward");
  m.def("relu2_backward", &relu2_backward, "relu(x)^2 backward");
  m.def("cross_entropy_forward", &cross_entropy_forward, "next-token cross-entropy forward");
  m.def("cross_entropy_backward", &cross_entropy_backward, "next-token cross-entropy backward");
  m.def("scan_forward", &scan_forward, "selective scan forward");
  m.def("scan_backward", &scan_backward, "selective scan backward");
  m.def("conv_forward", &conv_forward, "causal depthwise conv1d + bias + SiLU forward");
  m.def("conv_backward", &conv_backward, "causal depthwise conv1d + bias + SiLU backward");
  m.def("gated_norm_forward", &gated_norm_forward, "gated grouped RMSNorm forward");
  m.def("gated_norm_backward", &gated_norm_backward, "gated grouped RMSNorm backward");
}
