#!/usr/bin/env bash
# End-to-end checks of tasn_train's run-folder rules, run by ctest (examples/CMakeLists.txt):
#   trainer_cli.sh full-disk TASN_TRAIN WORKDIR   a full file system at the second checkpoint: the
#       run fails (non-zero, "No space left on device", the path), the first checkpoint is intact
#       and loads, no temporary is left. Needs a tmpfs: mounted directly (root) or in a user and
#       mount namespace (unshare -rm); exit 77 (skipped) when neither is possible.
#   trainer_cli.sh lock TASN_TRAIN WORKDIR        a second run on a folder in use is refused with
#       the holder's pid, and the first run is unharmed.
#   trainer_cli.sh existing TASN_TRAIN WORKDIR    a fresh run refuses a folder holding an earlier
#       run (its files unchanged); --overwrite replaces it; no --out picks a new folder.
set -uo pipefail
mode=$1 bin=$2 work=$3
small=(--model baseline --train-size 64 --test-size 16 --batch 16 --image 48 --out-size 16 --no-progress)
fail() { echo "FAIL: $*"; exit 1; }
rm -rf "$work" && mkdir -p "$work" || fail "cannot make $work"
cd "$work" || exit 1

case "$mode" in
full-disk)
  if [ "${TASN_IN_NAMESPACE:-}" != 1 ]; then
    mkdir -p probe
    if ! mount -t tmpfs -o size=64k tasn-probe probe 2>/dev/null; then
      if command -v unshare >/dev/null && unshare -rm true 2>/dev/null; then
        exec env TASN_IN_NAMESPACE=1 unshare -rm bash "$0" "$@"
      fi
      echo "SKIP: cannot mount a tmpfs here (not root, no user namespaces)"; exit 77
    fi
    umount probe
  fi
  # how large one checkpoint is
  "$bin" "${small[@]}" --epochs 1 --out sizing >sizing.log 2>&1 || { cat sizing.log; fail "sizing run failed"; }
  ck=$(stat -c %s sizing/baseline-last.safetensors)
  # room for one checkpoint, the log and the lock, not for a second checkpoint beside it
  mkdir -p disk && mount -t tmpfs -o size=$(( (ck * 3 / 2 + 4095) / 4096 * 4096 )) tasn-full disk || fail "mount"
  trap 'umount "$work/disk" 2>/dev/null' EXIT
  "$bin" "${small[@]}" --epochs 3 --out disk >run.log 2>&1
  rc=$?
  cat run.log
  [ $rc -ne 0 ] || fail "the run exited 0 although its second checkpoint could not be written"
  grep -q "cannot save the checkpoint of epoch 2" run.log || fail "no message naming the checkpoint"
  grep -q "No space left on device" run.log || fail "no OS reason"
  grep -q "disk/baseline-last.safetensors" run.log || fail "no path"
  ls -a disk | grep -q '\.tmp' && fail "a temporary file was left: $(ls -a disk)"
  "$bin" --model baseline --eval-only --resume disk/baseline-last.safetensors --test-size 16 --image 48 --out-size 16 \
    --no-progress >eval.log 2>&1 || { cat eval.log; fail "the epoch-1 checkpoint does not load"; }
  grep -q '"epoch":1' disk/baseline-metrics.jsonl || fail "the metrics log lost epoch 1"
  echo "PASS: full disk at epoch 2 (checkpoint $ck bytes): error reported, epoch 1 kept"
  ;;
lock)
  "$bin" --model baseline --train-size 2000 --test-size 16 --batch 16 --image 48 --out-size 16 --no-progress \
    --epochs 50 --out shared >first.log 2>&1 &
  first=$!
  for _ in $(seq 200); do grep -q pid shared/.tasn-lock 2>/dev/null && break; sleep 0.05; done
  "$bin" "${small[@]}" --epochs 1 --out shared >second.log 2>&1
  rc=$?
  kill $first 2>/dev/null; wait $first 2>/dev/null
  cat second.log
  grep -q "error" first.log && { cat first.log; fail "the first run failed"; }
  [ $rc -eq 2 ] || fail "the second run exited $rc, expected 2"
  grep -q "is in use by another run (pid $first" second.log || fail "the holder is not named"
  echo "PASS: a second run on a folder in use is refused"
  ;;
existing)
  "$bin" "${small[@]}" --epochs 1 --out run >first.log 2>&1 || { cat first.log; fail "first run"; }
  before=$(sha256sum run/baseline-last.safetensors run/baseline-metrics.jsonl)
  "$bin" "${small[@]}" --epochs 1 --out run >second.log 2>&1
  rc=$?
  cat second.log
  [ $rc -eq 2 ] || fail "a fresh run into a used folder exited $rc"
  grep -q "already holds a baseline run" second.log && grep -q -- "--resume run/baseline-last.safetensors" second.log &&
    grep -q -- "--overwrite" second.log || fail "the message does not name the ways out"
  [ "$before" = "$(sha256sum run/baseline-last.safetensors run/baseline-metrics.jsonl)" ] || fail "the earlier run changed"
  "$bin" "${small[@]}" --epochs 1 --out run --overwrite >third.log 2>&1 || { cat third.log; fail "--overwrite"; }
  [ "$before" != "$(sha256sum run/baseline-last.safetensors run/baseline-metrics.jsonl)" ] || fail "--overwrite wrote nothing"
  # no --out: tasn-run, then tasn-run-2
  "$bin" "${small[@]}" --epochs 1 >d1.log 2>&1 || fail "default folder"
  "$bin" "${small[@]}" --epochs 1 >d2.log 2>&1 || fail "second default folder"
  grep -q "output folder: tasn-run-2" d2.log || { cat d2.log; fail "no new folder picked"; }
  [ -f tasn-run/baseline-last.safetensors ] && [ -f tasn-run-2/baseline-last.safetensors ] || fail "default folders"
  echo "PASS: earlier runs are kept"
  ;;
*)
  fail "unknown mode $mode"
  ;;
esac
