// CPU: the batched-restart reduction. Per example, a strictly higher loss replaces the kept
// candidate (so a NaN loss never wins and ties keep the earlier one).
#include <ATen/ATen.h>
#include <torch/library.h>
#include <ATen/Parallel.h>
#include <cstring>
#include "../checks.h"
#include "dispatch.h"

namespace fastadv::cpu {
namespace {

void keep_best_cpu(const at::Tensor& best_x, const at::Tensor& best_loss, const at::Tensor& x,
                   const at::Tensor& loss, int64_t example_size) {
  checks::keep_best_args("fastadv::_keep_best_kernel_", best_x, best_loss, x, loss, example_size);
  const int64_t examples = best_loss.numel();
  if (examples == 0) return;
  // Empty examples ([B, 0]): the losses still update, nothing is copied.
  const int64_t example_bytes =
      x.numel() == 0 ? 0 : example_size * static_cast<int64_t>(x.element_size());
  char* dst = static_cast<char*>(best_x.data_ptr());
  const char* src = static_cast<const char*>(x.const_data_ptr());
  FASTADV_DISPATCH_FLOAT(loss.scalar_type(), "keep_best_cpu", [&] {
    scalar_t* best = best_loss.data_ptr<scalar_t>();
    const scalar_t* candidate = loss.const_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, example_bytes));
    at::parallel_for(0, examples, grain, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        if (!(static_cast<float>(candidate[b]) > static_cast<float>(best[b]))) continue;
        std::memcpy(dst + b * example_bytes, src + b * example_bytes, example_bytes);
        best[b] = candidate[b];
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastadv, CPU, m) { m.impl("_keep_best_kernel_", &keep_best_cpu); }

}  // namespace fastadv::cpu
