"""`python -m kodcode.report`: what a store's run produced and what it cost.

Yield by subset, difficulty, style, model and prompt version; cost per accepted triplet with every
failed attempt's calls counted; attempts per question; labels; failure reasons ranked; duplicates and
contamination; LLM totals. `--compare-prompts` compares solver and tester template versions by pass rate
with Wilson 95% intervals. The store is opened read-only, so a report on a running store is safe.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from kodcode.errors import StoreError
from kodcode.store import queries
from kodcode.store.queries import ReadConnection, open_readonly

__all__ = [
    "COST_ROLES",
    "build_parser",
    "build_report",
    "compare_prompts",
    "main",
    "normalise_reason",
    "open_readonly",
    "render_compare",
    "render_report",
    "render_table",
    "wilson_interval",
]

SETTLED_STATES = ("verified", "failed", "duplicate", "contaminated", "rejected")
COST_ROLES = ("proposer", "solver", "tester", "rewriter")
_Z95 = 1.959963984540054


# -- pure figures --------------------------------------------------------------------------------------------

def wilson_interval(passed: int, total: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; honest at small n and at 0% or 100%."""
    if total <= 0:
        return 0.0, 1.0
    p = passed / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


_REASON_RULES: tuple[tuple[re.Pattern[str], Any], ...] = (
    (re.compile(r"^failed: "), "failed tests"),
    (re.compile(r"^missing tests: "), "missing tests"),
    (re.compile(r"^missing module: ([\w]+)"), lambda m: f"missing module: {m.group(1)}"),   # says what to install
    (re.compile(r"^duplicate of \S+ \((\w+)"), lambda m: f"duplicate ({m.group(1)})"),
    (re.compile(r"^contaminated: matches (\S+)"), lambda m: f"contaminated: {m.group(1)}"),
    (re.compile(r"^collection error: (?:E\s+)?([A-Za-z_][\w.]*(?:Error|Exception|Exit))\b"),
     lambda m: f"collection error: {m.group(1)}"),
    (re.compile(r"^collection error: pytest exit status"), "collection error: pytest exit status"),
    (re.compile(r"^collection error: "), "collection error"),
    # "<stage> output unusable: <first clause>: details" and supervision's "<actor> error: <Type>: details"
    (re.compile(r"^(\w+ output unusable): ([^:(]+)"), lambda m: f"{m.group(1)}: {m.group(2).strip()}"),
    (re.compile(r"^(\w+) error: (\w+)"), lambda m: f"{m.group(1)} error: {m.group(2)}"),
)


def normalise_reason(reason: str | None) -> str:
    """A reason's group: details that differ per item (test names, ids, scores, lengths) are dropped."""
    text = (reason or "").strip()
    if not text:
        return "unknown"
    for pattern, replacement in _REASON_RULES:
        match = pattern.match(text)
        if match:
            return replacement(match) if callable(replacement) else replacement
    # Generic: the first clause, without parenthesised or numeric detail ("question too short (12 chars)").
    head = re.split(r"[:(]", text, maxsplit=1)[0].strip()
    return re.sub(r"\s+\d[\d.]*\b", "", head) or text


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _distribution(values: Iterable[int]) -> dict[str, int]:
    counts = Counter(values)
    return {str(key): counts[key] for key in sorted(counts)}


def _json(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# -- reading the store -------------------------------------------------------------------------------------

def _yield_group(rows: Iterable[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """(group, state) pairs -> {group: settled, verified, failed, yield, solve_rate}."""
    groups: dict[str, Counter[str]] = defaultdict(Counter)
    for group, state in rows:
        groups[group][state] += 1
    out: dict[str, dict[str, Any]] = {}
    for group in sorted(groups):
        states = groups[group]
        settled = sum(states[s] for s in SETTLED_STATES)
        solved = states["verified"] + states["failed"]
        out[group] = {"settled": settled, "verified": states["verified"], "failed": states["failed"],
                      "yield": _ratio(states["verified"], settled), "solve_rate": _ratio(states["verified"], solved)}
    return out


def _attempt_role_info(lineage: dict[str, Any], role: str) -> dict[str, Any]:
    info = lineage.get(role)
    return info if isinstance(info, dict) else {}


def build_report(conn: ReadConnection) -> dict[str, Any]:
    """Every figure of the report, as one JSON-ready dict."""
    items = queries.item_rows(conn)
    attempts = queries.attempt_lineages(conn)
    rewrites = queries.rewrite_rows(conn)
    settled_items = [i for i in items if i["state"] in SETTLED_STATES]
    judged_by_item: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for attempt in attempts:
        attempt["lineage"] = _json(attempt["lineage"])
        if attempt["state"] == "judged":
            judged_by_item[attempt["item_id"]].append(attempt)

    counts = Counter(i["state"] for i in items)
    verified = counts["verified"]
    rewrites_verified = sum(1 for r in rewrites if r["state"] == "verified")

    # Yield by style: the instruct question itself, then each rewrite style (verified / settled rewrites).
    by_style: dict[str, dict[str, Any]] = {"instruct": _yield_group(("instruct", i["state"]) for i in items)
                                           .get("instruct", {"settled": 0, "verified": 0, "failed": 0,
                                                             "yield": None, "solve_rate": None})}
    rewrite_states: dict[str, Counter[str]] = defaultdict(Counter)
    for rewrite in rewrites:
        rewrite_states[rewrite["style"]][rewrite["state"]] += 1
    for style in sorted(rewrite_states):
        states = rewrite_states[style]
        settled = states["verified"] + states["rejected"]
        by_style[style] = {"settled": settled, "verified": states["verified"], "failed": states["rejected"],
                           "yield": _ratio(states["verified"], settled), "solve_rate": _ratio(states["verified"], settled)}

    # Yield by the solver model and prompt version that answered the item (its last judged attempt's).
    def last_solver(item: dict[str, Any]) -> dict[str, Any]:
        judged = judged_by_item.get(item["item_id"])
        if not judged:
            return {}
        lineage = judged[-1]["lineage"]
        return _attempt_role_info(lineage, "solver") or _attempt_role_info(lineage, "tester")

    solved_items = [i for i in items if i["state"] in ("verified", "failed")]
    by_model = _yield_group((last_solver(i).get("model") or "unknown", i["state"]) for i in solved_items)
    proposer_versions = _yield_group(
        (_prompt_key(_attempt_role_info(_json(i["lineage"]), "proposer")), i["state"]) for i in settled_items
        if _attempt_role_info(_json(i["lineage"]), "proposer"))

    attempts_per_question = [len(judged_by_item.get(i["item_id"], ())) for i in solved_items]
    first_pass = [next(n for n, a in enumerate(judged_by_item[i["item_id"]], 1) if a["passed"])
                  for i in solved_items if i["state"] == "verified" and any(a["passed"] for a in judged_by_item.get(i["item_id"], ()))]

    failures = Counter(normalise_reason(a["reason"]) for a in attempts if a["state"] == "judged" and not a["passed"])
    item_losses = Counter(normalise_reason(i["reason"]) for i in items if i["state"] in ("failed", "duplicate", "contaminated", "rejected"))
    rewrite_losses = Counter(normalise_reason(r["reason"]) for r in rewrites if r["state"] == "rejected")

    gate_by_subset: dict[str, dict[str, int]] = {}
    for item in items:
        if item["state"] in ("duplicate", "contaminated", "rejected"):
            entry = gate_by_subset.setdefault(item["subset"], {"duplicate": 0, "contaminated": 0, "rejected": 0})
            entry[item["state"]] += 1

    return {
        "store": {"runs": _runs(conn), "items": {state: counts[state] for state in sorted(counts)},
                  "verified": verified, "rewrites_verified": rewrites_verified,
                  "exportable_rows": verified + rewrites_verified},
        "yield": {
            "by_subset": _yield_group((i["subset"], i["state"]) for i in items),
            "by_difficulty": _yield_group((i["difficulty"] or "unlabelled", i["state"]) for i in solved_items),
            "by_style": by_style,
            "by_model": by_model,
            "by_proposer_prompt": proposer_versions,
            "by_attempt_prompt": _attempt_prompt_rates(attempts),
        },
        "cost": _cost(conn, verified, verified + rewrites_verified),
        "attempts": {
            "questions": len(attempts_per_question),
            "mean": _ratio(sum(attempts_per_question), len(attempts_per_question)),
            "distribution": _distribution(attempts_per_question),
            "mean_to_first_pass": _ratio(sum(first_pass), len(first_pass)),
            "judged": sum(len(v) for v in judged_by_item.values()),
            "passed": sum(1 for a in attempts if a["state"] == "judged" and a["passed"]),
        },
        "labels": dict(sorted(Counter(i["difficulty"] or "unlabelled" for i in solved_items).items())),
        "failure_reasons": {
            "attempts": [{"reason": r, "count": n} for r, n in _ranked(failures)],
            "items": [{"reason": r, "count": n} for r, n in _ranked(item_losses)],
            "rewrites": [{"reason": r, "count": n} for r, n in _ranked(rewrite_losses)],
        },
        "gate_by_subset": dict(sorted(gate_by_subset.items())),
        "matrix": _matrix(conn),
        "llm": _llm_totals(conn),
    }


def _matrix(conn: ReadConnection) -> dict[str, Any]:
    """Execution-matrix evidence per item (solutions, test files, accepted pair, score, dropped tests, real
    wrong solutions and how many the accepted tests reject) and the run's detection rate."""
    items = []
    wrong = rejected = off_diagonal = dropped = 0
    for row in queries.consensus_rows(conn):
        consensus = row["consensus"]
        accepted = consensus.get("accepted")
        entry = {"item_id": row["item_id"], "state": row["state"], "solutions": len(consensus.get("solutions", [])),
                 "test_files": len(consensus.get("test_files", [])), "cells": consensus.get("cells", 0),
                 "accepted": None if accepted is None else f"{accepted['solution_attempt']}x{accepted['tests_attempt']}",
                 "score": None, "group": None, "dropped": None, "wrong": None, "rejected": None, "detection_rate": None,
                 "reason": consensus.get("reason")}
        if accepted is not None and row["state"] == "verified":
            entry.update(score=accepted["score"], group=len(accepted["group"]), dropped=len(accepted["dropped"]),
                         wrong=len(accepted["wrong"]), rejected=len(accepted["rejected"]),
                         detection_rate=accepted["detection_rate"])
            wrong += len(accepted["wrong"])
            rejected += len(accepted["rejected"])
            off_diagonal += accepted["solution_attempt"] != accepted["tests_attempt"]
            dropped += bool(accepted["dropped"])
        items.append(entry)
    low, high = wilson_interval(rejected, wrong)
    return {"items": items, "verified": sum(1 for i in items if i["state"] == "verified"),
            "wrong_solutions": wrong, "rejected": rejected, "detection_rate": _ratio(rejected, wrong),
            "detection_interval": [low, high] if wrong else None,
            "accepted_off_diagonal": off_diagonal, "accepted_with_dropped_tests": dropped}


def _ranked(counter: Counter[str]) -> list[tuple[str, int]]:
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))


def _prompt_key(info: dict[str, Any]) -> str:
    return f"{info.get('template') or '?'}@{info.get('template_hash') or '?'}"


def _attempt_prompt_rates(attempts: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for row in compare_prompts_rows(attempts):
        out[f"{row['role']}:{row['template']}@{row['template_hash']}"] = {
            "attempts": row["attempts"], "passed": row["passed"], "pass_rate": row["pass_rate"]}
    return out


def _runs(conn: ReadConnection) -> list[dict[str, Any]]:
    return queries.run_rows(conn)


def _cost(conn: ReadConnection, accepted: int, rows: int) -> dict[str, Any]:
    """Every recorded call, failed attempts and rejected questions included, divided by what was accepted."""
    by_role: dict[str, dict[str, Any]] = {}
    totals = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "tokens": 0, "usd": 0.0}
    found = queries.llm_spend_by_role(conn)
    for role in (*COST_ROLES, *sorted(set(found) - set(COST_ROLES))):
        row = found.get(role)
        spent = {"calls": row["calls"] if row else 0, "prompt_tokens": row["prompt_tokens"] if row else 0,
                 "completion_tokens": row["completion_tokens"] if row else 0, "usd": float(row["usd"]) if row else 0.0}
        spent["tokens"] = spent["prompt_tokens"] + spent["completion_tokens"]
        for key in totals:
            totals[key] += spent[key]
        by_role[role] = {**spent, "tokens_per_accepted": _ratio(spent["tokens"], accepted),
                         "usd_per_accepted": _ratio(spent["usd"], accepted),
                         "calls_per_accepted": _ratio(spent["calls"], accepted)}
    return {
        "accepted": accepted,
        "by_role": by_role,
        "total": {**totals, "tokens_per_accepted": _ratio(totals["tokens"], accepted),
                  "usd_per_accepted": _ratio(totals["usd"], accepted),
                  "calls_per_accepted": _ratio(totals["calls"], accepted),
                  "tokens_per_row": _ratio(totals["tokens"], rows), "usd_per_row": _ratio(totals["usd"], rows)},
    }


def _llm_totals(conn: ReadConnection) -> dict[str, Any]:
    totals = queries.llm_totals(conn)
    return {**totals, "tokens": totals["prompt_tokens"] + totals["completion_tokens"],
            "by_model": queries.llm_spend_by_model(conn)}


# -- prompt comparison -------------------------------------------------------------------------------------

def compare_prompts_rows(attempts: Iterable[dict[str, Any]],
                         trials: Iterable[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Pass rate per (role, template, template_hash, source) for the solver and tester: judged run
    attempts (source "run") and prompt trials from `kodcode.iterate` (source "iterate")."""
    tallies: dict[tuple[str, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    models: dict[tuple[str, str, str, str], set[str]] = defaultdict(set)
    for attempt in attempts:
        if attempt["state"] != "judged":
            continue
        lineage = attempt["lineage"] if isinstance(attempt["lineage"], dict) else _json(attempt["lineage"])
        for role in ("solver", "tester"):
            info = _attempt_role_info(lineage, role)
            if not info:
                continue
            key = (role, str(info.get("template") or "?"), str(info.get("template_hash") or "?"), "run")
            tallies[key][0] += int(bool(attempt["passed"]))
            tallies[key][1] += 1
            if info.get("model"):
                models[key].add(str(info["model"]))
    for trial in trials:
        key = (trial["stage"], trial["template"], trial["template_hash"], "iterate")
        tallies[key][0] += int(bool(trial["passed"]))
        tallies[key][1] += 1
        if trial.get("model"):
            models[key].add(str(trial["model"]))
    rows = []
    for key in sorted(tallies):
        passed, total = tallies[key]
        low, high = wilson_interval(passed, total)
        rows.append({"role": key[0], "template": key[1], "template_hash": key[2], "source": key[3],
                     "models": sorted(models[key]), "attempts": total, "passed": passed,
                     "pass_rate": passed / total, "ci95": [low, high]})
    return rows


def compare_prompts(conn: ReadConnection) -> list[dict[str, Any]]:
    return compare_prompts_rows(queries.attempt_lineages(conn), queries.prompt_trials(conn))


# -- text rendering ----------------------------------------------------------------------------------------

def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:,.4f}"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ", left: int = 1) -> list[str]:
    """Aligned columns: the first `left` (names) to the left, the figures to the right."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    align = lambda cells: indent + "  ".join(  # noqa: E731
        str(c).ljust(w) if i < left else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return [align(headers), *(align(r) for r in rows)] if rows else [indent + "(none)"]


def _yield_table(title: str, groups: dict[str, dict[str, Any]]) -> list[str]:
    rows = [[name, str(g["settled"]), str(g["verified"]), str(g["failed"]), _pct(g["yield"]), _pct(g["solve_rate"])]
            for name, g in groups.items()]
    return [title, *render_table([title.split(" by ")[-1].rstrip(":"), "settled", "verified", "failed", "yield", "solved"], rows)]


def render_report(report: dict[str, Any]) -> str:
    store, cost, attempts = report["store"], report["cost"], report["attempts"]
    lines = [
        f"runs: {len(store['runs'])} ({', '.join(r['status'] for r in store['runs']) or 'none'})",
        "items: " + (", ".join(f"{s} {n}" for s, n in store["items"].items()) or "none"),
        f"accepted triplets: {store['verified']} instruct + {store['rewrites_verified']} rewrites = "
        f"{store['exportable_rows']} exportable rows",
        "",
        "yield = verified / settled questions; solved = verified / (verified + failed)",
    ]
    for key, title in (("by_subset", "yield by subset:"), ("by_difficulty", "yield by difficulty:"),
                       ("by_style", "yield by style:"), ("by_model", "yield by model:"),
                       ("by_proposer_prompt", "yield by proposer prompt:")):
        lines += _yield_table(title, report["yield"][key])
    prompt_rows = [[name, str(v["attempts"]), str(v["passed"]), _pct(v["pass_rate"])]
                   for name, v in report["yield"]["by_attempt_prompt"].items()]
    lines += ["attempt pass rate by prompt version:", *render_table(["role:template@hash", "attempts", "passed", "rate"], prompt_rows)]
    cost_rows = [[role, _num(v["calls"]), _num(v["prompt_tokens"]), _num(v["completion_tokens"]), _usd(v["usd"]),
                  _num(v["tokens_per_accepted"]), _usd(v["usd_per_accepted"])]
                 for role, v in [*cost["by_role"].items(), ("total", cost["total"])]]
    lines += ["", f"cost per accepted triplet ({cost['accepted']} accepted; every call counted, failed attempts too):",
              *render_table(["role", "calls", "prompt tok", "compl tok", "usd", "tok/accepted", "usd/accepted"], cost_rows)]
    distribution = ", ".join(f"{n}: {c}" for n, c in attempts["distribution"].items()) or "none"
    lines += ["", f"attempts per question: mean {_num(attempts['mean'], 2)} over {attempts['questions']} settled questions "
                  f"(to first pass {_num(attempts['mean_to_first_pass'], 2)}); {attempts['judged']} judged, "
                  f"{attempts['passed']} passed",
              f"  distribution (attempts: questions): {distribution}",
              "labels: " + (", ".join(f"{k} {v}" for k, v in report["labels"].items()) or "none")]
    for key, title in (("attempts", "attempt failure reasons"), ("items", "questions lost, by reason"),
                       ("rewrites", "rewrites rejected, by reason")):
        ranked = report["failure_reasons"][key]
        lines += ["", f"{title}:", *render_table(["reason", "count"], [[r["reason"], str(r["count"])] for r in ranked])]
    gate_rows = [[subset, str(v["duplicate"]), str(v["contaminated"]), str(v["rejected"])]
                 for subset, v in report["gate_by_subset"].items()]
    lines += ["", "gated questions by subset:", *render_table(["subset", "duplicate", "contaminated", "rejected"], gate_rows)]
    matrix = report.get("matrix") or {}
    if matrix.get("items"):
        rate = matrix["detection_rate"]
        interval = matrix["detection_interval"]
        lines += ["", f"execution matrix: {matrix['verified']} verified by consensus, "
                      f"{matrix['accepted_off_diagonal']} with another attempt's tests, "
                      f"{matrix['accepted_with_dropped_tests']} with wrong-looking tests dropped",
                  f"  detection of the model's real wrong solutions: {matrix['rejected']} of {matrix['wrong_solutions']} "
                  f"rejected by the accepted tests ({_pct(rate)}"
                  + (f", 95% CI {_pct(interval[0])}-{_pct(interval[1])})" if interval else ")"),
                  "  per item (accepted = solution attempt x tests attempt; score = agreeing solutions x tests passed):"]
        rows = [[i["item_id"], i["state"], str(i["solutions"]), str(i["test_files"]), str(i["cells"]), i["accepted"] or "-",
                 _num(i["score"], 0), _num(i["group"], 0), _num(i["dropped"], 0), _num(i["wrong"], 0),
                 _num(i["rejected"], 0), _pct(i["detection_rate"])] for i in matrix["items"]]
        lines += render_table(["item", "state", "solutions", "test files", "cells", "accepted", "score", "agree",
                               "dropped", "wrong", "rejected", "detection"], rows, indent="    ")
    llm = report["llm"]
    lines += ["", f"llm: {llm['calls']:,} calls, {llm['prompt_tokens']:,} prompt + {llm['completion_tokens']:,} "
                  f"completion tokens, {_usd(llm['usd'])}, mean latency {llm['mean_latency_s']:.2f} s"]
    lines += [f"  {model}: {v['calls']:,} calls, {v['tokens']:,} tokens, {_usd(v['usd'])}" for model, v in llm["by_model"].items()]
    return "\n".join(lines)


def render_compare(rows: Sequence[dict[str, Any]]) -> str:
    table = [[r["role"], r["template"], r["template_hash"], r["source"], str(r["attempts"]), str(r["passed"]),
              _pct(r["pass_rate"]), f"{_pct(r['ci95'][0])} - {_pct(r['ci95'][1])}", ",".join(r["models"])]
             for r in rows]
    lines = ["pass rate per prompt version (Wilson 95% interval; source run: the run's attempts, "
             "iterate: kodcode.iterate trials on verified items):",
             *render_table(["role", "template", "hash", "source", "trials", "passed", "rate", "95% CI", "models"],
                           table, left=4)]
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kodcode.report",
                                     description="Yield, cost and failure report for a kodcode store (read-only).")
    parser.add_argument("--db", type=Path, required=True, help="the run's SQLite store")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--compare-prompts", action="store_true",
                        help="pass rate per solver/tester template version with Wilson 95%% intervals")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        conn = open_readonly(args.db)
        try:
            if args.compare_prompts:
                rows = compare_prompts(conn)
                text = json.dumps({"prompts": rows}, indent=2) if args.json else render_compare(rows)
            else:
                report = build_report(conn)
                text = json.dumps(report, indent=2) if args.json else render_report(report)
        finally:
            conn.close()
    except StoreError as exc:
        print(f"kodcode: error: {exc}", file=sys.stderr)
        return 2
    try:
        print(text)
    except BrokenPipeError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
