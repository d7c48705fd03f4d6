#!/usr/bin/env bash
# `python -m bench active` on one GPU machine, for the table in docs/results.md: the 700-tweet start tagger of
# each seed first (shared by every row of that seed), then each (row, seed) in a process of its own, side by side,
# until BUDGET seconds; every finished round lands in $OUT/rounds.jsonl. Back here, copy it to
# /tmp/refineg_bench_active/ and `python -m bench active --report --only ROWS --seeds 0,1,2` prints the table.
# From the project root, after `bash ../shared/tools/gpu-trip.sh` here (the device tool carries .gpu/):
#     source .gpu/setup.sh && BUDGET=450 bash bench/active_gpu.sh
# ROWS="..." (space-separated) measures other rows, e.g. the three self-training choosers.
set -u
export OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1
C=/tmp/active; mkdir -p $C
DEADLINE=$(( $(date +%s) + ${BUDGET:-470} ))
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for s in 0 1 2; do
  python3 -m bench active --only random --seeds $s --max-labelled 700 --device cuda --cache $C/random-$s \
    > $C/start-$s.log 2>&1 &
done
wait
for s in 0 1 2; do grep '"row"' $C/start-$s.log | cut -c1-120; done
for row in ${ROWS:-random entity+diversity entity+diversity-chooser70}; do
  for s in 0 1 2; do
    mkdir -p "$C/$row-$s"
    [ -d "$C/$row-$s/start-seed$s" ] || cp -r $C/random-$s/start-seed$s "$C/$row-$s/"
    [ "$row" = random ] || grep -h '"random"' $C/random-$s/rounds.jsonl | sed "s/\"row\": \"random\"/\"row\": \"$row\"/" \
      | sed 's/"next_ids": \[[^]]*\]/"next_ids": []/' > "$C/$row-$s/rounds.jsonl"
    timeout $(( DEADLINE - $(date +%s) )) python3 -m bench active --only $row --seeds $s --max-labelled 2800 \
      --device cuda --cache "$C/$row-$s" > "$C/$row-$s.log" 2>&1 &
  done
done
wait
cat $C/*/rounds.jsonl > $OUT/rounds.jsonl   # per folder in file order: a key's last line is its newest
tail -n 4 $C/*.log | grep -v Warning | cut -c1-300 > $OUT/logs.txt
wc -l $C/*/rounds.jsonl; grep -c . $OUT/rounds.jsonl
