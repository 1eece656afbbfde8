// The kernels as the Python module hybridlab.model.native loads.
#include <torch/extension.h>

#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("relu2_forward", &hybridlab_native::relu2_forward, "relu(x)^2 forward");
  m.def("relu2_backward", &hybridlab_native::relu2_backward, "relu(x)^2 backward");
  m.def("cross_entropy_forward", &hybridlab_native::cross_entropy_forward, "next-token cross-entropy forward");
  m.def("cross_entropy_backward", &hybridlab_native::cross_entropy_backward, "next-token cross-entropy backward");
  m.def("scan_forward", &hybridlab_native::scan_forward, "selective scan forward");
  m.def("scan_backward", &hybridlab_native::scan_backward, "selective scan backward");
  m.def("conv_forward", &hybridlab_native::conv_forward, "causal depthwise conv1d + bias + SiLU forward");
  m.def("conv_backward", &hybridlab_native::conv_backward, "causal depthwise conv1d + bias + SiLU backward");
  m.def("time_step_forward", &hybridlab_native::time_step_forward, "clamp(softplus(dt + bias)) forward");
  m.def("time_step_backward", &hybridlab_native::time_step_backward, "clamp(softplus(dt + bias)) backward");
  m.def("gated_norm_forward", &hybridlab_native::gated_norm_forward, "gated grouped RMSNorm forward");
  m.def("gated_norm_backward", &hybridlab_native::gated_norm_backward, "gated grouped RMSNorm backward");
}
