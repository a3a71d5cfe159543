#!/bin/bash
# Per-core figures: nats-server, the engine (`sluice serve`) and optionally
# nginx as separate processes; the CPU time (utime+stime from /proc) each
# spends while `sluice bench --addr` sends for DURATION; acked records per
# CPU-second of each.
# usage: deploy/measure-per-core.sh SLUICE_BIN DURATION [direct|nginx]
# Needs nats-server (and nginx) on PATH; BENCHMARKS.md has its figures.
set -euo pipefail
BIN=$1; DUR=$2; VIA=${3:-direct}
D=$(mktemp -d)
NP=$((20000 + RANDOM % 10000)); EP=$((NP + 1)); LP=$((NP + 2))
nats-server -js -sd $D/store -a 127.0.0.1 -p $NP >$D/nats.log 2>&1 & NPID=$!
cat > $D/engine.toml <<T
[server]
listen = "127.0.0.1:$EP"
[metrics]
enabled = false
[log]
filter = "warn"
[[pipelines]]
name = "default"
batch = { max_records = 1000, linger = "5ms" }
dead_letter = { kind = "file", dir = "$D/dead", prefix = "dead" }
[pipelines.sink]
kind = "nats"
urls = ["nats://127.0.0.1:$NP"]
[pipelines.sink.create_stream]
stream = "SLUICE"
subjects = ["sluice.>"]
T
sleep 0.5
$BIN serve --config $D/engine.toml >$D/engine.log 2>&1 & EPID=$!
TARGET=127.0.0.1:$EP
GPID=
if [ "$VIA" = nginx ]; then
  mkdir -p $D/ngx
  cat > $D/ngx/nginx.conf <<N
daemon off; master_process off; worker_processes 1;
pid $D/ngx/nginx.pid; error_log $D/ngx/error.log warn;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $D/ngx/cb; proxy_temp_path $D/ngx/p;
 fastcgi_temp_path $D/ngx/f; uwsgi_temp_path $D/ngx/u; scgi_temp_path $D/ngx/s;
 upstream sluice { server 127.0.0.1:$EP; }
 server { listen 127.0.0.1:$LP http2; client_body_timeout 1h; client_max_body_size 0;
  keepalive_timeout 1h; location / { grpc_pass grpc://sluice; grpc_read_timeout 1h; grpc_send_timeout 1h; } } }
N
  nginx -p $D/ngx -e $D/ngx/error.log -c $D/ngx/nginx.conf & GPID=$!
  TARGET=127.0.0.1:$LP
fi
for i in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$EP) 2>/dev/null && break; sleep 0.1; done
sleep 1
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
n0=$(cpu $NPID); e0=$(cpu $EPID); g0=0; [ -n "$GPID" ] && g0=$(cpu $GPID)
/usr/bin/time -f "%U %S" -o $D/time $BIN bench --addr $TARGET --duration $DUR --payload json --quiet --json > $D/bench.json
n1=$(cpu $NPID); e1=$(cpu $EPID); g1=0; [ -n "$GPID" ] && g1=$(cpu $GPID)
kill $EPID $NPID ${GPID:-} 2>/dev/null || true; wait 2>/dev/null || true
python3 - "$D/bench.json" $((n1-n0)) $((e1-e0)) $((g1-g0)) "$VIA" "$D/time" <<P
import json,sys
r=json.load(open(sys.argv[1]))["sluice"]
hz=100.0
n,e,g=[int(x)/hz for x in sys.argv[2:5]]
acked=r["acked"]
u,st=open(sys.argv[6]).read().split()[-2:]
src=float(u)+float(st)
print(f"via={sys.argv[5]} acked={acked} rate={r['records_per_s']:.0f}/s lost={r['lost']} rejects={r['rejects']} "
      f"cpu_s: engine={e:.2f} nats={n:.2f} nginx={g:.2f} sources={src:.2f} | per CPU-second: engine={acked/e:.0f} nats={acked/n:.0f} sources={acked/src:.0f}"
      + (f" nginx={acked/g:.0f}" if g else ""))
P
rm -rf $D
