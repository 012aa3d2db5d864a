#!/usr/bin/env bash
# The torch-free install, as an edge box or a CI runner that only gates a deployed model would have it:
# `pip install .` alone (no torch), then `parity --reference` on the committed golden build
# (tests/data/golden/): exit 0 on it, exit 1 on a damaged copy.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
V=.venv-gate
[ -x "$V/bin/pip" ] || "$PY" -m venv "$V"
"$V/bin/pip" install -q --upgrade pip
"$V/bin/pip" install -q --force-reinstall --no-deps . && "$V/bin/pip" install -q .
if "$V/bin/pip" list 2>/dev/null | grep -iE '^(torch|nncf|onnxsim) ' ; then
  echo "torch-free gate: 'pip install .' pulled the export stack"; exit 1
fi
G=tests/data/golden
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cd "$out"  # run the installed package, not the checkout
gate() { "$OLDPWD/$V/bin/amnet-deploy" parity --build "$1" --inputs "$OLDPWD/$G/inputs.npz" \
           --reference "$OLDPWD/$G/reference.npz" --resolution 128 --report "$out/report" --quiet >/dev/null; }
gate "$OLDPWD/$G/models"
cp -r "$OLDPWD/$G/models" damaged
bin=$(ls damaged/*.bin)
printf '\x7f\x7f\x7f\x7f' | dd of="$bin" bs=1 seek=$(( $(stat -c %s "$bin") / 2 )) conv=notrunc status=none
set +e
gate damaged; rc=$?
set -e
[ "$rc" -eq 1 ] || { echo "torch-free gate: a damaged build exited $rc, not 1"; exit 1; }
echo "torch-free gate: golden build passes (exit 0), damaged copy fails (exit 1), no torch installed"
