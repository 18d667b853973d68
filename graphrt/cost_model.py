"""A measured cost model of the backbone: the time of one call from its shape.

A packed call (:class:`~graphrt.backbone.ForwardBatch`) runs ``rows`` requests'
forwards right-padded to the widest, ``width`` tokens each; its time is modelled
as a small linear function of eight features::

    seconds ~= a + b * rows + c * rows * width + t * max(0, rows * width - TILE_TOKENS)
               + d * keys / 1000 + g * spans / 1000 + adapter * (e + f * rows * width)

where ``spans`` is the cached keys the attention reads, the sum over rows of each
row's span (its cached prefix plus the new tokens), ``keys`` the query-key pairs
it scores, ``width * spans``, and ``adapter`` is 1 for a call that runs the model's draft adapter
(a diffusion draft's forward) and 0 otherwise: the adapter's products run over
every token of such a call, so they add a cost per call and one per token.
Attention costs both per key read (each row's K/V, streamed once per call
whatever its width) and per pair: with the pairs alone, a calibration that must
explain 8 rows of one token over 128 keys prices a draft of 8 tokens over 400
at 8 ms more than one token, where it costs 3. The products cost about the same
for up to :data:`TILE_TOKENS` token slots (one pass of the CPU's blocked product
over the weights), then per slot past them. The
coefficients come from a short calibration on the running backbone
(:func:`calibrate`: a few seconds at most), are cached on disk per model, dtype,
device and thread count (:func:`load_cached`, :meth:`CostModel.save`), and are
refreshed by the call times a session observes (:meth:`CostModel.observe`):
every observation updates an exponential moving average of its
``(rows, width, span)`` bucket, and the linear model is refit by weighted least
squares over the calibration points and the bucket averages, so it follows
drift (other load on the machine, a backbone that compiled a bucket) and
generalises to shapes never seen. Both predictors keep a running one-step-ahead
error against the measured times (:attr:`CostModel.errors`); :meth:`CostModel.predict`
answers with the one that has fit the measurements better.

A missing or stale model never blocks anything: :class:`CostModel` starts from
a constant-time prior (every call costs the same: tokens per forward is what
counts) and learns from the calls it observes.

>>> m = CostModel(coef=[1e-3, 1e-4, 2e-5, 1e-4, 0.0, 0.0, 5e-4, 1e-5])
>>> round(m.linear(rows=2, width=8) * 1e3, 3)
2.32
>>> round(m.linear(rows=2, width=8, adapter=True) * 1e3, 3)
2.98
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

__all__ = ["CostModel", "FEATURES", "TILE_TOKENS", "CallShape", "calibrate", "call_shape", "default_cache_dir",
           "for_model", "load_cached", "model_key", "probe_batch", "shape_seconds", "PRIOR"]

FEATURES = ("call", "rows", "tokens", "tokens_past_tile", "kilokeys", "kilospans", "adapter_call",
            "adapter_tokens")
"""The linear model's features: 1, rows, rows * width (padded token slots), the token slots past the first
:data:`TILE_TOKENS`, query-key pairs / 1000, cached keys read / 1000 (the rows' spans), and for a call that runs
the draft adapter 1 and rows * width again (0 and 0 for any other call)."""
TILE_TOKENS = 8
"""Token slots a call's products take for about the cost of one: the CPU's blocked product multiplies up to 8
rows per pass over the weights (``frontends/models/blocked_gemm.py``), so on SmolLM2 a forward of 8 tokens costs
1.1x one of 1 and one of 16 tokens 1.4x. A cost linear in the tokens alone, fitted on 1 and 16, priced an
8-token draft at 1.6x a step. Where a call's cost is linear in its tokens throughout, the fit gives the feature
no weight."""
PRIOR = (1e-2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
"""Coefficients before any measurement: every call costs 10 ms (only the number of calls counts)."""
FORMAT = 3
"""Version of the on-disk format (1: four features, without the spans and the adapter; 2: seven, without the
tokens past the tile)."""


@dataclass(frozen=True)
class CallShape:
    """The shape of one packed backbone call.

    Attributes
    ----------
    rows:
        Requests in the call.
    width:
        Tokens per row after padding (the widest row's forward).
    spans:
        Sum over rows of each row's key span (cached prefix plus new tokens).
    adapter:
        Whether the call runs the draft adapter (some token of it is a draft or denoise token).
    """

    rows: int
    width: int
    spans: int = 0
    adapter: bool = False

    @property
    def feature_values(self) -> tuple[float, ...]:
        """``(1, rows, rows * width, max(0, rows * width - TILE_TOKENS), width * spans / 1000, spans / 1000,
        adapter, adapter * rows * width)`` (see :data:`FEATURES`), as host floats."""
        tokens = float(self.rows * self.width)
        return (1.0, float(self.rows), tokens, max(0.0, tokens - TILE_TOKENS), self.width * self.spans / 1000.0,
                self.spans / 1000.0, float(self.adapter), tokens if self.adapter else 0.0)

    @property
    def features(self) -> np.ndarray:
        """:attr:`feature_values` as a float64 array (a row of the fit)."""
        return np.array(self.feature_values)

    def seconds(self, coef: Sequence[float]) -> float:
        """The linear model's time of this call with coefficients ``coef`` (:func:`shape_seconds`)."""
        return shape_seconds(coef, self.rows, self.width, self.spans, self.adapter)

    @property
    def bucket(self) -> tuple[int, int, int, bool]:
        """``(rows, width, mean span rounded up to a power of two, adapter)``: the key of its moving average."""
        mean = self.spans / max(self.rows, 1)
        return self.rows, self.width, 0 if mean <= 0 else 1 << max(0, math.ceil(math.log2(mean))), self.adapter


def shape_seconds(coef: Sequence[float], rows: int, width: int, spans: int, adapter: bool = False) -> float:
    """The linear model's time of a call of ``rows`` rows ``width`` wide with key spans summing to ``spans``, running
    the draft adapter or not, with coefficients ``coef`` (:data:`FEATURES`), in host floats: a rule prices a dozen
    candidate calls per cycle of every request, where building a :class:`CallShape` or a NumPy product per candidate
    would cost more than the arithmetic."""
    a, b, c, t, d, g, e, f = coef
    tokens = rows * width
    seconds = a + b * rows + c * tokens + t * max(0, tokens - TILE_TOKENS) + (d * width + g) * spans / 1000.0
    return seconds + e + f * tokens if adapter else seconds


def call_shape(rows: int, width: int, last_positions: Iterable[int] = (), adapter: bool = False) -> CallShape:
    """The :class:`CallShape` of a call of ``rows`` rows ``width`` wide whose rows end at ``last_positions``.

    Parameters
    ----------
    rows, width:
        The packed call's batch rows and (padded) width.
    last_positions:
        Each row's largest absolute position in the call (its span is that plus one).
    adapter:
        Whether the call runs the draft adapter.

    Returns
    -------
    CallShape
    """
    return CallShape(int(rows), int(width), int(sum(int(p) + 1 for p in last_positions)), bool(adapter))


@dataclass
class _Ema:
    seconds: float
    count: int = 1


@dataclass
class CostModel:
    """The backbone's call time by shape; see the module docstring.

    Parameters
    ----------
    coef:
        ``[a, b, c, t, d, g, e, f]`` of :data:`FEATURES` (seconds); default :data:`PRIOR`.
    key:
        What the model was measured on (:func:`model_key`), or ``""``.
    points:
        Calibration measurements ``(rows, width, spans, adapter, seconds)``.
    decay:
        Weight of a new observation in its bucket's moving average.
    refit_every:
        Observations between two refits of the linear model.

    Attributes
    ----------
    errors:
        Running mean relative error of each predictor against the observed times, measured
        before each observation is learnt (``"linear"``, ``"ema"``), and how many were scored.
    tensor:
        ``float64[8]``: the linear coefficients, updated in place at every refit (a policy graph's
        ``cost`` input reads them live).
    """

    coef: Sequence[float] = PRIOR
    key: str = ""
    points: list[tuple[int, int, int, bool, float]] = field(default_factory=list)
    decay: float = 0.2
    refit_every: int = 16
    created: float = field(default_factory=time.time)
    errors: dict[str, float] = field(default_factory=lambda: {"linear": 0.0, "ema": 0.0, "scored": 0})
    buckets: dict[tuple[int, int, int, bool], _Ema] = field(default_factory=dict)

    def __post_init__(self) -> None:
        coef = np.asarray(self.coef, dtype=np.float64)
        if coef.shape != (len(FEATURES),) or not np.all(np.isfinite(coef)):
            raise ValueError(f"CostModel.coef: expected {len(FEATURES)} finite numbers {FEATURES}, found {self.coef!r}")
        self.coef = coef
        self.tensor = torch.tensor(coef, dtype=torch.float64)
        self._since_refit = 0

    # ------------------------------------------------------------------ predictions
    def linear(self, rows: int, width: int, spans: int = 0, adapter: bool = False) -> float:
        """Seconds of a call by the linear model (never below a microsecond)."""
        return max(float(shape_seconds(self.coef, rows, width, spans, adapter)), 1e-6)

    def ema(self, rows: int, width: int, spans: int = 0, adapter: bool = False) -> float | None:
        """Seconds of a call by its bucket's moving average, or ``None`` when that bucket was never observed."""
        e = self.buckets.get(CallShape(rows, width, spans, adapter).bucket)
        return None if e is None else e.seconds

    def predict(self, rows: int, width: int, spans: int = 0, adapter: bool = False) -> float:
        """Seconds of a call: the bucket average where there is one and it has fit better, else the linear model."""
        e = self.ema(rows, width, spans, adapter)
        if e is not None and self.errors["scored"] and self.errors["ema"] < self.errors["linear"]:
            return e
        return self.linear(rows, width, spans, adapter)

    @property
    def calibrated(self) -> bool:
        """Whether the coefficients come from measurements (calibration or observations)."""
        return bool(self.points) or bool(self.buckets)

    # ------------------------------------------------------------------ learning
    def observe(self, shape: CallShape, seconds: float) -> None:
        """Learn one measured call: score both predictors on it, update its bucket, refit now and then.

        Parameters
        ----------
        shape:
            The call's shape.
        seconds:
            Its measured wall time.
        """
        if not (seconds > 0 and math.isfinite(seconds)):
            return
        e = self.buckets.get(shape.bucket)
        if e is not None:  # score only where both predictors can answer
            n = self.errors["scored"] + 1
            w = max(1.0 / n, 0.05)  # running mean, then an exponential one
            lin = abs(self.linear(shape.rows, shape.width, shape.spans, shape.adapter) - seconds) / seconds
            ema = abs(e.seconds - seconds) / seconds
            self.errors["linear"] += w * (lin - self.errors["linear"])
            self.errors["ema"] += w * (ema - self.errors["ema"])
            self.errors["scored"] = n
            e.seconds += self.decay * (seconds - e.seconds)
            e.count += 1
        else:
            self.buckets[shape.bucket] = _Ema(seconds)
        self._since_refit += 1
        if self._since_refit >= self.refit_every or len(self.buckets) <= len(FEATURES):
            self.refit()

    def refit(self) -> np.ndarray:
        """Refit the linear model on the calibration points and the bucket averages; returns the coefficients.

        Weighted least squares on relative error (a 1 ms call matters as much as a 100 ms one),
        each bucket weighted by how often it was seen; coefficients stay non-negative (a feature
        whose coefficient would go negative is dropped). With fewer points than features the
        model keeps a constant term only (the mean time).
        """
        self._since_refit = 0
        rows, times, weights = [], [], []
        for r, w, s, ad, t in self.points:
            rows.append(CallShape(r, w, s, ad).features)
            times.append(t)
            weights.append(1.0)
        for (r, w, span, ad), e in self.buckets.items():
            rows.append(CallShape(r, w, span * r, ad).features)
            times.append(e.seconds)
            weights.append(min(float(e.count), 8.0))
        if not rows:
            return self.coef  # type: ignore[return-value]
        coef = fit_linear(np.array(rows), np.array(times), np.array(weights))
        self.coef = coef
        self.tensor.copy_(torch.from_numpy(coef))
        return coef

    def fit_error(self, samples: Iterable[tuple[CallShape, float]]) -> dict[str, float]:
        """Relative error of the linear model on measured ``(shape, seconds)`` samples.

        Returns
        -------
        dict
            ``{"median": ..., "mean": ..., "max": ..., "n": ...}`` of ``|predicted - measured| / measured``.
        """
        errs = [abs(self.linear(s.rows, s.width, s.spans, s.adapter) - t) / t for s, t in samples if t > 0]
        if not errs:
            return {"median": float("nan"), "mean": float("nan"), "max": float("nan"), "n": 0}
        return {"median": float(np.median(errs)), "mean": float(np.mean(errs)), "max": float(np.max(errs)),
                "n": len(errs)}

    # ------------------------------------------------------------------ storage
    def to_json(self) -> dict[str, Any]:
        """JSON-ready record (what :meth:`save` writes)."""
        return {"format": FORMAT, "key": self.key, "created": self.created, "features": list(FEATURES),
                "coef": [float(c) for c in self.coef], "points": [list(p) for p in self.points],
                "errors": dict(self.errors)}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> "CostModel":
        """Inverse of :meth:`to_json`.

        Raises
        ------
        ValueError
            The record has another format or other features.
        """
        if record.get("format") != FORMAT or record.get("features") != list(FEATURES):
            raise ValueError(f"cost model: expected format {FORMAT} with features {list(FEATURES)}, found format "
                             f"{record.get('format')!r} with features {record.get('features')!r}")
        m = cls(coef=record["coef"], key=record.get("key", ""), created=float(record.get("created", 0.0)),
                points=[(int(r), int(w), int(s), bool(ad), float(t)) for r, w, s, ad, t in record.get("points", [])])
        m.errors.update(record.get("errors", {}))
        return m

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the model (default: its key's file under :func:`default_cache_dir`); returns the path."""
        target = Path(path) if path is not None else cache_path(self.key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1), encoding="utf-8")
        tmp.replace(target)
        return target

    def describe(self) -> str:
        """A few lines for people: the formula with its coefficients, where it came from, how well it fits."""
        a, b, c, t, d, g, e, f = (float(x) * 1e3 for x in self.coef)
        lines = [f"call ms = {a:.4g} + {b:.4g} * rows + {c:.4g} * rows*width + {t:.4g} * max(0, rows*width - "
                 f"{TILE_TOKENS}) + {d:.4g} * keys/1000 + {g:.4g} * spans/1000 + adapter * ({e:.4g} + {f:.4g} * "
                 "rows*width)",
                 f"  measured: {len(self.points)} calibration points, {len(self.buckets)} observed buckets"
                 + (f", age {(time.time() - self.created) / 3600:.1f} h" if self.points else " (prior: not measured)")]
        if self.errors["scored"]:
            lines.append(f"  one-step-ahead error on {int(self.errors['scored'])} observed calls: linear "
                         f"{self.errors['linear']:.1%}, bucket average {self.errors['ema']:.1%}")
        return "\n".join(lines)


def fit_linear(x: np.ndarray, t: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Non-negative weighted least squares of ``t ~ x @ coef`` on relative error.

    Parameters
    ----------
    x:
        ``[n, k]`` features (:data:`FEATURES`).
    t:
        ``[n]`` seconds (positive).
    w:
        ``[n]`` weights.

    Returns
    -------
    np.ndarray
        ``[k]`` coefficients, each ``>= 0``; a feature that is zero at every point gets 0 (a model measured
        without its adapter prices it at nothing); with fewer points than the other features, only the
        constant term.
    """
    n, k = x.shape
    scale = np.sqrt(w) / np.maximum(t, 1e-9)
    active = [j for j in range(k) if j == 0 or np.any(x[:, j])]
    if n < len(active):
        active = [0]
    while True:
        coef_a, *_ = np.linalg.lstsq(x[:, active] * scale[:, None], t * scale, rcond=None)
        if np.all(coef_a >= 0) or len(active) == 1:
            break
        del active[int(np.argmin(coef_a))]
    coef = np.zeros(k)
    coef[active] = np.maximum(coef_a, 0.0)
    if coef[0] <= 0 and not np.any(coef[1:]):
        coef[0] = float(np.average(t, weights=w))
    return coef


# ---------------------------------------------------------------------- identity and the disk cache

def default_cache_dir() -> Path:
    """Where cost models are cached: ``$GRAPHRT_CACHE_DIR``, else ``$XDG_CACHE_HOME/graphrt``, else
    ``~/.cache/graphrt``, each followed by ``cost_models``."""
    override = os.environ.get("GRAPHRT_CACHE_DIR")
    base = Path(override).expanduser() if override else \
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "graphrt"
    return base / "cost_models"


def cache_path(key: str) -> Path:
    """The file of the model measured under ``key``."""
    return default_cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def model_key(backbone: Any, identity: str | None = None) -> str:
    """What a measurement is valid for: the model, its dtype, device, linear-layer path, fused kernels (and
    the digest of their source, ``backbone.kernels``, where it has one) and compilation, and torch's thread
    count.

    Parameters
    ----------
    backbone:
        Any backbone; its ``config``, ``dtype``, ``device`` and (when it has one) a fingerprint of its
        ``model``'s weights identify it.
    identity:
        The checkpoint's own name (a path); combined with the above.

    Returns
    -------
    str
    """
    parts = [identity or "", repr(getattr(backbone, "config", None)), str(getattr(backbone, "dtype", "")),
             str(getattr(backbone, "device", "")), f"threads={torch.get_num_threads()}",
             f"linear={getattr(backbone, 'linear', '')}", f"glue={getattr(backbone, 'fused_glue', '')}",
             f"kernels={getattr(backbone, 'kernels', '')}",
             f"compiled={getattr(backbone, 'compiled', '')}",
             f"rows={getattr(backbone, 'max_rows', '') or _rows(backbone)}"]
    model = getattr(backbone, "model", None)
    if isinstance(model, torch.nn.Module):
        digest = hashlib.sha256()
        for name, p in list(model.named_parameters())[:4]:
            digest.update(name.encode())
            digest.update(p.detach().flatten()[:64].to("cpu", torch.float64).numpy().tobytes())
        parts.append(f"weights={digest.hexdigest()[:16]}")
    return "|".join(parts)


def _rows(backbone: Any) -> str:
    try:
        return str(backbone.free_row_count())
    except Exception:  # noqa: BLE001 - a backbone that cannot say: not part of the key
        return ""


def load_cached(key: str, max_age_s: float = 7 * 24 * 3600.0) -> CostModel | None:
    """The cached model measured under ``key``, or ``None`` when there is none, it is unreadable or stale
    (older than ``max_age_s``, or calibrated on fewer points than coefficients: an underdetermined fit).

    Parameters
    ----------
    key:
        From :func:`model_key`.
    max_age_s:
        Older models count as stale.
    """
    path = cache_path(key)
    try:
        model = CostModel.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if model.key != key or time.time() - model.created > max_age_s or len(model.points) < len(FEATURES):
        return None
    return model


def for_model(model: Any, budget_s: float = 2.0, measure: bool = True, max_age_s: float = 7 * 24 * 3600.0,
              log: Callable[[str], None] | None = None) -> CostModel:
    """The cost model of a loaded model: the cached one, else a calibration of ``budget_s`` seconds (saved),
    else (``measure=False``, or a calibration that fails) the prior, which learns from the calls it observes.

    Parameters
    ----------
    model:
        A :class:`graphrt.api.Model` (or anything with a ``backbone`` and a ``path``).
    budget_s:
        Calibration time limit.
    measure:
        Whether to calibrate when nothing usable is cached.
    max_age_s:
        Cached models older than this are measured again.
    log:
        Where to say what happened (one line).

    Returns
    -------
    CostModel
    """
    backbone = getattr(model, "backbone", model)
    key = model_key(backbone, str(getattr(model, "path", "") or ""))
    cached = load_cached(key, max_age_s)
    say = log or (lambda line: None)
    if cached is not None:
        say(f"cost model: cached ({cache_path(key)})")
        return cached
    if not measure:
        return CostModel(key=key)
    try:
        t0 = time.perf_counter()
        fitted = calibrate(backbone, budget_s=budget_s, key=key)
        fitted.save()
        say(f"cost model: calibrated in {time.perf_counter() - t0:.1f} s, {len(fitted.points)} points")
        return fitted
    except Exception as exc:  # noqa: BLE001 - a failed measurement never blocks serving
        say(f"cost model: calibration failed ({exc!r}); measuring as requests run")
        return CostModel(key=key)


# ---------------------------------------------------------------------- calibration

def calibrate(backbone: Any, budget_s: float = 2.0, key: str = "",
              rows: Sequence[int] = (1, 2, 4, 8), widths: Sequence[int] = (1, 2, 4, 8, 16),
              spans: Sequence[int] = (0, 128), repeats: int = 3, min_points: int | None = None,
              clock: Callable[[], float] = time.perf_counter) -> CostModel:
    """Measure the backbone on a grid of call shapes within ``budget_s`` seconds and fit the model.

    The calls use rows the backbone has free (allocated here and returned), write nothing to the cache except,
    for a nonzero span, the prefix each row attends to (cropped again after), and run in an order that covers
    the grid evenly, so a budget that runs out leaves a spread of points: first the corners of the grid (fewest
    and most rows, narrowest and widest, at the first span and the last; and the fewest rows at the widest width
    within :data:`TILE_TOKENS`), then, where the model has a draft adapter (the backbone's ``has_adapter``),
    three corners with the adapter at the last span (over a cached prefix, as a draft runs; the widest call with
    the most rows, the grid's costliest, left out), then the rest.
    Each point is the fastest of ``repeats`` calls after one warm-up call: the call's own cost,
    without the spikes of whatever else runs on the machine (the observations of a session bring the
    typical load in).

    Parameters
    ----------
    backbone:
        A :class:`~graphrt.backbone.Backbone` with free rows (before serving starts).
    budget_s:
        Time limit (the call in progress finishes), counted from the end of the first call, whose JIT
        compiles (the blocked product's on a fresh machine, inductor's) would otherwise spend it.
    key:
        Stored with the model (:func:`model_key`).
    rows, widths, spans:
        The grid; rows beyond the free rows, widths and spans beyond a row's capacity are left out.
    repeats:
        Timed calls per point.
    min_points:
        Points measured even past the budget (default: the corners above, with and without the adapter,
        so every coefficient is determined). On a large model a few wide calls can spend a short budget,
        and a model fitted on narrow calls alone would price every width alike, one fitted without a
        second span would charge the keys for what many tokens cost, and one without the adapter's
        points would price a draft forward as a verify forward.
    clock:
        Seconds now (tests pass a clock of their own).

    Returns
    -------
    CostModel
        Fitted on the points measured (the prior when none could be).
    """
    from graphrt.backbone import ForwardBatch

    deadline: float | None = None  # the budget starts after the first call (see below)
    free = backbone.free_row_count()
    cap = int(getattr(backbone, "row_capacity", None) or backbone.config.max_positions)
    rows = [r for r in rows if r <= free]
    if not rows:
        return CostModel(key=key)
    dev = torch.device(getattr(backbone, "device", "cpu") or "cpu")
    got = backbone.alloc_rows(max(rows))
    vocab = backbone.config.vocab_size
    points: list[tuple[int, int, int, bool, float]] = []
    try:
        grid = [(r, w, s, False) for s in spans for w in widths for r in rows if s + w <= cap - 1]
        if getattr(backbone, "has_adapter", False):
            grid += [(r, w, spans[-1], True) for w in (widths[0], widths[-1]) for r in (rows[0], rows[-1])
                     if (r, w) != (rows[-1], widths[-1]) and spans[-1] + w <= cap - 1]
        grid = sorted(set(grid), key=lambda p: _spread_order(p, rows, widths, spans))
        if min_points is None:
            min_points = sum(_spread_order(p, rows, widths, spans)[0] < 2 for p in grid)
        filled = 0
        for r, w, s, ad in grid:
            if deadline is not None and clock() > deadline and len(points) >= min_points:
                break
            if s < filled:  # keep a prefix of s tokens
                for row in got:
                    backbone.crop(row, s)
                filled = s
            if s > filled:  # give every row a cached prefix of s tokens
                for row in got:
                    backbone.crop(row, 0)
                    toks = torch.arange(s, device=dev) % (vocab - 1) + 1
                    pos = torch.arange(s, device=dev)
                    backbone.forward(ForwardBatch.single(row, toks, pos, torch.ones(s, s, dtype=torch.bool,
                                                         device=dev).tril(), "causal", _flags(s, True, dev),
                                                         _flags(s, False, dev), "last"))
                filled = s
            batch = probe_batch(got[:r], w, s, vocab, dev, adapter=ad)
            times = []
            for i in range(repeats + 1):
                t0 = clock()
                backbone.forward(batch)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                if i:
                    times.append(clock() - t0)
                elif deadline is None:  # a first call's JIT compile (Numba's product, inductor) is not measuring
                    deadline = clock() + budget_s
            points.append((r, w, r * s + r * w, ad, float(min(times))))
    finally:
        for row in got:
            backbone.crop(row, 0)
        backbone.free_rows(got)
    model = CostModel(key=key, points=points)
    if points:
        model.refit()
    return model


def _spread_order(p: tuple[int, int, int, bool], rows: Sequence[int], widths: Sequence[int],
                  spans: Sequence[int]) -> tuple[int, int, int, int, int]:
    """Where a point comes in the calibration: the grid's corners (group 0), the adapter's points (1), the rest
    (2) by how many of its coordinates are extremes; within each, by span, then rows and width. The widest width
    within :data:`TILE_TOKENS` counts as an extreme at the fewest rows (it tells the tokens that cost about
    nothing from the ones past the tile). A budget cut short still spans every feature."""
    r, w, s, adapter = p
    tile = max((x for x in widths if x <= TILE_TOKENS), default=widths[0])
    extreme_w = w in (widths[0], widths[-1]) or (r == rows[0] and w == tile)
    corner = (r in (rows[0], rows[-1])) + extreme_w + (s in (spans[0], spans[-1]))
    group = 1 if adapter else 0 if corner == 3 else 2
    return (group, -corner, spans.index(s) if s in spans else 0, r, w)


def probe_batch(rows: list[int], width: int, span: int, vocab: int, dev: torch.device | str = "cpu",
                adapter: bool = False) -> Any:
    """A call that measures: ``width`` causal tokens per row at positions ``span ..``, writing nothing, every
    token with the draft adapter when ``adapter``.

    Parameters
    ----------
    rows:
        Cache rows (each with ``span`` cached positions for the call to attend to).
    width, span:
        Tokens per row, and where they start.
    vocab:
        The vocabulary size (token ids stay below it).
    dev:
        Where the tensors live.
    adapter:
        Whether the tokens run with the draft adapter (a draft forward's cost).

    Returns
    -------
    ForwardBatch
    """
    from graphrt.backbone import ForwardBatch

    dev = torch.device(dev)

    parts = []
    for row in rows:
        toks = (torch.arange(width, device=dev) * 7 + row) % (vocab - 1) + 1
        pos = torch.arange(span, span + width, device=dev)
        parts.append(ForwardBatch.single(row, toks, pos, torch.ones(width, width, dtype=torch.bool, device=dev).tril(),
                                         "causal", _flags(width, False, dev), _flags(width, adapter, dev)))
    return ForwardBatch.pack(parts)


def _flags(n: int, value: bool, dev: torch.device) -> torch.Tensor:
    return torch.full((n,), value, dtype=torch.bool, device=dev)
