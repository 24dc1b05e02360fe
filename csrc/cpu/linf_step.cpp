// CPU: the fused l-inf PGD step, one pass over x, grad and x_nat, in any of the rounding
// orders (params.h Order) and with parameters of any kind (params.h Kind).
#include <ATen/ATen.h>
#include <torch/library.h>
#include "../checks.h"
#include "../op_args.h"
#include "dispatch.h"
#include "walk.h"

namespace fastadv::cpu {
namespace {

// eps and alpha constant along the run, the bounds scalars or a table (parallel_walk).
template <int kOrder, typename scalar_t, typename grad_t, typename Bounds>
FASTADV_VECTOR_CLONES void linf_run(scalar_t* __restrict__ x, const grad_t* __restrict__ grad,
              const scalar_t* __restrict__ x_nat, int64_t n, float eps, float alpha,
              Bounds bounds) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    x[j] = static_cast<scalar_t>(linf_update<kOrder>(
        static_cast<float>(x[j]), static_cast<float>(grad[j]), static_cast<float>(x_nat[j]),
        eps, alpha, bounds.lower(j), bounds.upper(j)));
  }
}

// Every parameter read from a table aligned with the run (parallel_walk_tables).
template <int kOrder, typename scalar_t, typename grad_t>
FASTADV_VECTOR_CLONES void linf_run_tables(scalar_t* __restrict__ x,
              const grad_t* __restrict__ grad, const scalar_t* __restrict__ x_nat, int64_t n,
              const float* __restrict__ eps, const float* __restrict__ alpha,
              const float* __restrict__ lower, const float* __restrict__ upper) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    x[j] = static_cast<scalar_t>(linf_update<kOrder>(
        static_cast<float>(x[j]), static_cast<float>(grad[j]), static_cast<float>(x_nat[j]),
        eps[j], alpha[j], lower[j], upper[j]));
  }
}

template <int kOrder>
void linf_walk(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& x_nat,
               const Layout& layout, const std::array<Param, 4>& p) {
  const auto& [eps, alpha, lower, upper] = p;
  const bool runs = fits_runs(std::array<Param, 2>{eps, alpha}, lower, upper);
  FASTADV_DISPATCH_FLOAT(x.scalar_type(), "linf_step_cpu", [&] {
    using x_t = scalar_t;
    FASTADV_DISPATCH_FLOAT(grad.scalar_type(), "linf_step_cpu_grad", [&] {
      x_t* xp = x.data_ptr<x_t>();
      const scalar_t* gp = grad.const_data_ptr<scalar_t>();
      const x_t* np = x_nat.const_data_ptr<x_t>();
      if (fits_segments(layout, p)) {
        parallel_walk_segments(layout, p, [&](int64_t i, int64_t n, const auto& v) {
          linf_run<kOrder>(xp + i, gp + i, np + i, n, v[0], v[1], ScalarBounds{v[2], v[3]});
        });
        return;
      }
      if (runs) {
        const PerIndex e{eps.values, eps.value}, a{alpha.values, alpha.value};
        parallel_walk(layout, PerIndex{lower.values, lower.value},
                      PerIndex{upper.values, upper.value},
                      [&](int64_t i, int64_t n, int64_t b, auto bounds) {
                        linf_run<kOrder>(xp + i, gp + i, np + i, n, e.at(b), a.at(b), bounds);
                      });
        return;
      }
      parallel_walk_tables(layout, p, [&](int64_t i, int64_t n, const auto& t) {
        linf_run_tables<kOrder>(xp + i, gp + i, np + i, n, t[0], t[1], t[2], t[3]);
      });
    });
  });
}

void linf_step_cpu(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& x_nat,
                   const std::optional<at::Tensor>& eps, double eps_value,
                   const std::optional<at::Tensor>& alpha, double alpha_value,
                   const std::optional<at::Tensor>& lower, double lower_value,
                   const std::optional<at::Tensor>& upper, double upper_value,
                   int64_t example_size, int64_t channel_div, c10::IntArrayRef kinds,
                   int64_t order) {
  const int64_t channels =
      checks::step_args("fastadv::_linf_step_kernel_", x, grad, x_nat, eps, alpha, lower,
                        upper, example_size, channel_div, kinds, order);
  if (x.numel() == 0) return;
  const Layout layout{x.numel(), example_size, channel_div, channels};
  const auto k = resolve_kinds<4>(kinds, checks::legacy_kinds(eps, alpha, lower, upper));
  const std::array<Param, 4> p{param(eps, eps_value, k[0]), param(alpha, alpha_value, k[1]),
                               param(lower, lower_value, k[2]), param(upper, upper_value, k[3])};
  dispatch_order(order, [&](auto o) { linf_walk<decltype(o)::value>(x, grad, x_nat, layout, p); });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastadv, CPU, m) { m.impl("_linf_step_kernel_", &linf_step_cpu); }

}  // namespace fastadv::cpu
