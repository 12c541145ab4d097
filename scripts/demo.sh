#!/usr/bin/env bash
# The README's main job on the shipped, trained digits model: look at it, compile a schedule,
# evaluate dense and pruned on the 2000 held-out test images, and measure the speedup.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
prunec() { node bin/prunec.js "$@"; }
out="${TMPDIR:-/tmp}/prunec-demo"
mkdir -p "$out"
spec=examples/digits/best.prune

echo "== the model"
prunec inspect examples/digits/model.onnx
echo; echo "== the schedule ($spec)"
cat "$spec"
prunec check "$spec" examples/digits/model.onnx
echo; echo "== compile"
prunec examples/digits/model.onnx "$spec" -o "$out/digits.pruned.onnx"
echo; echo "== accuracy on the held-out test set"
prunec eval examples/digits/model.onnx --data examples/digits/test.prds
prunec eval "$out/digits.pruned.onnx" --data examples/digits/test.prds
echo; echo "== speed (ORT CPU, batch 32)"
prunec bench examples/digits/model.onnx "$spec" --batch 32 --runs 20
echo; echo "== report with kept-patch overlays: $out/report/report.md"
prunec report examples/digits/model.onnx "$spec" -o "$out/report" --data examples/digits/sample.prds
