// CPU: the random start x_nat + eps*U(-1, 1), clamped to the ball and the valid range.
#include <ATen/ATen.h>
#include <torch/library.h>
#include "../checks.h"
#include "../op_args.h"
#include "../philox.h"
#include "dispatch.h"
#include "walk.h"

namespace fastadv::cpu {
namespace {

template <typename scalar_t, typename Bounds>
FASTADV_VECTOR_CLONES void random_run(scalar_t* __restrict__ x, const scalar_t* __restrict__ x_nat, int64_t n,
                uint64_t seed, int64_t counter, float eps, Bounds bounds) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float xn = static_cast<float>(x_nat[j]);
    const float noise = eps * uniform_minus_one_one(philox_first_word(seed, counter + j));
    x[j] = static_cast<scalar_t>(clamp_nan(xn + noise,
                                           combined_lower(xn, eps, bounds.lower(j)),
                                           combined_upper(xn, eps, bounds.upper(j))));
  }
}

void random_init_cpu(const at::Tensor& x, const at::Tensor& x_nat, const at::Tensor& seed,
                     const std::optional<at::Tensor>& eps, double eps_value,
                     const std::optional<at::Tensor>& lower, double lower_value,
                     const std::optional<at::Tensor>& upper, double upper_value,
                     int64_t example_size, int64_t channel_div) {
  checks::random_init_args("fastadv::_random_init_kernel_", x, x_nat, seed, eps, lower, upper,
                           example_size, channel_div);
  if (x.numel() == 0) return;
  const Layout layout = make_layout(x, example_size, channel_div, lower, upper);
  const PerIndex e = per_index(eps, eps_value);
  const PerIndex lo = per_index(lower, lower_value), hi = per_index(upper, upper_value);
  const uint64_t key = static_cast<uint64_t>(seed.const_data_ptr<int64_t>()[0]);
  FASTADV_DISPATCH_FLOAT(x.scalar_type(), "random_init_cpu", [&] {
    scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* np = x_nat.const_data_ptr<scalar_t>();
    parallel_walk(layout, lo, hi, [&](int64_t i, int64_t n, int64_t b, auto bounds) {
      random_run(xp + i, np + i, n, key, i, e.at(b), bounds);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastadv, CPU, m) { m.impl("_random_init_kernel_", &random_init_cpu); }

}  // namespace fastadv::cpu
