"""Every fenced code block of README.md runs as written, in the README's order.

One rule per kind of block, decided by its language tag and its first line:

- ``# not run by the tests: <why>`` as the first line: not run (installs, the test suite
  itself, synopses with placeholders); the reason is part of the README, so readers see it.
- ``python`` starting ``# tasks.py`` or ``# add to tasks.py``: the tutorial's module, written
  (then appended to) in a fresh directory before anything runs, so the worker started by the
  README's command knows every task the later blocks call.
- ``python`` starting ``# from <path>``: an excerpt of a file of this repository (whose own
  tests run it); each of its lines must be in that file, in the same order.
- ``python`` starting ``>>>``: a doctest, run in that directory.
- any other ``python``: a script, run in that directory with this interpreter; it must exit 0,
  and a ``print(...)`` line's trailing comment (``# [3, 7, 11]``) is a line it prints (one
  that ends `` ...``: the first of several lines).
- no tag, lines starting ``$ celeriac ... worker``: the worker, started in that directory on
  the embedded SQLite broker and kept running for the blocks after it; the lines below the
  command are its shown output and must match what it logs.
- no tag, every line a log line (``[...``): shown worker output, matched against the worker's
  log once it has written it.

Shown output matches loosely: ``...`` stands for any text, the rest is literal. A block that
fits no rule fails the test, so a new block is either made runnable or marked.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services import wait_until

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
NOT_RUN = "# not run by the tests:"
FILE_BLOCK = re.compile(r"# (?:add to )?(\w+\.py)$")
EXCERPT = re.compile(r"# from (\S+)")
WORKER_COMMAND = re.compile(r"\$ (celeriac -A \S+ worker\b.*)$")
SCRIPT_TIMEOUT = 60.0
PRINT_WITH_OUTPUT = re.compile(r"^\s*print\(.*\)\s+# (.+)$")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it starts (for messages), its language tag and its text."""

    line: int
    lang: str
    text: str

    @property
    def first_line(self) -> str:
        return self.text.splitlines()[0].strip() if self.text.strip() else ""

    def __str__(self) -> str:
        return f"README.md line {self.line} ({self.lang or 'no tag'}): {self.first_line!r}"


def fenced_blocks(markdown: str) -> list[Block]:
    """Every ```-fenced block, in order."""
    blocks: list[Block] = []
    opened: tuple[int, str] | None = None
    body: list[str] = []
    for number, line in enumerate(markdown.splitlines(), start=1):
        if not line.startswith("```"):
            if opened is not None:
                body.append(line)
            continue
        if opened is None:
            opened, body = (number, line[3:].strip()), []
        else:
            blocks.append(Block(opened[0], opened[1], "\n".join(body) + "\n"))
            opened = None
    assert opened is None, f"README.md line {opened[0]}: a code block is never closed"
    return blocks


def kind(block: Block) -> str:
    """Which rule of the module docstring runs ``block``; an error for a block none fits."""
    first = block.first_line
    if first.startswith(NOT_RUN):
        return "not run"
    if block.lang == "python":
        if FILE_BLOCK.match(first):
            return "file"
        if EXCERPT.match(first):
            return "excerpt"
        if first.startswith(">>>"):
            return "doctest"
        return "script"
    if block.lang == "":
        if WORKER_COMMAND.match(first):
            return "worker"
        if all(line.startswith("[") for line in block.text.splitlines() if line.strip()):
            return "log"
    raise AssertionError(
        f"{block}: no rule of tests/examples/test_readme.py runs this block; make it one "
        f"they run, or start it with '{NOT_RUN} <why>'"
    )


def loose(shown: str) -> re.Pattern[str]:
    """A shown output line as a pattern: ``...`` is any text, the rest literal."""
    return re.compile(".*?".join(re.escape(part) for part in shown.split("...")))


def missing_lines(shown: list[str], output: list[str]) -> list[str]:
    """The shown lines no line of ``output`` matches."""
    return [s for s in shown if not any(loose(s).fullmatch(line) for line in output)]


class Worker:
    """The README's worker command, run in the tutorial's directory, its log collected."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str]) -> None:
        argv = command.split()
        assert argv[0] == "celeriac"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celeriac.cli", *argv[1:]],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, shown: list[str], block: Block, timeout: float = 30.0) -> None:
        """Until the worker has logged every shown line, or fail with its log."""

        def logged() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{block}: the worker exited:\n{self.log()}")
            return not missing_lines(shown, list(self.lines))

        try:
            wait_until(logged, timeout, f"{block}: the worker's log to show {shown}")
        except AssertionError as exc:
            missing = missing_lines(shown, list(self.lines))
            raise AssertionError(f"{exc}\nnot logged: {missing}\nlog:\n{self.log()}") from None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def run_python(argv: list[str], cwd: Path, env: dict[str, str], block: Block) -> str:
    """Run ``python argv`` as the README's reader would; what it printed."""
    done = subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
    )
    assert done.returncode == 0, f"{block} failed:\n{done.stdout}{done.stderr}"
    return done.stdout


def shown_prints(block: Block) -> list[str]:
    """The output a script's ``print(...)  # output`` lines say they print."""
    shown = [m.group(1) for line in block.text.splitlines() if (m := PRINT_WITH_OUTPUT.match(line))]
    return [line.removesuffix(" ...") for line in shown]


def check_excerpt(block: Block) -> None:
    """Each line of the excerpt is in the file it names, in the same order."""
    match = EXCERPT.match(block.first_line)
    assert match is not None
    source = (ROOT / match.group(1)).read_text().splitlines()
    position = 0
    for line in block.text.splitlines()[1:]:
        if not line.strip():
            continue
        try:
            position = source.index(line, position) + 1
        except ValueError:
            raise AssertionError(f"{block}: {line!r} is not in {match.group(1)}") from None


@pytest.fixture
def env() -> dict[str, str]:
    """No CELERIAC_ setting from outside: the README's blocks use their own defaults."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
    return {**clean, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT / "src")}


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.close()


def write_files(blocks: list[Block], directory: Path) -> None:
    """The ``# tasks.py`` blocks, in order: the first writes the file, the next add to it."""
    for block in blocks:
        if kind(block) != "file":
            continue
        match = FILE_BLOCK.match(block.first_line)
        assert match is not None
        path = directory / match.group(1)
        adding = block.first_line.startswith("# add to ")
        assert adding == path.exists(), f"{block}: 'add to' a file no block wrote first, or twice"
        with path.open("a") as file:
            file.write("\n" + block.text)


def test_every_readme_block_runs_as_written(
    tmp_path: Path, env: dict[str, str], workers: list[Worker]
) -> None:
    blocks = fenced_blocks(README.read_text())
    kinds = [kind(block) for block in blocks]  # an unmarked block fails here, before anything runs
    write_files(blocks, tmp_path)
    for number, (block, what) in enumerate(zip(blocks, kinds, strict=True)):
        if what == "excerpt":
            check_excerpt(block)
        elif what == "doctest":
            session = tmp_path / f"block_{number}.txt"
            session.write_text(block.text)
            run_python(["-m", "doctest", session.name], tmp_path, env, block)
        elif what == "script":
            script = tmp_path / f"block_{number}.py"
            script.write_text(block.text)
            printed = run_python([script.name], tmp_path, env, block).splitlines()
            missing = missing_lines(shown_prints(block), printed)
            assert not missing, f"{block}: printed {printed}, not {missing}"
        elif what == "worker":
            command, *shown = block.text.splitlines()
            match = WORKER_COMMAND.match(command)
            assert match is not None
            worker = Worker(match.group(1), tmp_path, env)
            workers.append(worker)
            worker.wait_for([s for s in shown if s.strip()], block)
        elif what == "log":
            assert workers, f"{block}: shown worker output, but no block started a worker"
            workers[-1].wait_for([s for s in block.text.splitlines() if s.strip()], block)
    assert "worker" in kinds and "doctest" in kinds and "script" in kinds
    for worker in workers:
        assert worker.stop() == 0, worker.log()
        assert not [line for line in worker.lines if "ERROR" in line], worker.log()


def test_a_block_no_rule_runs_fails_with_where_it_is_and_how_to_mark_it() -> None:
    unmarked = fenced_blocks("text\n\n```\nmake install\n```\n")
    with pytest.raises(AssertionError, match=r"README.md line 3 .*not run by the tests: <why>"):
        kind(unmarked[0])
    marked = fenced_blocks("```\n# not run by the tests: installs things\nmake install\n```\n")
    assert kind(marked[0]) == "not run"


def test_shown_output_matches_loosely_but_not_anything() -> None:
    shown = ["[...: INFO/MainProcess] task tasks.add[...] succeeded in ...s: 5"]
    real = (
        "[2026-12-03 14:54:38,288: INFO/MainProcess] task tasks.add[6a91-ed] succeeded in 0.0s: 5"
    )
    assert missing_lines(shown, [real]) == []
    assert missing_lines(shown, [real.replace(": 5", ": 6")]) == shown
