// CUDA _linf_step_kernel_: x <- clamp(x + alpha*sign(grad), max(lower, x_nat-eps),
// min(upper, x_nat+eps)) (order 0; params.h linf_update for the other orders), elementwise in
// fp32, bit-identical to the other backends.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include "../checks.h"
#include "../op_args.h"
#include "../params.h"
#include "elementwise.cuh"

namespace fastadv {
namespace cuda {
namespace {

constexpr int kThreads = 256;

struct StepParams {
  Param eps, alpha, lower, upper;
};

// Grid-stride over 16-byte packs of x (VEC elements), single elements for the rest.
// kOrder: params.h Order. kPath: WalkPath (kAllScalar computes no example / channel index).
template <typename T, typename G, int VEC, int kOrder, int kPath>
__global__ void __launch_bounds__(kThreads)
    linf_step_kernel(T* __restrict__ x, const G* __restrict__ grad, const T* __restrict__ x_nat,
                     StepParams p, Layout L, VecSplit split) {
  for_each_pack<VEC>(L.numel, split, global_thread(), grid_threads(), [&](auto width, int64_t i) {
    constexpr int N = decltype(width)::value;
    // linf_update: a*sign(g) is exact, so x + a*s may contract to an fma (the same bits); the
    // rest is additions and clamps.
    if constexpr (kPath == kGeneral) {
      // The parameters first: the N example and channel indices are dead before the loads.
      float e[N], a[N], lo[N], hi[N];
      {
        const auto w = walk_indices<N>(L, i, p.eps, p.alpha, p.lower, p.upper);
        walk_values<N>(p.eps, w, e);
        walk_values<N>(p.alpha, w, a);
        walk_values<N>(p.lower, w, lo);
        walk_values<N>(p.upper, w, hi);
      }
      float xv[N], gv[N], nv[N];
      load_float<N>(x + i, xv);
      load_float<N>(grad + i, gv);
      load_float<N>(x_nat + i, nv);
#pragma unroll
      for (int j = 0; j < N; ++j) {
        xv[j] = linf_update<kOrder>(xv[j], gv[j], nv[j], e[j], a[j], lo[j], hi[j]);
      }
      store_float<N>(x + i, xv);
    } else {
      float xv[N], gv[N], nv[N];
      load_float<N>(x + i, xv);
      load_float<N>(grad + i, gv);
      load_float<N>(x_nat + i, nv);
      constexpr bool kMayVary = kPath == kRuns;
      auto ex = per_example<kMayVary>(L, i, per_index_of(p.eps), per_index_of(p.alpha));
      auto ch = per_channel<kMayVary>(L, i, per_index_of(p.lower), per_index_of(p.upper));
#pragma unroll
      for (int j = 0; j < N; ++j) {
        xv[j] = linf_update<kOrder>(xv[j], gv[j], nv[j], ex.value[0], ex.value[1], ch.value[0],
                                    ch.value[1]);
        ex.next();
        ch.next();
      }
      store_float<N>(x + i, xv);
    }
  });
}

template <typename T, typename G, int kOrder, int kPath>
void launch(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& x_nat,
            const StepParams& p, const Layout& L) {
  constexpr int VEC = kPackBytes / sizeof(T);
  T* xp = x.mutable_data_ptr<T>();
  const G* gp = grad.const_data_ptr<G>();
  const T* np = x_nat.const_data_ptr<T>();
  const VecSplit split = vec_split<VEC>(L.numel, static_cast<const T*>(xp), gp, np);
  const int64_t items = std::max(split.nvec, L.numel - split.nvec * VEC);
  linf_step_kernel<T, G, VEC, kOrder, kPath>
      <<<grid_size(items, kThreads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          xp, gp, np, p, L, split);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void linf_step(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& x_nat,
               const std::optional<at::Tensor>& eps, double eps_value,
               const std::optional<at::Tensor>& alpha, double alpha_value,
               const std::optional<at::Tensor>& lower, double lower_value,
               const std::optional<at::Tensor>& upper, double upper_value, int64_t example_size,
               int64_t channel_div, c10::IntArrayRef kinds, int64_t order) {
  const int64_t channels =
      checks::step_args("fastadv::_linf_step_kernel_", x, grad, x_nat, eps, alpha, lower, upper,
                        example_size, channel_div, kinds, order);
  const Layout L{x.numel(), example_size, channel_div, channels};
  if (L.numel == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const auto k = resolve_kinds<4>(kinds, checks::legacy_kinds(eps, alpha, lower, upper));
  const StepParams p{param(eps, eps_value, k[0]), param(alpha, alpha_value, k[1]),
                     param(lower, lower_value, k[2]), param(upper, upper_value, k[3])};
  const int path = walk_path({p.eps, p.alpha}, {p.lower, p.upper});
  FASTADV_DISPATCH_FLOATING_TYPES(x.scalar_type(), "_linf_step_kernel_", [&] {
    using T = scalar_t;
    FASTADV_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "_linf_step_kernel_", [&] {
      using G = scalar_t;
      dispatch_order_path(order, path, [&](auto order_constant, auto path_constant) {
        launch<T, G, decltype(order_constant)::value, decltype(path_constant)::value>(
            x, grad, x_nat, p, L);
      });
    });
  });
}

}  // namespace
}  // namespace cuda
}  // namespace fastadv

TORCH_LIBRARY_IMPL(fastadv, CUDA, m) { m.impl("_linf_step_kernel_", &fastadv::cuda::linf_step); }
