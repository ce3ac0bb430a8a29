#!/usr/bin/env bash
# The exact commands that made the bundled models (BiSCSegmentationLib/models/bisc-phantom-v1-*.pt).
# Data: phantom CT synthesized around the 168 real KiTS19 label maps in ../shared/data/kits19 (4/5 train,
# 1/5 held out, split written to $OUT/split.json). CPU only, 2 cores: the three trainings run side by side,
# one thread each. Small width and short schedule (the paper: 20 epochs x 4000 iterations, batch 8,
# lr 1e-4) because this runs on a 2-core CPU; lr 1e-3 for the short schedule; bf16 autocast ~3x the step rate.
set -euo pipefail
OUT=${OUT:-runs/bundled}
KITS=${KITS:-../shared/data/kits19}
COMMON="--widths 8,16,32,64 --batch-size 2 --lr 1e-3 --amp bf16 --threads 1 --iterations 500"  # one epoch = 500 iterations here
ROUGH_EPOCHS=${ROUGH_EPOCHS:-1}; FINE_EPOCHS=${FINE_EPOCHS:-2}   # as shipped: rough 500, fine 1000 iterations

bisc-train prepare --kits "$KITS" --cache "$OUT/cache" --split "$OUT/split.json" --synthesize --workers 2
bisc-train stage rough --cache "$OUT/cache" --split "$OUT/split.json" --out "$OUT/rough" $COMMON --epochs $ROUGH_EPOCHS \
  --rough-patch-size 32,128,128 &
bisc-train stage fine --cache "$OUT/cache" --split "$OUT/split.json" --out "$OUT/fine-bce" $COMMON --epochs $FINE_EPOCHS \
  --fine-patch-size 32,96,96 --loss bce &
bisc-train stage fine --cache "$OUT/cache" --split "$OUT/split.json" --out "$OUT/fine-ce" $COMMON --epochs $FINE_EPOCHS \
  --fine-patch-size 32,96,96 --loss ce &
wait
mkdir -p "$OUT/bundled"; cp "$OUT/rough/rough.pt" "$OUT/fine-bce/fine.pt" "$OUT/bundled/"
bisc-train evaluate --kits "$KITS" --synthesize --split "$OUT/split.json" --models "$OUT/bundled"
