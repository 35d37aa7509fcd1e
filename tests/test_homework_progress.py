"""The learner's progress: checkers record their results in a JSON file; ``progress()`` and
``python -m unetlab homework`` show them. Writing the file never breaks a checker."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unetlab.homework import check_ddim_step, check_guidance, check_param_shares, progress
from unetlab.homework import records
from unetlab.homework.ch01 import param_share_truth
from unetlab.homework.ch06 import reference_guidance
from unetlab.homework.exercises import CHAPTERS, EXERCISES, exercise
from unetlab.homework.feedback import Check, Feedback
from unetlab.homework.records import ENV_VAR, FORMAT, read_records, record_result

ROOT = Path(__file__).resolve().parent.parent
STUB_GUIDANCE = lambda u, c, s: c  # noqa: E731  (the notebook's `return eps_text`)
SWAPPED = lambda u, c, s: c + s * (u - c)  # noqa: E731


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    file = tmp_path / "results.json"
    monkeypatch.setenv(ENV_VAR, str(file))
    return file


def test_checkers_record_each_status(results):
    check_guidance(STUB_GUIDANCE)
    assert read_records()["check_guidance"]["status"] == "not attempted"
    check_guidance(SWAPPED)
    entry = read_records()["check_guidance"]
    assert entry["status"] == "failed" and entry["runs"] == 2 and "first_passed" not in entry
    assert 0 < entry["passed_checks"] < entry["checks"]
    fb = check_guidance(reference_guidance)
    assert fb.passed and not fb.note_en
    entry = read_records()["check_guidance"]
    assert entry["status"] == "passed" and entry["passed_checks"] == entry["checks"] == 6
    assert entry["first_passed"] == entry["time"] and entry["time"].endswith("Z")
    assert (entry["chapter"], entry["label"]) == (6, "6.1")
    # a later failure keeps the first pass
    check_guidance(SWAPPED)
    later = read_records()["check_guidance"]
    assert later["status"] == "failed" and later["first_passed"] == entry["first_passed"] and later["runs"] == 4
    body = json.loads(results.read_text(encoding="utf-8"))
    assert body["format"] == FORMAT and set(body["exercises"]) == {"check_guidance"}


def test_default_file_is_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    assert records.homework_file() == tmp_path / ".unetlab_homework.json"
    check_param_shares(param_share_truth())
    assert json.loads((tmp_path / ".unetlab_homework.json").read_text())["exercises"]["check_param_shares"]["status"] == "passed"


def test_recording_off_writes_nothing_and_says_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for off in ("", "off"):
        monkeypatch.setenv(ENV_VAR, off)
        fb = check_guidance(reference_guidance)
        assert fb.passed and not fb.note_en and "progress" not in str(fb)
    assert list(tmp_path.iterdir()) == []
    assert "recording is off" in str(progress())


def test_a_folder_that_cannot_be_written_never_breaks_a_checker(tmp_path, monkeypatch):
    # a file where the folder should be: nothing can be created there, whoever runs the test
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv(ENV_VAR, str(blocker / "results.json"))
    fb = check_guidance(SWAPPED)
    assert fb.status == "failed" and "swapped" in " ".join(c.hint_en for c in fb.failed())
    assert "progress not saved" in fb.note_en and "进度没有保存" in fb.note_zh
    assert "progress not saved, the check itself is unaffected" in str(fb)


def test_a_read_only_folder_never_breaks_a_checker(results, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(results))

    monkeypatch.setattr(records.os, "replace", refuse)
    fb = check_guidance(reference_guidance)
    assert fb.passed and "PermissionError" in fb.note_en
    assert not results.exists() and not list(results.parent.glob("*.tmp")), "the temporary file is cleaned up"


def test_a_file_that_is_not_ours_is_left_alone(results):
    results.write_text("my own notes, not JSON")
    fb = check_guidance(reference_guidance)
    assert fb.passed and "left as it is" in fb.note_en
    assert results.read_text() == "my own notes, not JSON"
    view = progress()
    assert "not a readable homework results file" in view.error and "cannot read the results file" in str(view)
    assert all(r["status"] == "not run" for r in view.rows)


def test_record_result_reports_a_path_that_is_a_folder(tmp_path):
    saved, reason = record_result("x", chapter=1, label="1.1", status="passed", passed_checks=1, checks=1, path=tmp_path)
    assert not saved and reason  # a folder is not a file; nothing raised


def test_progress_lists_every_chapter_and_its_exercises(results):
    check_guidance(reference_guidance)
    check_ddim_step(lambda x, e, a, p: x)  # the stub
    view = progress()
    assert view.file == results
    names = [r["name"] for r in view.rows]
    assert set(names) == set(EXERCISES) and len(names) == len(EXERCISES) >= 14
    # chapter by chapter, in the notebooks' order
    assert [r["chapter"] for r in view.rows] == sorted(r["chapter"] for r in view.rows)
    status = {r["name"]: r["status"] for r in view.rows}
    assert status["check_guidance"] == "passed" and status["check_ddim_step"] == "not attempted"
    assert {s for n, s in status.items() if n not in ("check_guidance", "check_ddim_step")} == {"not run"}
    text = str(view)
    for chapter in CHAPTERS:
        assert f"Chapter {chapter.number}: {chapter.title_en}" in text and chapter.notebook in text
        assert (ROOT / "notebooks" / chapter.notebook).exists()
    assert "✅ 6.1" in text and "⏳ 6.2" in text and "· 1.1" in text
    assert "1/" in text.splitlines()[0] and str(results) in text.splitlines()[0]
    assert view.n_passed == 1


def test_progress_says_when_a_failing_exercise_passed_before(results):
    check_guidance(reference_guidance)
    check_guidance(SWAPPED)
    text = str(progress())
    line = next(l for l in text.splitlines() if " 6.1 " in l)
    assert "❌" in line and "failed (" in line and "passed on" in line


def test_exercise_decorator_is_a_safety_net_and_rejects_unknown_chapters(results):
    @exercise(1, "1.9", "测试", "test")
    def check_broken(answer):
        raise KeyError("surprise")

    try:
        fb = check_broken(1)
        assert isinstance(fb, Feedback) and not fb.passed
        assert fb.checks[0].what_en == "error while checking your answer" and "KeyError" in fb.checks[0].detail_en
        assert read_records()["check_broken"]["status"] == "failed"
    finally:
        EXERCISES.pop("check_broken", None)
    with pytest.raises(ValueError, match="chapter must be one of"):
        exercise(99, "99.1", "x", "x")


def test_feedback_statuses():
    stub = Feedback("t", "t", [Check("a", "a", False, stub=True)])
    assert stub.status == "not attempted" and not stub.attempted and "⏳" in str(stub) and "❌" not in str(stub)
    assert Feedback("t", "t", [Check("a", "a", True)]).status == "passed"
    assert Feedback("t", "t", [Check("a", "a", False)]).status == "failed"


# --- the command line ---------------------------------------------------------------------------------------


def run_cli(*args, cwd=ROOT, env_file=None):
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    if env_file is not None:
        env[ENV_VAR] = str(env_file)
    return subprocess.run([sys.executable, "-m", "unetlab", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def _write_results(path: Path) -> None:
    body = {"format": FORMAT, "exercises": {
        "check_embedding": {"chapter": 4, "label": "4.1", "status": "passed", "passed_checks": 6, "checks": 6,
                            "runs": 2, "time": "2026-11-29T16:03:12Z", "first_passed": "2026-11-29T16:03:12Z"},
        "check_guidance": {"chapter": 6, "label": "6.1", "status": "not attempted", "passed_checks": 0, "checks": 1,
                           "runs": 1, "time": "2026-11-29T16:05:00Z"},
    }}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body), encoding="utf-8")


def test_cli_shows_the_progress_of_a_file(tmp_path):
    file = tmp_path / "r.json"
    _write_results(file)
    result = run_cli("homework", "--file", str(file))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Homework progress: 1/" in out and str(file) in out
    assert "✅ 4.1" in out and "2026-11-29 16:03 UTC" in out and "⏳ 6.1" in out and "not attempted yet" in out
    assert "· 1.1" in out and "Chapter 1:" in out and "Chapter 6:" in out
    one = run_cli("homework", "--file", str(file), "--chapter", "6")
    assert one.returncode == 0 and "Chapter 6:" in one.stdout and "Chapter 4:" not in one.stdout


def test_cli_finds_the_notebooks_file_from_the_repository_root(tmp_path):
    # Jupyter started at the root runs the chapters in notebooks/: that is where their file is
    _write_results(tmp_path / "notebooks" / ".unetlab_homework.json")
    result = run_cli("homework", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert str(tmp_path / "notebooks" / ".unetlab_homework.json") in result.stdout and "✅ 4.1" in result.stdout
    # the variable wins over the search
    other = tmp_path / "elsewhere.json"
    result = run_cli("homework", cwd=tmp_path, env_file=other)
    assert str(other) in result.stdout and "Nothing recorded yet" in result.stdout


def test_cli_without_results_and_with_a_bad_chapter(tmp_path):
    result = run_cli("homework", cwd=tmp_path)
    assert result.returncode == 0 and "Nothing recorded yet" in result.stdout and "0/" in result.stdout
    bad = run_cli("homework", "--chapter", "9", cwd=tmp_path)
    assert bad.returncode == 2 and "--chapter must be one of" in bad.stderr
    assert "homework" in run_cli("--help").stdout


def test_checkers_in_a_fresh_process_write_beside_the_working_directory(tmp_path):
    # what a learner's notebook kernel does: cwd = the notebook's folder, no variable set
    code = ("from unetlab.homework import check_guidance\n"
            "print(check_guidance(lambda u, c, s: c).status)\n")
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "not attempted"
    assert read_records(tmp_path / ".unetlab_homework.json")["check_guidance"]["status"] == "not attempted"
    shown = run_cli("homework", cwd=tmp_path)
    assert "⏳ 6.1" in shown.stdout
