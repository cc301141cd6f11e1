"""Sampling parameters and the batched sampler: vLLM semantics, per-request seeds, raw logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from stepaudio.engine.sampling import (
    MAX_LOGPROBS,
    Sampler,
    SamplingParams,
    SamplingRow,
    apply_min_p,
    apply_penalties,
    apply_top_p,
    child_seed,
    make_generator,
)

EOS = 5
VOCAB = 32


def row(prompt_ids: list[int] | None = None, **params) -> SamplingRow:
    return SamplingRow.for_request(SamplingParams(**params), prompt_ids or [1, 2, 3])


def logit_stream(seed: int, steps: int, vocab: int = VOCAB) -> list[torch.Tensor]:
    """Fixed per-step logits, independent of the RNG the sampler uses."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(vocab, generator=generator) for _ in range(steps)]


def frequencies(tokens: list[int], vocab: int) -> torch.Tensor:
    return torch.bincount(torch.tensor(tokens), minlength=vocab).double() / len(tokens)


def assert_frequencies_match(tokens: list[int], probs: torch.Tensor) -> None:
    """Each token's empirical frequency within 5 standard errors sqrt(p(1-p)/N) of its probability.

    With N = 20k the bound is at most 0.018; a correct sampler fails one of V cells with chance
    under V * 6e-7, while a wrong distribution (say a missing temperature) misses by far more.
    """
    n = len(tokens)
    probs = probs.double()
    tolerance = 5 * torch.sqrt(probs * (1 - probs) / n) + 1e-12
    error = (frequencies(tokens, len(probs)) - probs).abs()
    assert bool((error <= tolerance).all()), f"frequency error {error.tolist()} above {tolerance.tolist()}"


# ---------------------------------------------------------------------------------------------
# SamplingParams
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "field_name"), [
    ({"n": 0}, "n must be at least 1"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.01}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"min_p": -0.1}, "min_p"),
    ({"min_p": 1.1}, "min_p"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"presence_penalty": -2.5}, "presence_penalty"),
    ({"frequency_penalty": 2.5}, "frequency_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"min_tokens": -1}, "min_tokens"),
    ({"min_tokens": 5, "max_tokens": 4}, "min_tokens must be less than or equal to max_tokens=4"),
    ({"logprobs": -1}, "logprobs"),
    ({"logprobs": MAX_LOGPROBS + 1}, "logprobs"),
    ({"max_thinking_tokens": -1}, "max_thinking_tokens"),
    ({"thinking": "maybe"}, "thinking"),
    ({"stop": ["ok", ""]}, "stop"),
])
def test_invalid_params_raise_naming_the_field(kwargs: dict, field_name: str) -> None:
    with pytest.raises(ValueError, match=field_name):
        SamplingParams(**kwargs)


def test_boundary_values_are_accepted() -> None:
    SamplingParams(temperature=0.0, top_p=1.0, top_k=-1, min_p=1.0, presence_penalty=-2.0, frequency_penalty=2.0,
                   max_tokens=1, min_tokens=1, logprobs=MAX_LOGPROBS, max_thinking_tokens=0, thinking="off")


def test_defaults_and_normalisation_follow_vllm() -> None:
    params = SamplingParams(stop="###", seed=-1)
    assert params.stop == ["###"]
    assert params.seed is None
    assert (params.n, params.temperature, params.top_p, params.top_k, params.min_p) == (1, 1.0, 1.0, 0, 0.0)
    assert params.max_tokens is None and params.logprobs is None and params.thinking == "on"


def test_greedy_below_sampling_eps() -> None:
    assert SamplingParams(temperature=0.0).greedy
    assert SamplingParams(temperature=1e-6).greedy
    assert not SamplingParams(temperature=1e-4).greedy
    assert not SamplingParams().greedy


# ---------------------------------------------------------------------------------------------
# Greedy, top-k, top-p, min-p
# ---------------------------------------------------------------------------------------------


def test_greedy_rows_take_the_argmax_even_beside_random_rows() -> None:
    logits = torch.randn(6, VOCAB, generator=torch.Generator().manual_seed(0))
    rows = [row(temperature=0.0) if i % 2 == 0 else row(temperature=1.0) for i in range(6)]
    out = Sampler([EOS])(logits, rows)
    assert out.token_ids[0::2] == logits.argmax(dim=-1)[0::2].tolist()


def test_caller_logits_are_left_unchanged() -> None:
    logits = torch.randn(2, VOCAB)
    before = logits.clone()
    Sampler([EOS])(logits, [row(repetition_penalty=1.5, min_tokens=2), row(temperature=0.5, top_p=0.5)])
    assert torch.equal(logits, before)


def test_logits_shape_must_match_rows() -> None:
    with pytest.raises(ValueError, match="logits must be"):
        Sampler([EOS])(torch.randn(3, VOCAB), [row(), row()])


@pytest.mark.parametrize("params", [{"top_k": 1}, {"top_p": 1e-6}, {"min_p": 1.0}])
def test_extreme_truncation_equals_greedy(params: dict) -> None:
    logits = torch.randn(64, VOCAB, generator=torch.Generator().manual_seed(1))
    out = Sampler([EOS])(logits, [row(temperature=1.0, seed=i, **params) for i in range(64)])
    assert out.token_ids == logits.argmax(dim=-1).tolist()


def test_min_p_masks_exactly_the_tokens_below_the_scaled_maximum() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    masked = apply_min_p(probs.log(), torch.tensor([[0.2]]))  # threshold 0.2 * 0.5 = 0.1
    assert torch.isinf(masked).tolist() == [[False, False, False, True]]
    assert torch.equal(masked[0, :3], probs.log()[0, :3])


@pytest.mark.parametrize(("top_p", "kept"), [(0.4, [1]), (0.7, [1, 3]), (0.9, [0, 1, 3]), (1.0, [0, 1, 2, 3])])
def test_top_p_keeps_the_smallest_head_reaching_the_mass(top_p: float, kept: list[int]) -> None:
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])  # unsorted, so the sort and the scatter back are exercised
    log_probs = probs.log()
    out = apply_top_p(log_probs, torch.tensor([[top_p]]))
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == kept
    assert torch.equal(out[0, kept], log_probs[0, kept])


def test_min_p_never_samples_a_filtered_token() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(4000, 4)
    torch.manual_seed(0)
    tokens = Sampler([EOS])(logits, [row(min_p=0.2) for _ in range(4000)]).token_ids
    assert set(tokens) == {0, 1, 2}


# ---------------------------------------------------------------------------------------------
# Penalties
# ---------------------------------------------------------------------------------------------

PENALTY_LOGITS = [2.0, -1.0, 0.5, -0.5, 3.0, 0.0]
PROMPT = [0, 1]
OUTPUT = [2, 2, 3]


def penalised(**params) -> list[float]:
    logits = torch.tensor([PENALTY_LOGITS])
    apply_penalties(logits, [SamplingRow(SamplingParams(**params), PROMPT, list(OUTPUT))])
    return logits[0].tolist()


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits() -> None:
    # Seen in prompt or output: 0, 1, 2, 3. Tokens 4 and 5 are untouched.
    assert penalised(repetition_penalty=2.0) == pytest.approx([1.0, -2.0, 0.25, -1.0, 3.0, 0.0])


def test_frequency_penalty_scales_with_output_counts_only() -> None:
    # Output counts: token 2 twice, token 3 once; prompt tokens 0 and 1 are not penalised.
    assert penalised(frequency_penalty=0.5) == pytest.approx([2.0, -1.0, -0.5, -1.0, 3.0, 0.0])


def test_presence_penalty_is_flat_over_output_tokens() -> None:
    assert penalised(presence_penalty=0.5) == pytest.approx([2.0, -1.0, 0.0, -1.0, 3.0, 0.0])


def test_penalties_compose_repetition_first() -> None:
    # Repetition: [1, -2, 0.25, -1, 3, 0]; frequency 0.5 x counts; presence 0.25 on {2, 3}.
    expected = [1.0, -2.0, 0.25 - 1.0 - 0.25, -1.0 - 0.5 - 0.25, 3.0, 0.0]
    assert penalised(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25) == pytest.approx(expected)


def test_penalties_touch_only_rows_that_ask_for_them() -> None:
    logits = torch.tensor([PENALTY_LOGITS, PENALTY_LOGITS])
    rows = [SamplingRow(SamplingParams(), PROMPT, list(OUTPUT)),
            SamplingRow(SamplingParams(repetition_penalty=2.0), PROMPT, list(OUTPUT))]
    apply_penalties(logits, rows)
    assert logits[0].tolist() == PENALTY_LOGITS
    assert logits[1].tolist() == pytest.approx([1.0, -2.0, 0.25, -1.0, 3.0, 0.0])


def test_penalty_changes_the_greedy_choice() -> None:
    logits = torch.tensor([PENALTY_LOGITS])
    sampler = Sampler([EOS])
    assert sampler(logits, [row([4], temperature=0)]).token_ids == [4]
    assert sampler(logits, [row([4], temperature=0, repetition_penalty=2.0)]).token_ids == [0]


# ---------------------------------------------------------------------------------------------
# min_tokens and eos
# ---------------------------------------------------------------------------------------------


def eos_first_logits() -> torch.Tensor:
    logits = torch.zeros(1, VOCAB)
    logits[0, EOS] = 5.0
    logits[0, 7] = 4.0
    logits[0, 9] = 3.0
    return logits


@pytest.mark.parametrize("ignore_eos", [False, True])
def test_min_tokens_masks_eos_until_reached(ignore_eos: bool) -> None:
    sampler = Sampler([EOS])
    target = row(temperature=0, min_tokens=3, ignore_eos=ignore_eos)
    for _ in range(3):
        token = sampler(eos_first_logits(), [target]).token_ids[0]
        assert token == 7
        target.output_ids.append(token)
    assert sampler(eos_first_logits(), [target]).token_ids == [EOS]


def test_min_tokens_masks_stop_token_ids_too() -> None:
    target = row(temperature=0, min_tokens=1, stop_token_ids=[7])
    assert Sampler([EOS])(eos_first_logits(), [target]).token_ids == [9]


def test_min_tokens_ignores_stop_ids_outside_the_vocabulary() -> None:
    # The official client sends stop id 151665 whatever the model; it must not index past the logits.
    target = row(temperature=0, min_tokens=1, stop_token_ids=[7, VOCAB + 100])
    assert Sampler([EOS, VOCAB + 5])(eos_first_logits(), [target]).token_ids == [9]


def test_ignore_eos_alone_never_masks_eos() -> None:
    assert Sampler([EOS])(eos_first_logits(), [row(temperature=0, ignore_eos=True)]).token_ids == [EOS]


def test_min_tokens_masks_eos_for_random_rows() -> None:
    torch.manual_seed(0)
    tokens = Sampler([EOS])(eos_first_logits().expand(2000, VOCAB), [row(min_tokens=1) for _ in range(2000)])
    assert EOS not in tokens.token_ids


# ---------------------------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------------------------

STEPS = 40


def run_batch(rows: list[SamplingRow], streams: list[list[torch.Tensor]], global_seed: int) -> list[list[int]]:
    """Sample STEPS tokens for every row, appending each to its outputs as the engine would."""
    torch.manual_seed(global_seed)
    sampler = Sampler([EOS])
    for step in range(STEPS):
        out = sampler(torch.stack([stream[step] for stream in streams]), rows)
        for r, token in zip(rows, out.token_ids):
            r.output_ids.append(token)
    return [r.output_ids for r in rows]


def target_row() -> SamplingRow:
    return row(temperature=0.9, top_p=0.95, top_k=20, repetition_penalty=1.1, presence_penalty=0.3, seed=1234)


def other_rows() -> list[SamplingRow]:
    return [row(), row(seed=7), row(temperature=0), row(top_k=5, seed=99), row(min_p=0.05, frequency_penalty=1.0)]


@pytest.mark.parametrize("position", [0, 2, 5])
def test_seeded_row_is_independent_of_its_batch(position: int) -> None:
    target_stream = logit_stream(0, STEPS)
    alone = run_batch([target_row()], [target_stream], global_seed=1)[0]
    assert len(set(alone)) > 5, "the test needs a genuinely random sequence"
    rows, streams = other_rows(), [logit_stream(i + 1, STEPS) for i in range(5)]
    rows.insert(position, target_row())
    streams.insert(position, target_stream)
    assert run_batch(rows, streams, global_seed=2)[position] == alone


def test_different_seeds_give_different_sequences() -> None:
    stream = logit_stream(0, STEPS)
    runs = [run_batch([row(seed=seed)], [stream], global_seed=0)[0] for seed in (1, 2)]
    assert runs[0] != runs[1]


def test_unseeded_rows_follow_the_global_rng() -> None:
    stream = logit_stream(0, STEPS)
    assert run_batch([row()], [stream], global_seed=3) == run_batch([row()], [stream], global_seed=3)
    assert run_batch([row()], [stream], global_seed=3) != run_batch([row()], [stream], global_seed=4)


def test_make_generator() -> None:
    assert make_generator(None) is None
    a, b = make_generator(42), make_generator(42)
    assert torch.equal(torch.rand(8, generator=a), torch.rand(8, generator=b))


def test_child_seed_is_distinct_and_reproducible() -> None:
    seeds = [child_seed(100, i) for i in range(8)]
    assert len(set(seeds)) == 8
    assert seeds == [child_seed(100, i) for i in range(8)]
    assert child_seed(None, 3) is None


def test_children_of_one_seeded_request_sample_differently() -> None:
    stream = logit_stream(0, STEPS)
    children = [SamplingRow.for_request(SamplingParams(seed=child_seed(5, i)), [1]) for i in range(4)]
    outputs = run_batch(children, [stream] * 4, global_seed=0)
    assert len({tuple(o) for o in outputs}) == 4


# ---------------------------------------------------------------------------------------------
# Distribution
# ---------------------------------------------------------------------------------------------

DRAWS = 20_000
BASE = torch.tensor([1.0, 0.5, 0.0, -0.5, -1.0, 0.2])


def test_temperature_sampling_matches_softmax() -> None:
    torch.manual_seed(0)
    tokens = Sampler([EOS])(BASE.expand(DRAWS, -1), [row(temperature=0.7) for _ in range(DRAWS)]).token_ids
    assert_frequencies_match(tokens, torch.softmax(BASE / 0.7, dim=-1))


def test_seeded_draws_match_softmax() -> None:
    # 2,000 seeded rows x 10 steps: the per-row generator path, not the global one.
    rows = [row(temperature=1.3, seed=s) for s in range(2_000)]
    sampler, tokens = Sampler([EOS]), []
    for _ in range(10):
        tokens += sampler(BASE.expand(len(rows), -1), rows).token_ids
    assert_frequencies_match(tokens, torch.softmax(BASE / 1.3, dim=-1))


def test_top_k_renormalises_over_the_kept_tokens() -> None:
    torch.manual_seed(0)
    tokens = Sampler([EOS])(BASE.expand(DRAWS, -1), [row(top_k=3) for _ in range(DRAWS)]).token_ids
    expected = torch.zeros(len(BASE))
    expected[[0, 1, 5]] = torch.softmax(BASE[[0, 1, 5]], dim=-1)
    assert_frequencies_match(tokens, expected)


# ---------------------------------------------------------------------------------------------
# Logprobs
# ---------------------------------------------------------------------------------------------


def test_logprobs_come_from_raw_logits_with_rank_and_sorted_top() -> None:
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(3))
    rows = [row(temperature=0.3, repetition_penalty=1.8, presence_penalty=1.0, logprobs=5, seed=1),
            row(logprobs=None),
            row(temperature=0, logprobs=0)]
    out = Sampler([EOS])(logits, rows)
    raw = torch.log_softmax(logits, dim=-1)
    first = out.logprobs[0]
    assert first is not None and first.token_id == out.token_ids[0]
    assert first.logprob == pytest.approx(raw[0, first.token_id].item(), abs=1e-6)
    assert first.rank == 1 + int((raw[0] > raw[0, first.token_id]).sum())
    assert [t for t, _ in first.top] == raw[0].topk(5).indices.tolist()
    assert [lp for _, lp in first.top] == pytest.approx(raw[0].topk(5).values.tolist(), abs=1e-6)
    assert [lp for _, lp in first.top] == sorted((lp for _, lp in first.top), reverse=True)
    assert out.logprobs[1] is None
    assert out.logprobs[2] is not None and out.logprobs[2].top == [] and out.logprobs[2].rank == 1


def test_logprob_of_a_forced_token_keeps_the_masked_mass() -> None:
    # min_tokens hides eos (the raw favourite); the token chosen instead has raw rank 2.
    logits = eos_first_logits()
    out = Sampler([EOS])(logits, [row(temperature=0, min_tokens=1, logprobs=1)])
    lp = out.logprobs[0]
    assert lp is not None and lp.token_id == 7 and lp.rank == 2
    assert lp.logprob == pytest.approx(torch.log_softmax(logits[0], dim=-1)[7].item(), abs=1e-6)
    assert lp.top[0][0] == EOS
    assert math.isfinite(lp.top[0][1])
