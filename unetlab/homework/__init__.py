"""Homework checkers, one module per chapter (``ch01`` … ``ch06``).

Call them from the notebook, e.g. ``from unetlab.homework import check_unet_shapes``.
Every checker returns a :class:`~unetlab.homework.feedback.Feedback` that prints in
中文 and English and never raises because of a wrong answer.
"""
from __future__ import annotations

import importlib

from .feedback import Check, Feedback

_CHAPTERS = ("ch01", "ch02", "ch03", "ch04", "ch05", "ch06")


def __getattr__(name: str):
    # Look the checker up in the chapter modules, so each chapter owns its own file.
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
    names = ["Check", "Feedback"]
    for chapter in _CHAPTERS:
        try:
            names += list(importlib.import_module(f"{__name__}.{chapter}").__all__)
        except ModuleNotFoundError:
            pass
    return sorted(names)
