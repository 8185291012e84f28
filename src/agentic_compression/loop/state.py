"""CompressionState: the LangGraph state of the seed: what the loop's nodes read and hand on, nothing else. Only
serialisable data lives here; the models, the evaluators and the frontier live on the Experiment that owns the graph
(the run's settings on its RunConfig), and a resume rebuilds them from the episodes' results.json."""
from __future__ import annotations

from typing import Annotated, Any, TypedDict

from langgraph.graph.message import add_messages


class CompressionState(TypedDict, total=False):
    current_episode: int  # episodes finished so far
    history: list[dict[str, Any]]  # bounded to history_limit
    messages: Annotated[list, add_messages]  # the coordinator's reasoning (LLM context)
    current_strategy: dict[str, Any] | None
    current_result: dict[str, Any] | None
    current_error: str | None
    failed_step: int | None
    pruned: dict[str, Any] | None  # the first tokens' numbers of a candidate pruned there (measure.hopeless)
    compressed_model_path: str | None
    next_action: str
    should_terminate: bool
    termination_reason: str | None
    skill_recommendations: list[dict[str, Any]]
    consecutive_no_improvement: int
    refused: list[dict[str, Any]]
    co2_grams_total: float
    compress_info: dict[str, Any] | None  # the worker's timing, energy and step log, for update_state
    batch: list[dict[str, Any]]  # --parallel: the episodes decided together, {"index", "strategy"}
    outcomes: list[dict[str, Any]]  # their outcomes (episodes.run_episode), in the batch's order
