"""Loading models and tokenizers, and building tiny ones locally.

1. :func:`load_tokenizer` and :func:`load_model` are the one loading path for every model rlkd touches
   (student, GSRM, judge, evaluated model): a hub name or a local folder, through ``AutoTokenizer`` and
   ``AutoModelForCausalLM``. Nothing in rlkd loads weights any other way.
2. :func:`build_tiny_model` makes a byte-level BPE tokenizer (with a chat template and the ``<think>`` /
   ``<answer>`` tags as single tokens) and a randomly initialised Llama model of a few million
   parameters, and saves both with ``save_pretrained``. Tests and the CPU demo use it because nothing
   can be downloaded here; the result loads back through the same :func:`load_model` a 7B model uses.
   A Llama config is used because it reloads a custom tokenizer faithfully (a Qwen2 config may swap in
   its own pre-tokenizer on reload).
3. The ``<think>``/``</think>``/``<answer>``/``</answer>`` tags are single *ordinary* added tokens, not
   special ones, as in the Qwen2.5 tokenizers: TRL's GRPO trainer and
   :class:`rlkd.backends.TransformersBackend` decode with ``skip_special_tokens=True``, which would drop
   special tags, and the format and tag-count rewards could then never be earned. Only ``<|pad|>``,
   ``<|im_start|>`` and ``<|im_end|>`` are special.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]  # dropped by decode(skip_special_tokens=True)
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]  # single tokens that survive that decode

_DEFAULT_CORPUS = [
    "<think>\nFirst I find x. Then y follows from x. So the answer is 4.\n</think>\n<answer>\\boxed{4}</answer>",
    "[Meta-reasoning 1]: We need x first.\n[Sub-problem 1]: What is x?\n[Answer 1]: 2",
    "Solve the problem. Put the final answer in \\boxed{}. The value of 3 + 4 = 7, and 12 / 3 = 4.",
    "Are these two devoted to solving the same problem? Answer yes or no. yes no Yes No",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 +-*/=()[]{}<>.,:;!?'\"\\_^|",
]


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512):
    """Train a byte-level BPE tokenizer (under a second) and wrap it as a transformers tokenizer.

    ``<|pad|>``, ``<|im_start|>`` and ``<|im_end|>`` are special tokens (ids 0-2); the four reasoning
    tags (:data:`TAG_TOKENS`) are appended after the BPE vocabulary as ordinary single tokens, so a decode
    with ``skip_special_tokens=True`` keeps them.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(corpus) if corpus is not None else []
    texts += _DEFAULT_CORPUS
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    # the trainer marks every token it is given as special, so the tags are added after training
    bpe.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in TAG_TOKENS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_model(
    path: str | os.PathLike,
    corpus: Iterable[str] | None = None,
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 2048,
    seed: int = 0,
    tokenizer: Any = None,
) -> Path:
    """Build and save a tiny random Llama model and its tokenizer at ``path``; return the path.

    Pass ``tokenizer`` to share one tokenizer between several models (student, GSRM, judge).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tok = tokenizer if tokenizer is not None else build_tokenizer(corpus, vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def load_tokenizer(name_or_path: str | os.PathLike, **kwargs: Any):
    """Load a tokenizer from a hub name or local folder; left padding, a pad token always set."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(name_or_path), **kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(name_or_path: str | os.PathLike, *, device: str | None = None, dtype: str = "auto", **kwargs: Any):
    """Load a causal LM from a hub name or local folder, in eval mode, on ``device`` (default: cuda if
    available, else cpu). ``dtype`` is ``auto``, ``float32``, ``bfloat16`` or ``float16``."""
    import torch
    from transformers import AutoModelForCausalLM

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=torch_dtype, **kwargs)
    return model.to(device).eval()
