// The fast path of fastadv.pgd_ (fast_step.cpp), a function of the fastadv._C module.
#pragma once
#include <Python.h>

namespace fastadv::cpu {

// The module's entry for fastadv._C._linf_step_fast.
PyMethodDef fast_step_method();

}  // namespace fastadv::cpu
