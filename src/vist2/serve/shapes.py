"""OpenAI response shapes: the envelope, usage (with vist2's compression figures), finish
reasons and log-probabilities (chat's `content` list, completions' legacy arrays)."""

from __future__ import annotations

from vist2.tokenizer import token_bytes


def envelope(kind: str, ident: str, created: int, model: str, fingerprint: str, choices: list, **extra) -> dict:
    return {"id": ident, "object": kind, "created": created, "model": model, "system_fingerprint": fingerprint,
            "choices": choices, **extra}


def usage(requests, prompt_tokens: int) -> dict:
    stats = [r.stats for r in requests]
    completion = sum(len(r.output) for r in requests)
    return {
        "prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion,
        "compression": {
            "mode": requests[0].config.mode,
            "chunks_compressed": sum(s.chunks_compressed for s in stats),
            "kv_tokens_peak": max(s.kv_tokens_peak for s in stats),
            "kv_tokens_full_text": max(s.kv_tokens_full_text for s in stats),
        },
    }


def finish_reason(request) -> str:
    """The request's own reason (`vist2.request`) as vLLM names them: stop, length, or abort
    (cancelled or aborted: its client left, or a shutdown's grace period ran out)."""
    return "abort" if request.finish_reason in ("cancelled", "aborted") else request.finish_reason


class Logprobs:
    """One choice's log-probabilities, shaped as OpenAI shapes them."""

    def __init__(self, tokenizer, chat: bool):
        self.tokenizer, self.chat = tokenizer, chat
        self.offset = 0  # completions: characters before the next token

    def _token(self, token: int) -> tuple[str, list[int]]:
        raw = token_bytes(self.tokenizer, [token])[0]
        return raw.decode("utf-8", errors="replace"), list(raw)

    def shape(self, tokens: list[int], entries: list[tuple[float, list]]) -> dict:
        """tokens and their (logprob, [(id, logprob), ...]) -> chat's or completions' logprobs object."""
        if self.chat:
            content = []
            for token, (logprob, top) in zip(tokens, entries):
                text, raw = self._token(token)
                alternatives = []
                for other, other_logprob in top:
                    other_text, other_raw = self._token(other)
                    alternatives.append({"token": other_text, "logprob": other_logprob, "bytes": other_raw})
                content.append({"token": text, "logprob": logprob, "bytes": raw, "top_logprobs": alternatives})
            return {"content": content, "refusal": None}
        texts, offsets, tops = [], [], []
        for token, (_, top) in zip(tokens, entries):
            text = self._token(token)[0]
            texts.append(text)
            offsets.append(self.offset)
            self.offset += len(text)
            tops.append({self._token(other)[0]: other_logprob for other, other_logprob in top})
        return {"tokens": texts, "token_logprobs": [logprob for logprob, _ in entries], "top_logprobs": tops,
                "text_offset": offsets}
