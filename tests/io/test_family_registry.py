"""The family registry is where a GGUF file finds its reader, as a Hugging Face folder finds its layout."""

from __future__ import annotations

import numpy as np
import pytest

from pytransformer import from_pretrained
from pytransformer.io.families import FAMILIES

gguf = pytest.importorskip("gguf")


def test_every_gguf_architecture_has_one_family():
    archs = [a for f in FAMILIES if f.gguf for a in f.gguf.architectures]
    assert "llama" in archs and len(archs) == len(set(archs))


def test_an_unsupported_gguf_architecture_names_itself_and_the_supported_ones(tmp_path):
    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match=r"unsupported GGUF architecture 'mamba' \(supported: .*llama"):
        from_pretrained(path)
