#!/usr/bin/env bash
# The summarisation rows of RESULTS.md: SciTLDR (abstract -> one-line summary), the same
# encoder-decoder (mt-tiny's shape, 512 positions) fine-tuned from scratch and from T5-style span
# corruption pretraining on WikiText-2 + the SciTLDR training abstracts, scored on the test set
# with ROUGE against all of each paper's references.
#
#   bash examples/summarisation_results.sh                 # the recipe of RESULTS.md, on CPU
#   PRETRAIN_STEPS=5000 EPOCHS=20 bash examples/summarisation_results.sh --train.device cuda
#
# Extra arguments go to every pretrain/finetune command. Everything lands in $OUT (runs/summ); a
# finished step (its run's summary.json) is not redone, so a stopped script picks up where it was.
# The last line printed is the test scores of both runs as JSON.
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/summ}
LMF=${LMF:-lmforge}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-1200}
EPOCHS=${EPOCHS:-5}
D=$DATA/scitldr
EXTRA=("$@")
mkdir -p "$OUT/corpus"

# The pretraining text: WikiText-2 and the training abstracts (no dev or test text), one per line.
cp "$DATA/wikitext2/wiki.train.tokens" "$OUT/corpus/wiki.train.txt"  # a folder is read by extension
python - "$D/train.jsonl" "$OUT/corpus/scitldr_abstracts.txt" <<'PY'
import json, sys
with open(sys.argv[2], "w", encoding="utf-8") as out:
    for line in open(sys.argv[1], encoding="utf-8"):
        out.write(" ".join(s.strip() for s in json.loads(line)["source"]) + "\n")
PY

# train OUT_NAME COMMAND...: skipped once $OUT/OUT_NAME is finished, resumed if it was stopped.
train() {
    local name=$1; shift
    [ -f "$OUT/$name/summary.json" ] && return 0
    local resume=(); compgen -G "$OUT/$name/train_state/step_*/state.json" > /dev/null && resume=(--resume)
    "$@" --out "$OUT/$name" "${resume[@]}" "${EXTRA[@]}"
}

ARCH=(--model.arch encoder-decoder --model.n_layer 3 --model.n_dec_layer 3 --model.n_head 4 --model.d_model 256
      --model.d_ff 1024 --model.max_len 512 --model.norm_position pre --model.position sinusoidal
      --model.scale_embeddings true --model.init_std 0.0625 --model.activation relu --model.dropout 0.1)
train t5 $LMF pretrain --objective span --data "$OUT/corpus" "${ARCH[@]}" --tokenizer.kind unigram \
    --tokenizer.vocab_size 8000 --prep.txt_unit line --train.seq_len 256 --train.batch_size 16 \
    --train.max_steps "$PRETRAIN_STEPS" --train.warmup_steps 100 --train.lr 1e-3 \
    --train.eval_every "$PRETRAIN_STEPS" --train.save_every 150

# One fine-tuning recipe for both: SciTLDR-A's abstracts, the first TLDR as the target.
RECIPE=(--train "$D/train.jsonl" --dev "$D/dev.jsonl" --src_field source --tgt_field target --max_len 512
        --epochs "$EPOCHS" --max_tokens 4096 --label_smoothing 0.1 --beam 4 --max_new_tokens 64
        --no_repeat_ngram 3 --train.lr 1e-3 --train.warmup_steps 100 --train.schedule inverse_sqrt
        --train.beta2 0.98 --train.weight_decay 0.0001 --train.select_metric rougeL --train.eval_every 100000)
train scratch $LMF finetune seq2seq --config configs/mt-tiny.yaml --architecture.max_len 512 \
    --tokenizer "$OUT/t5/tokenizer.json" "${RECIPE[@]}"
train pretrained $LMF finetune seq2seq --model "$OUT/t5" "${RECIPE[@]}"

for run in scratch pretrained; do
    $LMF evaluate "$OUT/$run" --data "$D/test.jsonl" --json | tail -1 > "$OUT/$run.test.json"
done
python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = {run: json.loads((out / f"{run}.test.json").read_text()) for run in ("scratch", "pretrained")}
keys = ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu")
for run, r in rows.items():
    print(run, "  ".join(f"{k} {r[k]:.2f}" for k in keys if k in r))
print(json.dumps({run: {k: r[k] for k in keys if k in r} for run, r in rows.items()}))
PY
