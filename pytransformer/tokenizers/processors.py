"""tokenizer.json post-processors: the special tokens added around one sequence (add_special_tokens=True), as
(ids before, ids after): TemplateProcessing (Llama's BOS, BERT's [CLS] ... [SEP]), BertProcessing,
RobertaProcessing, ByteLevel (nothing to add to ids) and Sequence."""

from __future__ import annotations


def _template(spec):
    special = spec.get("special_tokens") or {}
    before, after, seen = [], [], False
    for item in spec.get("single") or []:
        if "Sequence" in item:
            seen = True
        elif "SpecialToken" in item:
            name = item["SpecialToken"].get("id")
            if name not in special or not isinstance(special[name].get("ids"), list):
                raise ValueError(f"TemplateProcessing: special token {name!r} has no ids")
            (after if seen else before).extend(int(i) for i in special[name]["ids"])
        else:
            raise ValueError(f"TemplateProcessing: unsupported item {item!r}")
    return before, after


def _pair(spec, key):
    value = spec.get(key)
    if not isinstance(value, list) or len(value) != 2 or not isinstance(value[1], int):
        raise ValueError(f"{spec.get('type')}: {key} must be [token, id], got {value!r}")
    return value[1]


def post_processor(spec):
    """(ids before, ids after) the sequence that a tokenizer.json "post_processor" adds with special tokens."""
    if spec is None:
        return [], []
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "TemplateProcessing":
        return _template(spec)
    if kind in ("BertProcessing", "RobertaProcessing"):
        return [_pair(spec, "cls")], [_pair(spec, "sep")]
    if kind == "ByteLevel":
        return [], []
    if kind == "Sequence":
        before, after = [], []
        for s in spec.get("processors", []):
            b, a = post_processor(s)
            before, after = b + before, after + a
        return before, after
    raise ValueError(f"unsupported post-processor {kind!r} (supported: TemplateProcessing, BertProcessing, "
                     f"RobertaProcessing, ByteLevel, Sequence)")
