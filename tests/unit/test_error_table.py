"""The one table that puts domain errors on the wire (api/errors.py): every domain error has a row,
each row is the documented status and type (docs/api.md), and the core never imports ``api/``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from rewardserve import errors as e
from rewardserve.api.errors import ERRORS, error_parts, http_error

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "service" / "rewardserve"

# (status, type) of each domain error, as docs/api.md documents them
DOCUMENTED = {
    e.InvalidInput: (422, "invalid_request"),
    e.InvalidSetName: (422, "invalid_request"),
    e.PromptFormatError: (422, "invalid_prompt_format"),
    e.MissingReference: (422, "missing_reference"),
    e.StaleReference: (422, "stale_reference"),
    e.UnknownModel: (404, "model_not_found"),
    e.ReferenceNotFound: (404, "reference_not_found"),
    e.ReferenceSetNotFound: (404, "reference_set_not_found"),
    e.TooManyItems: (413, "too_many_items"),
    e.TextTooLong: (413, "text_too_long"),
    e.TooManyModels: (413, "too_many_models"),
    e.TooManyReferences: (413, "too_many_references"),
    e.TooManySamples: (413, "too_many_samples"),
    e.PayloadTooLarge: (413, "payload_too_large"),
    e.Unauthorized: (401, "unauthorized"),
    e.Forbidden: (403, "forbidden"),
    e.ClientGone: (499, "client_closed_request"),
    e.ModelFailed: (500, "model_error"),
    e.NotReady: (503, "not_ready"),
    e.NotLive: (503, "not_live"),
    e.Overloaded: (503, "overloaded"),
    e.StoreUnavailable: (503, "reference_store_unavailable"),
    e.StoreFull: (503, "reference_store_full"),
}
# errors of the framework itself, mapped next to the table
FRAMEWORK = {
    (422, "invalid_request"),
    (404, "not_found"),
    (405, "method_not_allowed"),
    (415, "unsupported_media_type"),
    (500, "internal_error"),
}


def domain_errors() -> list[type[e.RewardServeError]]:
    out, todo = [], [e.RewardServeError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return [c for c in out if c is not e.RewardServeError and c is not e.LimitExceeded]


def make(cls: type[e.RewardServeError]) -> e.RewardServeError:
    if cls is e.Overloaded:
        return e.Overloaded("backbone 'enc' is overloaded", retry_after=1.2)
    if cls is e.ModelFailed:
        return e.ModelFailed("enc", ["a", "b"], RuntimeError("boom"))
    return cls("what went wrong")


@pytest.mark.parametrize("cls", domain_errors(), ids=lambda c: c.__name__)
def test_every_domain_error_maps_to_its_documented_status_and_type(cls):
    assert cls in DOCUMENTED, f"{cls.__name__}: a new domain error needs a row in ERRORS and in docs/api.md"
    status, body, _ = error_parts(make(cls))
    assert (status, body["error"]["type"]) == DOCUMENTED[cls]
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"} and body["error"]["message"]


def test_every_row_is_a_domain_error_and_nothing_else_is_in_the_table():
    assert set(ERRORS) <= set(DOCUMENTED)
    assert {c for c in DOCUMENTED if c not in ERRORS} == {e.InvalidSetName}  # takes InvalidInput's row


def test_headers_and_messages():
    status, body, headers = error_parts(e.Overloaded("backbone 'enc' is overloaded", retry_after=1.2))
    assert headers == {"Retry-After": "2"} and body["error"]["message"] == "backbone 'enc' is overloaded"
    status, body, headers = error_parts(e.StoreUnavailable("redis at redis://h:1/0 unreachable (ConnectionError)"))
    assert (status, headers) == (503, {"Retry-After": "2"})
    assert (
        body["error"]["message"] == "reference store unavailable: redis at redis://h:1/0 unreachable (ConnectionError)"
    )
    status, body, headers = error_parts(e.StoreFull("redis is full"))
    assert headers == {"Retry-After": "30"} and body["error"]["message"] == "reference store full: redis is full"
    assert error_parts(e.NotReady("loading models"))[2] == {"Retry-After": "5"}
    assert error_parts(e.Unauthorized("invalid API key"))[2] == {"WWW-Authenticate": "Bearer"}
    for cls in (e.NotLive, e.Forbidden, e.MissingReference, e.TooManyItems, e.ModelFailed):
        assert error_parts(make(cls))[2] == {}
    msg = str(e.ModelFailed("enc", ["a", "b"], RuntimeError("boom")))
    assert msg == "forward pass of backbone 'enc' (models a, b) failed: RuntimeError: boom"


def test_limits_name_their_config_field():
    from rewardserve.config import LimitsConfig

    for cls in domain_errors():
        if issubclass(cls, e.LimitExceeded):
            assert cls.limit in LimitsConfig.model_fields, cls


def test_an_unmapped_subclass_takes_its_nearest_base_row():
    class Special(e.StoreFull):
        pass

    assert http_error(Special("x")) is ERRORS[e.StoreFull]


def test_docs_error_table_is_the_code_table():
    text = (ROOT / "docs" / "api.md").read_text()
    section = text.split("### Errors", 1)[1].split("\n#", 1)[0]
    documented = set()
    for status, types in re.findall(r"^\| (\d{3}) \| ([^|]+) \|", section, flags=re.MULTILINE):
        for t in re.findall(r"`([a-z_]+)`", types):
            documented.add((int(status), t))
    assert documented == set(DOCUMENTED.values()) | FRAMEWORK
    assert "api/errors.py" in section  # it says where the table lives


def test_the_core_never_imports_the_api():
    """Only the app factory and the API itself import ``api/`` (the CLI goes through the app)."""
    allowed = {PACKAGE / "app.py"}
    for path in PACKAGE.rglob("*.py"):
        if path.parent == PACKAGE / "api" or path in allowed:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                names = [a.name for a in node.names]
                bad = ("api" in mod.split(".")) or (node.level and not mod and "api" in names)
                assert not bad, f"{path.relative_to(ROOT)} imports the api: from {'.' * node.level}{mod} import {names}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("rewardserve.api") for a in node.names), path
