"""lm-eval over a runtime's logits: the accuracy backend of every target but transformers. The runtime's model
gives ``logits(ids, first)``, the logits of positions ``first``.. of a token sequence (numpy, [len - first, vocab])."""
from __future__ import annotations

from lm_eval.api.model import TemplateLM


class RuntimeLM(TemplateLM):
    """Requests are tokenized as lm-eval's HFLM tokenizes them (the same tokenizer, the same BOS rule), so a
    candidate's score differs from the transformers baseline's by its weights and runtime only."""

    def __init__(self, runtime, tokenizer, add_bos: bool | None, max_length: int):
        super().__init__()
        self.runtime, self.tokenizer, self.add_bos, self.max_length = runtime, tokenizer, add_bos, max_length

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        add = self.add_bos if add_special_tokens is None else add_special_tokens
        return self.tokenizer.encode(string, **({} if add is None else {"add_special_tokens": add}))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        import numpy as np
        import torch

        out = []
        for _, context, continuation in requests:
            ids = (context + continuation)[-(self.max_length + 1):][:-1]
            logits = torch.from_numpy(np.array(self.runtime.logits(ids, len(ids) - len(continuation))))
            lp = torch.log_softmax(logits.float(), -1)
            target = torch.tensor(continuation)
            out.append((float(lp.gather(1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all())))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval import utils

        out = []
        for (string,) in [r.args for r in requests]:
            windows = map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1))
            out.append(sum(ll for ll, _ in self._loglikelihood_tokens([((None, None), c, t) for c, t in windows])))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy generation in the runtime until a stop string or max_gen_toks."""
        out = []
        for context, gen in [r.args for r in requests]:
            until, budget = list(gen.get("until") or []), int(gen.get("max_gen_toks", 256))
            ids, new = self.tok_encode(context)[-(self.max_length - budget):], []
            text = ""
            for _ in range(budget):
                nxt = int(self.runtime.logits(ids + new, len(ids) + len(new) - 1)[0].argmax())
                if nxt == self.eot_token_id:
                    break
                new.append(nxt)
                text = self.tokenizer.decode(new, skip_special_tokens=True)
                if any(u in text for u in until):
                    break
            for u in until:
                text = text.split(u)[0]
            out.append(text)
        return out
