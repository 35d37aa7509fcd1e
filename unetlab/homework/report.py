"""The learner's progress: every chapter's exercises and how each last went, offline.

    python -m unetlab homework                  # from the repository root or from notebooks/
    python -m unetlab homework --chapter 4
    python -m unetlab homework --file path/to/.unetlab_homework.json

In a notebook: ``from unetlab.homework import progress; progress()``.

Every checker records its result (see :mod:`unetlab.homework.records`); this module reads that
file and lists, chapter by chapter, each exercise with its last status: ✅ passed, ❌ failed
(with how many checks passed), ⏳ not attempted yet (the stub was run), · not run yet. An
exercise that passed once and failed later says when it passed.

Which file: ``--file`` / ``path=``, else ``$UNETLAB_HOMEWORK_FILE``, else ``.unetlab_homework.json``
in the current folder; the command line also looks in ``./notebooks/`` (where Jupyter runs the
chapters when started from the repository root) when the current folder has none.
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path

# the chapter modules register their exercises when imported
from . import ch01, ch02, ch03, ch04, ch05, ch06, ch07  # noqa: F401
from .exercises import CHAPTERS, EXERCISES, Exercise
from .feedback import FAILED, NOT_ATTEMPTED, PASSED
from .records import DEFAULT_NAME, ENV_VAR, homework_file, read_records

__all__ = ["Progress", "progress", "find_homework_file", "cli_add_arguments", "cli_run"]

NOT_RUN = "not run"
_MARKS = {PASSED: "✅", FAILED: "❌", NOT_ATTEMPTED: "⏳", NOT_RUN: "·"}
_WORDS = {PASSED: ("通过", "passed"), FAILED: ("未通过", "failed"), NOT_ATTEMPTED: ("还没有作答", "not attempted yet"),
          NOT_RUN: ("还没运行", "not run yet")}


@dataclass
class Progress:
    """The progress view: ``rows`` (one dict per exercise), the ``file`` it was read from, and an ``error``.

    ``str(progress)`` (and the notebook's display) is the bilingual table; ``rows`` has the keys
    ``chapter``, ``label``, ``name``, ``title_zh``, ``title_en``, ``status`` (``"passed"``,
    ``"failed"``, ``"not attempted"``, ``"not run"``), ``time``, ``passed_checks``, ``checks``,
    ``first_passed``. ``error`` says why the file could not be read (then every row is "not run").
    """

    rows: list[dict]
    file: Path | None
    error: str = ""

    @property
    def n_passed(self) -> int:
        """How many exercises passed in their last run."""
        return sum(r["status"] == PASSED for r in self.rows)

    def chapter_rows(self, chapter: int) -> list[dict]:
        return [r for r in self.rows if r["chapter"] == chapter]

    def __str__(self) -> str:
        where = "记录已关闭 recording is off" if self.file is None else str(self.file)
        lines = [f"作业进度 | Homework progress: {self.n_passed}/{len(self.rows)} 通过 passed   ({where})"]
        if self.error:
            lines.append(f"  ⚠ 读不了记录文件 | cannot read the results file: {self.error}")
        elif self.file is not None and not self.file.exists():
            lines.append("  还没有任何记录：运行笔记本里的检查器后这里会显示结果。 | "
                         "Nothing recorded yet: run the checkers in the notebooks and the results show here.")
        for chapter in CHAPTERS:
            rows = self.chapter_rows(chapter.number)
            if not rows:
                continue
            done = sum(r["status"] == PASSED for r in rows)
            lines.append("")
            lines.append(f"第 {chapter.number} 章 {chapter.title_zh} | Chapter {chapter.number}: {chapter.title_en}"
                         f"  [{chapter.notebook}]  {done}/{len(rows)}")
            for r in rows:
                zh, en = _WORDS[r["status"]]
                status = f"{zh} {en}"
                if r["status"] == FAILED and r["checks"]:
                    status += f" ({r['passed_checks']}/{r['checks']})"
                when = f"  {_short_time(r['time'])}" if r["time"] else ""
                if r["status"] != PASSED and r["first_passed"]:
                    when += f"  (曾于 {_short_time(r['first_passed'])} 通过 | passed on {_short_time(r['first_passed'])})"
                lines.append(f"  {_MARKS[r['status']]} {r['label']:<4} {r['title_zh']} | {r['title_en']}  —  {status}{when}")
                lines.append(f"         {r['name']}")
        return "\n".join(lines)

    __repr__ = __str__


def _short_time(stamp: str) -> str:
    # "2026-11-29T16:03:12Z" -> "2026-11-29 16:03 UTC"
    return f"{stamp[:10]} {stamp[11:16]} UTC" if len(stamp) >= 16 and stamp[10] == "T" else stamp


def _label_key(label: str) -> tuple:
    # "4.10" after "4.2": numbers compare as numbers, letters as text
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in label.split("."))


def _plain_title(title: str, label: str) -> str:
    # "练习 2.A 参数占比" / "Exercise 2.A: parameter shares" -> the title without the label the row shows
    return re.sub(rf"^(练习\s*{re.escape(label)}[：:]?|Exercise\s*{re.escape(label)}[：:]?)\s*", "", title) or title


def _row(ex: Exercise, entry: dict | None) -> dict:
    entry = entry or {}
    status = entry.get("status") if entry.get("status") in (PASSED, FAILED, NOT_ATTEMPTED) else NOT_RUN
    return {"chapter": ex.chapter, "label": ex.label, "name": ex.name,
            "title_zh": _plain_title(ex.title_zh, ex.label), "title_en": _plain_title(ex.title_en, ex.label),
            "status": status, "time": str(entry.get("time", "")) if status != NOT_RUN else "",
            "passed_checks": int(entry.get("passed_checks", 0) or 0), "checks": int(entry.get("checks", 0) or 0),
            "first_passed": str(entry.get("first_passed") or "")}


def progress(path: str | os.PathLike | None = None) -> Progress:
    """Every chapter's exercises with their last recorded result; see the module docstring.

    ``path``: the results file (default: ``$UNETLAB_HOMEWORK_FILE``, else ``./.unetlab_homework.json``).
    Never raises because of the file: an unreadable one is reported in ``Progress.error``.
    """
    file = homework_file(path)
    error = ""
    try:
        records = read_records(file) if file is not None else {}
    except ValueError as exc:
        records, error = {}, str(exc)
    order = {c.number: i for i, c in enumerate(CHAPTERS)}
    exercises = sorted(EXERCISES.values(), key=lambda e: (order.get(e.chapter, len(order)), _label_key(e.label), e.name))
    rows = [_row(ex, records.get(ex.name) if isinstance(records.get(ex.name), dict) else None) for ex in exercises]
    return Progress(rows=rows, file=file, error=error)


def find_homework_file(cwd: str | os.PathLike | None = None) -> Path | None:
    """The file the command line reads when none is named: ``$UNETLAB_HOMEWORK_FILE``, else
    ``<cwd>/.unetlab_homework.json``, else ``<cwd>/notebooks/.unetlab_homework.json`` if only that exists."""
    if ENV_VAR in os.environ:
        return homework_file()
    cwd = Path(cwd or Path.cwd())
    here, notebooks = cwd / DEFAULT_NAME, cwd / "notebooks" / DEFAULT_NAME
    return notebooks if not here.exists() and notebooks.exists() else here


# --- command line ----------------------------------------------------------------------------------------


def cli_add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file", default=None,
                        help=f"the results file (default: ${ENV_VAR}, else ./{DEFAULT_NAME}, else ./notebooks/{DEFAULT_NAME})")
    parser.add_argument("--chapter", type=int, default=None, help="show one chapter only")


def cli_run(args: argparse.Namespace) -> int:
    """Print the progress view; 0 always (an unreadable file is reported in the output)."""
    chapters = [c.number for c in CHAPTERS]
    if args.chapter is not None and args.chapter not in chapters:
        raise ValueError(f"--chapter must be one of {chapters}, got {args.chapter}")
    view = progress(args.file if args.file is not None else find_homework_file())
    if args.chapter is not None:
        view = Progress([r for r in view.rows if r["chapter"] == args.chapter], view.file, view.error)
    print(view)
    return 0
