"""The optional CUDA path: device arrays and the CUDA kernels behind `pytransformer.ops`.

Nothing here loads a CUDA library until it is asked to: `import pytransformer` never does, and `is_available()`
is the first thing that tries (it imports the `_cuda` extension, built only with `PYTRANSFORMER_CUDA=AUTO|ON`).

Device memory is explicit and small: a `DeviceArray` is a C-contiguous float32 / int64 / uint8 block of device
memory with a shape. `DeviceArray.from_numpy(a)` copies host to device, `.numpy()` back; both wait for the copy.
Arrays of other libraries (CuPy, torch) come in without a copy through `DeviceArray.from_cuda_array(x)` (anything
with `__cuda_array_interface__`), and a DeviceArray goes out the same way (its `__cuda_array_interface__`), so
`torch.as_tensor(a, device="cuda")` or `cupy.asarray(a)` view it in place.

Every `pytransformer.ops` function takes DeviceArrays in place of NumPy arrays and then runs its CUDA kernel,
with the same checks, results (float32, within rounding) and gradient conventions; outputs it allocates are
DeviceArrays. The backend is chosen in one place (`ops._kernels`) from the type of the op's first array.

Testing without a GPU: `PYTRANSFORMER_CUDA_MODULE=/path/to/_cuda*.so` loads that build of the module instead,
e.g. one built with `PYTRANSFORMER_CUDA=EMULATE` (the kernels run as fibers on the CPU; `.ci/cuda`).
"""

from __future__ import annotations

import math
import os

import numpy as np

_DTYPES = {np.dtype(t) for t in (np.float32, np.int64, np.uint8, np.bool_, np.uint16, np.int8)}
_module = None
_module_error = None
_device_checked = False


def _load():
    """The _cuda extension module, imported once; None when it is not built or cannot load."""
    global _module, _module_error
    if _module is not None or _module_error is not None:
        return _module
    try:
        path = os.environ.get("PYTRANSFORMER_CUDA_MODULE")
        if path:
            import importlib.util

            spec = importlib.util.spec_from_file_location("pytransformer._cuda", path)
            if spec is None:
                raise ImportError(f"PYTRANSFORMER_CUDA_MODULE={path!r} is not a loadable module")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        else:
            import importlib

            mod = importlib.import_module(__name__.rsplit(".", 1)[0] + "._cuda")
        _module = mod
    except ImportError as e:
        _module_error = str(e)
    return _module


def kernels():
    """The CUDA kernel module, or a RuntimeError saying why there is none."""
    global _device_checked
    if _device_checked:
        return _module
    mod = _load()
    if mod is None:
        raise RuntimeError("pytransformer was built without CUDA (reinstall with PYTRANSFORMER_CUDA=ON and "
                           f"nvcc on PATH; pip install nvidia-cublas): {_module_error}")
    if mod.device_count() == 0:
        raise RuntimeError("no CUDA device (or no NVIDIA driver) is available")
    _device_checked = True
    return mod


def is_available() -> bool:
    """True when the CUDA module is built and a device answers (never raises)."""
    mod = _load()
    try:
        return mod is not None and mod.device_count() > 0
    except Exception:
        return False


def device_name() -> str | None:
    """The first device's name, or None."""
    return kernels().device_name(0) if is_available() else None


def emulated() -> bool:
    """True when the module in use is the CPU emulator build (tests)."""
    mod = _load()
    return bool(mod is not None and mod.emulated())


def synchronize():
    """Wait for every queued kernel; raises the first error a kernel hit."""
    kernels().synchronize()


class DeviceArray:
    """A C-contiguous array in device memory: shape, dtype, ptr (the device address) and the owner that keeps the
    memory alive (a _cuda.Buffer, another DeviceArray's owner, or a foreign array)."""

    __slots__ = ("ptr", "shape", "dtype", "size", "_owner", "__weakref__")

    def __init__(self, ptr: int, shape, dtype, owner):
        self.ptr = int(ptr)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.size = math.prod(self.shape)
        self._owner = owner

    # --- making them ---
    @classmethod
    def empty(cls, shape, dtype=np.float32) -> DeviceArray:
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
        dtype = np.dtype(dtype)
        if dtype not in _DTYPES:
            raise TypeError(f"device arrays hold float32, int64, uint8, bool, uint16 or int8, got {dtype}")
        if any(s < 0 for s in shape):
            raise ValueError(f"negative dimension in shape {shape}")
        buf = kernels().Buffer(math.prod(shape) * dtype.itemsize)
        return cls(buf.ptr, shape, dtype, buf)

    @classmethod
    def zeros(cls, shape, dtype=np.float32) -> DeviceArray:
        a = cls.empty(shape, dtype)
        kernels().fill_zero(a.ptr, a.nbytes)
        return a

    @classmethod
    def from_numpy(cls, a) -> DeviceArray:
        """A device copy of a NumPy array (made C-contiguous; float64 is not converted: pass float32)."""
        a = np.ascontiguousarray(a)
        out = cls.empty(a.shape, a.dtype)
        kernels().copy_to_device(out.ptr, a, a.nbytes)
        return out

    @classmethod
    def from_cuda_array(cls, obj) -> DeviceArray:
        """View a CuPy array, torch tensor or anything with `__cuda_array_interface__` without copying (it must be
        C-contiguous and of a dtype the kernels take); the DeviceArray keeps `obj` alive."""
        try:
            iface = obj.__cuda_array_interface__
        except AttributeError:
            raise TypeError(f"{type(obj).__name__} has no __cuda_array_interface__") from None
        shape = tuple(iface["shape"])
        dtype = np.dtype(iface["typestr"])
        strides = iface.get("strides")
        if strides is not None and tuple(strides) != _c_strides(shape, dtype.itemsize):
            raise ValueError(f"the array is not C-contiguous (strides {tuple(strides)} for shape {shape}); "
                             "make it contiguous first")
        if dtype not in _DTYPES:
            raise TypeError(f"device arrays hold float32, int64, uint8, bool, uint16 or int8, got {dtype}")
        ptr, readonly = iface["data"]
        if readonly:
            raise ValueError("read-only device arrays are not supported")
        stream = iface.get("stream")
        if stream not in (None, 1, 2):  # the producer's stream: wait for it before our (default stream) kernels
            kernels().synchronize()
        return cls(ptr, shape, dtype, obj)

    # --- what it is ---
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def strides(self):
        return _c_strides(self.shape, self.dtype.itemsize)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False), "strides": None,
                "version": 3, "stream": 1}

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d device array")
        return self.shape[0]

    def __repr__(self):
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype})"

    def __array__(self, *args, **kwargs):
        raise TypeError("a DeviceArray lives in device memory: call .numpy() to copy it to the host")

    # --- copies ---
    def numpy(self) -> np.ndarray:
        """A host copy (waits for the kernels that write this array)."""
        out = np.empty(self.shape, self.dtype)
        kernels().copy_to_host(out, self.ptr, self.nbytes)
        return out

    def copy(self) -> DeviceArray:
        out = DeviceArray.empty(self.shape, self.dtype)
        kernels().copy_on_device(out.ptr, self.ptr, self.nbytes)
        return out

    def copy_from(self, src) -> DeviceArray:
        """Overwrite this array with src (a DeviceArray or a NumPy array of the same shape and dtype)."""
        if tuple(src.shape) != self.shape or np.dtype(src.dtype) != self.dtype:
            raise ValueError(f"copy_from: {src.dtype} {tuple(src.shape)} into {self.dtype} {self.shape}")
        if isinstance(src, DeviceArray):
            kernels().copy_on_device(self.ptr, src.ptr, self.nbytes)
        else:
            kernels().copy_to_device(self.ptr, np.ascontiguousarray(src), self.nbytes)
        return self

    def fill_zero(self) -> DeviceArray:
        kernels().fill_zero(self.ptr, self.nbytes)
        return self

    # --- views (no copies: always contiguous) ---
    def reshape(self, *shape) -> DeviceArray:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = list(int(s) for s in shape)
        if shape.count(-1) > 1:
            raise ValueError("only one dimension can be -1")
        if -1 in shape:
            rest = math.prod(s for s in shape if s != -1)
            if rest == 0 or self.size % rest:
                raise ValueError(f"cannot reshape {self.shape} into {tuple(shape)}")
            shape[shape.index(-1)] = self.size // rest
        if math.prod(shape) != self.size:
            raise ValueError(f"cannot reshape {self.shape} into {tuple(shape)}")
        return DeviceArray(self.ptr, shape, self.dtype, self._owner)

    def ravel(self) -> DeviceArray:
        return self.reshape(-1)

    def view(self, dtype) -> DeviceArray:
        dtype = np.dtype(dtype)
        if dtype.itemsize != self.dtype.itemsize:
            raise ValueError(f"view as {dtype}: only a dtype of the same item size ({self.dtype})")
        return DeviceArray(self.ptr, self.shape, dtype, self._owner)

    def __getitem__(self, key) -> DeviceArray:
        """Rows of the first axis: a[i] or a[i:j] (step 1): contiguous views."""
        if not self.shape:
            raise IndexError("a 0-d device array has no rows")
        n, row = self.shape[0], math.prod(self.shape[1:]) * self.dtype.itemsize
        if isinstance(key, (int, np.integer)):
            i = int(key) + (n if key < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {key} is out of bounds for axis 0 with size {n}")
            return DeviceArray(self.ptr + i * row, self.shape[1:], self.dtype, self._owner)
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                raise IndexError("device arrays slice rows with step 1 only (views stay contiguous)")
            stop = max(stop, start)
            return DeviceArray(self.ptr + start * row, (stop - start,) + self.shape[1:], self.dtype, self._owner)
        raise IndexError("device arrays index rows of the first axis only (an int or a slice)")

    def overlaps(self, other) -> bool:
        """True when the two arrays' bytes overlap."""
        if not isinstance(other, DeviceArray) or not self.nbytes or not other.nbytes:
            return False
        return self.ptr < other.ptr + other.nbytes and other.ptr < self.ptr + self.nbytes


def _c_strides(shape, itemsize):
    strides, step = [], itemsize
    for s in reversed(shape):
        strides.append(step)
        step *= s
    return tuple(reversed(strides))


def to_device(x):
    """A NumPy array as a DeviceArray (copied); a DeviceArray or a __cuda_array_interface__ array as is."""
    if isinstance(x, DeviceArray):
        return x
    if hasattr(x, "__cuda_array_interface__"):
        return DeviceArray.from_cuda_array(x)
    return DeviceArray.from_numpy(x)


def zeros_like(x):
    """Zeros of x's shape and dtype where x lives (host or device)."""
    return DeviceArray.zeros(x.shape, x.dtype) if isinstance(x, DeviceArray) else np.zeros_like(x)


def empty_like(x):
    """An uninitialised array of x's shape and dtype where x lives (host or device)."""
    return DeviceArray.empty(x.shape, x.dtype) if isinstance(x, DeviceArray) else np.empty_like(x)


def to_host(x):
    """A DeviceArray copied to a NumPy array; anything else as is."""
    return x.numpy() if isinstance(x, DeviceArray) else x
