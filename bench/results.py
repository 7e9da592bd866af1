"""bench/RESULTS.md: each benchmark owns one section between its start and end markers."""

from pathlib import Path

from iluvattnshun.files import atomic_write

HEADER = "# Benchmark results\n\nEach section: machine, command, date, figures against their baseline.\n"


def replace_section(text: str, start: str, end: str, path: Path) -> None:
    """Replace the section between ``start`` and ``end`` in ``path`` with ``text`` (or append it), atomically.

    ``text`` includes its own markers; whatever follows the old section (e.g. hand-written notes) is kept.
    """
    current = path.read_text() if path.exists() else HEADER
    if start in current and end in current:
        before, rest = current.split(start, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        current = before + text + ("\n" + after if after else "")
    else:
        current = current.rstrip("\n") + "\n\n" + text
    atomic_write(path, current)


RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def publish(lines: list[str], start: str, end: str, write: bool) -> str:
    """Join a section's lines (markers included), print them, and with ``write`` replace the section in RESULTS.md."""
    text = "\n".join(lines) + "\n"
    print(text)
    if write:
        replace_section(text, start, end, RESULTS)
    return text
