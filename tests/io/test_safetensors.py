"""safetensors: round trips, the header checks of a security boundary, and a fuzz test over mutated files."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from pytransformer.io import load_file, read_metadata, save_file
from pytransformer.io.safetensors import parse_header


def sample():
    rng = np.random.default_rng(0)
    return {"w": rng.standard_normal((3, 5)).astype(np.float32), "b": np.arange(4, dtype=np.int64),
            "h": rng.standard_normal(7).astype(np.float16), "scalar": np.array(3.5, np.float32),
            "empty": np.zeros((0, 4), np.float32)}


def raw_file(header: dict, data: bytes = b"", length=None) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h) if length is None else length) + h + data


def test_round_trip_keeps_names_shapes_values_and_metadata(tmp_path):
    t = sample()
    save_file(t, tmp_path / "a.safetensors", {"step": "7"})
    back = load_file(tmp_path / "a.safetensors")
    assert set(back) == set(t)
    for k in t:
        assert back[k].shape == t[k].shape
        np.testing.assert_array_equal(back[k], t[k].astype(np.float32) if t[k].dtype == np.float16 else t[k])
    assert back["h"].dtype == np.float32  # F16 converted
    assert read_metadata(tmp_path / "a.safetensors") == {"step": "7"}


def test_float32_tensors_are_read_only_views_of_the_mapped_file(tmp_path):
    save_file({"w": np.ones((64, 64), np.float32)}, tmp_path / "a.safetensors")
    w = load_file(tmp_path / "a.safetensors")["w"]
    assert not w.flags.writeable and not w.flags.owndata


def test_bf16_is_converted_to_float32(tmp_path):
    x = np.array([1.0, -2.5, 3.140625], np.float32)
    bf16 = (x.view(np.uint32) >> 16).astype("<u2")
    path = tmp_path / "b.safetensors"
    path.write_bytes(raw_file({"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}, bf16.tobytes()))
    np.testing.assert_array_equal(load_file(path)["x"], x)


def test_matches_the_reference_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    t = {k: v for k, v in sample().items() if k != "scalar"}
    st.save_file(t, str(tmp_path / "ref.safetensors"))
    ours = load_file(tmp_path / "ref.safetensors")
    for k in t:
        np.testing.assert_array_equal(ours[k], t[k].astype(np.float32) if t[k].dtype == np.float16 else t[k])
    save_file(t, tmp_path / "ours.safetensors")
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))
    for k in t:
        np.testing.assert_array_equal(theirs[k], t[k])


@pytest.mark.parametrize("content,match", [
    (b"", "shorter than the 8-byte header length"),
    (struct.pack("<Q", 10**9) + b"{}", "header length"),
    (struct.pack("<Q", 4) + b"{x:1", "not valid JSON"),
    (raw_file([1, 2]), "must be a JSON object"),
    (raw_file({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}), "outside the 0-byte data"),
    (raw_file({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)), "needs 12 bytes"),
    (raw_file({"x": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)), "unsupported dtype"),
    (raw_file({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8)), "non-negative ints"),
    (raw_file({"x": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8)), "outside"),
    (raw_file({"x": {"dtype": "F32", "shape": [2]}}, bytes(8)), "expected keys"),
    (raw_file({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
               "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)), "overlap"),
    (raw_file({"x": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, bytes(8)), "needs"),
])
def test_malformed_files_raise_value_error_naming_the_problem(tmp_path, content, match):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        load_file(path)


def test_truncated_file_is_rejected(tmp_path):
    save_file(sample(), tmp_path / "a.safetensors")
    full = (tmp_path / "a.safetensors").read_bytes()
    for cut in (4, 20, len(full) - 1):
        (tmp_path / "t.safetensors").write_bytes(full[:cut])
        with pytest.raises(ValueError):
            load_file(tmp_path / "t.safetensors")


def test_fuzzed_files_never_crash(tmp_path):
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    save_file(sample(), tmp_path / "a.safetensors")
    valid = (tmp_path / "a.safetensors").read_bytes()

    @hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
    @hypothesis.given(st.lists(st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)), max_size=8),
                      st.integers(0, len(valid)))
    def mutate(edits, cut):
        data = bytearray(valid[:max(cut, 1)] if cut < 16 else valid)
        for pos, byte in edits:
            if pos < len(data):
                data[pos] = byte
        try:
            parse_header(bytes(data), len(data))
        except ValueError:
            return
        path = tmp_path / "f.safetensors"
        path.write_bytes(bytes(data))
        try:
            for arr in load_file(path).values():
                np.asarray(arr).sum()
        except ValueError:
            pass

    mutate()


def test_a_writer_killed_mid_save_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    target = tmp_path / "ckpt.safetensors"
    code = ("import time, sys; from pytransformer.io.safetensors import atomic_write\n"
            "def chunks():\n    yield b'x' * 1000000\n    sys.stdout.write('writing\\n'); sys.stdout.flush()\n"
            "    time.sleep(60)\n    yield b'y'\n"
            f"atomic_write({str(target)!r}, chunks())\n")
    # (cwd: not the source tree, whose pytransformer/ has no compiled _core, would shadow the installed one)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    while (line := child.stdout.readline()) and line.strip() != "writing":  # (an editable install may print first)
        pass
    assert line, "the writer died before writing"
    child.send_signal(signal.SIGKILL)
    child.wait()
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]
    assert leftovers and not target.exists()  # the kill left a temporary, never a half-written target
    from pytransformer.io import save_file
    save_file({"a": np.ones(3, np.float32)}, target)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")] == []



def test_written_files_honour_the_umask(tmp_path):
    import os
    import stat

    from pytransformer.io import save_file
    old = os.umask(0o027)
    try:
        save_file({"a": np.ones(3, np.float32)}, tmp_path / "a.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.safetensors").st_mode) == 0o640
    save_file({"a": np.ones(3, np.float32)}, tmp_path / "b.safetensors")
    assert stat.S_IMODE(os.stat(tmp_path / "b.safetensors").st_mode) == 0o666 & ~old


def test_a_megabyte_tensor_name_is_quoted_short(tmp_path):
    path = tmp_path / "long.safetensors"
    path.write_bytes(raw_file({"n" * 10**6: {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)))
    with pytest.raises(ValueError, match="tensor 'nnnn*[.][.][.]n*': unsupported dtype 'Q7'") as e:
        load_file(path)
    assert len(str(e.value)) < len(str(path)) + 100


def test_an_integer_of_5000_digits_is_a_value_error_naming_the_header(tmp_path):
    path = tmp_path / "digits.safetensors"
    path.write_bytes(struct.pack("<Q", 5010) + b'{"x": ' + b"9" * 5000 + b"}    ")
    with pytest.raises(ValueError, match=f"{path}: header is not valid JSON"):
        load_file(path)


def test_a_header_of_millions_of_tiny_values_is_refused_before_parsing(tmp_path):
    from pytransformer.io import safetensors

    raw = b'{"x": [' + b"[]," * safetensors.MAX_JSON_VALUES + b"[]]}"
    path = tmp_path / "many.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(ValueError, match=f"header holds about {2 * safetensors.MAX_JSON_VALUES + 4} JSON values, "
                                         f"more than the {safetensors.MAX_JSON_VALUES} allowed"):
        load_file(path)
