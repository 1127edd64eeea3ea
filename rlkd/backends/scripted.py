"""A deterministic fake backend for unit tests of our own logic: never a stand-in for the real thing in an
end-to-end test (those run ``transformers serve`` or a local model)."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Callable, Mapping, Sequence

from rlkd.backends.base import Backend, Completion, GenerationRequest, StreamSink, _short


log = logging.getLogger("rlkd.backends")

# --------------------------------------------------------------------------------------------------
# Deterministic fake for unit tests


class ScriptedBackend(Backend):
    """A deterministic fake for unit tests of our own logic (never for an end-to-end test).

    ``script`` is a function ``GenerationRequest -> str | list[str]`` or a dict from the last user
    message to the reply. A function returning one string gives that string for each of the ``n``
    samples; a list gives the samples. A function that raises, or a dict without the message (and no
    ``default``), gives a failed completion with the reason. ``fail_first=k`` fails the first ``k``
    requests; ``fail_when(request)`` fails the requests it selects. Token counts are whitespace-word
    counts. Every request is kept in ``self.requests``.

    >>> backend = ScriptedBackend({"2+2?": "4"}, fail_first=1)
    >>> [c.error or c.text for c in backend.generate_sync([GenerationRequest.chat([("user", "2+2?")])] * 2)]
    ['scripted failure (fail_first=1)', '4']
    """

    name = "scripted"

    def __init__(
        self,
        script: Callable[[GenerationRequest], str | list[str]] | Mapping[str, str],
        *,
        default: str | None = None,
        fail_first: int = 0,
        fail_when: Callable[[GenerationRequest], bool] | None = None,
        model: str = "scripted",
        stream_fail_after: Callable[[GenerationRequest], int | None] | None = None,
    ) -> None:
        super().__init__()
        self.script = script
        self.default = default
        self.fail_first = fail_first
        self.fail_when = fail_when
        self.stream_fail_after = stream_fail_after
        self.model = model
        self.requests: list[GenerationRequest] = []

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Answer each request from the script, in order."""
        completions = []
        for request in requests:
            completion = self._answer(request)
            self.requests.append(request)
            self.stats.add(completion)
            completions.append(completion)
        return completions

    async def generate_stream(self, requests: Sequence[GenerationRequest],
                              sinks: Sequence[StreamSink]) -> list[Completion]:
        """Stream each scripted reply word by word (a word and the blanks after it count as one token),
        all requests interleaved, yielding to the event loop after every word; stop where a sink asks.
        ``stream_fail_after(request)`` (a number of words, or None) fails a stream part-way."""
        async def one(request: GenerationRequest, sink: StreamSink) -> Completion:
            completion = self._answer(request)
            self.requests.append(request)
            if completion.ok and request.n == 1:
                words = re.findall(r"\s+|\S+\s*", completion.text)
                fail_at = self.stream_fail_after(request) if self.stream_fail_after else None
                fed = 0
                for word in words:
                    if sink.stop_requested:
                        completion = Completion(texts=["".join(words[:fed])], prompt_tokens=completion.prompt_tokens,
                                                completion_tokens=fed, stopped=True)
                        break
                    if fail_at is not None and fed >= fail_at:
                        completion = Completion(error=f"scripted stream failure after {fed} tokens",
                                                completion_tokens=fed)
                        break
                    sink.feed(word)
                    fed += 1
                    await asyncio.sleep(0)
                else:
                    completion.completion_tokens = fed
            elif completion.ok:
                sink.feed(completion.text)
            self.stats.add(completion)
            sink.finish(completion)
            return completion

        return list(await asyncio.gather(*(one(r, s) for r, s in zip(requests, sinks))))

    def _answer(self, request: GenerationRequest) -> Completion:
        if self.stats.calls < self.fail_first:
            return Completion(error=f"scripted failure (fail_first={self.fail_first})")
        if self.fail_when is not None and self.fail_when(request):
            return Completion(error="scripted failure (fail_when)")
        try:
            if callable(self.script):
                reply = self.script(request)
            else:
                key = request.last_user_message
                if key in self.script:
                    reply = self.script[key]
                elif self.default is not None:
                    reply = self.default
                else:
                    return Completion(error=f"scripted: no reply for user message {_short(key, 80)!r}")
        except Exception as exc:  # noqa: BLE001 - a raising script is a failed request
            return Completion(error=f"scripted: {type(exc).__name__}: {exc}")
        texts = [reply] * request.n if isinstance(reply, str) else list(reply)
        if len(texts) != request.n:
            return Completion(error=f"scripted: {len(texts)} replies for n={request.n}")
        prompt_tokens = sum(len(content.split()) for _, content in request.messages)
        return Completion(texts=texts, prompt_tokens=prompt_tokens,
                          completion_tokens=sum(len(t.split()) for t in texts))
