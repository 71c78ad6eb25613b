"""Workflow DAGs: validation (unique ids, unknown references, cycles), output references, rendering."""

from __future__ import annotations

import pytest

from p2p_sidecar.taskqueue.errors import InvalidRequest
from p2p_sidecar.workflows import dag
from p2p_sidecar.workflows.dag import DagError, TemplateError, parse, render, resolve

DIAMOND = [
    {"step_id": "A", "task_type": "hash", "payload": {"data": "abc"}},
    {"step_id": "B", "task_type": "hash", "payload": {"data": "{{steps.A.output.digest}}"}},
    {"id": "C", "task_type": "echo", "payload": {"size": "{{ steps.A.output.size }}"}},
    {"step_id": "D", "task_type": "echo", "payload": {"text": "{{steps.B.output.digest}}-{{steps.C.output.size}}"}},
]


def test_references_imply_dependencies_and_levels() -> None:
    graph = parse(DIAMOND)
    assert {step_id: step.depends_on for step_id, step in graph.steps.items()} == {
        "A": (),
        "B": ("A",),
        "C": ("A",),
        "D": ("B", "C"),
    }
    assert graph.levels() == [["A"], ["B", "C"], ["D"]]
    assert graph.sinks() == ["D"]
    assert dag.topological_order(graph.steps) == ["A", "B", "C", "D"]


def test_explicit_dependencies_in_every_spelling() -> None:
    steps = [{"step_id": name, "task_type": "echo"} for name in "ABC"]
    steps[2]["depends_on"] = "B"
    graph = parse(steps, {"B": ["A"]})
    assert graph.steps["B"].depends_on == ("A",) and graph.steps["C"].depends_on == ("B",)
    graph = parse([{"step_id": name, "task_type": "echo"} for name in "AB"], [["A", "B"]])
    assert graph.steps["B"].depends_on == ("A",)
    graph = parse([{"step_id": name, "task_type": "echo"} for name in "AB"], [{"from": "A", "to": "B"}])
    assert graph.edges() == [("A", "B")]


@pytest.mark.parametrize(
    ("steps", "dependencies", "message"),
    [
        ([], None, "non-empty list"),
        ("A", None, "non-empty list"),
        ([1], None, "step 1 must be an object"),
        ([{"task_type": "echo"}], None, "step 1 needs a step_id"),
        ([{"step_id": "has space", "task_type": "echo"}], None, "needs a step_id"),
        ([{"step_id": "A"}], None, "step 'A' needs a task_type"),
        ([{"step_id": "A", "task_type": "echo", "colour": 1}], None, "unknown keys ['colour']"),
        (
            [{"step_id": "A", "task_type": "echo"}, {"step_id": "A", "task_type": "echo"}],
            None,
            "duplicate step id 'A' (steps 1 and 2)",
        ),
        ([{"step_id": "A", "task_type": "echo", "depends_on": ["X"]}], None, "step 'A' depends on unknown step 'X'"),
        (
            [{"step_id": "A", "task_type": "echo", "payload": {"v": "{{steps.Q.output}}"}}],
            None,
            "step 'A' payload references unknown step 'Q'",
        ),
        ([{"step_id": "A", "task_type": "echo"}], {"Z": ["A"]}, "dependencies name unknown step 'Z'"),
        ([{"step_id": "A", "task_type": "echo"}], {"A": ["Z"]}, "depends on unknown step 'Z'"),
        ([{"step_id": "A", "task_type": "echo"}], [["A"]], "each dependency must be"),
        ([{"step_id": "A", "task_type": "echo", "depends_on": ["A"]}], None, "cycle: A -> A"),
        ([{"step_id": "A", "task_type": "echo", "priority": "high"}], None, "priority must be a number"),
        ([{"step_id": "A", "task_type": "echo", "retry_policy": 3}], None, "retry_policy must be an object"),
    ],
)
def test_rejected_with_a_message_naming_the_fault(steps: object, dependencies: object, message: str) -> None:
    with pytest.raises(DagError) as info:
        parse(steps, dependencies)
    assert message in str(info.value)
    assert isinstance(info.value, InvalidRequest)


def test_cycles_are_named_in_run_order() -> None:
    steps = [
        {"step_id": "start", "task_type": "echo"},
        {"step_id": "A", "task_type": "echo", "depends_on": ["start", "C"]},
        {"step_id": "B", "task_type": "echo", "depends_on": ["A"]},
        {"step_id": "C", "task_type": "echo", "payload": "{{steps.B.output}}"},
    ]
    with pytest.raises(DagError, match=r"cycle: (A -> B -> C -> A|B -> C -> A -> B|C -> A -> B -> C)"):
        parse(steps)


def test_resolve_keeps_types_for_whole_references_and_text_inside_strings() -> None:
    outputs = {"A": {"digest": "ff", "size": 3, "list": [{"k": True}], "none": None}, "B": [1, 2]}
    payload = {
        "typed": "{{steps.A.output.size}}",
        "nested": ["{{steps.A.output.list.0.k}}", {"all": "{{steps.B.output}}"}],
        "text": "size={{steps.A.output.size}} digest={{steps.A.output.digest}} b={{steps.B.output}}",
        "null": "{{steps.A.output.none}}",
        "plain": 7,
    }
    assert resolve(payload, outputs) == {
        "typed": 3,
        "nested": [True, {"all": [1, 2]}],
        "text": "size=3 digest=ff b=[1,2]",
        "null": None,
        "plain": 7,
    }


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{steps.A.output.missing}}", "steps.A.output has no 'missing'"),
        ("{{steps.A.output.list.5}}", "steps.A.output.list has no '5'"),
        ("{{steps.Z.output}}", "step 'Z' has no output yet"),
    ],
)
def test_resolve_errors_say_which_reference(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        resolve({"x": template}, {"A": {"list": [1]}})


def test_render_json_dot_mermaid() -> None:
    graph = parse(DIAMOND)
    statuses = {"A": "completed", "B": "running"}
    as_json = render(graph, "json", title="wf", statuses=statuses)
    assert as_json["edges"] == [
        {"from": "A", "to": "B"},
        {"from": "A", "to": "C"},
        {"from": "B", "to": "D"},
        {"from": "C", "to": "D"},
    ]
    assert as_json["levels"] == [["A"], ["B", "C"], ["D"]]
    assert as_json["steps"][0] == {"step_id": "A", "task_type": "hash", "depends_on": [], "status": "completed"}
    dot = render(graph, "dot", title="wf", statuses=statuses)
    assert dot.startswith('digraph "wf" {') and dot.endswith("}")
    assert '"A" -> "B";' in dot and '"C" -> "D";' in dot and 'label="A\\nhash\\ncompleted"' in dot
    mermaid = render(graph, "mermaid", title="wf", statuses=statuses)
    assert mermaid.splitlines()[0] == "flowchart TD"
    assert 's0["A: hash (completed)"]' in mermaid and "s0 --> s1" in mermaid and "s2 --> s3" in mermaid
    with pytest.raises(InvalidRequest, match="fmt must be one of"):
        render(graph, "svg", title="wf")


def test_stored_form_round_trips() -> None:
    graph = parse(DIAMOND)
    rebuilt = dag.dag_from_stored((s.step_id, s.to_spec(), list(s.depends_on)) for s in graph.steps.values())
    assert rebuilt == graph


def test_the_largest_workflows_are_checked_without_recursion() -> None:
    """MAX_STEPS steps in a chain listed backwards, or in one cycle: a clear answer either way, in any order."""
    chain = [
        {"step_id": f"s{index}", "task_type": "echo", "depends_on": [f"s{index + 1}"] if index < 999 else []}
        for index in range(1000)
    ]
    parsed = parse(chain)
    assert dag.topological_order(parsed.steps)[:2] == ["s999", "s998"] and len(parsed.levels()) == 1000
    ring = [
        {"step_id": f"s{index}", "task_type": "echo", "depends_on": [f"s{(index + 1) % 1000}"]} for index in range(1000)
    ]
    with pytest.raises(DagError, match=r"workflow has a cycle: s\d+ -> s\d+") as refused:
        parse(ring)
    assert len(str(refused.value)) < 10_000 and str(refused.value).count("->") == 1000
    with pytest.raises(DagError, match="at most 1000 steps"):
        parse([*chain, {"step_id": "one-more", "task_type": "echo"}])
