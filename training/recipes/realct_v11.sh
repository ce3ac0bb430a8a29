#!/usr/bin/env bash
# The exact commands that made bisc-realsynth-v11 (docs/model-card-v11.md), from the repository root, on a
# 2-core CPU (Intel Xeon with AMX/AVX512-BF16: --amp bf16; on a CPU without bf16 instructions set AMP=off).
#
# Data: whole-abdomen CT synthesized around the 30 real BTCV multi-organ label maps (training/synthesis:
# real organ shapes, 5 contrast phases, bowel, bones, table, tumors of real KiTS19 training shapes), at three
# scan geometries, plus 40 flat-intensity phantoms around real KiTS19 training label maps (so that the KiTS19
# anatomy the v10 models learned is not forgotten). Nothing of ../shared/data/realct is used.
# Networks: v10's widths (8,16,32,64), warm-started from the bundled v10 weights, mirrored left-right only
# (front/back and head/feet stay as in a real scan).
set -euo pipefail
OUT=${OUT:-runs/v11}
SHARED=${SHARED:-../shared/data}
AMP=${AMP:-bf16}
MODELS=BiSCSegmentation/BiSCSegmentationLib/models
SYN="python -m bisc_training.synthesis --btcv $SHARED/btcv_labels --kits $SHARED/kits19 --out $OUT/synth"
SYN_P="python -m bisc_training.synthesis --btcv $SHARED/btcv_labels --kits $SHARED/kits19 --out $OUT/synth_pelvis"

# 1. synthetic CT (KiTS layout); case numbers keep the two geometries apart. These 106 cases were made with
#    the synthesizer of commit 33f6e69 (before the pelvis of step 4; `git worktree add ../v11a 33f6e69` and run
#    this step there to reproduce them). The two runs were stopped after 48 and 58 cases.
$SYN --count "${N1:-48}" --seed 21 --spacing 1.5,1.5,2.5 --first-index 0 &
$SYN --count "${N2:-58}" --seed 22 --spacing 3,3,3 --first-index 100 &
wait
# 2. caches: the synthetic cases as they are; 40 KiTS19 training label maps as phantoms (--synthesize)
bisc-train prepare --kits "$OUT/synth" --cache "$OUT/cache_synth" --split "$OUT/synth_split.json" --workers 2
mkdir -p "$OUT/kits_ph"
for c in $(grep -v '^#' training/recipes/tuning_cases_72.txt | grep -o 'case_[0-9]*' | head -40); do
  ln -sfn "$(realpath "$SHARED/kits19/$c")" "$OUT/kits_ph/$c"
done
bisc-train prepare --kits "$OUT/kits_ph" --cache "$OUT/cache_ph" --split "$OUT/ph_split.json" --synthesize --workers 2
# one cache of links: synthetic case N as case_1NNNN; the split trains on every case of both caches except
# the first 6 synthetic held-out cases of synth_split.json (kept to check the networks)
python - "$OUT" <<'EOF'
import json, os, sys
from pathlib import Path
out = Path(sys.argv[1]); cache = out / "cache"; cache.mkdir(exist_ok=True)
held_out = sorted(json.loads((out / "synth_split.json").read_text())["test"])[:6]
train, test = [], []
for src, rename in ((out / "cache_synth", True), (out / "cache_ph", False)):
    for d in sorted(p for p in src.iterdir() if p.is_dir() and p.name.startswith("case_")):
        name = f"case_1{d.name[-4:]}" if rename else d.name
        link = cache / name
        if not link.exists():
            os.symlink(d.resolve(), link)
        (test if rename and d.name in held_out else train).append(name)
(out / "split.json").write_text(json.dumps({"seed": 0, "test_fraction": 0.2, "train": train, "test": test}, indent=1))
EOF
# 3. both stages side by side, one thread each. The rough run was stopped at 750 of 2000 iterations (its
#    model file of that epoch continues in step 4); the fine run was restarted at 400 with --epochs 12 (3000
#    iterations; the poly schedule steps there), from its checkpoint.
COMMON="--cache $OUT/cache --split $OUT/split.json --widths 8,16,32,64 --batch-size 2 --lr 1e-3 --amp $AMP \
  --threads 1 --lr-schedule poly --mirror-axes x"
bisc-train stage rough $COMMON --out "$OUT/rough" --rough-patch-size 32,128,128 \
  --iterations "${ROUGH_IT:-250}" --epochs "${ROUGH_EPOCHS:-8}" --init-from "$MODELS/bisc-phantom-v10-rough.pt" &
bisc-train stage fine $COMMON --out "$OUT/fine" --fine-patch-size 32,96,96 --roi-prob 0.5 \
  --iterations "${FINE_IT:-250}" --epochs "${FINE_EPOCHS:-12}" --init-from "$MODELS/bisc-phantom-v10-fine.pt" &
wait
# 4. the rough stage again, from its 750-iteration model file (the first run was stopped there): the cases
#    above were made before the synthesizer widened the body below the kidneys and added the pelvic bones
#    (iliac wings, femoral heads); on the real validation CT that rough network put both ROIs on the pelvis.
#    40 cases of the new synthesizer (3 mm; 4 held out) join; listed twice in the rough split so that half the patches
#    come from a scan with a real-looking pelvis.
for k in 0 1; do
  $SYN_P --count 20 --seed $((41 + k)) --spacing 3,3,3 --first-index $((200 + 100 * k)) &
done
wait
bisc-train prepare --kits "$OUT/synth_pelvis" --cache "$OUT/cache_pelvis" --split "$OUT/pelvis_split.json" --workers 2
python - "$OUT" <<'EOF2'
import json, os, sys
from pathlib import Path
out = Path(sys.argv[1]); cache = out / "cache"
split = json.loads((out / "split.json").read_text())
held_out = sorted(json.loads((out / "pelvis_split.json").read_text())["test"])[:4]
new = []
for d in sorted(p for p in (out / "cache_pelvis").iterdir() if p.is_dir() and p.name.startswith("case_")):
    name = f"case_2{d.name[-4:]}"
    if not (cache / name).exists():
        os.symlink(d.resolve(), cache / name)
    (split["test"] if d.name in held_out else new).append(name)
split["train"] = split["train"] + new + new
(out / "split_rough2.json").write_text(json.dumps(split, indent=1))
EOF2
bisc-train stage rough --cache "$OUT/cache" --split "$OUT/split_rough2.json" --widths 8,16,32,64 --batch-size 2 \
  --lr 1e-3 --amp "$AMP" --threads 1 --lr-schedule poly --mirror-axes x --out "$OUT/rough2" \
  --rough-patch-size 32,128,128 --iterations "${ROUGH2_IT:-250}" --epochs "${ROUGH2_EPOCHS:-3}" --init-from "$OUT/rough/rough.pt"
