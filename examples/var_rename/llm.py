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

import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from examples.var_rename.task import VarRenameConfig, VarRenamePrompter
from iluvattnshun.cli import CommandParser
from iluvattnshun.files import atomic_write, check_writable
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


MAX_DEPTH = 1_000
"""The deepest depth an export asks: its programs are then about 16,000 characters at 4 chains (far past the
depths any model resolves), and deeper ones only make the export run for hours."""
MAX_QUESTIONS = 100_000
"""The most questions one export holds (per_depth x (max_depth + 1))."""


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
    # Every id carries a fingerprint of the export, so that answers to another export are refused, not scored.
    digest = hashlib.sha256("\n".join(f"{q.id} {q.program} {q.variable}" for q in out).encode()).hexdigest()[:8]
    for q in out:
        q.id = f"{digest}_{q.id}"
    return out


def export(out: Path, per_depth: int, max_depth: int, num_chains: int, seed: int) -> int:
    if out.is_dir():
        raise ValueError(f"--out: {str(out)!r} is a directory; give the JSONL file to write")
    check_writable(out.parent if str(out.parent) else Path("."), "out")
    lines = [json.dumps(q.record()) for q in questions(per_depth, max_depth, num_chains, seed)]
    atomic_write(out, "\n".join(lines) + "\n")
    return len(lines)


def fingerprint(question_id: str) -> str:
    """The export fingerprint at the start of a question id (``<fingerprint>_d<depth>_<i>``)."""
    return question_id.split("_", 1)[0]


def read_jsonl(path: Path, what: str) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` of a JSONL file; ``ValueError`` naming the file and line for anything else."""
    try:
        text = path.read_bytes().decode("utf-8")
    except IsADirectoryError:
        raise ValueError(f"{what}: {str(path)!r} is a directory, not a JSONL file") from None
    except OSError as e:
        raise ValueError(f"{what}: cannot read {str(path)!r} ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{what}: {path} is not UTF-8 text (byte {e.start})") from None
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise ValueError(f"{what}: {path}:{number} is not JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            raise ValueError(f"{what}: {path}:{number} has no 'id' (a string)")
        records.append((number, record))
    return records


def read_prompts(path: Path) -> list[dict[str, Any]]:
    """The questions ``export`` wrote, each checked: a unique id, an int ``depth`` >= 0, a digit ``answer``."""
    seen: dict[str, int] = {}
    prompts = []
    for number, record in read_jsonl(path, "prompts"):
        where = f"prompts: {path}:{number}"
        depth, answer = record.get("depth"), record.get("answer")
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
            raise ValueError(f"{where} has no 'depth' (an int >= 0)")
        if not isinstance(answer, str) or not re.fullmatch(r"\d", answer):
            raise ValueError(f"{where} has no 'answer' (one digit)")
        if record["id"] in seen:
            raise ValueError(f"{where}: id {record['id'][:60]!r} is on line {seen[record['id']]} too")
        seen[record["id"]] = number
        prompts.append(record)
    if not prompts:
        raise ValueError(f"prompts: {path} holds no questions")
    return prompts


def read_answers(path: Path, prompts: Sequence[dict[str, Any]], prompts_path: Path | str) -> list[dict[str, Any]]:
    """A model's answers, each checked against the prompts: a known id, given once, an answer that is a string, an
    int or null (no answer)."""
    ids = {str(p["id"]) for p in prompts}
    ours = {fingerprint(i) for i in ids}
    seen: dict[str, int] = {}
    answers = []
    for number, record in read_jsonl(path, "answers"):
        where = f"answers: {path}:{number}"
        qid, reply = record["id"], record.get("answer")
        if qid not in ids:
            other = fingerprint(qid)
            if other not in ours and "_" in qid:
                raise ValueError(
                    f"{where}: id {qid[:60]!r} is from another export (fingerprint {other[:20]!r}; {prompts_path} has "
                    f"{', '.join(sorted(ours))})"
                )
            raise ValueError(f"{where}: id {qid[:60]!r} is not among the prompts of {prompts_path}")
        if qid in seen:
            raise ValueError(f"{where}: id {qid!r} is answered on line {seen[qid]} too")
        seen[qid] = number
        if reply is not None and (isinstance(reply, bool) or not isinstance(reply, (str, int))):
            raise ValueError(f"{where}: 'answer' is a {type(reply).__name__}; expected a string (or null: no answer)")
        answers.append(record)
    return answers


@dataclass
class Score:
    accuracy: dict[int, float]
    counts: dict[int, int]
    missing: int
    reach_90: int
    reach_99: int
    min_questions: int = 0

    def format(self) -> str:
        lines = ["depth  accuracy  questions"]
        lines += [f"{d:5d}  {self.accuracy[d]:8.3f}  {self.counts[d]:9d}" for d in sorted(self.accuracy)]
        few = [d for d in sorted(self.counts) if self.counts[d] < self.min_questions]
        if len(few) == len(self.counts):
            lines.append(
                f"depth reach: not measured: every depth has fewer than --min_questions={self.min_questions} questions "
                f"(at most {max(self.counts.values())}); export more with --per_depth, or lower --min_questions"
            )
        else:
            lines.append(f"depth reach at 90%: {self.reach_90}; at 99%: {self.reach_99}")
            if few:
                lines.append(f"depths left out of the reach (fewer than {self.min_questions} questions): {few}")
        if self.missing:
            lines.append(f"{self.missing} questions had no answer (counted wrong)")
        return "\n".join(lines)


def score(prompts: Sequence[dict[str, Any]], answers: Sequence[dict[str, Any]], min_questions: int) -> Score:
    """Accuracy per depth of ``answers`` (first digit of each ``answer``) on the exported ``prompts``."""
    given: dict[str, str | None] = {}
    for a in answers:
        if str(a["id"]) in given:
            raise ValueError(f"answers: id {str(a['id'])[:60]!r} is answered twice")
        reply = a.get("answer")
        given[str(a["id"])] = None if reply is None else str(reply) if isinstance(reply, (str, int)) else ""
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
        min_questions,
    )


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="python -m examples.var_rename.llm", description=__doc__.splitlines()[0])
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
            if args.max_depth > MAX_DEPTH:  # a program holds num_chains x (max_depth + 2) statements
                raise ValueError(f"--max_depth must be at most {MAX_DEPTH:,}, got {args.max_depth:,}")
            if args.per_depth * (args.max_depth + 1) > MAX_QUESTIONS:
                raise ValueError(
                    f"--per_depth x (--max_depth + 1) is {args.per_depth * (args.max_depth + 1):,} questions: "
                    f"an export holds at most {MAX_QUESTIONS:,}"
                )
            if not 0 <= args.seed < 2**63:
                raise ValueError(f"--seed must be in 0..2**63-1, got {str(args.seed)[:40]}")
            n = export(Path(args.out), args.per_depth, args.max_depth, args.num_chains, args.seed)
            print(f"wrote {n} questions to {args.out}")
        else:
            if args.min_questions < 1:
                raise ValueError(f"--min_questions must be >= 1, got {args.min_questions}")
            prompts = read_prompts(Path(args.prompts))
            result = score(prompts, read_answers(Path(args.answers), prompts, args.prompts), args.min_questions)
            print(result.format())
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
