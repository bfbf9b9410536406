"""Installing celeriac: its version, the built wheel, and the commands its errors suggest.

celeriac is not on a package index, so every error that asks for an optional driver must name
a command that works: the driver's own PyPI package, then celeriac's extra by the place
celeriac was installed from.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

import celeriac
from celeriac import _install
from celeriac._install import EXTRAS, extra_arguments, install_hint

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# extra -> a module its packages provide, that celeriac imports when the extra is needed.
EXTRA_MODULES = {
    "redis": "hiredis",
    "amqp": "aiormq",
    "msgpack": "msgpack",
    "uvloop": "uvloop",
    "web": "uvicorn",
}


def _run_python(code: str, *, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=cwd
    )


def _without_markers(requirement: str) -> str:
    return requirement.split(";")[0].strip()


class TestVersion:
    def test_version_is_the_installed_distributions(self) -> None:
        assert celeriac.__version__ == metadata.version("celeriac")
        assert celeriac.__version__ == PYPROJECT["version"]

    def test_cli_prints_it_as_celery_does(self) -> None:
        cli = Path(sys.executable).with_name("celeriac")
        done = subprocess.run([cli, "--version"], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"celeriac {PYPROJECT['version']}\n"

    def test_source_tree_never_installed_has_a_version_still(self, tmp_path: Path) -> None:
        """Run from src/ with no distribution metadata, the import still works."""
        code = (
            "import importlib.metadata as m\n"
            "def missing(name): raise m.PackageNotFoundError(name)\n"
            "m.version = missing\n"
            "import celeriac; print(celeriac.__version__)\n"
        )
        done = _run_python(code, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout == "0+unknown\n"


class TestHintCommands:
    def test_extras_table_is_pyprojects(self) -> None:
        optional = PYPROJECT["optional-dependencies"]
        for extra, requirements in EXTRAS.items():
            assert requirements == tuple(_without_markers(r) for r in optional[extra]), extra

    def test_each_hint_installs_the_module_that_was_missing(self) -> None:
        """The package the hint names is the distribution that provides the module."""
        provided_by = metadata.packages_distributions()
        for extra, module in EXTRA_MODULES.items():
            names = {re.split(r"[<>=!~ ]", req)[0].lower() for req in EXTRAS[extra]}
            distributions = {name.lower() for name in provided_by[module]}
            assert distributions & names, (extra, module, distributions, names)

    def test_hint_leads_with_the_pypi_packages(self) -> None:
        assert install_hint("redis").startswith("pip install 'hiredis>=3.0' ")
        assert install_hint("web").startswith("pip install 'starlette>=0.37' 'uvicorn>=0.30' ")

    def test_this_checkout_is_named_with_its_editable_form(self) -> None:
        """The dev venv has celeriac installed with ``pip install -e .``."""
        assert install_hint("amqp").endswith(
            f"(or celeriac's 'amqp' extra: pip install -e '{ROOT}[amqp]')"
        )

    def test_unknown_origin_names_the_extra_only(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(_install, "installed_from", lambda: None)
        assert install_hint("redis") == "pip install 'hiredis>=3.0' (celeriac's 'redis' extra)"


class TestExtraArguments:
    def test_checkout(self, tmp_path: Path) -> None:
        record = {"url": tmp_path.as_uri(), "dir_info": {}}
        assert extra_arguments("redis", record) == f"'{tmp_path}[redis]'"

    def test_editable_checkout(self, tmp_path: Path) -> None:
        record = {"url": tmp_path.as_uri(), "dir_info": {"editable": True}}
        assert extra_arguments("redis", record) == f"-e '{tmp_path}[redis]'"

    def test_wheel_file(self, tmp_path: Path) -> None:
        wheel = tmp_path / "celeriac-0.1.0-py3-none-any.whl"
        wheel.write_bytes(b"")
        record = {"url": wheel.as_uri(), "archive_info": {}}
        assert extra_arguments("web", record) == f"'{wheel}[web]'"

    def test_git_url(self) -> None:
        record = {"url": "https://example.org/celeriac.git", "vcs_info": {"vcs": "git"}}
        assert (
            extra_arguments("amqp", record)
            == "'celeriac[amqp] @ git+https://example.org/celeriac.git'"
        )

    def test_unknown_or_gone(self, tmp_path: Path) -> None:
        assert extra_arguments("redis", None) is None
        assert extra_arguments("redis", {"url": (tmp_path / "gone").as_uri()}) is None
        assert extra_arguments("redis", {"url": "https://example.org/c.tar.gz"}) is None


MISSING_DRIVER = """
import sys
sys.modules[{module!r}] = None  # makes `import {module}` fail as if not installed
from celeriac.errors import ConfigurationError
{setup}
try:
    {call}
except ConfigurationError as exc:
    print(exc)
"""


@pytest.mark.parametrize(
    ("module", "setup", "call", "expected"),
    [
        (
            "hiredis",
            "from celeriac.transports import broker_from_url",
            "broker_from_url('redis://', max_message_size=1, options={})",
            "broker redis:// needs an optional driver (hiredis): pip install 'hiredis>=3.0' ",
        ),
        (
            "hiredis",
            "from celeriac.transports import backend_from_url",
            "backend_from_url('rediss://', options={})",
            "result backend rediss:// needs an optional driver (hiredis): "
            "pip install 'hiredis>=3.0' ",
        ),
        (
            "aiormq",
            "from celeriac.transports import broker_from_url",
            "broker_from_url('amqp://', max_message_size=1, options={})",
            "broker amqp:// needs an optional driver (aiormq): pip install 'aiormq>=6.8' ",
        ),
        (
            "aiormq",
            "from celeriac.transports import backend_from_url",
            "backend_from_url('rpc://', options={})",
            "result backend rpc:// needs an optional driver (aiormq): pip install 'aiormq>=6.8' ",
        ),
        (
            "starlette",
            "from celeriac.web import sse_response; from celeriac import AsyncResult, Celery",
            "sse_response(AsyncResult('id', app=Celery('p', broker='memory://p')))",
            "sse_response needs Starlette: pip install 'starlette>=0.37' 'uvicorn>=0.30' ",
        ),
        (
            "msgpack",
            "from celeriac.protocol.serialization import dumps",
            "dumps([1], 'msgpack')",
            "the msgpack serializer needs the msgpack package: pip install 'msgpack>=1.0' ",
        ),
    ],
)
def test_missing_driver_message_is_a_command_that_works(
    module: str, setup: str, call: str, expected: str
) -> None:
    done = _run_python(MISSING_DRIVER.format(module=module, setup=setup, call=call))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(expected), done.stdout
    assert "pip install 'celeriac[" not in done.stdout


def test_celeriac_run_without_uvicorn_names_starlette_and_uvicorn(tmp_path: Path) -> None:
    (tmp_path / "noweb.py").write_text("from celeriac import Celery\napp = Celery('t')\n")
    code = (
        "import sys\n"
        "sys.modules['uvicorn'] = None\n"
        "from celeriac.cli import main\n"
        "sys.exit(main(['-A', 'noweb:app', 'run', 'noweb:app']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 1
    assert done.stderr.startswith(
        "celeriac: error: celeriac run serves the web app with uvicorn: "
        "pip install 'starlette>=0.37' 'uvicorn>=0.30' (or celeriac's 'web' extra: "
    ), done.stderr


@pytest.mark.timeout(120)
def test_built_wheel_installs_into_a_fresh_venv_and_runs(tmp_path: Path) -> None:
    """The README's wheel route: ``pip wheel .``, then install the wheel elsewhere."""
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    built = subprocess.run(
        [*pip, "wheel", str(ROOT), "-w", str(dist), "--no-deps", "-q"],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert built.returncode == 0, built.stderr
    wheel = dist / f"celeriac-{PYPROJECT['version']}-py3-none-any.whl"
    assert wheel.is_file(), list(dist.iterdir())

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=60)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [*pip, "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert installed.returncode == 0, installed.stderr

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    version = subprocess.run(
        [venv / "bin" / "celeriac", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env=env,
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout == f"celeriac {PYPROJECT['version']}\n"

    where = subprocess.run(
        [
            python,
            "-c",
            "import celeriac, celeriac._install as i; print(celeriac.__file__); "
            "print(i.install_hint('redis'))",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env=env,
    )
    assert where.returncode == 0, where.stderr
    module_file, hint = where.stdout.splitlines()
    assert Path(module_file).is_relative_to(venv)  # the wheel's copy, not this checkout's
    assert hint.endswith(f"(or celeriac's 'redis' extra: pip install '{wheel}[redis]')")
