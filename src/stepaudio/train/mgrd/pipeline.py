"""`stepaudio train mgrd`: every stage in order, each skipped when its results are already there.

The run folder holds one folder per stage (its log.jsonl, stage.log, records and stats.json) and
merges/ (one file per finished training stage). A rerun replays the merges onto the starting model and
continues with the first unfinished stage, from its last saved step. summary.json gathers the figures.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from ..device import training_device
from . import distributed, stages
from .config import MGRDConfig
from .policy import Policy, load_folder, merge_in_place, replay_merges, reset_lora


def _log(folder: Path, message: str) -> None:
    if distributed.is_main():
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "stage.log").open("a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


TRAINING = ("distill", "rl", "dpo")  # the stages that train and end in a merge


def _plan(cfg: MGRDConfig) -> list[tuple[str, str]]:
    """(stage kind, folder name) in run order; training units end in a merge."""
    plan = []
    for stage in cfg.stages:
        if stage == "distill":
            plan += [("distill", f"distill_round{r}") for r in range(cfg.distill.rounds)]
        elif stage == "rl":
            plan += [("rl", f"rl_round{r}") for r in range(cfg.rl.rounds)]
        else:
            plan.append((stage, stage))
    if not cfg.evaluate_each_stage:
        return plan
    staged = []
    for i, (kind, name) in enumerate(plan):
        staged.append((kind, name))
        following = plan[i + 1][0] if i + 1 < len(plan) else None
        if kind in TRAINING and following != "evaluate_after":
            staged.append(("evaluate_stage", f"evaluate_after_{name}"))
    return staged


def starting_model(cfg: MGRDConfig):
    if cfg.model == "default":
        from ...default_model.assemble import ensure_default_model

        return load_folder(ensure_default_model())
    return load_folder(Path(cfg.model))


def binomial_margin(correct: int, n: int, chance: float) -> float:
    """How many binomial standard deviations (of n items at chance) the score is above chance."""
    sd = math.sqrt(chance * (1 - chance) / n) if n else float("nan")
    return (correct / n - chance) / sd if n else float("nan")


def run_mgrd(cfg: MGRDConfig, progress: bool = True, assembly=None) -> dict:
    """Run or resume every stage; returns the summary (also written to `cfg.out/summary.json`)."""
    device = training_device(cfg.device)  # first: a device that is not here stops the run before it loads
    distributed.init_from_env(device)
    cfg.check_world_size(distributed.world()[1])
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1, default=str) + "\n")
    assembly = assembly or starting_model(cfg)
    scale = cfg.lora_alpha / cfg.lora_rank
    merged = replay_merges(assembly, out, scale)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    policy = Policy(assembly, cfg.lora_rank, cfg.lora_alpha, cfg.decoder_dtype, cfg.sft.lr_lora, cfg.sft.lr_adapter,
                    out, cfg.parallel, device)
    assembly.state.clear()  # the policy holds its own copy
    reset_lora(policy, merged)
    results: dict = {}
    trained = 0
    for kind, name in _plan(cfg):
        folder = out / name
        stats_path = folder / "stats.json"
        is_training = kind in TRAINING
        merge_path = out / "merges" / f"{trained:02d}-{name}.pt"
        done = merge_path.is_file() if is_training else stats_path.is_file()
        distributed.barrier()  # all ranks look before rank 0 writes this stage's files: they agree on `done`
        trained += is_training
        if done:
            results[name] = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
            continue
        _log(folder, f"start {kind}")
        t0 = time.time()
        if kind == "data":
            stats = data_stage(cfg)
        elif kind.startswith("evaluate"):
            stats = stages.evaluate(policy, cfg, folder, progress)
        elif kind == "distill":
            policy.set_learning_rates(cfg.sft.lr_lora, cfg.sft.lr_adapter)
            stats = stages.distill_round(policy, cfg, int(name.rsplit("round", 1)[1]), folder, progress)
        elif kind == "rl":
            policy.set_learning_rates(cfg.rl.lr_lora, cfg.rl.lr_adapter)
            stats = stages.rl_round(policy, cfg, int(name.rsplit("round", 1)[1]), folder, progress)
        else:
            policy.set_learning_rates(cfg.dpo.lr_lora, 0.0)
            stats = stages.dpo(policy, cfg, folder, progress)
        stats["seconds"] = round(time.time() - t0, 1)
        stages.write_json(stats_path, stats)
        if is_training:
            merge_in_place(policy, merge_path)  # every rank merges the same pairs; rank 0 stores them
        distributed.barrier()
        _log(folder, f"done in {stats['seconds']} s: {json.dumps(stats)[:2000]}")
        results[name] = stats
    summary = summarise(cfg, results)
    stages.write_json(out / "summary.json", summary)
    export_model(policy, assembly, cfg)
    if distributed.is_main() and "evaluate_before" in results and "evaluate_after" in results:
        from .report import plot_before_after

        plot_before_after(results["evaluate_before"], results["evaluate_after"], list(cfg.data.tasks),
                          out / "sweep_before_after.png", f"MGRD {out.name}: held-out sound tasks")
    return summary


def export_model(policy: Policy, assembly, cfg: MGRDConfig) -> Path:
    """The trained model as a checkpoint folder in the official layout (`out/model`), written once when every
    stage is done: what `stepaudio serve --model` and `train evaluate` take. fp32, the weights the run
    evaluated (a rank-8 merge is below bf16's resolution on many weights). A collective under FSDP; rank 0
    writes."""
    import torch

    from ...default_model.assemble import Assembly, write_assembly

    folder = cfg.out / "model"
    if not (folder / "config.json").is_file():
        state = policy.folded_state()
        if distributed.is_main():
            provenance = {"mgrd_config": json.loads(json.dumps(asdict(cfg), default=str)),
                          "merges": [p.name for p in sorted((cfg.out / "merges").glob("*.pt"))]}
            write_assembly(Assembly(assembly.config, state, assembly.tokenizer), folder, torch.float32,
                           provenance=provenance)
    distributed.barrier()
    return folder


def data_stage(cfg: MGRDConfig) -> dict:
    """Generate the held-out clips once (the training items are regenerated from their seeds); count items."""
    if distributed.is_main():
        stages.write_eval_items(stages.heldout(cfg), cfg.out / "heldout")
    per_round = len(cfg.data.tasks) * cfg.data.items_per_task
    return {"heldout_items": len(cfg.data.tasks) * cfg.data.heldout_per_task, "tasks": list(cfg.data.tasks),
            "distill_items_per_round": per_round, "text_items_per_round": cfg.data.text_items}


def _largest_budget(budgets: str) -> str:
    """The budget per-task accuracy is reported at: "inf" when swept, else the largest one."""
    values = [b.strip().lower() for b in budgets.split(",")]
    return "inf" if "inf" in values else max(values, key=int)


def summarise(cfg: MGRDConfig, results: dict) -> dict:
    from .tasks import CHANCE

    summary: dict = {"stages": results, "tasks": {}}
    before, after = results.get("evaluate_before", {}), results.get("evaluate_after", {})
    budget = _largest_budget(cfg.budgets)
    answers = {task: Counter() for task in cfg.data.tasks}
    for g in stages.heldout(cfg):
        answers[g.task][g.item.answer] += 1
    for task in cfg.data.tasks:
        # A model that gives one fixed answer scores the commonest answer's share, which on a small held-out
        # set can sit well above chance: a lift is read against both.
        row: dict = {"fixed_answer_accuracy": max(answers[task].values(), default=0)
                     / max(1, cfg.data.heldout_per_task)}
        for label, ev in (("before", before), ("after", after)):
            cell = ev.get(f"{task}@{budget}")
            if cell:
                row[label] = {"correct": cell["correct"], "n": cell["n"], "accuracy": cell["accuracy"],
                              "sd_above_chance": round(binomial_margin(cell["correct"], cell["n"], CHANCE[task]), 2)}
        summary["tasks"][task] = row
    summary["by_stage"] = {name: {task: ev[f"{task}@{budget}"]["accuracy"] for task in cfg.data.tasks
                                  if f"{task}@{budget}" in ev}
                           for name, ev in results.items() if name.startswith("evaluate")}
    return summary
