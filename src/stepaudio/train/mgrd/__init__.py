"""MGRD (Modality-Grounded Reasoning Distillation), the training method of Step-Audio-R1.

Stages (training_realtime_eval.md §1.2, §1.5): perception-grounded data → self-distillation rounds (K chains
per item, kept when correct, grounded and coherent) with SFT on the kept chains plus text reasoning →
GRPO with verifiable rewards on the 3-to-6-of-8 items → self-cognition DPO. `pipeline.run_mgrd` runs them
in order, each resumable; `stepaudio train mgrd --config run.toml` is the command.
"""
