"""The bilingual answer every homework checker returns.

A checker never raises because of the learner's answer: whatever goes wrong (wrong
type, an exception inside the learner's model, a wrong shape) becomes a failed
``Check`` with a hint. ``Feedback`` prints as a short 中文 / English report.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["Check", "Feedback", "run_checks", "describe_exception"]


@dataclass
class Check:
    """One thing that was checked: what (zh/en), whether it passed, and why / a hint."""

    what_zh: str
    what_en: str
    passed: bool
    detail_zh: str = ""
    detail_en: str = ""
    hint_zh: str = ""
    hint_en: str = ""


@dataclass
class Feedback:
    """All checks of one exercise. ``bool(feedback)`` is True when every check passed."""

    title_zh: str
    title_en: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def __bool__(self) -> bool:
        return self.passed

    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def __str__(self) -> str:
        n_ok = sum(c.passed for c in self.checks)
        lines = [f"{self.title_zh} | {self.title_en}: {n_ok}/{len(self.checks)} 通过 passed"]
        for c in self.checks:
            mark = "✅" if c.passed else "❌"
            lines.append(f"{mark} {c.what_zh} | {c.what_en}")
            if c.detail_zh or c.detail_en:
                lines.append(f"    {c.detail_zh}")
                lines.append(f"    {c.detail_en}")
            if not c.passed and (c.hint_zh or c.hint_en):
                lines.append(f"    提示: {c.hint_zh}")
                lines.append(f"    Hint: {c.hint_en}")
        if self.passed:
            lines.append("🎉 全部通过！ | All checks passed!")
        return "\n".join(lines)

    __repr__ = __str__


def describe_exception(exc: BaseException, limit: int = 2) -> str:
    """One short line naming the exception and where it came from, for feedback text."""
    frames = traceback.extract_tb(exc.__traceback__)[-limit:]
    where = " <- ".join(f"{f.name} (line {f.lineno})" for f in reversed(frames))
    text = f"{type(exc).__name__}: {exc}"
    return f"{text} [{where}]" if where else text


def run_checks(title_zh: str, title_en: str, steps: list[Callable[[], Check]]) -> Feedback:
    """Run check functions in order, turning any exception into a failed check.

    Each step returns a ``Check``; a step that raises becomes a failed check named
    after the function, so a broken learner answer never produces a traceback here.
    """
    fb = Feedback(title_zh, title_en)
    for step in steps:
        try:
            fb.add(step())
        except Exception as exc:  # the learner's code may raise anything
            name = getattr(step, "__name__", "check")
            fb.add(
                Check(
                    f"检查 {name} 时出错", f"error while checking {name}", False,
                    detail_zh=describe_exception(exc), detail_en=describe_exception(exc),
                    hint_zh="先单独运行你的代码，确认它不报错。", hint_en="Run your code on its own first and make sure it does not raise.",
                )
            )
    return fb
