"""Sigma rules → compiled detections, or an exact reason why a rule cannot run.

pySigma parses the rules (modifiers, conditions, placeholders, correlations). Rules for Linux
audit data are of two kinds:

* ``service: auditd`` rules are written against single audit records; they run per record
  (:class:`auditpipe.detect.views.RecordView`) with a prefilter on the record types they name.
* ``process_creation``/``file_event``/``network_connection`` rules run on the event's ECS
  document; :func:`field_mapping_pipeline` (a pySigma processing pipeline) maps their fields onto
  ours (:data:`auditpipe.detect.views.ECS_SOURCES`).

Everything else is a :class:`Problem`: another log source, a field we have no source for, a field
that needs context we do not have yet (the parent process), a correlation rule, a parse error.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml
from sigma.collection import SigmaCollection
from sigma.correlations import SigmaCorrelationRule
from sigma.exceptions import SigmaError
from sigma.processing.conditions import LogsourceCondition
from sigma.processing.pipeline import ProcessingItem, ProcessingPipeline
from sigma.processing.transformations import FieldMappingTransformation
from sigma.rule import SigmaRule

from auditpipe.detect.alerts import RuleInfo
from auditpipe.detect.sigma_match import (
    Predicate,
    Unsupported,
    compile_condition,
    fields_of,
    index_keys,
    required_fields,
    type_constraint,
)
from auditpipe.detect.views import ECS_SOURCES

__all__ = [
    "CATEGORY_FIELDS",
    "CONTEXT_FIELDS",
    "INDEX_FIELDS",
    "Problem",
    "SigmaDetection",
    "SigmaSet",
    "field_mapping_pipeline",
    "index_of",
    "load_sigma",
]

#: Sigma field → our field, per log source category (Linux)
CATEGORY_FIELDS: dict[str, dict[str, str]] = {
    "process_creation": {
        "Image": "process.executable", "CommandLine": "process.command_line",
        "ParentImage": "process.parent.executable", "ParentCommandLine": "process.parent.command_line",
        "User": "user.name", "CurrentDirectory": "process.working_directory", "ProcessId": "process.pid",
        "ParentProcessId": "process.parent.pid",
    },
    "file_event": {"TargetFilename": "file.path", "Image": "process.executable", "User": "user.name"},
    "network_connection": {
        "DestinationIp": "destination.ip", "DestinationPort": "destination.port", "Image": "process.executable",
        "Initiated": "network.initiated", "User": "user.name",
    },
}

#: fields that need context beyond the audit event itself, and who provides it
CONTEXT_FIELDS = {
    "process.parent.executable": "the parent process context (process table; not available yet)",
    "process.parent.command_line": "the parent process context (process table; not available yet)",
}

_KINDS = {"auditd": "record", **{c: "ecs" for c in CATEGORY_FIELDS}}
#: per kind, the fields whose basename can index a rule, in order of preference (sigma_match.index_keys)
INDEX_FIELDS = {"record": ("a0", "exe", "comm", "name"), "ecs": ("process.executable",)}


@dataclass(slots=True)
class Problem:
    """A rule that does not run, and why."""

    path: str
    title: str
    rule_id: str | None
    reason: str


@dataclass(slots=True, eq=False)
class SigmaDetection(RuleInfo):
    """One compiled Sigma rule."""

    path: str
    kind: str  # "record": per audit record; "ecs": per event's ECS document
    category: str  # auditd, process_creation, file_event, network_connection
    predicate: Predicate
    types: frozenset[str] | None  # record types it can match (record rules); None: any
    required: frozenset[str] | None  # at least one must be present (rules not bound to a type)
    condition_sql: Any = None  # the parsed condition, kept for the hunt's SQL conversion
    fields: dict[str, str] = field(default_factory=dict)  # Sigma field → our field (ecs rules)
    keys: tuple[str, frozenset[str]] | None = None  # (field, basenames it can match); None: any
    ruleset: ClassVar[str] = "sigma"


@dataclass(slots=True)
class SigmaSet:
    rules: list[SigmaDetection]
    problems: list[Problem]


def field_mapping_pipeline() -> ProcessingPipeline:
    """Our pySigma processing pipeline: Linux category rules' fields onto our ECS fields."""
    items = []
    for cat, mapping in CATEGORY_FIELDS.items():
        fields: dict[str | None, str | list[str]] = {k: v for k, v in mapping.items()}
        items.append(ProcessingItem(identifier=f"auditpipe_{cat}", transformation=FieldMappingTransformation(fields),
                                    rule_conditions=[LogsourceCondition(category=cat, product="linux")]))
    return ProcessingPipeline(name="auditpipe ECS", priority=20, items=items)


def load_sigma(paths: Iterable[str | Path], context: frozenset[str] = frozenset()) -> SigmaSet:
    """Load and compile every Sigma rule under ``paths``. ``context``: the context fields
    (:data:`CONTEXT_FIELDS`) that the running pipeline provides."""
    out = SigmaSet([], [])
    files = [Path(p) for p in paths]
    for f in _rule_files(files):
        try:
            coll = SigmaCollection.load_ruleset([f], collect_errors=True)
        except (yaml.YAMLError, SigmaError, UnicodeDecodeError) as e:  # the file itself is broken
            out.problems.append(Problem(str(f), f.stem, None, " ".join(str(e).split())))
            continue
        for rule in coll.rules:
            _compile_one(rule, str(f), context, out)
    return out


def _rule_files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(x for x in p.rglob("*.yml") if x.is_file()))
            out.extend(sorted(x for x in p.rglob("*.yaml") if x.is_file()))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such rule file or folder")
    return out


def _compile_one(rule: Any, path: str, context: frozenset[str], out: SigmaSet) -> None:
    title = getattr(rule, "title", "") or Path(path).stem
    rid = str(rule.id) if getattr(rule, "id", None) else None

    def problem(reason: str) -> None:
        out.problems.append(Problem(path, title, rid, reason))

    if rule.errors:
        problem("; ".join(str(e) for e in rule.errors))
        return
    if isinstance(rule, SigmaCorrelationRule):
        problem(f"correlation rule ({rule.type.name.lower()}): pySigma models it, the stream engine does not run "
                "correlations yet")
        return
    if not isinstance(rule, SigmaRule):
        problem(f"{type(rule).__name__} is not a detection rule")
        return
    ls = rule.logsource
    category = ls.service if ls.service == "auditd" else ls.category
    if ls.product not in (None, "linux") or category not in _KINDS:
        problem(f"log source product={ls.product} category={ls.category} service={ls.service} is not audit data "
                "(auditpipe runs service auditd and Linux process_creation/file_event/network_connection)")
        return
    kind = _KINDS[category]
    rule = copy.deepcopy(rule)
    mapping: dict[str, str] = {}
    if kind == "ecs":
        try:
            field_mapping_pipeline().apply(rule)
        except SigmaError as e:
            problem(f"field mapping: {e}")
            return
        mapping = CATEGORY_FIELDS[category]
    try:
        trees = [c.parse() for c in rule.detection.parsed_condition]
        for t in trees:
            if kind == "ecs":
                _check_fields(t, mapping, category, context)
        predicates = [compile_condition(t) for t in trees]
    except Unsupported as e:
        problem(str(e))
        return
    except SigmaError as e:
        problem(f"condition: {e}")
        return
    pred = predicates[0] if len(predicates) == 1 else (lambda v, ps=predicates: any(p(v) for p in ps))
    out.rules.append(SigmaDetection(
        id=rid or title, title=title, description=rule.description or "", references=list(rule.references or []),
        level=str(rule.level.name.lower()) if rule.level else "medium",
        tags=[f"{t.namespace}.{t.name}" for t in rule.tags], author=rule.author, path=path, kind=kind,
        category=category, predicate=pred,
        types=_union(type_constraint(t) for t in trees) if kind == "record" else None,
        required=_union(required_fields(t) for t in trees), condition_sql=trees, fields=mapping,
        keys=index_of(trees, INDEX_FIELDS[kind])))


def index_of(trees: list[Any], fields: tuple[str, ...]) -> tuple[str, frozenset[str]] | None:
    """(field, basenames) indexing a rule: the first of ``fields`` for which the condition
    names basenames one of which the field must have; None: the rule is not indexable."""
    for f in fields:
        keys = _union(index_keys(t, f) for t in trees)
        if keys is not None:
            return f, keys
    return None


def _union(sets: Iterable[frozenset[str] | None]) -> frozenset[str] | None:
    acc: frozenset[str] = frozenset()
    for s in sets:
        if s is None:
            return None
        acc |= s
    return acc


def _check_fields(tree: Any, mapping: dict[str, str], category: str, context: frozenset[str]) -> None:
    reverse = {v: k for k, v in mapping.items()}
    for f in sorted(fields_of(tree)):
        if f in CONTEXT_FIELDS and f not in context:
            raise Unsupported(f"field {reverse.get(f, f)} ({f}) needs {CONTEXT_FIELDS[f]}")
        if f not in ECS_SOURCES:
            raise Unsupported(f"field {f} has no source in audit events ({category} mapping covers "
                              f"{', '.join(sorted(mapping))})")
