#!/bin/bash
# The domain-shift check after `finetune` on a site's labelled cells (docs/research/benchmarks_log.md,
# "After finetune on a site's labelled cells"), through the user's commands: finetune, predict.
# Needs the cross-site benchmark's robust runs (benchmarks/cross_site.py --variant robust --seed S
# and --finetune-curve robust --seed S --curve-n 100) in CROSS.
#   CROSS=/work/runs/cross OUT=/work/runs/site nice -n 5 benchmarks/site_reference.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CROSS=${CROSS:-/work/runs/cross}
OUT=${OUT:-/work/runs/site}
SHARED=${WBC_SHARED_DATA:-../shared/data}
W=.venv/bin/wbc-nnabla
mkdir -p "$OUT"
[ -f "$OUT/bccd.csv" ] || .venv/bin/python - "$SHARED" "$OUT" <<'PY'
import sys; sys.path.insert(0, "benchmarks")
from pathlib import Path
import pandas as pd
from bench_domain import bccd_crops
shared, out = Path(sys.argv[1]), Path(sys.argv[2])
paths = bccd_crops(shared / "bccd-fields", out / "bccd_crops")
pd.DataFrame({"path": [str(p) for p in paths]}).to_csv(out / "bccd.csv", index=False)
print(len(paths), "bccd crops")
PY
for s in 0 1; do
  R=$CROSS/robust_s$s
  [ -f "$OUT/tuned_s$s.nnp" ] || $W finetune "$R/adapted_d1.nnp" "$R/finetune/n100_r0/labelled.csv" \
      "$OUT/tuned_s$s.nnp" --seed 0 --no-progress
  for set in "d1rest:$R/finetune/n100_r0/rest.csv" "pbc6valid:$CROSS/data_s$s/valid.csv" "bccd:$OUT/bccd.csv"; do
    name=${set%%:*}; cells=${set#*:}
    for m in "adapted:$R/adapted_d1.nnp" "tuned:$OUT/tuned_s$s.nnp"; do
      tag=${m%%:*}; model=${m#*:}
      [ -f "$OUT/pred_s${s}_${tag}_$name.csv" ] || $W predict "$model" "$cells" "$OUT/pred_s${s}_${tag}_$name.csv" \
          --no-progress | grep "domain-shift" | sed "s/^/s$s $tag $name: /"
    done
  done
done
