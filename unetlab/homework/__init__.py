"""Homework checkers, one module per chapter (``ch01`` … ``ch07``), and the learner's progress.

Call them from the notebook, e.g. ``from unetlab.homework import check_unet_shapes``.
Every checker returns a :class:`~unetlab.homework.feedback.Feedback` that prints in
中文 and English and never raises because of a wrong answer; an untouched exercise stub gets
"还没有作答 | not attempted yet" (see :mod:`unetlab.homework.stubs`). Each result is recorded in
a small JSON file (:mod:`unetlab.homework.records`); ``progress()`` (or ``python -m unetlab
homework``) lists every chapter's exercises and which passed.

Shared by the chapter modules: ``feedback`` (Check, Feedback, running the steps), ``answers``
(parsing answers, tolerances, tensor and shape comparisons), ``stubs`` (recognising a stub),
``exercises`` (the ``@exercise`` decorator: registry, safety net, recording), ``records``.
"""
from __future__ import annotations

import importlib

from .exercises import CHAPTERS
from .feedback import Check, Feedback

_CHAPTERS = tuple(chapter.module for chapter in CHAPTERS)


def __getattr__(name: str):
    if name in ("progress", "Progress"):
        # the view imports every chapter module; only when asked for
        from .report import Progress, progress

        return {"progress": progress, "Progress": Progress}[name]
    # look the checker up in the chapter modules, so each chapter owns its own file
    for chapter in _CHAPTERS:
        try:
            module = importlib.import_module(f"{__name__}.{chapter}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{chapter}":
                continue
            raise
        if name in getattr(module, "__all__", ()):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no checker {name!r}")


def __dir__():
    names = ["Check", "Feedback", "progress", "Progress"]
    for chapter in _CHAPTERS:
        try:
            names += list(importlib.import_module(f"{__name__}.{chapter}").__all__)
        except ModuleNotFoundError:
            pass
    return sorted(names)
