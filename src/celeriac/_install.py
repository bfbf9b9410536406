"""The command that installs an optional driver, for the errors that ask for one.

celeriac is not on a package index, so ``pip install 'celeriac[redis]'`` finds nothing. The
driver packages an extra stands for are on PyPI, so a hint leads with them (a command that
works wherever celeriac came from), then names the extra, with the ``pip install`` argument
that installs it when the place celeriac was installed from is known (a clone, a wheel file
or a git URL, as pip recorded it in ``direct_url.json``).
"""

from __future__ import annotations

import json
import shlex
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

# extra -> the requirements it installs: pyproject.toml's optional-dependencies without
# their platform markers (tests/unit/test_install.py keeps the two equal).
EXTRAS: dict[str, tuple[str, ...]] = {
    "redis": ("hiredis>=3.0",),
    "amqp": ("aiormq>=6.8",),
    "msgpack": ("msgpack>=1.0",),
    "uvloop": ("uvloop>=0.19",),
    "web": ("starlette>=0.37", "uvicorn>=0.30"),
}


def install_hint(extra: str) -> str:
    """``pip install <the extra's packages>``, then the extra itself where it can be named,
    e.g. ``pip install 'hiredis>=3.0' (or celeriac's 'redis' extra: pip install
    '/src/celeriac[redis]')``."""
    command = "pip install " + " ".join(shlex.quote(req) for req in EXTRAS[extra])
    arguments = extra_arguments(extra, installed_from())
    if arguments is None:
        return f"{command} (celeriac's {extra!r} extra)"
    return f"{command} (or celeriac's {extra!r} extra: pip install {arguments})"


def extra_arguments(extra: str, direct_url: dict[str, object] | None) -> str | None:
    """The ``pip install`` arguments that add ``extra`` to a celeriac installed from
    ``direct_url``: ``'/path/to/checkout[extra]'`` (with ``-e`` for an editable install),
    ``'/path/to/celeriac.whl[extra]'`` or ``'celeriac[extra] @ git+URL'``; None when that
    place is unknown or gone."""
    if direct_url is None or not isinstance(url := direct_url.get("url"), str):
        return None
    vcs_info = direct_url.get("vcs_info")
    if isinstance(vcs_info, dict) and isinstance(vcs := vcs_info.get("vcs"), str):
        return shlex.quote(f"celeriac[{extra}] @ {vcs}+{url}")
    parts = urlsplit(url)
    if parts.scheme != "file":
        return None
    path = Path(url2pathname(parts.path))
    if not path.exists():
        return None
    dir_info = direct_url.get("dir_info")
    editable = isinstance(dir_info, dict) and dir_info.get("editable") is True
    return ("-e " if editable else "") + shlex.quote(f"{path}[{extra}]")


def installed_from() -> dict[str, object] | None:
    """pip's record of where celeriac was installed from (PEP 610), or None (a plain index
    install, or celeriac run from a source tree without being installed)."""
    try:
        text = metadata.distribution("celeriac").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
