"""save_pretrained of the encoders read from transformers folders (BERT, RoBERTa, XLM-RoBERTa; base models and
sequence classifiers): transformers loads what we wrote and gives the outputs it gave on the original folder."""

from __future__ import annotations

import numpy as np
import pytest
from st_models import bert_folder

from pytransformer.encoders import load_encoder

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


@pytest.mark.parametrize("num_labels", [None, 3])
@pytest.mark.parametrize("family", ["bert", "roberta", "xlm-roberta"])
def test_transformers_reads_back_what_it_wrote(tmp_path, family, num_labels):
    folder = bert_folder(tmp_path / "hf", family=family, num_labels=num_labels)
    load_encoder(folder).save_pretrained(tmp_path / "back")
    auto = transformers.AutoModelForSequenceClassification if num_labels else transformers.AutoModel
    original, back = (auto.from_pretrained(f).eval() for f in (folder, tmp_path / "back"))
    assert type(back) is type(original)
    ids = torch.from_numpy(np.random.default_rng(0).integers(5, original.config.vocab_size, (2, 12)))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        want, got = (m(input_ids=ids, attention_mask=mask)[0].numpy() for m in (original, back))
    if num_labels is None:  # hidden states of real tokens (a padded one reads a position row we write as zeros)
        want, got = want[mask.numpy() == 1], got[mask.numpy() == 1]
    np.testing.assert_array_equal(got, want)  # the same weights through the same code: the same bits
