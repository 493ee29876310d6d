#!/usr/bin/env bash
# Scaling of data-parallel fine-tuning on one machine: 1 rank against 2 ranks (Gloo on
# loopback), one compute thread per rank, the same global batch. The fixed costs (loading,
# featurising through a warm cache) are cancelled by timing E_LONG and E_SHORT epochs and
# dividing the difference by E_LONG − E_SHORT.
#
# Usage: [ROUNDS=3] [E_SHORT=1] [E_LONG=4] bench/distributed/scaling.sh [headstart binary] [data dir]
# The 1-rank and 2-rank measurements alternate for ROUNDS rounds; medians are reported.
# Prints wall seconds per epoch for each world size, the speed-up and the efficiency
# (speed-up / 2), and CPU seconds per epoch summed over the ranks: on a machine shared with
# other work the wall figures follow the load, and the CPU ones show what the second rank adds.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/debug/headstart}
DATA=${2:-data/sample}
E_SHORT=${E_SHORT:-1}
E_LONG=${E_LONG:-4}
ROUNDS=${ROUNDS:-3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export HEADSTART_HOME=${HEADSTART_HOME:-$PWD/.cache}

args() { # out epochs
  echo train --mode finetune --data "$DATA" --out "$1" --cache-dir "$WORK/cache" --epochs "$2" \
    --batch-size 32 --unfreeze last:3 --head-epochs 0 --seed 1 --progress none
}

run() { # world epochs -> "wall-seconds cpu-seconds" (CPU summed over the ranks)
  local world=$1 epochs=$2 out="$WORK/run-$1-$2" port=$((29600 + RANDOM % 2000))
  local start end pids=() cpu=0
  start=$(date +%s.%N)
  for r in $(seq 0 $((world - 1))); do
    if [ "$world" = 1 ]; then
      env -u WORLD_SIZE -u RANK /usr/bin/time -f '%U %S' -o "$out.$r.time" "$BIN" $(args "$out" "$epochs") >/dev/null 2>"$out.$r.log" &
    else
      WORLD_SIZE=$world RANK=$r LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
        /usr/bin/time -f '%U %S' -o "$out.$r.time" "$BIN" $(args "$out" "$epochs") >/dev/null 2>"$out.$r.log" &
    fi
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  end=$(date +%s.%N)
  for r in $(seq 0 $((world - 1))); do
    cpu=$(echo "$cpu + $(tail -n1 "$out.$r.time" | tr ' ' '+')" | bc -l)
  done
  echo "$(echo "$end - $start" | bc -l) $cpu"
}

# Warm the feature cache and the page cache once.
run 1 1 >/dev/null
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
median() { tr -s ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
declare -A walls cpus per_epoch cpu_epoch
for round in $(seq "$ROUNDS"); do
  for world in 1 2; do
    read -r short short_cpu <<<"$(run "$world" "$E_SHORT")"
    read -r long long_cpu <<<"$(run "$world" "$E_LONG")"
    w=$(echo "($long - $short) / ($E_LONG - $E_SHORT)" | bc -l)
    c=$(echo "($long_cpu - $short_cpu) / ($E_LONG - $E_SHORT)" | bc -l)
    walls[$world]="${walls[$world]:-} $w"
    cpus[$world]="${cpus[$world]:-} $c"
    printf 'round %d, world %d: %.2f s per epoch (wall), %.2f CPU s per epoch (all ranks); load %s\n' "$round" "$world" "$w" "$c" "$(cut -d' ' -f1 /proc/loadavg)"
  done
done
for world in 1 2; do
  per_epoch[$world]=$(echo "${walls[$world]}" | median)
  cpu_epoch[$world]=$(echo "${cpus[$world]}" | median)
  printf 'world %d median: %.2f s per epoch (wall), %.2f CPU s per epoch\n' "$world" "${per_epoch[$world]}" "${cpu_epoch[$world]}"
done
speedup=$(echo "${per_epoch[1]} / ${per_epoch[2]}" | bc -l)
printf 'speed-up %.2f, efficiency %.0f%% (wall); CPU per epoch 2 ranks / 1 rank %.2f\n' "$speedup" "$(echo "$speedup * 50" | bc -l)" \
  "$(echo "${cpu_epoch[2]} / ${cpu_epoch[1]}" | bc -l)"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
