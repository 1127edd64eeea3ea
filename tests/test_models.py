"""rlkd.models: the tokenizer rlkd builds keeps the reasoning tags through decoding and reloading."""

from __future__ import annotations

from rlkd.models import TAG_TOKENS, build_tokenizer, load_tokenizer

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
