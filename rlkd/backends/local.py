"""The local backend: a model run in this process with transformers ``generate`` (chat template, left
padding, batches), for users without a server, and for tests on the models the project builds itself.

1. Streaming stops a sequence with a stopping criterion once its caller has read enough (early exit).
2. Stop strings are cut from the text as a server would.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Callable, Sequence

from rlkd.backends.base import Backend, Completion, GenerationRequest, StreamSink, _short
from rlkd.models import load_model, load_tokenizer


log = logging.getLogger("rlkd.backends")

# --------------------------------------------------------------------------------------------------
# Local transformers model


class TransformersBackend(Backend):
    """A local model through transformers ``generate``: chat template, left padding, batches.

    ``model`` is a hub name or a local folder, loaded by :func:`rlkd.models.load_model` /
    :func:`rlkd.models.load_tokenizer`. Requests are grouped by sampling settings (one ``generate``
    config per group) and run ``batch_size`` sequences at a time; a request with ``n > 1`` contributes
    ``n`` sequences. ``temperature == 0`` decodes greedily; otherwise it samples with ``top_p``, seeding
    torch with the request's ``seed`` (when set) before each batch of that group, so a seeded request is
    reproducible for a given batch composition. ``stop`` strings cut the decoded text after generation.
    ``prompt_tokens`` counts the prompt once per request (as OpenAI servers do); ``completion_tokens``
    counts every generated token up to and including the end-of-sequence token.

    Generation runs in a worker thread (``asyncio.to_thread``), one batch at a time, so the event loop
    keeps serving other work. A batch that raises (e.g. out of memory) fails only its own requests.
    """

    name = "transformers"

    def __init__(
        self,
        model: str,
        *,
        batch_size: int = 8,
        device: str | None = None,
        dtype: str = "auto",
        model_obj: Any = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__()

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = str(model)
        self.batch_size = batch_size
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(self.model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lm = model_obj if model_obj is not None else load_model(self.model, device=device, dtype=dtype)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TransformersBackend(model={self.model!r}, batch_size={self.batch_size})"

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Generate in a worker thread; one completion per request, in order."""
        if not requests:
            return []
        completions = await asyncio.to_thread(self._generate_blocking, list(requests))
        for completion in completions:
            self.stats.add(completion)
            if completion.error:
                log.warning("local generation with %s failed: %s", self.model, completion.error)
        return completions

    async def generate_stream(self, requests: Sequence[GenerationRequest],
                              sinks: Sequence[StreamSink]) -> list[Completion]:
        """Generate in a worker thread, feeding each sequence's new text to its sink after every token;
        a stopping criterion ends a sequence whose sink asks to stop (the batch goes on for the others)."""
        if not requests:
            return []
        if any(r.n != 1 for r in requests):  # several samples per request do not stream
            return await super().generate_stream(requests, sinks)
        loop = asyncio.get_running_loop()
        fed = [StreamSink() for _ in sinks]  # what each sink was fed (the feeds run on this loop, in order)

        def tee(sink: StreamSink, record: StreamSink) -> Callable[[str], None]:
            def feed(piece: str) -> None:
                record.feed(piece)
                sink.feed(piece)
            return feed

        watched = [_Tee(sink, tee(sink, record)) for sink, record in zip(sinks, fed)]
        completions = await asyncio.to_thread(self._generate_blocking, list(requests), (watched, loop))
        for completion, sink, record in zip(completions, sinks, fed):
            self.stats.add(completion)
            if completion.error:
                log.warning("local generation with %s failed: %s", self.model, completion.error)
            sent = "".join(record.pieces)
            if completion.ok and len(completion.text) > len(sent) and completion.text.startswith(sent):
                sink.feed(completion.text[len(sent):])  # e.g. a last character held back as incomplete
            sink.finish(completion)
        return completions

    def _generate_blocking(self, requests: list[GenerationRequest],
                           stream: tuple[list[StreamSink], asyncio.AbstractEventLoop] | None = None) -> list[Completion]:
        results: list[Completion | None] = [None] * len(requests)
        prompts: list[str | None] = []
        for i, request in enumerate(requests):
            try:
                prompts.append(self.tokenizer.apply_chat_template(
                    request.as_openai_messages(), tokenize=False, add_generation_prompt=True))
            except Exception as exc:  # noqa: BLE001 - a bad request fails alone
                prompts.append(None)
                results[i] = Completion(error=f"chat template failed: {type(exc).__name__}: {_short(str(exc))}")
        limit = getattr(getattr(self.lm, "config", None), "max_position_embeddings", None)
        for i, prompt in enumerate(prompts):
            if prompt is not None and limit is not None:
                length = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
                if length >= limit:
                    results[i] = Completion(error=f"prompt of {length} tokens does not fit the model's "
                                                  f"{limit}-token context")
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            if results[i] is None:
                settings = (request.max_tokens, request.temperature, request.top_p if request.temperature else 1.0,
                            request.seed if request.temperature else None)
                groups.setdefault(settings, []).append(i)
        samples: dict[int, list[str]] = {i: [] for i in range(len(requests))}
        tokens: dict[int, list[int]] = {i: [0, 0] for i in range(len(requests))}
        stopped: set[int] = set()
        with self._lock:
            for (max_tokens, temperature, top_p, seed), members in groups.items():
                sequences = [(i, prompts[i]) for i in members for _ in range(requests[i].n)]
                for start in range(0, len(sequences), self.batch_size):
                    batch = sequences[start: start + self.batch_size]
                    watch = None
                    if stream is not None:
                        watch = _StreamRows(self.tokenizer, [stream[0][i] for i, _ in batch], stream[1])
                    try:
                        outputs = self._run_batch([p for _, p in batch], max_tokens, temperature, top_p, seed, watch)
                        if watch is not None:
                            stopped.update(i for (i, _), cut in zip(batch, watch.stopped_at) if cut is not None)
                    except Exception as exc:  # noqa: BLE001 - the batch's requests fail, others go on
                        reason = f"generate failed: {type(exc).__name__}: {_short(str(exc))}"
                        for i, _ in batch:
                            results[i] = Completion(error=reason)
                        continue
                    for (i, _), (text, n_prompt, n_new) in zip(batch, outputs):
                        samples[i].append(text)
                        tokens[i][0] = n_prompt  # the same prompt for each of the n samples
                        tokens[i][1] += n_new
        for i, request in enumerate(requests):
            if results[i] is None:
                texts = [_cut_at_stop(t, request.stop) for t in samples[i]]
                results[i] = Completion(texts=texts, prompt_tokens=tokens[i][0], completion_tokens=tokens[i][1],
                                        stopped=i in stopped)
        return [r for r in results if r is not None]

    def _run_batch(self, prompts: list[str], max_tokens: int, temperature: float, top_p: float,
                   seed: int | None, watch: "_StreamRows | None" = None) -> list[tuple[str, int, int]]:
        """Generate for one batch of rendered prompts: (text, prompt tokens, new tokens) each."""
        import torch

        tok = self.tokenizer
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        device = getattr(self.lm, "device", None) or next(self.lm.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        limit = getattr(self.lm.config, "max_position_embeddings", None)
        width = enc["input_ids"].shape[1]
        if limit is not None and width >= limit:
            raise ValueError(f"prompt of {width} tokens does not fit the model's {limit}-token context")
        if limit is not None:
            max_tokens = min(max_tokens, limit - width)
        kwargs: dict[str, Any] = {"max_new_tokens": max_tokens, "pad_token_id": tok.pad_token_id}
        if temperature and temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
            if seed is not None:
                torch.manual_seed(seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if watch is not None:
            from transformers import StoppingCriteriaList

            watch.start(width, _as_id_set(self.lm.generation_config.eos_token_id) | _as_id_set(tok.eos_token_id))
            kwargs["stopping_criteria"] = StoppingCriteriaList([watch])
        with torch.no_grad():
            out = self.lm.generate(**enc, **kwargs)
        new = out[:, width:]
        eos_ids = _as_id_set(self.lm.generation_config.eos_token_id) | _as_id_set(tok.eos_token_id)
        results = []
        for r, (row, mask) in enumerate(zip(new.tolist(), enc["attention_mask"].tolist())):
            length = len(row)
            if watch is not None and watch.stopped_at[r] is not None:  # stopped on request: cut there
                row = row[: watch.stopped_at[r]]
                length = len(row)
            for j, token in enumerate(row):
                if token in eos_ids:
                    length = j + 1
                    break
            else:
                while length and row[length - 1] == tok.pad_token_id and tok.pad_token_id not in eos_ids:
                    length -= 1
            text = tok.decode(row[:length], skip_special_tokens=True)
            results.append((text, int(sum(mask)), length))
        return results


class _Tee:
    """A sink's stop flag, read from the generation thread, with its feeds going through ``feed``."""

    def __init__(self, sink: StreamSink, feed: Callable[[str], None]) -> None:
        self.sink = sink
        self.feed = feed

    @property
    def stop_requested(self) -> bool:
        return self.sink.stop_requested


class _StreamRows:
    """A transformers stopping criterion that streams: after each generated token it sends every row's
    new text to that row's sink (on the event loop's thread) and ends the rows whose sink asks to stop.
    ``stopped_at[r]`` is the number of tokens row ``r`` had generated when it was stopped (None: it was
    not stopped on request)."""

    def __init__(self, tokenizer: Any, sinks: list[StreamSink], loop: asyncio.AbstractEventLoop) -> None:
        self.tokenizer = tokenizer
        self.sinks = sinks
        self.loop = loop
        self.sent = [""] * len(sinks)
        self.stopped_at: list[int | None] = [None] * len(sinks)
        self.ended = [False] * len(sinks)
        self.width = 0
        self.eos: set[int] = set()

    def start(self, width: int, eos: set[int]) -> None:
        self.width, self.eos = width, eos

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = []
        for r, sink in enumerate(self.sinks):
            if self.ended[r]:
                done.append(True)
                continue
            row = input_ids[r, self.width:].tolist()
            ended = False
            for j, token in enumerate(row):
                if token in self.eos:
                    row, ended = row[: j + 1], True
                    break
            text = self.tokenizer.decode(row, skip_special_tokens=True).rstrip("\ufffd")  # a split character
            if len(text) > len(self.sent[r]) and text.startswith(self.sent[r]):
                self.loop.call_soon_threadsafe(sink.feed, text[len(self.sent[r]):])
                self.sent[r] = text
            if sink.stop_requested and not ended:
                self.stopped_at[r] = len(row)
                ended = True
            self.ended[r] = ended
            done.append(ended)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _as_id_set(value: Any) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, (list, tuple, set)):
        return {int(v) for v in value}
    return {int(value)}


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = len(text)
    for s in stop:
        if s:
            j = text.find(s)
            if j != -1:
                cut = min(cut, j)
    return text[:cut]
