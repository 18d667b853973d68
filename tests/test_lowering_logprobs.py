"""Log-probabilities only when asked for: the lowered step skips the nodes only they need.

A request without ``logprobs`` runs generated code that leaves out every node read only by
``emit``'s log-probs (:func:`graphrt.analysis.logprob_only_nodes`); its tokens, forwards and
emit sizes must not change, and a request that asks for them in the same session still gets
the interpreter's log-probs bit for bit (float64, T = 0 and T > 0 with the same seed).
"""

from __future__ import annotations

import pytest
import torch

import graphrt
from support.decode_oracles import tiny_model
from graphrt import executor
from graphrt.analysis import logprob_only_nodes
from graphrt.library import token_logprobs
from graphrt.types import tensor
from support.pass_programs import run_session, same

MODES = ("ar", "diffusion", "self-spec", "self-spec-quadratic")


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=5)


@pytest.mark.parametrize("mode", MODES)
def test_every_builtin_policy_has_logprob_only_nodes(model, mode: str) -> None:
    lowered = graphrt.compile(mode, model).lowered(torch.device("cpu"))
    skipped = logprob_only_nodes(lowered.graph)
    ops = {n.op for n in lowered.graph.walk() if n.name in skipped}
    assert "log_softmax" in ops and not ops & {"forward", "emit", "commit", "loop", "sample"}
    assert lowered.code.count("if _logprobs else None") == len(skipped)


def test_mixed_session_with_and_without_logprobs_equals_the_interpreter(model, monkeypatch) -> None:
    reqs = [(mode, [9 + i, 30, 2 * i + 1], dict(max_new_tokens=10 + i, temperature=0.8 * (i % 2), seed=i,
                                               ignore_eos=True, logprobs=i % 3 == 0))
            for i, mode in enumerate(MODES + MODES)]
    got = run_session(model, monkeypatch, False, reqs)
    want = run_session(model, monkeypatch, True, reqs)
    for (_, _, params), g, w in zip(reqs, got, want):
        assert (g.tokens, g.forwards, g.emit_sizes, g.finish_reason) == (w.tokens, w.forwards, w.emit_sizes,
                                                                         w.finish_reason)
        if params["logprobs"]:
            assert same([float(x) for x in g.logprobs], [float(x) for x in w.logprobs])
        else:
            assert g.logprobs is None and w.logprobs is None


@pytest.mark.parametrize("logprobs", [False, True])
def test_skipped_nodes_run_exactly_when_logprobs_are_asked_for(model, monkeypatch, logprobs: bool) -> None:
    ran: set[str] = set()
    original = executor.Arena.run

    def spy(self, ins, args):
        ran.add(ins.node.name)
        return original(self, ins, args)

    monkeypatch.setattr(executor.Arena, "run", spy)
    run_session(model, monkeypatch, False, [("diffusion", [4, 5, 6], dict(max_new_tokens=12, logprobs=logprobs))])
    skipped = logprob_only_nodes(graphrt.compile("diffusion", model).lowered(torch.device("cpu")).graph)
    planned_skipped = {n for n in skipped if "log_softmax" in n or "clean" in n}
    assert planned_skipped and (planned_skipped <= ran if logprobs else not ran & skipped)


def test_a_logprob_that_also_decides_a_token_is_not_skipped() -> None:
    """A log-prob read by anything but emit's log-probs input (here: the emitted tokens) stays computed."""
    b = graphrt.GraphBuilder("lp_used")
    logits = b.input("logits", tensor("float", "V"))
    tok = b.argmax(logits)
    lp = token_logprobs(b, logits, tok)
    b.emit(b.cast(lp > -1.0, dtype="i64").unsqueeze(), 1, lp.unsqueeze())
    g = b.build()
    assert {n.op for n in g.walk() if n.name in logprob_only_nodes(g)} == {"unsqueeze"}  # only the emit's view

    b = graphrt.GraphBuilder("lp_unused")
    logits = b.input("logits", tensor("float", "V"))
    tok = b.argmax(logits)
    b.emit(tok.unsqueeze(), 1, token_logprobs(b, logits, tok).unsqueeze())
    g = b.build()
    assert {n.op for n in g.walk() if n.name in logprob_only_nodes(g)} == {"clean", "log_softmax", "gather",
                                                                            "unsqueeze"}
