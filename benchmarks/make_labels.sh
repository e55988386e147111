#!/usr/bin/env bash
# Retention labels for the shipped CPU compressors over the calibration mix (resumable).
# Usage: bash benchmarks/make_labels.sh OUT_DIR [compressor ...]   (default: extractive skim)
# Needs the datasets in ../shared/data (or $POCSDK_DATA).
set -euo pipefail
out=${1:?usage: make_labels.sh OUT_DIR [compressor ...]}
shift || true
comps=("$@"); [ ${#comps[@]} -gt 0 ] || comps=(extractive skim)
export POCSDK_DATA=${POCSDK_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data} HF_HUB_OFFLINE=1
for comp in "${comps[@]}"; do
  mkdir -p "$out/$comp"
  for pair in "nq_mixed:nq_mixed:n=1500" "squad_articles:squad_articles:n=600" "leval:leval" \
              "multi_news:multi_news" "kv75:kv:keys=75,n=200"; do
    name=${pair%%:*}; spec=${pair#*:}
    pocsdk calibrate -d "$spec" -c "$comp" --judge retention -o "$out/$comp/$name.jsonl" --workers 2 --resume -q \
      > "$out/$comp/$name.stats.json"
  done
done
