"""LoRA adapters in peft's files: `adapter_config.json` + `adapter_model.safetensors`, each matrix under
`base_model.model.<the Hugging Face module>.lora_A.weight` (A (r, IC)) and `.lora_B.weight` (B (OC, r)).

A model's adaptable modules come from its family's Hugging Face name map (one rule per tensor): every Hugging Face
weight that is one Linear's (the same values, or q/k rows in llama.cpp's order: B's rows follow the weight's) or
several Linears' stacked by rows (Phi-3's qkv_proj and gate_up_proj: the Linears share one A, and peft's B is theirs
stacked the same way). Targets are peft's: names a module's name ends with ("q_proj"), or one regular expression it
must match whole.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from ..models.base import register_peft_format
from ..nn import lora
from ..nn.layers import HoldsWeight
from .hf_common import SAME, TRANSPOSED, Fused, naming_the_file, read_json
from .hf_decoder import Interleaved
from .safetensors import atomic_write, load_file, quote, save_file

PREFIX = "base_model.model."
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj",
                   "down_proj")
PARTS = ("lora_A", "lora_B")
# adapter_config.json fields whose other values this loader does not run: field -> the value it runs
PLAIN = {"use_dora": False, "use_rslora": False, "fan_in_fan_out": False, "bias": "none", "lora_bias": False,
         "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None,
         "layer_replication": None, "exclude_modules": None, "target_parameters": None}


class PeftFormat:
    """One model's peft face: `modules` {our Linear's name: (its Hugging Face module name, the weight's layout)},
    `groups` {Hugging Face module name: our Linears in its rows' order} (one Linear, or a fused module's)."""

    def __init__(self, names, model):
        self.model = model
        self.modules, self.groups = {}, {}
        self.transposed = []  # Hugging Face modules kept as (in, out) (GPT-2's Conv1D): not adaptable yet
        for r in names.rules:
            linears = [ours[: -len(".weight")] for ours in r.ours]
            if r.hf.endswith(".weight") and (len(r.ours) == 1 and (r.layout is SAME or isinstance(r.layout, Interleaved))
                                             or isinstance(r.layout, Fused) and not r.layout.transposed) \
                    and all(isinstance(lora.module_at(model, n), HoldsWeight) for n in linears):
                hf = r.hf[: -len(".weight")]
                self.groups[hf] = linears
                self.modules.update((n, (hf, r.layout)) for n in linears)
            elif r.hf.endswith(".weight") and getattr(r.layout, "transposed", r.layout is TRANSPOSED):
                self.transposed.append(r.hf.rsplit(".", 2)[-2])

    def select(self, targets) -> dict:
        """{our name: Linear} of the modules targets name (None: every attention and MLP projection)."""
        default, targets = targets is None, DEFAULT_TARGETS if targets is None else targets
        if isinstance(targets, str):
            chosen = [n for n, (hf, _) in self.modules.items() if re.fullmatch(targets, hf)]
            if not chosen:
                raise ValueError(f"target pattern {quote(targets)} matches none of this model's modules "
                                 f"({', '.join(self.kinds())})")
        else:
            targets = list(targets)
            if not targets or not all(isinstance(t, str) for t in targets):
                raise ValueError(f"targets must be module names (e.g. {', '.join(self.kinds())}), got "
                                 f"{quote(targets)}")
            unknown = [t for t in targets if not any(_ends(hf, t) for hf, _ in self.modules.values())]
            if unknown and not default:
                raise ValueError(f"unknown target {quote(unknown[0])}: this model's modules are "
                                 f"{', '.join(self.kinds()) or 'none'}{self.not_yet()}")
            chosen = [n for n, (hf, _) in self.modules.items() if any(_ends(hf, t) for t in targets)]
            if not chosen:
                raise ValueError(f"none of {', '.join(targets)} is a module of this model "
                                 f"({', '.join(self.kinds()) or 'none'}){self.not_yet()}")
        return {n: lora.module_at(self.model, n) for n in chosen}

    def not_yet(self) -> str:
        """What the model's transposed modules are, when it has some."""
        kinds = ", ".join(dict.fromkeys(self.transposed))
        return f"; its {kinds} are Conv1D weights (in, out), which LoRA does not adapt yet" if kinds else ""

    def kinds(self) -> list:
        """The last parts of the adaptable modules' names (q_proj, ...), once each."""
        return list(dict.fromkeys(hf.rsplit(".", 1)[-1] for hf, _ in self.modules.values()))

    def adapted(self, linears) -> dict:
        """{Hugging Face module: our Linears} of the groups the adapted Linears make up."""
        return {hf: self.groups[hf] for hf in dict.fromkeys(self.modules[n][0] for n in linears)}

    def to_peft(self, ours: dict) -> dict:
        """{"<our Linear>.lora_A" / ".lora_B": array} -> {peft's tensor name: array} (a group's A is its first
        Linear's; its B, theirs stacked)."""
        out = {}
        for hf, linears in self.adapted(name.rsplit(".", 1)[0] for name in ours).items():
            out[f"{PREFIX}{hf}.lora_A.weight"] = ours[f"{linears[0]}.lora_A"]
            out[f"{PREFIX}{hf}.lora_B.weight"] = self.modules[linears[0]][1].to_hf(
                [ours[f"{n}.lora_B"] for n in linears])
        return out

    def from_peft(self, tensors: dict, adapter, source) -> dict:
        """peft's tensors -> {"<our Linear>.lora_A" / ".lora_B": array} for the attached adapter (every one present,
        of its shape; nothing else)."""
        out, shapes, wanted = {}, {n: p.shape for n, p in adapter.params}, set()
        for hf, linears in self.adapted(adapter.layers).items():
            layout = self.modules[linears[0]][1]
            for part, ours in (("lora_A", linears[:1]), ("lora_B", linears)):
                key = f"{PREFIX}{hf}.{part}.weight"
                wanted.add(key)
                if key not in tensors:
                    raise ValueError(f"{source}: no tensor {key} (the adapter's targets name {hf})")
                value, parts = tensors[key], [shapes[f"{n}.{part}"] for n in ours]
                shape = layout.hf_shape_of(parts) if part == "lora_B" else parts[0]
                if tuple(value.shape) != shape:
                    raise ValueError(f"{source}: {key} has shape {tuple(value.shape)}; rank {adapter.rank} on "
                                     f"{hf} {layout.hf_shape_of([self.model_weight(n) for n in linears])} needs "
                                     f"{shape}")
                value = np.asarray(value, np.float32)
                values = layout.to_ours(value, parts) if part == "lora_B" else [value]
                out.update((f"{n}.{part}", v) for n, v in zip(ours, values))
        extra = [k for k in tensors if k not in wanted]
        if extra:
            raise ValueError(f"{source}: tensor {quote(extra[0])} is not one of this adapter's (targets "
                             f"{', '.join(adapter.targets)})")
        return out

    def model_weight(self, linear):
        return lora.module_at(self.model, linear).weight.shape

    def save(self, adapter, folder, base_name=None) -> None:
        """adapter_config.json + adapter_model.safetensors, as peft writes them."""
        os.makedirs(folder, exist_ok=True)
        tensors = self.to_peft({n: np.ascontiguousarray(p.data) for n, p in adapter.params})
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(folder, WEIGHTS),
                  {"format": "pt"})
        config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_name,
                  "r": adapter.rank, "lora_alpha": adapter.alpha, "lora_dropout": adapter.dropout,
                  "target_modules": sorted({self.modules[n][0].rsplit(".", 1)[-1] for n in adapter.layers}),
                  "inference_mode": True, "init_lora_weights": True, **PLAIN}
        atomic_write(os.path.join(folder, CONFIG), [json.dumps(config, indent=2).encode()])


register_peft_format(PeftFormat)


def _ends(name, target) -> bool:
    return name == target or name.endswith("." + target)


def read_config(folder) -> dict:
    """adapter_config.json's LoRA settings, checked: {r, lora_alpha, lora_dropout, target_modules}."""
    path = os.path.join(folder, CONFIG)
    config = read_json(path)
    with naming_the_file(path):
        if config.get("peft_type", "LORA") != "LORA":
            raise ValueError(f"peft_type {quote(config.get('peft_type'))} is not LORA")
        for field, plain in PLAIN.items():
            if config.get(field, plain) not in (plain, None, {}, [], False):  # (absent, empty or off: the plain LoRA)
                raise ValueError(f"{field} {quote(config[field])} is not supported (only {quote(plain)})")
        try:
            lora.check_settings(config.get("r"), config.get("lora_alpha"), config.get("lora_dropout", 0.0))
        except ValueError as e:
            raise ValueError(f"{e} (fields r, lora_alpha, lora_dropout)") from None
        targets = config.get("target_modules")
        if not (isinstance(targets, str) or isinstance(targets, list) and targets
                and all(isinstance(t, str) for t in targets)):
            raise ValueError(f"target_modules must be a list of module names or a pattern, got {quote(targets)}")
    return config


def load_adapter(model, folder):
    """Attach the adapter peft saved in folder to model (its base): -> model. Every file, field and tensor is
    checked first; a bad one is a ValueError naming the file and the tensor or field."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: not an adapter folder (adapter_config.json + adapter_model.safetensors)")
    config = read_config(folder)
    weights = os.path.join(folder, WEIGHTS)
    if not os.path.isfile(weights):
        raise ValueError(f"{weights}: no such file (peft's adapter weights)")
    tensors = load_file(weights)
    try:
        model.add_adapter(config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0),
                          config["target_modules"])
    except ValueError as e:
        raise ValueError(f"{os.path.join(folder, CONFIG)}: {e}") from None
    try:
        model.load_params(model._peft().from_peft(tensors, model.adapter, weights))
    except ValueError:
        model.remove_adapter()
        raise
    return model
