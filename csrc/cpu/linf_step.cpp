// CPU: the fused l-inf PGD step, one pass over x, grad and x_nat.
#include <ATen/ATen.h>
#include <torch/library.h>
#include "../checks.h"
#include "../op_args.h"
#include "dispatch.h"
#include "walk.h"

namespace fastadv::cpu {
namespace {

template <typename scalar_t, typename grad_t, typename Bounds>
FASTADV_VECTOR_CLONES void linf_run(scalar_t* __restrict__ x, const grad_t* __restrict__ grad,
              const scalar_t* __restrict__ x_nat, int64_t n, float eps, float alpha,
              Bounds bounds) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float xn = static_cast<float>(x_nat[j]);
    const float v = static_cast<float>(x[j]) + alpha * sign_or_zero(static_cast<float>(grad[j]));
    x[j] = static_cast<scalar_t>(clamp_nan(v, combined_lower(xn, eps, bounds.lower(j)),
                                           combined_upper(xn, eps, bounds.upper(j))));
  }
}

void linf_walk(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& x_nat,
               const Layout& layout, const BallParams& p) {
  FASTADV_DISPATCH_FLOAT(x.scalar_type(), "linf_step_cpu", [&] {
    using x_t = scalar_t;
    FASTADV_DISPATCH_FLOAT(grad.scalar_type(), "linf_step_cpu_grad", [&] {
      x_t* xp = x.data_ptr<x_t>();
      const scalar_t* gp = grad.const_data_ptr<scalar_t>();
      const x_t* np = x_nat.const_data_ptr<x_t>();
      parallel_walk(layout, p.lower, p.upper, [&](int64_t i, int64_t n, int64_t b, auto bounds) {
        linf_run(xp + i, gp + i, np + i, n, p.eps.at(b), p.alpha.at(b), bounds);
      });
    });
  });
}

void linf_step_cpu(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& x_nat,
                   const std::optional<at::Tensor>& eps, double eps_value,
                   const std::optional<at::Tensor>& alpha, double alpha_value,
                   const std::optional<at::Tensor>& lower, double lower_value,
                   const std::optional<at::Tensor>& upper, double upper_value,
                   int64_t example_size, int64_t channel_div) {
  checks::step_args("fastadv::_linf_step_kernel_", x, grad, x_nat, eps, alpha, lower, upper,
                     example_size, channel_div);
  if (x.numel() == 0) return;
  const Layout layout = make_layout(x, example_size, channel_div, lower, upper);
  const BallParams p{per_index(eps, eps_value), per_index(alpha, alpha_value),
                     per_index(lower, lower_value), per_index(upper, upper_value)};
  linf_walk(x, grad, x_nat, layout, p);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastadv, CPU, m) { m.impl("_linf_step_kernel_", &linf_step_cpu); }

}  // namespace fastadv::cpu
