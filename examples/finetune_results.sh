#!/usr/bin/env bash
# The fine-tuning table of RESULTS.md: a small BERT pretrained with lmforge on the shared corpora,
# then fine-tuned on each task, against the same architecture trained on the task alone.
#
#   DATA=path/to/shared/data bash examples/finetune_results.sh --train.device cuda
#
# Extra arguments go to every pretrain/finetune command (a quick smoke run on CPU:
# `bash examples/finetune_results.sh --train.max_steps 2`). Results land in $OUT (runs/results);
# each line of RESULTS.md's table is one of the commands below.
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/results}
LMF=${LMF:-lmforge}
EXTRA=("$@")
mkdir -p "$OUT"

# SQuAD: only the v1.1 dev file is shared; split it by article (80/20) for training and testing.
python -c "
from lmforge.tasks.readers import read_squad, split_squad_by_article, write_squad
train, test = split_squad_by_article(read_squad('$DATA/squad/dev-v1.1.json'), 0.2, seed=0)
write_squad(train, '$OUT/squad_train.json'); write_squad(test, '$OUT/squad_test.json')
"

# Pretraining: English on WikiText-2, Chinese on the Chinese corpus (in parallel).
$LMF pretrain --data "$DATA/wikitext2/wiki.train.tokens" --out "$OUT/bert-en" --config configs/bert-small.yaml \
    "${EXTRA[@]}" > "$OUT/bert-en.log" 2>&1 &
$LMF pretrain --data "$DATA/zh_corpus" --out "$OUT/bert-zh" --config configs/bert-small.yaml --prep.txt_unit line \
    "${EXTRA[@]}" > "$OUT/bert-zh.log" 2>&1 &
wait

# Fine-tuning: every task twice, from the pretrained encoder and from fresh weights (in parallel).
RECIPE=(--train.lr 2e-4 --train.batch_size 32 --epochs 3)
run() {  # name, then the finetune arguments
    local name=$1; shift
    for init in pretrained scratch; do
        local flag=(); [ "$init" = scratch ] && flag=(--from_scratch true)
        $LMF finetune "$@" --out "$OUT/$name-$init" "${flag[@]}" "${RECIPE[@]}" "${EXTRA[@]}" --json \
            > "$OUT/$name-$init.log" 2>&1 &
    done
}
run sst2 classify --model "$OUT/bert-en" --train "$DATA/sst2/train.tsv" --dev "$DATA/sst2/dev.tsv"
run chnsenticorp classify --model "$OUT/bert-zh" --train "$DATA/chnsenticorp/train.tsv" \
    --dev "$DATA/chnsenticorp/dev.tsv" --text_column text_a --label_column label
run conll ner --model "$OUT/bert-en" --train "$DATA/conll2003/train.txt" --dev "$DATA/conll2003/valid.txt" --crf true
run msra ner --model "$OUT/bert-zh" --train "$DATA/msra_ner/train.txt" --dev "$DATA/msra_ner/dev.txt" --crf true
run squad qa --model "$OUT/bert-en" --train "$OUT/squad_train.json" --dev "$OUT/squad_test.json" \
    --doc_stride 64 --max_query_len 32
wait

# CoNLL-2003 is reported on its test set (the dev set picked the checkpoint).
for init in pretrained scratch; do
    $LMF evaluate "$OUT/conll-$init" --data "$DATA/conll2003/test.txt" --json > "$OUT/conll-$init.test.json" || true
done
python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = {"sst2": "accuracy", "chnsenticorp": "accuracy", "conll": "f1", "msra": "f1", "squad": "f1"}
for task, metric in rows.items():
    cells = []
    for init in ("pretrained", "scratch"):
        try:
            if task == "conll":  # the test set; the dev set chose the checkpoint
                cells.append(json.loads((out / f"conll-{init}.test.json").read_text().splitlines()[-1])["f1"])
            else:
                report = json.loads((out / f"{task}-{init}" / "dev_report.json").read_text())
                cells.append(report[metric] if task != "squad" else (report["exact_match"], report["f1"]))
        except (OSError, ValueError, KeyError) as e:
            cells.append(f"missing ({e})")
    print(task, metric, *cells)
PY
