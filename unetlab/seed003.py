"""Deprecated alias of :mod:`unetlab.note003` (study note 003's printed UNet, bugs included).

Learners meet the course's sources as the study notes (学习笔记 000–004), so the module is now
``unetlab.note003``; import that. This alias keeps ``import unetlab.seed003`` working and will go.
"""
import warnings

from .note003 import *  # noqa: F401,F403
from .note003 import __all__, printed_test, seed_test  # noqa: F401

warnings.warn("unetlab.seed003 is deprecated: import unetlab.note003 instead", DeprecationWarning, stacklevel=2)
