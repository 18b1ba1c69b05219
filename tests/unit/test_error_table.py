"""The one table that puts domain errors on the wire (api/errors.py): every domain error has a row,
each row is the documented status and type (docs/api.md) of ``rewardclient.protocol``, the SDK
knows every type by name; and the layers hold (the core never imports ``api/`` nor the wire models,
``references/`` never the pipeline, no import cycles, no oversized module)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from rewardclient import client as sdk
from rewardclient import protocol
from rewardserve import errors as e
from rewardserve.api.errors import ERRORS, error_parts, http_error

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "service" / "rewardserve"

# (status, type) of each domain error, as docs/api.md documents them
DOCUMENTED = {
    e.InvalidInput: (422, "invalid_request"),
    e.InvalidSetName: (422, "invalid_request"),
    e.TooManyMessages: (422, "invalid_request"),
    e.PromptFormatError: (422, "invalid_prompt_format"),
    e.MissingReference: (422, "missing_reference"),
    e.MissingLabel: (422, "missing_label"),
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
    e.LoadFailed: (503, "load_failed"),
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
    assert {c for c in DOCUMENTED if c not in ERRORS} == {e.InvalidSetName, e.TooManyMessages}  # InvalidInput's row


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
    for status, types, retry in re.findall(r"^\| (\d{3}) \| ([^|]+) \| (yes|no) \|", section, flags=re.MULTILINE):
        for t in re.findall(r"`([a-z_]+)`", types):
            documented.add((int(status), t))
            assert protocol.ERROR_TYPES[t].retryable == (retry == "yes"), t
    assert documented == set(DOCUMENTED.values()) | FRAMEWORK
    assert "api/errors.py" in section  # it says where the table lives


def test_every_wire_type_is_defined_once_in_the_protocol_and_known_to_the_sdk():
    for row in ERRORS.values():
        assert protocol.ERROR_TYPES[row.type.name] is row.type
    assert set(protocol.ERROR_TYPES) == {t for _, t in DOCUMENTED.values()} | {t for _, t in FRAMEWORK}
    assert set(sdk.ERROR_CLASSES) == set(protocol.ERROR_TYPES)
    retried = {name for name, t in protocol.ERROR_TYPES.items() if t.retryable}
    assert retried == {"not_ready", "overloaded", "reference_store_unavailable", "reference_store_full"}


# -- layers -------------------------------------------------------------------------------------------
# the core: the pipeline and what it stands on (registry, batcher, backends, the math)
CORE = [
    "scoring.py",
    "combine.py",
    "normalise.py",
    "kinds.py",
    "batcher.py",
    "batch_selection.py",
    "health.py",
    "registry",
    "backends",
]
# modules over the size limit, each with its reason
OVERSIZED: dict[str, str] = {}  # none today; a module over the limit is listed here with its reason
MAX_LINES = 350


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports, anywhere in it except ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    me = _module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("rewardserve")}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if not mod.startswith("rewardserve"):
                continue
            out.add(mod)
            for a in node.names:  # `from . import lsc`: a submodule
                sub = PACKAGE.parent / Path(*f"{mod}.{a.name}".split("."))
                if sub.with_suffix(".py").exists() or (sub / "__init__.py").exists():
                    out.add(f"{mod}.{a.name}")
    return out


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _files(*names: str) -> list[Path]:
    out: list[Path] = []
    for n in names:
        p = PACKAGE / n
        out += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return out


def test_the_core_never_imports_the_api():
    """Only the app factory and the API itself import ``api/`` (the CLI goes through the app)."""
    allowed = {PACKAGE / "app.py"}
    for path in PACKAGE.rglob("*.py"):
        if path.parent == PACKAGE / "api" or path in allowed:
            continue
        assert not any(m.startswith("rewardserve.api") for m in _imports(path)), f"{path.relative_to(ROOT)}"


def test_the_core_imports_neither_the_api_nor_the_wire_models():
    for path in _files(*CORE):
        bad = {m for m in _imports(path) if m.startswith("rewardserve.api") or m == "rewardserve.schemas"}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_references_never_import_the_pipeline():
    for path in _files("references"):
        assert "rewardserve.scoring" not in _imports(path), path.relative_to(ROOT)
    # the reference chain itself knows only the store, the errors, the protocol and the prompts'
    # fingerprints (prompt_formats.fingerprint: the protocol's digest, a long conversation hashed a
    # slice at a time; a leaf module that imports only the errors and the protocol, with its parts:
    # the families' parsers and a tokenizer's learned format)
    assert _imports(PACKAGE / "references" / "resolver.py") <= {
        "rewardserve",
        "rewardserve.errors",
        "rewardserve.prompt_formats",
        "rewardserve.references.base",
    }
    parts = {"rewardserve.prompt_families", "rewardserve.prompt_tokenizer"}
    assert _imports(PACKAGE / "prompt_formats.py") <= {"rewardserve.errors", *parts}
    for part in parts:
        assert _imports(PACKAGE / f"{part.split('.')[-1]}.py") <= {"rewardserve.errors", *parts}, part


def test_the_batcher_knows_no_backend():
    assert not any(m.startswith("rewardserve.backends") for m in _imports(PACKAGE / "batcher.py"))
    assert "getattr(" not in (PACKAGE / "batcher.py").read_text()


def test_no_import_cycles():
    graph = _graph()
    # importing a submodule runs its packages' __init__ first (unless the importer is inside them)
    for mod in list(graph):
        parents = {".".join(t.split(".")[:k]) for t in graph[mod] for k in range(2, t.count(".") + 1)}
        graph[mod] = {m for m in graph[mod] | parents if m in graph and not (mod + ".").startswith(m + ".")}
    state: dict[str, int] = {}

    def visit(mod: str, path: list[str]) -> None:
        state[mod] = 1
        for dep in sorted(graph.get(mod, ())):
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] if dep in path else path
                raise AssertionError("import cycle: " + " -> ".join([*cycle, dep]))
            if dep not in state:
                visit(dep, [*path, dep])
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])


def test_no_module_is_oversized_and_the_pipeline_reads_in_one_screen():
    for path in PACKAGE.rglob("*.py"):
        rel = str(path.relative_to(PACKAGE))
        n = len(path.read_text().splitlines())
        if rel in OVERSIZED:
            continue
        assert n <= MAX_LINES, f"{rel}: {n} lines (limit {MAX_LINES})"
    assert len((PACKAGE / "scoring.py").read_text().splitlines()) <= 200
