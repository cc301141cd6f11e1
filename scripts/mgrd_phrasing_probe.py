"""Does an MGRD model miss a held-out comparison because of the sound or because of the question's wording?

The run's held-out clips (other frequencies and waveform than training) asked twice, greedy: in their own
held-out phrasing and in the task's first training phrasing. A task right in the second and wrong in the first
hears the clips and does not recognise the question (docs/MGRD.md).

    .venv/bin/python scripts/mgrd_phrasing_probe.py --run runs/mgrd_cpu_lift [--merges 1] [--items N]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from stepaudio.engine.llm import LLM
from stepaudio.engine.sampling import SamplingParams
from stepaudio.model.step_audio import StepAudioForCausalLM
from stepaudio.text.tokenizer import StepTokenizer
from stepaudio.train.mgrd.config import load_config
from stepaudio.train.mgrd.phrasings import BANK
from stepaudio.train.mgrd.pipeline import starting_model
from stepaudio.train.mgrd.policy import apply_merge, merge_files
from stepaudio.train.mgrd.stages import heldout
from stepaudio.train.mgrd.tasks import GroundedItem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="an MGRD run folder (its config.json and merges/)")
    parser.add_argument("--merges", type=int, help="apply only the first N merges (default: all)")
    parser.add_argument("--items", type=int, help="held-out items per task (default: the run's)")
    args = parser.parse_args()
    if not (args.run / "config.json").is_file():
        parser.error(f"--run {args.run}: no config.json there (not an MGRD run folder)")
    stored = merge_files(args.run)
    if (args.items is not None and args.items < 1) or (args.merges is not None and not 0 <= args.merges <= len(stored)):
        parser.error(f"--items must be at least 1 and --merges between 0 and {len(stored)}")
    cfg = load_config(args.run / "config.json", {"out": str(args.run.resolve())})
    if args.items is not None:
        cfg.data.heldout_per_task = args.items
    files = stored[: args.merges]
    assembly = starting_model(cfg)
    for path in files:
        apply_merge(assembly.state, torch.load(path, weights_only=True), cfg.lora_alpha / cfg.lora_rank)
    model = StepAudioForCausalLM(assembly.config)
    model.load_state_dict(assembly.state)
    llm = LLM.from_model(model.eval(), StepTokenizer(assembly.tokenizer), kv_cache_memory_gb=0.5)
    print(f"{args.run} with {len(files)} merge(s): held-out clips, correct of {cfg.data.heldout_per_task}")
    print("task       held-out phrasing  training phrasing")
    items = heldout(cfg)  # the run's own held-out items
    for task in [t for t in BANK if t in cfg.data.tasks]:
        scores = []
        for question in (None, BANK[task][0]):
            asked = [GroundedItem(dataclasses.replace(g.item, question=question) if question else g.item, g.clips,
                                  g.reference, g.reply) for g in items if g.task == task]
            results = llm.generate([llm.prepare(g.messages(inline_audio=True)[0]) for g in asked],
                                   SamplingParams(temperature=0.0, max_tokens=cfg.eval_max_tokens))
            scores.append(sum(g.correct(r.completions[0].content.strip()) for g, r in zip(asked, results)))
        print(f"{task:10s} {scores[0]:17d}  {scores[1]:17d}", flush=True)


if __name__ == "__main__":
    main()
