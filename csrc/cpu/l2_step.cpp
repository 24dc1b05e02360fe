// CPU: the l2 PGD step. Each example needs two norms (of the gradient, then of the new
// perturbation), so threads take whole examples and make three passes over each.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <ATen/Parallel.h>
#include <cmath>
#include "../checks.h"
#include "../op_args.h"
#include "dispatch.h"

namespace fastadv::cpu {
namespace {

template <typename scalar_t, typename grad_t>
void l2_example(scalar_t* __restrict__ x, const grad_t* __restrict__ grad,
                const scalar_t* __restrict__ x_nat, int64_t n, int64_t first, float eps,
                float alpha, const Layout& layout, const PerIndex& lower, const PerIndex& upper) {
  auto finite_grad = [&](int64_t j) {
    const float g = static_cast<float>(grad[j]);
    return std::isnan(g) ? 0.f : g;
  };
  float grad_sq = 0.f;
#pragma omp simd reduction(+ : grad_sq)
  for (int64_t j = 0; j < n; ++j) grad_sq += finite_grad(j) * finite_grad(j);
  const float grad_norm = std::sqrt(grad_sq);
  const float factor = grad_norm > 0.f ? alpha / grad_norm : 0.f;

  auto stepped = [&](int64_t j) { return static_cast<float>(x[j]) + finite_grad(j) * factor; };
  float delta_sq = 0.f;
#pragma omp simd reduction(+ : delta_sq)
  for (int64_t j = 0; j < n; ++j) {
    const float d = stepped(j) - static_cast<float>(x_nat[j]);
    delta_sq += d * d;
  }
  const float delta_norm = std::sqrt(delta_sq);
  const bool project = !(delta_norm <= eps);  // a NaN distance or eps projects, to NaN
  const float shrink = project ? eps / delta_norm : 1.f;

  const bool per_channel = lower.varies() || upper.varies();
  for (int64_t j = 0; j < n; ++j) {
    const float xn = static_cast<float>(x_nat[j]);
    const float v = stepped(j);
    const float out = project ? xn + (v - xn) * shrink : v;
    const int64_t c = per_channel ? layout.channel(first + j) : 0;
    x[j] = static_cast<scalar_t>(clamp_nan(out, lower.at(c), upper.at(c)));
  }
}

void l2_step_cpu(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& x_nat,
                 const std::optional<at::Tensor>& eps, double eps_value,
                 const std::optional<at::Tensor>& alpha, double alpha_value,
                 const std::optional<at::Tensor>& lower, double lower_value,
                 const std::optional<at::Tensor>& upper, double upper_value,
                 int64_t example_size, int64_t channel_div) {
  checks::step_args("fastadv::_l2_step_kernel_", x, grad, x_nat, eps, alpha, lower, upper,
                     example_size, channel_div);
  if (x.numel() == 0) return;
  const Layout layout = make_layout(x, example_size, channel_div, lower, upper);
  const BallParams p{per_index(eps, eps_value), per_index(alpha, alpha_value),
                     per_index(lower, lower_value), per_index(upper, upper_value)};
  const int64_t examples = x.numel() / example_size;
  FASTADV_DISPATCH_FLOAT(x.scalar_type(), "l2_step_cpu", [&] {
    using x_t = scalar_t;
    FASTADV_DISPATCH_FLOAT(grad.scalar_type(), "l2_step_cpu_grad", [&] {
      x_t* xp = x.data_ptr<x_t>();
      const scalar_t* gp = grad.const_data_ptr<scalar_t>();
      const x_t* np = x_nat.const_data_ptr<x_t>();
      at::parallel_for(0, examples, 1, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          const int64_t first = b * example_size;
          l2_example(xp + first, gp + first, np + first, example_size, first, p.eps.at(b),
                     p.alpha.at(b), layout, p.lower, p.upper);
        }
      });
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastadv, CPU, m) { m.impl("_l2_step_kernel_", &l2_step_cpu); }

}  // namespace fastadv::cpu
