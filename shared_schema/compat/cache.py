"""A persistent cache of collection schemas, so ``tools/list`` need not import hundreds of modules.

Listing a tool means showing its input schema, and the schema comes from the
function's signature: without a cache the first ``tools/list`` after start-up
imports every module.  The cache keeps each module's tool specs (name,
description, schema, metadata) keyed by the module's path and a fingerprint
(size and mtime of the file and of its category's sibling files; the
distribution's version for entry points).  A module whose fingerprint still
matches is listed from the cache and imported only when one of its tools is
called.

A module that failed to import is cached too, as the stand-in it resolved
to, so a restart lists it without importing it again (importing a large
collection's failures was most of a cached restart's first listing).  Whether
a module imports depends on the environment as well as on its file, so the
cache header carries an environment key: the interpreter, ``sys.path`` and the
names in each folder on it (installing, upgrading or removing a package
changes the names in its ``site-packages`` folder; ``__pycache__`` is left
out, since importing creates it).  The whole file is ignored after a Python, pydantic,
cache-format or environment change.

What the fingerprints cannot see is a change inside an installed library that
adds or removes no file.  When a module is imported for a call, its real specs
replace the cached ones, and a difference is announced as a tool-list change;
deleting the file resets everything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pydantic
from pydantic import ValidationError

from shared_schema.compat.scan import ModuleSource
from shared_schema.tool_metadata import ToolSpec

log = logging.getLogger(__name__)

CACHE_FORMAT = 2
CACHE_FILE = "tool-schemas.json"


def environment_key() -> str:
    """What decides whether an import can succeed, besides the module's own files (see the module docstring)."""
    digest = hashlib.sha1(f"{sys.executable}|{sys.version}".encode())
    for entry in sys.path:
        try:
            names = sorted(name for name in os.listdir(entry or ".") if name != "__pycache__")
        except OSError:
            names = []
        digest.update(f"|{entry}:{','.join(names)}".encode())
    return digest.hexdigest()[:16]


def _header(environment: str) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        "python": list(sys.version_info[:2]),
        "pydantic": pydantic.VERSION,
        "environment": environment,
    }


class SchemaCache:
    def __init__(self, directory: Path, file_name: str = CACHE_FILE) -> None:
        self.path = directory / file_name
        self._header = _header(environment_key())
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = self._read()
        self._writable = True

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("tool schema cache %s unreadable (%s); starting empty", self.path, exc)
            return {}
        if not isinstance(raw, dict) or raw.get("header") != self._header or not isinstance(raw.get("modules"), dict):
            log.info("tool schema cache %s is from another version; starting empty", self.path)
            return {}
        modules: dict[str, dict[str, Any]] = raw["modules"]
        return modules

    def lookup(self, source: ModuleSource) -> tuple[ToolSpec, ...] | None:
        """The module's cached specs if its fingerprint still matches, else None."""
        entry = self._entries.get(source.cache_key)
        if not isinstance(entry, dict) or entry.get("fingerprint") != source.fingerprint:
            return None
        try:
            return tuple(ToolSpec.from_wire(raw) for raw in entry["tools"])
        except (ValidationError, TypeError, KeyError):
            return None

    def store(self, resolved: Iterable[tuple[ModuleSource, Sequence[ToolSpec]]]) -> None:
        """Record modules' specs (stand-ins of failed ones included) and rewrite the file atomically.

        A failure to write only logs.
        """
        with self._lock:
            changed = False
            for source, specs in resolved:
                entry = {"fingerprint": source.fingerprint, "tools": [spec.to_wire() for spec in specs]}
                if self._entries.get(source.cache_key) != entry:
                    self._entries[source.cache_key] = entry
                    changed = True
            if changed and self._writable:
                self._write()

    def _write(self) -> None:
        body = json.dumps({"header": self._header, "modules": self._entries}, separators=(",", ":"))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(prefix=".tool-schemas-", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(body)
            os.replace(tmp, self.path)
        except OSError as exc:
            self._writable = False
            log.warning("tool schema cache %s cannot be written (%s); listing will import modules", self.path, exc)
