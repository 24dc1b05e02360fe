// CUDA _keep_best_kernel_: per example b, if loss[b] > best_loss[b] then best_x[b] <- x[b]
// and best_loss[b] <- loss[b]. One block per example; unimproved blocks touch nothing else.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <type_traits>
#include "../checks.h"
#include "elementwise.cuh"

namespace fastadv {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// E: an unsigned integer as wide as x's element; the copy moves bits, whatever the dtype.
template <typename E, typename Loss, int VEC>
__global__ void __launch_bounds__(kThreads)
    keep_best_kernel(E* __restrict__ best_x, Loss* __restrict__ best_loss,
                     const E* __restrict__ x, const Loss* __restrict__ loss, int64_t example_size) {
  __shared__ bool s_improved;
  const int64_t b = blockIdx.x;
  // Only thread 0 touches best_loss[b]: any other reader would race with its write.
  if (threadIdx.x == 0) {
    const Loss l = loss[b];
    // Strict: a NaN loss never wins.
    s_improved = static_cast<float>(l) > static_cast<float>(best_loss[b]);
    if (s_improved) best_loss[b] = l;
  }
  __syncthreads();
  if (!s_improved) return;

  E* dst = best_x + b * example_size;
  const E* src = x + b * example_size;
  const VecSplit split = vec_split<VEC>(example_size, static_cast<const E*>(dst), src);
  for_each_pack<VEC>(example_size, split, threadIdx.x, kThreads, [&](auto width, int64_t i) {
    constexpr int N = decltype(width)::value;
    *reinterpret_cast<Pack<E, N>*>(dst + i) = *reinterpret_cast<const Pack<E, N>*>(src + i);
  });
}

template <typename E, typename Loss>
void launch(const at::Tensor& best_x, const at::Tensor& best_loss, const at::Tensor& x,
            const at::Tensor& loss, int64_t example_size) {
  constexpr int VEC = kPackBytes / sizeof(E);
  // One block per loss: with empty examples ([B, 0]) the losses still update, nothing is copied.
  const int64_t examples = best_loss.numel();
  keep_best_kernel<E, Loss, VEC>
      <<<example_blocks("fastadv::_keep_best_kernel_", examples), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          static_cast<E*>(best_x.mutable_data_ptr()),
          best_loss.mutable_data_ptr<Loss>(), static_cast<const E*>(x.const_data_ptr()),
          loss.const_data_ptr<Loss>(), x.numel() == 0 ? 0 : example_size);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void keep_best(const at::Tensor& best_x, const at::Tensor& best_loss, const at::Tensor& x,
               const at::Tensor& loss, int64_t example_size) {
  checks::keep_best_args("fastadv::_keep_best_kernel_", best_x, best_loss, x, loss, example_size);
  if (best_loss.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  FASTADV_DISPATCH_FLOATING_TYPES(x.scalar_type(), "_keep_best_kernel_", [&] {
    using E = std::conditional_t<sizeof(scalar_t) == 2, uint16_t, uint32_t>;
    FASTADV_DISPATCH_FLOATING_TYPES(loss.scalar_type(), "_keep_best_kernel_", [&] {
      launch<E, scalar_t>(best_x, best_loss, x, loss, example_size);
    });
  });
}

}  // namespace
}  // namespace cuda
}  // namespace fastadv

TORCH_LIBRARY_IMPL(fastadv, CUDA, m) { m.impl("_keep_best_kernel_", &fastadv::cuda::keep_best); }
