// Host-side glue shared by the CPU and CUDA implementations: turn the registered ops'
// arguments into the plain structs the kernels take.
#pragma once
#include <ATen/ATen.h>
#include <algorithm>
#include <array>
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

inline Param param(const std::optional<at::Tensor>& values, double value, int64_t kind) {
  return {values.has_value() ? values->data_ptr<float>() : nullptr, static_cast<float>(value),
          static_cast<int>(kind)};
}

// The kinds of the kernel op's parameters: `kinds` as given, or for an empty `kinds` the
// older form's (checks::legacy_kinds).
template <size_t N>
std::array<int64_t, N> resolve_kinds(c10::IntArrayRef kinds, c10::IntArrayRef legacy) {
  const c10::IntArrayRef given = kinds.empty() ? legacy : kinds;
  std::array<int64_t, N> out{};
  std::copy(given.begin(), given.begin() + N, out.begin());
  return out;
}

}  // namespace fastadv
