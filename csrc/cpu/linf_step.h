// The CPU l-inf step for callers that have checked its arguments themselves (the fast path
// of fastadv.pgd_, fast_step.cpp); the registered op checks them in linf_step.cpp.
#pragma once
#include <ATen/ATen.h>

namespace fastadv::cpu {

// x <- clamp(x + alpha*sign(grad), max(lower, x_nat-eps), min(upper, x_nat+eps)) with one
// eps, alpha, lower and upper for every element. x, grad, x_nat: CPU, one shape and one set of
// strides, x non-overlapping and dense; x and x_nat in one kernel dtype, grad in any.
void linf_step_uniform(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& x_nat,
                       double eps, double alpha, double lower, double upper);

}  // namespace fastadv::cpu
