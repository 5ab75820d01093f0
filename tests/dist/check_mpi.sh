#!/usr/bin/env bash
# tests/dist/check_mpi.sh CASE TASN_TRAIN CKPT_DIFF MPIRUN WORKDIR - the data-parallel proofs of
# docs/distributed.md, run by ctest (examples/CMakeLists.txt) with 2 MPI ranks on localhost:
#   equivalence  with --sync-bn, 2 ranks of batch B/2 end with the weights, momentum and batch-norm
#                statistics of 1 process of batch B, within a tolerance derived from the summation
#                order (below), for the baseline (6 steps) and TASN (1 step); without --sync-bn the
#                same comparison fails by orders of magnitude (the test can fail).
#   identical    a few steps of the demo network on 2 ranks: the trainer's own check (a hash of
#                every rank's weights, momentum and statistics compared after every epoch) passes;
#                a rank made to diverge (test hook) stops the job with the check's message; a
#                2-rank checkpoint resumes in one process; a non-finite loss stops both ranks
#                with exit status 3.
#   kill         SIGKILL one rank mid-training: the job (the other rank, mpirun) ends non-zero
#                within 30 s and no rank is left running.
set -euo pipefail
case_=$1 train=$2 diff=$3 mpirun=$4 work=$5
rm -rf "$work" && mkdir -p "$work" && cd "$work"
export OMP_WAIT_POLICY=PASSIVE
# Open MPI refuses root without these; --oversubscribe: 2 ranks may exceed the cores here.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi=("$mpirun" --oversubscribe -np 2)
small=(--test-size 16 --epochs 1 --batch 16 --image 48 --out-size 16 --no-progress --threads 1)

# rel A B: the largest tensor difference of two checkpoints (ckpt_diff), as a number.
rel() { "$diff" "$1" "$2" | tee -a diffs.txt | awk '{print $2}'; }
# le X Y: X <= Y (floating point).
le() { awk -v x="$1" -v y="$2" 'BEGIN { exit !(x <= y) }'; }

case "$case_" in
equivalence)
  # Tolerance. The 2-rank run differs from the 1-process run only in summation order: a weight
  # gradient (a sum over the batch's N x P output positions) is summed as two halves and then
  # added by MPI; batch statistics and losses are summed in double. A float sum of m terms
  # reordered moves by about u sqrt(m) of its scale (u = 2^-24, rounding errors as a random
  # walk), and after a step the momentum (= the gradient) and the weights carry that difference.
  # So tol = 4 u sqrt(m) for the longest sum of the step, m = (images in the backbone) x (output
  # positions of its first convolution: 16 x 16 at --out-size 16); the baseline runs B = 16 images
  # through it, TASN 2B = 32 (detail + structure images). Measured (2-core AMD EPYC, oneDNN): 1.4e-6
  # (baseline) and 3.0e-6 (TASN) against tolerances of 1.5e-5 and 2.2e-5; without --sync-bn 0.7-1.6.
  tol() { awk -v m="$1" 'BEGIN { printf "%.3e", 4 * 2^-24 * sqrt(m) }'; }
  for model in baseline tasn; do
    if [ "$model" = baseline ]; then steps=6 m=$((16 * 256)) opts=(--model baseline)
    else steps=1 m=$((32 * 256)) opts=(--model tasn --att-input 16); fi
    args=("${opts[@]}" --train-size $((16 * steps)) "${small[@]}")
    "$train" "${args[@]}" --sync-bn --out one > one.log 2>&1 || { cat one.log; exit 1; }
    "${mpi[@]}" "$train" "${args[@]}" --sync-bn --out two > two.log 2>&1 || { cat two.log; exit 1; }
    "${mpi[@]}" "$train" "${args[@]}" --out nosync > nosync.log 2>&1 || { cat nosync.log; exit 1; }
    grep -q "global batch 16 = 2 x 8; batch norm synchronised" two.log || { cat two.log; exit 1; }
    t=$(tol $m)
    d=$(rel one/$model-last.safetensors two/$model-last.safetensors)
    f=$(rel one/$model-last.safetensors nosync/$model-last.safetensors)
    echo "$model, $steps step(s): 2 ranks x 8 with --sync-bn vs 1 x 16: max_rel $d (tolerance $t); per-rank BN: $f"
    le "$d" "$t" || { echo "FAIL: 2 ranks differ from 1 process by more than the tolerance"; exit 1; }
    le "$(awk -v t="$t" 'BEGIN { print 100 * t }')" "$f" ||
      { echo "FAIL: per-rank batch norm should differ by far more than the tolerance (the test could not fail)"; exit 1; }
    # the epoch's mean training loss (global sums over the ranks) agrees too
    l1=$(grep -o '"train_loss":[^,}]*' one/$model-metrics.jsonl | cut -d: -f2)
    l2=$(grep -o '"train_loss":[^,}]*' two/$model-metrics.jsonl | cut -d: -f2)
    le "$(awk -v a="$l1" -v b="$l2" 'BEGIN { d = a - b; print (d < 0 ? -d : d) / a }')" "$t" ||
      { echo "FAIL: train_loss $l1 (1 process) vs $l2 (2 ranks)"; exit 1; }
    echo "  train_loss $l1 vs $l2"
    rm -rf one two nosync
  done
  ;;
identical)
  args=(--train-size 64 --test-size 20 --epochs 2 --batch 16 --image 48 --out-size 16 --no-progress --threads 1)
  "${mpi[@]}" "$train" "${args[@]}" --model both --att-input 16 --out run > run.log 2>&1 || { cat run.log; exit 1; }
  cat run.log
  grep -q "data parallel: mpi (.*2 ranks" run.log && grep -q "| tasn |" run.log && grep -q "| baseline |" run.log
  # only rank 0 wrote: one table, one set of files
  [ "$(grep -c '^| tasn |' run.log)" = 1 ] || { echo "FAIL: more than one rank printed the table"; exit 1; }
  ls run/tasn-last.safetensors run/baseline-last.safetensors run/tasn-metrics.jsonl > /dev/null
  # the check can fail: rank 1 adds 1 to a weight after its first step
  if TASN_TEST_DIVERGE_RANK=1 "${mpi[@]}" "$train" "${args[@]}" --model baseline --out diverged > diverged.log 2>&1; then
    cat diverged.log; echo "FAIL: a diverged rank was not detected"; exit 1
  fi
  grep -q "the parameters or momentum differ across the 2 ranks after epoch 1" diverged.log ||
    { cat diverged.log; echo "FAIL: no message naming the divergence"; exit 1; }
  echo "diverged rank detected: $(grep -m1 'differ across' diverged.log)"
  # ranks that would train different things (here: another data size) are refused before a step
  if "$mpirun" --oversubscribe -np 1 "$train" "${args[@]}" --model baseline --out mpmd : \
       -np 1 "$train" "${args[@]/64/80}" --model baseline --out mpmd > mpmd.log 2>&1; then
    cat mpmd.log; echo "FAIL: ranks with different data were not refused"; exit 1
  fi
  grep -q "the ranks disagree on the training" mpmd.log || { cat mpmd.log; echo "FAIL: no message"; exit 1; }
  echo "ranks with different data refused: $(grep -m1 -o 'the ranks disagree on the training[^;]*' mpmd.log)"
  # resume with another world size: 2 ranks stop after epoch 1 of 2, one process finishes the run
  # (the training signature holds the global batch, not the rank count)
  "${mpi[@]}" "$train" "${args[@]}" --model baseline --stop-after-epoch 1 --out part > part.log 2>&1 || { cat part.log; exit 1; }
  "$train" "${args[@]}" --model baseline --resume part/baseline-last.safetensors --out part --no-progress > resumed.log 2>&1 ||
    { cat resumed.log; echo "FAIL: a 2-rank checkpoint did not resume in one process"; exit 1; }
  grep -q "baseline epoch 2 eval" resumed.log || { cat resumed.log; exit 1; }
  echo "resumed a 2-rank checkpoint in one process: $(grep -m1 'baseline epoch 2 eval' resumed.log)"
  # a non-finite loss stops every rank alike (exit status 3, the message), no hang
  rc=0
  timeout 120 "${mpi[@]}" "$train" "${args[@]}" --model baseline --lr 1e30 --out nan > nan.log 2>&1 || rc=$?
  [ "$rc" = 3 ] && grep -q "non-finite" nan.log || { cat nan.log; echo "FAIL: exit status $rc, expected 3 and a message"; exit 1; }
  echo "non-finite stop on both ranks: exit status 3: $(grep -m1 'non-finite' nan.log)"
  ;;
kill)
  "${mpi[@]}" "$train" --model baseline --train-size 4000 --test-size 16 --epochs 50 --batch 16 --image 48 --out-size 16 \
      --no-progress --threads 1 --out run > run.log 2>&1 &
  job=$!
  for _ in $(seq 100); do  # wait until both ranks train (the first epoch's data is made)
    [ "$(pgrep -P $job -f tasn_train | wc -l)" = 2 ] && grep -q "baseline on cpu" run.log && break
    sleep 0.2
  done
  victim=$(pgrep -P $job -f tasn_train | tail -1)
  [ -n "$victim" ] || { cat run.log; echo "FAIL: no rank to kill"; exit 1; }
  sleep 1
  t0=$(date +%s.%N)
  kill -9 "$victim"
  rc=0
  for _ in $(seq 300); do kill -0 $job 2>/dev/null || break; sleep 0.1; done
  if kill -0 $job 2>/dev/null; then
    pkill -9 -P $job || true; kill -9 $job || true
    echo "FAIL: the job still runs 30 s after a rank was killed"; exit 1
  fi
  wait $job || rc=$?
  t1=$(date +%s.%N)
  left=$(pgrep -f "tasn_train.*--out run" | wc -l || true)
  echo "killed rank pid $victim: job exit status $rc after $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s; ranks left: $left"
  [ "$rc" != 0 ] || { echo "FAIL: the job exited 0"; exit 1; }
  [ "$left" = 0 ] || { echo "FAIL: a rank is still running"; exit 1; }
  ;;
*) echo "unknown case $case_"; exit 2 ;;
esac
echo "PASS $case_"
