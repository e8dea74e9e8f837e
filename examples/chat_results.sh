#!/usr/bin/env bash
# The chat rows of RESULTS.md: a GPT pretrained on WikiText-2 + the DailyDialog training dialogues,
# then chat fine-tuned on DailyDialog (the loss on the assistant's turns), beside the same model
# chat fine-tuned from scratch; both scored on the test dialogues: assistant-token perplexity,
# BLEU-1/2 and distinct-1/2 of greedy replies to every assistant turn (docs/chat.md), and a
# sample conversation.
#
#   bash examples/chat_results.sh                          # the recipe of RESULTS.md, on CPU
#   PRETRAIN_STEPS=6000 EPOCHS=5 bash examples/chat_results.sh --train.device cuda
#
# Extra arguments go to every pretrain/finetune command. Everything lands in $OUT (runs/chat); a
# finished step (its run's summary.json) is not redone, so a stopped script picks up where it was.
# The last line printed is the test scores of both runs as JSON.
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/chat}
LMF=${LMF:-lmforge}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-1500}
EPOCHS=${EPOCHS:-3}
D=$DATA/dailydialog
EXTRA=("$@")
mkdir -p "$OUT/corpus"

# The pretraining text: WikiText-2 and the training dialogues (no validation or test text).
cp "$DATA/wikitext2/wiki.train.tokens" "$OUT/corpus/wiki.train.txt"  # a folder is read by extension
python - "$D/train.jsonl" "$OUT/corpus/dailydialog_train.txt" <<'PY'
import json, sys
with open(sys.argv[2], "w", encoding="utf-8") as out:
    for line in open(sys.argv[1], encoding="utf-8"):
        out.write(" ".join(t.strip() for t in json.loads(line)["turns"]) + "\n")
PY

# train OUT_NAME COMMAND...: skipped once $OUT/OUT_NAME is finished, resumed if it was stopped.
train() {
    local name=$1; shift
    [ -f "$OUT/$name/summary.json" ] && return 0
    local resume=(); compgen -G "$OUT/$name/train_state/step_*/state.json" > /dev/null && resume=(--resume)
    "$@" --out "$OUT/$name" "${resume[@]}" "${EXTRA[@]}"
}

train gpt $LMF pretrain --data "$OUT/corpus" --model.n_layer 4 --model.n_head 4 --model.d_model 256 \
    --model.max_len 256 --model.dropout 0.1 --tokenizer.kind bpe --tokenizer.vocab_size 8192 \
    --prep.txt_unit line --train.seq_len 256 --train.batch_size 16 --train.max_steps "$PRETRAIN_STEPS" \
    --train.warmup_steps 100 --train.lr 1e-3 --train.schedule cosine --train.eval_every "$PRETRAIN_STEPS" \
    --train.save_every 250

# One chat recipe for both: the plain template (nothing added to the vocabulary), packed rows.
RECIPE=(--train "$D/train.jsonl" --dev "$D/validation.jsonl" --epochs "$EPOCHS" --pack true --max_len 256
        --train.batch_size 16 --train.lr 5e-4 --train.warmup_steps 100 --train.schedule cosine
        --train.weight_decay 0.01 --max_new_tokens 40)
train pretrained $LMF finetune chat --model "$OUT/gpt" "${RECIPE[@]}"
train scratch $LMF finetune chat --model "$OUT/gpt" --from_scratch true "${RECIPE[@]}"

for run in scratch pretrained; do
    [ -f "$OUT/$run.test.json" ] || $LMF evaluate "$OUT/$run" --data "$D/test.jsonl" --json | tail -1 > "$OUT/$run.test.json"
done
python - "$OUT" <<'PY'
import json, pathlib, sys
import lmforge
out = pathlib.Path(sys.argv[1])
chat = lmforge.Chat(out / "pretrained", temperature=0, max_new_tokens=40)
for text in ("Hi , how are you doing today ?", "What would you like to eat tonight ?", "Shall we go then ?"):
    print(f"user: {text}\nassistant: {chat.send(text)}")
rows = {run: json.loads((out / f"{run}.test.json").read_text()) for run in ("scratch", "pretrained")}
keys = ("ppl", "bleu1", "bleu2", "distinct1", "distinct2")
for run, r in rows.items():
    print(run, "  ".join(f"{k} {r[k]:.2f}" for k in keys))
print(json.dumps({run: {k: round(r[k], 2) for k in keys} for run, r in rows.items()}))
PY
