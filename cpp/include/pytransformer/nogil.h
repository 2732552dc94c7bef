// The GIL released while a kernel runs, taken back at the end of the scope (both extension modules' bindings).
// Unlike py::gil_scoped_release, its destructor may throw: a thread that finishes a kernel while the interpreter is
// exiting (a daemon thread) is ended by CPython inside PyEval_RestoreThread with pthread_exit, a forced unwind that
// pybind11 lets through, but that a noexcept destructor turns into std::terminate ("terminate called without an
// active exception", exit status 134).
#pragma once
#include <Python.h>

namespace pt {
class NoGil {
 public:
  explicit NoGil(bool release = true) : state_(release ? PyEval_SaveThread() : nullptr) {}
  NoGil(const NoGil&) = delete;
  NoGil& operator=(const NoGil&) = delete;
  ~NoGil() noexcept(false) {
    if (state_) PyEval_RestoreThread(state_);
  }

 private:
  PyThreadState* state_;
};
}  // namespace pt
