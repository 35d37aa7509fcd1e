"""Where the learner's homework results are kept: a small JSON file, written by every checker.

Which file
    ``$UNETLAB_HOMEWORK_FILE`` when that variable is set (empty or ``off``: record nothing), else
    ``.unetlab_homework.json`` in the current working directory. A Jupyter kernel's working
    directory is the notebook's folder, so the chapters (``notebooks/``) share one file and the
    solutions notebooks (``notebooks/solutions/``) keep their own. The name is in ``.gitignore``.

What is in it
    One entry per checker (its function name)::

        {"format": "unetlab-homework-1",
         "exercises": {"check_unet_shapes": {"chapter": 1, "label": "1.1", "status": "passed",
                                             "passed_checks": 6, "checks": 6, "runs": 3,
                                             "time": "2026-11-29T16:03:12Z",
                                             "first_passed": "2026-11-29T16:03:12Z"}}}

    ``status`` is the last run's (``"passed"``, ``"failed"`` or ``"not attempted"``), ``time`` when
    it ran (UTC), ``first_passed`` when the exercise first passed (kept when a later run fails).

Never in the way
    :func:`record_result` never raises. A folder that cannot be written, a file that is not ours
    or not JSON: the result is not saved, the reason is returned (the checker prints it as a note
    under its feedback), and an unreadable file is never overwritten. The file is replaced
    atomically (written beside it, then renamed), so an interrupted write leaves the old one.
"""
from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["ENV_VAR", "DEFAULT_NAME", "FORMAT", "homework_file", "read_records", "record_result"]

ENV_VAR = "UNETLAB_HOMEWORK_FILE"
DEFAULT_NAME = ".unetlab_homework.json"
FORMAT = "unetlab-homework-1"
_OFF = ("", "off")


def homework_file(path: str | os.PathLike | None = None) -> Path | None:
    """The results file: ``path`` if given, else ``$UNETLAB_HOMEWORK_FILE``, else ``./.unetlab_homework.json``.

    ``None`` when recording is switched off (``UNETLAB_HOMEWORK_FILE`` empty or ``off``).
    """
    if path is not None:
        return Path(path)
    env = os.environ.get(ENV_VAR)
    if env is not None:
        return None if env.strip().lower() in _OFF else Path(env).expanduser()
    return Path.cwd() / DEFAULT_NAME


def read_records(path: str | os.PathLike | None = None) -> dict[str, dict]:
    """``{checker name: entry}`` from the results file; ``{}`` when there is none (or recording is off).

    Raises ``ValueError`` when the file exists but is not a results file (not JSON, another format).
    """
    file = homework_file(path)
    if file is None or not file.exists():
        return {}
    try:
        body = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file} is not a readable homework results file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(body, dict) or body.get("format") != FORMAT or not isinstance(body.get("exercises"), dict):
        raise ValueError(f"{file} is not a homework results file (expected format {FORMAT!r})")
    return body["exercises"]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_atomically(file: Path, text: str) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=file.name + ".", suffix=".tmp", dir=file.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, file)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def record_result(name: str, *, chapter: int, label: str, status: str, passed_checks: int, checks: int,
                  path: str | os.PathLike | None = None, now: str | None = None) -> tuple[bool, str]:
    """Record one checker run; returns ``(saved, reason)``: ``(True, "")`` when saved, ``(False, "")`` when
    recording is off, ``(False, reason)`` when it could not be saved.

    Never raises (see the module docstring). ``now``: the timestamp to store (default: the current
    UTC time, ``YYYY-MM-DDTHH:MM:SSZ``).
    """
    try:
        file = homework_file(path)
        if file is None:
            return False, ""
        try:
            records = read_records(file)
        except ValueError as exc:
            return False, f"{exc}; it was left as it is"
        when = now or _now()
        old = records.get(name, {})
        entry = {"chapter": chapter, "label": label, "status": status, "passed_checks": int(passed_checks),
                 "checks": int(checks), "runs": int(old.get("runs", 0)) + 1, "time": when}
        first = old.get("first_passed") or (when if status == "passed" else None)
        if first:
            entry["first_passed"] = first
        records[name] = entry
        body = {"format": FORMAT, "exercises": dict(sorted(records.items()))}
        _write_atomically(file, json.dumps(body, indent=2, ensure_ascii=False) + "\n")
        return True, ""
    except Exception as exc:  # a read-only folder, a full disk, a path that is a folder ...
        return False, f"{type(exc).__name__}: {exc}"
