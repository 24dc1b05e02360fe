// fastadv._C._linf_step_fast: the common call of fastadv.pgd_ in one C++ call. That call
// (plain CPU tensors, Python-number eps/alpha/lower/upper, norm="linf", eager, the C++ backend
// chosen) spends ~14 µs on a 2x3x4x4 tensor in the Python checks and the dispatcher, 13 times
// a torch.add (~1.1 µs); here it makes the same checks and runs the same kernel in ~0.3 µs.
// Anything else, every bad argument included, returns False having written nothing, and
// fastadv.pgd_ takes its Python path, which raises its usual errors. A raw CPython
// METH_FASTCALL function rather than pybind11: pybind11's argument casters alone cost more
// than the kernel on such a tensor.
#include <Python.h>
#include <ATen/ATen.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <string>
#include "../checks.h"
#include "fast_step.h"
#include "linf_step.h"

namespace fastadv::cpu {
namespace {

// The dispatch keys of a dense CPU tensor made outside inference mode. Any other key (sparse,
// nested, mkldnn, meta, a negative view, a functional wrapper, an inference tensor's smaller
// set) means semantics that the raw kernel does not know.
c10::DispatchKeySet plain_cpu_keys() {
  constexpr auto cpu = c10::BackendComponent::CPUBit;
  return c10::DispatchKeySet(c10::DispatchKey::CPU) |
         c10::getAutogradRelatedKeySetFromBackend(cpu) |
         c10::getAutocastRelatedKeySetFromBackend(cpu);
}

// The tensor of an exact torch.Tensor (no subclass, no Parameter, as ops._plain_eager) with
// plain CPU keys, or nullptr.
const at::Tensor* plain_tensor(PyObject* obj) {
  static const c10::DispatchKeySet keys = plain_cpu_keys();
  if (Py_TYPE(obj) != reinterpret_cast<PyTypeObject*>(THPVariableClass)) return nullptr;
  const at::Tensor& t = THPVariable_Unpack(obj);
  return t.defined() && t.key_set() == keys ? &t : nullptr;
}

// Eager with nothing that must see the op, as ops._plain_eager: no TorchDispatchMode (fake
// tensors, make_fx), no TorchFunctionMode, and the thread's default dispatch keys (none of
// functorch's transforms, functionalization, inference mode or autocast).
bool plain_eager() {
  const c10::impl::LocalDispatchKeySet tls = c10::impl::tls_local_dispatch_key_set();
  return tls.included_ == c10::default_included_set &&
         tls.excluded_ == c10::default_excluded_set &&
         c10::impl::TorchDispatchModeTLS::stack_len() == 0 &&
         !at::impl::torch_function_mode_enabled();
}

// _checks.step_tensors for the kernels' dtypes (float64 runs the reference), with the three
// tensors in one dense layout (the op layer copies others into one).
bool one_walk(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& x_nat) {
  return checks::is_kernel_dtype(x.scalar_type()) && x_nat.scalar_type() == x.scalar_type() &&
         checks::is_kernel_dtype(grad.scalar_type()) && x.dim() > 0 &&
         grad.sizes() == x.sizes() && x_nat.sizes() == x.sizes() &&
         grad.strides() == x.strides() && x_nat.strides() == x.strides() &&
         x.is_non_overlapping_and_dense();
}

// A Python float or int (not a bool), read as the Python path reads it (float(value)); false
// for anything else, or an int beyond a double (the Python path raises its OverflowError).
bool number(PyObject* obj, double* out) {
  if (PyFloat_CheckExact(obj)) {
    *out = PyFloat_AS_DOUBLE(obj);
    return true;
  }
  if (!PyLong_CheckExact(obj)) return false;
  *out = PyLong_AsDouble(obj);
  if (*out == -1.0 && PyErr_Occurred()) {
    PyErr_Clear();
    return false;
  }
  return true;
}

bool is_str(PyObject* obj, const char* text) {
  return PyUnicode_CheckExact(obj) && PyUnicode_CompareWithASCIIString(obj, text) == 0;
}

// The key backends.select looks up for CPU linf_step: ("cpu", "linf_step", FASTADV_BACKEND or
// None), rebuilt only when the variable changes. getenv sees what os.environ sets (CPython
// calls putenv), for ~0.05 µs where os.environ.get costs ~0.6 µs.
PyObject* choice_key() {
  static PyObject* key = nullptr;
  static std::string key_env;
  static bool key_env_set = false;
  const char* env = std::getenv("FASTADV_BACKEND");
  if (key != nullptr && (env != nullptr) == key_env_set && (env == nullptr || key_env == env)) {
    return key;
  }
  PyObject* value = env != nullptr ? PyUnicode_DecodeFSDefault(env) : Py_None;
  if (value == nullptr) return nullptr;
  PyObject* fresh = Py_BuildValue(env != nullptr ? "(ssN)" : "(ssO)", "cpu", "linf_step", value);
  if (fresh == nullptr) return nullptr;
  Py_XDECREF(key);
  key = fresh;
  key_env_set = env != nullptr;
  key_env = env != nullptr ? env : "";
  return key;
}

// Whether backends.select(cpu, "linf_step") returns "cpp", read from its cache (`chosen`,
// backends._chosen). Not chosen yet for this FASTADV_BACKEND: false, and the Python path
// chooses, with the choice's errors and warnings.
bool cpp_chosen(PyObject* chosen) {
  if (!PyDict_CheckExact(chosen)) return false;
  PyObject* key = choice_key();
  PyObject* backend = key != nullptr ? PyDict_GetItemWithError(chosen, key) : nullptr;
  if (backend == nullptr) {
    PyErr_Clear();
    return false;
  }
  return is_str(backend, "cpp");
}

// Whether the fast path takes this call: every check of the Python path passes, and it would
// run the C++ kernel on these tensors as they are.
bool handled(PyObject* const* args, const at::Tensor* (&tensors)[3], double (&params)[4]) {
  for (int i = 0; i < 3; ++i) {
    tensors[i] = plain_tensor(args[i]);
    if (tensors[i] == nullptr) return false;
  }
  for (int i = 0; i < 4; ++i) {
    if (!number(args[3 + i], &params[i])) return false;
  }
  const double eps = params[0], alpha = params[1], lower = params[2], upper = params[3];
  // The checks of _checks.float_ball; each comparison is false for a NaN.
  if (!(eps >= 0 && std::isfinite(alpha) && lower <= upper && is_str(args[7], "linf"))) {
    return false;
  }
  const at::Tensor &x = *tensors[0], &grad = *tensors[1], &x_nat = *tensors[2];
  // A tensor that requires grad is stepped as under no_grad (like an optimizer step): the
  // Python path does the same, and the version bump below tells autograd of the write.
  return plain_eager() && one_walk(x, grad, x_nat) && cpp_chosen(args[8]);
}

// Large steps run without the GIL, as torch's own ops do; a small one is not worth the switch.
constexpr int64_t kReleaseGil = 1 << 16;

PyObject* linf_step_fast(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 9) {
    PyErr_Format(PyExc_TypeError,
                 "_linf_step_fast(x_adv, grad, x_nat, eps, alpha, lower, upper, norm, chosen) "
                 "takes 9 arguments, got %zd", nargs);
    return nullptr;
  }
  const at::Tensor* tensors[3];
  double params[4];
  if (!handled(args, tensors, params)) Py_RETURN_FALSE;
  const at::Tensor &x = *tensors[0], &grad = *tensors[1], &x_nat = *tensors[2];
  {
    std::optional<pybind11::gil_scoped_release> no_gil;
    if (x.numel() >= kReleaseGil) no_gil.emplace();
    linf_step_uniform(x, grad, x_nat, params[0], params[1], params[2], params[3]);
  }
  // An in-place write that autograd must know of: a tensor saved for backward is now stale.
  x.unsafeGetTensorImpl()->bump_version();
  Py_RETURN_TRUE;
  END_HANDLE_TH_ERRORS
}

}  // namespace

PyMethodDef fast_step_method() {
  return {"_linf_step_fast", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(
                                 &linf_step_fast)),
          METH_FASTCALL,
          "_linf_step_fast(x_adv, grad, x_nat, eps, alpha, lower, upper, norm, chosen) -> bool\n"
          "fastadv.pgd_'s common case (see fastadv/ops.py); False: not handled, nothing "
          "written."};
}

}  // namespace fastadv::cpu
