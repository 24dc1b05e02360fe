// Host-side glue shared by the CPU and CUDA implementations: turn the registered ops'
// arguments into the plain structs the kernels take.
#pragma once
#include <ATen/ATen.h>
#include <optional>
#include "params.h"

namespace fastadv {

inline PerIndex per_index(const std::optional<at::Tensor>& values, double value) {
  return {values.has_value() ? values->data_ptr<float>() : nullptr, static_cast<float>(value)};
}

inline Layout make_layout(const at::Tensor& x, int64_t example_size, int64_t channel_div,
                          const std::optional<at::Tensor>& lower,
                          const std::optional<at::Tensor>& upper) {
  int64_t channels = 1;
  if (lower.has_value()) channels = lower->numel();
  if (upper.has_value()) channels = upper->numel();
  return {x.numel(), example_size, channel_div, channels};
}

}  // namespace fastadv
