"""MGRD on a tiny model: the data's answers measured back from the audio, the grounding filter on fixed
chains, GRPO's advantages and loss by hand, a reward that favours one token, resume, the whole pipeline."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from audio_measure import peak_hz, segments
from stepaudio.train.mgrd.config import DPOConfig
from mgrd_fixtures import tiny_assembly, tiny_config_for, tiny_policy
from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from stepaudio.engine.sampling import SamplingParams
from stepaudio.cli import main
from stepaudio.train.align import batch_from_ids, build_batch
from stepaudio.train.examples import Example
from stepaudio.train.mgrd import grounding
from stepaudio.train.mgrd.config import load_config
from stepaudio.train.mgrd.objectives import advantages, audio_reward, dpo_loss, policy_loss, sft_loss
from stepaudio.train.mgrd.pipeline import binomial_margin, run_mgrd
from stepaudio.train.mgrd.policy import Policy, load_folder, merge_in_place, replay_merges, reset_lora
from stepaudio.train.mgrd.stages import sft
from stepaudio.train.mgrd.tasks import sound_items, text_items
from stepaudio.train.mgrd.trainer import train_steps

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- data: answers measured from the audio

def _measured_answer(task: str, wav: np.ndarray) -> str:
    parts = segments(wav)
    if task == "count":
        return str(len(parts))
    if task == "direction":
        (sweep,) = parts
        fifth = len(sweep) // 5
        return "rising" if peak_hz(sweep[-fifth:]) > peak_hz(sweep[:fifth]) else "falling"
    first, second = parts
    if task == "higher":
        a, b = peak_hz(first), peak_hz(second)
    elif task == "louder":
        a, b = np.sqrt(np.mean(first ** 2)), np.sqrt(np.mean(second ** 2))
    else:
        a, b = len(first), len(second)
    return "the first" if a > b else "the second"


@pytest.mark.parametrize("heldout", [False, True])
def test_every_answer_is_what_the_audio_measures(heldout):
    items = sound_items(3, ("higher", "louder", "longer", "direction", "count"), 6, heldout, "check")
    for g in items:
        assert _measured_answer(g.task, g.clips[0]) == g.item.answer, g.item.id
        assert g.correct(g.reply) and not g.correct("I am not sure.")
    # the first tone is drawn from 1300-2200 Hz for held-out items, from 250-1200 Hz for training
    firsts = [peak_hz(segments(g.clips[0])[0]) for g in items if g.task == "higher"]
    assert all((f > 1250) == heldout for f in firsts), firsts


def test_varied_phrasings_ask_training_items_in_many_ways_and_never_in_a_held_out_one():
    from stepaudio.train.mgrd.phrasings import BANK

    tasks = tuple(BANK)
    plain = sound_items(2, tasks, 40, False, "phr")
    varied = sound_items(2, tasks, 40, False, "phr", "varied")
    assert all(np.array_equal(a.clips[0], b.clips[0]) and a.item.answer == b.item.answer
               and a.item.choices == b.item.choices for a, b in zip(plain, varied))  # the same clips, answers
    for task in tasks:
        asked = {g.item.question for g in varied if g.task == task}
        assert asked <= set(BANK[task]) and len(asked) >= 6, asked
        assert len({g.item.question for g in plain if g.task == task}) <= 2
    held = {g.item.question for g in sound_items(2, tasks, 40, True, "phr", "varied")}
    assert held == {g.item.question for g in sound_items(2, tasks, 40, True, "phr")}  # held-out items keep theirs
    assert not held & {q for bank in BANK.values() for q in bank}
    (t,) = sound_items(2, ("count",), 1, False, "phr", "varied")  # a task without a bank keeps its question
    assert t.item.question == sound_items(2, ("count",), 1, False, "phr")[0].item.question


def test_item_sets_do_not_overlap_and_text_items_score():
    a = sound_items(0, ("higher",), 4, False, "distill0")
    b = sound_items(0, ("higher",), 4, False, "distill1")
    assert not any(np.array_equal(x.clips[0], y.clips[0]) for x in a for y in b)
    assert all(np.array_equal(x.clips[0], y.clips[0]) for x, y in zip(a, sound_items(0, ("higher",), 4, False, "distill0")))
    (t,) = text_items(0, 1, False, "t")
    assert t.correct(f"The answer is {t.item.answer}.") and t.clips == ()
    a, b = (int(x) for x in t.item.question.split("?")[0].split() if x.isdigit())
    assert t.correct(f"{a} {'plus' if int(t.item.answer) == a + b else 'minus'} {b} equals {t.item.answer}.")


# ---------------------------------------------------------------- the grounding filter

TRUTH = "There are two tones. The first is about 2069 Hz and the second about 467 Hz, so the first tone is higher."
GROUNDED = ("I hear two tones. The first one is near 2000 Hz, the second much lower, about 480 Hz, so the first "
            "is higher.")
INVENTED = "There are two tones. The first is about 1031 Hz and the second about 1400 Hz, so the first tone is higher."
SURROGATE = "The transcript says the first tone is higher, so based on the text I pick the first."
DENIAL = "I cannot hear audio because I am a text-based model, so I will guess the first."
# After R1-v2 Appendix A.2: the "after" chain cites what is heard, the "before" one the words and its deafness.
APPENDIX_AFTER = ("The speaker's tone is hesitant: the pitch drops at the end, the pacing is slow and there is a "
                  "long pause and an 'um' before the answer, so the speaker sounds unsure.")
APPENDIX_BEFORE = ("Based on the text of the transcript, the speaker says they are fine. I can't hear the audio, so "
                   "I assume they are happy.")


def test_lexical_filter_separates_grounded_from_surrogate_chains():
    assert grounding.lexically_grounded(GROUNDED) and grounding.lexically_grounded(APPENDIX_AFTER)
    for chain in (SURROGATE, DENIAL, APPENDIX_BEFORE, "The answer is the first."):
        assert not grounding.lexically_grounded(chain), chain
    assert grounding.claims_no_hearing(DENIAL) and grounding.claims_no_hearing(APPENDIX_BEFORE)
    assert not grounding.claims_no_hearing(GROUNDED)


def test_quantity_check_rejects_invented_numbers():
    assert grounding.quantities("a 1.5 kHz tone for 250 ms at -6 dB") == {"hz": [1500.0], "db": [-6.0], "s": [0.25]}
    assert grounding.quantities_agree(GROUNDED, TRUTH)
    assert not grounding.quantities_agree(INVENTED, TRUTH)
    assert not grounding.quantities_agree("It lasts 3 s.", TRUTH)  # the truth states no duration
    verdict = grounding.check_chain(INVENTED, "the first", True, TRUTH, "Which is higher?")
    assert verdict.lexical and not verdict.quantities and not verdict.keep
    assert grounding.check_chain(GROUNDED, "the first", True, TRUTH, "Which is higher?").keep
    assert not grounding.check_chain(GROUNDED, "the second", False, TRUTH, "Which is higher?").keep


LOUDER_TRUTH = "Both tones are about 1100 Hz. The first peaks near -8 dB and the second near -20 dB, so the first is louder."
PITCH_TEMPLATE = "There are two tones. The first is about 1162 Hz and the second about 952 Hz, so the first tone is louder."


def test_a_chain_must_cite_the_cue_its_answer_depends_on():
    # the pitch template argues a loudness answer from frequencies near the clip's: the quantities pass
    verdict = grounding.check_chain(PITCH_TEMPLATE, "the first", True, LOUDER_TRUTH, "Which is louder?", task="louder")
    assert verdict.lexical and verdict.quantities and not verdict.cue and not verdict.keep
    assert grounding.check_chain(PITCH_TEMPLATE, "the first", True, LOUDER_TRUTH, "Which is louder?").keep  # no task
    levels = "The first tone peaks near -9 dB and the second is much quieter, about -19 dB, so the first is louder."
    assert grounding.check_chain(levels, "the first", True, LOUDER_TRUTH, "Which is louder?", task="louder").keep
    # the generator's own reasoning cites its task's cue; its answer sentence alone does not
    for g in sound_items(4, tuple(grounding.TASK_CUES), 3, False, "cue"):
        assert grounding.cites_task_cue(g.task, g.reference), g.reference
        if g.task in ("higher", "louder", "direction"):
            assert not grounding.cites_task_cue(g.task, g.reply), g.reply


def test_a_chain_whose_numbers_contradict_its_answer_is_not_kept():
    truth = "Both tones are about 1137 Hz. The first peaks near -19 dB and the second near -13 dB, so the second is louder."
    chain = "Both tones are about 1137 Hz. The first peaks near -19 dB and the second near -13 dB, so the {} is louder."
    wrong = grounding.check_chain(chain.format("first"), "The first is louder.", True, truth, "Which?", task="louder")
    assert wrong.quantities and wrong.cue and not wrong.consistent and not wrong.keep
    assert grounding.check_chain(chain.format("second"), "The second.", True, truth, "Which?", task="louder").keep
    assert not grounding.numbers_lead_to_answer("direction", "It starts near 1500 Hz and ends near 800 Hz.", "Rising.")
    assert grounding.numbers_lead_to_answer("direction", "It starts near 1500 Hz and ends near 800 Hz.", "Falling.")
    assert not grounding.numbers_lead_to_answer("higher", "The first is about 1.2 kHz, the second 1500 Hz.", "The first")
    assert grounding.numbers_lead_to_answer("higher", "One tone at 900 Hz.", "The first")  # one number: nothing to order
    for g in sound_items(6, ("higher", "louder", "direction"), 6, False, "order"):
        assert grounding.numbers_lead_to_answer(g.task, g.reference, g.reply), (g.reference, g.reply)
        other = g.reply.replace("first", "second") if "first" in g.reply else g.reply.replace("second", "first")
        if g.task == "direction":
            other = g.reply.replace("rising", "falling") if "rising" in g.reply else g.reply.replace("falling", "rising")
        assert other != g.reply and not grounding.numbers_lead_to_answer(g.task, g.reference, other), (g.reference, other)


def test_rubric_verdicts_parse_and_the_judge_talks_to_an_openai_server(tiny_dir):  # noqa: F811
    from server_fixtures import ENGINE_OPTIONS, MODEL, running_server
    from stepaudio.engine.llm import LLM

    assert grounding.parse_rubric("<think>hm</think>GROUNDED COHERENT") == (True, True)
    assert grounding.parse_rubric("SURROGATE, INCOHERENT") == (False, False)
    assert grounding.parse_rubric("GROUNDED INCOHERENT") == (True, False)
    assert grounding.parse_rubric("no idea") == (False, False)
    with running_server(LLM(tiny_dir, dtype="float32", **ENGINE_OPTIONS)) as url:  # our server, the tiny model
        judge = grounding.RubricJudge(f"{url}/v1", MODEL)
        verdict = judge.verdict("Which is higher?", GROUNDED, "the first")
    assert verdict in {(a, b) for a in (True, False) for b in (True, False)}


# ---------------------------------------------------------------- GRPO and DPO by hand

def test_advantages_match_hand_computation():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.2, 0.2, 0.2, 0.2]])
    # mean 0.5, population std 0.5: z-scores +-1; a constant group gives 0
    assert torch.allclose(advantages(r, "grpo"), torch.tensor([[1.0, -1.0, -1.0, 1.0], [0, 0, 0, 0.0]]), atol=1e-5)
    # leave-one-out: 1 - 1/3, 0 - 2/3
    assert torch.allclose(advantages(r, "rloo")[0], torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]))
    assert torch.allclose(advantages(r, "mean")[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    assert audio_reward(True, True) == pytest.approx(1.0) and audio_reward(False, True) == pytest.approx(0.2)
    assert audio_reward(True, False) == pytest.approx(0.8)


def test_clipped_policy_loss_matches_hand_computation():
    old = torch.log(torch.tensor([0.5, 0.5, 0.5]))
    new = torch.log(torch.tensor([0.75, 0.55, 0.25])).requires_grad_(True)  # ratios 1.5, 1.1, 0.5
    adv = torch.tensor([1.0, 1.0, -1.0])
    loss = policy_loss(new, old, adv, normaliser=3, clip=0.2)
    # token 1: min(1.5, 1.2) = 1.2 (clipped); token 2: 1.1; token 3: min(-0.5, -0.8) = -0.8
    assert float(loss) == pytest.approx(-(1.2 + 1.1 - 0.8) / 3, abs=1e-6)
    loss.backward()
    # the clipped tokens get no gradient; token 2's is -ratio * A / 3
    assert torch.allclose(new.grad, torch.tensor([0.0, -1.1 / 3, 0.0]), atol=1e-6)


def test_dpo_loss_matches_hand_computation():
    loss = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.5, 1)
    assert float(loss) == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))


# ---------------------------------------------------------------- training on the tiny model

def test_a_reward_favouring_one_token_raises_its_probability(tmp_path):
    """GRPO with rollouts sampled from the current policy by our engine; reward 1 when the first sampled
    token is the favoured one."""
    torch.manual_seed(0)
    policy = tiny_policy(tmp_path, lr_lora=1e-2)
    tok = policy.tokenizer
    from stepaudio.inputs import prepare_chat

    prompt = prepare_chat(tok, [{"role": "user", "content": "Say something."}], [])
    # the favoured token: one the untrained policy samples now and then (a group with no hit has no signal)
    (first,) = policy.sampler(kv_cache_memory_gb=0.01).generate(
        [prompt], SamplingParams(n=64, temperature=1.0, max_tokens=1, seed=123))
    counts = Counter(c.token_ids[0] for c in first.completions)
    target = max(counts, key=lambda t: (counts[t], -t))

    def prob() -> float:
        with torch.no_grad():
            logprobs, _ = policy.forward(batch_from_ids(tok, [prompt], [[target]], ["x"]))
        return float(logprobs.exp()[0])

    def step_loss(step: int):
        llm = policy.sampler(kv_cache_memory_gb=0.01)
        (result,) = llm.generate([prompt], SamplingParams(n=32, temperature=1.0, max_tokens=1, seed=step))
        firsts = [c.token_ids[0] for c in result.completions]
        rewards = torch.tensor([[float(t == target) for t in firsts]])
        adv = advantages(rewards, "grpo")[0]
        logprobs, _ = policy.forward(batch_from_ids(tok, [prompt] * 32, [[t] for t in firsts], ["x"] * 32))
        return policy_loss(logprobs, logprobs.detach(), adv, 32), {"hits": int(rewards.sum())}

    before = prob()
    train_steps(policy, step_loss, 3, tmp_path / "rl", "rl", save_every=100, progress=False)
    assert prob() > min(0.9, before + 0.2), (before, prob())


def _examples() -> list[Example]:
    g = sound_items(0, ("count",), 1, False, "x")[0]
    messages, audio = g.messages(inline_audio=False)
    return [Example("count", messages, audio, f"{g.reference}\n</think>\n\n{g.reply}"),
            Example("text", [{"role": "user", "content": "What is two plus two?"}], [],
                    "Two plus two.\n</think>\n\nFour.")]


def test_sft_resume_gives_identical_state_and_merges_replay_exactly(tmp_path):
    cfg = tiny_config_for(tmp_path / "cfg")
    straight = tiny_policy(tmp_path / "a", lr_adapter=1e-2)
    cfg.sft.steps = 4
    sft(straight, cfg, _examples(), tmp_path / "a", "sft", progress=False)
    resumed = tiny_policy(tmp_path / "b", lr_adapter=1e-2)
    cfg.sft.steps = 2
    sft(resumed, cfg, _examples(), tmp_path / "b", "sft", progress=False)
    resumed = tiny_policy(tmp_path / "b", lr_adapter=1e-2)  # a new process: state.pt is all that is left
    cfg.sft.steps = 4
    sft(resumed, cfg, _examples(), tmp_path / "b", "sft", progress=False)
    a, b = straight.trainable_state(), resumed.trainable_state()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len((tmp_path / "b" / "log.jsonl").read_text().splitlines()) == 4
    # merging in place and replaying the stored merge onto a fresh start give the same weights
    merge_in_place(straight, tmp_path / "a" / "merges" / "00-sft.pt")
    fresh = tiny_assembly()
    n = replay_merges(fresh, tmp_path / "a", straight.scale)
    replayed = Policy(fresh, 2, 4.0, "float32", 1e-2, 1e-2, tmp_path / "c")  # what a resumed run builds
    reset_lora(replayed, n)
    for (k, x), y in zip(straight.folded_state().items(), replayed.folded_state().values()):
        assert torch.equal(x, y), k


def _old_release_steps(policy: Policy, step_loss: Callable, steps: int, folder: Path) -> None:
    """`steps` updates as train_steps makes them (no warm-up, one process), saved as releases before FSDP saved
    a stage: AdamW's own state_dict, keyed by parameter index."""
    optimizer = torch.optim.AdamW(policy.parameter_groups(), weight_decay=0.0)
    for step in range(steps):
        loss, _ = step_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
        optimizer.step()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"step": steps, "trainable": policy.trainable_state(), "optimizer": optimizer.state_dict()},
               folder / "state.pt")


def test_an_index_keyed_state_from_an_older_release_resumes_exactly(tmp_path):
    """The old state's index i is the i-th parameter of its group; after a text-only first step the adaptor
    has no AdamW state yet, and the resumed run must start it afresh, as the run it continues would."""
    audio, text = _examples()

    def losses(policy: Policy) -> Callable:
        def step_loss(step: int):
            batch = build_batch(policy.tokenizer, [text] if step == 0 else [audio, text], policy.config.audio.n_mels)
            logprobs, _ = policy.forward(batch)
            return sft_loss(logprobs, logprobs.numel()), {}
        return step_loss

    straight = tiny_policy(tmp_path / "a", lr_adapter=1e-2)
    train_steps(straight, losses(straight), 3, tmp_path / "a", "sft", save_every=100, progress=False)
    old = tiny_policy(tmp_path / "b", lr_adapter=1e-2)
    _old_release_steps(old, losses(old), 1, tmp_path / "b")
    saved = torch.load(tmp_path / "b" / "state.pt", weights_only=True)["optimizer"]
    assert all(isinstance(k, int) for k in saved["state"]) and len(saved["state"]) < sum(
        len(g["params"]) for g in saved["param_groups"])  # the adaptor's entries are missing
    resumed = tiny_policy(tmp_path / "b", lr_adapter=1e-2)
    train_steps(resumed, losses(resumed), 3, tmp_path / "b", "sft", save_every=100, progress=False)
    a, b = straight.trainable_state(), resumed.trainable_state()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rewritten = torch.load(tmp_path / "b" / "state.pt", weights_only=True)["optimizer"]
    assert set(rewritten["state"]) <= set(a) and rewritten["state"]  # saved again keyed by name


def test_an_index_keyed_state_that_does_not_match_is_refused_in_one_line(tmp_path, tiny_dir, capsys):  # noqa: F811
    """An old state for other parameters (one group where this stage trains two): `stepaudio train mgrd`
    stops with one line saying which file to delete, no traceback."""
    cfg = asdict(tiny_config_for(tmp_path / "run", model=str(tiny_dir), stages=("distill",)))
    (tmp_path / "run.json").write_text(json.dumps(cfg, default=str))
    state = tmp_path / "run" / "distill_round0" / "state.pt"
    state.parent.mkdir(parents=True)
    torch.save({"step": 1, "trainable": {}, "optimizer": {
        "state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}},
        "param_groups": [{"lr": 1e-4, "params": [0]}]}}, state)
    assert main(["train", "mgrd", "--config", str(tmp_path / "run.json"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"stepaudio train: error: {state} was saved by an older stepaudio for other trainable parameters than this "
        "stage trains; delete it to start distill_round0 again from step 0 (finished stages are kept)")
    assert state.is_file()  # left for the user to delete


STAGE_FOLDERS = ("data", "evaluate_before", "distill_round0", "rl_round0", "dpo", "evaluate_after")
MERGES = ["00-distill_round0.pt", "01-rl_round0.pt", "02-dpo.pt"]


def _rewritten_by(rerun: Callable[[], object], out: Path) -> list[Path]:
    """Files in the run folder that `rerun` touches, but the run's summary (redrawn on every run)."""
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    rerun()
    rewritten = ("summary.json", "config.json", "sweep_before_after.png")
    return [p for p in stamp if p.stat().st_mtime_ns != stamp[p] and p.name not in rewritten]


def test_every_stage_runs_and_a_rerun_resumes_without_redoing_work(tmp_path):
    cfg = tiny_config_for(tmp_path / "run")
    summary = run_mgrd(cfg, progress=False, assembly=tiny_assembly())
    out = tmp_path / "run"
    for folder in STAGE_FOLDERS:
        assert (out / folder / "stats.json").is_file() and (out / folder / "stage.log").is_file(), folder
    assert sorted(p.name for p in (out / "merges").glob("*.pt")) == MERGES
    assert (out / "evaluate_before" / "sweep.png").is_file() and (out / "sweep_before_after.png").is_file()
    chains = json.loads((out / "distill_round0" / "chains.json").read_text())
    assert chains["stats"]["audio_chains"] == 2 * 2  # two audio items, K = 2 chains each
    assert set(summary["tasks"]) == {"higher", "count"} and "before" in summary["tasks"]["higher"]
    answers = [json.loads(line)["gold"] for line in (out / "evaluate_before" / "results.jsonl").open()
               if "-higher-" in json.loads(line)["id"] and json.loads(line)["budget"] == "inf"]
    assert summary["tasks"]["higher"]["fixed_answer_accuracy"] == max(map(answers.count, set(answers))) / len(answers)
    assert len((out / "distill_round0" / "log.jsonl").read_text().splitlines()) == 2
    exported = load_folder(out / "model").state  # the trained model: the base with every merge applied
    replayed, base = tiny_assembly(), tiny_assembly().state
    assert replay_merges(replayed, out, cfg.lora_alpha / cfg.lora_rank) == len(MERGES)
    assert exported.keys() == replayed.state.keys()
    for k, v in replayed.state.items():
        # The decoder trains in the run's decoder dtype (bf16 where the CPU has bf16 kernels): equal up to its
        # rounding; the adaptor is fp32 throughout.
        scale = 1e-5 if k.startswith("adapter.") else 2 ** -7
        assert float((exported[k] - v).abs().max()) <= scale * float(v.abs().max()), k
    assert any(not torch.equal(exported[k], base[k]) for k in base if k.startswith("adapter."))
    changed = _rewritten_by(lambda: run_mgrd(cfg, progress=False, assembly=tiny_assembly()), out)
    assert not changed, changed


def test_dpo_skips_its_updates_when_no_probe_reply_denies_hearing(tmp_path):
    cfg = tiny_config_for(tmp_path / "run", stages=("data", "dpo"), decoder_dtype="float32", dpo=DPOConfig(pairs=1, steps=1, batch_size=1,
                                                                                 probes=1, skip_without_denials=True))
    run_mgrd(cfg, progress=False, assembly=tiny_assembly())
    folder = tmp_path / "run" / "dpo"
    before = json.loads((folder / "before.json").read_text())
    assert before["denial_rate"] == 0 and before["replies"]  # measured on the probe replies
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["skipped"] and stats["pairs"] == 0 and not (folder / "pairs.json").exists()
    merge = torch.load(tmp_path / "run" / "merges" / "00-dpo.pt", weights_only=True)
    assert merge and all(float(v.abs().max()) == 0 for k, v in merge.items() if k.endswith("lora_B"))
    exported, base = load_folder(tmp_path / "run" / "model").state, tiny_assembly().state
    assert all(torch.equal(exported[k], base[k]) for k in base)  # nothing was trained


def test_binomial_margin():
    assert binomial_margin(15, 20, 0.5) == pytest.approx(0.25 / math.sqrt(0.25 / 20))


# ---------------------------------------------------------------- config and command line

def test_config_files_in_three_formats_and_clear_errors(tmp_path):
    (tmp_path / "a.toml").write_text('out = "r"\n[rl]\nestimator = "rloo"\n[data]\ntasks = ["higher"]\n')
    (tmp_path / "a.yaml").write_text("out: r\nrl:\n  estimator: rloo\ndata:\n  tasks: [higher]\n")
    (tmp_path / "a.json").write_text(json.dumps({"out": "r", "rl": {"estimator": "rloo"},
                                                 "data": {"tasks": ["higher"]}}))
    configs = [load_config(tmp_path / f"a.{ext}") for ext in ("toml", "yaml", "json")]
    assert all(c.rl.estimator == "rloo" and c.data.tasks == ("higher",) and c.out == tmp_path / "r" for c in configs)
    (tmp_path / "bad.toml").write_text('out = "r"\n[rl]\nestimatr = "rloo"\n')
    with pytest.raises(ValueError, match="unknown setting 'estimatr'"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "bad2.toml").write_text('out = "r"\n[data]\ntasks = ["pitchh"]\n')
    with pytest.raises(ValueError, match="unknown task 'pitchh'"):
        load_config(tmp_path / "bad2.toml")
    (tmp_path / "bad4.toml").write_text('out = "r"\n[data]\nphrasings = "many"\n')
    with pytest.raises(ValueError, match="data.phrasings must be one of generator, varied, not 'many'"):
        load_config(tmp_path / "bad4.toml")
    (tmp_path / "bad3.toml").write_text('out = "r"\nparallel = "zero"\n')
    with pytest.raises(ValueError, match="parallel must be one of ddp, fsdp, not 'zero'"):
        load_config(tmp_path / "bad3.toml")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    run = subprocess.run([sys.executable, "-m", "stepaudio", "train", "mgrd", "--config", str(tmp_path / "bad.toml")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].startswith("stepaudio train mgrd: ")
    (tmp_path / "small.toml").write_text('out = "r"\n[dpo]\nbatch_size = 1\n')
    run = subprocess.run([sys.executable, "-m", "stepaudio", "train", "mgrd", "--config", str(tmp_path / "small.toml")],
                         capture_output=True, text=True, env={**env, "WORLD_SIZE": "2"}, timeout=120)
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [
        "stepaudio train mgrd: dpo.batch_size is 1, below the 2 processes: each needs a share of every batch"]
    load_config(tmp_path / "small.toml").check_world_size(1)  # one process takes any batch


# ---------------------------------------------------------------- data parallel

WORKER = Path(__file__).parent / "mgrd_parallel_worker.py"
WORKER_ENV = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{Path(__file__).parent}", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    """The worker's tensors from one process (unwrapped: the reference for every parallel mode)."""
    out = tmp_path_factory.mktemp("one") / "one.pt"
    run = subprocess.run([sys.executable, str(WORKER), str(out), "ddp"], env=WORKER_ENV, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return torch.load(out)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_two_processes_give_the_one_process_update(tmp_path, one_process, parallel):
    """SFT steps (with a resume, clipping, and ranks whose share has no audio), the LoRA merge and the
    engine's gathered weights: the same under `torchrun --nproc_per_node 2` as in one process."""
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                          "2", str(WORKER), str(tmp_path / "two.pt"), parallel], env=WORKER_ENV,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = one_process, torch.load(tmp_path / "two.pt")
    assert a["held"] == a["numel"] == b["numel"]
    assert b["held"] == b["numel"] if parallel == "ddp" else b["held"] < 0.6 * b["numel"]  # FSDP: rank 0's shards
    assert a["initial"].keys() == b["final"].keys() == a["merge"].keys()
    moved = max(float((a["final"][k] - a["initial"][k]).abs().max()) for k in a["final"])
    assert moved > 1e-3
    for part in ("final", "merge", "folded"):
        assert a[part].keys() == b[part].keys(), part
        for k in a[part]:
            # Batches of two rows and of four round differently in fp32 kernels: after three Adam steps up to
            # 1e-5 apart on an AVX-512 EPYC. A rank whose gradients were not averaged is off by about lr = 1e-2.
            torch.testing.assert_close(a[part][k], b[part][k], rtol=1e-3, atol=3e-5)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices (torchrun over nccl, one GPU each)")
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_on_two_gpus_gives_the_one_gpu_update(tmp_path, parallel):
    """The worker with device cuda: one process on GPU 0, then `torchrun --nproc_per_node 2`, each rank on the
    GPU of its LOCAL_RANK over nccl; the same tensors (a little looser than on the CPU: GPU kernels vary with
    the batch shape)."""
    one = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "one.pt"), parallel, "cuda"], env=WORKER_ENV,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(WORKER), str(tmp_path / "two.pt"), parallel, "cuda"], env=WORKER_ENV,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for part in ("final", "merge", "folded"):
        assert a[part].keys() == b[part].keys(), part
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], rtol=1e-3, atol=1e-5)


def test_torchrun_fsdp_runs_every_stage_from_the_command_line(tmp_path, tiny_dir):  # noqa: F811
    """`torchrun --nproc_per_node 2 -m stepaudio train mgrd` with parallel = "fsdp" on a model folder: the
    held-out evaluations, distillation, GRPO rollouts and DPO all run on the sharded policy, and a rerun
    redoes nothing."""
    cfg = asdict(tiny_config_for(tmp_path / "run", model=str(tiny_dir), parallel="fsdp"))
    cfg["dpo"]["batch_size"] = 2  # each rank needs a share of every global batch
    (tmp_path / "run.json").write_text(json.dumps(cfg, default=str))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "stepaudio", "train", "mgrd", "--config", str(tmp_path / "run.json"), "--no-progress"]

    def run() -> None:
        done = subprocess.run(command, env=WORKER_ENV, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    run()
    out = tmp_path / "run"
    for folder in STAGE_FOLDERS:
        assert (out / folder / "stats.json").is_file(), folder
    assert sorted(p.name for p in (out / "merges").glob("*.pt")) == MERGES
    summary = json.loads((out / "summary.json").read_text())
    assert {"before", "after"} <= set(summary["tasks"]["higher"])
    changed = _rewritten_by(run, out)
    assert not changed, changed


def test_evaluate_each_stage_measures_the_held_out_items_after_every_training_unit(tmp_path):
    """Two distill rounds then evaluate_after: the first round gets its own evaluation, the second is the
    run's evaluate_after (not evaluated twice); summary.json lists the accuracy stage by stage."""
    cfg = tiny_config_for(tmp_path / "run", stages=("data", "evaluate_before", "distill", "evaluate_after"),
                          evaluate_each_stage=True)
    cfg.distill.rounds = 2
    summary = run_mgrd(cfg, progress=False, assembly=tiny_assembly())
    out = tmp_path / "run"
    assert (out / "evaluate_after_distill_round0" / "results.jsonl").is_file()
    assert not (out / "evaluate_after_distill_round1").exists()
    assert list(summary["by_stage"]) == ["evaluate_before", "evaluate_after_distill_round0", "evaluate_after"]
    for name, row in summary["by_stage"].items():
        records = [json.loads(line) for line in (out / name / "results.jsonl").open()]
        higher = [r for r in records if r["category"] == "higher" and r["budget"] == "inf"]
        assert row["higher"] == sum(bool(r["correct"]) for r in higher) / len(higher)
