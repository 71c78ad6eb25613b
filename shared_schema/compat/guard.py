"""What a mounted collection may change in the process that imports it: nothing it was not asked to.

Collection code runs with the rights of the gateway or the sidecar, so three
of its habits are contained here:

* **Installing packages.**  Some collections install what they miss: the
  ipfs_datasets_py package switches its auto-installer on when it is imported
  and then pip-installs dozens of packages into the running environment.
  Unless ``*_TOOL_ALLOW_INSTALLS`` is true, ``disable_auto_installers`` sets
  the switches it knows of (``INSTALLER_SWITCHES``) off before any module is
  imported, and an audit hook refuses any package-installer command
  (``pip install``, ``apt-get install``, ``npm install``...) started while a
  collection module is being imported or one of its tools is running.  Either
  way the attempt is logged with the module or tool that made it.
* **Editing ``sys.path``.**  A module that puts a folder on ``sys.path``
  while it is imported would make the modules imported after it importable
  or not depending on the order.  Each import runs with the entries other
  collection modules added hidden, and with the modules already loaded from
  those folders (by an import or by a tool call) hidden from ``sys.modules``,
  so whether a module imports depends only on the files and the environment;
  both are back in place between imports, where the module's own functions
  may need them.
* **Concurrent imports.**  Imports of collection modules are serialised by
  one lock, so the path edits above never interleave.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

log = logging.getLogger(__name__)

INSTALLER_SWITCHES: dict[str, str] = {
    "IPFS_DATASETS_AUTO_INSTALL": "false",
    "IPFS_KIT_AUTO_INSTALL_DEPS": "0",
    "IPFS_AUTO_INSTALL": "false",
    "IPFS_DATASETS_INSTALL_ON_IMPORT": "0",
    "IPFS_DATASETS_ENSURE_INSTALLER": "0",
    "IPFS_INSTALL_SYSTEM_DEPS": "0",
    "IPFS_DATASETS_AUTO_INSTALL_IPFS_KIT": "0",
    "IPFS_DATASETS_PY_AUTO_INSTALL_PROVERS": "0",
    "IPFS_DATASETS_PY_LAZY_INSTALL_PROVERS": "0",
    "IPFS_DATASETS_INSTALL_SYMAI_ROUTER": "0",
    "IPFS_DATASETS_PY_MCP_ALLOW_PROVIDER_INSTALLS": "0",
}
"""Environment switches of known collections that make importing or calling them install packages; the value
written turns each off (the ipfs_datasets_py package only switches its installer on when the variable is unset)."""

_INSTALLERS = frozenset(
    {"pip", "pip3", "uv", "pipx", "conda", "mamba", "micromamba", "apt", "apt-get", "dnf", "yum", "apk", "npm"}
)
_INSTALL_WORDS = frozenset({"install", "add", "sync"})
_EVENTS = frozenset({"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn"})

_acting_for: contextvars.ContextVar[str | None] = contextvars.ContextVar("collection_code", default=None)
_state_lock = threading.Lock()
_import_lock = threading.RLock()
_block_installs = True
_hook_installed = False
_added_paths: list[str] = []
"""``sys.path`` entries collection modules added while being imported, in the order they appeared."""


def _truthy(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def disable_auto_installers(*, allow: bool, setting: str) -> list[str]:
    """Turn the known installer switches off (unless ``allow``) and arm the audit hook; returns what was set.

    A switch the operator set explicitly to something true is overridden too
    (and logged), since ``setting`` is the one place that allows installs.
    """
    global _block_installs, _hook_installed
    changed = []
    with _state_lock:
        _block_installs = not allow
        if not allow:
            for name, off in INSTALLER_SWITCHES.items():
                current = os.environ.get(name)
                if current is None or _truthy(current):
                    os.environ[name] = off
                    changed.append(name)
                    if current is not None:
                        log.warning(
                            "%s=%s overridden to %s: set %s=true to let tools install", name, current, off, setting
                        )
        if not _hook_installed:
            sys.addaudithook(_audit)
            _hook_installed = True
    return changed


def _command_words(event: str, args: tuple[Any, ...]) -> list[str]:
    if event == "os.system":
        raw: Any = args[0] if args else ""
        return (raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)).split()
    position = 2 if event == "os.spawn" else 1  # os.spawn: (mode, path, args, env); the others: (path, args, ...)
    argv: Any = args[position] if len(args) > position else ()
    if isinstance(argv, str | bytes):
        argv = [argv]
    words = []
    for word in argv or ():
        words.extend((word.decode(errors="replace") if isinstance(word, bytes) else str(word)).split())
    return words


def is_install_command(words: Sequence[str]) -> bool:
    """Whether a command line runs a package installer's install (``python -m pip install x`` included)."""
    tools = [os.path.basename(word).lower() for word in words]
    for index, tool in enumerate(tools):
        name = tool.rsplit(".exe", 1)[0]
        module = index > 0 and tools[index - 1] == "-m"
        if name in _INSTALLERS or (module and name in ("pip", "ensurepip")) or name.startswith("pip3."):
            return name == "ensurepip" or any(word in _INSTALL_WORDS for word in tools[index + 1 :])
    return False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Runs on every audited event in the process: return at once unless it starts a command for collection code."""
    if event not in _EVENTS:
        return
    who = _acting_for.get()
    if who is None:
        return
    words = _command_words(event, args)
    if not is_install_command(words):
        return
    command = " ".join(words)[:300]
    if _block_installs:
        log.warning("refused a package install started by %s: %s", who, command)
        raise PermissionError(f"installing packages from tool collection code is not allowed here: {command}")
    log.warning("%s is installing packages into this environment: %s", who, command)


@contextlib.contextmanager
def acting_for(who: str) -> Iterator[None]:
    """Mark the current context (thread or task) as running collection code on ``who``'s behalf."""
    token = _acting_for.set(who)
    try:
        yield
    finally:
        _acting_for.reset(token)


def _loaded_from(entries: set[str]) -> dict[str, Any]:
    """Modules in ``sys.modules`` found through one of the ``sys.path`` ``entries`` (top-level ones and theirs)."""
    folders = {os.path.realpath(entry or ".") for entry in entries}
    tops = set()
    for name, module in list(sys.modules.items()):
        if "." in name or module is None:
            continue
        origin = getattr(module, "__file__", None)
        if not isinstance(origin, str):
            continue
        parent = os.path.dirname(origin)
        if os.path.basename(origin) == "__init__.py":
            parent = os.path.dirname(parent)
        if os.path.realpath(parent) in folders:
            tops.add(name)
    return {
        name: module
        for name, module in list(sys.modules.items())
        if name.partition(".")[0] in tops and module is not None
    }


@contextlib.contextmanager
def collection_import(who: str) -> Iterator[None]:
    """Import collection code: one at a time, with other modules' ``sys.path`` additions hidden, installs refused."""
    with _import_lock, acting_for(who):
        original = list(sys.path)
        hidden = {entry for entry in _added_paths if entry in original}
        sys.path[:] = [entry for entry in original if entry not in hidden]
        modules = _loaded_from(hidden) if hidden else {}
        for name in modules:
            del sys.modules[name]
        before = list(sys.path)
        try:
            yield
        finally:
            for name, module in modules.items():
                sys.modules.setdefault(name, module)
            added = [entry for entry in sys.path if entry not in before]
            for entry in added:
                if entry not in _added_paths:
                    _added_paths.append(entry)
            if added:
                log.info("%s added %s to sys.path (hidden from the other collection modules' imports)", who, added)
            for index, entry in enumerate(original):  # back where they were
                if entry in hidden and entry not in sys.path:
                    sys.path.insert(min(index, len(sys.path)), entry)
