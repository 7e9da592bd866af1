"""The LLM comparison kit: exported questions are right (checked by a solver), answers are scored by depth."""

import json
import subprocess
import sys
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def llm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "examples.var_rename.llm", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


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
    assert bad.returncode == 2 and "ids not among the prompts: nope" in bad.stderr
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    bad = llm("score", "q.jsonl", "broken.jsonl", cwd=tmp_path)
    assert bad.returncode == 2 and "broken.jsonl:1 is not JSON" in bad.stderr
