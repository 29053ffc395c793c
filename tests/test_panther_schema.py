"""The normalizer's schema facts (panther_schema.py) agree with Panther's Linux.Auditd schema."""

from __future__ import annotations

import pytest

from auditpipe.normalize import panther_schema as ps
from conftest import shared_path

yaml = pytest.importorskip("yaml")

@pytest.fixture(scope="module")
def schema():
    with shared_path("schemas", "linux-auditd.yml").open() as f:
        return yaml.safe_load(f)


def test_log_type(schema):
    assert schema["schema"] == ps.LOG_TYPE


def test_field_sets_match(schema):
    names = {f["name"] for f in schema["fields"]}
    assert names == ps.ALL_FIELDS
    strings = {f["name"] for f in schema["fields"] if f["type"] == "string"}
    assert strings - ps.RESERVED == ps.STRING_FIELDS
    # the reserved columns the normalizer fills itself are the schema's non-body ones
    assert {f["name"] for f in schema["fields"] if f["type"] != "string"} <= ps.RESERVED


def test_indicators_match(schema):
    indicators = {f["name"]: f["indicators"] for f in schema["fields"] if f.get("indicators")}
    assert {k: [v] for k, v in ps.INDICATORS.items()} == indicators
