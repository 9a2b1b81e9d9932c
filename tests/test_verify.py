"""`python -m kodcode.verify`: real rows through the real sandbox, real files in every supported format."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kodcode.export import write_rows
from kodcode.sandbox import bwrap_available
from kodcode.sandbox.humaneval import HumanEvalTriplet, humaneval_triplets, plant_bug
from kodcode.verify import FieldMap, VerifyOptions, main, recorded_verdict, select_rows
from kodcode.verify_io import open_input

REPO = Path(__file__).resolve().parent.parent
# Isolated wherever bubblewrap runs; elsewhere the same code paths run unisolated.
SANDBOX_ARGS = ["--workers", "2"] + ([] if bwrap_available() else ["--unsafe-no-isolation"])

SLOW_TESTS = "import time\nfrom solution import f\n\n\ndef test_f():\n    time.sleep(0.4)\n    assert f() == 1\n"


@cache
def triplets() -> list[HumanEvalTriplet]:
    return humaneval_triplets()


def kodcode_row(t: HumanEvalTriplet, *, bug: bool = False, chosen: int = 0, sequence: list[int] | None = None,
                subset: str = "HumanEval") -> dict[str, Any]:
    """A KodCode-V1 row (current card: `test`, `test_info`, the chosen trial recorded as passing)."""
    return {"version": "v1", "style": "instruct", "subset": subset, "question_id": t.task_id,
            "question": f"Implement {t.entry_point}.", "solution": plant_bug(t.solution, t.entry_point) if bug else t.solution,
            "test": t.tests, "test_info": [{"function_name": t.entry_point, "parameter_list": "",
                                            "function_declaration": "", "docstring": None}],
            "gpt_pass_sequence": sequence if sequence is not None else [1], "gpt_pass_trial_num": 1,
            "gpt_difficulty": "easy", "gpt_pass_percentage": 1.0, "chosen_trial": f"trial_gpt4o_{chosen}"}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def verify_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([*args, *SANDBOX_ARGS])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def out_records(path: Path) -> dict[str, dict[str, Any]]:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    by_id = {r["id"]: r for r in records}
    assert len(by_id) == len(records), "duplicate ids in the output"
    return by_id


def test_humaneval_canonical_rows_all_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chosen = triplets()[:8]
    data = write_jsonl(tmp_path / "he.jsonl", [kodcode_row(t) for t in chosen])
    code, out, _ = verify_cli(capsys, str(data), "--out", str(tmp_path / "v.jsonl"), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["verdicts"] == {"pass": 8} and summary["with_recorded"] == 8 and summary["disagreements"] == []
    records = out_records(tmp_path / "v.jsonl")
    assert sorted(records) == sorted(t.task_id for t in chosen)
    for t in chosen:
        record = records[t.task_id]
        assert record["passed"] and record["reason"] is None and record["entry_point"] == t.entry_point
        assert record["tests"] == [{"name": f"test_{t.entry_point}", "outcome": "passed"}]
        assert record["coverage"] is not None and record["recorded"] == "pass" and not record["disagrees"]


def test_planted_bugs_fail_by_name_and_every_disagreement_is_listed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    buggy = triplets()[8:14]
    honest = triplets()[14]
    rows = [kodcode_row(t, bug=True) for t in buggy]
    # Recorded as failing (its chosen trial 1 failed) but correct: a disagreement the other way.
    rows.append(kodcode_row(honest, chosen=1, sequence=[1, 0]))
    data = write_jsonl(tmp_path / "bugs.jsonl", rows)
    out_file = tmp_path / "v.jsonl"
    code, out, _ = verify_cli(capsys, str(data), "--out", str(out_file), "--json")
    assert code == 0
    summary = json.loads(out)
    records = out_records(out_file)
    for t in buggy:
        assert records[t.task_id]["verdict"] == "fail"
        assert records[t.task_id]["reason"] == f"failed: test_{t.entry_point}"
        assert records[t.task_id]["tests"][0]["outcome"] == "failed"
    listed = {d["id"]: d for d in summary["disagreements"]}
    assert set(listed) == {t.task_id for t in buggy} | {honest.task_id}
    assert listed[honest.task_id]["recorded"] == "fail" and listed[honest.task_id]["verdict"] == "pass"
    assert listed[buggy[0].task_id]["reason"] == f"failed: test_{buggy[0].entry_point}"
    # The human summary (here from a resumed run: nothing re-runs) names every disagreeing row.
    code, text, _ = verify_cli(capsys, str(data), "--out", str(out_file))
    assert code == 0 and "7 of 7 recorded verdicts disagree" in text
    for t in buggy:
        assert f"{t.task_id}: recorded pass, here fail: failed: test_{t.entry_point}" in text
    assert len(out_file.read_text().splitlines()) == 7


def test_malformed_rows_get_per_row_reasons(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = kodcode_row(triplets()[0])
    lines = [
        json.dumps(good).encode(),
        json.dumps({"question_id": "no-solution", "test": good["test"]}).encode(),
        json.dumps({"question_id": "no-test", "solution": good["solution"]}).encode(),
        json.dumps({"question_id": "empty-test", "solution": good["solution"], "test": "  \n"}).encode(),
        json.dumps({"question_id": "int-solution", "solution": 42, "test": good["test"]}).encode(),
        b'{"question_id": "latin1", "solution": "caf\xe9", "test": "x"}',
        b'{"question_id": "truncated", "solution": ',
        b"[1, 2]",
        b"",
    ]
    data = tmp_path / "bad.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    code, out, err = verify_cli(capsys, str(data), "--out", str(tmp_path / "v.jsonl"), "--json")
    assert code == 0, err
    records = out_records(tmp_path / "v.jsonl")
    assert records[good["question_id"]]["verdict"] == "pass"
    assert records["no-solution"]["reason"] == "missing field: solution"
    assert records["no-test"]["reason"] == "missing field: test or test_code"
    assert records["empty-test"]["reason"] == "empty tests"
    assert "not text" in records["int-solution"]["reason"]
    assert records["#5"]["reason"] == "non-utf-8 line"
    assert records["#6"]["reason"].startswith("invalid json")
    assert records["#7"]["reason"] == "row is a JSON list, not an object"
    assert len(records) == 8
    assert all(r["verdict"] == "invalid" for key, r in records.items() if key != good["question_id"])
    assert json.loads(out)["verdicts"] == {"pass": 1, "invalid": 7}


@pytest.mark.parametrize("make_input", ["missing", "empty_dir", "binary", "csv", "no_solution_column",
                                        "state_names_missing_file"])
def test_unusable_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              make_input: str) -> None:
    path = tmp_path / "input"
    if make_input == "empty_dir":
        path.mkdir()
        (path / "notes.txt").write_text("not data")
    elif make_input == "binary":
        path = tmp_path / "data.jsonl"
        path.write_bytes(bytes(range(256)) * 8)
    elif make_input == "csv":
        path.write_text("question,solution\nq,def f(): pass\n")
    elif make_input == "no_solution_column":
        path = tmp_path / "data.parquet"
        pq.write_table(pa.Table.from_pylist([{"question": "q", "code": "x = 1", "test": "def test(): pass"}]), path)
    elif make_input == "state_names_missing_file":
        path.mkdir()
        (path / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    code, out, err = verify_cli(capsys, str(path), "--out", str(tmp_path / "v.jsonl"))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("kodcode: error:"), err
    assert "Traceback" not in err and out == ""
    if make_input == "no_solution_column":
        assert "--solution-field" in err
    assert not (tmp_path / "v.jsonl").exists() or (tmp_path / "v.jsonl").read_text() == ""


def test_module_entry_point_reports_unusable_input_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "kodcode.verify", str(tmp_path / "nope.jsonl"),
                           "--out", str(tmp_path / "v.jsonl")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"kodcode: error: input {tmp_path / 'nope.jsonl'} does not exist"]


def _slow_rows(count: int) -> list[dict[str, Any]]:
    return [{"question_id": f"slow-{i}", "solution": "def f():\n    return 1\n", "test": SLOW_TESTS,
             "passed": True} for i in range(count)]


def _start_and_wait_for_rows(data: Path, out_file: Path, rows: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "kodcode.verify", str(data), "--out", str(out_file), *SANDBOX_ARGS]
    argv[argv.index("--workers") + 1] = "1"
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if out_file.exists() and out_file.read_bytes().count(b"\n") >= rows:
            return proc
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no rows written within 60 s")


def test_resume_after_sigkill_skips_finished_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_jsonl(tmp_path / "slow.jsonl", _slow_rows(10))
    out_file = tmp_path / "v.jsonl"
    proc = _start_and_wait_for_rows(data, out_file, 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = out_file.read_bytes()
    finished = before.count(b"\n")
    assert 3 <= finished < 10 and before.endswith(b"\n")
    with out_file.open("ab") as handle:        # a torn last line, as a kill mid-write on another FS could leave
        handle.write(b'{"id": "slow-9", "verd')
    code, out, err = verify_cli(capsys, str(data), "--out", str(out_file), "--json")
    assert code == 0, err
    after = out_file.read_bytes()
    assert after.startswith(before), "finished rows were rewritten"
    records = out_records(out_file)
    assert sorted(records) == sorted(f"slow-{i}" for i in range(10))
    assert all(r["verdict"] == "pass" for r in records.values())
    summary = json.loads(out)
    assert summary["resumed"] == finished and summary["selected"] == 10 and summary["verdicts"] == {"pass": 10}


def test_ctrl_c_leaves_complete_lines_and_says_how_to_resume(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "slow.jsonl", _slow_rows(10))
    out_file = tmp_path / "v.jsonl"
    proc = _start_and_wait_for_rows(data, out_file, 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.decode().strip().splitlines()[-1].startswith("kodcode: interrupted;")
    content = out_file.read_bytes()
    assert content.endswith(b"\n")
    assert all(json.loads(line)["verdict"] == "pass" for line in content.splitlines())


def _arrow_save_to_disk(directory: Path, rows: list[dict[str, Any]]) -> None:
    """The layout `datasets.Dataset.save_to_disk` writes: Arrow IPC stream shards named in state.json."""
    directory.mkdir(parents=True)
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(directory / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=2)
    (directory / "dataset_info.json").write_text(json.dumps({"citation": "", "description": "", "features": {}}))
    (directory / "state.json").write_text(json.dumps({
        "_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_fingerprint": "0123456789abcdef",
        "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
        "_split": None}))


def test_parquet_arrow_and_saved_dataset_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chosen = triplets()[20:24]
    rows = [kodcode_row(t, bug=i % 2 == 1) for i, t in enumerate(chosen)]
    expected = {t.task_id: ("fail" if i % 2 else "pass") for i, t in enumerate(chosen)}
    parquet = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    saved = tmp_path / "saved"
    _arrow_save_to_disk(saved, rows)
    splits = tmp_path / "dict"
    _arrow_save_to_disk(splits / "train", rows)
    _arrow_save_to_disk(splits / "test", rows[:1])
    (splits / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    for name, source in (("parquet", parquet), ("saved", saved), ("dict", splits)):
        out_file = tmp_path / f"{name}.jsonl"
        code, out, err = verify_cli(capsys, str(source), "--out", str(out_file), "--json")
        assert code == 0, err
        records = out_records(out_file)
        assert {key: r["verdict"] for key, r in records.items()} == expected, name
        assert records[chosen[0].task_id]["entry_point"] == chosen[0].entry_point
        assert len(json.loads(out)["disagreements"]) == 2
    code, _, err = verify_cli(capsys, str(splits), "--split", "test", "--out", str(tmp_path / "t.jsonl"))
    assert code == 0 and list(out_records(tmp_path / "t.jsonl")) == [chosen[0].task_id]


def test_our_own_parquet_export_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = triplets()[30]
    row = {**kodcode_row(t), "question_id": "item1_I", "gpt_pass_sequence": [0, 1], "chosen_trial": "trial_coder_1",
           "trials": {"trial_coder_0": {"test_result": "Fail"}, "trial_coder_1": {"test_result": "Pass"}},
           "metadata": {"entry_point": t.entry_point, "prompt_id": "item1"}}
    del row["test_info"]
    export = tmp_path / "export.parquet"
    write_rows([row], export, "parquet")          # the export stores trials/metadata as JSON text
    code, out, err = verify_cli(capsys, str(export), "--out", str(tmp_path / "v.jsonl"), "--json")
    assert code == 0, err
    record = out_records(tmp_path / "v.jsonl")["item1_I"]
    assert record["verdict"] == "pass" and record["recorded"] == "pass" and record["entry_point"] == t.entry_point


def test_column_mapping_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chosen = triplets()[40:43]
    rows = [{"pid": f"p{i}", "code": t.solution, "unit_tests": t.tests, "ok": "Fail", "fn": t.entry_point}
            for i, t in enumerate(chosen)]
    data = write_jsonl(tmp_path / "mapped.jsonl", rows)
    code, out, err = verify_cli(capsys, str(data), "--out", str(tmp_path / "v.jsonl"), "--json",
                                "--solution-field", "code", "--test-field", "unit_tests", "--id-field", "pid",
                                "--recorded-field", "ok", "--entry-field", "fn")
    assert code == 0, err
    records = out_records(tmp_path / "v.jsonl")
    assert sorted(records) == ["p0", "p1", "p2"]
    assert all(r["verdict"] == "pass" and r["recorded"] == "fail" for r in records.values())
    assert records["p1"]["entry_point"] == chosen[1].entry_point
    assert [d["id"] for d in json.loads(out)["disagreements"]] == ["p0", "p1", "p2"]
    # Without the mapping the same rows are each invalid, with the reason.
    code, _, _ = verify_cli(capsys, str(data), "--out", str(tmp_path / "unmapped.jsonl"))
    assert code == 0
    assert {r["reason"] for r in out_records(tmp_path / "unmapped.jsonl").values()} == {"missing field: solution"}


def test_filter_sample_and_limit_select_stably(tmp_path: Path) -> None:
    rows = [{"question_id": f"q{i}", "subset": "Leetcode" if i % 2 else "Apps",
             "gpt_difficulty": "hard" if i % 3 == 0 else "easy", "solution": "x = 1", "test": "def test_x(): pass"}
            for i in range(40)]
    rows.append({**rows[1]})                       # a duplicated id gets a stable suffix
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    source = open_input(data)

    def ids(**options: Any) -> list[str]:
        return [task.id for task in select_rows(source, VerifyOptions(input=data, out=tmp_path / "o", **options))]

    leetcode = ids(filters=(("subset", frozenset({"leetcode"})),))
    assert leetcode == [f"q{i}" for i in range(1, 40, 2)] + ["q1#2"]
    hard_apps = ids(filters=(("subset", frozenset({"apps"})), ("difficulty", frozenset({"hard"}))))
    assert hard_apps == [f"q{i}" for i in range(0, 40, 6)]
    sample = ids(sample=5, seed=7)
    assert len(sample) == 5 and sample == ids(sample=5, seed=7) and sample != ids(sample=5, seed=8)
    assert sample == sorted(sample, key=lambda key: [r["question_id"] for r in rows].index(key.split("#")[0]))
    assert ids(limit=3) == ["q0", "q1", "q2"]
    assert ids(sample=5, seed=7, limit=2) == sample[:2]


def test_recorded_verdicts_in_each_known_shape() -> None:
    fields = FieldMap()
    assert recorded_verdict({"gpt_pass_sequence": [0, 0, 1], "chosen_trial": "trial_gpt4o_2"}, fields) is True
    assert recorded_verdict({"gpt_pass_sequence": [1, 0], "chosen_trial": "trial_gpt4o_1"}, fields) is False
    assert recorded_verdict({"gpt_pass_sequence": [0, 0, 0]}, fields) is False
    assert recorded_verdict({"verdict": "Pass"}, fields) is True
    assert recorded_verdict({"verdict": {"passed": False}}, fields) is False
    assert recorded_verdict({"passed": True}, fields) is True
    assert recorded_verdict({"question": "q"}, fields) is None
    assert recorded_verdict({"r1_correctness": "False"}, FieldMap(recorded=("r1_correctness",))) is False


def test_out_file_that_is_not_ours_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_jsonl(tmp_path / "he.jsonl", [kodcode_row(triplets()[0])])
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"something": "else"}\n')
    code, _, err = verify_cli(capsys, str(data), "--out", str(foreign))
    assert code == 2 and "not a kodcode.verify output" in err
    assert foreign.read_text() == '{"something": "else"}\n'


def star_import_row(question_id: str, *, bug: bool = False) -> dict[str, Any]:
    """A row shaped like KodCode's real trials: the tests call the function without importing it."""
    body = "return a * b" if not bug else "return a + b"
    return {"question_id": question_id, "solution": f"def mul(a, b):\n    {body}\n",
            "test": "def test_mul():\n    assert mul(3, 4) == 12\n\ndef test_zero():\n    assert mul(0, 5) == 0\n",
            "gpt_pass_sequence": [0 if bug else 1], "chosen_trial": "trial_gpt4o_0"}


def test_kodcode_rows_run_with_the_star_import_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    heapq_row = {"question_id": "heapq", "solution": "def f():\n    return 1\n",
                 "test": "from heapq import merge as test_merge\n\ndef test_f():\n    assert f() == 1\n",
                 "gpt_pass_sequence": [1], "chosen_trial": "trial_gpt4o_0"}
    data = write_jsonl(tmp_path / "kc.jsonl", [star_import_row("good"), star_import_row("bug", bug=True), heapq_row])

    code, text, err = verify_cli(capsys, str(data), "--out", str(tmp_path / "default.jsonl"))
    assert code == 0, err
    records = out_records(tmp_path / "default.jsonl")
    assert records["good"]["verdict"] == "pass" and records["bug"]["verdict"] == "fail"
    assert "test prelude: kodcode" in text
    # pytest 9 rejects a generator named test_*; KodCode's pytest 8.3 did not: the environment differs.
    assert records["heapq"]["reason"].startswith("pytest rules: 'yield' keyword")
    assert "heapq: recorded pass, here fail" in text and "environment differs" in text
    assert "1 of 3 recorded verdicts disagree" in text

    code, text, err = verify_cli(capsys, str(data), "--out", str(tmp_path / "none.jsonl"), "--test-prelude", "none",
                                 "--json")
    assert code == 0, err
    records = out_records(tmp_path / "none.jsonl")
    assert records["good"]["verdict"] == "fail" and "NameError" in json.dumps(records["good"]["tests"])
    assert json.loads(text)["test_prelude"].startswith("none")

    prelude = tmp_path / "prelude.py"
    prelude.write_text("from solution import mul")
    code, text, err = verify_cli(capsys, str(data), "--out", str(tmp_path / "file.jsonl"), "--test-prelude", str(prelude))
    assert code == 0, err
    assert out_records(tmp_path / "file.jsonl")["good"]["verdict"] == "pass"
    assert "test prelude: file prelude.py" in text

    code, _, err = verify_cli(capsys, str(data), "--out", str(tmp_path / "x.jsonl"), "--test-prelude", str(tmp_path / "nope"))
    assert code == 2 and "--test-prelude" in err and "Traceback" not in err


def test_the_pipelines_own_exports_verify_identically_under_the_kodcode_prelude(
        fake_coder_server, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from helpers import run_kodcode

    coder, server = fake_coder_server(fail_first={"sum_of_evens": 1})
    db = run_dir / "kc.db"
    result = run_kodcode("run", "--base-url", server.base_url, "--target", "3", "--concurrency", "4",
                         "--mode", "split", "--db", str(db))
    assert result.returncode == 0, result.stderr
    export = run_dir / "out.jsonl"
    assert run_kodcode("export", "--db", str(db), "--out", str(export)).returncode == 0
    verdicts = {}
    for prelude in ("kodcode", "none"):
        out = run_dir / f"{prelude}.jsonl"
        code, _, err = verify_cli(capsys, str(export), "--out", str(out), "--test-prelude", prelude)
        assert code == 0, err
        verdicts[prelude] = {rid: (r["verdict"], r["reason"]) for rid, r in out_records(out).items()}
    assert verdicts["kodcode"] == verdicts["none"]
    assert len(verdicts["kodcode"]) >= 3
    assert all(verdict == ("pass", None) for verdict in verdicts["kodcode"].values()), verdicts["kodcode"]


def test_hung_rows_end_on_the_cpu_limit_and_sleepy_rows_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hung = {"question_id": "hung", "solution": "def f():\n    while True:\n        pass\n",
            "test": "def test_f():\n    assert f() == 1\n\ndef test_g():\n    assert f() == 1\n"}
    sleepy = {"question_id": "sleepy", "solution": "import time\n\ndef f():\n    time.sleep(1.5)\n    return 1\n",
              "test": "def test_f():\n    assert f() == 1\n"}
    data = write_jsonl(tmp_path / "rows.jsonl", [hung, sleepy])
    code, _, err = verify_cli(capsys, str(data), "--out", str(tmp_path / "v.jsonl"), "--timeout", "20",
                              "--test-cpu-limit", "1")
    assert code == 0, err
    records = out_records(tmp_path / "v.jsonl")
    assert records["sleepy"]["verdict"] == "pass"          # 1.5 s of wall time, almost no CPU time
    assert records["hung"]["verdict"] == "fail" and records["hung"]["reason"] == "timeout"
    tests = {t["name"]: t for t in records["hung"]["tests"]}
    assert "CPU time" in tests["test_f"]["message"]
    assert tests["test_g"]["outcome"] == "missing"          # the file stopped at its first hung test

    code, _, err = verify_cli(capsys, str(data), "--out", str(tmp_path / "bad.jsonl"), "--test-cpu-limit", "-1")
    assert code == 2 and "--test-cpu-limit" in err
