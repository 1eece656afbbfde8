// The selective scan as a sequential recurrence per (batch, head), forward and backward.
#include "kernels.h"

namespace hybridlab_native {
namespace {

// The state of one (batch, head) is held transposed, as [n, p]: the loops then run over a head's p
// channels, contiguous vectors in every operand, so the output y_t = h_t C_t needs no horizontal sum
// per channel (with [p, n] each of the p outputs ended in one). s0, the final state and dL/ds0 keep
// transformers' [p, n].

// [p, n] <-> [n, p]
inline void transpose_into(const float* src, float* dst, int64_t rows, int64_t cols) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) dst[j * rows + i] = src[i * cols + j];
}

// out[k] = exp(a_log dt[k stride]) for k < count: one head's decays over a run of steps, 8 at a time
// (std::exp, a library call, sat in the step loops). Every lane goes through exp8, so the forward and
// the backward's replay, which take the steps in different runs, get the same bits.
inline void decays(const float* dt, int64_t stride, int64_t count, float a_log, float* out) {
#ifdef __AVX2__
  const __m256 scale = _mm256_set1_ps(a_log);
  for (int64_t k0 = 0; k0 < count; k0 += 8) {
    const int64_t lanes = std::min<int64_t>(8, count - k0);
    alignas(32) float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int64_t k = 0; k < lanes; ++k) v[k] = dt[(k0 + k) * stride];
    _mm256_store_ps(v, exp8(_mm256_mul_ps(_mm256_load_ps(v), scale)));
    std::copy(v, v + lanes, out + k0);
  }
#else
  for (int64_t k = 0; k < count; ++k) out[k] = std::exp(dt[k * stride] * a_log);
#endif
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

#ifdef __AVX2__
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
  Claims claims(b * h);
  at::parallel_for(0, claims.threads(), 1, [&](int64_t, int64_t) {
    std::vector<float> state(pn), xdt_buf(p), decay_buf(L);
    std::vector<double> acc_buf(p);
    for (int64_t task; claims.next(task);) {
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
      float* __restrict decay = decay_buf.data();  // exp(dt_t A)
      decays(dtp + bi * L * h + hi, h, L, a_log, decay);
      for (int64_t t = 0; t < L; ++t) {
        if (t + kPrefetch < L) {
          const int64_t u = t + kPrefetch;
          prefetch_span(xp + bi * sxb + u * sxt + hi * p, p);
          prefetch_span(Bp + bi * sbb + u * sbt + gi * n, n);
          prefetch_span(Cp + bi * scb + u * sct + gi * n, n);
        }
        if (t % kSegment == 0) std::copy(S, S + pn, ep + (task * segments + t / kSegment) * pn);
        const float d = dtp[(bi * L + t) * h + hi];
        const float a = decay[t];
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
  Claims claims(b * g);
  at::parallel_for(0, claims.threads(), 1, [&](int64_t, int64_t) {
    // per thread and kept between calls: fresh pages would fault in on every call
    thread_local std::vector<float> anchors;  // h_{t-1} of a segment's anchor steps
    if (anchors.size() < static_cast<size_t>(kSegment * pn)) anchors.resize(kSegment * pn);
    float* anchors_at = anchors.data();
    std::vector<float> S_buf(pn), G_buf(pn), xdt_buf(p), gB_buf(p), decay_buf(kSegment);
    std::vector<double> cdc_buf(kSegment);
    std::vector<int64_t> anchor_buf(kSegment);
    for (int64_t task; claims.next(task);) {
      // tasks taken together are in different sequences: a (batch, step)'s dt and ddt rows are one cache line
      const int64_t bi = task % b, gi = task / b;
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
          decays(dtp + (bi * L + t0) * h + hi, h, t1 - t0, a_log, decay);
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
            const float a = decay[t - t0];
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
          // the reverse pass reads the replay's rows, their addresses written out again: as lambdas
          // shared by both loops they made them much slower
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

}  // namespace

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

}  // namespace hybridlab_native
