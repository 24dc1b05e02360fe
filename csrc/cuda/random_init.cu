// CUDA _random_init_kernel_: x <- clamp(x_nat + eps*U(-1, 1), max(lower, x_nat-eps),
// min(upper, x_nat+eps)), U from Philox keyed by seed[0] with counter = flat index, so the
// result is bit-identical to the other backends whatever the launch configuration.
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
// kPerIndex: some parameter is a tensor (otherwise no example / channel index is computed).
template <typename T, int VEC, bool kPerIndex>
__global__ void __launch_bounds__(kThreads)
    random_init_kernel(T* __restrict__ x, const T* __restrict__ x_nat,
                       const int64_t* __restrict__ seed, PerIndex eps, PerIndex lower,
                       PerIndex upper, Layout L, VecSplit split) {
  // Read on the device, not the host: a new seed needs no sync and replays under a CUDA graph.
  const uint64_t key = static_cast<uint64_t>(*seed);
  for_each_pack<VEC>(L.numel, split, global_thread(), grid_threads(), [&](auto width, int64_t i) {
    constexpr int N = decltype(width)::value;
    // The parameters first, then the Philox rounds: the cursors' state (~28 registers with
    // per-index tensors) is dead before the N Philox streams are live. Interleaved, the
    // float kernel wanted 78 registers; under __launch_bounds__(256) ptxas held it to 64 on
    // sm_90 and spilled. This way: 48 (fp16/bf16, 8 elements a pack: 56), no spills.
    float e[N], lo[N], hi[N];
    {
      auto ex = per_example<kPerIndex>(L, i, eps);
      auto ch = per_channel<kPerIndex>(L, i, lower, upper);
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
      // Explicit rounding: no fma contraction, the same bits as the other backends.
      const float v = __fadd_rn(nv[j], __fmul_rn(e[j], u));
      out[j] = clamp_nan(v, combined_lower(nv[j], e[j], lo[j]),
                         combined_upper(nv[j], e[j], hi[j]));
    }
    store_float<N>(x + i, out);
  });
}

template <typename T>
void launch(const at::Tensor& x, const at::Tensor& x_nat, const at::Tensor& seed,
            const PerIndex& eps, const PerIndex& lower, const PerIndex& upper, const Layout& L) {
  constexpr int VEC = kPackBytes / sizeof(T);
  T* xp = x.mutable_data_ptr<T>();
  const T* np = x_nat.const_data_ptr<T>();
  const VecSplit split = vec_split<VEC>(L.numel, static_cast<const T*>(xp), np);
  const int64_t items = std::max(split.nvec, L.numel - split.nvec * VEC);
  const bool varies = eps.varies() || lower.varies() || upper.varies();
  auto* kernel = varies ? random_init_kernel<T, VEC, true> : random_init_kernel<T, VEC, false>;
  kernel<<<grid_size(items, kThreads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      xp, np, seed.const_data_ptr<int64_t>(), eps, lower, upper, L, split);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void random_init(const at::Tensor& x, const at::Tensor& x_nat, const at::Tensor& seed,
                 const std::optional<at::Tensor>& eps, double eps_value,
                 const std::optional<at::Tensor>& lower, double lower_value,
                 const std::optional<at::Tensor>& upper, double upper_value, int64_t example_size,
                 int64_t channel_div) {
  checks::random_init_args("fastadv::_random_init_kernel_", x, x_nat, seed, eps, lower, upper,
                           example_size, channel_div);
  const Layout L = make_layout(x, example_size, channel_div, lower, upper);
  if (L.numel == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  FASTADV_DISPATCH_FLOATING_TYPES(x.scalar_type(), "_random_init_kernel_", [&] {
    launch<scalar_t>(x, x_nat, seed, per_index(eps, eps_value), per_index(lower, lower_value),
                     per_index(upper, upper_value), L);
  });
}

}  // namespace
}  // namespace cuda
}  // namespace fastadv

TORCH_LIBRARY_IMPL(fastadv, CUDA, m) {
  m.impl("_random_init_kernel_", &fastadv::cuda::random_init);
}
