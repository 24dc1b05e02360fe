// Argument checks of the kernel ops, called first by every CPU and CUDA entry point. The
// public ops (fastadv/ops.py) validate before they get here; these keep the raw registered
// ops (torch.ops.fastadv._*_kernel_) memory-safe when called directly: a tensor on another
// device (e.g. a CPU seed read on the GPU), a parameter table shorter than the batch, or a
// second tensor laid out differently from x would otherwise be read out of bounds, and an
// integer argument out of range (example_size, channel_div: `walk` and `period`) would divide
// by zero or overflow. Every rule here has its twin in fastadv/_kernel_checks.py, which checks
// the Triton launchers' arguments with the same messages (tests/ops/test_raw_op_fuzz.py
// compares the two on random calls).
// Errors name the op and the argument: ValueError for devices, shapes and layouts,
// TypeError for dtypes (the op contract's exception types).
#pragma once
#include <ATen/ATen.h>
#include <initializer_list>
#include <optional>
#include <vector>
#include "params.h"

namespace fastadv::checks {

inline bool is_kernel_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

// `ref` names the tensor written (x, or best_x for keep_best); the others follow it.
inline void same_device(const char* op, const char* name, const at::Tensor& t, const char* ref,
                        const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but ", ref,
                    " is on ", x.device(), " (all tensors must be on ", ref, "'s device)");
}

// x: the tensor written, walked flat in memory order.
inline void written(const char* op, const char* name, const at::Tensor& x) {
  TORCH_CHECK_TYPE(is_kernel_dtype(x.scalar_type()), op, ": ", name,
                   " must be float32, float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.is_non_overlapping_and_dense(), op, ": ", name,
                    " must be dense and non-overlapping (the op layer copies other layouts)");
}

// A tensor read alongside x in the same walk: same device, shape and memory order.
inline void read_like(const char* op, const char* name, const at::Tensor& t, const char* ref,
                      const at::Tensor& x, bool same_dtype) {
  same_device(op, name, t, ref, x);
  if (same_dtype) {
    TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have ", ref,
                     "'s dtype (", x.scalar_type(), "), got ", t.scalar_type());
  } else {
    TORCH_CHECK_TYPE(is_kernel_dtype(t.scalar_type()), op, ": ", name,
                     " must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
  TORCH_CHECK_VALUE(t.sizes() == x.sizes(), op, ": ", name, " has shape ", t.sizes(), " but ",
                    ref, " has shape ", x.sizes());
  for (int64_t d = 0; d < x.dim(); ++d) {  // strides of size-1 dimensions do not matter
    TORCH_CHECK_VALUE(x.size(d) == 1 || t.stride(d) == x.stride(d), op, ": ", name,
                      " has strides ", t.strides(), " but ", ref, " has strides ", x.strides(),
                      " (the kernel walks both in ", ref, "'s memory order)");
  }
}

// The flat walk's integers, checked before any arithmetic on them: the kernels divide by
// example_size and channel_div, and the CPU walk takes channel_div * channels as the period
// of the per-channel bounds. The rules (fastadv/_kernel_checks.py has the same for Triton):
//   example_size >= 1 and channel_div >= 1, always;
//   for a non-empty x, example_size divides x's numel (so example_size <= numel).
// Returns the number of examples, or -1 for an empty x (nothing is read: no sizes to check).
inline int64_t walk(const char* op, const at::Tensor& x, int64_t example_size,
                    int64_t channel_div) {
  TORCH_CHECK_VALUE(example_size >= 1, op, ": example_size must be >= 1, got ", example_size);
  TORCH_CHECK_VALUE(channel_div >= 1, op, ": channel_div must be >= 1, got ", channel_div);
  const int64_t numel = x.numel();
  if (numel == 0) return -1;
  TORCH_CHECK_VALUE(numel % example_size == 0, op, ": example_size must divide x's ", numel,
                    " elements, got ", example_size);
  return numel / example_size;
}

// The channel period: element i is in channel (i / channel_div) % channels, with `channels`
// the length of the bound tables (1 without). channel_div * channels must divide
// example_size, as it does for every layout the op layer derives (contiguous: H*W * C =
// C*H*W; channels_last: 1 * C), so that the channel pattern restarts with each example.
// Compared as channel_div <= example_size / channels first: the product cannot overflow.
inline void period(const char* op, int64_t example_size, int64_t channel_div, int64_t channels,
                   const char* table) {
  const bool fits = channel_div <= example_size / channels &&
                    example_size % (channel_div * channels) == 0;
  if (table == nullptr) {
    TORCH_CHECK_VALUE(fits, op, ": channel_div (", channel_div, ") must divide example_size (",
                      example_size, ")");
  } else {
    TORCH_CHECK_VALUE(fits, op, ": channel_div (", channel_div, ") * channels (", channels,
                      ", the length of ", table, ") must divide example_size (", example_size,
                      ")");
  }
}

// A per-example or per-channel table: fp32, contiguous, on x's device; `length` entries
// unless length is -1.
inline void table(const char* op, const char* name, const std::optional<at::Tensor>& t,
                  const at::Tensor& x, int64_t length) {
  if (!t.has_value()) return;
  same_device(op, name, *t, "x", x);
  TORCH_CHECK_TYPE(t->scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ",
                   t->scalar_type());
  TORCH_CHECK_VALUE(t->is_contiguous(), op, ": ", name, " must be contiguous");
  TORCH_CHECK_VALUE(length < 0 || t->numel() == length, op, ": ", name,
                    " must have one value per example (", length, "), got ", t->numel());
}

// Per-channel lower/upper index the same channels (`numel` of whichever is given), so they
// must agree in length, and hold at least one; their length sets the channel period.
inline int64_t bounds(const char* op, const at::Tensor& x,
                      const std::optional<at::Tensor>& lower,
                      const std::optional<at::Tensor>& upper, int64_t examples,
                      int64_t example_size, int64_t channel_div) {
  table(op, "lower", lower, x, -1);
  table(op, "upper", upper, x, -1);
  if (examples < 0) return 1;
  for (const auto* t : {&lower, &upper}) {
    TORCH_CHECK_VALUE(!t->has_value() || (*t)->numel() >= 1, op, ": ",
                      t == &lower ? "lower" : "upper",
                      " must hold one value per channel, got none");
  }
  TORCH_CHECK_VALUE(!lower.has_value() || !upper.has_value() || lower->numel() == upper->numel(),
                    op, ": lower has ", lower.has_value() ? lower->numel() : 0,
                    " channels but upper has ", upper.has_value() ? upper->numel() : 0);
  const char* name = lower.has_value() ? "lower" : upper.has_value() ? "upper" : nullptr;
  const int64_t channels = lower.has_value() ? lower->numel()
                           : upper.has_value() ? upper->numel() : 1;
  period(op, example_size, channel_div, channels, name);
  return channels;
}

// The kinds an empty `kinds` stands for: eps and alpha per example, the bounds per channel.
inline std::vector<int64_t> legacy_kinds(const std::optional<at::Tensor>& eps,
                                         const std::optional<at::Tensor>& alpha,
                                         const std::optional<at::Tensor>& lower,
                                         const std::optional<at::Tensor>& upper) {
  return {eps.has_value() ? kExample : kScalar, alpha.has_value() ? kExample : kScalar,
          lower.has_value() ? kChannel : kScalar, upper.has_value() ? kChannel : kScalar};
}

// The same for the random start's (eps, lower, upper).
inline std::vector<int64_t> legacy_kinds(const std::optional<at::Tensor>& eps,
                                         const std::optional<at::Tensor>& lower,
                                         const std::optional<at::Tensor>& upper) {
  return {eps.has_value() ? kExample : kScalar, lower.has_value() ? kChannel : kScalar,
          upper.has_value() ? kChannel : kScalar};
}

// The `kinds` and `order` of _linf_step_kernel_ and _random_init_kernel_ (params.h Kind,
// Order): every parameter's tensor sized for its kind, and their channel counts agreeing.
// `names`, `tables` and `kinds` are parallel; an empty `kinds` is the older form, checked by
// the callers as before. Returns the channel count the kernels index with (1 without).
inline int64_t kinded(const char* op, const at::Tensor& x,
                      std::initializer_list<const char*> names,
                      std::initializer_list<const std::optional<at::Tensor>*> tables,
                      c10::IntArrayRef kinds, int64_t order, int64_t examples,
                      int64_t example_size, int64_t channel_div) {
  TORCH_CHECK_VALUE(order >= 0 && order < kOrders, op, ": order must be 0, 1, 2 or 3, got ",
                    order);
  TORCH_CHECK_VALUE(kinds.size() == names.size(), op, ": kinds must hold ", names.size(),
                    " values (one per parameter) or none, got ", kinds.size());
  int64_t channels = -1;
  const char* channel_table = nullptr;
  auto name = names.begin();
  auto table_it = tables.begin();
  for (size_t k = 0; k < kinds.size(); ++k, ++name, ++table_it) {
    const std::optional<at::Tensor>& t = **table_it;
    const int64_t kind = kinds[k];
    TORCH_CHECK_VALUE(kind >= 0 && kind < kKinds, op, ": the kind of ", *name,
                      " must be 0 to 4, got ", kind);
    TORCH_CHECK_VALUE((kind == kScalar) == !t.has_value(), op, ": ", *name,
                      t.has_value() ? " is a tensor but its kind is 0 (a scalar)"
                                    : " has a tensor kind but no tensor");
    if (!t.has_value()) continue;
    if (kind == kElement) {
      read_like(op, *name, *t, "x", x, /*same_dtype=*/false);
      TORCH_CHECK_TYPE(t->scalar_type() == at::kFloat, op, ": ", *name,
                       " must be float32, got ", t->scalar_type());
      continue;
    }
    table(op, *name, t, x, -1);
    if (examples < 0) continue;
    const int64_t n = t->numel();
    if (kind == kExample) {
      TORCH_CHECK_VALUE(n == examples, op, ": ", *name, " must have one value per example (",
                        examples, "), got ", n);
      continue;
    }
    int64_t count = n;
    if (kind == kExampleChannel) {
      TORCH_CHECK_VALUE(n >= examples && n % examples == 0, op, ": ", *name,
                        " must have one value per example and channel (", examples,
                        " examples), got ", n);
      count = n / examples;
    }
    TORCH_CHECK_VALUE(count >= 1, op, ": ", *name, " must hold one value per channel, got none");
    TORCH_CHECK_VALUE(channels < 0 || count == channels, op, ": ", *name, " has ", count,
                      " channels but ", channel_table, " has ", channels);
    channels = count;
    channel_table = *name;
  }
  if (examples < 0) return 1;
  period(op, example_size, channel_div, channels < 0 ? 1 : channels, channel_table);
  return channels < 0 ? 1 : channels;
}

// _linf_step_kernel_ and _l2_step_kernel_ (which has no kinds or order). Returns the
// channel count of the walk.
inline int64_t step_args(const char* op, const at::Tensor& x, const at::Tensor& grad,
                         const at::Tensor& x_nat, const std::optional<at::Tensor>& eps,
                         const std::optional<at::Tensor>& alpha,
                         const std::optional<at::Tensor>& lower,
                         const std::optional<at::Tensor>& upper, int64_t example_size,
                         int64_t channel_div, c10::IntArrayRef kinds = {}, int64_t order = 0) {
  written(op, "x", x);
  read_like(op, "grad", grad, "x", x, /*same_dtype=*/false);
  read_like(op, "x_nat", x_nat, "x", x, /*same_dtype=*/true);
  const int64_t examples = walk(op, x, example_size, channel_div);
  if (!kinds.empty() || order != 0) {
    return kinded(op, x, {"eps", "alpha", "lower", "upper"}, {&eps, &alpha, &lower, &upper},
                  kinds.empty() ? c10::IntArrayRef(legacy_kinds(eps, alpha, lower, upper)) : kinds,
                  order, examples, example_size, channel_div);
  }
  table(op, "eps", eps, x, examples);
  table(op, "alpha", alpha, x, examples);
  return bounds(op, x, lower, upper, examples, example_size, channel_div);
}

// _random_init_kernel_: the seed is read where x is (on the GPU, without a host sync).
inline int64_t random_init_args(const char* op, const at::Tensor& x, const at::Tensor& x_nat,
                                const at::Tensor& seed, const std::optional<at::Tensor>& eps,
                                const std::optional<at::Tensor>& lower,
                                const std::optional<at::Tensor>& upper, int64_t example_size,
                                int64_t channel_div, c10::IntArrayRef kinds = {},
                                int64_t order = 0) {
  written(op, "x", x);
  read_like(op, "x_nat", x_nat, "x", x, /*same_dtype=*/true);
  same_device(op, "seed", seed, "x", x);
  TORCH_CHECK_TYPE(seed.scalar_type() == at::kLong, op, ": seed must be int64, got ",
                   seed.scalar_type());
  TORCH_CHECK_VALUE(seed.numel() >= 1, op, ": seed must hold one value, got an empty tensor");
  const int64_t examples = walk(op, x, example_size, channel_div);
  if (!kinds.empty() || order != 0) {
    return kinded(op, x, {"eps", "lower", "upper"}, {&eps, &lower, &upper},
                  kinds.empty() ? c10::IntArrayRef(legacy_kinds(eps, lower, upper)) : kinds,
                  order, examples, example_size, channel_div);
  }
  table(op, "eps", eps, x, examples);
  return bounds(op, x, lower, upper, examples, example_size, channel_div);
}

// _keep_best_kernel_: best_loss and loss hold one value per example, in one dtype.
inline void keep_best_args(const char* op, const at::Tensor& best_x, const at::Tensor& best_loss,
                           const at::Tensor& x, const at::Tensor& loss, int64_t example_size) {
  written(op, "best_x", best_x);
  read_like(op, "x", x, "best_x", best_x, /*same_dtype=*/true);
  const int64_t examples = walk(op, best_x, example_size, /*channel_div=*/1);
  for (const auto* t : {&best_loss, &loss}) {
    const char* name = t == &loss ? "loss" : "best_loss";
    same_device(op, name, *t, "best_x", best_x);
    TORCH_CHECK_TYPE(is_kernel_dtype(t->scalar_type()), op, ": ", name,
                     " must be float32, float16 or bfloat16, got ", t->scalar_type());
    TORCH_CHECK_VALUE(t->is_contiguous(), op, ": ", name, " must be contiguous");
    TORCH_CHECK_VALUE(examples < 0 || t->numel() == examples, op, ": ", name,
                      " must have one value per example (", examples, "), got ", t->numel());
  }
  TORCH_CHECK_TYPE(loss.scalar_type() == best_loss.scalar_type(), op,
                   ": loss must have best_loss's dtype (", best_loss.scalar_type(), "), got ",
                   loss.scalar_type());
  // With empty examples (e.g. [B, 0]) the losses alone say how many there are.
  TORCH_CHECK_VALUE(loss.numel() == best_loss.numel(), op, ": loss has ", loss.numel(),
                    " values but best_loss has ", best_loss.numel());
}

}  // namespace fastadv::checks
