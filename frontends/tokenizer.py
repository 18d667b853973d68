"""Byte-level BPE tokenizer for the shipped model, and the runtime's wrapper.

Pre-tokenization splits the text into lines first (each piece is one line
*including* its newline; a blank line is a piece of its own), then applies
the GPT-2 byte-level regex inside each line. So every newline ends a token
and a line's indentation starts the next line's first token: the tokens of a
prompt cut at a line boundary are a prefix of the tokens of the whole text,
whatever the next line holds (indentation, or a blank line).

The tokenizer is saved as ``tokenizer.json`` plus ``tokenizer_config.json``
and ``special_tokens_map.json``, so ``transformers.AutoTokenizer`` /
``PreTrainedTokenizerFast`` load it from the model directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

BOS, EOS, PAD, MASK = "<|bos|>", "<|eos|>", "<|pad|>", "<|mask|>"
SPECIAL_TOKENS = (BOS, EOS, PAD, MASK)  # ids 0, 1, 2, 3
LINE_SPLIT_PATTERN = r"[^\n]*\n|[^\n]+"
DEFAULT_VOCAB_SIZE = 4096


def build_untrained(vocab_size: int = DEFAULT_VOCAB_SIZE) -> tuple[HFTokenizer, trainers.BpeTrainer]:
    """An empty byte-level BPE tokenizer with its pipeline, and its trainer.

    Parameters
    ----------
    vocab_size : int
        Total vocabulary size, special tokens included.

    Returns
    -------
    tuple[tokenizers.Tokenizer, tokenizers.trainers.BpeTrainer]
        The tokenizer (line split, then byte-level GPT-2 regex; byte-level
        decoder; no normalizer, no post-processor) and a trainer whose first
        ids are the special tokens ``bos, eos, pad, mask``.
    """
    tok = HFTokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LINE_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return tok, trainer


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> HFTokenizer:
    """Train the BPE tokenizer.

    Parameters
    ----------
    texts : Iterable[str]
        Training documents (the training split's files).
    vocab_size : int
        Total vocabulary size, special tokens included.

    Returns
    -------
    tokenizers.Tokenizer
        The trained tokenizer.

    Raises
    ------
    ValueError
        If ``vocab_size`` cannot hold the special tokens and the 256 bytes.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"train_tokenizer: expected vocab_size >= {256 + len(SPECIAL_TOKENS)}, found {vocab_size}"
        )
    tok, trainer = build_untrained(vocab_size)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok: HFTokenizer, out_dir: str | Path, model_max_length: int = 1024) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``.

    Parameters
    ----------
    tok : tokenizers.Tokenizer
        A trained tokenizer.
    out_dir : str or Path
        Model directory (created if missing).
    model_max_length : int
        Recorded in ``tokenizer_config.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    added = {
        str(ids[t]): {
            "content": t, "lstrip": False, "normalized": False,
            "rstrip": False, "single_word": False, "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "mask_token": MASK,
        "added_tokens_decoder": added,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
        "model_max_length": model_max_length,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "mask_token": MASK}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


class Tokenizer:
    """The runtime's tokenizer: encode/decode and the special ids.

    Parameters
    ----------
    hf : tokenizers.Tokenizer
        A tokenizer with the special tokens ``<|bos|>``, ``<|eos|>``,
        ``<|pad|>``, ``<|mask|>``.

    Raises
    ------
    ValueError
        If a special token is missing from the vocabulary.
    """

    def __init__(self, hf: HFTokenizer) -> None:
        self.hf = hf
        ids = {}
        for t in SPECIAL_TOKENS:
            i = hf.token_to_id(t)
            if i is None:
                raise ValueError(f"Tokenizer: expected special token {t!r} in the vocabulary, found none")
            ids[t] = i
        self.bos_id: int = ids[BOS]
        self.eos_id: int = ids[EOS]
        self.pad_id: int = ids[PAD]
        self.mask_id: int = ids[MASK]

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "Tokenizer":
        """Load ``tokenizer.json`` from a model directory.

        Parameters
        ----------
        model_dir : str or Path
            Directory holding ``tokenizer.json``.

        Returns
        -------
        Tokenizer

        Raises
        ------
        FileNotFoundError
            If ``model_dir/tokenizer.json`` does not exist.
        """
        path = Path(model_dir) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"Tokenizer.from_dir: expected {path}, found no such file")
        return cls(HFTokenizer.from_file(str(path)))

    @property
    def vocab_size(self) -> int:
        """Number of token ids (special tokens included)."""
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> dict[str, int]:
        """``{"bos": id, "eos": id, "pad": id, "mask": id}``."""
        return {"bos": self.bos_id, "eos": self.eos_id, "pad": self.pad_id, "mask": self.mask_id}

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of a text.

        Parameters
        ----------
        text : str
            Any text.
        add_bos, add_eos : bool
            Prepend ``bos`` / append ``eos``.

        Returns
        -------
        list[int]
        """
        ids = self.hf.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of many texts (multi-threaded; no special tokens added).

        Parameters
        ----------
        texts : Sequence[str]

        Returns
        -------
        list[list[int]]
        """
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """Text of token ids.

        Parameters
        ----------
        ids : Sequence[int]
        skip_special : bool
            Drop bos/eos/pad/mask instead of printing them.

        Returns
        -------
        str
            ``decode(encode(x)) == x`` for every text ``x``.
        """
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def __len__(self) -> int:
        return self.vocab_size
