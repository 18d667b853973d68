"""Bring your own model: a ``transformers`` causal LM behind graphrt's backbone protocol.

The engine owns the model and its cache; graphrt only calls ``forward(batch)``,
``crop``, ``alloc_rows``/``free_rows``/``free_row_count``, ``cache_length`` and
reads ``config``. To stay short this backbone's "cache" keeps each row's written
tokens and recomputes the prefix on every call (a real engine keeps K/V); what it
must get right is the protocol's meaning: a query sees its row's cached prefix
plus the new tokens ``batch.attention`` allows, and only ``kv_write`` tokens
persist, at slot ``positions``.

Run: ``python examples/transformers_backbone.py [--model DIR] [--mode prompt-lookup]``
(default: a tiny random Llama written by transformers, with its tokenizer).
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import transformers

import graphrt
from graphrt.backbone import BackboneConfig, ForwardBatch


class HFBackbone:
    """A ``transformers`` ``*ForCausalLM`` as a :class:`graphrt.Backbone` (rows of token history)."""

    def __init__(self, model: transformers.PreTrainedModel, max_rows: int, mask_token_id: int) -> None:
        self.model = model.eval()
        c = model.config
        eos = c.eos_token_id[0] if isinstance(c.eos_token_id, list) else c.eos_token_id
        self.config = BackboneConfig(vocab_size=c.vocab_size, max_positions=c.max_position_embeddings,
                                     mask_token_id=mask_token_id, bos_token_id=c.bos_token_id, eos_token_id=eos,
                                     block_size=4)
        self.device = next(model.parameters()).device
        self.rows: dict[int, list[int]] = {}          # row -> cached tokens (slot i holds position i)
        self.free = list(range(max_rows))

    # rows -------------------------------------------------------------------------------
    def alloc_rows(self, n: int) -> list[int]:
        if n > len(self.free):
            raise RuntimeError(f"alloc_rows: {n} rows asked, {len(self.free)} free")
        got, self.free = self.free[:n], self.free[n:]
        self.rows.update({r: [] for r in got})
        return got

    def free_rows(self, rows: list[int]) -> None:
        for r in rows:
            self.rows.pop(r, None)
            self.free.append(r)

    def free_row_count(self) -> int:
        return len(self.free)

    def cache_length(self, row: int) -> int:
        return len(self.rows[row])

    def crop(self, row: int, length: int) -> None:
        del self.rows[row][length:]

    # the forward ----------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        B, L = batch.tokens.shape
        out = torch.zeros(B, L, self.config.vocab_size, dtype=self.model.dtype, device=self.device)
        for b, row in enumerate(batch.rows):
            n = int(batch.valid[b].sum())
            prefix = self.rows[row]
            p = len(prefix)
            tokens = torch.tensor(prefix + batch.tokens[b, :n].tolist(), device=self.device)[None]
            positions = torch.cat([torch.arange(p), batch.positions[b, :n].cpu()]).to(self.device)[None]
            allowed = torch.zeros(p + n, p + n, dtype=torch.bool)
            allowed[:p, :p] = torch.ones(p, p, dtype=torch.bool).tril()     # the prefix, causal
            allowed[p:, :p] = True                                          # new tokens see the whole prefix
            allowed[p:, p:] = batch.attention[b, :n, :n].cpu()             # and each other as told
            mask = torch.zeros(1, 1, p + n, p + n, dtype=self.model.dtype).masked_fill(~allowed, float("-inf"))
            logits = self.model(input_ids=tokens, position_ids=positions, attention_mask=mask.to(self.device)).logits
            out[b, :n] = logits[0, p:]
            for tok, pos, write in zip(batch.tokens[b, :n].tolist(), batch.positions[b, :n].tolist(),
                                       batch.kv_write[b, :n].tolist()):
                if write:                                                   # persist at slot `pos`
                    prefix.extend([0] * (pos + 1 - len(prefix)))
                    prefix[pos] = tok
        return out


def main(argv: list[str] | None = None) -> dict[str, list[int]]:
    """Decode with graphrt over :class:`HFBackbone` and over graphrt's own backbone; returns both outputs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a transformers checkpoint directory (default: a tiny Llama)")
    parser.add_argument("--mode", default="prompt-lookup", choices=("ar", "prompt-lookup", "self-spec-lookup"),
                        help="a mode that needs no drafter (a Llama checkpoint has no mask token)")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args(argv)
    path = args.model
    if path is None:
        from graphrt.frontends.fixtures import write_transformers_checkpoint

        path = write_transformers_checkpoint("llama", tempfile.mkdtemp() + "/llama")
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    backbone = HFBackbone(hf, max_rows=2, mask_token_id=hf.config.vocab_size - 1)
    prompt = tokenizer.encode("Hello! How can I help?")

    session = graphrt.Session(backbone)                                    # the engine's own backbone
    rid = session.add(graphrt.compile(args.mode, backbone), prompt,
                      graphrt.GenerationParams(max_new_tokens=args.max_new_tokens, ignore_eos=True))
    ours = session.run()[rid].tokens
    model = graphrt.load(path, dtype="float32", max_batch=1, max_seq_len=256)
    builtin = graphrt.generate(model, prompt, mode=args.mode, max_new_tokens=args.max_new_tokens,
                               ignore_eos=True).tokens
    print(f"{args.mode} over transformers: {ours}\n{args.mode} over graphrt's backbone: {builtin}")
    return {"transformers": ours, "graphrt": builtin}


if __name__ == "__main__":
    main()
