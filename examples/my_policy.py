"""A decode policy in a file, for ``graphrt generate --policy examples/my_policy.py``.

Greedy or sampled autoregressive decoding declared with the builder (the README's
example). ``graphrt`` reads the module-level ``policy``.
"""

from graphrt import GraphBuilder, Policy
from graphrt.library import ban_mask, decode_inputs, sample_tokens


def build_ar(config):
    """One causal forward per token after a causal prefill."""
    b = GraphBuilder("my_ar")
    io = decode_inputs(b)                                   # prompt, cache, seed, stream, temperature, top_k, top_p
    logits, cache = b.forward(io.cache, io.prompt, b.arange_like(io.prompt, 0), attention="causal")
    tok = sample_tokens(b, ban_mask(b, logits[-1], config.banned_token_id), b.size(io.prompt), io)
    done = b.emit(tok.unsqueeze())

    def step(cache, tok, pos):                              # one decode cycle, a loop region
        logits, cache = b.forward(cache, tok.unsqueeze(), pos.unsqueeze(), attention="causal")
        nxt = sample_tokens(b, ban_mask(b, logits[0], config.banned_token_id), pos + 1, io)
        return ~b.emit(nxt.unsqueeze()), cache, nxt, pos + 1

    b.loop(~done, [cache, tok, b.size(io.prompt)], step)
    return b.build()


policy = Policy("my-ar", build_ar)
