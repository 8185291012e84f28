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

import logging
import shutil
import sqlite3
import time
from datetime import datetime
from pathlib import Path

from langgraph.graph import END, START, StateGraph

from . import (console, episodes, goals, methods, models, objectives, policies, presets, prior, resources,
               sanity, stats_cache, targets)
from .card import write_card
from .config import RunConfig
from .errors import UserError
from .episodes import Calibration, EpisodeJob
from .evaluation import EvaluationError, Evaluator
from .pareto import ParetoFrontier
from .pipelines import Probe
from .policies import PolicyView, propose
from .report import write_visualization
from .reward import reward
from .schemas import Episode, EpisodeStatus, EvaluationResult, ModelSpec, ParetoSolution, Strategy
from .skills import SkillContext, SkillMemory
from .spec import infer_spec, read_config
from .state import CompressionState
from .store import STATE_DB, ExperimentStore, finished
from .validation import validate

log = logging.getLogger("acf.experiment")


def _allocation(e: Episode) -> dict | None:
    """A mixed-precision episode's per-layer sensitivities and the formats allocated (methods/mixed.py): measured in
    a PyTorch step, or in the llamacpp export (gguf.avg_bits)."""
    for s in e.step_log:
        if "mixed" in s.get("measured", {}):
            return s["measured"]["mixed"]
    return e.result.runtime.get("mixed") if e.result else None


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
        from .architecture import of_config

        return {n: m for n, m in methods.available_methods(of_config(self.model_config)).items()
                if any(t.offers(m) for t in self.targets.values())}

    def target_for(self, strategy: Strategy):
        """The target a strategy's result runs in: the first of the experiment's targets that runs every step's
        format (llama.cpp for a GGUF type, ONNX Runtime GenAI for its own quantization; a PyTorch-only strategy
        goes to the first target listed)."""
        for t in self.targets.values():
            if self._runs(t, strategy) and t.refuses(strategy.steps) is None:
                return t
        return next((t for t in self.targets.values() if self._runs(t, strategy)), self.target)  # validation says why

    @staticmethod
    def _runs(target, strategy: Strategy) -> bool:
        return all(m in methods.REGISTRY and target.offers(methods.get(m)) for m in (s.method for s in strategy.steps))

    def refused_by_target(self, strategy: Strategy) -> str | None:
        """Why the target whose formats a strategy needs cannot run it as written (a converter's limits): refused
        before an episode is spent on it, as the resource check refuses."""
        t = self.target_for(strategy)
        found = t.refuses(strategy.steps) if self._runs(t, strategy) else None
        return f"the {t.name} target: {found[1]}" if found else None

    # ---- the loop ----
    def _graph(self):
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
                self._evaluate_baseline()
            except BaseException:
                if discard_on_failure:
                    self.store.discard()
                raise
            self._measure_presets()
            return self._loop(self._fresh_state([]))
        finally:
            self._close()

    def _close(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)  # acf's scratch space (evaluation requests, task YAML)
        if self.cfg.parallel > 1:
            episodes.disconnect(self.dir)
        self.store.release()

    def release(self) -> None:
        """Let go of the folder's lock (a run or resume does when it returns or raises)."""
        self.store.release()

    def _fresh_state(self, episodes: list[Episode]) -> CompressionState:
        """The loop's state at its start, or rebuilt from finished episodes' results.json."""
        entered = [self.entered.get(e.episode_id, False) for e in episodes]
        history = [self._history_entry(e, x) for e, x in zip(episodes, entered)][-self.cfg.history_limit:]
        stale = len(entered) - (max((i for i, x in enumerate(entered) if x), default=-1) + 1)
        measured = {id(b): b for b in [self.baseline, self.reference, *self.baselines.values()] if b}.values()
        co2 = sum(b.eval_co2_grams for b in measured) + sum((e.result.eval_co2_grams if e.result else 0.0) +
                                                            e.compress_energy.get("co2_grams", 0.0) for e in episodes)
        return {"current_episode": len(episodes), "history": history, "messages": [], "next_action": "",
                "should_terminate": False, "termination_reason": None,
                "skill_recommendations": self._recommendations(), "consecutive_no_improvement": stale, "refused": [],
                "co2_grams_total": co2}

    def _loop(self, state: CompressionState | None) -> dict:
        """Run the graph from ``state`` (None: continue from the checkpoint) and write the final artifacts."""
        graph, config = self._graph()
        # durability "sync": each node's state is on disk before the next node starts, so a killed run resumes in
        # the node it was killed in (LangGraph's default writes checkpoints in the background, which can lag)
        return self._finish(graph.invoke(state, config, durability="sync"))

    def _finish(self, final: dict) -> dict:
        shutil.rmtree(self.work_dir, ignore_errors=True)
        self._write_summary(final, complete=False)  # the page is drawn from it
        write_visualization(self.dir)
        self.progress("done", len(self.episodes), termination_reason=final.get("termination_reason"))
        return self._write_summary(final, complete=True)  # last: "complete" means every artifact is in place

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
            return exp._resume()
        finally:
            exp._close()

    def _resume(self) -> dict:
        self.store.clear_failure()
        done = self.store.finished_episodes()
        if self.store.has_baseline():
            self._reload_baseline()
        else:  # it stopped before the baseline was measured (episodes, if any, are kept and reloaded)
            self.store.write_spec(self.spec)
            self._evaluate_baseline()
        self._measure_presets()
        values = self._checkpointed_values()
        resumable = values is not None and values.get("current_episode", -1) == done
        # a batch in flight (--parallel): its episodes' folders keep what finished tasks left (outcome.json)
        self._reload(done, keep={i["index"] for i in values.get("batch") or []} if resumable else set())
        if resumable:
            # values include nodes that finished after the last checkpoint: LangGraph applies their saved writes
            # without running them again (a loop that had already ended just returns its final state)
            return self._loop(None)
        self.store.set_aside(STATE_DB)
        return self._loop(self._fresh_state(self.episodes))

    def _checkpointed_values(self) -> dict | None:
        """The loop's checkpointed state, or None when state.sqlite is missing, empty or unreadable."""
        if not self.store.state_db.is_file():
            return None
        try:
            graph, config = self._graph()
            return graph.get_state(config).values or None
        except Exception as e:  # a corrupt or foreign file: the caller rebuilds from the episodes' results
            log.warning("%s is unreadable (%s: %s); rebuilding the loop's state from the episodes' results.json",
                        self.store.state_db, type(e).__name__, e)
            return None

    def _reload(self, finished: int, keep: set[int] = frozenset()) -> None:
        """Rebuild the in-memory episodes and frontier from the results.json of ``finished`` episodes, and clear
        what a killed attempt at a later one left (except in a resuming batch's episodes, ``keep``)."""
        for i in range(finished):
            ep, entered = self.store.read_episode(i)
            self.episodes.append(ep)
            self.entered[ep.episode_id] = entered
            if ep.result is not None:
                self.frontier.add(_solution(ep))
            self._record_hv(ep.episode_id)
        self.store.clear_unfinished(finished, keep)
        self.t0 -= self.store.prior_elapsed()  # the wall-clock budget counts the time before the crash

    def _reload_baseline(self) -> None:
        self.baseline, others, self.reference = self.store.read_baseline()
        self._make_evaluators()
        self.baselines = {self.target.name: self.baseline, **others}
        for name, result in self.baselines.items():
            self.evaluators[name].set_baseline(result, self.baseline_checkpoint(name))
        self._add_baseline()

    def baseline_checkpoint(self, target: str) -> Path:
        """The uncompressed model in a target's own format (the model folder itself where a target serves it as it
        is: transformers, vLLM)."""
        return self.store.baseline_dir / target if targets.get(target).exports else self.model_path

    def _make_evaluators(self) -> None:
        tok = models.load_tokenizer(self.model_path)  # the model itself is loaded in the evaluation process
        self.work_dir.mkdir(exist_ok=True)
        self.evaluators = {n: Evaluator(self.cfg.eval.model_copy(update={"target": n}), self.cfg.data_dir, tok,
                                        self.work_dir) for n in self.targets}
        self.evaluator = self.evaluators[self.target.name]

    def _evaluate_reference(self) -> None:
        """The transformers fp32 model the practitioner starts from, measured in full: each other target's own
        baseline (its f32 export) is timed beside it, so "N x faster than what you started from" is a ratio
        measured side by side, and every target's latencies share its scale."""
        ev = self.evaluators.get("transformers") or Evaluator(
            self.cfg.eval.model_copy(update={"target": "transformers"}), self.cfg.data_dir,
            models.load_tokenizer(self.model_path), self.work_dir)
        self.reference = ev.evaluate(self.model_path)
        self.store.write_reference(self.model_path, self.reference)

    def _export_baseline(self, t) -> Path:
        ckpt = self.baseline_checkpoint(t.name)
        if not (ckpt / "acf_format.json").is_file():
            shutil.rmtree(ckpt, ignore_errors=True)  # a killed export's leftovers (acf's own folder)
            try:
                t.export(self.model_path, ckpt)
            except RuntimeError as e:
                raise UserError(f"{self.cfg.model} could not be exported to {t.name}: {e}",
                                "leave that target out, or report the converter's message") from None
        return ckpt

    def _evaluate_baseline(self) -> None:
        console.route(self.store.baseline_dir / console.LOG)  # other libraries' output, off the terminal
        self._make_evaluators()
        try:
            if set(self.targets) != {"transformers"}:
                self._evaluate_reference()
            for name, t in self.targets.items():
                ev = self.evaluators[name]
                if name == "transformers":
                    if self.reference is None:
                        self.reference = ev.evaluate(self.model_path)
                    self.baselines[name] = self.reference
                    continue
                ckpt = self._export_baseline(t) if t.exports else self.model_path
                ev.pair_first_with(self.model_path, "transformers", self.reference)
                self.baselines[name] = ev.evaluate(ckpt)
            self.baseline = self.baselines[self.target.name]
        except EvaluationError as e:  # the model itself does not load or run: the user's input, one line
            last = (str(e).strip().splitlines() or [""])[-1][:300]
            raise UserError(f"the baseline {self.model_path} could not be measured: {last}",
                            "check that the model loads with transformers, or choose another --model") from None
        if set(self.targets) == {"transformers"}:
            self.reference = None  # the baseline itself
        broken = sanity.problems(self.baseline)
        if broken and not self.cfg.force:
            raise UserError(f"the baseline {self.model_path} looks broken: {'; '.join(broken)}",
                            "check the model's conversion and tokenizer, or pass --force to compress it anyway")
        self.store.write_baseline(self.baseline_checkpoint(self.target.name), self.baseline, broken,
                                  {n: (self.baseline_checkpoint(n), r) for n, r in self.baselines.items()
                                   if n != self.target.name})
        self._add_baseline()

    def _measure_presets(self) -> None:
        """The targets' community presets, measured once beside the frontier, never in it (presets.py)."""
        self.presets = presets.measure_all(self) if self.cfg.presets else []

    def _add_baseline(self) -> None:
        """The first target's baseline normalises the frontier; every other target's joins it as a candidate."""
        self.frontier.baseline = self.baseline.objectives()
        for name, result in self.baselines.items():
            first = name == self.target.name
            self.frontier.add(ParetoSolution(
                episode_id="baseline" if first else f"baseline-{name}", objectives=result.objectives(),
                intervals=result.intervals, checkpoint=str(self.baseline_checkpoint(name)),
                strategy=Strategy(action="pipeline", reasoning=f"uncompressed baseline in {name}")))
        self._record_hv("baseline")

    def _recommendations(self) -> list[dict]:
        return self.skills.recommend(self.skill_ctx, top=None) if self.skills else []  # all: the wrecked ones too

    def _record_hv(self, episode_id: str) -> None:
        self.hv_history.append({"after": episode_id, "hypervolume": self.frontier.hypervolume(),
                                "frontier_size": len(self.frontier.solutions)})

    # ---- nodes ----
    def coordinator(self, state: CompressionState) -> dict:
        """Decide the next strategy (``--parallel K``: up to K at once), each one new, never refused by the
        resource check; or end the loop."""
        reason = self._stop_reason(state)
        if reason:
            return {"should_terminate": True, "termination_reason": reason, "next_action": "end"}
        refused = list(state.get("refused", []))
        tried = {Strategy(**h["strategy"]).key() for h in state["history"]} | {r["key"] for r in refused}
        tried |= {e.strategy.key() for e in self.episodes}
        k = min(self.cfg.parallel, self.cfg.max_episodes - state["current_episode"])
        batch: list[Strategy] = []
        newly_refused, end = 0, None
        while len(batch) < k and end is None:  # ends: every proposal is new (tried grows), or the policy says end
            view = PolicyView(
                spec=self.spec, model_config=self.model_config, methods=self.available_methods(),
                baseline=self.baseline, frontier=self.frontier.summary(), history=state["history"],
                tried=set(tried), episodes_left=self.cfg.max_episodes - state["current_episode"] - len(batch),
                seconds_left=self.cfg.budget_hours * 3600 - (time.monotonic() - self.t0),
                co2_grams_so_far=state.get("co2_grams_total", 0.0),
                skill_recommendations=state.get("skill_recommendations", []), overrides=self.cfg.method_overrides,
                reward=self.cfg.reward, goals=self.cfg.goals, pending=list(batch))
            for strategy in propose(self.policy, view, k - len(batch)):
                if strategy.action == "end":
                    end = f"policy ended the search: {strategy.reasoning}"
                    if newly_refused:
                        end = (f"no strategy fits: {newly_refused} refused by the resource check or the target "
                               f"(last: {refused[-1]['reason']}); {end}")
                    break
                if strategy.key() in tried:
                    end = f"policy {self.policy.name} repeated a strategy it had tried"
                    break
                tried.add(strategy.key())
                why_not = resources.check(strategy, self.spec) or self.refused_by_target(strategy)
                if why_not is None:
                    batch.append(strategy)
                else:
                    refused.append({"key": strategy.key(), "strategy": strategy.model_dump(), "reason": why_not})
                    newly_refused += 1
        if not batch:
            return {"should_terminate": True, "next_action": "end", "refused": refused, "termination_reason": end}
        first = state["current_episode"]
        self.progress("work", first, action=batch[0].action, steps=[st.method for st in batch[0].steps],
                      policy=batch[0].policy, **({"batch": len(batch)} if self.cfg.parallel > 1 else {}))
        messages = [{"role": "assistant", "content": f"[{st.policy}] {st.action}: {[s.method for s in st.steps]} - "
                     f"{st.reasoning}"} for st in batch]
        if self.cfg.parallel > 1:
            return {"batch": [{"index": first + i, "strategy": st.model_dump()} for i, st in enumerate(batch)],
                    "next_action": "episodes", "refused": refused, "messages": messages}
        strategy = batch[0]
        return {"current_strategy": strategy.model_dump(), "next_action": strategy.action, "refused": refused,
                "messages": messages}

    def progress(self, node: str, episode: int, **extra) -> None:
        self.store.progress(node, episode, self.cfg.max_episodes, **extra)

    def _stop_reason(self, state: CompressionState) -> str | None:
        if self.store.cancelled():
            return "cancelled by request"
        if state["current_episode"] >= self.cfg.max_episodes:
            return f"max_episodes reached ({self.cfg.max_episodes})"
        elapsed = time.monotonic() - self.t0
        if elapsed >= self.cfg.budget_hours * 3600:
            return f"time budget exceeded ({elapsed / 3600:.3f} h >= {self.cfg.budget_hours} h)"
        if state["consecutive_no_improvement"] >= self.cfg.patience:
            return f"converged: {self.cfg.patience} consecutive episodes without frontier improvement"
        g = self.cfg.goals
        if g.stop_when_met and g.active():
            done = next((e for e in self.episodes if e.result and goals.met(e.result, self.baseline, g)), None)
            if done is not None:
                return (f"goal met: {done.episode_id} is feasible" + (f" at {done.result.relative['model_size_gb']:.3f}"
                        f"x the baseline's size (target {g.target_size_ratio:g}x)" if g.target_size_ratio else ""))
        return None

    def episode_dir(self, index: int) -> Path:
        return self.store.episode_dir(index)

    def _job(self, index: int, strategy: Strategy) -> EpisodeJob:
        ep_dir = self.episode_dir(index)
        if (ep_dir / "results.json").exists():  # the state and the folder disagree: never overwrite a result
            raise UserError(f"{ep_dir} already holds a finished episode", f"'acf resume {self.dir}' continues it")
        job = self.job(index, strategy, ep_dir, self.target_for(strategy).name)
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
            prior = episodes.finished_outcome(self.episode_dir(item["index"]), strategy)
            if prior is not None:
                outcomes[item["index"]] = prior
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

    def update_batch(self, state: CompressionState) -> dict:
        """Record the batch's episodes one by one in episode order, exactly as update_state records one."""
        merged: dict = dict(state)
        update: dict = {}
        for item, outcome in zip(state["batch"], state["outcomes"]):
            merged.update({"current_episode": item["index"], "current_strategy": item["strategy"], **outcome})
            update.update(self.update_state(merged))
            merged.update(update)
        return {**update, "batch": [], "outcomes": []}

    def update_state(self, state: CompressionState) -> dict:
        idx, info = state["current_episode"], state["compress_info"]
        strategy = Strategy(**state["current_strategy"])
        ok = state.get("current_result") is not None and not state.get("current_error")
        ep = Episode(
            episode_id=f"episode_{idx:03d}", index=idx, strategy=strategy,
            status=EpisodeStatus.success if ok else EpisodeStatus.pruned if state.get("pruned") else
            EpisodeStatus.failed,
            result=EvaluationResult(**state["current_result"]) if ok else None,
            error=None if ok else state.get("current_error"), failed_step=state.get("failed_step"),
            pruned=None if ok else state.get("pruned"),
            checkpoint=state.get("compressed_model_path") if ok else None,
            compress_seconds=info["seconds"], compress_energy=info["energy"], step_log=info["steps"],
            started_at=info["started_at"], finished_at=info.get("finished_at") or episodes.now(),
            worker=info.get("worker"))
        if ok and self.cfg.goals.active():
            ep.infeasible_because = goals.judge(ep.result, self.baseline, self.cfg.goals)
            ep.goal_violations = goals.violations(ep.result, self.baseline, self.cfg.goals)
            ep.feasible = not ep.infeasible_because
        self.episodes.append(ep)
        improved = False
        if ok:
            improved = self.frontier.add(_solution(ep))
        evaluated = {"baseline": self.baseline.objectives()} | {
            e.episode_id: e.result.objectives() for e in self.episodes if e.result}
        self.frontier.record_dominance(evaluated, {e.episode_id: e.result.intervals for e in self.episodes
                                                   if e.result})
        self._record_hv(ep.episode_id)
        if ok:  # before results.json: a finished episode's checkpoint always carries its card
            write_card(Path(ep.checkpoint), ep=ep, baseline=self.baseline, base_model=self.spec.model_name,
                       calibration=self.cfg.calibration.source, dataset=self.cfg.dataset)
        self.store.write_episode(ep, improved)
        history = (state["history"] + [self._history_entry(ep, improved)])[-self.cfg.history_limit:]
        co2 = state.get("co2_grams_total", 0.0) + (ep.result.eval_co2_grams if ok else 0.0) + \
            ep.compress_energy.get("co2_grams", 0.0)
        update = {"history": history, "current_episode": idx + 1,
                  "consecutive_no_improvement": 0 if improved else state["consecutive_no_improvement"] + 1,
                  "co2_grams_total": co2, "current_strategy": None, "pruned": None}
        if self.skills:
            base, measured = self.baseline.objectives(), ep.result.objectives() if ok else None
            self.skills.record(self.skill_ctx, strategy.model_dump(), ok, measured, base,
                               reward(measured, base, self.cfg.reward), ep.error)
            update["skill_recommendations"] = self._recommendations()
        self._write_summary({**state, **update}, complete=False)
        return update

    @staticmethod
    def _history_entry(ep: Episode, improved: bool) -> dict:
        ok = ep.result is not None
        return {"episode_id": ep.episode_id, "strategy": ep.strategy.model_dump(), "status": ep.status.value,
                "objectives": ep.result.objectives() if ok else None, "error": ep.error,
                "relative": ep.result.relative if ok else None, "entered_frontier": improved,
                **({"feasible": ep.feasible, "infeasible_because": ep.infeasible_because,
                    "goal_violations": ep.goal_violations} if ep.feasible is not None else {})}

    def _goal_summary(self) -> dict | None:
        """Feasible candidates, the best feasible per objective and the recommended one (goals.py); None without
        goals."""
        if not self.cfg.goals.active() or self.baseline is None:
            return None
        measured = {"baseline": self.baseline} | {e.episode_id: e.result for e in self.episodes if e.result}
        return goals.pick(measured, self.baseline, self.cfg.goals)

    # ---- artifacts ----
    def _reference_summary(self) -> dict | None:
        """The transformers fp32 model beside each target's baseline: its own numbers, and each baseline's decode
        time as a ratio to it, timed side by side (a candidate's is that times its ratio to its target's baseline)."""
        if self.reference is None or not self.baselines:
            return None
        out = {"result": self.reference.model_dump(), "targets": {}}
        for name, b in self.baselines.items():
            pair = b.latency.get("paired") or {}
            out["targets"][name] = {
                "latency_ratio": pair.get("ratio", 1.0), "latency_ci": pair.get("ci"),
                "size_ratio": b.size_bytes / self.reference.size_bytes,
                "memory_ratio": b.memory_gb / self.reference.memory_gb if self.reference.memory_gb > 0 else None}
        return out

    def _recommended(self, goals_said: dict | None) -> str | None:
        """The candidate a run recommends deploying: with goals, their pick (``goals_said``, _goal_summary's:
        feasible, the smallest, then the fastest); else the compressed frontier member with the highest reward (what
        `acf export --best` writes)."""
        if self.cfg.goals.active():
            return (goals_said or {}).get("recommended")
        best = self.frontier.balanced(compressed=True)
        return best.episode_id if best else None

    def _versus_preset(self, pick: str | None) -> str | None:
        """How the recommended candidate compares with the closest preset of its target."""
        ep = next((e for e in self.episodes if e.episode_id == pick and e.result), None)
        near = ep and presets.closest(ep.result, ep.result.runtime.get("target", ""), self.presets)
        return presets.comparison(ep.episode_id, ep.result, near) if near else None

    def _write_summary(self, state: dict, complete: bool) -> dict:
        frontier = {
            "objectives": {o.name: o.goal for o in objectives.SPECS},
            "hypervolume": self.frontier.hypervolume(), "reference_point": "accuracy 0; each cost at "
            f"{self.frontier.ref_factor}x the baseline (objectives normalised by the baseline)",
            "noise_tolerance": self.frontier.tolerance,
            "solutions": [s.model_dump() for s in self.frontier.solutions]}
        goals_said = self._goal_summary()
        balanced, recommended = self.frontier.balanced(), self._recommended(goals_said)
        summary = {
            "complete": complete, "experiment": self.dir.name, "model": self.cfg.model,
            "model_path": str(self.model_path), "dataset": self.cfg.dataset,
            "termination_reason": state.get("termination_reason"),
            "episodes_run": len(self.episodes),
            "episodes_failed": sum(e.status == EpisodeStatus.failed for e in self.episodes),
            "episodes_pruned": sum(e.status == EpisodeStatus.pruned for e in self.episodes),
            "elapsed_seconds": time.monotonic() - self.t0,
            "co2_grams_total": state.get("co2_grams_total"),
            "baseline": self.baseline.model_dump() if self.baseline else None,
            "targets": list(self.targets), "reference": self._reference_summary(),
            "baselines": {n: {"checkpoint": str(self.baseline_checkpoint(n)), "objectives": r.objectives(),
                              "runtime": r.runtime} for n, r in self.baselines.items()},
            "pareto_frontier": [s.episode_id for s in self.frontier.solutions],
            "balanced": balanced.episode_id if balanced else None, "recommended": recommended,
            "hypervolume_history": self.hv_history,
            "presets": presets.summary(self.presets),
            "versus_preset": self._versus_preset(recommended),
            "refused": state.get("refused", []),
            "goals": goals_said,
            "coordinator_messages": [getattr(m, "content", m) for m in state.get("messages", [])],
            "episodes": [{"episode_id": e.episode_id, "status": e.status.value,
                          "steps": [s.model_dump() for s in e.strategy.steps], "reasoning": e.strategy.reasoning,
                          "objectives": e.result.objectives() if e.result else None,
                          "accuracy_stderr": e.result.accuracy_stderr if e.result else None,
                          "accuracy_n": e.result.accuracy_n if e.result else None,
                          "perplexity": e.result.perplexity if e.result else None,
                          "kld": e.result.kld_detail or None if e.result else None,
                          "relative": e.result.relative if e.result else None,
                          "intervals": e.result.intervals if e.result else None, "error": e.error,
                          "feasible": e.feasible, "infeasible_because": e.infeasible_because,
                          "checkpoint": e.checkpoint, "compress_seconds": e.compress_seconds,
                          "runtime": e.result.runtime if e.result else None, "mixed": _allocation(e)}
                         for e in self.episodes],
        }
        self.store.write_summary(frontier, summary)
        return summary


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


def _solution(ep: Episode) -> ParetoSolution:
    return ParetoSolution(episode_id=ep.episode_id, strategy=ep.strategy, objectives=ep.result.objectives(),
                          intervals=ep.result.intervals, checkpoint=ep.checkpoint)
