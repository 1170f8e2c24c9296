"""The manifest's JSON Schema (schema/manifest.schema.json) accepts the documented example,
which a Rust unit test also parses with the real type, and rejects broken manifests."""

import copy
import json
from pathlib import Path

import jsonschema
import pytest

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "schema/manifest.schema.json").read_text())
EXAMPLE = json.loads((REPO / "schema/manifest.example.json").read_text())


def validator():
    cls = jsonschema.validators.validator_for(SCHEMA)
    cls.check_schema(SCHEMA)
    return cls(SCHEMA, format_checker=cls.FORMAT_CHECKER)


def test_example_is_valid():
    validator().validate(EXAMPLE)


@pytest.mark.parametrize(
    "path,value",
    [
        (("format_version",), 2),
        (("date",), "28-11-2026"),
        (("tables", 0, "sha256"), "not-a-hash"),
        (("tables", 0, "rows"), -1),
        (("snapshot", "txid_snapshot"), "nonsense"),
        (("compression_level",), 10),
    ],
)
def test_broken_manifests_are_rejected(path, value):
    broken = copy.deepcopy(EXAMPLE)
    target = broken
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validator().validate(broken)


def test_unknown_fields_are_rejected():
    broken = copy.deepcopy(EXAMPLE)
    broken["tables"][0]["extra"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validator().validate(broken)
