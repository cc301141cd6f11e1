"""The MGRD stages over one `Policy`: evaluate, self-distil + SFT, GRPO, self-cognition DPO.

Each stage writes into its own folder under the run (a log, its records, a `done.json` with its figures)
and ends by merging its LoRA into the weights (`policy.merge_in_place`). Sampling uses our engine
(batched, seeded); every update goes through `trainer.train_steps` (resumable, data-parallel).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ...engine.llm import LLM
from ...engine.sampling import SamplingParams
from ...evaluation.report import plot_sweep, summarize, sweep_markdown, table
from ...evaluation.runner import InProcessBackend, ResultStore, Sampling, budget_key, parse_budgets, run_eval
from ..align import batch_from_ids, build_batch
from ..examples import Example
from ..targets import THINK_CLOSE
from . import distributed
from .config import MGRDConfig
from .grounding import RubricJudge, Tolerances, check_chain, claims_no_hearing
from .objectives import advantages, audio_reward, dpo_loss, policy_loss, sequence_logprobs, sft_loss
from .policy import Policy
from .tasks import GroundedItem, sound_items, text_items, write_eval_items
from .trainer import train_steps

DENIAL = ("I cannot hear audio. As a text-based model I can only read the words of the question, so I will "
          "guess.")
PROBE_QUESTIONS = ("Describe what you hear in this clip.", "What can you tell me about the sound in this recording?",
                   "Can you hear this? Describe its pitch and loudness.")


def write_json(path: Path, value) -> None:
    if distributed.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(value, indent=1) + "\n")
        tmp.replace(path)


def _generate(llm: LLM, items: list[GroundedItem], params: SamplingParams, chunk: int = 16,
              desc: str = "sampling") -> list:
    """Completions for this rank's share of `items`, gathered in item order: [(item index, completions)].
    A progress bar on rank 0 (sampling hundreds of items takes minutes on a CPU)."""
    mine = distributed.shard(list(range(len(items))))
    out = []
    bar = tqdm(total=len(mine), desc=desc, unit="item", disable=not distributed.is_main() or len(mine) <= chunk)
    for start in range(0, len(mine), chunk):
        ids = mine[start:start + chunk]
        prompts = [llm.prepare(items[i].messages(inline_audio=True)[0]) for i in ids]
        for i, result in zip(ids, llm.generate(prompts, params)):
            out.append((i, [{"reasoning": c.reasoning.strip(), "answer": c.content.strip(), "token_ids": c.token_ids,
                             "finish": c.finish_reason} for c in result.completions]))
        bar.update(len(ids))
    bar.close()
    return sorted(distributed.gather(out), key=lambda x: x[0])


def _sampler(policy: Policy, cfg: MGRDConfig) -> LLM:
    return policy.sampler(kv_cache_memory_gb=cfg.sampler_kv_gb)


def _answered(c: dict) -> bool:
    return bool(c["answer"]) and c["finish"] != "length"


# ---------------------------------------------------------------- evaluation

def heldout(cfg: MGRDConfig) -> list[GroundedItem]:
    return sound_items(cfg.seed + 1000, cfg.data.tasks, cfg.data.heldout_per_task, heldout=True, tag="heldout")


def training_items(cfg: MGRDConfig, per_task: int, tag: str) -> list[GroundedItem]:
    """Training sound items of the run's tasks."""
    return sound_items(cfg.seed, cfg.data.tasks, per_task, False, tag, cfg.data.phrasings)


def evaluate(policy: Policy, cfg: MGRDConfig, folder: Path, progress: bool = True) -> dict:
    """Held-out accuracy per task at every thinking budget (greedy); the sweep report and plot. Every rank
    calls it (under FSDP gathering the weights is a collective); rank 0 evaluates, the others return {}."""
    weights = policy.folded_state()
    if not distributed.is_main():
        return {}
    items = write_eval_items(heldout(cfg), cfg.out / "heldout")
    store = ResultStore(folder / "results.jsonl")
    backend = InProcessBackend(policy.engine(weights, kv_cache_memory_gb=cfg.sampler_kv_gb))
    budgets = parse_budgets(cfg.budgets)
    wanted = {(item.id, budget_key(b)) for item in items for b in budgets}  # not items of an earlier config
    records = [r for r in run_eval(items, backend, store, budgets, Sampling(cfg.eval_max_tokens, 0.0), 16,
                                   progress=progress) if (r["id"], r["budget"]) in wanted]
    rows = summarize(records)
    title = f"held-out sound tasks, {folder.name}"
    plot = plot_sweep(rows, folder / "sweep.png", title) if len(budgets) > 1 else None
    (folder / "report.md").write_text(sweep_markdown(rows, title, plot.name if plot else None) + "\n" + table(rows)
                                      + "\n")
    summary = {f"{r.category}@{r.budget}": {"correct": r.correct, "n": r.n, "accuracy": r.accuracy,
                                            "mean_reasoning_tokens": r.mean_reasoning_tokens} for r in rows}
    write_json(folder / "done.json", summary)
    return summary


# ---------------------------------------------------------------- self-distillation

def distill_round(policy: Policy, cfg: MGRDConfig, r: int, folder: Path, progress: bool = True) -> dict:
    """Sample K chains per item, keep the correct, grounded, coherent ones, then SFT on them + text items."""
    d = cfg.distill
    chains_path = folder / "chains.json"
    items = _distill_items(cfg, r)
    if chains_path.is_file():
        kept = json.loads(chains_path.read_text())["kept"]
    else:
        params = SamplingParams(n=d.chains, temperature=d.temperature, max_tokens=d.max_tokens, seed=cfg.seed + r)
        results = _generate(_sampler(policy, cfg), items, params, desc=f"distill round {r}: sampling")
        judge = RubricJudge(d.judge_url, d.judge_model) if d.judge_url else None
        tol = Tolerances(d.hz_tolerance, d.db_tolerance, d.seconds_tolerance)
        records, kept = [], []
        for i, completions in results:
            g = items[i]
            own = 0
            for k, c in enumerate(completions):
                correct = _answered(c) and g.correct(c["answer"])
                rec = {"item": g.item.id, "task": g.task, "chain": k, "reasoning": c["reasoning"],
                       "answer": c["answer"], "correct": correct}
                if g.is_audio:
                    v = check_chain(c["reasoning"], c["answer"], correct, g.reference, g.item.question,
                                    d.min_acoustic_terms, tol, judge, g.task)
                    rec.update({k2: getattr(v, k2) for k2 in ("lexical", "quantities", "cue", "consistent", "judged",
                                                              "coherent")},
                               grounded=v.grounded, keep=v.keep)
                else:
                    rec["keep"] = correct
                records.append(rec)
                if rec["keep"]:
                    own += 1
                    kept.append({"item_index": i, "source": "self",
                                 "target": f"{c['reasoning']}{THINK_CLOSE}{c['answer']}"})
            if own == 0 and g.is_audio and d.reference_chains:
                kept.append({"item_index": i, "source": "reference", "target": f"{g.reference}{THINK_CLOSE}{g.reply}"})
        stats = _chain_stats(records, kept)
        write_json(chains_path, {"stats": stats, "kept": kept, "chains": records})
    examples = []
    for k in kept:
        g = items[k["item_index"]]
        messages, audio = g.messages(inline_audio=False)
        examples.append(Example(g.task, messages, audio, k["target"]))
    if not examples:
        raise RuntimeError(f"distillation round {r} kept no chain (see {chains_path})")
    sft(policy, cfg, examples, folder, f"SFT round {r}", progress)
    return json.loads(chains_path.read_text())["stats"]


def _distill_items(cfg: MGRDConfig, r: int) -> list[GroundedItem]:
    return training_items(cfg, cfg.data.items_per_task, f"distill{r}") + text_items(cfg.seed, cfg.data.text_items,
                                                                                      False, f"distill{r}")


def _chain_stats(records: list[dict], kept: list[dict]) -> dict:
    audio = [x for x in records if "grounded" in x]
    correct = [x for x in audio if x["correct"]]
    by_task: dict[str, dict] = {}
    for x in audio:
        t = by_task.setdefault(x["task"], {"chains": 0, "correct": 0, "grounded": 0, "kept": 0})
        t["chains"] += 1
        t["correct"] += x["correct"]
        t["grounded"] += x["grounded"]
        t["kept"] += x["keep"]
    return {"audio_chains": len(audio), "correct": len(correct), "grounded": sum(x["grounded"] for x in audio),
            "grounded_share_of_correct": (sum(x["grounded"] for x in correct) / len(correct)) if correct else None,
            "lexical_pass": sum(x["lexical"] for x in audio), "quantity_pass": sum(x["quantities"] for x in audio),
            "cue_pass": sum(x["cue"] for x in audio), "consistent_pass": sum(x["consistent"] for x in audio),
            "kept_self_audio": sum(x["keep"] for x in audio),
            "kept_text": sum(x["keep"] for x in records if "grounded" not in x),
            "reference_chains": sum(k["source"] == "reference" for k in kept), "by_task": by_task}


def sft(policy: Policy, cfg: MGRDConfig, examples: list[Example], folder: Path, desc: str, progress: bool) -> None:
    s = cfg.sft
    n_mels = policy.model.config.audio.n_mels

    def step_loss(step: int):
        rng = np.random.default_rng([cfg.seed, step, len(examples)])
        chosen = [examples[int(i)] for i in rng.integers(len(examples), size=s.batch_size)]
        batch = build_batch(policy.tokenizer, distributed.shard(chosen), n_mels)
        logprobs, _ = policy.forward(batch)
        tokens = distributed.global_sum(logprobs.numel())
        return sft_loss(logprobs, tokens), {"tokens": int(tokens)}

    train_steps(policy, step_loss, s.steps, folder, desc, cfg.save_every, s.warmup, progress)


# ---------------------------------------------------------------- RL with verifiable rewards

def difficulty_filter(policy: Policy, cfg: MGRDConfig, r: int, folder: Path) -> list[GroundedItem]:
    """Items of which lo..hi of k sampled answers are correct (3-to-6-of-8 in the paper)."""
    rl = cfg.rl
    path = folder / "filter.json"
    per_task = max(1, math.ceil(rl.filter_pool / (len(cfg.data.tasks) + 1)))
    items = training_items(cfg, per_task, f"rl{r}") + text_items(cfg.seed, per_task, False, f"rl{r}")
    if not path.is_file():
        params = SamplingParams(n=rl.filter_samples, temperature=rl.temperature, max_tokens=rl.max_tokens,
                                seed=cfg.seed + 100 + r)
        results = _generate(_sampler(policy, cfg), items, params, desc=f"RL round {r}: difficulty filter")
        passes = {items[i].item.id: sum(_answered(c) and items[i].correct(c["answer"]) for c in cs)
                  for i, cs in results}
        write_json(path, passes)
    distributed.barrier()
    passes = json.loads(path.read_text())
    return [g for g in items if rl.filter_low <= passes[g.item.id] <= rl.filter_high]


def rl_round(policy: Policy, cfg: MGRDConfig, r: int, folder: Path, progress: bool = True) -> dict:
    rl = cfg.rl
    pool = difficulty_filter(policy, cfg, r, folder)
    if not pool:
        return {"kept_items": 0, "steps": 0}
    rollouts: dict[int, list] = {}

    def rollout(batch_index: int) -> list:
        """This rank's rollouts for one batch of prompts: (item, completion, advantage), from the policy now."""
        rng = np.random.default_rng([cfg.seed, 7, r, batch_index])
        prompts = [pool[int(i)] for i in rng.integers(len(pool), size=rl.prompts_per_step)]
        params = SamplingParams(n=rl.group_size, temperature=rl.temperature, max_tokens=rl.max_tokens,
                                seed=cfg.seed + 1000 * r + batch_index)
        llm = _sampler(policy, cfg)
        out = []
        for i, completions in _generate(llm, prompts, params):
            g = prompts[i]
            rewards = []
            for c in completions:
                correct = _answered(c) and g.correct(c["answer"])
                rewards.append(audio_reward(correct, bool(c["reasoning"]), rl.correct_weight, rl.reasoning_weight)
                               if g.is_audio else float(correct))
            adv = advantages(torch.tensor([rewards]), rl.estimator)[0]
            out += [(g, c, float(a), rw) for c, a, rw in zip(completions, adv, rewards)]
        return out

    def step_loss(step: int):
        batch_index = step // rl.epochs
        if batch_index not in rollouts:
            rollouts.clear()
            rollouts[batch_index] = rollout(batch_index)
        mine = distributed.shard(rollouts[batch_index])
        prompts = [_prepare(policy, g) for g, _, _, _ in mine]
        eot = policy.tokenizer.eot_id
        # a chain that stopped ends with <|EOT|>, as SFT targets do (the engine may leave the stop token out)
        targets = [c["token_ids"] + ([eot] if c["finish"] == "stop" and c["token_ids"][-1:] != [eot] else [])
                   for _, c, _, _ in mine]
        batch = batch_from_ids(policy.tokenizer, prompts, targets, [g.task for g, _, _, _ in mine])
        logprobs, rows = policy.forward(batch)
        token_adv = torch.tensor([a for _, _, a, _ in mine], dtype=logprobs.dtype, device=logprobs.device)[rows]
        if step % rl.epochs == 0:
            old = logprobs.detach()
            rollouts[("old", batch_index)] = old
        old = rollouts[("old", batch_index)]
        tokens = distributed.global_sum(logprobs.numel())
        all_rewards = [rw for _, _, _, rw in rollouts[batch_index]]
        return policy_loss(logprobs, old, token_adv, tokens, rl.clip), {
            "mean_reward": round(float(np.mean(all_rewards)), 4), "tokens": int(tokens)}

    steps = rl.steps_per_round * rl.epochs
    train_steps(policy, step_loss, steps, folder, f"GRPO round {r}", cfg.save_every, 0, progress)
    return {"kept_items": len(pool), "steps": steps}


def _prepare(policy: Policy, g: GroundedItem):
    from ...inputs import prepare_chat

    messages, audio = g.messages(inline_audio=False)
    return prepare_chat(policy.tokenizer, messages, audio, n_mels=policy.model.config.audio.n_mels)


# ---------------------------------------------------------------- self-cognition DPO

def _probe_items(cfg: MGRDConfig, n: int, tag: str) -> list[GroundedItem]:
    items = training_items(cfg, max(1, math.ceil(n / len(cfg.data.tasks))), tag)[:n]
    return [GroundedItem(replace(g.item, question=PROBE_QUESTIONS[i % len(PROBE_QUESTIONS)], style="short", choices=()),
                         g.clips, g.reference, g.reply) for i, g in enumerate(items)]


def denial_rate(policy: Policy, cfg: MGRDConfig) -> tuple[float, list[dict]]:
    """Share of greedy replies to held-out probe questions that say they cannot hear."""
    items = _probe_items(cfg, cfg.dpo.probes, "probe")
    results = _generate(_sampler(policy, cfg), items, SamplingParams(temperature=0.0, max_tokens=cfg.eval_max_tokens))
    rows = [{"question": items[i].item.question, "reasoning": cs[0]["reasoning"], "answer": cs[0]["answer"],
             "denies": claims_no_hearing(cs[0]["reasoning"] + " " + cs[0]["answer"])} for i, cs in results]
    return (float(np.mean([r["denies"] for r in rows])) if rows else 0.0), rows


def dpo(policy: Policy, cfg: MGRDConfig, folder: Path, progress: bool = True) -> dict:
    """Chosen: a self-sampled reply that uses its hearing (grounded); rejected: one that claims it cannot
    hear (self-sampled when the model wrote one, else the fixed denial)."""
    p = cfg.dpo
    before_path = folder / "before.json"
    if before_path.is_file():
        rate_before = json.loads(before_path.read_text())["denial_rate"]
    else:  # every rank measures (the replies are gathered), so none reads the file before rank 0 writes it
        rate_before, rows = denial_rate(policy, cfg)
        write_json(before_path, {"denial_rate": rate_before, "replies": rows})
    if rate_before == 0 and p.skip_without_denials:
        return {"denial_rate_before": 0.0, "denial_rate_after": 0.0, "pairs": 0, "self_rejected": 0,
                "skipped": "no probe reply denies hearing (dpo.skip_without_denials)"}
    items = _probe_items(cfg, p.pairs, "dpo")
    pairs_path = folder / "pairs.json"
    if not pairs_path.is_file():
        params = SamplingParams(n=4, temperature=cfg.distill.temperature, max_tokens=cfg.distill.max_tokens,
                                seed=cfg.seed + 77)
        pairs = []
        for i, cs in _generate(_sampler(policy, cfg), items, params):
            texts = [f"{c['reasoning']}{THINK_CLOSE}{c['answer']}" for c in cs if _answered(c)]
            hearing = [t for t in texts if not claims_no_hearing(t) and check_chain(t, "", True, items[i].reference,
                                                                                     "").lexical]
            denying = [t for t in texts if claims_no_hearing(t)]
            chosen = hearing[0] if hearing else f"{items[i].reference}{THINK_CLOSE}{items[i].reply}"
            rejected = denying[0] if denying else f"{DENIAL}{THINK_CLOSE}I cannot hear the audio."
            pairs.append({"item_index": i, "chosen": chosen, "rejected": rejected,
                          "self_chosen": bool(hearing), "self_rejected": bool(denying)})
        write_json(pairs_path, pairs)
    distributed.barrier()
    pairs = json.loads(pairs_path.read_text())
    n_mels = policy.model.config.audio.n_mels

    def pair_batch(chosen_pairs: list[dict]):
        examples = []
        for pr in chosen_pairs:
            messages, audio = items[pr["item_index"]].messages(inline_audio=False)
            examples += [Example("chosen", messages, audio, pr["chosen"]), Example("rejected", messages, audio,
                                                                                    pr["rejected"])]
        return build_batch(policy.tokenizer, examples, n_mels)

    ref_path = folder / "reference_logprobs.pt"
    if not ref_path.is_file():  # the reference policy: the weights as the stage starts (LoRA still zero)
        with torch.no_grad():
            refs = []
            for pr in pairs:
                logprobs, rows = policy.forward(pair_batch([pr]))
                refs.append(sequence_logprobs(logprobs, rows, 2))
        if distributed.is_main():
            torch.save(torch.stack(refs).cpu(), ref_path)
        distributed.barrier()
    refs = torch.load(ref_path, weights_only=True).to(policy.device)

    def step_loss(step: int):
        rng = np.random.default_rng([cfg.seed, 11, step])
        chosen = distributed.shard([int(i) for i in rng.integers(len(pairs), size=p.batch_size)])
        batch = pair_batch([pairs[i] for i in chosen])
        logprobs, rows = policy.forward(batch)
        seq = sequence_logprobs(logprobs, rows, 2 * len(chosen))
        ref = refs[chosen]
        loss = dpo_loss(seq[0::2], seq[1::2], ref[:, 0], ref[:, 1], p.beta, distributed.global_sum(len(chosen)))
        return loss, {"pairs": len(chosen)}

    train_steps(policy, step_loss, p.steps, folder, "self-cognition DPO", cfg.save_every, 0, progress)
    rate_after, rows_after = denial_rate(policy, cfg)
    write_json(folder / "after.json", {"denial_rate": rate_after, "replies": rows_after})
    return {"denial_rate_before": rate_before, "denial_rate_after": rate_after,
            "pairs": len(pairs), "self_rejected": sum(x["self_rejected"] for x in pairs)}
