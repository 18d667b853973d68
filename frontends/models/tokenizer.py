"""Tokenizers: a checkpoint's tokenizer for decoding, and the BPE trainer for training.

Decoding reads every checkpoint's tokenizer (the shipped model's included)
through ``transformers.AutoTokenizer`` (:func:`load_tokenizer`, wrapped in
:class:`CheckpointTokenizer`, which adds the chat template and the special ids
the runtime needs). The rest of this module trains the shipped model's
tokenizer (:class:`Tokenizer` is the training side's view of it).

The trained tokenizer is a byte-level BPE.

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

import os
from typing import Any

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

BOS, EOS, PAD, MASK = "<|bos|>", "<|eos|>", "<|pad|>", "<|mask|>"
SPECIAL_TOKENS = (BOS, EOS, PAD, MASK)  # ids 0, 1, 2, 3
LINE_SPLIT_PATTERN = r"[^\n]*\n|[^\n]+"
DEFAULT_VOCAB_SIZE = 4096
# The shipped model completes Python source: its chat template joins the turns' contents (a system message
# becomes a comment line), so the reply continues the user's code.
CODE_CHAT_TEMPLATE = ("{%- for m in messages -%}{%- if m['role'] == 'system' -%}{{ '# ' + m['content'] + '\\n' }}"
                      "{%- else -%}{{ m['content'] }}{%- endif -%}{%- endfor -%}")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


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
        "chat_template": CODE_CHAT_TEMPLATE,
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


# ----------------------------------------------------------------------------- a checkpoint's tokenizer
def has_tokenizer(model_dir: str | os.PathLike[str]) -> bool:
    """Whether ``model_dir`` holds tokenizer files (``tokenizer.json``, ``tokenizer_config.json``, ...)."""
    return any((Path(model_dir) / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(model_dir: str | os.PathLike[str]) -> "CheckpointTokenizer":
    """A checkpoint's tokenizer through ``transformers.AutoTokenizer``.

    Parameters
    ----------
    model_dir : str or Path
        The checkpoint directory (its ``tokenizer.json`` / ``tokenizer_config.json``;
        a ``chat_template.jinja`` there is picked up too).

    Returns
    -------
    CheckpointTokenizer

    Raises
    ------
    ValueError
        When ``model_dir`` has no tokenizer files or transformers cannot read them.
    """
    import transformers

    root = Path(model_dir)
    if not has_tokenizer(root):
        raise ValueError(f"tokenizer: expected one of {TOKENIZER_FILES} in {root}, found none")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # model_type checks do not concern the tokenizer
    try:
        hf = transformers.AutoTokenizer.from_pretrained(str(root))
    except Exception as e:  # transformers raises many types for unreadable tokenizers
        raise ValueError(f"tokenizer: transformers.AutoTokenizer could not read {root} ({type(e).__name__}: {e})") \
            from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    return CheckpointTokenizer(hf, str(root))


class CheckpointTokenizer:
    """A ``transformers`` tokenizer with the runtime's interface (encode, decode, chat).

    Parameters
    ----------
    hf : transformers.PreTrainedTokenizerBase
        The tokenizer ``AutoTokenizer`` read from the checkpoint.
    source : str
        Where it came from, quoted in errors.
    """

    def __init__(self, hf: Any, source: str = "<tokenizer>") -> None:
        self.hf = hf
        self.source = source

    @property
    def vocab_size(self) -> int:
        """Number of token ids (added tokens included)."""
        return len(self.hf)

    @property
    def eos_token_id(self) -> int | None:
        """The tokenizer's EOS id (``eos_token`` of its config), if any."""
        return self.hf.eos_token_id

    @property
    def mask_token_id(self) -> int | None:
        """The tokenizer's mask id (``mask_token`` of its config), if any."""
        return self.hf.mask_token_id

    @property
    def end_think_token_id(self) -> int | None:
        """The id of the end-of-thinking token ``</think>`` if it is an added token, else ``None``."""
        for tid, added in self.hf.added_tokens_decoder.items():
            if added.content == "</think>":
                return int(tid)
        return None

    @property
    def chat_template(self) -> str | None:
        """The checkpoint's chat template (Jinja), or ``None``."""
        return self.hf.chat_template

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (with the tokenizer's own BOS convention unless told otherwise)."""
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """Text of token ids (``skip_special`` drops special tokens)."""
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special,
                              clean_up_tokenization_spaces=False)

    def chat_text(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True,
                  **template_args: Any) -> str:
        """The prompt text of a conversation, rendered by the checkpoint's chat template.

        Parameters
        ----------
        messages : sequence of dict
            ``[{"role": "user", "content": "..."}, ...]``.
        add_generation_prompt : bool
            End with the template's opening of an assistant turn.
        **template_args
            Passed to the template (e.g. ``enable_thinking=False``).

        Raises
        ------
        ValueError
            No chat template in the checkpoint, or malformed messages.
        """
        if not self.chat_template:
            raise ValueError(f"chat: the tokenizer of {self.source} has no chat template (expected 'chat_template' "
                             f"in tokenizer_config.json or a chat_template.jinja file); pass a plain prompt instead")
        check_messages(messages, "chat")
        return self.hf.apply_chat_template(list(messages), tokenize=False,
                                           add_generation_prompt=add_generation_prompt, **template_args)

    def encode_chat(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True,
                    **template_args: Any) -> list[int]:
        """Token ids of :meth:`chat_text` (the template writes its own special tokens)."""
        return self.encode(self.chat_text(messages, add_generation_prompt, **template_args), add_special_tokens=False)

    def __len__(self) -> int:
        return self.vocab_size


def check_messages(messages: Any, where: str) -> None:
    """Raise ``ValueError`` unless ``messages`` is a non-empty list of ``{"role": str, "content": str}``."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"{where}: messages: expected a non-empty list of {{'role', 'content'}} objects, "
                         f"found {type(messages).__name__} {messages!r:.60}")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ValueError(f"{where}: messages[{i}]: expected {{'role': str, 'content': str}}, found {m!r:.80}")
