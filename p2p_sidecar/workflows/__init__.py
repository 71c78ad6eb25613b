"""Durable workflows: DAGs of task-queue steps (``dag`` validates and renders, ``engine`` runs them)."""

from p2p_sidecar.workflows.engine import WorkflowEngine
from p2p_sidecar.workflows.tools import register_workflow_tools

__all__ = ["WorkflowEngine", "register_workflow_tools"]
