#!/usr/bin/env python3
"""Checks that the alert rules and the Grafana dashboards use only metrics the worker exports.

Every PromQL expression of the rule files (`expr`) and of the dashboards (panel targets and
template-variable queries) is scanned for metric names and label names, which must be in the
metrics contract: the table between the `metrics-contract` markers of docs/operations.md
(name, type, labels). A histogram's name is used with `_bucket`, `_sum` or `_count`; `up` is
Prometheus's own. Label names must belong to the metric they select, or be target labels that
the scrape adds (job, instance, ...).

With `--scrape FILE` (the Prometheus text format of a worker's /metrics) it also checks the
real worker: every metric of the contract is exported with its type and its labels, and every
name the rules and dashboards use appears in it.

    python3 scripts/check_metrics_usage.py                      # the repository's files
    python3 scripts/check_metrics_usage.py --scrape metrics.txt # and a real scrape

Exit status 0 when everything checks, 1 with one line per problem otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONTRACT = ROOT / "docs" / "operations.md"
DEFAULT_RULES = sorted((ROOT / "deploy" / "prometheus").glob("*.rules.yml"))
DEFAULT_DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))

# Series that Prometheus makes itself for every target, with its target labels.
SYNTHETIC = {"up"}
# Labels that the scrape attaches (static configs, Kubernetes service discovery).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "endpoint", "service", "node"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless"}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
NUMBER_WORDS = {"inf", "nan"}
# Aggregations may put `by (...)`/`without (...)` between their name and their arguments.
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk"}
AGGREGATIONS |= {"quantile", "limitk", "limit_ratio"}


class CheckError(Exception):
    """A file that cannot be read as what it should be."""


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # counter, gauge, histogram
    labels: frozenset[str]


@dataclass
class Usage:
    """Metric and label names of one PromQL expression."""

    metrics: set[str] = field(default_factory=set)
    # (metric, label) for labels of a selector; (None, label) for by/on/... lists.
    labels: set[tuple[str | None, str]] = field(default_factory=set)


# ---------------------------------------------------------------------------------------
# The contract
# ---------------------------------------------------------------------------------------


def load_contract(path: Path) -> dict[str, Metric]:
    """The metrics table between `<!-- metrics-contract:begin -->` and `...:end -->`:
    columns name, type, labels; names and labels in backticks, "(none)" for no label."""
    text = path.read_text(encoding="utf-8")
    match = re.search(r"<!--\s*metrics-contract:begin\s*-->(.*?)<!--\s*metrics-contract:end\s*-->", text, re.S)
    if not match:
        raise CheckError(f"{path}: no <!-- metrics-contract:begin --> ... end --> table")
    metrics: dict[str, Metric] = {}
    for line in match.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        name = cells[0].strip("`")
        kind = cells[1].split()[0].lower() if cells[1] else ""
        if kind not in {"counter", "gauge", "histogram"}:
            raise CheckError(f"{path}: metric {name}: unknown type {cells[1]!r}")
        # "(none)" may be followed by an explanation that names other things in backticks.
        labels = frozenset() if cells[2].startswith("(none)") else frozenset(re.findall(r"`(\w+)`", cells[2]))
        metrics[name] = Metric(name, kind, labels)
    if not metrics:
        raise CheckError(f"{path}: the metrics-contract table lists no metric")
    return metrics


# ---------------------------------------------------------------------------------------
# PromQL scanning
# ---------------------------------------------------------------------------------------

TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<variable>\$\{[^}]*\}|\$[a-zA-Z_][a-zA-Z0-9_]*|\[\[[^\]]*\]\])
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){}\[\],@:])
    """,
    re.X,
)


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens = []
    pos = 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise CheckError(f"cannot read PromQL at {expr[pos : pos + 20]!r} in {expr!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind != "space":
            tokens.append((kind, m.group()))
    return tokens


def unquote(s: str) -> str:
    return s[1:-1]


def promql_usage(expr: str) -> Usage:
    """Metric names and label names in a PromQL expression (Grafana variables allowed)."""
    # Grafana's template query `label_values(selector, label)`.
    lv = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", expr, re.S)
    if lv:
        usage = promql_usage(lv.group(1))
        usage.labels.update((m, lv.group(2)) for m in usage.metrics or {None})
        return usage
    tokens = tokenize(expr)
    usage = Usage()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "ident" and text in LABEL_LIST_KEYWORDS and nxt == "(":
            i += 2
            while i < len(tokens) and tokens[i][1] != ")":
                if tokens[i][0] == "ident":
                    usage.labels.add((None, tokens[i][1]))
                i += 1
        elif kind == "ident" and text in KEYWORDS:
            pass
        elif kind == "ident" and (nxt == "(" or (text in AGGREGATIONS and nxt in {"by", "without"})):
            pass  # a function or an aggregation
        elif kind == "ident" and text.lower() in NUMBER_WORDS:
            pass
        elif kind == "ident":
            usage.metrics.add(text)
            if nxt == "{":
                i = read_matchers(tokens, i + 1, text, usage)
                continue
        elif text == "{":
            # A selector with no name outside the braces: {__name__="x", ...}.
            i = read_matchers(tokens, i, None, usage)
            continue
        elif text == "[":
            while i < len(tokens) and tokens[i][1] != "]":
                i += 1
        i += 1
    return usage


def read_matchers(tokens: list[tuple[str, str]], i: int, metric: str | None, usage: Usage) -> int:
    """Reads `{label op "value", ...}` starting at the `{`; returns the index after `}`."""
    i += 1
    pending: list[str] = []
    name = metric
    while i < len(tokens) and tokens[i][1] != "}":
        kind, text = tokens[i]
        if kind == "ident" and i + 2 < len(tokens) and tokens[i + 1][1] in {"=", "!=", "=~", "!~"}:
            value_kind, value = tokens[i + 2]
            if text == "__name__" and tokens[i + 1][1] == "=" and value_kind == "string":
                name = unquote(value)
                usage.metrics.add(name)
            elif text != "__name__":
                pending.append(text)
            i += 3
            continue
        i += 1
    usage.labels.update((name, label) for label in pending)
    return i + 1


# ---------------------------------------------------------------------------------------
# Where the expressions are
# ---------------------------------------------------------------------------------------


def rule_expressions(path: Path) -> tuple[list[tuple[str, str]], set[str]]:
    """(where, expr) of every rule, and the names that recording rules define."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise CheckError(f"{path}: not YAML: {e}") from e
    found, recorded = [], set()
    for group in (doc or {}).get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            found.append((f"{path.name}: {name}", str(rule.get("expr", ""))))
            if "record" in rule:
                recorded.add(rule["record"])
    return found, recorded


def dashboard_expressions(path: Path) -> list[tuple[str, str]]:
    """(where, expr) of every panel target and every query-type template variable."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckError(f"{path}: not JSON: {e}") from e
    found: list[tuple[str, str]] = []

    def panels(items: list) -> None:
        for panel in items:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((f"{path.name}: panel {panel.get('title')!r} {target.get('refId')}", target["expr"]))
            panels(panel.get("panels", []))

    panels(doc.get("panels", []))
    for var in doc.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if query:
            found.append((f"{path.name}: variable ${var.get('name')}", query))
    return found


# ---------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------


def base_metric(name: str, contract: dict[str, Metric]) -> Metric | None:
    """The contract metric that a series name belongs to (histograms through their suffixes)."""
    if name in contract:
        return contract[name]
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            base = contract.get(name[: -len(suffix)])
            if base and base.kind == "histogram":
                return base
    return None


def check_usage(
    expressions: list[tuple[str, str]], contract: dict[str, Metric], recorded: set[str]
) -> tuple[list[str], set[str]]:
    """Problems, and every metric name used."""
    problems: list[str] = []
    used: set[str] = set()
    for where, expr in expressions:
        try:
            usage = promql_usage(expr)
        except CheckError as e:
            problems.append(f"{where}: {e}")
            continue
        if not usage.metrics:
            problems.append(f"{where}: no metric name in {expr!r}")
        used |= usage.metrics
        allowed_anywhere = set(TARGET_LABELS)
        for name in usage.metrics:
            metric = base_metric(name, contract)
            if metric:
                allowed_anywhere |= metric.labels
                if name.endswith("_bucket"):
                    allowed_anywhere.add("le")
            elif name not in SYNTHETIC and name not in recorded:
                problems.append(f"{where}: metric {name} is not in the contract")
        for metric_name, label in sorted(usage.labels, key=str):
            if metric_name is None:
                allowed = allowed_anywhere
            else:
                metric = base_metric(metric_name, contract)
                if metric is None:
                    continue  # already reported
                allowed = metric.labels | TARGET_LABELS | ({"le"} if metric_name.endswith("_bucket") else set())
            if label not in allowed:
                problems.append(f"{where}: label {label!r} is not a label of {metric_name or 'the metrics used'}")
    return problems, used


def check_scrape(text: str, contract: dict[str, Metric], used: set[str]) -> list[str]:
    """Compares a real /metrics text with the contract and with the names used."""
    from prometheus_client.parser import text_string_to_metric_families

    problems: list[str] = []
    families = {}
    sample_names: set[str] = set()
    try:
        for family in text_string_to_metric_families(text):
            # The parser drops `_total` from counter family names.
            name = family.name + "_total" if family.type == "counter" else family.name
            families[name] = family
            sample_names.update(s.name for s in family.samples)
    except ValueError as e:
        return [f"scrape: not the Prometheus text format: {e}"]
    for name, metric in sorted(contract.items()):
        family = families.get(name)
        if family is None:
            problems.append(
                f"scrape: {name} is missing (a labelled counter appears only once it has counted: "
                "make the worker reject one detection before scraping)"
            )
            continue
        if family.type != metric.kind:
            problems.append(f"scrape: {name} has type {family.type}, the contract says {metric.kind}")
        for sample in family.samples:
            extra = set(sample.labels) - metric.labels - {"le"}
            missing = metric.labels - set(sample.labels)
            if extra or missing:
                got, want = sorted(sample.labels), sorted(metric.labels)
                problems.append(f"scrape: {sample.name} has labels {got}, the contract says {want}")
                break
    for name in sorted(used - SYNTHETIC):
        if name not in sample_names:
            problems.append(f"scrape: {name}, used by the rules or dashboards, is not in the scrape")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contract", type=Path, default=DEFAULT_CONTRACT, help="markdown file with the table")
    parser.add_argument("--rules", type=Path, nargs="*", default=DEFAULT_RULES, help="Prometheus rule files")
    parser.add_argument("--dashboards", type=Path, nargs="*", default=DEFAULT_DASHBOARDS, help="Grafana JSON files")
    parser.add_argument("--scrape", type=Path, help="a worker's /metrics output to check against")
    args = parser.parse_args(argv)
    try:
        contract = load_contract(args.contract)
        expressions: list[tuple[str, str]] = []
        recorded: set[str] = set()
        for path in args.rules:
            found, names = rule_expressions(path)
            expressions += found
            recorded |= names
        for path in args.dashboards:
            expressions += dashboard_expressions(path)
        problems, used = check_usage(expressions, contract, recorded)
        if args.scrape:
            problems += check_scrape(args.scrape.read_text(encoding="utf-8"), contract, used)
    except (CheckError, OSError) as e:
        print(f"check_metrics_usage: {e}", file=sys.stderr)
        return 1
    for problem in problems:
        print(problem, file=sys.stderr)
    files = len(args.rules) + len(args.dashboards)
    status = "FAILED" if problems else "ok"
    scraped = f", checked against {args.scrape}" if args.scrape else ""
    print(
        f"check_metrics_usage: {status}: {len(expressions)} expressions in {files} files use "
        f"{len(used)} metric names ({', '.join(sorted(used))}){scraped}"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
