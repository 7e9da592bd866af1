"""The LLM comparison kit: exported questions are right (checked by a solver), answers are scored by depth."""

import json
import subprocess
from pathlib import Path

from forked import python_m


def llm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m examples.var_rename.llm *args`` as a real process (forked from the tests' zygote)."""
    return python_m("examples.var_rename.llm", args, cwd, timeout=120)


def solve(program: str, variable: str) -> tuple[str, int]:
    """The digit a variable holds at the end of a renaming program, and the renames it took to get there."""
    value: dict[str, tuple[str, int]] = {}
    for statement in program.rstrip(";").split(";"):
        old, new = statement.split(">")
        value[new] = (old, 0) if old.isdigit() else (value[old][0], value.pop(old)[1] + 1)
    return value[variable]


def test_export_then_score_hand_written_answers(tmp_path: Path) -> None:
    exported = llm("export", "--out=q.jsonl", "--per_depth=12", "--max_depth=5", "--num_chains=3", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    questions = [json.loads(line) for line in (tmp_path / "q.jsonl").read_text().splitlines()]
    assert len(questions) == 12 * 6 and {q["depth"] for q in questions} == set(range(6))
    for q in questions:
        assert solve(q["program"], q["variable"]) == (q["answer"], q["depth"])
        assert q["program"] in q["prompt"] and f"`{q['variable']}`" in q["prompt"]

    def answers(name: str, reply: "dict[str, str]") -> str:
        (tmp_path / name).write_text("\n".join(json.dumps({"id": i, "answer": a}) for i, a in reply.items()) + "\n")
        return name

    right = {q["id"]: f"The answer is {q['answer']}." for q in questions}
    scored = llm("score", "q.jsonl", answers("right.jsonl", right), cwd=tmp_path)
    assert scored.returncode == 0 and "depth reach at 90%: 5; at 99%: 5" in scored.stdout
    # wrong from depth 3 on, and no answer at all for two depth-1 questions
    wrong = {q["id"]: str((int(q["answer"]) + 1) % 10) if q["depth"] >= 3 else q["answer"] for q in questions}
    for q in [q for q in questions if q["depth"] == 1][:2]:
        del wrong[q["id"]]
    scored = llm("score", "q.jsonl", answers("wrong.jsonl", wrong), cwd=tmp_path)
    assert "depth reach at 90%: 0; at 99%: 0" in scored.stdout  # depth 1: 10 of 12 right
    assert "2 questions had no answer" in scored.stdout
    assert "    3     0.000         12" in scored.stdout

    bad = llm("score", "q.jsonl", answers("bad.jsonl", {"nope": "1"}), cwd=tmp_path)
    assert bad.returncode == 2 and "bad.jsonl:1: id 'nope' is not among the prompts of q.jsonl" in bad.stderr
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    bad = llm("score", "q.jsonl", "broken.jsonl", cwd=tmp_path)
    assert bad.returncode == 2 and "broken.jsonl:1 is not JSON" in bad.stderr


def test_score_refuses_answers_it_cannot_score_rightly(tmp_path: Path) -> None:
    assert llm("export", "--out=q.jsonl", "--per_depth=3", "--max_depth=2", cwd=tmp_path).returncode == 0
    assert (
        llm("export", "--out=other.jsonl", "--per_depth=3", "--max_depth=2", "--seed=1", cwd=tmp_path).returncode == 0
    )
    questions = [json.loads(line) for line in (tmp_path / "q.jsonl").read_text().splitlines()]
    others = [json.loads(line) for line in (tmp_path / "other.jsonl").read_text().splitlines()]
    first = questions[0]

    def score(lines: "list[object]", prompts: str = "q.jsonl") -> subprocess.CompletedProcess[str]:
        (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
        return llm("score", prompts, "a.jsonl", cwd=tmp_path)

    cases: "list[tuple[list[object], str]]" = [
        # the last of two answers to one question would win silently
        ([{"id": first["id"], "answer": "0"}, {"id": first["id"], "answer": first["answer"]}], "a.jsonl:2: id"),
        # answers to another export: ids d<depth>_<i> alike, told apart by the export's fingerprint
        ([{"id": others[0]["id"], "answer": "1"}], "a.jsonl:1: id"),
        # str() of a list or dict is not an answer
        ([{"id": first["id"], "answer": [first["answer"]]}], "a.jsonl:1: 'answer' is a list"),
        ([{"id": first["id"], "answer": {"digit": first["answer"]}}], "a.jsonl:1: 'answer' is a dict"),
    ]
    for lines, expected in cases:
        proc = score(lines)
        assert proc.returncode == 2 and expected in proc.stderr and proc.stderr.count("\n") == 1, (
            expected,
            proc.stderr,
        )
    assert "from another export" in score(cases[1][0]).stderr
    # null is no answer: counted missing (and wrong)
    proc = score([{"id": first["id"], "answer": None}])
    assert proc.returncode == 0 and f"{len(questions)} questions had no answer" in proc.stdout
    # a prompts file with a duplicated id, or a prompt without depth or answer: one line naming file and line
    (tmp_path / "dup.jsonl").write_text("\n".join(json.dumps(q) for q in [first, first]) + "\n")
    proc = score([], "dup.jsonl")
    assert proc.returncode == 2 and "dup.jsonl:2: id" in proc.stderr and "on line 1 too" in proc.stderr
    for field in ("depth", "answer"):
        (tmp_path / "p.jsonl").write_text(json.dumps({k: v for k, v in first.items() if k != field}) + "\n")
        proc = score([], "p.jsonl")
        assert proc.returncode == 2 and f"p.jsonl:1 has no '{field}'" in proc.stderr, proc.stderr
    # non-UTF-8 answers name the file
    (tmp_path / "a.jsonl").write_bytes(b'{"id": "\xff"}\n')
    proc = llm("score", "q.jsonl", "a.jsonl", cwd=tmp_path)
    assert proc.returncode == 2 and "a.jsonl is not UTF-8" in proc.stderr
    # perfect answers with fewer questions per depth than --min_questions: the reach says why it is not measured
    proc = score([{"id": q["id"], "answer": q["answer"]} for q in questions])
    assert proc.returncode == 0 and "reach: not measured: every depth has fewer than --min_questions=10" in proc.stdout
    assert "depth reach at 90%: -1" not in proc.stdout
    # export to a directory: one line, exit 2
    (tmp_path / "outdir").mkdir()
    proc = llm("export", "--out=outdir", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --out: 'outdir' is a directory"), proc.stderr


def test_export_refuses_sizes_it_cannot_finish_and_names_the_field(tmp_path: Path) -> None:
    cases = {
        "--max_depth=100000": "--max_depth must be at most 1,000",
        "--per_depth=1000000000": "--per_depth x (--max_depth + 1) is 31,000,000,000 questions",
        "--seed=-1": "--seed must be in 0..2**63-1, got -1",
    }
    for flag, expected in cases.items():
        proc = llm("export", "--out=q.jsonl", flag, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.startswith(f"error: {expected}"), (flag, proc.stderr)
        assert proc.stderr.count("\n") == 1 and not (tmp_path / "q.jsonl").exists()
