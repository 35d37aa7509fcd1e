"""The README's commands are the ones CI runs, in both languages."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def _test_command(text: str) -> str:
    commands = [line for block in _bash_blocks(text) for line in block.splitlines() if "pytest" in line]
    assert len(commands) == 1, f"expected one test command in the README, found {commands}"
    return commands[0].strip()


def test_ci_runs_the_readme_test_command():
    ci_lines = [l.strip() for l in (ROOT / ".ci/run").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert _test_command((ROOT / "README.md").read_text()) in ci_lines


def test_both_readmes_give_the_same_commands():
    en = [b for b in _bash_blocks((ROOT / "README.md").read_text())]
    zh = [b for b in _bash_blocks((ROOT / "README.zh.md").read_text())]
    strip = lambda blocks: [re.sub(r"\s*#.*", "", line) for b in blocks for line in b.splitlines()]
    assert strip(en) == strip(zh)


def test_the_install_never_replaces_the_pinned_torch():
    pins = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^torch==2\.13\.0$", pins, flags=re.M)
    for text in ((ROOT / "README.md").read_text(), (ROOT / ".ci/run").read_text()):
        for line in text.splitlines():
            if "pip install" in line and "-e" in line and "[test]" in line:
                assert "-c constraints.txt" in line


def test_readmes_list_every_chapter_notebook():
    notebooks = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert notebooks, "no chapter notebooks found"
    for readme in ("README.md", "README.zh.md"):
        text = (ROOT / readme).read_text()
        for name in notebooks:
            assert name in text, f"{readme} does not list {name}"
