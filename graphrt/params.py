"""Generation parameters and results."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GenerationParams:
    """Per-request generation parameters (validated on construction).

    Attributes
    ----------
    max_new_tokens:
        Token budget (> 0). The last block or cycle is decoded in full and its
        forwards counted; the output is cut at the budget.
    min_new_tokens:
        Stops (EOS, stop ids, stop strings) are ignored before this many tokens.
    temperature:
        0 is greedy; > 0 samples with Gumbel-max from counter-based noise.
    top_k, top_p:
        Filters applied after temperature (0 / 1.0 disable them).
    seed, stream:
        Key of the counter-based noise: the same (seed, stream) gives the same draws
        at the same positions, whatever the batch or the mode.
    stop_token_ids, stop_strings:
        The output ends at the first of them (a stop id is kept in ``tokens``; a
        stop string is cut from ``text`` and the tokens end with the one completing it).
    ignore_eos:
        Do not treat the model's EOS as a stop.
    logprobs:
        Return the causal log-probability of every emitted token.
    thinking_budget, end_think_token_id:
        After ``thinking_budget`` generated tokens without ``end_think_token_id``,
        that token is forced at the next position (both or neither).
    """

    max_new_tokens: int = 64
    min_new_tokens: int = 0
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stream: int = 0
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    thinking_budget: int | None = None
    end_think_token_id: int | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, what: str, expected: str, found: object) -> None:
            if not ok:
                raise ValueError(f"GenerationParams.{what}: expected {expected}, found {found!r}")

        need(isinstance(self.max_new_tokens, int) and self.max_new_tokens > 0, "max_new_tokens", "an int > 0",
             self.max_new_tokens)
        need(isinstance(self.min_new_tokens, int) and 0 <= self.min_new_tokens <= self.max_new_tokens,
             "min_new_tokens", "an int in [0, max_new_tokens]", self.min_new_tokens)
        need(isinstance(self.temperature, (int, float)) and self.temperature >= 0, "temperature", "a number >= 0",
             self.temperature)
        need(isinstance(self.top_k, int) and self.top_k >= 0, "top_k", "an int >= 0 (0 disables)", self.top_k)
        need(isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1, "top_p", "a number in (0, 1]", self.top_p)
        need(isinstance(self.seed, int), "seed", "an int", self.seed)
        need(isinstance(self.stream, int), "stream", "an int", self.stream)
        need(all(isinstance(t, int) for t in self.stop_token_ids), "stop_token_ids", "ints", self.stop_token_ids)
        need(all(isinstance(s, str) and s for s in self.stop_strings), "stop_strings", "non-empty strings",
             self.stop_strings)
        need((self.thinking_budget is None) == (self.end_think_token_id is None), "thinking_budget",
             "to be given together with end_think_token_id", self.thinking_budget)
        need(self.thinking_budget is None or (isinstance(self.thinking_budget, int) and self.thinking_budget >= 0),
             "thinking_budget", "an int >= 0", self.thinking_budget)
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))


@dataclass
class GenerationResult:
    """What one request produced, with its statistics.

    ``tpf`` is tokens per forward: output tokens / backbone forwards of this
    request, prefill included (a forward shared with other requests counts for
    each of them). ``emit_sizes`` lists how many tokens each ``emit`` handed out
    (for self-speculation: accepted drafts + 1 per cycle). ``cycle_info`` lists what the
    policy reported with each emit that carried an ``info`` (adaptive policies: the draft
    source, the verified width and the accepted drafts of each cycle; empty for the others).
    """

    tokens: list[int]
    text: str | None
    forwards: int
    seconds: float
    finish_reason: str
    mode: str = ""
    prompt_tokens: int = 0
    emit_sizes: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    cycle_info: list[tuple[int, ...]] = field(default_factory=list)

    @property
    def tpf(self) -> float:
        """Tokens per forward."""
        return len(self.tokens) / self.forwards if self.forwards else 0.0

    def to_record(self) -> dict[str, object]:
        """JSON-ready dict (the CLI's ``--json`` record)."""
        return {
            "mode": self.mode, "tokens": self.tokens, "text": self.text, "forwards": self.forwards,
            "tpf": self.tpf, "seconds": self.seconds, "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens, "emit_sizes": self.emit_sizes, "logprobs": self.logprobs,
            **({"cycle_info": [list(c) for c in self.cycle_info]} if self.cycle_info else {}),
        }
