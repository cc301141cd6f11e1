"""Evaluation harness: manifests, prompts, scoring, runs, reports and a synthetic benchmark."""
