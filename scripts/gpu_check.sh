#!/usr/bin/env bash
# The checks docs/cluster.md marks "not yet run (scripts/gpu_check.sh)", in one prepared run on a machine
# with one CUDA GPU, a few minutes: bf16 full fine-tuning, DeepSpeed ZeRO-2 and ZeRO-3 DPO, FSDP2 DPO (full,
# LoRA, precomputed reference), QLoRA DPO (DDP and ZeRO-3). Each check trains a few steps of full or QLoRA DPO (reference included)
# through `accelerate launch ... scripts/train.py` with the shipped configs/accelerate/ file, on a local
# checkpoint of the builtin small-25m model (saved first, so the reference is loaded the way a hub model's
# is) and the ultrafeedback_trl fixture, then reads the run's manifest.json `distributed` block
# (prefopt/training/distinfo.py) and checks that the engine, mixed precision, reference placement and sharding are
# the ones the config promises. One line per check: PASS / FAIL / SKIP (a missing package) / DRY.
#
#   scripts/gpu_check.sh              # on the GPU machine, from anywhere (about 30-60 s per check)
#   GPU_CHECK_ONLY="zero2-dpo zero3-dpo" scripts/gpu_check.sh    # a subset, by check name
#   scripts/gpu_check.sh --dry-run    # no GPU: validate every recipe (prefopt train --dry-run), build the
#                                     # checkpoint, and run the full-FT and QLoRA checks for real on CPU
#                                     # (1 process, builtin tiny-arith) through the same verifier
#
# Logs: $OUT if set (gpu_check.log + summary.txt, two files), else a new directory under /tmp.
# Python: $PYTHON, else .venv/bin/python, else python3. It installs nothing from the network: a missing
# package is installed only from wheels in $WHEELS (default .whl/ in the repository; see docs/cluster.md for
# how to fill it), else the checks that need it are SKIPped. Exit status: 1 if any check FAILed.
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 1
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
LOGDIR="${OUT:-$(mktemp -d /tmp/prefopt-gpu-check.XXXXXX)}"
mkdir -p "$LOGDIR"
WORK="$(mktemp -d /tmp/prefopt-gpu-work.XXXXXX)"
LOG="$LOGDIR/gpu_check.log"
SUMMARY="$LOGDIR/summary.txt"
: >"$LOG"
: >"$SUMMARY"
WHEELS="${WHEELS:-$REPO/.whl}"
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"
else PY="python3"; fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
FAILED=0
PORT=29600
DRY_RECIPES=()
DRY_LINES=()

say() { echo "$*" | tee -a "$SUMMARY"; }
log() { echo "$*" >>"$LOG"; }

# ------------------------------------------------------------------------------------------ packages
have() { "$PY" -c "import $1" >/dev/null 2>&1; }
ensure() {  # ensure MODULE PIP_NAME: importable, or installed from $WHEELS without the network
  have "$1" && return 0
  if compgen -G "$WHEELS/*" >/dev/null; then
    log "installing $2 from $WHEELS (no index)"
    "$PY" -m pip install -q --no-index --no-build-isolation --find-links "$WHEELS" "$2" >>"$LOG" 2>&1
  fi
  have "$1"
}

say "prefopt gpu_check $(date -u +%FT%TZ) repo=$REPO python=$PY dry_run=$DRY logs=$LOGDIR"
MISSING_CORE=""
for spec in torch:torch transformers:transformers trl:trl peft:peft datasets:datasets accelerate:accelerate \
  pydantic:pydantic yaml:pyyaml matplotlib:matplotlib safetensors:safetensors; do
  ensure "${spec%%:*}" "${spec##*:}" || MISSING_CORE="$MISSING_CORE ${spec##*:}"
done
if [[ -n "$MISSING_CORE" ]]; then
  say "FAIL preflight (missing:$MISSING_CORE; put their wheels in $WHEELS, docs/cluster.md)"
  exit 1
fi
HAVE_BNB=0; ensure bitsandbytes bitsandbytes && HAVE_BNB=1
HAVE_DS=0; ensure deepspeed deepspeed && HAVE_DS=1
"$PY" - >>"$SUMMARY" 2>>"$LOG" <<'EOF'
import importlib.metadata as md, torch
installed = {d.metadata["Name"].lower() for d in md.distributions()}
v = {p: md.version(p) if p in installed else None
     for p in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "deepspeed")}
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
print(f"versions: {v}\ngpu: {gpu} (count {torch.cuda.device_count()}, bf16 {bf16})")
EOF
GPU_OK=0; "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>>"$LOG" && GPU_OK=1
if [[ $GPU_OK -eq 0 && $DRY -eq 0 ]]; then
  say "FAIL preflight (no CUDA GPU visible to $PY; use --dry-run to check the CPU-runnable parts)"
  exit 1
fi
say "PASS preflight (bitsandbytes=$HAVE_BNB deepspeed=$HAVE_DS gpu=$GPU_OK)"

# ------------------------------------------------------------------------------------------ model
MODEL_KEY="small-25m"; [[ $DRY -eq 1 ]] && MODEL_KEY="tiny-arith"
CKPT="$WORK/ckpt-$MODEL_KEY"
if ! "$PY" - "$MODEL_KEY" "$CKPT" >>"$LOG" 2>&1 <<'EOF'
import sys, torch
from prefopt.model.loading import build_builtin, load_tokenizer
key, out = sys.argv[1], sys.argv[2]
model = build_builtin(key, 0, torch.bfloat16)
model.save_pretrained(out, safe_serialization=True)
load_tokenizer(f"builtin:{key}").save_pretrained(out)
print(f"checkpoint {key} -> {out}: {sum(p.numel() for p in model.parameters())/1e6:.1f}M parameters")
EOF
then say "FAIL checkpoint (builtin:$MODEL_KEY could not be saved; $LOG)"; exit 1; fi

# ------------------------------------------------------------------------------------------ recipes
recipe() {  # recipe NAME ADAPTER(none | lora | 4-bit storage uint8/bfloat16) [TRAINING_LINE] -> path
  local name=$1 quant=$2 extra=${3:-} f="$WORK/$1.yaml"
  {
    echo "# scripts/gpu_check.sh: $name"
    echo "algorithm: dpo"
    echo "seed: 0"
    echo "model:"
    echo "  name: $CKPT"
    echo "  dtype: bfloat16"
    [[ $quant != none ]] && echo "  lora: {r: 16, lora_alpha: 32, target_modules: all-linear}"
    if [[ $quant != none && $quant != lora ]]; then
      echo "  quantization: {load_in_4bit: true, bnb_4bit_compute_dtype: bfloat16, bnb_4bit_quant_storage: $quant}"
    fi
    echo "data:"
    echo "  train:"
    echo "    - source: ultrafeedback_trl"
    echo "      path: $REPO/prefopt/smoke_fixtures/ultrafeedback_trl.jsonl"
    echo "loss: {beta: 0.1}"
    echo "training:"
    echo "  max_steps: 4"
    echo "  per_device_train_batch_size: 4"
    echo "  learning_rate: 1.0e-5"
    echo "  max_length: 256"
    echo "  max_prompt_length: 128"
    echo "  logging_steps: 1"
    echo "  save_strategy: 'no'"
    echo "  report_to: none"
    [[ -n $extra ]] && echo "  $extra"
    echo "evaluation: {enabled: false}"
  } >"$f"
  echo "$f"
}

cat >"$WORK/verify.py" <<'EOF'
"""verify.py RUN_DIR EXPECT_JSON: the run finished and its manifest says what the launcher promised."""
import json, math, sys
from pathlib import Path
run, want = Path(sys.argv[1]), json.loads(sys.argv[2])
m = json.loads((run / "manifest.json").read_text())
d = m["distributed"]
pol, ref = d["policy_sharding"], d["reference"]
problems = []
def check(name, got, expected):
    if got != expected:
        problems.append(f"{name}: {got!r}, expected {expected!r}")
check("status", m["status"], "finished")
check("engine", d["engine"], want["engine"])
check("mixed_precision", d["mixed_precision"], want["mixed_precision"])
check("matches_launcher", d["matches_launcher"], True)
check("reference", ref["kind"], want["reference"])
if "trainable_dtype" in want:
    check("trainable_param_dtype", d["trainable_param_dtype"], want["trainable_dtype"])
if want.get("dtensor"):
    check("policy DTensors", pol["dtensor_params"], pol["params"])
if want.get("zero3"):
    check("policy ZeRO-3 partitions", pol["zero3_params"] > 0, True)
if want.get("ref_sharded") is not None and ref["kind"] == "separate copy":
    s = ref["sharding"]
    check("reference partitioned", (s["zero3_params"] + s["dtensor_params"]) > 0, want["ref_sharded"])
losses = [json.loads(x).get("loss") for x in (run / "metrics.jsonl").read_text().splitlines()]
losses = [x for x in losses if x is not None]
check("logged steps", len(losses), 4)
if not all(math.isfinite(x) for x in losses):
    problems.append(f"non-finite loss {losses}")
from prefopt.model.loading import load_trained
model, _ = load_trained(run)  # the saved model (full weights or adapter) reloads
if want["reference"] == "adapter-disabled base":
    check("adapter saved", (run / "model" / "adapter_config.json").exists(), True)
if problems:
    print("; ".join(problems)); sys.exit(1)
print(f"engine {d['engine']}, mixed precision {d['mixed_precision']}, params {d['trainable_param_dtype']}, reference "
      f"{ref['kind']}, policy local {pol['local_fraction']}, losses {losses[0]:.4f}->{losses[-1]:.4f}")
EOF

# ------------------------------------------------------------------------------------------ checks
run_check() {  # run_check NAME ACCEL_CONFIG ADAPTER NEEDS EXPECT_JSON [TRAINING_LINE]
  local name=$1 cfg=$2 quant=$3 needs=$4 expect=$5 extra=${6:-} out="$WORK/runs/$1" f detail
  if [[ -n "${GPU_CHECK_ONLY:-}" && " $GPU_CHECK_ONLY " != *" $name "* ]]; then return; fi
  f=$(recipe "$name" "$quant" "$extra")
  log "===== $name: $cfg, quantization $quant"
  if [[ $DRY -eq 1 ]]; then  # validated all together below, in one Python process
    DRY_RECIPES+=("$f")
    DRY_LINES+=("$name (needs: ${needs:-nothing extra}; on the GPU: accelerate launch --config_file $cfg --num_processes 1 scripts/train.py)")
    return
  fi
  for pkg in $needs; do
    if [[ $pkg == deepspeed && $HAVE_DS -eq 0 ]] || [[ $pkg == bitsandbytes && $HAVE_BNB -eq 0 ]]; then
      say "SKIP $name (missing $pkg; wheels in $WHEELS)"; return
    fi
  done
  PORT=$((PORT + 1))
  local t0=$SECONDS
  if ! timeout 900 "$PY" -m accelerate.commands.launch --config_file "$REPO/$cfg" --num_processes 1 \
    --main_process_port "$PORT" scripts/train.py --config "$f" --output-dir "$out" >>"$LOG" 2>&1; then
    say "FAIL $name (training exited non-zero after $((SECONDS - t0))s; $LOG)"; FAILED=1; return
  fi
  if detail=$("$PY" "$WORK/verify.py" "$out" "$expect" 2>>"$LOG"); then
    say "PASS $name ($((SECONDS - t0))s: $detail)"
  else say "FAIL $name (${detail:-verify.py crashed}; $LOG)"; FAILED=1; fi
}

run_check bf16-full-dpo configs/accelerate/ddp.yaml none "" \
  '{"engine": "single", "mixed_precision": "bf16", "reference": "separate copy", "trainable_dtype": "bfloat16", "ref_sharded": false}'
run_check zero2-dpo configs/accelerate/zero2.yaml none "deepspeed" \
  '{"engine": "deepspeed-zero2", "mixed_precision": "bf16", "reference": "separate copy", "ref_sharded": false}'
run_check zero3-dpo configs/accelerate/zero3.yaml none "deepspeed" \
  '{"engine": "deepspeed-zero3", "mixed_precision": "bf16", "reference": "separate copy", "zero3": true, "ref_sharded": true}'
run_check fsdp2-dpo configs/accelerate/fsdp.yaml none "" \
  '{"engine": "fsdp2", "mixed_precision": "bf16", "reference": "separate copy", "trainable_dtype": "float32", "dtensor": true, "ref_sharded": true}'
run_check lora-fsdp2-dpo configs/accelerate/fsdp.yaml lora "" \
  '{"engine": "fsdp2", "mixed_precision": "bf16", "reference": "adapter-disabled base", "dtensor": true}'
run_check qlora-dpo configs/accelerate/ddp.yaml uint8 "bitsandbytes" \
  '{"engine": "single", "mixed_precision": "bf16", "reference": "adapter-disabled base"}'
run_check qlora-zero3-dpo configs/accelerate/zero3.yaml bfloat16 "bitsandbytes deepspeed" \
  '{"engine": "deepspeed-zero3", "mixed_precision": "bf16", "reference": "adapter-disabled base"}'
run_check precompute-fsdp2-dpo configs/accelerate/fsdp.yaml none "" \
  '{"engine": "fsdp2", "mixed_precision": "bf16", "reference": "precomputed", "dtensor": true}' \
  "precompute_ref_log_probs: true"

# --dry-run: every recipe through prefopt's validation and its TRL config (prefopt train --dry-run)
if [[ $DRY -eq 1 ]]; then
  i=0
  while read -r verdict; do
    if [[ $verdict == ok ]]; then say "DRY  ${DRY_LINES[$i]}: recipe valid"
    else say "FAIL ${DRY_LINES[$i]}: $verdict"; FAILED=1; fi
    i=$((i + 1))
  done < <("$PY" - "${DRY_RECIPES[@]}" 2>>"$LOG" <<'EOF'
import sys
from prefopt.core.errors import PrefoptError
from prefopt.config.recipe import load_recipe
from prefopt.pipeline.run import dry_run
for path in sys.argv[1:]:
    try:
        dry_run(load_recipe(path), 1)
        print("ok")
    except PrefoptError as err:
        print(" ".join(str(err).split()))
EOF
  )
  [[ $i -eq ${#DRY_RECIPES[@]} ]] || { say "FAIL dry-run validation (it crashed; $LOG)"; FAILED=1; }
fi

# --dry-run: the CPU-runnable part for real — one process, no GPU launcher, the same recipes and verifier
if [[ $DRY -eq 1 ]]; then
  for spec in "cpu-full-dpo:none:separate copy" "cpu-qlora-dpo:uint8:adapter-disabled base"; do
    IFS=: read -r name quant refkind <<<"$spec"
    [[ $quant != none && $HAVE_BNB -eq 0 ]] && { say "SKIP $name (missing bitsandbytes)"; continue; }
    f=$(recipe "$name" "$quant"); out="$WORK/runs/$name"; t0=$SECONDS
    log "===== $name (CPU, 1 process)"
    if ! env -u ACCELERATE_USE_CPU "$PY" -m prefopt.cli train --config "$f" --output-dir "$out" >>"$LOG" 2>&1; then
      say "FAIL $name (training exited non-zero; $LOG)"; FAILED=1; continue
    fi
    expect="{\"engine\": \"single\", \"mixed_precision\": \"no\", \"reference\": \"$refkind\"}"
    if detail=$("$PY" "$WORK/verify.py" "$out" "$expect" 2>>"$LOG"); then
      say "PASS $name ($((SECONDS - t0))s: $detail)"
    else say "FAIL $name (${detail:-verify.py crashed}; $LOG)"; FAILED=1; fi
  done
fi

say "done: $([[ $FAILED -eq 0 ]] && echo 'no failures' || echo 'FAILURES above') (work dir $WORK)"
exit $FAILED
