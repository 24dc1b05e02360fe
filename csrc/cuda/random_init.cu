// CUDA _random_init_kernel_: x <- clamp(x_nat + eps*U(-1, 1), max(lower, x_nat-eps),
// min(upper, x_nat+eps)) (order 0; params.h random_update for the other orders), U from
// Philox keyed by seed[0] with counter = flat index, so the result is bit-identical to the
// other backends whatever the launch configuration.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include "../checks.h"
#include "../op_args.h"
#include "../params.h"
#include "../philox.h"
#include "elementwise.cuh"

namespace fastadv {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// Grid-stride over 16-byte packs of x (VEC elements), single elements for the rest.
// kOrder: params.h Order. kPath: WalkPath (kAllScalar computes no example / channel index).
template <typename T, int VEC, int kOrder, int kPath>
__global__ void __launch_bounds__(kThreads)
    random_init_kernel(T* __restrict__ x, const T* __restrict__ x_nat,
                       const int64_t* __restrict__ seed, Param eps, Param lower, Param upper,
                       Layout L, VecSplit split) {
  // Read on the device, not the host: a new seed needs no sync and replays under a CUDA graph.
  const uint64_t key = static_cast<uint64_t>(*seed);
  for_each_pack<VEC>(L.numel, split, global_thread(), grid_threads(), [&](auto width, int64_t i) {
    constexpr int N = decltype(width)::value;
    // The parameters first, then the Philox rounds: the cursors' state (~28 registers with
    // per-index tensors) is dead before the N Philox streams are live. Interleaved, the
    // float kernel wanted 78 registers; under __launch_bounds__(256) ptxas held it to 64 on
    // sm_90 and spilled. This way: 48 (fp16/bf16, 8 elements a pack: 56), no spills; the
    // general loop (kGeneral: WalkIndices and a table per parameter) 48 (fp16/bf16: 64).
    float e[N], lo[N], hi[N];
    if constexpr (kPath == kGeneral) {
      const auto w = walk_indices<N>(L, i, eps, lower, upper);
      walk_values<N>(eps, w, e);
      walk_values<N>(lower, w, lo);
      walk_values<N>(upper, w, hi);
    } else {
      constexpr bool kMayVary = kPath == kRuns;
      auto ex = per_example<kMayVary>(L, i, per_index_of(eps));
      auto ch = per_channel<kMayVary>(L, i, per_index_of(lower), per_index_of(upper));
#pragma unroll
      for (int j = 0; j < N; ++j) {
        e[j] = ex.value[0];
        lo[j] = ch.value[0];
        hi[j] = ch.value[1];
        ex.next();
        ch.next();
      }
    }
    float nv[N], out[N];
    load_float<N>(x_nat + i, nv);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float u = uniform_minus_one_one(philox_first_word(key, static_cast<uint64_t>(i + j)));
      // random_update rounds e*u on its own (mul_rn: no fma contraction), the same bits as
      // the other backends.
      out[j] = random_update<kOrder>(nv[j], e[j], u, lo[j], hi[j]);
    }
    store_float<N>(x + i, out);
  });
}

template <typename T, int kOrder, int kPath>
void launch(const at::Tensor& x, const at::Tensor& x_nat, const at::Tensor& seed,
            const Param& eps, const Param& lower, const Param& upper, const Layout& L) {
  constexpr int VEC = kPackBytes / sizeof(T);
  T* xp = x.mutable_data_ptr<T>();
  const T* np = x_nat.const_data_ptr<T>();
  const VecSplit split = vec_split<VEC>(L.numel, static_cast<const T*>(xp), np);
  const int64_t items = std::max(split.nvec, L.numel - split.nvec * VEC);
  random_init_kernel<T, VEC, kOrder, kPath>
      <<<grid_size(items, kThreads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          xp, np, seed.const_data_ptr<int64_t>(), eps, lower, upper, L, split);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void random_init(const at::Tensor& x, const at::Tensor& x_nat, const at::Tensor& seed,
                 const std::optional<at::Tensor>& eps, double eps_value,
                 const std::optional<at::Tensor>& lower, double lower_value,
                 const std::optional<at::Tensor>& upper, double upper_value, int64_t example_size,
                 int64_t channel_div, c10::IntArrayRef kinds, int64_t order) {
  const int64_t channels =
      checks::random_init_args("fastadv::_random_init_kernel_", x, x_nat, seed, eps, lower,
                               upper, example_size, channel_div, kinds, order);
  const Layout L{x.numel(), example_size, channel_div, channels};
  if (L.numel == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const auto k = resolve_kinds<3>(kinds, checks::legacy_kinds(eps, lower, upper));
  const Param eps_p = param(eps, eps_value, k[0]);
  const Param lower_p = param(lower, lower_value, k[1]);
  const Param upper_p = param(upper, upper_value, k[2]);
  const int path = walk_path({eps_p}, {lower_p, upper_p});
  FASTADV_DISPATCH_FLOATING_TYPES(x.scalar_type(), "_random_init_kernel_", [&] {
    using T = scalar_t;
    // The start of order kImageViaDelta is kClamp's (params.h random_update): one kernel.
    const int64_t start_order = order == kImageViaDelta ? kClamp : order;
    dispatch_order_path(start_order, path, [&](auto order_constant, auto path_constant) {
      launch<T, decltype(order_constant)::value, decltype(path_constant)::value>(
          x, x_nat, seed, eps_p, lower_p, upper_p, L);
    });
  });
}

}  // namespace
}  // namespace cuda
}  // namespace fastadv

TORCH_LIBRARY_IMPL(fastadv, CUDA, m) {
  m.impl("_random_init_kernel_", &fastadv::cuda::random_init);
}
