"""Run inside the vLLM venv: greedy generation with vLLM's offline `LLM` and the stepaudio plugin.

Reads a JSON job ({"models": [dir, ...], "max_tokens": n, "prompts": [{"prompt": text, "audio": [wav, ...]}]})
from argv[1] and prints one JSON line per model: the prompt and output token ids of every prompt.
The `__main__` guard matters: vLLM spawns worker processes that re-import this file.
"""

import json
import sys


def main() -> None:
    import soundfile as sf
    from vllm import LLM, SamplingParams

    job = json.loads(open(sys.argv[1]).read())
    prompts = []
    for p in job["prompts"]:
        audio = [sf.read(path, dtype="float32") for path in p["audio"]]
        prompts.append({"prompt": p["prompt"], "multi_modal_data": {"audio": [(wav, sr) for wav, sr in audio]}})
    params = SamplingParams(temperature=0.0, max_tokens=job["max_tokens"], ignore_eos=True)
    for model in job["models"]:
        llm = LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=job["max_model_len"],
                  limit_mm_per_prompt={"audio": 4}, seed=0)
        outputs = llm.generate(prompts, params, use_tqdm=False)
        print(json.dumps({"model": model, "results": [
            {"prompt_token_ids": list(o.prompt_token_ids), "token_ids": list(o.outputs[0].token_ids)}
            for o in outputs]}), flush=True)
        del llm


if __name__ == "__main__":
    main()
