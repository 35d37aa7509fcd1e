"""The course's exercises: which chapter has which, and the decorator every checker wears.

``@exercise(chapter, label, title_zh, title_en)`` on a checker function

* registers it in :data:`EXERCISES` (so the progress view can list it before it was ever run);
* is its safety net: an unexpected exception inside the checker becomes a failed check, never a
  traceback in the learner's notebook;
* records the result (pass / fail / not attempted, timestamp) with
  :func:`unetlab.homework.records.record_result`; when that cannot be saved, the feedback says so
  in a note and the checker carries on.

Dependencies point one way: ``feedback``, ``records`` <- this module <- ``chNN`` <- ``report``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

from .feedback import Check, Feedback, describe_learner_exception
from .records import record_result

__all__ = ["CHAPTERS", "Chapter", "Exercise", "EXERCISES", "exercise"]


@dataclass(frozen=True)
class Chapter:
    """One chapter: its number, checker module (``unetlab.homework.chNN``), notebook and title."""

    number: int
    module: str
    notebook: str
    title_zh: str
    title_en: str


#: the chapters that have homework, in order
CHAPTERS: tuple[Chapter, ...] = (
    Chapter(1, "ch01", "01_simple_unet.ipynb", "SimpleUNet：从教科书到能用的模型", "SimpleUNet, from the textbook to a working model"),
    Chapter(2, "ch02", "02_sd_unet.ipynb", "Stable Diffusion 的 UNet，从输入到输出", "The Stable Diffusion UNet, from input to output"),
    Chapter(3, "ch03", "03_skip_connections.ipynb", "跳跃连接，实测", "Skip connections, measured"),
    Chapter(4, "ch04", "04_timestep_embedding.ipynb", "时间步嵌入", "Timestep embedding"),
    Chapter(5, "ch05", "05_attention.ipynb", "UNet 里的注意力", "Attention inside the UNet"),
    Chapter(6, "ch06", "06_denoising_loop.ipynb", "去噪循环", "The denoising loop"),
    Chapter(7, "ch07", "07_controlnet_adapters.ipynb", "ControlNet、T2I-Adapter、IP-Adapter", "ControlNet, T2I-Adapter, IP-Adapter"),
)


@dataclass(frozen=True)
class Exercise:
    """One exercise: the checker's name, its chapter, its label in the notebook (e.g. ``"2.B"``) and title."""

    name: str
    chapter: int
    label: str
    title_zh: str
    title_en: str


#: checker name -> Exercise, filled by :func:`exercise` when a chapter module is imported
EXERCISES: dict[str, Exercise] = {}


def _error_feedback(title_zh: str, title_en: str, exc: BaseException) -> Feedback:
    fb = Feedback(title_zh, title_en)
    detail = describe_learner_exception(exc)
    fb.add(Check("检查你的答案时出错", "error while checking your answer", False, detail, detail,
                 "看看答案的类型和格式是否与练习说明一致。",
                 "Check that your answer has the type and form the exercise asks for."))
    return fb


def _record(ex: Exercise, fb: Feedback) -> None:
    saved, reason = record_result(ex.name, chapter=ex.chapter, label=ex.label, status=fb.status,
                                  passed_checks=sum(c.passed for c in fb.checks), checks=len(fb.checks))
    if reason:
        fb.note_zh = f"进度没有保存，检查照常进行：{reason}"
        fb.note_en = f"progress not saved, the check itself is unaffected: {reason}"


def exercise(chapter: int, label: str, title_zh: str, title_en: str) -> Callable[[Callable[..., Feedback]], Callable[..., Feedback]]:
    """Decorate a checker: register it, catch what it did not expect, record its result (see the module docstring).

    ``chapter``: the chapter number (1 …); ``label``: the exercise's number in the notebook, e.g.
    ``"1.2"`` or ``"2.B"``; ``title_zh`` / ``title_en``: the titles its feedback prints.
    Raises ``ValueError`` for an unknown chapter or a checker name registered twice.
    """
    if chapter not in {c.number for c in CHAPTERS}:
        raise ValueError(f"chapter must be one of {[c.number for c in CHAPTERS]}, got {chapter!r}")

    def wrap(checker: Callable[..., Feedback]) -> Callable[..., Feedback]:
        ex = Exercise(checker.__name__, chapter, label, title_zh, title_en)
        if ex.name in EXERCISES and EXERCISES[ex.name] != ex:
            raise ValueError(f"a checker called {ex.name!r} is already registered ({EXERCISES[ex.name]})")
        EXERCISES[ex.name] = ex

        @functools.wraps(checker)
        def checked(*args, **kwargs) -> Feedback:
            try:
                fb = checker(*args, **kwargs)
            except Exception as exc:  # a bug or an answer nobody foresaw: feedback, not a traceback
                fb = _error_feedback(title_zh, title_en, exc)
            _record(ex, fb)
            return fb

        checked.exercise = ex
        return checked

    return wrap
