"""GGUF files (llama.cpp's format) read in pytransformer itself: header, metadata, tensor table, tensors by mmap.

Layout (little-endian, version 2 or 3): b"GGUF", uint32 version, uint64 tensor count, uint64 metadata count; the
metadata as (string key, uint32 type, value) with strings as uint64 length + UTF-8 bytes and arrays as uint32
item type + uint64 count + items; the tensor table as (string name, uint32 n_dims, uint64 dims[n_dims] innermost
first, uint32 ggml type, uint64 offset); padding to `general.alignment` (default 32); then the data, each tensor
at its offset from there.

The file is a security boundary, like safetensors: every count, length and offset is checked against the bytes
that remain before it is used (a claimed million-entry array in a 100-byte file is refused before anything is
allocated), and a truncated or hostile file raises ValueError naming the field, never a crash, a hang or a huge
allocation: keys and names are short, the metadata's Python objects are charged against a budget before they are
made, tensors may not share bytes, and messages quote strings from the file cut short. Tensors are read-only views
of the mapped file: quantised ones stay quantised (`ops.Quantized`); `finite(name)` checks one for NaN and inf.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

from .. import ops
from .safetensors import quote

GGUF_MAGIC = b"GGUF"
MAX_DIMS = 4          # ggml's GGML_MAX_DIMS
MAX_STRING = 1 << 26  # no string value (a chat template, a token) is anywhere near 64 MiB
MAX_NAME = 1 << 12    # nor any key or tensor name near 4 KiB
MAX_NESTING = 4
MAX_TENSORS = 1 << 17  # (a per-expert MoE of 256 experts and 58 layers lists 45k; each entry costs ~300 bytes read)
# What the metadata may cost in memory once parsed (Python objects: about 64 bytes a string and 128 an array, plus
# their bytes), charged before they are made: a 256k-token vocabulary with 500k merges costs about 60 MiB, while 24
# MB of empty nested arrays would cost 260 MiB
MAX_METADATA_COST = 1 << 27
STRING_COST, ARRAY_COST = 64, 128

# metadata value types -> (struct format, size) for the fixed-size ones
_SCALARS = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4), 6: ("<f", 4),
            7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8",
          12: "<f8"}
STRING, ARRAY = 8, 9

# ggml tensor types this reader reads (all that pytransformer computes with: ops.QTYPES): name -> (values, bytes)
# of a block; the names of the others, so that a tensor of one is listed and refused by its name
QTYPE_NAMES = ops.QTYPE_NAMES
_BLOCKS = {"F32": (1, 4), "F16": (1, 2), "BF16": (1, 2), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22),
           "Q5_1": (32, 24), "Q8_0": (32, 34), "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144),
           "Q5_K": (256, 176), "Q6_K": (256, 210), "IQ4_NL": (32, 18), "IQ4_XS": (256, 136)}
_UNREAD_NAMES = {9: "Q8_1", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 21: "IQ3_S",
                 22: "IQ2_S", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 34: "TQ1_0",
                 35: "TQ2_0", 39: "MXFP4"}


def type_name(code):
    """The ggml tensor type's name ("Q4_K", "IQ1_S", ...), or "ggml type <code>" for an id this table does not
    know."""
    return QTYPE_NAMES.get(code) or _UNREAD_NAMES.get(code, f"ggml type {code}")

# Where each type keeps its floats, for the NaN/inf check at load: (bits, exponent mask, byte offsets in a block).
# A block's values are small integers times its scales, so its scales are all that can be NaN or inf; a float is
# NaN or inf exactly when its exponent bits are all set.
_FLOAT_FIELDS = {"F32": ("<u4", 0x7F800000, (0,)), "F16": ("<u2", 0x7C00, (0,)), "BF16": ("<u2", 0x7F80, (0,)),
                 "Q4_0": ("<u2", 0x7C00, (0,)), "Q4_1": ("<u2", 0x7C00, (0, 2)), "Q8_0": ("<u2", 0x7C00, (0,)),
                 "Q4_K": ("<u2", 0x7C00, (0, 2)), "Q6_K": ("<u2", 0x7C00, (208,)),
                 "Q5_0": ("<u2", 0x7C00, (0,)), "Q5_1": ("<u2", 0x7C00, (0, 2)), "Q5_K": ("<u2", 0x7C00, (0, 2)),
                 "Q3_K": ("<u2", 0x7C00, (108,)), "Q2_K": ("<u2", 0x7C00, (80, 82)),
                 "IQ4_NL": ("<u2", 0x7C00, (0,)), "IQ4_XS": ("<u2", 0x7C00, (0,))}
_CHECK_BLOCKS = 1 << 20  # blocks checked at a time (the temporaries stay a few MiB whatever the tensor's size)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple       # numpy order: (rows, ..., columns), i.e. the file's dims reversed
    qtype: str         # "F32", "Q4_1", ...
    offset: int        # from the start of the data section
    nbytes: int


class _Reader:
    """A cursor over the file's bytes that refuses to read past the end."""

    def __init__(self, buf, path):
        self.buf, self.pos, self.path = buf, 0, path
        self.budget = MAX_METADATA_COST

    def fail(self, what):
        raise ValueError(f"{self.path}: {what}")

    def remaining(self):
        return len(self.buf) - self.pos

    def take(self, n, what):
        if n < 0 or n > self.remaining():
            self.fail(f"truncated: {what} needs {n} bytes at offset {self.pos}, {self.remaining()} remain")
        start = self.pos
        self.pos += n
        return self.buf[start:self.pos]

    def scalar(self, fmt, size, what):
        return struct.unpack(fmt, self.take(size, what))[0]

    def u32(self, what):
        return self.scalar("<I", 4, what)

    def u64(self, what):
        return self.scalar("<Q", 8, what)

    def spend(self, cost, what):
        """Charge the parsed metadata's memory budget (MAX_METADATA_COST) before the objects are made."""
        self.budget -= cost
        if self.budget < 0:
            self.fail(f"{what}: the file's metadata would take more than {MAX_METADATA_COST >> 20} MiB once read")

    def string(self, what, limit=MAX_STRING):
        n = self.u64(f"{what} length")
        if n > limit:
            self.fail(f"{what}: a string of {n} bytes is past the {limit}-byte limit")
        self.spend(STRING_COST + n, what)
        raw = bytes(self.take(n, what))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="replace")  # (tokens of byte-level vocabularies may be partial)

    def value(self, vtype, what, depth=0):
        if vtype in _SCALARS:
            return self.scalar(*_SCALARS[vtype], what)
        if vtype == STRING:
            return self.string(what)
        if vtype == ARRAY:
            if depth >= MAX_NESTING:
                self.fail(f"{what}: arrays nested deeper than {MAX_NESTING}")
            itype, count = self.u32(f"{what} item type"), self.u64(f"{what} count")
            if depth == 0:
                self.spend(ARRAY_COST, what)  # (an array inside an array was charged by its parent)
            if itype in _SCALARS:
                size = _SCALARS[itype][1]
                if count > self.remaining() // size:
                    self.fail(f"truncated: {what} claims {count} items of {size} bytes, {self.remaining()} remain")
                self.spend(count * 8, what)  # (at most 8 bytes an item once read)
                values = np.frombuffer(self.take(count * size, what), _NUMPY[itype]).copy()
                return values.astype(bool) if itype == 7 else values
            if itype not in (STRING, ARRAY):
                self.fail(f"{what}: unknown array item type {itype}")
            if count > self.remaining() // 8:  # every string or array item takes at least 8 bytes
                self.fail(f"truncated: {what} claims {count} items, {self.remaining()} bytes remain")
            if itype == STRING:
                return self._strings(count, what)
            self.spend(count * ARRAY_COST, what)
            return [self.value(ARRAY, f"{what}[{i}]", depth + 1) for i in range(count)]
        self.fail(f"{what}: unknown value type {vtype}")

    def _strings(self, count, what):
        self.spend(count * STRING_COST, what)
        out = []
        buf, start, end = self.buf, self.pos, len(self.buf)
        pos = start
        for i in range(count):  # (the tokenizer's 50k strings: plain slicing, no per-item method calls)
            if end - pos < 8:
                self.pos = pos
                self.fail(f"truncated: {what}[{i}] length at offset {pos}")
            (n,) = struct.unpack_from("<Q", buf, pos)
            pos += 8
            if n > end - pos:
                self.pos = pos
                self.fail(f"truncated: {what}[{i}] needs {n} bytes at offset {pos}, {end - pos} remain")
            raw = bytes(buf[pos:pos + n])
            pos += n
            try:
                out.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(raw.decode("utf-8", errors="replace"))
        self.pos = pos
        self.spend(pos - start - 8 * count, what)  # (the strings' bytes: no more than the file's)
        return out


class GGUFFile:
    """A parsed GGUF file: `metadata` {key: value} (arrays of numbers as numpy arrays, of strings as lists),
    `tensors` {name: TensorInfo} in file order, `tensor(name)` the data (mapped, read-only). Use as a context
    manager or call close(); tensors handed out keep the mapping alive."""

    def __init__(self, path, mmap_file=True):
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            raise ValueError(f"{self.path}: a folder, not a GGUF file")
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise ValueError(f"{self.path}: not a GGUF file ({size} bytes, shorter than its header)")
            if mmap_file:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                self.buf = memoryview(self._map)
            else:
                self._map = None
                self.buf = memoryview(f.read())
        self._parse()

    def _parse(self):
        r = _Reader(self.buf, self.path)
        if bytes(r.take(4, "magic")) != GGUF_MAGIC:
            r.fail("not a GGUF file (no GGUF magic)")
        self.version = r.u32("version")
        if self.version not in (2, 3):
            r.fail(f"GGUF version {self.version} is not supported (2 or 3)")
        n_tensors, n_kv = r.u64("tensor count"), r.u64("metadata count")
        # each metadata entry takes at least 8 + 4 + 1 bytes, each tensor entry at least 8 + 4 + 4 + 8
        if n_kv > r.remaining() // 13 or n_tensors > r.remaining() // 24:
            r.fail(f"truncated: {n_kv} metadata entries and {n_tensors} tensors cannot fit in {len(self.buf)} bytes")
        if n_tensors > MAX_TENSORS:
            r.fail(f"tensor count {n_tensors} is past the {MAX_TENSORS} this reader takes")
        self.metadata = {}
        for i in range(n_kv):
            key = r.string(f"metadata key {i}", MAX_NAME)
            self.metadata[key] = r.value(r.u32(f"type of {quote(key)}"), quote(key))
        alignment = self.metadata.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment < 1 or alignment & (alignment - 1) or alignment > 1 << 20:
            r.fail(f"general.alignment must be a power of two, got {quote(alignment)}")
        infos = []
        for i in range(n_tensors):
            name = r.string(f"tensor {i} name", MAX_NAME)
            what = f"tensor {quote(name)}"
            n_dims = r.u32(f"{what} dimension count")
            if n_dims > MAX_DIMS:
                r.fail(f"{what}: {n_dims} dimensions (at most {MAX_DIMS})")
            dims = [r.u64(f"{what} dimension") for _ in range(n_dims)]
            code, offset = r.u32(f"{what} type"), r.u64(f"{what} offset")
            infos.append((name, dims, code, offset))
        data_start = -(-r.pos // alignment) * alignment
        if data_start > len(self.buf):
            r.fail(f"truncated: the data section would start at {data_start}, past the end ({len(self.buf)} bytes)")
        self.data_start = data_start
        data_len = len(self.buf) - data_start
        self.tensors = {}
        for name, dims, code, offset in infos:
            what = f"tensor {quote(name)}"
            if name in self.tensors:
                r.fail(f"{what} appears twice")
            qtype = type_name(code)
            count = 1
            for d in dims:
                count *= d
                if count > data_len * 8:  # far more values than the file could hold (and no int overflow)
                    r.fail(f"{what}: dims {dims} claim more values than the file holds")
            if qtype in _BLOCKS:
                values, size = _BLOCKS[qtype]
                if dims and dims[0] % values:
                    r.fail(f"{what}: a row of {dims[0]} values is not a whole number of {qtype} blocks "
                           f"of {values}")
                nbytes = count // values * size
            else:
                nbytes = 0  # an unknown type: listed (info shows it), refused when its data is asked for
            if offset % alignment or offset > data_len or nbytes > data_len - offset:
                r.fail(f"{what}: {nbytes} bytes at offset {offset} lie outside the {data_len}-byte data "
                       f"section (or are not {alignment}-aligned)")
            self.tensors[name] = TensorInfo(name, tuple(reversed(dims)), qtype, offset, nbytes)
        spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in self.tensors.values() if t.nbytes)
        for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
            if begin < end:
                r.fail(f"tensors {quote(first)} and {quote(second)} overlap in the data section")

    def tensor(self, name):
        """The tensor's data: float32 arrays for F32 (other float types widened to float32), ops.Quantized (rows,
        columns) for block formats (and F16/BF16 matrices kept narrow with quantized=True)."""
        return self._data(name, quantized=False)

    def quantized(self, name):
        """A 2-D tensor as ops.Quantized (rows, columns) in its own type, the bytes left in the file."""
        return self._data(name, quantized=True)

    def _data(self, name, quantized):
        if name not in self.tensors:
            raise ValueError(f"{self.path}: no tensor {quote(name)}")
        info = self.tensors[name]
        if info.qtype not in _BLOCKS:
            raise ValueError(f"{self.path}: tensor {name!r} is {info.qtype}, which pytransformer does not read "
                             f"(supported: {', '.join(_BLOCKS)})")
        start = self.data_start + info.offset
        raw = np.frombuffer(self.buf, np.uint8, info.nbytes, start)
        shape = info.shape or (1,)
        if quantized or info.qtype not in ("F32", "F16", "BF16"):
            rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
            return ops.Quantized(raw.reshape(rows, -1), info.qtype, (rows, shape[-1]))
        if info.qtype == "F32":
            return raw.view("<f4").reshape(info.shape)
        if info.qtype == "F16":
            return raw.view("<f2").astype(np.float32).reshape(info.shape)
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(info.shape)

    def finite(self, name) -> bool:
        """Whether the tensor holds no NaN or inf: its floats, or its blocks' scales, read in the file's bytes."""
        info = self.tensors[name]
        if info.qtype not in _BLOCKS:
            self._data(name, quantized=True)  # (refuses the type, naming it)
        bits, mask, fields = _FLOAT_FIELDS[info.qtype]
        size = _BLOCKS[info.qtype][1]
        if not info.nbytes:
            return True  # (no values: numpy would refuse a view at its offset)
        for at in fields:  # (one field of every block: a strided view of the mapped bytes, checked a chunk at a time)
            field = np.ndarray((info.nbytes // size,), bits, self.buf, self.data_start + info.offset + at, (size,))
            for start in range(0, len(field), _CHECK_BLOCKS):
                if ((field[start:start + _CHECK_BLOCKS] & mask) == mask).any():
                    return False
        return True

    def close(self):
        self.buf = None  # arrays handed out hold their own reference to the mapping

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_gguf(path, mmap_file=True) -> GGUFFile:
    return GGUFFile(path, mmap_file)


def is_gguf(path) -> bool:
    """Whether path is a file that starts with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False
