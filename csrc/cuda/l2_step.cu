// CUDA _l2_step_kernel_: per example, x <- clip(Proj_{||x - x_nat||_2 <= eps}(x + alpha *
// grad/||grad||_2)) with NaN gradients read as 0, in fp32. One block per example, three passes.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <cub/block/block_reduce.cuh>
#include "../checks.h"
#include "../op_args.h"
#include "../params.h"
#include "elementwise.cuh"

namespace fastadv {
namespace cuda {
namespace {

constexpr int kThreads = 512;  // large examples (e.g. 3x224x224) with small batches need wide blocks

__device__ __forceinline__ float nan_to_zero(float g) { return isnan(g) ? 0.f : g; }

// Pass 1: ||g'||^2 -> factor = alpha/||g'||. Pass 2: ||v - x_nat||^2 with v = x + g'*factor.
// Pass 3: project v onto the ball, clip to [lower, upper], store. Each pass reloads x, grad
// and x_nat (x is only written in pass 3, each element by the thread that read it).
template <typename T, typename G, int VEC>
__global__ void __launch_bounds__(kThreads)
    l2_step_kernel(T* __restrict__ x, const G* __restrict__ grad, const T* __restrict__ x_nat,
                   BallParams p, Layout L) {
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage scratch;
  __shared__ float s_factor, s_dist;

  const int64_t b = blockIdx.x;
  const int64_t base = b * L.example_size;
  const int64_t n = L.example_size;
  T* xe = x + base;
  const G* ge = grad + base;
  const T* ne = x_nat + base;
  const VecSplit split = vec_split<VEC>(n, static_cast<const T*>(xe), ge, ne);
  const int tid = threadIdx.x;
  const float e = p.eps.at(b), a = p.alpha.at(b);

  float acc = 0.f;
  for_each_pack<VEC>(n, split, tid, kThreads, [&](auto width, int64_t i) {
    constexpr int N = decltype(width)::value;
    float gv[N];
    load_float<N>(ge + i, gv);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float g = nan_to_zero(gv[j]);
      acc += g * g;
    }
  });
  float total = Reduce(scratch).Sum(acc);  // valid in thread 0 only
  if (tid == 0) {
    const float gn = sqrtf(total);
    s_factor = gn > 0.f ? a / gn : 0.f;
  }
  __syncthreads();  // also frees `scratch` for the second reduction
  const float factor = s_factor;

  // The step, identical in passes 2 and 3.
  auto step = [factor](float xv, float gv) {
    return __fadd_rn(xv, __fmul_rn(nan_to_zero(gv), factor));
  };

  acc = 0.f;
  for_each_pack<VEC>(n, split, tid, kThreads, [&](auto width, int64_t i) {
    constexpr int N = decltype(width)::value;
    float xv[N], gv[N], nv[N];
    load_float<N>(xe + i, xv);
    load_float<N>(ge + i, gv);
    load_float<N>(ne + i, nv);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float d = step(xv[j], gv[j]) - nv[j];
      acc += d * d;
    }
  });
  total = Reduce(scratch).Sum(acc);
  if (tid == 0) s_dist = sqrtf(total);
  __syncthreads();
  const float dn = s_dist;
  const bool project = !(dn <= e);  // a NaN distance or eps projects, to NaN
  const float scale = project ? e / dn : 0.f;

  for_each_pack<VEC>(n, split, tid, kThreads, [&](auto width, int64_t i) {
    constexpr int N = decltype(width)::value;
    float xv[N], gv[N], nv[N];
    load_float<N>(xe + i, xv);
    load_float<N>(ge + i, gv);
    load_float<N>(ne + i, nv);
    auto ch = per_channel<true>(L, base + i, p.lower, p.upper);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float v = step(xv[j], gv[j]);
      const float out = project ? __fadd_rn(nv[j], __fmul_rn(v - nv[j], scale)) : v;
      xv[j] = clamp_nan(out, ch.value[0], ch.value[1]);
      ch.next();
    }
    store_float<N>(xe + i, xv);
  });
}

template <typename T, typename G>
void launch(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& x_nat,
            const BallParams& p, const Layout& L) {
  constexpr int VEC = kPackBytes / sizeof(T);
  const int64_t examples = L.numel / L.example_size;
  l2_step_kernel<T, G, VEC><<<example_blocks("fastadv::_l2_step_kernel_", examples), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      x.mutable_data_ptr<T>(), grad.const_data_ptr<G>(), x_nat.const_data_ptr<T>(), p, L);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void l2_step(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& x_nat,
             const std::optional<at::Tensor>& eps, double eps_value,
             const std::optional<at::Tensor>& alpha, double alpha_value,
             const std::optional<at::Tensor>& lower, double lower_value,
             const std::optional<at::Tensor>& upper, double upper_value, int64_t example_size,
             int64_t channel_div) {
  checks::step_args("fastadv::_l2_step_kernel_", x, grad, x_nat, eps, alpha, lower, upper,
                     example_size, channel_div);
  const Layout L = make_layout(x, example_size, channel_div, lower, upper);
  if (L.numel == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const BallParams p{per_index(eps, eps_value), per_index(alpha, alpha_value),
                     per_index(lower, lower_value), per_index(upper, upper_value)};
  FASTADV_DISPATCH_FLOATING_TYPES(x.scalar_type(), "_l2_step_kernel_", [&] {
    using T = scalar_t;
    FASTADV_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "_l2_step_kernel_", [&] {
      launch<T, scalar_t>(x, grad, x_nat, p, L);
    });
  });
}

}  // namespace
}  // namespace cuda
}  // namespace fastadv

TORCH_LIBRARY_IMPL(fastadv, CUDA, m) { m.impl("_l2_step_kernel_", &fastadv::cuda::l2_step); }
