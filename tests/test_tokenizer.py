"""The corpus split and the byte-level BPE tokenizer (round trip, newline rule, loaders)."""

from __future__ import annotations

from pathlib import Path

import pytest

from graphrt.frontends.training import corpus
from graphrt.frontends.models.tokenizer import (
    BOS, EOS, MASK, PAD, Tokenizer, save_tokenizer, train_tokenizer,
)

SHIPPED = Path(corpus.__file__).parents[1] / "model"

TRICKY = [
    "",
    "\n",
    "\n\n\n",
    "x",
    "def f(x):\n    return x  \n",
    "class A:\n\tpass\r\n\r\n",
    "s = 'caf\u00e9 \u2603 \U0001f600'\n",
    "    \n        \n",
    "a\n b\n  c\n   d",
    "<|eos|> is text here\n",
]


@pytest.fixture(scope="module")
def files() -> list[corpus.SourceFile]:
    return corpus.load_corpus()


@pytest.fixture(scope="module")
def small_tok(files: list[corpus.SourceFile], tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    texts = [f.text for f in corpus.split_texts(files, "train")[:60]]
    out = tmp_path_factory.mktemp("tok")
    save_tokenizer(train_tokenizer(texts, vocab_size=600), out)
    return Tokenizer.from_dir(out)


# ----------------------------------------------------------------------------- corpus
def test_corpus_order_split_and_hash_are_fixed(files: list[corpus.SourceFile]) -> None:
    paths = [f.path for f in files]
    assert paths == sorted(paths)
    assert not any("site-packages" in p for p in paths)
    assert all(f.split == corpus.split_of(f.path) for f in files)
    held = corpus.split_texts(files, "heldout")
    assert 0 < len(held) < len(files) // 10
    assert not any(corpus.is_test_file(f.path) for f in held)
    assert corpus.split_of("test/test_ast.py") == "train"
    assert corpus.split_of("unittest/test/test_case.py") == "train"
    info = corpus.corpus_info(files)
    assert info["sha256"] == corpus.corpus_sha256(corpus.load_corpus())
    assert info["python_version"].count(".") == 2
    assert info["heldout_files"] == len(held)


def test_split_texts_rejects_unknown_split(files: list[corpus.SourceFile]) -> None:
    with pytest.raises(ValueError, match="expected split 'train' or 'heldout', found 'dev'"):
        corpus.split_texts(files, "dev")


# ----------------------------------------------------------------------------- tokenizer
def test_special_tokens_come_first(small_tok: Tokenizer) -> None:
    assert [small_tok.bos_id, small_tok.eos_id, small_tok.pad_id, small_tok.mask_id] == [0, 1, 2, 3]
    assert small_tok.special_ids == {"bos": 0, "eos": 1, "pad": 2, "mask": 3}
    assert small_tok.decode([small_tok.mask_id]) == MASK
    assert small_tok.encode("x", add_bos=True, add_eos=True)[::len(small_tok.encode("x")) + 1] == [0, 1]


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_tricky(small_tok: Tokenizer, text: str) -> None:
    assert small_tok.decode(small_tok.encode(text)) == text


def test_round_trip_heldout_files(small_tok: Tokenizer, files: list[corpus.SourceFile]) -> None:
    held = corpus.split_texts(files, "heldout")
    ids = small_tok.encode_batch([f.text for f in held])
    for f, x in zip(held, ids):
        assert small_tok.decode(x) == f.text, f.path


def test_newline_ends_every_token(small_tok: Tokenizer, files: list[corpus.SourceFile]) -> None:
    # No vocabulary entry has a newline followed by anything but newlines.
    for i in range(small_tok.vocab_size):
        piece = small_tok.decode([i])
        assert "\n" not in piece.rstrip("\n"), (i, piece)
    # So a prompt cut at a line boundary tokenizes as a prefix of the whole text.
    text = files[0].text
    lines = text.splitlines(keepends=True)
    for cut in (3, 10, 25):
        head = "".join(lines[:cut])
        full_ids, head_ids = small_tok.encode(text), small_tok.encode(head)
        assert full_ids[:len(head_ids)] == head_ids


def test_blank_lines_are_tokens_of_their_own(small_tok: Tokenizer) -> None:
    ids = small_tok.encode("x = 1\n\n\ny = 2\n")
    pieces = [small_tok.decode([i]) for i in ids]
    assert pieces.count("\n") == 4  # each newline ends its own token: a cut prompt never needs "\n\n"


def test_indentation_starts_the_next_token(small_tok: Tokenizer) -> None:
    ids = small_tok.encode("if x:\n        return 1\n")
    pieces = [small_tok.decode([i]) for i in ids]
    nl = pieces.index("\n")
    assert pieces[nl + 1].startswith(" ")  # the indentation opens the next line's first token
    assert "".join(pieces) == "if x:\n        return 1\n"


def test_transformers_loads_the_saved_directory(small_tok: Tokenizer, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    save_tokenizer(small_tok.hf, tmp_path)
    for cls in (transformers.AutoTokenizer, transformers.PreTrainedTokenizerFast):
        t = cls.from_pretrained(str(tmp_path))
        text = "def parse_args(argv):\n    return argv\n"
        assert t.encode(text, add_special_tokens=False) == small_tok.encode(text)
        assert t.decode(small_tok.encode(text)) == text
        assert (t.bos_token, t.eos_token, t.pad_token, t.mask_token) == (BOS, EOS, PAD, MASK)
        assert t.mask_token_id == small_tok.mask_id


def test_from_dir_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


def test_vocab_size_too_small_is_rejected() -> None:
    with pytest.raises(ValueError, match="expected vocab_size >= 260, found 100"):
        train_tokenizer(["x"], vocab_size=100)


def test_shipped_tokenizer_round_trips_the_heldout_split(files: list[corpus.SourceFile]) -> None:
    tok = Tokenizer.from_dir(SHIPPED)
    held = corpus.split_texts(files, "heldout")
    for f, x in zip(held, tok.encode_batch([f.text for f in held])):
        assert tok.decode(x) == f.text, f.path
    for i in range(tok.vocab_size):
        piece = tok.decode([i])
        assert "\n" not in piece.rstrip("\n"), (i, piece)
