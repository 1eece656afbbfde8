// Next-token cross-entropy, forward and backward.
#include "kernels.h"

namespace hybridlab_native {

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

}  // namespace hybridlab_native
