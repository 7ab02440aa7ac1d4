#!/usr/bin/env python3
"""Checks grafana-dashboard.json and the metric names of alerts.yml (run by check.sh).

- the dashboard is JSON Grafana can import: schemaVersion, uid, the ${DS_PROMETHEUS} input and
  datasource variable, the job/instance/identity/route variables, unique panel ids, a grid
  that fits, and every panel with the Prometheus datasource and at least one query;
- every metric the dashboard and alerts.yml name is one that docs/REFERENCE.md §7 lists, with
  only the labels listed there (plus job, instance and, on _bucket, le); every listed metric is
  on the dashboard;
- with --emit-rules FILE: writes each query (Grafana variables replaced) as a recording rule,
  for `promtool check rules` to parse the PromQL;
- with --metrics FILE (a saved GET /metrics): every metric and selector label the dashboard
  and the alerts use is in that real output.

Exit 0 when all is well, 1 otherwise; prints one line per check.
"""
import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DS_UID = "${DS_PROMETHEUS}"
SCRAPE_LABELS = {"job", "instance"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

failures = []


def ok(message):
    print(f"ok: {message}")


def fail(message):
    failures.append(message)
    print(f"FAIL: {message}")


def documented_metrics(reference):
    """name -> set of labels, from the metrics table of REFERENCE.md §7."""
    metrics = {}
    for line in open(reference, encoding="utf-8"):
        match = re.match(r"\|\s*`(tokenproxy_[a-z_]+)`\s*\|\s*(\w+)\s*\|([^|]*)\|", line)
        if not match:
            continue
        name, kind, labels = match.groups()
        names = set(re.findall(r"`([a-z_]+)`", labels.split(":")[0]))
        metrics[name] = {"type": kind, "labels": names}
    return metrics


def substitute(expr):
    """The query as Prometheus would get it from Grafana, variables filled in."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m").replace("$__range", "1h")
    expr = re.sub(r"\$\{?(job|instance|identity|route)\}?", ".*", expr)
    return expr


def selectors(expr):
    """(metric, {label names}) for each `metric{…}` or bare metric in expr."""
    found = []
    for match in re.finditer(r"\b(tokenproxy_[a-z_]+)\b(\{([^}]*)\})?", expr):
        labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", match.group(3) or ""))
        found.append((match.group(1), labels))
    return found


def base_name(name, metrics):
    if name in metrics:
        return name, ""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and metrics.get(name[: -len(suffix)], {}).get("type") == "histogram":
            return name[: -len(suffix)], suffix
    return None, ""


def walk_panels(panels):
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def check_dashboard(path):
    try:
        dashboard = json.load(open(path, encoding="utf-8"))
    except (OSError, ValueError) as error:
        fail(f"{path} is not JSON: {error}")
        return None, []
    ok(f"{os.path.basename(path)} is JSON")
    problems = []
    if not isinstance(dashboard.get("schemaVersion"), int) or dashboard["schemaVersion"] < 36:
        problems.append(f"schemaVersion {dashboard.get('schemaVersion')!r} (want a number ≥ 36)")
    for key in ("title", "uid"):
        if not dashboard.get(key):
            problems.append(f"no {key}")
    inputs = [i for i in dashboard.get("__inputs", []) if i.get("name") == "DS_PROMETHEUS"]
    if not inputs or inputs[0].get("pluginId") != "prometheus" or inputs[0].get("type") != "datasource":
        problems.append("no __inputs entry DS_PROMETHEUS (a prometheus datasource)")
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    if variables.get("DS_PROMETHEUS", {}).get("type") != "datasource" or variables["DS_PROMETHEUS"].get("query") != "prometheus":
        problems.append("no datasource variable DS_PROMETHEUS of type prometheus")
    queries = []  # (where, expr)
    for name in ("job", "instance", "identity", "route"):
        variable = variables.get(name)
        if not variable or variable.get("type") != "query":
            problems.append(f"no query variable {name}")
            continue
        if variable.get("datasource", {}).get("uid") != DS_UID:
            problems.append(f"variable {name} does not use {DS_UID}")
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", query or "")
        if not match or match.group(2) != name:
            problems.append(f"variable {name}: query {query!r} is not label_values(…, {name})")
        else:
            queries.append((f"variable {name}", match.group(1)))
    ids = set()
    panel_count = 0
    for panel in walk_panels(dashboard.get("panels", [])):
        title = panel.get("title", "?")
        if panel.get("id") in ids:
            problems.append(f"panel {title!r}: id {panel.get('id')} used twice")
        ids.add(panel.get("id"))
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in "hwxy") or grid["x"] + grid["w"] > 24 or grid["w"] < 1 or grid["h"] < 1:
            problems.append(f"panel {title!r}: gridPos {grid} does not fit the 24-column grid")
        if panel.get("type") == "row":
            continue
        panel_count += 1
        if panel.get("datasource", {}).get("uid") != DS_UID or panel.get("datasource", {}).get("type") != "prometheus":
            problems.append(f"panel {title!r}: datasource is not {{prometheus, {DS_UID}}}")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"panel {title!r}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or not all(refs):
            problems.append(f"panel {title!r}: refIds {refs} not unique")
        for target in targets:
            if target.get("datasource", {}).get("uid") != DS_UID:
                problems.append(f"panel {title!r} {target.get('refId')}: target datasource is not {DS_UID}")
            expr = target.get("expr", "")
            if not expr.strip():
                problems.append(f"panel {title!r} {target.get('refId')}: empty expr")
            else:
                queries.append((f"panel {panel.get('id')} {title!r} {target.get('refId')}", expr))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            if annotation.get("datasource", {}).get("uid") != DS_UID:
                problems.append(f"annotation {annotation.get('name')!r}: datasource is not {DS_UID}")
            queries.append((f"annotation {annotation.get('name')!r}", annotation["expr"]))
    if panel_count == 0:
        problems.append("no panels")
    for problem in problems:
        fail(f"dashboard: {problem}")
    if not problems:
        ok(f"dashboard structure: schemaVersion {dashboard['schemaVersion']}, {panel_count} panels, each with the "
           f"{DS_UID} datasource and a query; variables DS_PROMETHEUS, job, instance, identity, route")
    return dashboard, queries


def check_names(what, exprs, metrics):
    """Metric and selector label names of exprs against REFERENCE.md §7."""
    problems = []
    used = set()
    for where, expr in exprs:
        for name, labels in selectors(expr):
            base, suffix = base_name(name, metrics)
            if base is None:
                problems.append(f"{where}: {name} is not a metric of docs/REFERENCE.md §7")
                continue
            used.add(base)
            allowed = metrics[base]["labels"] | SCRAPE_LABELS | ({"le"} if suffix == "_bucket" else set())
            unknown = labels - allowed
            if unknown:
                problems.append(f"{where}: {name} has no label {', '.join(sorted(unknown))} (it has {', '.join(sorted(allowed))})")
    for problem in problems:
        fail(f"{what}: {problem}")
    if not problems:
        ok(f"{what}: every metric and selector label is one docs/REFERENCE.md §7 lists ({len(used)} metrics used)")
    return used


def scraped(path):
    """name -> set of label names, from a Prometheus text exposition."""
    series = {}
    for line in open(path, encoding="utf-8"):
        if not line.strip() or line.startswith("#"):
            continue
        match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s", line)
        if match:
            labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', match.group(3) or ""))
            series.setdefault(match.group(1), set()).update(labels)
    return series


def check_against_scrape(path, exprs):
    series = scraped(path)
    problems = []
    for where, expr in exprs:
        for name, labels in selectors(expr):
            if name not in series:
                problems.append(f"{where}: {name} is not in {path}")
                continue
            missing = labels - series[name] - SCRAPE_LABELS
            if missing:
                problems.append(f"{where}: {name} has no label {', '.join(sorted(missing))} in {path}")
    for problem in problems:
        fail(f"against the real /metrics: {problem}")
    if not problems:
        ok(f"every metric and selector label of the dashboard and the alerts is in the real /metrics output {path} "
           f"({len([n for n in series if n.startswith('tokenproxy_')])} tokenproxy series names there)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dashboard", default=os.path.join(HERE, "grafana-dashboard.json"))
    parser.add_argument("--alerts", default=os.path.join(HERE, "alerts.yml"))
    parser.add_argument("--reference", default=os.path.join(REPO, "docs", "REFERENCE.md"))
    parser.add_argument("--emit-rules", metavar="FILE", help="write the dashboard's queries as recording rules here")
    parser.add_argument("--metrics", metavar="FILE", help="a saved GET /metrics answer to check the names against")
    args = parser.parse_args()

    metrics = documented_metrics(args.reference)
    if not metrics:
        fail(f"no metrics table found in {args.reference}")
        return 1
    ok(f"{len(metrics)} metrics documented in {os.path.relpath(args.reference, REPO)} §7: {', '.join(sorted(metrics))}")

    dashboard, queries = check_dashboard(args.dashboard)
    exprs = [(where, substitute(expr)) for where, expr in queries]
    used = check_names("dashboard", exprs, metrics)
    missing = sorted(set(metrics) - used)
    if dashboard is not None and missing:
        fail(f"dashboard: no panel shows {', '.join(missing)}")
    elif dashboard is not None:
        ok("dashboard: every documented metric is on a panel")

    alert_text = open(args.alerts, encoding="utf-8").read()
    alert_exprs = [(f"alerts.yml expr {i + 1}", block) for i, block in enumerate(re.findall(r"expr: \|\n((?:\s{10,}.*\n)+)", alert_text))]
    if not alert_exprs:
        fail("alerts.yml: no `expr: |` blocks found")
    check_names("alerts.yml", alert_exprs, metrics)

    if args.emit_rules:
        rules = [{"record": f"tokenproxy_dashboard:query_{i + 1}", "expr": expr} for i, (_, expr) in enumerate(exprs)]
        with open(args.emit_rules, "w", encoding="utf-8") as out:
            json.dump({"groups": [{"name": "grafana-dashboard-queries", "rules": rules}]}, out, indent=1)
        ok(f"wrote the dashboard's {len(rules)} queries as recording rules to {args.emit_rules}")

    if args.metrics:
        check_against_scrape(args.metrics, exprs + alert_exprs)

    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
