// ReLU² of the MLPs, forward and backward.
#include "kernels.h"

namespace hybridlab_native {

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

}  // namespace hybridlab_native
