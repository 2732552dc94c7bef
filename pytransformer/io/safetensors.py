"""safetensors read and write, in pytransformer itself (no dependency).

Layout: an 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}} (plus an
optional "__metadata__" of strings), then the data. The file is a security boundary: every field of the
header is checked against the file size before a byte of data is trusted, and a bad file raises ValueError
naming the tensor, never a crash or a huge allocation. Reading maps the file (mmap); float32 tensors are then
read-only views of it, other float dtypes (F16, BF16, F64) are converted to float32. Writing is atomic: a
temporary file in the same folder, flushed and fsynced, then renamed over the target.
"""

from __future__ import annotations

import json
import mmap
import os
import reprlib
import struct
import tempfile
import threading

import numpy as np

_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_NAMES = {np.dtype("<f8"): "F64", np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("<i8"): "I64",
          np.dtype("<i4"): "I32", np.dtype("<i2"): "I16", np.dtype("i1"): "I8", np.dtype("u1"): "U8",
          np.dtype("?"): "BOOL"}
MAX_HEADER = 100 * 1024 * 1024
# JSON values a header (or config.json, or an index) may hold: a real header spends about 11 per tensor, so this is
# ~190k tensors in one file; it bounds the Python objects parsing can make (each ~60 bytes) whatever the file says
MAX_JSON_VALUES = 1 << 21
_QUOTE = reprlib.Repr()
_QUOTE.maxstring = _QUOTE.maxother = _QUOTE.maxlong = 40
_QUOTE.maxlevel, _QUOTE.maxlist, _QUOTE.maxdict = 2, 6, 4


def quote(value) -> str:
    """A value from a hostile file as an error message shows it: its repr, cut short (strings at 40 characters,
    lists at 6 items, 2 levels deep), so a 64 MiB string never becomes a 64 MiB message."""
    return _QUOTE.repr(value)


def parse_header(raw: bytes, file_size: int, path="") -> tuple[dict, dict, int]:
    """Validate a header -> (tensors {name: (dtype str, shape tuple, begin, end)}, metadata, data start)."""
    where = f"{path}: " if path else ""
    if file_size < 8 or len(raw) < 8:
        raise ValueError(f"{where}not a safetensors file: {file_size} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > file_size - 8 or n > MAX_HEADER:
        raise ValueError(f"{where}not a safetensors file: header length {n} exceeds the file ({file_size} bytes) "
                         f"or the {MAX_HEADER}-byte limit")
    if len(raw) < 8 + n:
        raise ValueError(f"{where}truncated header")
    header = parse_json(raw[8: 8 + n], f"{where}header")
    metadata = header.pop("__metadata__", {}) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError(f"{where}__metadata__ must map strings to strings")
    data_len = file_size - 8 - n
    tensors = {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"{where}tensor {quote(name)}: expected keys dtype, shape, data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise ValueError(f"{where}tensor {quote(name)}: unsupported dtype {quote(dtype)}")
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise ValueError(f"{where}tensor {quote(name)}: shape must be a list of non-negative ints, got {quote(shape)}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise ValueError(f"{where}tensor {quote(name)}: data_offsets must be two ints, got {quote(offsets)}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise ValueError(f"{where}tensor {quote(name)}: data_offsets {quote(offsets)} outside the {data_len}-byte data")
        count = 1
        for s in shape:
            count *= s
        if count * _DTYPES[dtype].itemsize != end - begin:
            raise ValueError(f"{where}tensor {quote(name)}: shape {quote(shape)} of {dtype} needs "
                             f"{count * _DTYPES[dtype].itemsize} bytes, data_offsets give {end - begin}")
        tensors[name] = (dtype, tuple(shape), begin, end)
    spans = sorted((b, e, name) for name, (_, _, b, e) in tensors.items() if e > b)
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ValueError(f"{where}tensors {quote(n0)} and {quote(n1)} overlap")
    return tensors, metadata, 8 + n


def parse_json(raw: bytes, what: str) -> dict:
    """A JSON object from untrusted bytes, or ValueError saying what is wrong with `what` (never RecursionError,
    UnicodeDecodeError or a parse that makes millions of objects out of a few bytes each)."""
    raw = bytes(raw)
    # every list item and every key follows one of these (and a key's value pairs with it): a bound, found at C speed
    values = raw.count(b",") + raw.count(b"[") + raw.count(b"{") + 1
    if values > MAX_JSON_VALUES:
        raise ValueError(f"{what} holds about {values} JSON values, more than the {MAX_JSON_VALUES} allowed")
    try:
        value = json.loads(raw.decode("utf-8"))
    except ValueError as e:  # (bad UTF-8, bad JSON, an integer of more than 4300 digits)
        raise ValueError(f"{what} is not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply to be what it claims") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _to_array(buf, dtype, shape, begin, end):
    raw = np.frombuffer(buf, dtype=_DTYPES[dtype], count=(end - begin) // _DTYPES[dtype].itemsize, offset=begin)
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)
    if dtype in ("F16", "F64"):
        return raw.astype(np.float32).reshape(shape)
    return raw.reshape(shape)


def load_file(path, names=None, mmap=True) -> dict:
    """name -> numpy array. F32 (and integer) tensors are read-only views of the mapped file.

    A mapped file must stay whole while its arrays live: if another process truncates it, touching a page past
    the new end kills the process with SIGBUS (no Python error can be raised then). mmap=False reads the file
    into private memory instead (it costs the file's size in RAM, and any later change to the file is unseen)."""
    tensors, _, data, buf = _open(path, mmap)
    out = {}
    for name, (dtype, shape, begin, end) in tensors.items():
        if names is None or name in names:
            out[name] = _to_array(buf, dtype, shape, data + begin, data + end)
    return out


def read_metadata(path) -> dict:
    return _open(path)[1]


def _open(path, use_mmap=True):
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) == 8:
            (n,) = struct.unpack("<Q", head)
            head += f.read(min(n, MAX_HEADER, max(size - 8, 0)))
        tensors, metadata, data = parse_header(head, size, path)
        if size == 0:
            buf = b""
        elif use_mmap:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        else:
            f.seek(0)
            buf = f.read()
            if len(buf) != size:
                raise ValueError(f"{path}: the file changed size while it was read ({size} -> {len(buf)} bytes)")
    return tensors, metadata, data, buf


def save_file(tensors: dict, path, metadata: dict | None = None) -> None:
    """Write name -> array (C order, little-endian) atomically."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        arr = np.asarray(tensors[name])
        if not arr.flags.c_contiguous:  # (np.ascontiguousarray would turn a 0-d array into 1-d)
            arr = arr.copy(order="C")
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        key = np.dtype(arr.dtype.str.replace(">", "<").replace("=", "<"))
        if key not in _NAMES:
            raise ValueError(f"tensor {quote(name)}: dtype {arr.dtype} cannot be stored in safetensors")
        header[name] = {"dtype": _NAMES[key], "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        blobs.append(arr)
        offset += arr.nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned
    atomic_write(path, [struct.pack("<Q", len(raw)), raw] + [a.reshape(-1).view(np.uint8).data for a in blobs])


TEMP_PREFIX = ".tmp-"


def atomic_write(path, chunks) -> None:
    """Write byte chunks to a temporary file beside `path`, fsync, then rename it over `path`. The file gets the
    usual mode for a new file (0666 less the umask). Temporary files that a killed writer of the same path left
    behind (their process is gone) are removed first."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    _remove_stale_temporaries(folder, base)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{base}.{os.getpid()}.", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600; a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _remove_stale_temporaries(folder, base):
    prefix = f"{TEMP_PREFIX}{base}."
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            try:
                os.unlink(os.path.join(folder, name))
            except OSError:
                pass


def _alive(pid) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


_umask_lock = threading.Lock()


def _umask() -> int:
    with _umask_lock:  # the only portable read of the umask sets it; put it straight back
        mask = os.umask(0o022)
        os.umask(mask)
    return mask
