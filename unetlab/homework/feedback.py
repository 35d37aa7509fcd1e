"""The bilingual answer every homework checker returns, and the ways to run a checker's steps.

A checker never raises because of the learner's answer: whatever goes wrong (wrong type, an
exception inside the learner's model, a wrong shape) becomes a failed ``Check`` with a hint.
``Feedback`` prints as a short 中文 / English report.

A Feedback has one of three statuses (:attr:`Feedback.status`):

* ``"passed"``: every check passed;
* ``"not attempted"``: the answer is still the exercise's untouched stub. The checker marks the
  check that recognised the stub with ``stub=True`` (how each checker recognises its stub is
  documented in :mod:`unetlab.homework.stubs`); the report then says "还没有作答 | not attempted
  yet" instead of diagnosing mistakes the learner never made;
* ``"failed"``: anything else.
"""
from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from typing import Callable, Sequence

__all__ = [
    "Check", "Feedback", "run_checks", "run_gated", "describe_exception", "describe_learner_exception",
    "NOT_ATTEMPTED", "PASSED", "FAILED", "STATUSES",
]

PASSED, FAILED, NOT_ATTEMPTED = "passed", "failed", "not attempted"
#: every status a Feedback can have
STATUSES = (PASSED, FAILED, NOT_ATTEMPTED)
# the status in both languages, as the report and the progress view print it
STATUS_TEXT = {PASSED: ("通过", "passed"), FAILED: ("未通过", "failed"), NOT_ATTEMPTED: ("还没有作答", "not attempted yet")}


@dataclass
class Check:
    """One thing that was checked: what (zh/en), whether it passed, and why / a hint.

    ``stub=True`` marks the check that found the exercise's untouched stub (see the module docstring).
    """

    what_zh: str
    what_en: str
    passed: bool
    detail_zh: str = ""
    detail_en: str = ""
    hint_zh: str = ""
    hint_en: str = ""
    stub: bool = False


@dataclass
class Feedback:
    """All checks of one exercise. ``bool(feedback)`` is True when every check passed.

    ``note_zh`` / ``note_en``: a remark printed at the end, outside the checks (e.g. that the
    progress file could not be written).
    """

    title_zh: str
    title_en: str
    checks: list[Check] = field(default_factory=list)
    note_zh: str = ""
    note_en: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def attempted(self) -> bool:
        """False when the answer is still the exercise's stub (a check says ``stub=True``)."""
        return not any(c.stub for c in self.checks)

    @property
    def status(self) -> str:
        """``"passed"``, ``"not attempted"`` or ``"failed"``."""
        if not self.attempted:
            return NOT_ATTEMPTED
        return PASSED if self.passed else FAILED

    def __bool__(self) -> bool:
        return self.passed

    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def __str__(self) -> str:
        n_ok = sum(c.passed for c in self.checks)
        if self.attempted:
            lines = [f"{self.title_zh} | {self.title_en}: {n_ok}/{len(self.checks)} 通过 passed"]
        else:
            lines = [f"{self.title_zh} | {self.title_en}: 还没有作答 | not attempted yet"]
        for c in self.checks:
            # in a not-attempted answer nothing failed: what is not passed is still to do
            mark = "✅" if c.passed else ("❌" if self.attempted else "⏳")
            lines.append(f"{mark} {c.what_zh} | {c.what_en}")
            if c.detail_zh or c.detail_en:
                lines.append(f"    {c.detail_zh}")
                lines.append(f"    {c.detail_en}")
            if not c.passed and (c.hint_zh or c.hint_en):
                lines.append(f"    提示: {c.hint_zh}")
                lines.append(f"    Hint: {c.hint_en}")
        if self.passed:
            lines.append("🎉 全部通过！ | All checks passed!")
        elif not self.attempted:
            lines.append("✏️ 写好答案后再运行这个单元格。 | Write your answer, then run this cell again.")
        if self.note_zh or self.note_en:
            lines.append(f"（{self.note_zh}）")
            lines.append(f"({self.note_en})")
        return "\n".join(lines)

    __repr__ = __str__


def describe_exception(exc: BaseException, limit: int = 2) -> str:
    """One short line naming the exception and where it came from, for feedback text."""
    frames = traceback.extract_tb(exc.__traceback__)[-limit:]
    where = " <- ".join(f"{f.name} (line {f.lineno})" for f in reversed(frames))
    text = f"{type(exc).__name__}: {exc}"
    return f"{text} [{where}]" if where else text


def _library_dirs() -> tuple[str, ...]:
    import torch

    # frames in these folders are torch's or unetlab's, not the learner's
    return os.path.dirname(torch.__file__), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def describe_learner_exception(exc: BaseException) -> str:
    """``Type: message [where]``, ``where`` being the learner's innermost frame (not torch's or unetlab's).

    Unlike :func:`describe_exception` (the last frames, wherever they are), this points into the
    learner's own code, e.g. ``[forward, line 11]``: when a checker runs a whole model, the last
    frames are nearly always inside torch.
    """
    library = _library_dirs()
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not os.path.abspath(f.filename).startswith(library)]
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"{text} [{frames[-1].name}, line {frames[-1].lineno}]" if frames else text


def _error_check(step: Callable, exc: BaseException) -> Check:
    name = getattr(step, "__name__", "check")
    return Check(
        f"检查 {name} 时出错", f"error while checking {name}", False,
        detail_zh=describe_exception(exc), detail_en=describe_exception(exc),
        hint_zh="先单独运行你的代码，确认它不报错。", hint_en="Run your code on its own first and make sure it does not raise.",
    )


def run_checks(title_zh: str, title_en: str, steps: Sequence[Callable[[], Check | None]], *,
               stop_at_failure: bool = False) -> Feedback:
    """Run check functions in order, turning any exception into a failed check.

    Each step returns a ``Check`` (or ``None``: nothing to report); a step that raises becomes a
    failed check named after the function, so a broken learner answer never produces a traceback
    here. ``stop_at_failure=True`` stops after the first check that does not pass (use it when the
    later steps assume the earlier ones passed: they would only repeat the same complaint).
    """
    fb = Feedback(title_zh, title_en)
    for step in steps:
        try:
            check = step()
        except Exception as exc:  # the learner's code may raise anything
            check = _error_check(step, exc)
        if check is None:
            continue
        fb.add(check)
        if stop_at_failure and not check.passed:
            break
    return fb


def run_gated(title_zh: str, title_en: str, gates: Sequence[Callable[[], Check]],
              rest: Sequence[Callable[[], Check]] = ()) -> Feedback:
    """Run ``gates`` in order and stop at the first that fails (later checks would only repeat its
    complaint); when all pass, run every step of ``rest`` (each reported, pass or fail)."""
    fb = run_checks(title_zh, title_en, gates, stop_at_failure=True)
    if fb.passed or not gates:
        fb.checks.extend(run_checks(title_zh, title_en, rest).checks)
    return fb
