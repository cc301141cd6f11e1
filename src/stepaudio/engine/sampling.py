"""Sampling parameters and a batched sampler with vLLM (v1) semantics.

Per step, for a batch of rows with their own parameters, in vLLM's order:

1. logprobs, when asked, from the raw model logits (vLLM's default "raw_logprobs");
2. min_tokens: stop and eos ids masked until the row has min_tokens outputs;
3. repetition penalty (prompt + output tokens), then frequency and presence penalties (output only);
4. greedy rows take the argmax here;
5. the others: temperature, min_p, top_k, top_p, then one draw per row.

Seeded rows draw from their own generator, so their tokens do not depend on the rest of the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

# vLLM treats any temperature below this as 0 (greedy).
SAMPLING_EPS = 1e-5
# The most top logprobs one token may ask for (vLLM's default max_logprobs).
MAX_LOGPROBS = 20
THINKING_MODES = ("on", "off")


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass
class SamplingParams:
    """One request's sampling and stopping options: vLLM's field names, defaults and checks.

    top_k 0 or -1 means off. max_tokens None means "until the model's length limit". logprobs N
    returns the sampled token's logprob plus the top N (0: the sampled token's only). Ours:
    max_thinking_tokens caps the `<think>` block (None: no cap); thinking "off" skips it.
    vLLM raises temperatures in (0, 0.01) to 0.01 against fp16 overflow; we sample in float32 and
    keep the value as given.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = None
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    max_thinking_tokens: int | None = None
    thinking: str = "on"

    def __post_init__(self) -> None:
        # Normalised as vLLM does: one stop string becomes a list, seed -1 means "no seed".
        self.stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.seed == -1:
            self.seed = None
        self._verify_sampling()
        self._verify_lengths_and_thinking()
        self._verify_outputs()

    def _verify_sampling(self) -> None:
        _require(self.n >= 1, f"n must be at least 1, got {self.n}.")
        _require(self.temperature >= 0, f"temperature must be non-negative, got {self.temperature}.")
        _require(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}.")
        _require(self.top_k >= -1, f"top_k must be 0 or -1 (disable), or at least 1, got {self.top_k}.")
        _require(0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p}.")
        _require(self.repetition_penalty > 0,
                 f"repetition_penalty must be greater than zero, got {self.repetition_penalty}.")
        _require(-2 <= self.presence_penalty <= 2,
                 f"presence_penalty must be in [-2, 2], got {self.presence_penalty}.")
        _require(-2 <= self.frequency_penalty <= 2,
                 f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}.")

    def _verify_lengths_and_thinking(self) -> None:
        if self.max_tokens is not None:
            _require(self.max_tokens >= 1, f"max_tokens must be at least 1, got {self.max_tokens}.")
        _require(self.min_tokens >= 0, f"min_tokens must be greater than or equal to 0, got {self.min_tokens}.")
        if self.max_tokens is not None:
            _require(self.min_tokens <= self.max_tokens,
                     f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, "
                     f"got {self.min_tokens}.")
        if self.max_thinking_tokens is not None:
            _require(self.max_thinking_tokens >= 0,
                     f"max_thinking_tokens must be non-negative, got {self.max_thinking_tokens}.")
        _require(self.thinking in THINKING_MODES, f"thinking must be 'on' or 'off', got {self.thinking!r}.")

    def _verify_outputs(self) -> None:
        if self.logprobs is not None:
            _require(0 <= self.logprobs <= MAX_LOGPROBS,
                     f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}.")
        _require(all(self.stop), "stop cannot contain an empty string.")
        _require(all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids),
                 f"stop_token_ids must be non-negative integers, got {self.stop_token_ids}.")

    @property
    def greedy(self) -> bool:
        """Temperature 0 (below 1e-5, as vLLM counts it) means argmax."""
        return self.temperature < SAMPLING_EPS


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A generator for a seeded request on the device that holds the logits; None without a seed."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)


def child_seed(seed: int | None, index: int) -> int | None:
    """The seed of child `index` of an n > 1 request: `seed + index`, as vLLM's ParentRequest does.

    Children of one request thus differ and are reproducible; without a seed they all use the
    global RNG. (Like vLLM, request seed s child 1 and request seed s+1 child 0 share a seed.)
    """
    return None if seed is None else seed + index


# ---------------------------------------------------------------------------------------------
# Batch rows and outputs
# ---------------------------------------------------------------------------------------------


@dataclass
class SamplingRow:
    """What the sampler needs to know about one running sequence; the engine appends to output_ids."""

    params: SamplingParams
    prompt_ids: list[int]
    output_ids: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None

    @classmethod
    def for_request(cls, params: SamplingParams, prompt_ids: list[int],
                    device: torch.device | str = "cpu") -> SamplingRow:
        """A fresh row with its generator made from the request's seed."""
        return cls(params, list(prompt_ids), [], make_generator(params.seed, device))


@dataclass
class TokenLogprobs:
    """The sampled token's raw logprob and rank (1 = most likely), plus the top-N, best first."""

    token_id: int
    logprob: float
    rank: int
    top: list[tuple[int, float]]


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]


# ---------------------------------------------------------------------------------------------
# Logits processing (each in place on a float32 [B, V] tensor, one row per SamplingRow)
# ---------------------------------------------------------------------------------------------


def _indices(flags: Sequence[bool]) -> list[int]:
    return [i for i, flag in enumerate(flags) if flag]


def _per_row(values: Sequence[float | int], like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One value per row as a [B, 1] column, for broadcasting over the vocabulary."""
    return torch.tensor(values, dtype=dtype, device=like.device).unsqueeze(1)


def _on_rows(logits: torch.Tensor, rows: list[int], op: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Apply `op` to the given rows only, so a costly step (a sort) skips the rows that don't use it."""
    if rows:
        logits[rows] = op(logits[rows])


def token_counts(token_lists: Sequence[Sequence[int]], vocab_size: int, device: torch.device) -> torch.Tensor:
    """[B, V] occurrence counts per row; lists are padded with the out-of-vocabulary id V."""
    width = max(1, max(len(tokens) for tokens in token_lists))
    padded = torch.full((len(token_lists), width), vocab_size, dtype=torch.long)
    for i, tokens in enumerate(token_lists):
        padded[i, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    padded = padded.to(device)
    counts = torch.zeros(len(token_lists), vocab_size + 1, dtype=torch.long, device=device)
    counts.scatter_add_(1, padded, torch.ones_like(padded))
    return counts[:, :vocab_size]


def apply_min_tokens(logits: torch.Tensor, rows: Sequence[SamplingRow], eos_token_ids: Sequence[int]) -> None:
    """Forbid stop_token_ids and eos until a row has min_tokens outputs.

    As in vLLM, eos is masked even with ignore_eos (that flag only keeps the engine from stopping).
    Ids outside the vocabulary can never be sampled, so there is nothing to mask for them.
    """
    vocab = logits.shape[1]
    for i, row in enumerate(rows):
        if len(row.output_ids) < row.params.min_tokens:
            banned = sorted(t for t in set(row.params.stop_token_ids) | set(eos_token_ids) if 0 <= t < vocab)
            logits[i, banned] = float("-inf")


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """For tokens seen in prompt or output: positive logits are divided by the penalty, others multiplied."""
    scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, scaled, logits)


def apply_penalties(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> None:
    """Repetition penalty over prompt + output, then OpenAI's frequency and presence over output only."""
    active = _indices([_has_penalty(row.params) for row in rows])
    if not active:
        return
    picked = [rows[i] for i in active]
    vocab = logits.shape[1]
    out_counts = token_counts([row.output_ids for row in picked], vocab, logits.device)
    seen = token_counts([row.prompt_ids + row.output_ids for row in picked], vocab, logits.device) > 0
    sub = apply_repetition_penalty(logits[active], seen,
                                   _per_row([r.params.repetition_penalty for r in picked], logits, logits.dtype))
    sub -= _per_row([r.params.frequency_penalty for r in picked], logits, logits.dtype) * out_counts
    sub -= _per_row([r.params.presence_penalty for r in picked], logits, logits.dtype) * (out_counts > 0)
    logits[active] = sub


def _has_penalty(params: SamplingParams) -> bool:
    return params.repetition_penalty != 1.0 or params.frequency_penalty != 0.0 or params.presence_penalty != 0.0


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the most likely token's."""
    probs = logits.softmax(dim=-1)
    threshold = probs.amax(dim=-1, keepdim=True) * min_p
    return logits.masked_fill(probs < threshold, float("-inf"))


def apply_top_k(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Keep the logits at least as large as the k-th largest (ties at the k-th all stay, as in vLLM)."""
    largest = logits.topk(int(k.max()), dim=-1).values
    kth = largest.gather(1, k - 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches top_p (always the top one)."""
    ascending, order = logits.sort(dim=-1)
    tail_mass = ascending.softmax(dim=-1).cumsum(dim=-1)
    drop = tail_mass <= 1 - top_p
    drop[:, -1] = False
    ascending = ascending.masked_fill(drop, float("-inf"))
    return ascending.scatter(1, order, ascending)


def draw(probs: torch.Tensor, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """One token per row by the exponential race argmax(p / q), q ~ Exp(1): an exact draw from p.

    Rows with a generator take their q from it alone (V numbers per step), so a seeded row's draw
    does not depend on its batch; the others share one draw from the global RNG.
    """
    q = torch.empty_like(probs)
    if any(g is None for g in generators):
        q.exponential_()
    for i, generator in enumerate(generators):
        if generator is not None:
            q[i].exponential_(generator=generator)
    # q == 0 would turn 0/0 into NaN, which argmax ranks first: keep q strictly positive.
    q.clamp_min_(torch.finfo(q.dtype).tiny)
    return (probs / q).argmax(dim=-1)


def sample_random(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Temperature, min_p, top_k, top_p, then a draw, for rows that are not greedy."""
    params = [row.params for row in rows]
    logits = logits / _per_row([p.temperature for p in params], logits, logits.dtype)
    min_p_rows = _indices([p.min_p > 0 for p in params])
    _on_rows(logits, min_p_rows,
             lambda x: apply_min_p(x, _per_row([params[i].min_p for i in min_p_rows], x, x.dtype)))
    vocab = logits.shape[1]
    top_k_rows = _indices([0 < p.top_k < vocab for p in params])
    _on_rows(logits, top_k_rows,
             lambda x: apply_top_k(x, _per_row([params[i].top_k for i in top_k_rows], x, torch.long)))
    top_p_rows = _indices([p.top_p < 1 for p in params])
    _on_rows(logits, top_p_rows,
             lambda x: apply_top_p(x, _per_row([params[i].top_p for i in top_p_rows], x, x.dtype)))
    return draw(logits.softmax(dim=-1), [row.generator for row in rows])


# ---------------------------------------------------------------------------------------------
# Logprobs
# ---------------------------------------------------------------------------------------------


def gather_logprobs(raw_logits: torch.Tensor, rows: Sequence[SamplingRow],
                    token_ids: list[int]) -> list[TokenLogprobs | None]:
    """Logprobs from the raw model logits (before min_tokens, penalties and temperature), as vLLM's
    default "raw_logprobs" mode. Rank counts the tokens with logprob >= the sampled one's."""
    result: list[TokenLogprobs | None] = [None] * len(rows)
    wanted = _indices([row.params.logprobs is not None for row in rows])
    if not wanted:
        return result
    logprobs = raw_logits[wanted].float().log_softmax(dim=-1)
    chosen = torch.tensor([token_ids[i] for i in wanted], device=logprobs.device).unsqueeze(1)
    chosen_lp = logprobs.gather(1, chosen)
    ranks = (logprobs >= chosen_lp).sum(dim=-1).tolist()
    top_n = max(rows[i].params.logprobs for i in wanted)
    top_lp, top_ids = logprobs.topk(top_n, dim=-1)
    top_lp, top_ids, chosen_lp = top_lp.tolist(), top_ids.tolist(), chosen_lp.squeeze(1).tolist()
    for j, i in enumerate(wanted):
        n = rows[i].params.logprobs
        top = list(zip(top_ids[j][:n], top_lp[j][:n]))
        result[i] = TokenLogprobs(token_ids[i], chosen_lp[j], ranks[j], top)
    return result


# ---------------------------------------------------------------------------------------------
# Sampler
# ---------------------------------------------------------------------------------------------


class Sampler:
    """Turns a batch of next-token logits into token ids, one SamplingRow per logits row."""

    def __init__(self, eos_token_ids: Sequence[int]) -> None:
        # The model's end ids: min_tokens masks them like stop_token_ids.
        self.eos_token_ids = list(eos_token_ids)

    def __call__(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> SamplerOutput:
        """logits: [B, V], row b for rows[b]. The caller's tensor is left unchanged.

        Logprobs come from these raw logits, before min_tokens, penalties and temperature.
        """
        if logits.dim() != 2 or logits.shape[0] != len(rows):
            raise ValueError(f"logits must be [len(rows)={len(rows)}, vocab], got {tuple(logits.shape)}")
        processed = logits.to(torch.float32, copy=True)
        apply_min_tokens(processed, rows, self.eos_token_ids)
        apply_penalties(processed, rows)
        tokens = processed.argmax(dim=-1)
        random_rows = _indices([not row.params.greedy for row in rows])
        if random_rows:
            tokens[random_rows] = sample_random(processed[random_rows], [rows[i] for i in random_rows])
        token_ids = tokens.tolist()
        return SamplerOutput(token_ids, gather_logprobs(logits, rows, token_ids))
