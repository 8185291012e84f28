"""The built-in expert: the offline default coordinator. It ranks every untried configuration of the available
methods with rules a practitioner would use and never repeats a strategy.

Rules:
- methods in the order the spec prefers for this size class (small -> AutoRound, medium -> GPTQ/AWQ, ...);
- while no compressed candidate keeps the baseline accuracy (within one standard error), 8-bit quantization ranks
  up; once one does, 4-bit quantization ranks up (push compression further); pruning and low rank are neither;
- a (method, bits) family already tried ranks down for each try, and so does, more, every method of a runtime
  already tried (compressed-tensors, bitsandbytes, low-rank, smaller dense, ...), by more than two places of the
  spec's preference: candidates of one runtime sit in one region of objective space, so the first episodes visit
  every region before refining one;
- at 8 bits every method is near-lossless, so the cheaper ones rank up (method cost);
- group size 64 is the reference (finer costs size, coarser costs accuracy), per-channel is coarsest;
- structured pruning starts with MLP channels at about 10% (then heads, then whole layers);
- on llama.cpp, an importance-matrix candidate ranks up (it removed 41% of Q4_K_M's KL divergence at the same bytes
  on SmolLM2), and a per-tensor allocation over every type (gguf_mixed) more, at a budget near 6 bits per weight
  (the size of the Q4_K_M preset on a model whose widths are no multiple of 256; 4.5 while a size goal is unmet);
- on ONNX Runtime GenAI, int8 groups inside int4 (matmul_mixed_precision) rank just below the plain int4;
- a method that cannot lower any measured cost here (e.g. sparsity stored dense) ranks far down;
- a method that failed ranks far down, and so does one that wrecked the model once (perplexity more than twice the
  baseline's): its other settings are no milder by enough to matter;
- the skill memory's recommendations move a (method, bits) family up or down by its learned reward, and a method
  whose family wrecked most models like this one (wrecked_rate over one half at confidence 0.3: the shipped prior's
  ASVD on a 135M model) ranks far down as if it had wrecked this one;
- the seed's pipeline templates compete too, scored by their compressing steps; a template with a recovery step
  (LoRA, distillation) ranks up once its compressing family was tried and quality was not kept;
- with goals (goals.py): while no feasible candidate meets a size goal (max_size_gb, target_size_ratio), 4-bit
  options rank up as when quality is kept; a (method, bits) family whose candidate broke the accuracy goal ranks
  down like a failed one, and 8-bit options rank up (the accuracy goal binds first).
"""
from __future__ import annotations

import math

from .. import methods
from ..schemas import Step, Strategy
from .base import PolicyView, candidate_steps, learned, m_action, single, wrecked_methods
from .pipelines import TEMPLATES, instantiate
from .prior import WRECKED

# a runtime already tried ranks its methods down by more than two places of the spec's preference: each runtime
# (format) is a region of objective space, and the first episodes should visit each before refining one
RUNTIME_TRIED = 3.0
STORED = ("type", "precision", "scheme", "mode", "avg_bits")  # the parameters that choose what a method stores


def bits(step: Step) -> int:
    """Weight bits a step stores, as its method declares them (W4A16 -> 4, bitsandbytes int8 -> 8, llama.cpp's
    Q4_K_M -> 4, an allocation's 4.5 -> 4; a method that keeps float weights 16)."""
    return methods.get(step.method).bits(step.params) if step.method in methods.REGISTRY else 16


def _family(step: Step) -> tuple[str, int]:
    return step.method, bits(step)


class RulePolicy:
    name = "rule"

    def __init__(self, templates: bool = True):
        self.templates = templates

    def decide(self, view: PolicyView) -> Strategy:
        candidates = [single(m_action(view, st), st) for st in candidate_steps(view)]
        seen = view.tried | {c.key() for c in candidates}
        for name in TEMPLATES if self.templates else ():
            t = instantiate(name, view.model_config, view.methods, view.overrides)
            if t is not None and t.key() not in seen:
                candidates.append(t)
        if not candidates:
            return Strategy(action="end", reasoning="every configuration of the available methods was tried",
                            policy=self.name)
        quality_kept = self._quality_kept(view)
        tried_families: dict[tuple[str, int], int] = {}
        tried_runtimes: dict[str, int] = {}
        dropped_methods: set[str] = set()  # failed, or wrecked the model
        for h in view.history:
            for s in h["strategy"]["steps"]:
                st = Step(**s)
                tried_families[_family(st)] = tried_families.get(_family(st), 0) + 1
                rt = view.methods[st.method].region if st.method in view.methods else st.method
                tried_runtimes[rt] = tried_runtimes.get(rt, 0) + 1
                if h["status"] in ("failed", "pruned") or (h.get("relative") or {}).get("perplexity", 1.0) > WRECKED:
                    dropped_methods.add(st.method)
        size_unmet, accuracy_broken = self._goal_pressure(view)
        pref = view.spec.preferred_methods
        # skill memory: a family that worked on similar experiments ranks up, one that failed ranks down
        known = learned(view)
        dropped_methods |= wrecked_methods(view)

        def score(step: Step) -> float:
            rank = pref.index(step.method) if step.method in pref else len(pref)
            b = bits(step)
            s = 0.5 * rank + 2.0 * tried_families.get(_family(step), 0)
            s += RUNTIME_TRIED * tried_runtimes.get(view.methods[step.method].region, 0)
            s += 0.3 if step.params.get("mode") == "fp4" else 0.0  # NF4 is the better 4-bit float (QLoRA paper)
            if "granularity" in step.params:  # bench/methods.py: 10% of MLP channels cost far less than 10% of layers
                s += {"mlp": 0.0, "head": 0.3, "layer": 0.6}[step.params["granularity"]]
                s += 0.3 * abs(math.log2(step.params["ratio"] / 0.1))
            if b < 16:  # quantization: its bit width follows whether quality is kept (pruning, low rank: neither)
                s += (0.25 if not quality_kept else 1.5) if b >= 8 else (0.0 if not quality_kept else -0.5)
            s += (1.5 if b >= 8 else -0.5) if size_unmet else 0.0
            s += (5.0 if _family(step) in accuracy_broken else 0.0) + (-1.0 if accuracy_broken and b == 8 else 0.0)
            s += view.methods[step.method].cost * (1.0 if b == 8 else 0.1)
            if step.params.get("imatrix"):  # measured: llama.cpp's importance matrix removes 41% of Q4_K_M's KLD
                s -= 0.5
            if step.params.get("avg_bits") is not None and view.methods[step.method].produces == "gguf":
                near = 4.5 if size_unmet else 6.0  # the presets' size, or less while a size goal is unmet
                s += 0.3 * abs(step.params["avg_bits"] - near) - 0.2  # every type per tensor
            if step.params.get("matmul_mixed_precision"):  # int8 groups in an int4 ONNX model: after the plain one
                s += 0.2
            g = step.params.get("group_size", "absent")
            if g != "absent":
                s += 0.6 if g is None else 0.3 * abs(math.log2(g / 64))
            s += 0.0 if view.methods[step.method].reduces else 10.0  # below every method that can lower a cost
            s -= 3.0 * known.get(_family(step), 0.0)
            # a tie goes to the defaults of how a method rounds and runs, its author's choice (ONNX Runtime's accuracy
            # level 4 is its fast CPU kernel: int8 at level 1 decoded 17x slower than SmolLM2's f32 baseline,
            # 2026-12-07); what it stores (a type, a scheme) is the choice the families above compare
            defaults = view.methods[step.method].defaults()
            s += 0.01 * sum(v != defaults[k] for k, v in step.params.items() if k in defaults and k not in STORED)
            return s + (20.0 if step.method in dropped_methods else 0.0)  # far: below every runtime's repeats

        def score_strategy(st: Strategy) -> float:
            compressing = [x for x in st.steps if view.methods[x.method].standalone]
            s = min(score(x) for x in compressing) + 0.3 * (len(st.steps) - 1)
            recovers = len(compressing) < len(st.steps)
            if recovers and not quality_kept and any(tried_families.get(_family(x)) for x in compressing):
                s -= 1.5
            return s

        best = min(candidates, key=lambda c: (score_strategy(c), c.key()))
        lead = next(x for x in best.steps if view.methods[x.method].standalone)
        why = (f"{best.reasoning + ': ' if best.reasoning else ''}{lead.method} is rank "
               f"{pref.index(lead.method) + 1 if lead.method in pref else 'unranked'} for a {view.spec.size_class} "
               "model; " + ("a compressed candidate already keeps baseline accuracy, so push to fewer bits"
                            if quality_kept else "no compressed candidate keeps baseline accuracy yet, so quality "
                            "is favoured") + f"; {len(candidates)} untried strategies left")
        return best.model_copy(update={"reasoning": why, "policy": self.name})

    @staticmethod
    def _goal_pressure(view: PolicyView) -> tuple[bool, set[tuple[str, int]]]:
        """(no feasible candidate meets the size goal yet, the families whose candidate broke the accuracy goal)."""
        g = view.goals
        if not g.active():
            return False, set()
        size_goal = g.max_size_gb is not None or g.target_size_ratio is not None
        size_met = any(h.get("feasible") and (g.target_size_ratio is None or (h.get("relative") or {}).get(
            "model_size_gb", 1.0) <= g.target_size_ratio) for h in view.history)
        broken = {_family(Step(**st)) for h in view.history if any(w.startswith("accuracy drop") for w in
                                                                   h.get("infeasible_because") or ())
                  for st in h["strategy"]["steps"] if view.methods.get(st["method"]) is None
                  or view.methods[st["method"]].standalone}
        return size_goal and not size_met, broken

    @staticmethod
    def _quality_kept(view: PolicyView) -> bool:
        if view.baseline is None:
            return False
        floor = view.baseline.accuracy - view.baseline.accuracy_stderr
        return any(f["episode_id"] != "baseline" and f["objectives"]["accuracy"] >= floor for f in view.frontier)
