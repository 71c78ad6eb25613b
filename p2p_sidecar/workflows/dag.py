"""Workflow DAGs: parsing and validation, output references, rendering.  Pure: no I/O, no queue.

A workflow is a list of steps, each one task::

    {"step_id": "B", "task_type": "hash", "payload": {"data": "{{steps.A.output.digest}}"}, "depends_on": ["A"]}

A string that is exactly ``{{steps.A.output}}`` or ``{{steps.A.output.key.0.sub}}``
is replaced by that value with its own JSON type; a reference inside a longer
string is replaced by its text.  A reference also makes the step depend on
``A``, so it need not be listed twice.  Everything that can be checked before
anything runs is checked at submit: unique step ids, references to unknown
steps, cycles (named by their steps).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from typing import Any

from p2p_sidecar.taskqueue.errors import InvalidRequest

MAX_STEPS = 1000
STEP_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]{0,63}$")
REFERENCE = re.compile(r"\{\{\s*steps\.([A-Za-z0-9_][A-Za-z0-9_\-]*)\.output((?:\.[A-Za-z0-9_\-]+)*)\s*\}\}")
STEP_KEYS = {
    "step_id",
    "id",
    "name",
    "task_type",
    "payload",
    "depends_on",
    "priority",
    "timeout",
    "retry_policy",
    "metadata",
    "tags",
}


class DagError(InvalidRequest):
    """A workflow that cannot run as written; the message names the steps at fault."""


class TemplateError(Exception):
    """An output reference that cannot be resolved from the outputs at hand."""


@dataclass(frozen=True)
class Step:
    step_id: str
    task_type: str
    payload: Any
    depends_on: tuple[str, ...]
    name: str | None = None
    priority: float | None = None
    timeout: float | None = None
    retry_policy: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    tags: tuple[str, ...] = ()

    def to_spec(self) -> dict[str, Any]:
        """What the engine stores for the step (everything but its id and its dependencies)."""
        return {
            "task_type": self.task_type,
            "payload": self.payload,
            "name": self.name,
            "priority": self.priority,
            "timeout": self.timeout,
            "retry_policy": self.retry_policy,
            "metadata": self.metadata,
            "tags": list(self.tags),
        }

    @property
    def has_references(self) -> bool:
        return bool(references(self.payload))


@dataclass(frozen=True)
class Dag:
    steps: dict[str, Step]
    """In the order given at submit."""

    def edges(self) -> list[tuple[str, str]]:
        return [(dep, step.step_id) for step in self.steps.values() for dep in step.depends_on]

    def levels(self) -> list[list[str]]:
        """Steps grouped by depth: every step of a level can run in parallel once the levels before it are done."""
        return levels(self.steps)

    def sinks(self) -> list[str]:
        needed = {dep for step in self.steps.values() for dep in step.depends_on}
        return [step_id for step_id in self.steps if step_id not in needed]


def references(value: Any) -> set[str]:
    """Step ids that ``value`` refers to, anywhere inside it."""
    found: set[str] = set()
    if isinstance(value, str):
        found.update(match.group(1) for match in REFERENCE.finditer(value))
    elif isinstance(value, dict):
        for item in value.values():
            found |= references(item)
    elif isinstance(value, list):
        for item in value:
            found |= references(item)
    return found


def _step_id(raw: dict[str, Any], position: int) -> str:
    if "step_id" in raw and "id" in raw and raw["step_id"] != raw["id"]:
        raise DagError(f"step {position + 1} has both step_id and id, and they differ")
    step_id = raw.get("step_id", raw.get("id"))
    if not isinstance(step_id, str) or not STEP_ID.match(step_id):
        raise DagError(f"step {position + 1} needs a step_id of 1-64 letters, digits, '_' or '-' (got {step_id!r})")
    return step_id


def _names(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise DagError(f"{what} must be a step id or a list of step ids")
    return value


def _extra_dependencies(dependencies: Any) -> dict[str, list[str]]:
    """``{"B": ["A"]}`` or ``[["A", "B"], ...]`` / ``[{"from": "A", "to": "B"}]`` (A before B)."""
    if dependencies is None:
        return {}
    extra: dict[str, list[str]] = {}
    if isinstance(dependencies, dict):
        for step_id, deps in dependencies.items():
            extra.setdefault(step_id, []).extend(_names(deps, f"dependencies[{step_id!r}]"))
        return extra
    if isinstance(dependencies, list):
        for edge in dependencies:
            if isinstance(edge, dict) and set(edge) == {"from", "to"}:
                before, after = edge["from"], edge["to"]
            elif isinstance(edge, list) and len(edge) == 2:
                before, after = edge
            else:
                raise DagError('each dependency must be ["A", "B"] or {"from": "A", "to": "B"} (A runs before B)')
            if not isinstance(before, str) or not isinstance(after, str):
                raise DagError("dependency ends must be step ids")
            extra.setdefault(after, []).append(before)
        return extra
    raise DagError('dependencies must be {"B": ["A"]} or a list of ["A", "B"] edges')


def parse(steps: Any, dependencies: Any = None) -> Dag:
    """Validate a workflow's steps; raises ``DagError`` naming what is wrong."""
    if not isinstance(steps, list) or not steps:
        raise DagError("steps must be a non-empty list of step objects")
    if len(steps) > MAX_STEPS:
        raise DagError(f"a workflow has at most {MAX_STEPS} steps (got {len(steps)})")
    parsed: dict[str, Step] = {}
    positions: dict[str, int] = {}
    for position, raw in enumerate(steps):
        if not isinstance(raw, dict):
            raise DagError(f"step {position + 1} must be an object")
        step_id = _step_id(raw, position)
        if step_id in parsed:
            raise DagError(f"duplicate step id {step_id!r} (steps {positions[step_id] + 1} and {position + 1})")
        unknown = sorted(set(raw) - STEP_KEYS)
        if unknown:
            raise DagError(f"step {step_id!r} has unknown keys {unknown}; known: {sorted(STEP_KEYS)}")
        task_type = raw.get("task_type")
        if not isinstance(task_type, str) or not task_type:
            raise DagError(f"step {step_id!r} needs a task_type")
        payload = raw.get("payload", {})
        deps = _names(raw.get("depends_on", []), f"step {step_id!r} depends_on")
        tags = raw.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            raise DagError(f"step {step_id!r} tags must be a list of strings")
        for key, kind in (("retry_policy", dict), ("metadata", dict)):
            if raw.get(key) is not None and not isinstance(raw[key], kind):
                raise DagError(f"step {step_id!r} {key} must be an object")
        for key in ("priority", "timeout"):
            value = raw.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise DagError(f"step {step_id!r} {key} must be a number")
        positions[step_id] = position
        parsed[step_id] = Step(
            step_id=step_id,
            task_type=task_type,
            payload=payload,
            depends_on=tuple(deps),
            name=raw.get("name") if isinstance(raw.get("name"), str) else None,
            priority=raw.get("priority"),
            timeout=raw.get("timeout"),
            retry_policy=raw.get("retry_policy"),
            metadata=raw.get("metadata"),
            tags=tuple(tags),
        )
    extra = _extra_dependencies(dependencies)
    for step_id in extra:
        if step_id not in parsed:
            raise DagError(f"dependencies name unknown step {step_id!r}; steps: {list(parsed)}")
    for step_id, step in list(parsed.items()):
        for dep in step.depends_on:
            if dep not in parsed:
                raise DagError(f"step {step_id!r} depends on unknown step {dep!r}; steps: {list(parsed)}")
        for dep in extra.get(step_id, []):
            if dep not in parsed:
                raise DagError(f"dependencies: step {step_id!r} depends on unknown step {dep!r}")
        referenced = references(step.payload)
        for dep in sorted(referenced):
            if dep not in parsed:
                raise DagError(f"step {step_id!r} payload references unknown step {dep!r} ({{{{steps.{dep}.output}}}})")
        merged = tuple(dict.fromkeys([*step.depends_on, *extra.get(step_id, []), *sorted(referenced)]))
        parsed[step_id] = Step(**{**step.__dict__, "depends_on": merged})
    cycle = find_cycle(parsed)
    if cycle:
        raise DagError(f"workflow has a cycle: {' -> '.join(cycle)}")
    return Dag(parsed)


def find_cycle(steps: dict[str, Step]) -> list[str] | None:
    """A cycle as a path in run order that returns to its start (``["A", "B", "A"]``), or None.

    ``graphlib`` finds it without recursion, so a chain of ``MAX_STEPS`` steps in any order is fine.
    """
    sorter = TopologicalSorter({step_id: step.depends_on for step_id, step in steps.items()})
    try:
        sorter.prepare()
    except CycleError as exc:
        return list(exc.args[1])
    return None


def levels(steps: dict[str, Step]) -> list[list[str]]:
    """Steps grouped by depth: every step of a level can run in parallel once the levels before it are done.

    Within a level, steps keep their submission order.
    """
    position = {step_id: index for index, step_id in enumerate(steps)}
    sorter = TopologicalSorter({step_id: step.depends_on for step_id, step in steps.items()})
    try:
        sorter.prepare()
    except CycleError:
        raise DagError("workflow has a cycle") from None
    found = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=position.__getitem__)
        found.append(ready)
        sorter.done(*ready)
    return found


def topological_order(steps: dict[str, Step]) -> list[str]:
    """Steps in an order where each comes after everything it depends on (submission order breaks ties)."""
    return [step_id for level in levels(steps) for step_id in level]


# -- output references -------------------------------------------------------------------------------------------
def _lookup(outputs: dict[str, Any], step_id: str, path: str) -> Any:
    if step_id not in outputs:
        raise TemplateError(f"step {step_id!r} has no output yet")
    value = outputs[step_id]
    walked = f"steps.{step_id}.output"
    for part in [segment for segment in path.split(".") if segment]:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise TemplateError(f"{walked} has no {part!r} (it is {json.dumps(value)[:120]})")
        walked += f".{part}"
    return value


def resolve(value: Any, outputs: dict[str, Any]) -> Any:
    """``value`` with every output reference replaced (raises ``TemplateError``)."""
    if isinstance(value, str):
        whole = REFERENCE.fullmatch(value.strip())
        if whole:
            return _lookup(outputs, whole.group(1), whole.group(2))

        def text(match: re.Match[str]) -> str:
            found = _lookup(outputs, match.group(1), match.group(2))
            return found if isinstance(found, str) else json.dumps(found, separators=(",", ":"))

        return REFERENCE.sub(text, value)
    if isinstance(value, dict):
        return {key: resolve(item, outputs) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, outputs) for item in value]
    return value


# -- rendering ------------------------------------------------------------------------------------------------------
FORMATS = ("json", "dot", "mermaid")


def render(dag: Dag, fmt: str, *, title: str, statuses: dict[str, str] | None = None) -> Any:
    """The DAG as a JSON object, a Graphviz ``dot`` digraph, or a Mermaid flowchart (text)."""
    statuses = statuses or {}
    if fmt == "json":
        return {
            "steps": [
                {
                    "step_id": step.step_id,
                    "task_type": step.task_type,
                    "depends_on": list(step.depends_on),
                    **({"status": statuses[step.step_id]} if step.step_id in statuses else {}),
                }
                for step in dag.steps.values()
            ],
            "edges": [{"from": before, "to": after} for before, after in dag.edges()],
            "levels": dag.levels(),
            "order": topological_order(dag.steps),
        }
    if fmt == "dot":
        lines = [f"digraph {json.dumps(title)} {{", "  rankdir=LR;", "  node [shape=box];"]
        for step in dag.steps.values():
            label = "\\n".join(filter(None, [step.step_id, step.task_type, statuses.get(step.step_id)]))
            lines.append(f'  "{step.step_id}" [label="{label}"];')
        lines.extend(f'  "{before}" -> "{after}";' for before, after in dag.edges())
        lines.append("}")
        return "\n".join(lines)
    if fmt == "mermaid":
        ids = {step_id: f"s{index}" for index, step_id in enumerate(dag.steps)}
        lines = ["flowchart TD"]
        for step in dag.steps.values():
            status = statuses.get(step.step_id)
            label = f"{step.step_id}: {step.task_type}" + (f" ({status})" if status else "")
            lines.append(f'  {ids[step.step_id]}["{label}"]')
        lines.extend(f"  {ids[before]} --> {ids[after]}" for before, after in dag.edges())
        return "\n".join(lines)
    raise InvalidRequest(f"fmt must be one of {list(FORMATS)} (got {fmt!r})")


def dag_from_stored(rows: Iterable[tuple[str, dict[str, Any], list[str]]]) -> Dag:
    """Rebuild a validated DAG from the engine's stored steps (step id, spec, depends_on)."""
    steps = {}
    for step_id, spec, depends_on in rows:
        steps[step_id] = Step(
            step_id=step_id,
            task_type=spec["task_type"],
            payload=spec.get("payload"),
            depends_on=tuple(depends_on),
            name=spec.get("name"),
            priority=spec.get("priority"),
            timeout=spec.get("timeout"),
            retry_policy=spec.get("retry_policy"),
            metadata=spec.get("metadata"),
            tags=tuple(spec.get("tags") or ()),
        )
    return Dag(steps)
