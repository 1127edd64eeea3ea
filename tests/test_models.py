"""rlkd.models: the tokenizer rlkd builds keeps the reasoning tags through decoding and reloading; a model
named by a .gguf file that cannot be used is a one-line error naming the file."""

from __future__ import annotations

import sys

import pytest
from test_backends import parse

from rlkd.cli.options import backend_from_args
from rlkd.cli import CliError, main
from rlkd.models import TAG_TOKENS, ModelFileError, build_tokenizer, load_tokenizer, resolve_model

TEXT = "<think>\nx = 2\n</think>\n<answer>\n\\boxed{2}\n</answer>"


def test_tags_are_single_ordinary_tokens_after_save_and_reload(tmp_path):
    build_tokenizer(["x = 2"], 300).save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    for tag in TAG_TOKENS:
        ids = tok.encode(tag, add_special_tokens=False)
        assert len(ids) == 1, tag
        assert tok.convert_ids_to_tokens(ids) == [tag]
    assert set(TAG_TOKENS).isdisjoint(tok.all_special_tokens)
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|pad|>", "<|im_start|>")
    assert tok.padding_side == "left"


def test_decode_skipping_special_tokens_keeps_tags_and_drops_chat_markers(tmp_path):
    build_tokenizer(["x = 2"], 300).save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    ids = tok(TEXT + "<|im_end|><|pad|><|pad|>", add_special_tokens=False)["input_ids"]
    assert ids[-3:] == [tok.eos_token_id, tok.pad_token_id, tok.pad_token_id]
    assert tok.decode(ids, skip_special_tokens=True) == TEXT
    assert tok.decode(ids) == TEXT + "<|im_end|><|pad|><|pad|>"


def test_a_tag_inside_text_is_split_out_as_its_token():
    tok = build_tokenizer(["x = 2"], 300)
    ids = tok("so x<answer>2", add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<answer>") in ids
    assert tok.decode(ids, skip_special_tokens=True) == "so x<answer>2"


# --------------------------------------------------------------------------------------------------
# Models named by a .gguf file: the errors (the real file is converted in tests/test_real_model.py)


def test_a_name_that_is_not_a_gguf_file_is_returned_as_it_is(tmp_path):
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model(tmp_path) == str(tmp_path)


def test_gguf_file_errors_are_one_line_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RLKD_MODEL_CACHE", str(tmp_path / "cache"))
    missing = tmp_path / "missing.gguf"
    with pytest.raises(ModelFileError) as caught:
        resolve_model(missing)
    assert str(caught.value) == f"{missing}: no such file"
    zipped = tmp_path / "model.gguf"
    zipped.write_bytes(b"PK\x03\x04 not a gguf file")
    with pytest.raises(ModelFileError) as caught:
        resolve_model(str(zipped))
    assert str(caught.value) == f"{zipped}: not a GGUF file (it starts with b'PK\\x03\\x04', not b'GGUF')"
    looks_right = tmp_path / "other.GGUF"
    looks_right.write_bytes(b"GGUF\x03\x00\x00\x00")
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if the gguf package were not installed
    with pytest.raises(ModelFileError) as caught:
        resolve_model(looks_right)
    assert str(caught.value) == f"{looks_right}: reading GGUF files needs the 'gguf' package: pip install gguf"
    assert not (tmp_path / "cache").exists()  # nothing half-converted was left behind


def test_a_gguf_file_transformers_cannot_load_is_a_clear_error(tmp_path, monkeypatch):
    """A real GGUF file (written with the gguf package) of an architecture transformers does not read."""
    gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install gguf)")
    import numpy as np

    path = tmp_path / "toy.gguf"
    writer = gguf.GGUFWriter(str(path), "rlkd-toy")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    monkeypatch.setenv("RLKD_MODEL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelFileError) as caught:
        resolve_model(path)
    message = str(caught.value)
    assert message.startswith(f"{path.resolve()}: not a GGUF model transformers can load (") and "\n" not in message
    assert "rlkd-toy" in message  # transformers names the architecture it does not support
    assert not any((tmp_path / "cache").glob("*/config.json"))


def test_convert_command_and_local_model_option_report_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_text("hello", encoding="utf-8")
    assert main(["model", "convert", str(bad), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (f"rlkd model: error: {bad}: not a GGUF file (it starts with b'hell', "
                                       "not b'GGUF')\n")
    assert not (tmp_path / "out").exists()
    assert main(["model"]) == 2
    assert "choose an action: rlkd model convert FILE.gguf OUT_DIR" in capsys.readouterr().err
    with pytest.raises(CliError) as caught:
        backend_from_args(parse(["--local-model", str(tmp_path / "absent.gguf")]))
    assert str(caught.value) == (f"--local-model {tmp_path / 'absent.gguf'}: cannot load: "
                                 f"{tmp_path / 'absent.gguf'}: no such file")


def test_training_preflight_takes_a_gguf_file_as_the_model(tmp_path):
    from rlkd.config import SFTJob
    from rlkd.train import preflight

    present, absent = tmp_path / "student.gguf", tmp_path / "absent.gguf"
    present.write_bytes(b"GGUF\x03\x00\x00\x00")
    lines = {}
    for path in (present, absent):
        job = SFTJob(model=str(path), output_dir=str(tmp_path / "out"))
        job.data.path = str(tmp_path / "data.jsonl")
        lines[path] = [line for line in preflight(job).lines if line[1].startswith("model = ")]
    assert lines[present] == [("ok", f"model = {present}: GGUF file found (converted once into a cached folder "
                                     "when it loads)")]
    assert lines[absent] == [("missing", f"model = {absent}: no such file here")]
