"""CompressionState: the LangGraph state of the seed. Only serialisable data lives here; the models, the evaluator
and the frontier object live on the Experiment that owns the graph."""
from __future__ import annotations

from typing import Annotated, Any, TypedDict

from langgraph.graph.message import add_messages


class CompressionState(TypedDict, total=False):
    model_name: str
    dataset: str
    model_spec: dict[str, Any]
    max_episodes: int
    budget_hours: float
    current_episode: int  # episodes finished so far
    history: list[dict[str, Any]]  # bounded to history_limit
    pareto_frontier: list[dict[str, Any]]
    messages: Annotated[list, add_messages]  # the coordinator's reasoning (LLM context)
    current_strategy: dict[str, Any] | None
    current_result: dict[str, Any] | None
    current_error: str | None
    failed_step: int | None
    compressed_model_path: str | None
    compression_ratio: float | None
    next_action: str
    action_params: dict[str, Any]
    should_terminate: bool
    termination_reason: str | None
    skill_recommendations: list[dict[str, Any]]
    pipeline_step_index: int
    consecutive_no_improvement: int
    refused: list[dict[str, Any]]
    co2_grams_total: float
    compress_info: dict[str, Any] | None  # the worker's timing, energy and step log, for update_state
    batch: list[dict[str, Any]]  # --parallel: the episodes decided together, {"index", "strategy"}
    outcomes: list[dict[str, Any]]  # their outcomes (episodes.run_episode), in the batch's order
