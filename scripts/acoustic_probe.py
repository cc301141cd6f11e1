"""Is pitch order, loudness or sweep direction linearly readable from what the decoder is given?

A logistic probe on the frozen Whisper-base encoder's output (and on the adaptor's) for the MGRD sound tasks:
trained on pairs in the training frequency range (sine/square, 250-1200 Hz), tested in that range and on
the held-out range (triangle, 1300-2200 Hz). A task whose held-out probe is near chance cannot be expected to
transfer by more SFT of the decoder; docs/MGRD.md reports the figures.

    .venv/bin/python scripts/acoustic_probe.py [--model DIR] [--pairs 300] [--tests 100] [--pitch-bands]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from stepaudio.audio.features import log_mel_spectrogram
from stepaudio.model.step_audio import StepAudioForCausalLM
from stepaudio.train.sounds import _HELDOUT_FREQ, _TRAIN_FREQ, silence, tone, with_noise

LEAD, GAP, TAIL, TONE, SWEEP = 0.2, 0.4, 0.2, 0.5, 1.2  # seconds


def load_model(model_dir: Path | None) -> StepAudioForCausalLM:
    from stepaudio.default_model.assemble import ensure_default_model
    from stepaudio.train.mgrd.policy import load_folder

    assembly = load_folder(model_dir or ensure_default_model())
    model = StepAudioForCausalLM(assembly.config)
    model.load_state_dict(assembly.state, strict=True)
    return model.eval()


@torch.no_grad()
def frames(model: StepAudioForCausalLM, wav: np.ndarray, layer: str, rng: np.random.Generator) -> np.ndarray:
    """Encoder (or adaptor) output rows for a clip, [T, d]."""
    mel = log_mel_spectrogram(with_noise(wav, rng), model.config.audio.n_mels)
    feats, lengths = model.encode_features(mel)
    return feats[0, : int(lengths[0])].numpy() if layer == "encoder" else model.adapt(feats, lengths).float().numpy()


def span(x: np.ndarray, start: float, end: float, total: float) -> np.ndarray:
    """The mean of the rows between `start` and `end` seconds of a `total`-second clip."""
    a = int(len(x) * start / total)
    return x[a: max(a + 1, int(len(x) * end / total))].mean(0)


def pair_feature(model, task: str, heldout: bool, layer: str, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """(first part's mean features - second part's, label) for one random item of `task`."""
    lo, hi = _HELDOUT_FREQ if heldout else _TRAIN_FREQ
    wave = "triangle" if heldout else str(rng.choice(["sine", "square"]))
    if task == "direction":
        f = rng.uniform(lo, hi)
        rising = bool(rng.random() < 0.5)
        clip = tone(f, SWEEP, -6, wave, f * rng.uniform(1.5, 2.5) ** (1 if rising else -1))
        x = frames(model, np.concatenate([silence(LEAD), clip, silence(TAIL)]), layer, rng)
        total, mid = LEAD + SWEEP + TAIL, LEAD + SWEEP / 2
        return span(x, LEAD, mid, total) - span(x, mid, LEAD + SWEEP, total), rising
    if task == "higher":
        return pitch_pair(model, [(lo, hi)], [wave], layer, rng)
    f = rng.uniform(lo, hi)
    l1 = rng.uniform(-20, -3)
    l2 = np.clip(l1 + rng.choice([-1, 1]) * rng.uniform(8, 18), -26, -1)
    return two_tones(model, tone(f, TONE, l1, wave), tone(f, TONE, l2, wave), layer, rng), bool(l1 > l2)


def two_tones(model, a: np.ndarray, b: np.ndarray, layer: str, rng: np.random.Generator) -> np.ndarray:
    """The first tone's mean features minus the second's, for the clip `a`, gap, `b`."""
    x = frames(model, np.concatenate([silence(LEAD), a, silence(GAP), b, silence(TAIL)]), layer, rng)
    total = LEAD + 2 * TONE + GAP + TAIL
    return span(x, LEAD, LEAD + TONE, total) - span(x, LEAD + TONE + GAP, LEAD + 2 * TONE + GAP, total)


def pitch_pair(model, bands: list[tuple[float, float]], waves: list[str], layer: str,
               rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """A pitch-order pair drawn as `sounds.higher_item` draws one, in one of `bands`, with one of `waves`."""
    # one band or wave: no draw, so the default rows keep the random stream they always had
    lo, hi = bands[0] if len(bands) == 1 else bands[int(rng.integers(len(bands)))]
    wave = waves[0] if len(waves) == 1 else str(rng.choice(waves))
    f1 = rng.uniform(lo, hi)
    f2 = np.clip(f1 * (1 + rng.choice([-1, 1]) * rng.uniform(0.15, 0.6)), lo * 0.8, hi * 1.2)
    return two_tones(model, tone(f1, TONE, -6, wave), tone(f2, TONE, -6, wave), layer, rng), bool(f1 > f2)


# --pitch-bands: where the probe is trained, and where it is tested (the held-out items are triangles).
TRAIN_CHOICES = {"250-1200 (training range)": [_TRAIN_FREQ],
                 "250-1200 + 2800-3600 (both sides)": [_TRAIN_FREQ, (2800.0, 3600.0)],
                 "1300-2200 sine/square (in band)": [_HELDOUT_FREQ]}
TESTS = {"1300-2200 triangle": ([_HELDOUT_FREQ], ["triangle"]), "250-1200 triangle": ([_TRAIN_FREQ], ["triangle"])}


def pitch_band_study(model, pairs: int, tests: int, rng: np.random.Generator) -> None:
    """Is pitch order read the same way in every frequency band? (Trained on one band set, tested on others.)"""
    print(f"pitch order on the encoder; probe trained on -> {' | '.join(TESTS)}  (chance 0.50)")
    for name, bands in TRAIN_CHOICES.items():
        def draw(n: int, bands=bands, waves=("sine", "square")) -> tuple[np.ndarray, np.ndarray]:
            rows = [pitch_pair(model, bands, list(waves), "encoder", rng) for _ in range(n)]
            return np.stack([r[0] for r in rows]), np.array([r[1] for r in rows])

        predict = fit_probe(*draw(pairs))
        scores = [float((predict(x) == y).mean()) for x, y in (draw(tests, b, w) for b, w in TESTS.values())]
        print(f"{name:36s} " + " | ".join(f"{v:.2f}" for v in scores), flush=True)


def fit_probe(x: np.ndarray, y: np.ndarray, l2: float = 1e-2):
    """An L2-regularised logistic regression (LBFGS) on standardised features; returns a predict function."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs, ys = torch.tensor((x - mu) / sd, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xs @ w + b, ys) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda z: ((torch.tensor((z - mu) / sd, dtype=torch.float32) @ w + b) > 0).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model folder (default: the default model)")
    parser.add_argument("--pairs", type=int, default=300, help="training pairs per task")
    parser.add_argument("--tests", type=int, default=100, help="test pairs per task and range")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pitch-bands", action="store_true",
                        help="instead: pitch order trained on other frequency bands (both sides of, or inside, the "
                             "held-out one), tested on the held-out triangles")
    args = parser.parse_args()
    if args.pairs < 10 or args.tests < 1:
        parser.error("--pairs must be at least 10 and --tests at least 1")
    if args.model is not None and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: no config.json there")
    model = load_model(args.model)
    rng = np.random.default_rng(args.seed)
    if args.pitch_bands:
        return pitch_band_study(model, args.pairs, args.tests, rng)
    print("layer    task       training range  held-out range   (probe accuracy; chance 0.50)")
    for layer in ("encoder", "adaptor"):
        for task in ("higher", "louder", "direction"):
            def draw(n: int, heldout: bool) -> tuple[np.ndarray, np.ndarray]:
                rows = [pair_feature(model, task, heldout, layer, rng) for _ in range(n)]
                return np.stack([r[0] for r in rows]), np.array([r[1] for r in rows])

            predict = fit_probe(*draw(args.pairs, False))
            scores = [float((predict(x) == y).mean()) for x, y in (draw(args.tests, False), draw(args.tests, True))]
            print(f"{layer:8s} {task:10s} {scores[0]:14.2f}  {scores[1]:14.2f}", flush=True)


if __name__ == "__main__":
    main()
