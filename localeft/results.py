"""What a request returns, as plain data: `Stats` (what a generation cost), `TokenInfo` (one
token's log-probs under EFT and each model), `Totals` and `Score` (a scored text), `Generation`.

No NumPy, no llama.cpp: the CLI reads these back from a `localeft serve` (wire.py) without
loading either.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from .tools import ToolCall


@dataclass
class Stats:
    """What one generation cost, and where the time went."""

    prompt_tokens: int = 0  # tokens in the (longest) rendered prompt
    prompt_evaluated: int = 0  # prompt tokens actually decoded, summed over contexts (KV reuse)
    generated_tokens: int = 0
    seconds: float = 0.0
    prompt_seconds: float = 0.0
    model_seconds: dict[str, float] = field(default_factory=dict)  # decode + logits, per context
    numpy_seconds: float = 0.0  # combine + sample
    speculative: bool = False
    draft_tokens: int = 0  # k when fixed, the last k when adaptive
    drafted: int = 0
    accepted: int = 0
    verifications: int = 0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    layout: str = ""  # CPU layout of EFT steps: overlap | sequential ("" where moot)
    layout_probe: dict[str, float] | None = None  # median ms per step of each, once measured
    weights: str = ""  # the weight layout the numbers come from: "repacked" | "mmap"
    # Where the base model's layers are when RPC servers hold some (Emulator.placement).
    placement: list[dict] = field(default_factory=list)

    @property
    def decode_seconds(self) -> float:
        return self.seconds - self.prompt_seconds

    @property
    def ms_per_token(self) -> float:
        n = self.generated_tokens
        return 1000 * self.decode_seconds / n if n else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted(self) -> float:
        return self.accepted / self.verifications if self.verifications else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        for k in ("ms_per_token", "tokens_per_second", "acceptance_rate", "mean_accepted"):
            d[k] = getattr(self, k)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Stats:
        """`as_dict`'s output read back (the derived figures are recomputed)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass
class TokenInfo:
    """One token of a scored or generated text."""

    id: int
    text: str  # the characters this token completes (concatenated: the whole text)
    logprob: float  # under EFT (in a one-model mode: that model's)
    rank: int  # 1 = EFT's most likely token at this position
    models: dict[str, float]  # each model alone: this token's log-prob, by label (base, ft, ref)
    eft_top: int  # EFT's most likely token here
    base_top: int | None  # the large base alone's (None when the base did not run)
    top: list[tuple[int, str, float]] = field(default_factory=list)  # (id, text, EFT log-prob)

    @property
    def differs_from_base(self) -> bool:
        """This token is not what the large base alone would have picked greedily."""
        return self.base_top is not None and self.id != self.base_top

    @property
    def top_differs(self) -> bool:
        """EFT's top choice here is not the large base alone's."""
        return self.base_top is not None and self.eft_top != self.base_top

    @property
    def shift(self) -> float | None:
        """How far the fine-tuning delta moved this token: EFT log-prob − base log-prob."""
        base = self.models.get("base")
        return None if base is None else self.logprob - base

    def as_dict(self) -> dict:
        d = asdict(self)
        d["top"] = [{"id": i, "text": t, "logprob": lp} for i, t, lp in self.top]
        d.update(
            differs_from_base=self.differs_from_base,
            top_differs=self.top_differs,
            shift=self.shift,
        )
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TokenInfo:
        return cls(
            id=d["id"],
            text=d["text"],
            logprob=d["logprob"],
            rank=d["rank"],
            models=dict(d["models"]),
            eft_top=d["eft_top"],
            base_top=d["base_top"],
            top=[(t["id"], t["text"], t["logprob"]) for t in d["top"]],
        )


@dataclass
class Totals:
    """A text's log-likelihood under one distribution."""

    logprob: float  # summed
    tokens: int

    @property
    def mean(self) -> float:
        return self.logprob / self.tokens if self.tokens else 0.0

    @property
    def perplexity(self) -> float:
        return math.exp(-self.mean)

    def as_dict(self) -> dict:
        return {
            "logprob": self.logprob,
            "tokens": self.tokens,
            "mean": self.mean,
            "perplexity": self.perplexity,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Totals:
        return cls(logprob=d["logprob"], tokens=d["tokens"])


@dataclass
class Score:
    """`Emulator.score`'s result: per-token records and totals for EFT and each model."""

    tokens: list[TokenInfo]
    totals: dict[str, Totals]  # "eft" and each model label
    beta: float
    by_beta: dict[float, Totals] = field(default_factory=dict)  # EFT totals at other betas

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens)

    def as_dict(self, per_token: bool = True) -> dict:
        d = {
            "text": self.text,
            "beta": self.beta,
            "totals": {k: v.as_dict() for k, v in self.totals.items()},
        }
        if self.by_beta:
            d["eft_by_beta"] = {str(b): v.as_dict() for b, v in self.by_beta.items()}
        if per_token:
            d["tokens"] = [t.as_dict() for t in self.tokens]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Score:
        """`as_dict(per_token=True)`'s output read back."""
        return cls(
            tokens=[TokenInfo.from_dict(t) for t in d["tokens"]],
            totals={k: Totals.from_dict(v) for k, v in d["totals"].items()},
            beta=d["beta"],
            by_beta={float(b): Totals.from_dict(v) for b, v in d.get("eft_by_beta", {}).items()},
        )


@dataclass
class Generation:
    """One request's result: its text, token ids, why it ended, what it cost. `text` is
    everything generated; with tools, `tool_calls` are the calls read from it and `content`
    the rest (None when only calls were written; without tools, the text)."""

    text: str
    tokens: list[int]
    # "eog" | "stop" | "length" | "context" | "grammar" | "interrupted" | "tool_calls"
    finish_reason: str
    stats: Stats
    seed: int | None = None  # the seed sampling used (picked when none was given); None: greedy
    logprobs: list[TokenInfo] | None = None  # per token, with logprobs=N
    tool_calls: list[ToolCall] = field(default_factory=list)
    content: str | None = None

    def as_dict(self) -> dict:
        return {
            "text": self.text,
            "tokens": list(self.tokens),
            "finish_reason": self.finish_reason,
            "seed": self.seed,
            "stats": self.stats.as_dict(),
            "logprobs": None if self.logprobs is None else [r.as_dict() for r in self.logprobs],
            "tool_calls": [c.as_dict() for c in self.tool_calls],
            "content": self.content,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Generation:
        records = d.get("logprobs")
        return cls(
            text=d["text"],
            tokens=list(d["tokens"]),
            finish_reason=d["finish_reason"],
            stats=Stats.from_dict(d["stats"]),
            seed=d.get("seed"),
            logprobs=None if records is None else [TokenInfo.from_dict(r) for r in records],
            tool_calls=[
                ToolCall(c["id"], c["function"]["name"], c["function"]["arguments"])
                for c in d.get("tool_calls", [])
            ],
            content=d.get("content", d["text"]),
        )
