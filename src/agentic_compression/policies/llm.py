"""The LLM coordinator: GPT-4o or any OpenAI-compatible endpoint decides each episode behind the Policy interface.

Per decision: a context built from the view (frontier, recent episodes, skills, budget, the model spec and the
*available* methods with their parameter ranges, read from the registry) -> a structured answer (JSON schema,
function call, JSON mode or plain chat, a setting) -> parsed and validated against the registry. An invalid answer
is sent back with the error (bounded retries); transient HTTP errors back off and retry; after that the built-in
policy decides that episode. Every Strategy records in ``meta`` the raw answers, their errors and any fallback
reason. The API key comes from the environment and is scrubbed from every recorded error.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import LLMSettings, brief
from ..errors import UserError
from ..methods import REGISTRY, ParamError
from ..schemas import ACTIONS, OBJECTIVES, Action, Step, Strategy
from .base import Policy, PolicyView, chainable, propose, with_pending
from .pipelines import AUTO, TEMPLATES, fit_group_size, parse_condition
from .rule import RulePolicy
from .search import ALGORITHMS, search

log = logging.getLogger("acf.llm")


# ---- the decision schema (what the LLM answers) ----
class DecisionStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: str = Field(description="a method name")
    params: dict[str, Any] = Field(default_factory=dict, description="its parameters")
    condition: str | None = Field(default=None, description="e.g. 'ppl_ratio > 1.05': run the step only then")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    algorithm: str = Field(default="grid", description="a searcher that proposes the next untried configuration")
    method: str | None = Field(default=None, description="search one method's parameters; null = all methods")


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Action = Field(description="a method's action for one step; 'pipeline' for several steps; 'search' to "
                           "let a searcher pick; 'end' to stop")
    method: str | None = Field(default=None, description="the method of a single-step action")
    params: dict[str, Any] = Field(default_factory=dict, description="its parameters; omitted ones take defaults")
    steps: list[DecisionStep] = Field(default_factory=list, description="a pipeline's steps, in order")
    base: str = Field(default="base", description="'base' or an earlier successful episode_id to compress further")
    search: SearchRequest | None = Field(default=None, description="for action 'search': {algorithm, method}")
    reasoning: str = Field(default="", description="why this is the best next experiment")


SCHEMA = Decision.model_json_schema()


class Batch(BaseModel):
    """K decisions in one answer, for K episodes run at once (``acf run --parallel K``)."""
    model_config = ConfigDict(extra="forbid")
    decisions: list[Decision] = Field(description="different strategies to run at the same time, best first")


def batch_schema(k: int) -> dict:
    schema = Batch.model_json_schema()
    schema["properties"]["decisions"].update(minItems=1, maxItems=k)
    return schema


def _fields(model: type[BaseModel]) -> str:
    return "; ".join(f"{n}: {f.description or n}" for n, f in model.model_fields.items())


# the answer's fields in words, for modes without a structured-output API (small models copy a raw schema)
FIELDS = (f"{_fields(Decision)}. action is one of {', '.join(ACTIONS)}. Each step has {_fields(DecisionStep)}. "
          f"search has {_fields(SearchRequest)}.")
EXAMPLE = {"action": "quantization", "method": "gptq", "params": {"scheme": "W4A16", "group_size": 64},
           "reasoning": "4-bit GPTQ usually keeps accuracy within a point and cuts size ~3x"}


class DecisionError(ValueError):
    """The answer cannot be executed; the message is sent back to the LLM."""


class EndpointError(RuntimeError):
    """The endpoint did not answer (after backoff) or refused the request."""


# ---- parsing and validation ----
MAX_ANSWER = 32_000  # characters of an answer that are parsed (a decision is a few hundred)
MAX_DEPTH = 16  # nesting of brackets in an answer (a decision needs 4): deeper would exhaust the parser's stack


def _depth(text: str) -> int:
    """The deepest nesting of {} and [] outside JSON strings."""
    depth = top = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            esc, in_str = (False, in_str) if esc else (ch == "\\", ch != '"')
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
            top = max(top, depth)
        elif ch in "}]":
            depth = max(depth - 1, 0)
    return top


def parse(raw: str) -> Any:
    """The first JSON object in the answer (code fences and prose around it are ignored). Oversized or deeply
    nested answers are refused before parsing."""
    text = (raw or "").strip()
    if not text:
        raise DecisionError("the answer was empty")
    if len(text) > MAX_ANSWER:
        raise DecisionError(f"the answer has {len(text)} characters; a decision needs under {MAX_ANSWER}")
    if _depth(text) > MAX_DEPTH:
        raise DecisionError(f"the answer nests brackets deeper than {MAX_DEPTH} levels; answer one flat decision")
    dec = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = dec.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    raise DecisionError("no JSON object found in the answer")


def _step(method: str, params: dict, condition: str | None, view: PolicyView, where: str) -> Step:
    if method not in view.methods:
        avail = ", ".join(sorted(view.methods))
        if method in REGISTRY:
            raise DecisionError(f"{where}method '{method}' is not available on this machine "
                                f"({REGISTRY[method].available()[1]}); available: {avail}")
        raise DecisionError(f"{where}unknown method '{method}'; available: {avail}")
    m = view.methods[method]
    try:
        merged = view.step(method, params).params
    except ParamError as e:
        raise DecisionError(f"{where}{e}") from None
    if "group_size" in merged and "group_size" not in params and "group_size" not in view.overrides.get(method, {}):
        merged["group_size"] = AUTO  # an omitted group size fits the model, not the method's generic default
    merged = fit_group_size(method, merged, view.model_config)
    if err := m.check(merged, view.model_config):
        raise DecisionError(f"{where}{err}")
    if condition:
        try:
            parse_condition(condition)
        except ValueError as e:
            raise DecisionError(f"{where}{e}") from None
    return Step(method=method, params=merged, condition=condition)


def to_strategy(obj: Any, view: PolicyView, seed: int = 0) -> Strategy:
    """A validated, executable, untried Strategy, or DecisionError saying exactly what to fix. ``seed``: the
    search policies' (--search-seed), for the search action."""
    if not isinstance(obj, dict):
        raise DecisionError("the answer must be one JSON object")
    obj = dict(obj)
    act = obj.get("action")
    if isinstance(act, str) and act not in ACTIONS and act in REGISTRY and obj.get("method") in (None, act):
        obj["method"], obj["action"] = act, REGISTRY[act].action  # a method named as the action
    try:
        d = Decision.model_validate(obj)
    except ValidationError as e:
        raise DecisionError(brief(e)) from None
    if d.action == "end":
        return Strategy(action="end", reasoning=d.reasoning)
    if d.action == "search":
        req = d.search or SearchRequest(method=d.method)
        if req.algorithm not in ALGORITHMS:
            raise DecisionError(f"search algorithm '{req.algorithm}' is not available; choose one of "
                                f"{', '.join(ALGORITHMS)}")
        if req.method is not None:
            _step(req.method, {}, None, view, "search: ")
        st = search(view, req.algorithm, req.method, seed)
        if st.action == "end":
            raise DecisionError(f"every configuration of {req.method or 'the methods'} was tried; choose another")
        return st.model_copy(update={"reasoning": f"{d.reasoning} | {st.reasoning}".strip(" |")})
    ok_bases = {"base"} | {h["episode_id"] for h in view.history if chainable(h)}
    if d.base not in ok_bases:
        raise DecisionError(f"base '{d.base}' is not 'base' or a successful episode with a PyTorch checkpoint "
                            f"({', '.join(sorted(ok_bases))})")
    if d.action == "pipeline":
        if not d.steps:
            raise DecisionError("action 'pipeline' needs a non-empty 'steps' list")
        steps = [_step(s.method, s.params, s.condition, view, f"steps[{i}]: ") for i, s in enumerate(d.steps)]
        if not any(view.methods[s.method].standalone for s in steps):
            raise DecisionError("a pipeline needs a compressing step; lora/distill only recover after one")
        action = "pipeline"
    else:
        if not d.method:
            raise DecisionError(f"action '{d.action}' needs 'method' (or use 'pipeline' with 'steps')")
        steps = [_step(d.method, d.params, None, view, "")]
        if not view.methods[d.method].standalone:
            raise DecisionError(f"{d.method} is a recovery step: put it in a pipeline after a compressing step")
        action = view.methods[d.method].action  # the action follows the method
    st = Strategy(action=action, steps=steps, base=d.base, reasoning=d.reasoning)
    if st.key() in view.tried:
        raise DecisionError("this exact strategy was already tried (see already_tried); choose another")
    return st


# ---- the context (what the LLM reads) ----
def summarize(strategy: dict) -> str:
    steps = " -> ".join(f"{s['method']}({', '.join(f'{k}={v}' for k, v in s['params'].items())})"
                        + (f" if {s['condition']}" if s.get("condition") else "") for s in strategy["steps"])
    return steps + ("" if strategy.get("base", "base") == "base" else f" [on {strategy['base']}]")


def method_catalog(methods: dict) -> dict:
    """The available methods as the registry declares them: never a list kept by hand."""
    out = {}
    for name, m in sorted(methods.items()):
        params = {p.name: (f"one of {json.dumps(p.choices)}" if p.choices is not None else
                            f"{p.low:g}..{p.high:g}" if p.low is not None else p.domain())
                  + f", default {json.dumps(p.default)}" + (f" ({p.help})" if p.help else "") for p in m.params}
        out[name] = {"action": m.action, "params": params, "lowers": list(m.reduces),
                     "cost": ["seconds", "about a minute", "several minutes"][min(m.cost, 2)],
                     **({} if m.standalone else {"role": "recovery step: only inside a pipeline"}),
                     **({"role": "writes the deployed file: only as a strategy's last step"} if m.final else {})}
    return out


def context(view: PolicyView) -> dict:
    b = view.baseline
    base_obj = b.objectives() if b else None

    def rel(obj: dict | None) -> dict | None:
        if not obj or not base_obj:
            return None
        return {k: round(v / base_obj[k], 3) for k, v in obj.items() if base_obj.get(k)}

    recent = view.history[-5:]
    return {
        "model": {"name": view.spec.model_name, "params": view.spec.num_params, "family": view.spec.model_family,
                  "size_class": view.spec.size_class, "fp16_gb": view.spec.model_size_gb,
                  "preferred_methods": view.spec.preferred_methods},
        "objectives": {k: "maximise" if v > 0 else "minimise" for k, v in OBJECTIVES.items()},
        **({"goals": {**view.goals.model_dump(exclude_none=True), "note": "the user's constraints: steer to "
                      "candidates that meet them (each recent episode says whether it did, and why not)"}}
           if view.goals.active() else {}),
        "baseline": None if b is None else {**base_obj, "accuracy_stderr": b.accuracy_stderr, "n": b.accuracy_n,
                                            "benchmark": b.benchmark, "perplexity": b.perplexity},
        "pareto_frontier": [{"episode_id": f["episode_id"], "strategy": summarize(f) if f["steps"] else "baseline",
                             "relative_to_baseline": rel(f["objectives"])} for f in view.frontier],
        "recent_episodes": [{"episode_id": h["episode_id"], "strategy": summarize(h["strategy"]),
                             "status": h["status"], "entered_frontier": h.get("entered_frontier"),
                             **({"relative_to_baseline": rel(h["objectives"]),
                                 "accuracy": h["objectives"]["accuracy"]} if h["objectives"] else {}),
                             **({"error": (h.get("error") or "")[-300:]} if h["status"] != "success" else {}),
                             **({"feasible": h["feasible"], "infeasible_because": h["infeasible_because"]}
                                if h.get("feasible") is not None else {})}
                            for h in recent],
        "already_tried": [summarize(h["strategy"]) for h in view.history],
        "skill_recommendations": view.skill_recommendations,
        "budget": {"episodes_left": view.episodes_left, "seconds_left": round(view.seconds_left),
                   "co2_grams_spent": round(view.co2_grams_so_far, 3)},
        "available_methods": method_catalog(view.methods),
        "pipeline_templates": {n: summarize({"steps": [s.model_dump() for s in t]}) for n, t in TEMPLATES.items()},
        "search_algorithms": list(ALGORITHMS),
        "fixed_parameters": view.overrides,
    }


SYSTEM = """You are the coordinator of acf, a system that finds the best compressed versions of a language model.
Each turn you choose ONE next strategy; workers apply it with real libraries and it is measured on six objectives
(accuracy up; latency, memory, size on disk, CO2 and the KL divergence from the baseline's next-token distribution
down). Aim for a broad Pareto frontier relative to the
uncompressed baseline within the remaining budget: learn from the measured results and from failures.
Rules:
- Use only the methods under available_methods, with parameters inside their choices or ranges (omitted ones take
  their defaults). Never repeat a strategy listed under already_tried.
- action: the method's action for a single step ("method" + "params"); "pipeline" for several steps in order
  ("steps"; recovery methods such as lora/distill only after a compressing step; a step may carry a condition
  such as "ppl_ratio > 1.05"); "search" to let a searcher ({"algorithm", "method"}) pick the next untried
  configuration; "end" when nothing promising is left.
- base: "base" (the original model) or an earlier successful episode_id, to compress that candidate further.
- skill_recommendations: what earlier runs and acf's shipped prior (source "prior": its own measured grids)
  learned per method family on models like this one; avoid a family whose wrecked_rate is over 0.5 (it broke such
  models: perplexity over twice the baseline's) and prefer families with a high mean_reward at high confidence.
Answer with one JSON object only."""


MAX_BODY = 1_000_000  # bytes of an HTTP answer read before the request is abandoned (an answer is a few KB)


def _unescape(text: str) -> str:
    """JSON's escapes (\\uXXXX, \\/) decoded, so that a key spelt in them is seen by the scrub."""
    return re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text).replace("\\/", "/")


def _scrub(text: str, secret: str | None) -> str:
    """Every string that came from the endpoint passes here before it is stored, logged or parsed: the key, any
    OpenAI-style key and any bearer credential become ***."""
    if secret:
        text = text.replace(secret, "***")
    text = re.sub(r"sk-[A-Za-z0-9_\-*]{6,}", "sk-***", text)
    return re.sub(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=\-]{8,}", r"\1***", text)


class LLMPolicy:
    name = "llm"

    def __init__(self, settings: LLMSettings | None = None, fallback: Policy | None = None, seed: int = 0):
        self.s = settings or LLMSettings()
        self.seed = seed  # the search action's (--search-seed)
        self._key = os.environ.get("ACF_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY")
        if not self._key and self.s.base_url is None:
            raise UserError("--policy llm needs an API key for api.openai.com",
                            "set OPENAI_API_KEY, or pass --llm-base-url for a local OpenAI-compatible server")
        self.client = self._client()
        self.fallback = fallback or RulePolicy()
        self.endpoint_failures = 0  # decisions in a row whose endpoint failed (the breaker)

    def _client(self):
        """An OpenAI client whose answers are read through a byte cap (MAX_BODY), enforced while reading."""
        import httpx
        from openai import OpenAI

        class Capped(httpx.SyncByteStream):
            def __init__(self, inner):
                self.inner = inner

            def __iter__(self):
                n = 0
                for chunk in self.inner:
                    n += len(chunk)
                    if n > MAX_BODY:
                        raise httpx.ReadError(f"the answer's body is over {MAX_BODY:,} bytes")
                    yield chunk

            def close(self):
                self.inner.close()

        class Transport(httpx.HTTPTransport):
            def handle_request(self, request):
                r = super().handle_request(request)
                return httpx.Response(r.status_code, headers=r.headers, stream=Capped(r.stream),
                                      extensions=r.extensions)

        # httpx's per-read timeouts a second past _create's wall-clock deadline, so that the deadline is what ends
        # a hung request, with its own reason (at equal values, a loaded machine let either fire first)
        slack = self.s.timeout_s + 1
        return OpenAI(api_key=self._key or "not-needed", base_url=self.s.base_url, timeout=slack,
                      max_retries=0, http_client=httpx.Client(transport=Transport(), timeout=slack))

    def _create(self, kw: dict, seconds: float):
        """One request under one wall-clock deadline covering connect, headers and body (httpx's timeouts are per
        read, so an endpoint sending a byte a second never trips them): past it, the connection is closed."""
        import threading

        box: dict[str, Any] = {}
        client = self.client

        def call():
            try:
                box["r"] = client.chat.completions.create(**kw)
            except BaseException as e:  # handed to the caller's thread
                box["e"] = e

        t = threading.Thread(target=call, daemon=True, name="acf-llm-request")
        t.start()
        t.join(seconds)
        if t.is_alive():
            self.client = self._client()
            client.close()  # the blocked read ends with the socket
            raise TimeoutError(f"no complete answer within {seconds:g} s")
        if "e" in box:
            raise box["e"]
        return box["r"]

    # -- one request, with backoff on transient errors --
    def _request(self, messages: list[dict], log: list[dict], deadline: float, k: int = 1) -> str:
        """The answer's text. Every failed HTTP attempt is appended to ``log``; waits (backoff, or the endpoint's
        Retry-After, capped by max_wait_s, timeout_s and ``deadline``, a time.monotonic()) never outlast the run."""
        import openai

        s = self.s
        kw: dict[str, Any] = {"model": s.model, "messages": messages, "temperature": s.temperature,
                              "max_tokens": s.max_tokens}
        schema = SCHEMA if k == 1 else batch_schema(k)
        if s.mode == "json_schema":
            kw["response_format"] = {"type": "json_schema", "json_schema": {"name": "decision", "schema": schema}}
        elif s.mode == "json_mode":
            kw["response_format"] = {"type": "json_object"}
        elif s.mode == "function_calling":
            kw["tools"] = [{"type": "function", "function": {"name": "decide", "parameters": schema,
                                                             "description": "the next compression strategy"}}]
            kw["tool_choice"] = {"type": "function", "function": {"name": "decide"}}
        delay = s.backoff_s
        for i in range(s.http_retries + 1):
            t = time.perf_counter()
            try:
                r = self._create(kw, max(0.1, min(s.timeout_s, deadline - time.monotonic())))
            except Exception as e:  # noqa: BLE001 -- the transport's or the parser's: an endpoint failure
                if isinstance(e, openai.APIStatusError) and not isinstance(e, (openai.RateLimitError,
                                                                               openai.InternalServerError)):
                    log.append({"http_error": self._scrub(f"HTTP {e.status_code}: {e.message}")[:500],
                                "status": e.status_code, "seconds": round(time.perf_counter() - t, 2)})
                    raise EndpointError(f"endpoint refused the request: HTTP {e.status_code}: "
                                        f"{self._scrub(str(e.message))[:300]}") from None
                # refused connection, 429, 5xx, a deadline, a body too large or unparseable: retried
                why = f"{e} ({e.__cause__})" if e.__cause__ else str(e)  # openai's "Connection error." hides it
                entry = {"http_error": self._scrub(f"{type(e).__name__}: {why}")[:500],
                         "status": getattr(e, "status_code", None), "seconds": round(time.perf_counter() - t, 2)}
                if i < s.http_retries:
                    after = getattr(getattr(e, "response", None), "headers", {}).get("retry-after")
                    wait = float(after) if after and after.replace(".", "", 1).isdigit() else delay
                    wait = max(0.0, min(wait, s.max_wait_s, s.timeout_s, deadline - time.monotonic()))
                    entry["waited_s"] = round(wait, 2)
                    time.sleep(wait)
                    delay *= 2
                log.append(entry)
                if time.monotonic() >= deadline:
                    break
                continue
            if not r.choices:
                return ""
            msg = r.choices[0].message
            if s.mode == "function_calling" and msg.tool_calls:
                return msg.tool_calls[0].function.arguments or ""
            return msg.content or ""
        raise EndpointError(f"endpoint failed {len(log)} times ({log[-1]['http_error'][:300]})" if log else
                            "endpoint failed: no time left for a request")

    def _scrub(self, text: str) -> str:
        return _scrub(text, self._key)

    def _scrub_all(self, obj: Any) -> Any:
        if isinstance(obj, str):
            return self._scrub(obj)
        if isinstance(obj, dict):
            return {self._scrub_all(k): self._scrub_all(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self._scrub_all(v) for v in obj]
        return obj

    def _messages(self, view: PolicyView, k: int = 1) -> list[dict]:
        system = SYSTEM
        if self.s.mode in ("prompt", "json_mode"):
            system += f"\nThe answer's fields: {FIELDS}"
        ctx = json.dumps(context(view), default=str, separators=(",", ":"))
        # the format last: small local models follow what they read last
        if k == 1:
            form = f"Answer now with one JSON object in this form: {json.dumps(EXAMPLE)}"
        else:
            form = (f"Workers run {k} episodes at once: choose up to {k} different strategies, best first, none "
                    f"already tried. Answer now with one JSON object in this form: "
                    f"{json.dumps({'decisions': [EXAMPLE]})}")
        return [{"role": "system", "content": system}, {"role": "user", "content": f"Context:\n{ctx}\n\n{form}"}]

    def decide(self, view: PolicyView) -> Strategy:
        return self.propose(view, 1)[0]

    def _strategies(self, obj: Any, view: PolicyView, k: int) -> list[Strategy]:
        """The answer's decisions as validated strategies (K=1: the object is the decision), each untried and
        different from the ones before it; "end" closes the list."""
        if k > 1:
            if not isinstance(obj, dict) or not isinstance(obj.get("decisions"), list) or not obj["decisions"]:
                raise DecisionError('the answer must be {"decisions": [...]} with 1 to ' f"{k} decisions")
            obj = obj["decisions"][:k]
        out: list[Strategy] = []
        for i, d in enumerate([obj] if k == 1 else obj):
            try:  # strings decoded from the JSON (escapes) are scrubbed again: the strategy and the error
                st = to_strategy(d, with_pending(view, out), self.seed)
                st = Strategy.model_validate(self._scrub_all(st.model_dump()))
            except DecisionError as e:
                raise DecisionError(f"decisions[{i}]: {e}" if k > 1 else str(e)) from None
            if st.action == "end":
                return out or [st]
            out.append(st)
        return out

    def propose(self, view: PolicyView, k: int) -> list[Strategy]:
        """One answer with up to ``k`` decisions (one decision, as its own object, when k=1), each validated as a
        single decision is; an invalid one is sent back with the reason and the whole answer asked again."""
        s = self.s
        # attempts: each answer and its error; http_failures: each request that got no answer (refused, 429, 5xx,
        # timeout)
        meta: dict[str, Any] = {"requested": "llm", "model": s.model, "mode": s.mode, "attempts": [],
                                "http_failures": []}
        if self.endpoint_failures >= s.breaker:
            return self._fall(view, meta, f"the endpoint failed in {self.endpoint_failures} decisions in a row; "
                                          "not asked again in this run", k)
        messages = self._messages(view, k)
        error = ""
        deadline = time.monotonic() + max(view.seconds_left, 0.0)
        for _ in range(s.retries + 1):
            t = time.perf_counter()
            failed: list[dict] = []
            try:
                raw = self._request(messages, failed, deadline, k)
            except EndpointError as e:
                meta["http_failures"] += failed
                self.endpoint_failures += 1
                return self._fall(view, meta, self._scrub(str(e)), k)
            meta["http_failures"] += failed
            self.endpoint_failures = 0
            raw = self._scrub(raw)  # before it is parsed: no string from the endpoint reaches an artifact unscrubbed
            # stored decoded, then scrubbed: a key spelt in JSON escapes is caught too
            attempt = {"raw": self._scrub(_unescape(raw))[:8000], "seconds": round(time.perf_counter() - t, 2),
                       "error": None}
            meta["attempts"].append(attempt)
            try:
                batch = self._strategies(parse(raw), view, k)
            except DecisionError as e:
                error = attempt["error"] = self._scrub(str(e))
                messages = messages + [{"role": "assistant", "content": raw[:8000]},
                                       {"role": "user", "content": f"That answer cannot be used: {error}. "
                                                                   "Answer again with one JSON object only."}]
                continue
            return [st.model_copy(update={"policy": self.name, "meta": meta}) for st in batch]
        return self._fall(view, meta, f"no valid decision in {s.retries + 1} answers; last error: {error}", k)

    def _fall(self, view: PolicyView, meta: dict, reason: str, k: int = 1) -> list[Strategy]:
        log.warning("LLM coordinator fell back to the %s policy: %s", self.fallback.name, reason)
        return [st.model_copy(update={"meta": {**meta, "fallback_reason": reason},
                                      "reasoning": f"[fallback: {reason}] {st.reasoning}"})
                for st in propose(self.fallback, view, k)]
