// The schemas of fastadv's kernel ops, defined once for every device. These are the
// backends' entry points, not the public API: fastadv/ops.py validates the arguments,
// derives the layout and calls them (CPU impls in cpu/, CUDA impls in cuda/).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing fastadv._C runs the static registrations below; the module has no functions.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fastadv, m) {
  // x <- clamp(x + alpha*sign(grad), max(lower, x_nat-eps), min(upper, x_nat+eps)), fp32 math;
  // `order` picks that or another rounding order (params.h Order: x may be a perturbation),
  // `kinds` how eps, alpha, lower and upper are indexed (params.h Kind; [] = per example for
  // eps/alpha, per channel for the bounds).
  m.def(
      "_linf_step_kernel_(Tensor(a!) x, Tensor grad, Tensor x_nat, Tensor? eps, float eps_value, "
      "Tensor? alpha, float alpha_value, Tensor? lower, float lower_value, Tensor? upper, "
      "float upper_value, int example_size, int channel_div, int[] kinds=[], int order=0) -> ()");
  // x <- clip(Proj_{||x - x_nat||_2 <= eps}(x + alpha*grad/||grad||_2)), per example.
  m.def(
      "_l2_step_kernel_(Tensor(a!) x, Tensor grad, Tensor x_nat, Tensor? eps, float eps_value, "
      "Tensor? alpha, float alpha_value, Tensor? lower, float lower_value, Tensor? upper, "
      "float upper_value, int example_size, int channel_div) -> ()");
  // x <- clamp(x_nat + eps*U(-1, 1), combined bounds), U from Philox keyed by seed[0]; kinds
  // (eps, lower, upper) and order as for the l-inf step.
  m.def(
      "_random_init_kernel_(Tensor(a!) x, Tensor x_nat, Tensor seed, Tensor? eps, float eps_value, "
      "Tensor? lower, float lower_value, Tensor? upper, float upper_value, int example_size, "
      "int channel_div, int[] kinds=[], int order=0) -> ()");
  // Per example b: if loss[b] > best_loss[b], best_x[b] <- x[b] and best_loss[b] <- loss[b].
  m.def(
      "_keep_best_kernel_(Tensor(a!) best_x, Tensor(b!) best_loss, Tensor x, Tensor loss, "
      "int example_size) -> ()");
}
