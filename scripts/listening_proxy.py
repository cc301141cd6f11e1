"""How well could the adaptor hear, by data and voices, without paying for the decoder?

The decoder stage of `train align` costs about 25 s per step of 8 examples on a 2-core AVX2 CPU in fp32, so
its levers cannot be swept there. This proxy trains only the adaptor (fresh, as `train align` starts) by the
CTC warm-up on N clips, then reads the 48 held-out evaluation questions spoken in held-out voice families
back through greedy CTC and reports the word error rate: a curve of listening against the amount of data and
the training voices. Whisper-base's own WER on the same clips is printed beside it as the encoder's ceiling.

    .venv/bin/python scripts/listening_proxy.py --clips 1000,4000 --voices natural --json runs/proxy.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from stepaudio.audio.features import log_mel_spectrogram
from stepaudio.default_model.assemble import load_base
from stepaudio.model.step_audio import StepAudioForCausalLM
from stepaudio.text.tokenizer import StepTokenizer
from stepaudio.train.ctc_warmup import CTCHead, ctc_warmup, make_clips
from stepaudio.train.evaluate import family_clips, heldout_questions, word_errors
from stepaudio.train.examples import common_words
from stepaudio.train.questions import question_pool, random_sentence, word_drill
from stepaudio.train.speech import TRAIN_FAMILY_SHARES, random_voice
from stepaudio.train.whisper_reference import WhisperTranscriber

# Training voice families per choice: "natural" leaves out espeak-ng's formant voices.
VOICE_SETS = {"all": tuple(TRAIN_FAMILY_SHARES), "natural": ("piper", "flite", "rhvoice", "hibari")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", default="1000,4000", help="training clip counts, comma-separated (one curve point each)")
    p.add_argument("--epochs", type=int, default=6, help="CTC passes over the clips")
    p.add_argument("--voices", choices=sorted(VOICE_SETS), default="natural", help="training voice families")
    p.add_argument("--heldout", default="pico,mbrola", help="held-out families to read back")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    try:
        args.clip_counts = sorted({int(n) for n in args.clips.split(",")})
    except ValueError:
        p.error(f"--clips takes comma-separated integers, got {args.clips!r}")
    if min(args.clip_counts) <= 0 or args.epochs <= 0:
        p.error("--clips and --epochs must be positive")
    return args


def ctc_read(model: StepAudioForCausalLM, head: CTCHead, tokenizer: StepTokenizer, wav: np.ndarray) -> str:
    """Greedy CTC: the best row per frame, repeats merged, blanks dropped, decoded to text."""
    with torch.no_grad():
        feats, n = model.encode_features(log_mel_spectrogram(wav, n_mels=model.config.audio.n_mels))
        best = head(model.adapt(feats, n)).argmax(-1).tolist()
    ids = [head.vocab[b - 1] for i, b in enumerate(best) if b != 0 and (i == 0 or b != best[i - 1])]
    return tokenizer.decode(ids)


def wer(pairs: list[tuple[str, str]]) -> float:
    errors = [word_errors(hyp, ref) for hyp, ref in pairs]
    return sum(e for e, _ in errors) / max(1, sum(n for _, n in errors))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    families = VOICE_SETS[args.voices]
    assembly = load_base(True, adapter_seed=args.seed)
    tokenizer = StepTokenizer(assembly.tokenizer)
    vocabulary = common_words(tokenizer)
    questions = [q.text for q in question_pool(heldout=False)]

    def text(rng: np.random.Generator) -> str:
        draw = rng.random()
        if draw < 0.4:
            return word_drill(rng, vocabulary)
        return random_sentence(rng) if draw < 0.7 else str(rng.choice(questions))

    def voice(rng: np.random.Generator):
        return random_voice(rng, str(rng.choice(families)))

    model = StepAudioForCausalLM(assembly.config)
    model.load_state_dict(assembly.state, strict=True)
    model.requires_grad_(False)
    fresh_adapter = {k: v.clone() for k, v in model.adapter.state_dict().items()}
    t0 = time.time()
    clips = make_clips(model, tokenizer, text, max(args.clip_counts), args.seed, voice_source=voice)
    synth_s = time.time() - t0
    heldout = heldout_questions()
    spoken = {f: family_clips(heldout, f, seed=1) for f in args.heldout.split(",")}
    whisper = WhisperTranscriber()
    report = {"voices": families, "epochs": args.epochs, "synthesis_s": round(synth_s, 1),
              "whisper_base_wer": {f: round(wer(list(zip(whisper.transcribe_all(wavs), [q.text for q in heldout]))), 3)
                                   for f, wavs in spoken.items()}, "points": []}
    print(f"whisper-base WER: {report['whisper_base_wer']}", file=sys.stderr)
    all_tokens = [t for c in clips for t in c.tokens] + [t for q in heldout for t in tokenizer.encode(q.text)]
    for n in args.clip_counts:
        model.adapter.load_state_dict(fresh_adapter)
        model.adapter.requires_grad_(True)
        # The output table holds every token of the training texts and of the held-out questions, so a word is
        # only misread, never unsayable; the held-out audio itself is never trained on.
        head = CTCHead(model.model.embed_tokens.weight.detach(), all_tokens)
        t0 = time.time()
        losses = ctc_warmup(model, clips[:n], epochs=args.epochs, seed=args.seed, head=head)
        point = {"clips": n, "train_s": round(time.time() - t0, 1), "ctc_loss": [round(x, 3) for x in losses],
                 "wer": {f: round(wer([(ctc_read(model, head, tokenizer, w), q.text) for w, q in zip(wavs, heldout)]), 3)
                         for f, wavs in spoken.items()}}
        report["points"].append(point)
        print(json.dumps(point), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
