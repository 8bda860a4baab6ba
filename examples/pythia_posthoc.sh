#!/usr/bin/env bash
# Reproduce Biderman et al. 2023 ("Emergent and Predictable Memorization") on Pythia checkpoints.
# Needs internet (the hub), GPUs, and Pythia's preshuffled, deduplicated Pile as a Megatron
# .bin/.idx pair (EleutherAI/pile-deduped-pythia-preshuffled, merged into document.bin/.idx as
# its README explains). Rows are sequence indices: step s trains on rows s*1024 .. s*1024+1023.
set -euo pipefail

DATA=${DATA:-/data/pile-deduped-preshuffled/document}  # prefix of document.bin / document.idx
ROWS=${ROWS:-0:5000000}   # the first 5M sequences: trained on before step 4883
OUT=${OUT:-results}
GPUS=${GPUS:-8}

# fp16 as in EleutherAI's eval_memorization.py; --dtype fp32 reproduces reference_probe bit for bit.
# Every model size at its final checkpoint (smaller-model predictors and the target)...
for size in 70m 160m 410m 1b 1.4b 2.8b 6.9b 12b; do
  torchrun --standalone --nproc_per_node="$GPUS" -m memwatch.cli eval \
    --model "EleutherAI/pythia-${size}-deduped" --revision step143000 \
    --pythia-data "$DATA" --indices "$ROWS" --out "$OUT" --dtype fp16 --batch-size auto
done

# ...and intermediate checkpoints of the target (intermediate-checkpoint predictors).
# Rerunning a killed command resumes it: finished checkpoints are skipped, partial ones continue.
torchrun --standalone --nproc_per_node="$GPUS" -m memwatch.cli eval \
  --model EleutherAI/pythia-12b-deduped \
  --revision step23000 step43000 step63000 step83000 step103000 step123000 \
  --pythia-data "$DATA" --indices "$ROWS" --out "$OUT" --dtype fp16

# Precision/recall of every checkpoint against the final 12B model, scaling fits, plots.
memwatch analyze "$OUT" --target pythia-12b-deduped@step143000 --out report
echo "report: report/report.md"

# Validate against EleutherAI's published results: put a download of the
# EleutherAI/pythia-memorized-evals dataset (data/deduped.12b-00000-of-0000N-<hash>.parquet, ...)
# and/or eval_memorization.py's CSVs (memorization_12b-deduped_143000/rank-*.csv) beside
# memwatch's results. Each (model, step) then appears once per source, and the report's
# "Agreement between sources" table gives memwatch's precision/recall against the published
# set. The published sets were computed on the -v0 models (EleutherAI/pythia-12b-deduped-v0).
PUBLISHED=${PUBLISHED:-}
if [ -n "$PUBLISHED" ]; then
  memwatch analyze "$OUT" "$PUBLISHED" --target pythia-12b-deduped@step143000 --out report-vs-published
  echo "report: report-vs-published/report.md"
fi
