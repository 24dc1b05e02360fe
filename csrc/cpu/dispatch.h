// Dtype dispatch for the kernels: x in {fp32, fp16, bf16}, grad independently so.
#pragma once
#include <ATen/Dispatch.h>

#define FASTADV_DISPATCH_FLOAT(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)
