"""Ask a large language model the same renaming question, and score its answers by depth.

    python -m examples.var_rename.llm export --out=prompts.jsonl [--per_depth=20 --max_depth=30 ...]
    (run the LLM of your choice on prompts.jsonl, writing answers.jsonl: one {"id": ..., "answer": ...} per line)
    python -m examples.var_rename.llm score prompts.jsonl answers.jsonl

``export`` writes ``per_depth`` questions for every depth 0..``max_depth``: a var_rename program cut right after
the statement that binds the asked variable, and a plain-language instruction; the expected digit is in the
file. ``score`` reads the answers back (the first digit of each answer counts; a missing or digit-less answer is
wrong), prints accuracy per depth and the depth reach at 90% and 99%, the metric training logs. No network: you
run the model.
"""

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from examples.var_rename.task import VarRenameConfig, VarRenamePrompter
from iluvattnshun.files import atomic_write
from iluvattnshun.task import depth_reach

INSTRUCTION = (
    "Below is a program of renaming statements. Each statement `x>y;` renames variable x to y: afterwards y holds "
    "the value x held, and x is no longer used. A statement `3>y;` binds y to the digit 3. Letters are reused once "
    "they are free, so the latest statement that binds a letter is the one that counts.\n\n"
    "Program:\n{program}\n\n"
    "What digit does the variable `{variable}` hold at the end of the program? Answer with the digit only."
)


@dataclass
class Question:
    id: str
    depth: int
    variable: str
    program: str
    answer: str

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "depth": self.depth,
            "prompt": INSTRUCTION.format(program=self.program, variable=self.variable),
            "program": self.program,
            "variable": self.variable,
            "answer": self.answer,
        }


def questions(per_depth: int, max_depth: int, num_chains: int, seed: int) -> list[Question]:
    """``per_depth`` questions for every depth 0..``max_depth``, each from its own program.

    A program of var_rename is cut right after a statement at the asked depth; its new variable is asked about.
    """
    renames = max(num_chains, num_chains * (max_depth + 2))  # the average chain then reaches past max_depth
    prompter = VarRenamePrompter(VarRenameConfig(num_chains=num_chains, num_renames=renames))
    rng = np.random.default_rng(seed)
    out: list[Question] = []
    for depth in range(max_depth + 1):
        found = 0
        while found < per_depth:
            prompt, answer, meta = prompter.get_prompt(rng)
            statements = [s for s in range(renames) if meta["depth"][4 * s] == depth]
            if not statements:
                continue
            s = statements[int(rng.integers(len(statements)))]
            program = prompt[: 4 * s + 4]
            out.append(Question(f"d{depth}_{found}", depth, program[-2], program, answer[4 * s]))
            found += 1
    return out


def export(out: Path, per_depth: int, max_depth: int, num_chains: int, seed: int) -> int:
    lines = [json.dumps(q.record()) for q in questions(per_depth, max_depth, num_chains, seed)]
    atomic_write(out, "\n".join(lines) + "\n")
    return len(lines)


def read_jsonl(path: Path, what: str) -> list[dict[str, Any]]:
    """Records of a JSONL file; ``ValueError`` naming the file and line for anything else."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"{what}: cannot read {str(path)!r} ({e.strerror})") from None
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise ValueError(f"{what}: {path}:{number} is not JSON") from None
        if not isinstance(record, dict) or "id" not in record:
            raise ValueError(f"{what}: {path}:{number} has no 'id'")
        records.append(record)
    return records


@dataclass
class Score:
    accuracy: dict[int, float]
    counts: dict[int, int]
    missing: int
    reach_90: int
    reach_99: int

    def format(self) -> str:
        lines = ["depth  accuracy  questions"]
        lines += [f"{d:5d}  {self.accuracy[d]:8.3f}  {self.counts[d]:9d}" for d in sorted(self.accuracy)]
        lines.append(f"depth reach at 90%: {self.reach_90}; at 99%: {self.reach_99}")
        if self.missing:
            lines.append(f"{self.missing} questions had no answer (counted wrong)")
        return "\n".join(lines)


def score(prompts: Sequence[dict[str, Any]], answers: Sequence[dict[str, Any]], min_questions: int) -> Score:
    """Accuracy per depth of ``answers`` (first digit of each ``answer``) on the exported ``prompts``."""
    given = {str(a["id"]): str(a.get("answer", "")) for a in answers}
    unknown = sorted(set(given) - {str(p["id"]) for p in prompts})
    if unknown:
        raise ValueError(f"answers: ids not among the prompts: {', '.join(unknown[:5])}")
    hits: dict[int, int] = {}
    counts: dict[int, int] = {}
    missing = 0
    for p in prompts:
        depth = int(p["depth"])
        counts[depth] = counts.get(depth, 0) + 1
        reply = given.get(str(p["id"]))
        missing += reply is None
        digit = re.search(r"\d", reply or "")
        hits[depth] = hits.get(depth, 0) + int(digit is not None and digit.group() == str(p["answer"]))
    accuracy = {d: hits[d] / counts[d] for d in sorted(counts)}
    return Score(
        accuracy,
        counts,
        missing,
        depth_reach(accuracy, counts, 0.9, min_questions),
        depth_reach(accuracy, counts, 0.99, min_questions),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.var_rename.llm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write the questions as JSONL")
    e.add_argument("--out", required=True, help="the JSONL file to write")
    e.add_argument("--per_depth", type=int, default=20, help="questions per depth (default 20)")
    e.add_argument("--max_depth", type=int, default=30, help="deepest depth asked (default 30)")
    e.add_argument("--num_chains", type=int, default=4, help="chains per program (default 4, as the paper)")
    e.add_argument("--seed", type=int, default=0, help="seed of the programs")
    s = sub.add_parser("score", help="accuracy per depth of a model's answers")
    s.add_argument("prompts", help="the file export wrote")
    s.add_argument("answers", help='JSONL, one {"id": ..., "answer": ...} per line')
    s.add_argument("--min_questions", type=int, default=10, help="depths with fewer are left out of the reach")
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            if args.per_depth < 1 or args.max_depth < 0 or not 1 <= args.num_chains <= 10:
                raise ValueError("per_depth must be >= 1, max_depth >= 0 and num_chains in 1..10")
            n = export(Path(args.out), args.per_depth, args.max_depth, args.num_chains, args.seed)
            print(f"wrote {n} questions to {args.out}")
        else:
            result = score(
                read_jsonl(Path(args.prompts), "prompts"), read_jsonl(Path(args.answers), "answers"), args.min_questions
            )
            print(result.format())
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
