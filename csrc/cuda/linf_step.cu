// CUDA _linf_step_kernel_: x <- clamp(x + alpha*sign(grad), max(lower, x_nat-eps),
// min(upper, x_nat+eps)), elementwise in fp32, bit-identical to the other backends.
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

// Grid-stride over 16-byte packs of x (VEC elements), single elements for the rest.
// kPerIndex: some parameter is a tensor (otherwise no example / channel index is computed).
template <typename T, typename G, int VEC, bool kPerIndex>
__global__ void __launch_bounds__(kThreads)
    linf_step_kernel(T* __restrict__ x, const G* __restrict__ grad, const T* __restrict__ x_nat,
                     BallParams p, Layout L, VecSplit split) {
  for_each_pack<VEC>(L.numel, split, global_thread(), grid_threads(), [&](auto width, int64_t i) {
    constexpr int N = decltype(width)::value;
    float xv[N], gv[N], nv[N];
    load_float<N>(x + i, xv);
    load_float<N>(grad + i, gv);
    load_float<N>(x_nat + i, nv);
    auto ex = per_example<kPerIndex>(L, i, p.eps, p.alpha);
    auto ch = per_channel<kPerIndex>(L, i, p.lower, p.upper);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float e = ex.value[0], a = ex.value[1];
      const float lo = combined_lower(nv[j], e, ch.value[0]);
      const float hi = combined_upper(nv[j], e, ch.value[1]);
      // Explicit rounding: no fma contraction, the same bits as the other backends.
      const float v = __fadd_rn(xv[j], __fmul_rn(a, sign_or_zero(gv[j])));
      xv[j] = clamp_nan(v, lo, hi);
      ex.next();
      ch.next();
    }
    store_float<N>(x + i, xv);
  });
}

template <typename T, typename G>
void launch(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& x_nat,
            const BallParams& p, const Layout& L) {
  constexpr int VEC = kPackBytes / sizeof(T);
  T* xp = x.mutable_data_ptr<T>();
  const G* gp = grad.const_data_ptr<G>();
  const T* np = x_nat.const_data_ptr<T>();
  const VecSplit split = vec_split<VEC>(L.numel, static_cast<const T*>(xp), gp, np);
  const int64_t items = std::max(split.nvec, L.numel - split.nvec * VEC);
  const bool varies =
      p.eps.varies() || p.alpha.varies() || p.lower.varies() || p.upper.varies();
  auto* kernel = varies ? linf_step_kernel<T, G, VEC, true> : linf_step_kernel<T, G, VEC, false>;
  kernel<<<grid_size(items, kThreads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      xp, gp, np, p, L, split);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void linf_step(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& x_nat,
               const std::optional<at::Tensor>& eps, double eps_value,
               const std::optional<at::Tensor>& alpha, double alpha_value,
               const std::optional<at::Tensor>& lower, double lower_value,
               const std::optional<at::Tensor>& upper, double upper_value, int64_t example_size,
               int64_t channel_div) {
  checks::step_args("fastadv::_linf_step_kernel_", x, grad, x_nat, eps, alpha, lower, upper,
                     example_size, channel_div);
  const Layout L = make_layout(x, example_size, channel_div, lower, upper);
  if (L.numel == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const BallParams p{per_index(eps, eps_value), per_index(alpha, alpha_value),
                     per_index(lower, lower_value), per_index(upper, upper_value)};
  FASTADV_DISPATCH_FLOATING_TYPES(x.scalar_type(), "_linf_step_kernel_", [&] {
    using T = scalar_t;
    FASTADV_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "_linf_step_kernel_", [&] {
      launch<T, scalar_t>(x, grad, x_nat, p, L);
    });
  });
}

}  // namespace
}  // namespace cuda
}  // namespace fastadv

TORCH_LIBRARY_IMPL(fastadv, CUDA, m) { m.impl("_linf_step_kernel_", &fastadv::cuda::linf_step); }
