// CPU: the random start, noise eps*U(-1, 1) projected in the order of the step it starts
// (params.h random_update), with parameters of any kind (params.h Kind).
#include <ATen/ATen.h>
#include <torch/library.h>
#include "../checks.h"
#include "../op_args.h"
#include "../philox.h"
#include "dispatch.h"
#include "walk.h"

namespace fastadv::cpu {
namespace {

template <int kOrder, typename scalar_t, typename Bounds>
FASTADV_VECTOR_CLONES void random_run(scalar_t* __restrict__ x, const scalar_t* __restrict__ x_nat, int64_t n,
                uint64_t seed, int64_t counter, float eps, Bounds bounds) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float u = uniform_minus_one_one(philox_first_word(seed, counter + j));
    x[j] = static_cast<scalar_t>(random_update<kOrder>(static_cast<float>(x_nat[j]), eps, u,
                                                       bounds.lower(j), bounds.upper(j)));
  }
}

template <int kOrder, typename scalar_t>
FASTADV_VECTOR_CLONES void random_run_tables(scalar_t* __restrict__ x,
                const scalar_t* __restrict__ x_nat, int64_t n, uint64_t seed, int64_t counter,
                const float* __restrict__ eps, const float* __restrict__ lower,
                const float* __restrict__ upper) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float u = uniform_minus_one_one(philox_first_word(seed, counter + j));
    x[j] = static_cast<scalar_t>(random_update<kOrder>(static_cast<float>(x_nat[j]), eps[j], u,
                                                       lower[j], upper[j]));
  }
}

void random_init_cpu(const at::Tensor& x, const at::Tensor& x_nat, const at::Tensor& seed,
                     const std::optional<at::Tensor>& eps, double eps_value,
                     const std::optional<at::Tensor>& lower, double lower_value,
                     const std::optional<at::Tensor>& upper, double upper_value,
                     int64_t example_size, int64_t channel_div, c10::IntArrayRef kinds,
                     int64_t order) {
  const int64_t channels =
      checks::random_init_args("fastadv::_random_init_kernel_", x, x_nat, seed, eps, lower,
                               upper, example_size, channel_div, kinds, order);
  if (x.numel() == 0) return;
  const Layout layout{x.numel(), example_size, channel_div, channels};
  const auto k = resolve_kinds<3>(kinds, checks::legacy_kinds(eps, lower, upper));
  const std::array<Param, 3> p{param(eps, eps_value, k[0]), param(lower, lower_value, k[1]),
                               param(upper, upper_value, k[2])};
  const bool runs = fits_runs(std::array<Param, 1>{p[0]}, p[1], p[2]);
  const uint64_t key = static_cast<uint64_t>(seed.const_data_ptr<int64_t>()[0]);
  // The start of order kImageViaDelta is kClamp's (params.h random_update): one loop.
  dispatch_order(order == kImageViaDelta ? kClamp : order, [&](auto o) {
    constexpr int kOrder = decltype(o)::value;
    FASTADV_DISPATCH_FLOAT(x.scalar_type(), "random_init_cpu", [&] {
      scalar_t* xp = x.data_ptr<scalar_t>();
      const scalar_t* np = x_nat.const_data_ptr<scalar_t>();
      if (fits_segments(layout, p)) {
        parallel_walk_segments(layout, p, [&](int64_t i, int64_t n, const auto& v) {
          random_run<kOrder>(xp + i, np + i, n, key, i, v[0], ScalarBounds{v[1], v[2]});
        });
        return;
      }
      if (runs) {
        const PerIndex e{p[0].values, p[0].value};
        parallel_walk(layout, PerIndex{p[1].values, p[1].value},
                      PerIndex{p[2].values, p[2].value},
                      [&](int64_t i, int64_t n, int64_t b, auto bounds) {
                        random_run<kOrder>(xp + i, np + i, n, key, i, e.at(b), bounds);
                      });
        return;
      }
      parallel_walk_tables(layout, p, [&](int64_t i, int64_t n, const auto& t) {
        random_run_tables<kOrder>(xp + i, np + i, n, key, i, t[0], t[1], t[2]);
      });
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastadv, CPU, m) { m.impl("_random_init_kernel_", &random_init_cpu); }

}  // namespace fastadv::cpu
