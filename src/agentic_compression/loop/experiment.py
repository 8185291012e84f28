"""One experiment: validate the input, evaluate the baseline, run the seed's LangGraph loop, write the artifacts.

Graph: coordinator -> work -> evaluation -> update_state -> coordinator, ending when the coordinator applies a stop
rule (max episodes, wall-clock budget, patience) or the policy says end. One worker node serves every action (the
seed's quantization, pruning, pipeline and search workers did the same thing under four names); the action is in the
strategy it records.
With ``--parallel K`` (K > 1): coordinator -> episodes -> update_batch -> coordinator, where the coordinator
proposes up to K strategies, ``episodes`` runs them at once on Ray and ``update_batch`` records them in episode
order (episodes.py).
"""
from __future__ import annotations

import shutil
import sqlite3
import time
from datetime import datetime
from pathlib import Path

from langgraph.graph import END, START, StateGraph

from .. import methods, models, objectives, policies, targets
from ..config import RunConfig
from ..errors import UserError
from ..models import stats_cache
from ..policies import prior
from ..policies.pipelines import Probe
from ..report import write_visualization
from ..schemas import Episode, EvaluationResult, ModelSpec, Strategy
from . import baselines, coordinating, episodes, presets, recording, resuming, summary
from .episodes import Calibration, EpisodeJob
from .pareto import ParetoFrontier
from .skills import SkillContext, SkillMemory
from .spec import infer_spec, read_config
from .state import CompressionState
from .store import ExperimentStore, finished
from .validation import validate


class Experiment:
    """The loop's nodes and what they share: the model, its targets and evaluators, the frontier, the episodes. Its
    folder is an ExperimentStore (store.py); LangGraph's CompressionState carries only what passes between nodes."""

    def __init__(self, cfg: RunConfig, resume_dir: Path | None = None):
        cfg, self.targets_why = targets.resolve(cfg)  # auto -> the runtimes here; config.json records them
        validate(cfg, resume_dir)
        self.cfg = cfg
        self.model_path, canonical = models.resolve(cfg.model)
        self.spec: ModelSpec = infer_spec(canonical, self.model_path, online=cfg.online)
        self.model_config = read_config(self.model_path)
        # the runtimes candidates are measured in; the first one's baseline normalises the frontier
        self.targets = {n: targets.ready(n) for n in cfg.eval.target.split(",")}
        self.target = next(iter(self.targets.values()))
        self.reference: EvaluationResult | None = None  # transformers fp32, when candidates run in another target
        self.baselines: dict[str, EvaluationResult] = {}  # per target: its uncompressed export, measured there
        if resume_dir is not None:
            name = resume_dir.name
            self.store = ExperimentStore.open(resume_dir.absolute())
        else:
            stamp = f"{datetime.now():%Y%m%d-%H%M%S}"
            name = cfg.experiment or f"{Path(canonical).name.lower()}-{cfg.dataset.replace(',', '+')}-{stamp}"
            self.store = ExperimentStore.create((cfg.output_dir / name).absolute())  # absolute: for a Ray task
            self.store.write_config(cfg)
        self.dir = self.store.dir
        self.policy = policies.make(cfg.policy, cfg)
        self.frontier = ParetoFrontier(tolerance=objectives.tolerances(cfg.noise_tolerance), reward=cfg.reward)
        self.episodes: list[Episode] = []
        self.presets: list[presets.Preset] = []
        self.entered: dict[str, bool] = {}  # episode_id -> it entered the frontier when it finished (resume)
        self.hv_history: list[dict] = []
        self.baseline: EvaluationResult | None = None
        self.t0 = time.monotonic()
        self.work_dir = self.store.work_dir
        self.calibration = Calibration(cfg.data_dir.absolute(), cfg.calibration.seed, cfg.calibration.source)
        self.probe = Probe(cfg.data_dir.absolute(), Path(self.model_path).absolute(), cfg.calibration.source)
        self.skills = SkillMemory(cfg.skills_path, prior.load()) if cfg.use_skills else None
        self.skill_ctx = SkillContext(model=canonical, family=self.spec.model_family, num_params=self.spec.num_params,
                                      task=cfg.dataset, experiment=name, targets=tuple(self.targets))

    def available_methods(self) -> dict[str, type[methods.Method]]:
        """The methods that run here and apply to this model's architecture (architecture.py)."""
        from ..models.architecture import of_config

        return {n: m for n, m in methods.available_methods(of_config(self.model_config)).items()
                if any(t.offers(m) for t in self.targets.values())}

    # ---- the loop ----
    def graph(self):
        """The compiled graph with a SQLite checkpointer in the experiment folder, and its run config."""
        from langgraph.checkpoint.sqlite import SqliteSaver

        conn = sqlite3.connect(self.store.state_db, check_same_thread=False)
        return build_graph(self, SqliteSaver(conn)), {"configurable": {"thread_id": "loop"},
                                                      "recursion_limit": 4 * self.cfg.max_episodes + 20}

    def run(self, discard_on_failure: bool = True) -> dict:
        """Evaluate the baseline, then run the loop. A brand-new run whose baseline fails removes what it wrote
        (``discard_on_failure``; the API keeps the folder to show the error); nothing else is ever removed."""
        try:
            self.store.write_spec(self.spec)
            try:
                baselines.evaluate_baseline(self)
            except BaseException:
                if discard_on_failure:
                    self.store.discard()
                raise
            self.measure_presets()
            return self.loop(self.fresh_state([]))
        finally:
            self.close()

    def close(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)  # acf's scratch space (evaluation requests, task YAML)
        if self.cfg.parallel > 1:
            episodes.disconnect(self.dir)
        self.store.release()

    def release(self) -> None:
        """Let go of the folder's lock (a run or resume does when it returns or raises)."""
        self.store.release()

    def fresh_state(self, episodes: list[Episode]) -> CompressionState:
        """The loop's state at its start, or rebuilt from finished episodes' results.json."""
        entered = [self.entered.get(e.episode_id, False) for e in episodes]
        history = [summary.history_entry(e, x) for e, x in zip(episodes, entered)][-self.cfg.history_limit:]
        stale = len(entered) - (max((i for i, x in enumerate(entered) if x), default=-1) + 1)
        measured = {id(b): b for b in [self.baseline, self.reference, *self.baselines.values()] if b}.values()
        co2 = sum(b.eval_co2_grams for b in measured) + sum((e.result.eval_co2_grams if e.result else 0.0) +
                                                            e.compress_energy.get("co2_grams", 0.0) for e in episodes)
        return {"current_episode": len(episodes), "history": history, "messages": [], "next_action": "",
                "should_terminate": False, "termination_reason": None,
                "skill_recommendations": self.recommendations(), "consecutive_no_improvement": stale, "refused": [],
                "co2_grams_total": co2}

    def loop(self, state: CompressionState | None) -> dict:
        """Run the graph from ``state`` (None: continue from the checkpoint) and write the final artifacts."""
        graph, config = self.graph()
        # durability "sync": each node's state is on disk before the next node starts, so a killed run resumes in
        # the node it was killed in (LangGraph's default writes checkpoints in the background, which can lag)
        return self._finish(graph.invoke(state, config, durability="sync"))

    def _finish(self, final: dict) -> dict:
        shutil.rmtree(self.work_dir, ignore_errors=True)
        summary.write_summary(self, final, complete=False)  # the page is drawn from it
        write_visualization(self.dir)
        self.progress("done", len(self.episodes), termination_reason=final.get("termination_reason"))
        return summary.write_summary(self, final, complete=True)  # last: "complete" means every artifact is in place

    @classmethod
    def resume(cls, exp_dir: Path) -> dict:
        """Continue a run that stopped: the loop restarts after its last checkpointed node. Finished episodes are
        reloaded from their results.json and never re-run or removed; the episode that was running starts again.
        When state.sqlite is missing, unreadable or older than the episodes on disk, the state is rebuilt from the
        results.json files (the unreadable file is kept aside, never deleted)."""
        exp_dir = Path(exp_dir)
        if exp_dir.is_symlink() or not (exp_dir / "config.json").is_file():
            raise UserError(f"{exp_dir} holds no config.json", "pass the folder of an experiment 'acf run' started")
        if finished(exp_dir):
            raise UserError(f"experiment {exp_dir} already finished", "nothing to resume; start a new one")
        cfg = RunConfig.from_file(exp_dir / "config.json")
        exp = cls(cfg, resume_dir=exp_dir)
        try:
            return resuming.resume(exp)
        finally:
            exp.close()

    def baseline_checkpoint(self, target: str) -> Path:
        """The uncompressed model in a target's own format (the model folder itself where a target serves it as it
        is: transformers, vLLM)."""
        return self.store.baseline_dir / target if targets.get(target).exports else self.model_path

    def measure_presets(self) -> None:
        """The targets' community presets, measured once beside the frontier, never in it (presets.py)."""
        self.presets = presets.measure_all(self) if self.cfg.presets else []

    def recommendations(self) -> list[dict]:
        return self.skills.recommend(self.skill_ctx, top=None) if self.skills else []  # all: the wrecked ones too

    def record_hv(self, episode_id: str) -> None:
        self.hv_history.append({"after": episode_id, "hypervolume": self.frontier.hypervolume(),
                                "frontier_size": len(self.frontier.solutions)})

    # ---- nodes ----
    def coordinator(self, state: CompressionState) -> dict:
        return coordinating.decide(self, state)

    def progress(self, node: str, episode: int, **extra) -> None:
        self.store.progress(node, episode, self.cfg.max_episodes, **extra)

    def episode_dir(self, index: int) -> Path:
        return self.store.episode_dir(index)

    def _job(self, index: int, strategy: Strategy) -> EpisodeJob:
        ep_dir = self.episode_dir(index)
        if (ep_dir / "results.json").exists():  # the state and the folder disagree: never overwrite a result
            raise UserError(f"{ep_dir} already holds a finished episode", f"'acf resume {self.dir}' continues it")
        job = self.job(index, strategy, ep_dir, targets.route(self.targets, strategy).name)
        job.prune = self.prune_limits()
        return job

    def prune_limits(self) -> dict[str, float] | None:
        """Where an episode's first tokens already show a wrecked model (evaluation.measure.hopeless): perplexity over
        the rule's WRECKED multiple of the baseline's (the rule drops such a method too), and, with a KL divergence
        goal, a divergence over twice it. None with --no-prune."""
        if not self.cfg.prune:
            return None
        limits = {"perplexity_ratio": prior.WRECKED}
        if self.cfg.goals.max_kld is not None:
            limits["kld"] = 2 * self.cfg.goals.max_kld
        return limits

    def job(self, index: int, strategy: Strategy, ep_dir: Path, target: str) -> EpisodeJob:
        """The work of one strategy into ``ep_dir``, measured in ``target``: an episode's, or a preset's."""
        base = self.model_path if strategy.base == "base" else self._checkpoint_of(strategy.base)
        ctx = methods.Context(calibration=self.calibration, seed=self.cfg.calibration.seed, probe=self.probe,
                              stats=self.dir / stats_cache.FOLDER,
                              extras={"teacher": Path(self.model_path).absolute()})
        return EpisodeJob(index=index, strategy=strategy, ep_dir=ep_dir, base=Path(base).absolute(), target=target,
                          threads=self.cfg.threads, ctx=ctx, evaluator=self.evaluators[target],
                          country=self.cfg.eval.country_iso_code)

    def work(self, state: CompressionState) -> dict:
        return episodes.compress(self._job(state["current_episode"], Strategy(**state["current_strategy"])))

    def _checkpoint_of(self, episode_id: str) -> Path:
        ep = next((e for e in self.episodes if e.episode_id == episode_id and e.checkpoint), None)
        if ep is None:
            raise UserError(f"strategy chains on '{episode_id}', which has no successful checkpoint")
        return Path(ep.checkpoint)

    def evaluation(self, state: CompressionState) -> dict:
        if state.get("current_error"):
            return {}
        self.progress("evaluation", state["current_episode"])
        target = (state.get("compress_info") or {}).get("target", self.target.name)
        return episodes.evaluate(self.evaluators[target], Path(state["compressed_model_path"]), self.prune_limits())

    def run_batch(self, state: CompressionState) -> dict:
        """The batch's episodes at once on Ray; an episode whose task had finished before a driver was killed keeps
        its outcome and is not run again."""
        outcomes, jobs = {}, []
        for item in state["batch"]:
            strategy = Strategy(**item["strategy"])
            kept = episodes.finished_outcome(self.episode_dir(item["index"]), strategy)
            if kept is not None:
                outcomes[item["index"]] = kept
            else:
                jobs.append(self._job(item["index"], strategy))
        first = state["current_episode"]
        self.progress("work", first, batch=len(state["batch"]), running=[j.index for j in jobs])

        def done(index: int, outcome: dict) -> None:
            outcomes[index] = outcome
            self.progress("work", first, batch=len(state["batch"]),
                          running=[j.index for j in jobs if j.index not in outcomes])

        episodes.run_batch(jobs, self.cfg.ray_address, self.cfg.episode_retries, self.cfg.eval.device == "cuda",
                           done, self.dir)
        return {"outcomes": [outcomes[item["index"]] for item in state["batch"]]}

    def update_state(self, state: CompressionState) -> dict:
        return recording.record(self, state)

    def update_batch(self, state: CompressionState) -> dict:
        return recording.record_batch(self, state)



def build_graph(exp: Experiment, checkpointer=None):
    g = StateGraph(CompressionState)
    g.add_node("coordinator", exp.coordinator)
    g.add_edge(START, "coordinator")
    if exp.cfg.parallel > 1:
        g.add_node("episodes", exp.run_batch)
        g.add_node("update_batch", exp.update_batch)
        g.add_conditional_edges("coordinator", lambda s: END if s.get("should_terminate") else "episodes",
                                ["episodes", END])
        g.add_edge("episodes", "update_batch")
        g.add_edge("update_batch", "coordinator")
        return g.compile(checkpointer=checkpointer)
    g.add_node("work", exp.work)
    g.add_node("evaluation", exp.evaluation)
    g.add_node("update_state", exp.update_state)
    g.add_conditional_edges("coordinator", lambda s: END if s.get("should_terminate") else "work", ["work", END])
    g.add_edge("work", "evaluation")
    g.add_edge("evaluation", "update_state")
    g.add_edge("update_state", "coordinator")
    return g.compile(checkpointer=checkpointer)

