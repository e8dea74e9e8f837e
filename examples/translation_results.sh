#!/usr/bin/env bash
# The Multi30k rows of RESULTS.md: a joint unigram vocabulary, mt-tiny trained from scratch,
# the last checkpoints averaged, beam-5 translation of test_2016_flickr, scored with sacreBLEU.
#
#   bash examples/translation_results.sh en de            # en->de, the recipe of RESULTS.md
#   EPOCHS=12 bash examples/translation_results.sh de en
#   DATA=path/to/shared/data bash examples/translation_results.sh en de --train.device cuda
#
# Extra arguments go to `finetune seq2seq` (a quick smoke run: `... en de --train.max_steps 2`).
# AVERAGE sets how many of the last checkpoints are averaged (default 10, fairseq's recipe), EPOCHS
# the training epochs (default 20).
# Everything lands in $OUT (runs/mt-SRC-TGT); the last line printed is the scores as JSON.
set -euo pipefail
SRC=${1:?usage: translation_results.sh SRC TGT [finetune arguments]}
TGT=${2:?usage: translation_results.sh SRC TGT [finetune arguments]}
shift 2
DATA=${DATA:-../shared/data}
D=$DATA/multi30k
OUT=${OUT:-runs/mt-$SRC-$TGT}
LMF=${LMF:-lmforge}
AVERAGE=${AVERAGE:-10}
EPOCHS=${EPOCHS:-20}
mkdir -p "$OUT"

[ -f "$OUT/tok.json" ] || $LMF tokenizer train --data "$D/train.en,$D/train.de" --kind unigram \
    --vocab_size 8000 --out "$OUT/tok.json"
RESUME=(); [ -d "$OUT/run" ] && RESUME=(--resume)
$LMF finetune seq2seq --config configs/mt-tiny.yaml --tokenizer "$OUT/tok.json" \
    --train "$D/train.$SRC,$D/train.$TGT" --dev "$D/val.$SRC,$D/val.$TGT" --out "$OUT/run" \
    --epochs "$EPOCHS" --train.warmup_steps 400 --train.eval_every 780 --train.save_every 130 \
    --train.keep_last "$AVERAGE" "${RESUME[@]}" "$@"
$LMF average "$OUT/run" --last "$AVERAGE" --out "$OUT/avg" --overwrite

for model in run avg; do
    $LMF translate "$OUT/$model" --input "$D/test_2016_flickr.$SRC" --output "$OUT/hyp-$model.$TGT" \
        --beam 5 --overwrite
done
python - "$OUT" "$D/test_2016_flickr.$TGT" "$TGT" <<'PY'
import json, pathlib, sys
from sacrebleu.metrics import BLEU, CHRF
out, ref_path, tgt = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
refs = [pathlib.Path(ref_path).read_text(encoding="utf-8").splitlines()]
scores = {}
for model in ("run", "avg"):
    hyps = (out / f"hyp-{model}.{tgt}").read_text(encoding="utf-8").splitlines()
    bleu, lc, chrf = BLEU(), BLEU(lowercase=True), CHRF()
    scores[model] = {"bleu": round(bleu.corpus_score(hyps, refs).score, 2),
                     "bleu_lowercase": round(lc.corpus_score(hyps, refs).score, 2),
                     "chrf": round(chrf.corpus_score(hyps, refs).score, 2),
                     "signature": str(bleu.get_signature())}
    print(f"{model}: BLEU {scores[model]['bleu']}  lowercased {scores[model]['bleu_lowercase']}  "
          f"chrF {scores[model]['chrf']}")
print(json.dumps(scores))
PY
