# Sourced by the bench scripts: how busy the whole machine was during a run,
# so a rate can be read against the cores that were left (the load
# generator, the sink and PostgreSQL share them with the server).
#   t0=$(machine_ticks); …run…; machine_busy "$t0"  ->  "busy 93% of 2 cores"
machine_ticks() {  # "busy total" jiffies since boot, over all cores
  awk '/^cpu /{b=$2+$3+$4+$7+$8+$9; print b, b+$5+$6; exit}' /proc/stat
}
machine_busy() {
  local b0 t0 b1 t1
  read -r b0 t0 <<< "$1"
  read -r b1 t1 < <(machine_ticks)
  awk -v b="$((b1 - b0))" -v t="$((t1 - t0))" -v n="$(nproc)" \
    'BEGIN { printf "machine busy %.0f%% of %d cores", t ? 100 * b / t : 0, n }'
}
