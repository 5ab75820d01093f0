# The step runner of the GPU checks (scripts/gpu-check.sh, scripts/gpu-check-torch.sh), sourced.
# Expects: gpu_check_name, results (folder), summary (file), start ($SECONDS at the start),
# budget (seconds for the whole script), scale (multiplies every step's cap).

log() { echo "[$gpu_check_name +$((SECONDS - start))s] $*" | tee -a "$summary"; }

# step NAME CAP LOG CMD...: runs CMD under `timeout`, for the smaller of CAP and the budget left
# (less 10 s for the final summary), appending its output to $results/LOG; logs one summary line.
# Returns CMD's exit status (124: timed out; 125: not run, no time left).
step() {
  local name=$1 cap=$(($2 * scale)) logname=$3
  local out="$results/$logname"
  shift 3
  local left=$((budget - (SECONDS - start) - 10))
  local limit=$((cap < left ? cap : left))
  if ((limit < 5)); then
    log "$name: NOT RUN (budget of ${budget}s spent)"
    return 125
  fi
  printf '\n===== %s (limit %ss): %s\n' "$name" "$limit" "$*" >>"$out"
  local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@" >>"$out" 2>&1
  local rc=$?
  local what="ok"
  if ((rc == 124 || rc == 137)); then what="TIMED OUT"; elif ((rc != 0)); then what="FAILED (exit $rc)"; fi
  log "$name: $what in $((SECONDS - t0))s (limit ${limit}s; $logname)"
  return $rc
}
