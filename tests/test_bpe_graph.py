import pytest
import tensorflow as tf
from reference_tokenizers import tiktoken_gpt2
from test_bpe import HARD_TEXT

from tfx_gpt2.text.bpe import load_tokenizer
from tfx_gpt2.text.bpe_graph import GraphBPETokenizer

EDGE_CASES = [
    HARD_TEXT, "", " ", "a", "\n\n\n", "x\t\tHello", "x\t\t\tHello", "a \n's", " 's", "Hello   ", "  Hello",
    "\u2003\u2003word", "\u00a0x", "\n Hello", "a <|endoftext|> b<|endoftext|>", "<|endoftext|>", "12,345.6789",
    "''''", "don't 've 'll", "tab\tend\t", "\r\n\r\nwindows",
]


@pytest.fixture(scope="module")
def graph_tokenizer():
    return GraphBPETokenizer(load_tokenizer("gpt2"))


def test_matches_tiktoken_on_edge_cases(graph_tokenizer):
    ref = tiktoken_gpt2()
    got = graph_tokenizer.encode(tf.constant(EDGE_CASES)).to_list()
    for text, ids in zip(EDGE_CASES, got):
        assert ids == ref.encode(text, allowed_special="all"), repr(text)


def test_matches_tiktoken_on_corpus_documents(graph_tokenizer, corpus_text):
    docs = corpus_text.split("<|endoftext|>")[:12]
    ref = tiktoken_gpt2()
    got = graph_tokenizer.encode(tf.constant(docs)).to_list()
    assert got == [ref.encode(d) for d in docs]


def test_decode_round_trips(graph_tokenizer):
    ids = graph_tokenizer.encode(tf.constant(EDGE_CASES))
    assert [t.decode("utf-8") for t in graph_tokenizer.decode(ids).numpy()] == EDGE_CASES


def test_user_special_tokens(tokenizer):
    g = GraphBPETokenizer(load_tokenizer("gpt2", special_tokens=["<|dialogue|>"]))
    assert g.encode(tf.constant(["<|dialogue|>Hi"])).to_list() == [[50257, 17250]]
