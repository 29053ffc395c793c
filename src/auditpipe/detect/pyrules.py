"""Python detection rules in the style Panther users write.

A rule is a ``.py`` file with ``rule(event) -> bool`` and optionally ``title(event)``,
``severity(event)``, ``dedup(event)``, ``alert_context(event)``. Its metadata comes from a
sibling ``<name>.yml`` in Panther's spec (``RuleID``, ``DisplayName``, ``Severity``, ``Tags``,
``Reports: {MITRE ATT&CK: [TA0005:T1070]}``, ``Description``, ``Reference``,
``DedupPeriodMinutes``, ``Enabled``, ``Tests``) or from module constants of the same meaning
(``RULE_ID``, ``TITLE``, ``SEVERITY``, ``TAGS``, ``DESCRIPTION``, ``REFERENCE``,
``DEDUP_PERIOD_MINUTES``, ``TESTS``). ``event`` is the ECS document as a read-only mapping with
``deep_get(*keys, default=None)``. Tests are ``{Name, ExpectedResult, Log}`` entries.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import yaml

from auditpipe.detect.alerts import RuleInfo
from auditpipe.detect.sigma_rules import Problem
from auditpipe.detect.views import deep_get

__all__ = ["PythonRule", "RuleEvent", "TestResult", "load_python_rules", "run_tests"]

_LEVELS = {"info": "informational", "informational": "informational", "low": "low", "medium": "medium",
           "high": "high", "critical": "critical"}


class RuleEvent(Mapping):
    """The ECS document a Python rule sees: dict access plus Panther's ``deep_get``."""

    __slots__ = ("_doc",)

    def __init__(self, doc: dict) -> None:
        self._doc = doc

    def __getitem__(self, key: str) -> Any:
        return self._doc[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._doc)

    def __len__(self) -> int:
        return len(self._doc)

    def deep_get(self, *keys: str, default: Any = None) -> Any:
        return deep_get(self._doc, *keys, default=default)


@dataclass(eq=False)
class PythonRule(RuleInfo):
    """A loaded Python rule: its module, metadata and test cases."""

    path: str
    module: ModuleType
    tests: list[dict] = field(default_factory=list)
    dedup_minutes: float | None = None
    errors: int = 0
    ruleset: ClassVar[str] = "python"

    def matches(self, event: RuleEvent) -> bool:
        return bool(self.module.rule(event))

    def hook(self, name: str, event: RuleEvent) -> Any:
        """The optional function ``name`` applied to ``event``; None when the rule has none."""
        fn = getattr(self.module, name, None)
        return fn(event) if callable(fn) else None


def load_python_rules(paths: Sequence[str | Path]) -> tuple[list[PythonRule], list[Problem]]:
    rules: list[PythonRule] = []
    problems: list[Problem] = []
    for f in _files(paths):
        try:
            rule = _load(f)
        except Exception as e:  # noqa: BLE001 - a rule file is user code: any error is its problem, reported
            problems.append(Problem(str(f), f.stem, None, f"{type(e).__name__}: {e}"))
            continue
        if rule is not None:
            rules.append(rule)
    return rules, problems


def _files(paths: Sequence[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(x for x in p.rglob("*.py") if not x.name.startswith("_")))
        elif p.suffix == ".py":
            out.append(p)
    return out


def _load(path: Path) -> PythonRule | None:
    spec = importlib.util.spec_from_file_location(f"auditpipe_rule_{abs(hash(str(path.resolve())))}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "rule", None)):
        raise TypeError("no rule(event) function")
    meta = _sibling_yaml(path)
    if meta.get("Enabled") is False:
        return None

    def pick(yaml_key: str, const: str, default: Any = None) -> Any:
        v = meta.get(yaml_key)
        return v if v is not None else getattr(module, const, default)

    level = str(pick("Severity", "SEVERITY", "medium")).lower()
    if level not in _LEVELS:
        raise ValueError(f"severity {level!r} is not one of {', '.join(_LEVELS)}")
    tags = [str(t) for t in pick("Tags", "TAGS", [])] + _mitre_tags(meta.get("Reports", {}))
    ref = pick("Reference", "REFERENCE")
    refs = ref if isinstance(ref, list) else ([ref] if ref else [])
    return PythonRule(
        id=str(pick("RuleID", "RULE_ID", path.stem)), title=str(pick("DisplayName", "TITLE", path.stem)),
        description=str(pick("Description", "DESCRIPTION", "") or (module.__doc__ or "").strip()),
        references=[str(r) for r in refs], level=_LEVELS[level], tags=tags, author=pick("Author", "AUTHOR"),
        path=str(path), module=module, tests=list(pick("Tests", "TESTS", []) or []),
        dedup_minutes=pick("DedupPeriodMinutes", "DEDUP_PERIOD_MINUTES"))


def _sibling_yaml(path: Path) -> dict:
    for ext in (".yml", ".yaml"):
        y = path.with_suffix(ext)
        if y.exists():
            data = yaml.safe_load(y.read_text())
            if not isinstance(data, dict):
                raise ValueError(f"{y}: not a mapping")
            return data
    return {}


def _mitre_tags(reports: Any) -> list[str]:
    """Panther's ``Reports: {MITRE ATT&CK: [TA0005:T1070.006]}`` → Sigma-style attack tags."""
    out = []
    for entry in (reports or {}).get("MITRE ATT&CK", []) or []:
        for part in str(entry).split(":"):
            if part.upper().startswith("T") and not part.upper().startswith("TA"):
                out.append(f"attack.{part.lower()}")
    return out


@dataclass(slots=True)
class TestResult:
    rule: str
    name: str
    passed: bool
    detail: str = ""


def run_tests(rules: list[PythonRule]) -> list[TestResult]:
    """Each rule's embedded tests (Panther ``Tests``: ``Name``, ``ExpectedResult``, ``Log``)."""
    out = []
    for r in rules:
        for i, t in enumerate(r.tests):
            name = str(t.get("Name", f"test {i + 1}"))
            want = bool(t.get("ExpectedResult", True))
            try:
                got = r.matches(RuleEvent(t.get("Log") or {}))
            except Exception as e:  # noqa: BLE001 - the test reports the rule's own error
                out.append(TestResult(r.id, name, False, f"raised {type(e).__name__}: {e}"))
                continue
            out.append(TestResult(r.id, name, got == want, "" if got == want else f"expected {want}, got {got}"))
    return out
