"""The training data: the corpus as token streams, and windows of them.

:func:`prepare_data` reads the standard library's source (:mod:`.corpus`), trains the tokenizer
(or takes a given one) and caches each split's token stream under the run's ``data/``;
:func:`token_windows` cuts training and held-out windows from a stream.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import corpus as corpus_mod
from ..models.tokenizer import Tokenizer, save_tokenizer, train_tokenizer


def prepare_data(out_dir: str | Path, vocab_size: int, tokenizer_dir: str | Path | None = None,
                 tokenizer: Any = None) -> tuple[Tokenizer, np.ndarray, np.ndarray, dict[str, Any]]:
    """Corpus, tokenizer and token streams (cached under ``out_dir``).

    Each split's stream is the concatenation, in corpus order, of
    ``[bos] + encode(file) + [eos]`` for its files.

    Parameters
    ----------
    out_dir : str or Path
        Run directory; the tokenizer goes to ``out_dir/tokenizer`` and the
        streams to ``out_dir/data`` (reused when corpus and tokenizer match).
    vocab_size : int
        BPE vocabulary size when a tokenizer has to be trained.
    tokenizer_dir : str or Path, optional
        Use this trained tokenizer instead of training one.
    tokenizer : optional
        Use this tokenizer object (a base model's: ``hf``, ``encode_batch``, ``bos_id``,
        ``eos_id``, ``vocab_size``), e.g. a :class:`~graphrt.frontends.training.drafter.BaseTokenizer`.

    Returns
    -------
    tuple
        ``(tokenizer, train_stream, heldout_stream, corpus_info)``; the streams
        are ``uint16`` arrays.

    Raises
    ------
    ValueError
        If the tokenizer's vocabulary does not fit in ``uint16``.
    """
    out = Path(out_dir)
    files = corpus_mod.load_corpus()
    info = corpus_mod.corpus_info(files)
    tok_dir = out / "tokenizer"
    if tokenizer is not None:
        tok = tokenizer
        save_tokenizer(tok.hf, tok_dir)
    elif tokenizer_dir is not None:
        tok = Tokenizer.from_dir(tokenizer_dir)
        save_tokenizer(tok.hf, tok_dir)
    elif (tok_dir / "tokenizer.json").is_file():
        tok = Tokenizer.from_dir(tok_dir)
    else:
        hf = train_tokenizer((f.text for f in corpus_mod.split_texts(files, "train")), vocab_size)
        save_tokenizer(hf, tok_dir)
        tok = Tokenizer.from_dir(tok_dir)
    if tok.vocab_size > 65535:
        raise ValueError(f"prepare_data: expected a vocabulary < 65536 (uint16 streams), found {tok.vocab_size}")
    tok_hash = hashlib.sha256((tok_dir / "tokenizer.json").read_bytes()).hexdigest()
    key = f"{info['sha256']}-{tok_hash}"
    data_dir = out / "data"
    meta_path = data_dir / "meta.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == key:
        train = np.load(data_dir / "train.npy")
        heldout = np.load(data_dir / "heldout.npy")
    else:
        streams = {}
        for split in ("train", "heldout"):
            part = corpus_mod.split_texts(files, split)
            ids = tok.encode_batch([f.text for f in part])
            chunks = [np.asarray([tok.bos_id] + x + [tok.eos_id], dtype=np.uint16) for x in ids]
            streams[split] = np.concatenate(chunks)
        data_dir.mkdir(parents=True, exist_ok=True)
        np.save(data_dir / "train.npy", streams["train"])
        np.save(data_dir / "heldout.npy", streams["heldout"])
        meta_path.write_text(json.dumps({"key": key, "train_tokens": int(streams["train"].size),
                                         "heldout_tokens": int(streams["heldout"].size)}) + "\n")
        train, heldout = streams["train"], streams["heldout"]
    info = dict(info, tokenizer_sha256=tok_hash, train_tokens=int(train.size), heldout_tokens=int(heldout.size))
    return tok, train, heldout, info


def token_windows(stream: np.ndarray, n: int, length: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """``n`` windows of ``length`` tokens from a stream: at random offsets drawn from ``gen``, or evenly
    spaced when ``gen`` is ``None`` (the held-out evaluation set; deterministic).

    Parameters
    ----------
    stream : np.ndarray
        Token stream (1-D).
    n, length : int
        Number and length of windows.
    gen : torch.Generator, optional
        Source of random offsets.

    Returns
    -------
    torch.Tensor
        ``[n, length]`` int64.

    Raises
    ------
    ValueError
        If the stream is shorter than ``length + 1``.
    """
    if stream.size <= length:
        raise ValueError(f"token_windows: expected a stream longer than {length} tokens, found {stream.size}")
    if gen is None:
        starts = np.linspace(0, stream.size - length - 1, n).astype(np.int64)
    else:
        starts = torch.randint(0, stream.size - length, (n,), generator=gen).numpy()
    return torch.from_numpy(np.stack([stream[s:s + length] for s in starts]).astype(np.int64))
