"""Task[P, R] is checked by mypy: right calls pass, wrong ones are errors."""

from __future__ import annotations

from pathlib import Path

from mypy import api

TYPING = Path(__file__).parents[1] / "typing"


def _mypy(path: Path) -> tuple[str, int]:
    out, err, status = api.run(["--strict", "--no-incremental", "--cache-dir=/dev/null", str(path)])
    return out + err, status


def test_typed_usage_passes_mypy() -> None:
    out, status = _mypy(TYPING / "typed_ok.py")
    assert status == 0, out


def test_misuse_is_reported_on_each_marked_line() -> None:
    out, status = _mypy(TYPING / "typed_errors.py")
    assert status == 1
    source = (TYPING / "typed_errors.py").read_text().splitlines()
    expected = {i + 1 for i, line in enumerate(source) if "# E:" in line}
    reported = {int(line.split(":")[1]) for line in out.splitlines() if ": error:" in line}
    assert expected == reported, out
