#!/bin/bash
# Forked-call load on loopback with SIPp, against trustring (started here, the default), Kamailio 5.6
# (started here from the shared comparison kit, --kamailio) or any other proxy already listening
# (--no-server).  Copied from the Kamailio kit's run.sh (fork mode), plus starting trustring.
#
#   bench/fork-load.sh [options]
#
#   Two UAS register as alice (answerer "pc" + ringer-only "mobile", digest auth when challenged);
#   the UAC calls alice at RATE calls/s until CALLS calls; the proxy forks in parallel, the pc
#   answers, the proxy CANCELs the mobile, ACK/BYE go through Record-Route.
#
# Which proxy:
#   (default)            start trustring: $TRUSTRING_BIN serve --sip TARGET --http 127.0.0.1:HTTP_PORT
#                        --data <temp dir> --domain DOMAIN $TRUSTRING_ARGS, with TRUSTRING_ADMIN_TOKEN set
#                        here (random unless given); subscriber alice/AUTH_PASS (enterprise acme) is
#                        created through POST /api/v1/subscribers.  TRUSTRING_BIN defaults to
#                        <repo>/target/release/trustring (build it first: cargo build --release -p trustring).
#   --kamailio           start Kamailio with the shared kit's config (KAMAILIO_CFG, default
#                        <repo>/../shared/bench/kamailio/kamailio.cfg), for the side-by-side comparison.
#   --no-server          start nothing; use the proxy at TARGET (alice must be able to register;
#                        AUTH_USER/AUTH_PASS answer a challenge). --proxy-pid PID measures its CPU.
#
# Options (or the env variable in brackets):
#   --rate R [RATE=500]  --calls N [CALLS=5000]
#   --target IP:PORT [TARGET=127.0.0.1:5070]   where the proxy listens (UDP); 127.0.0.0/8 only
#   --proxy-pid PID [PROXY_PID]                 with --no-server: measure that process (+ children) CPU
#   --children C [CHILDREN=2]                   Kamailio UDP workers
#   HTTP_PORT=5078 (trustring admin API)  TRUSTRING_ARGS="..." extra `trustring serve` options (word-split)
#   TRUSTRING_LOG (trustring's log filter; default warn)    DOMAIN=localhost  CALLEE=alice
#   AUTH_USER / AUTH_PASS  credentials of the two UAS registrations (trustring: alice / s3cret-passw0rd)
#   HOLD_MS=100 (UAC pause between ACK and BYE)   ANSWER_DELAY_MS=50 (pc: 180 -> 200 delay)
#   KAM_OPTS="-b 2097152" extra kamailio options   SHM=1024 PKG=16 (Kamailio MB)
#   LIMIT=10000 (sipp -l)  BUFF=2097152 (sipp -buff_size)
#   ANS_PORT=5081 RING_PORT=5082 UAC_PORT=5083 REG_PORT=5084   MAX_SECONDS (hard cap of the run)
#   KEEP=1 keep the work directory (logs, sipp stats/errors, trustring log) and print its path
#   RING_EXTRA="-trace_shortmsg" extra sipp options for the ringer (debugging; files land in cwd)
#
# Prints one line, e.g.
#   trustring fork: rate=500 calls=5000 ok=5000 failed=0 elapsed=10.1s cps=495.0 | uas_ok answer=5000
#   ring=5000 ring_open=0 | retrans=0 udp_drops(port:n)=5070:0 ... | cpu%: trustring=40 sipp_uac=8
#   sipp_uas=15 other=1 (of 200) | children=- uac_rc=0
# ok/failed are the caller's complete calls (failed = CALLS - ok); ring_open = ringer calls never
# CANCELled (a phone that keeps ringing); cps = ok / elapsed; cpu% is per process (all threads) or
# process group, 100 = one core; "other" is every other process on the machine (a busy machine
# skews everything: a warning is printed before).
# Exit status 0 only if every call succeeded; 2 bad usage/port busy, 3 install failed, 4 proxy did
# not start, 5 registration failed, 6 subscriber creation failed.
# Only 127.0.0.1 is targeted. Every process started here is stopped by its PID on exit.
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

RATE=${RATE:-500}; CALLS=${CALLS:-5000}; TARGET=${TARGET:-127.0.0.1:5070}
SERVER=${SERVER:-trustring}; PROXY_PID=${PROXY_PID:-}; CHILDREN=${CHILDREN:-2}
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE=$2; shift 2 ;;
    --calls) CALLS=$2; shift 2 ;;
    --target) TARGET=$2; shift 2 ;;
    --no-server|--no-kamailio) SERVER=none; shift ;;
    --kamailio) SERVER=kamailio; shift ;;
    --trustring) SERVER=trustring; shift ;;
    --proxy-pid) PROXY_PID=$2; shift 2 ;;
    --children) CHILDREN=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
DOMAIN=${DOMAIN:-localhost}; CALLEE=${CALLEE:-alice}
if [ "$SERVER" = trustring ]; then
  AUTH_USER=${AUTH_USER:-$CALLEE}; AUTH_PASS=${AUTH_PASS:-s3cret-passw0rd}
else
  AUTH_USER=${AUTH_USER:-}; AUTH_PASS=${AUTH_PASS:-}
fi
TRUSTRING_BIN=${TRUSTRING_BIN:-$REPO/target/release/trustring}
HTTP_PORT=${HTTP_PORT:-5078}
KAMAILIO_CFG=${KAMAILIO_CFG:-$REPO/../shared/bench/kamailio/kamailio.cfg}
HOLD_MS=${HOLD_MS:-100}; ANSWER_DELAY_MS=${ANSWER_DELAY_MS:-50}
LIMIT=${LIMIT:-10000}; BUFF=${BUFF:-2097152}; SHM=${SHM:-1024}; PKG=${PKG:-16}
ANS_PORT=${ANS_PORT:-5081}; RING_PORT=${RING_PORT:-5082}; UAC_PORT=${UAC_PORT:-5083}; REG_PORT=${REG_PORT:-5084}
KEEP=${KEEP:-0}
TARGET_IP=${TARGET%:*}; TARGET_PORT=${TARGET##*:}
# run time the load needs at the nominal rate, plus slack; everything is bounded by it
MAX_SECONDS=${MAX_SECONDS:-$(( CALLS / (RATE > 0 ? RATE : 1) * 2 + 60 ))}
[ "$MAX_SECONDS" -gt 1800 ] && MAX_SECONDS=1800

case "$TARGET_IP" in 127.*) ;; *) echo "TARGET must be on 127.0.0.0/8 (got $TARGET)" >&2; exit 2 ;; esac
case "$SERVER" in
  trustring) [ -x "$TRUSTRING_BIN" ] || { echo "no trustring binary at $TRUSTRING_BIN (cargo build --release -p trustring, or set TRUSTRING_BIN)" >&2; exit 2; } ;;
  kamailio) [ -r "$KAMAILIO_CFG" ] || { echo "no Kamailio config at $KAMAILIO_CFG (set KAMAILIO_CFG)" >&2; exit 2; } ;;
esac

# ---- install what is missing (Debian packages only) ----
need_pkg() { # need_pkg COMMAND PACKAGE...
  command -v "$1" >/dev/null 2>&1 && return 0
  shift
  { [ -n "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ] || apt-get update -qq; } >/dev/null 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 || { echo "apt-get install $* failed" >&2; exit 3; }
}
need_pkg sipp sip-tester
[ "$SERVER" = kamailio ] && need_pkg kamailio kamailio
[ "$SERVER" = trustring ] && need_pkg curl curl

WORK=$(mktemp -d /tmp/forkload.XXXXXX)
PIDS=()
stop_pid() { # TERM, wait up to 3 s, then KILL — only the given PID
  local p=$1 i
  kill -0 "$p" 2>/dev/null || return 0
  kill "$p" 2>/dev/null
  for i in $(seq 1 30); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$p" 2>/dev/null
}
KAM_PID=""; KAM_KIDS=""
cleanup() {
  local p
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && stop_pid "$p"; done
  if [ -n "$KAM_PID" ]; then
    stop_pid "$KAM_PID"
    for p in $KAM_KIDS; do stop_pid "$p"; done
  fi
  if [ "$KEEP" = 1 ]; then echo "work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

udp_port_bound() { # udp_port_bound PORT -> 0 if something listens on UDP PORT
  local hex; hex=$(printf '%04X' "$1")
  awk -v h=":$hex" 'NR>1 && substr($2, length($2)-4)==h {f=1} END {exit !f}' /proc/net/udp /proc/net/udp6 2>/dev/null
}
udp_drops() { # udp_drops PORT... -> "PORT:DROPS ..." for the UDP sockets bound to those ports
  local p hex out=""
  for p in "$@"; do
    hex=$(printf '%04X' "$p")
    out+=$(awk -v h="$hex" -v p="$p" 'NR > 1 && substr($2, length($2) - 3) == h { d += $NF; f = 1 }
      END { if (f) printf " %s:%d", p, d }' /proc/net/udp 2>/dev/null)
  done
  echo "${out# }"
}
declare -A DROPN
note_drops() { local tok; for tok in $(udp_drops "$@"); do DROPN[${tok%%:*}]=${tok#*:}; done; }
children_of() { awk -v pp="$1" '{ if ($4 == pp) print $1 }' /proc/[0-9]*/stat 2>/dev/null; }
ticks_of() { # prints "PID TICKS" (utime+stime, clock ticks) for each given PID still alive
  [ $# -gt 0 ] || return 0
  local files=() p
  for p in "$@"; do files+=("/proc/$p/stat"); done
  awk '{ pid = $1; sub(/^.*\) /, ""); print pid, $12 + $13 }' "${files[@]}" 2>/dev/null
}
declare -A TICK0 TICK1
sample_ticks() { # remember the latest ticks of each PID in TICK1 (and the first in TICK0)
  local pid t
  while read -r pid t; do
    [ -z "${TICK0[$pid]:-}" ] && TICK0[$pid]=$t
    TICK1[$pid]=$t
  done < <(ticks_of "$@")
}
delta_ticks() { local p d=0; for p in "$@"; do [ -z "$p" ] && continue; d=$((d + ${TICK1[$p]:-0} - ${TICK0[$p]:-0})); done; echo $d; }
other_snap() { # "PID TICKS" (utime+stime) of every process but this script, its children and the given PIDs
  awk -v skip=" $$ $* " -v me="$$" '{ pid = $1; x = $0; sub(/^.*\) /, "", x); split(x, f, " ")
      if (!index(skip, " " pid " ") && f[2] != me) print pid, f[12] + f[13] }' /proc/[0-9]*/stat 2>/dev/null
}
other_delta() { # other_delta SNAP0 SNAPS -> ticks used since SNAP0 by the processes seen in SNAPS
  # (SNAPS: snapshots taken every 0.25 s, so jobs that came and went in between count too)
  awk 'NR == FNR { a[$1] = $2; next } { if ($2 > m[$1]) m[$1] = $2 }
       END { for (p in m) d += m[p] - (p in a ? a[p] : 0); print d + 0 }' "$1" "$2"
}
HZ=$(getconf CLK_TCK)


for p in $ANS_PORT $RING_PORT $UAC_PORT $REG_PORT; do
  udp_port_bound "$p" && { echo "UDP port $p is in use; set ANS_PORT/RING_PORT/UAC_PORT/REG_PORT" >&2; exit 2; }
done

tcp_port_bound() { # tcp_port_bound PORT -> 0 if something listens on TCP PORT
  local hex; hex=$(printf '%04X' "$1")
  awk -v h=":$hex" 'NR>1 && $4=="0A" && substr($2, length($2)-4)==h {f=1} END {exit !f}' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# ---- the proxy ----
LABEL=proxy; SRV_PID=""
case "$SERVER" in
kamailio)
  LABEL=kamailio
  udp_port_bound "$TARGET_PORT" && { echo "UDP port $TARGET_PORT already in use" >&2; exit 2; }
  timeout -k 5 $((MAX_SECONDS + 120)) kamailio -f "$KAMAILIO_CFG" -DD -E -m "$SHM" -M "$PKG" -Y "$WORK" \
    -P "$WORK/kamailio.pid" -A "KAM_LISTEN=udp:$TARGET_IP:$TARGET_PORT" -A "KAM_CHILDREN=$CHILDREN" \
    ${KAM_OPTS:-} >"$WORK/kamailio.log" 2>&1 &
  PIDS+=($!)   # the timeout wrapper: a hard bound on Kamailio's life
  for _ in $(seq 1 100); do
    [ -s "$WORK/kamailio.pid" ] && udp_port_bound "$TARGET_PORT" && break
    sleep 0.1
  done
  KAM_PID=$(cat "$WORK/kamailio.pid" 2>/dev/null)
  [ -n "$KAM_PID" ] && udp_port_bound "$TARGET_PORT" || { echo "kamailio did not start: $(tail -3 "$WORK/kamailio.log")" >&2; exit 4; }
  sleep 0.3
  KAM_KIDS=$(children_of "$KAM_PID")
  PROXY_PIDS="$KAM_PID $KAM_KIDS"
  ;;
trustring)
  LABEL=trustring
  udp_port_bound "$TARGET_PORT" && { echo "UDP port $TARGET_PORT already in use" >&2; exit 2; }
  tcp_port_bound "$HTTP_PORT" && { echo "TCP port $HTTP_PORT (HTTP_PORT) already in use" >&2; exit 2; }
  export TRUSTRING_ADMIN_TOKEN=${TRUSTRING_ADMIN_TOKEN:-bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}
  mkdir -p "$WORK/data"
  TRUSTRING_LOG=${TRUSTRING_LOG:-warn} timeout -k 5 $((MAX_SECONDS + 120)) "$TRUSTRING_BIN" serve \
    --sip "$TARGET" --http "127.0.0.1:$HTTP_PORT" --enrol 127.0.0.1:0 \
    --sip-tls "${SIP_TLS:-off}" --data "$WORK/data" --domain "$DOMAIN" ${TRUSTRING_ARGS:-} \
    >"$WORK/trustring.log" 2>&1 &
  WRAP=$!; PIDS+=($WRAP)   # the timeout wrapper: a hard bound on trustring's life
  API=http://127.0.0.1:$HTTP_PORT
  for _ in $(seq 1 100); do
    kill -0 "$WRAP" 2>/dev/null || break
    udp_port_bound "$TARGET_PORT" && tcp_port_bound "$HTTP_PORT" && break
    sleep 0.1
  done
  SRV_PID=$(children_of "$WRAP" | head -1)
  [ -n "$SRV_PID" ] && udp_port_bound "$TARGET_PORT" && tcp_port_bound "$HTTP_PORT" \
    || { echo "trustring did not start: $(tail -5 "$WORK/trustring.log")" >&2; exit 4; }
  PIDS+=($SRV_PID)
  code=$(curl -sS -o "$WORK/api-create.out" -w '%{http_code}' --max-time 10 -X POST \
    -H "Authorization: Bearer $TRUSTRING_ADMIN_TOKEN" -H 'Content-Type: application/json' \
    -d "{\"user\":\"$CALLEE\",\"password\":\"$AUTH_PASS\",\"enterprise\":\"acme\"}" "$API/api/v1/subscribers" 2>"$WORK/api-create.err")
  case "$code" in
    2??) ;;
    *) echo "creating subscriber $CALLEE failed: HTTP $code $(head -c 300 "$WORK/api-create.out" "$WORK/api-create.err" 2>/dev/null | tr '\n' ' ')" >&2; exit 6 ;;
  esac
  PROXY_PIDS="$SRV_PID $(children_of "$SRV_PID")"
  ;;
*)
  if [ -n "$PROXY_PID" ]; then PROXY_PIDS="$PROXY_PID $(children_of "$PROXY_PID")"; else PROXY_PIDS=""; fi
  ;;
esac

SIPP_COMMON=(-i 127.0.0.1 -nostdin -trace_err -trace_stat -fd 1 -buff_size "$BUFF")
AUTH_ARGS=()
[ -n "$AUTH_USER" ] && AUTH_ARGS+=(-au "$AUTH_USER")
[ -n "$AUTH_PASS" ] && AUTH_ARGS+=(-ap "$AUTH_PASS")

# stat_field CSVFILE COLUMN -> value of COLUMN in the last line of a sipp -trace_stat file
stat_field() {
  awk -F';' -v col="$2" 'NR==1 { for (i=1;i<=NF;i++) if ($i==col) c=i; next } { last=$c } END { print (last=="" ? 0 : last) }' "$1" 2>/dev/null || echo 0
}

# ---- two UAS, then their registrations ----
sipp -sf "$HERE/uas-answer.xml" -p "$ANS_PORT" -d "$ANSWER_DELAY_MS" -m "$CALLS" -l "$LIMIT" \
  -timeout "${MAX_SECONDS}s" "${SIPP_COMMON[@]}" -stf "$WORK/ans.csv" -error_file "$WORK/ans.err" >"$WORK/ans.out" 2>&1 &
ANS_PID=$!; PIDS+=($ANS_PID)
sipp -sf "$HERE/uas-ring.xml" ${RING_EXTRA:-} -p "$RING_PORT" -m "$CALLS" -l "$LIMIT" \
  -timeout "${MAX_SECONDS}s" "${SIPP_COMMON[@]}" -stf "$WORK/ring.csv" -error_file "$WORK/ring.err" >"$WORK/ring.out" 2>&1 &
RING_PID=$!; PIDS+=($RING_PID)
for _ in $(seq 1 50); do udp_port_bound "$ANS_PORT" && udp_port_bound "$RING_PORT" && break; sleep 0.1; done
for p in $ANS_PORT $RING_PORT; do
  sipp -sf "$HERE/register.xml" -s "$CALLEE" -key domain "$DOMAIN" -key contact_port "$p" -key expires 3600 \
    "${AUTH_ARGS[@]}" -i 127.0.0.1 -p "$REG_PORT" -m 1 -timeout 10s -timeout_error -nostdin -trace_err \
    -error_file "$WORK/reg-$p.err" "$TARGET" >"$WORK/reg-$p.out" 2>&1 &
  R=$!; PIDS+=($R)
  if ! wait $R; then
    echo "REGISTER of $CALLEE contact 127.0.0.1:$p at $TARGET failed: $(tail -c 400 "$WORK/reg-$p.err" 2>/dev/null | tr '\n' ' ')" >&2
    grep -q "must use MD5" "$WORK/reg-$p.err" 2>/dev/null && echo "hint: SIPp 3.6 answers only if the first 'algorithm=' (no spaces) of the 401 is MD5" >&2
    exit 5
  fi
done
SIPP_PIDS=($ANS_PID $RING_PID)
UAC_SF=$HERE/uac-fork.xml
UAC_ARGS=(-s "$CALLEE" -key domain "$DOMAIN" -d "$HOLD_MS" -p "$UAC_PORT")
# ---- is the machine quiet? (other jobs skew every figure) ----
OURS="$PROXY_PIDS ${PIDS[*]:-}"
other_snap $OURS >"$WORK/q0"; sleep 1; other_snap $OURS >"$WORK/q1"
BUSY_BEFORE=$(( $(other_delta "$WORK/q0" "$WORK/q1") * 100 / HZ ))
[ "$BUSY_BEFORE" -gt 15 ] && echo "WARNING: other processes used ${BUSY_BEFORE}% CPU just before the load (figures will be skewed)" >&2

# ---- the load ----
other_snap $OURS >"$WORK/o0"; : >"$WORK/o1"
sample_ticks $PROXY_PIDS "${SIPP_PIDS[@]:-}"
T0=$(date +%s.%N)
sipp -sf "$UAC_SF" "${UAC_ARGS[@]}" -r "$RATE" -m "$CALLS" -l "$LIMIT" -timeout "${MAX_SECONDS}s" \
  "${SIPP_COMMON[@]}" -stf "$WORK/uac.csv" -error_file "$WORK/uac.err" "$TARGET" >"$WORK/uac.out" 2>&1 &
UAC_PID=$!; PIDS+=($UAC_PID)
HARD_END=$(( $(date +%s) + MAX_SECONDS + 20 ))
while kill -0 $UAC_PID 2>/dev/null; do   # sample CPU until the UAC exits (its -timeout, then a hard stop)
  if [ "$(date +%s)" -ge "$HARD_END" ]; then
    echo "WARNING: UAC still running after $((MAX_SECONDS + 20)) s; stopping it" >&2
    kill -USR1 $UAC_PID 2>/dev/null; sleep 2; stop_pid $UAC_PID; break
  fi
  sample_ticks $PROXY_PIDS "${SIPP_PIDS[@]:-}" $UAC_PID
  other_snap $OURS $UAC_PID >>"$WORK/o1"
  note_drops "$TARGET_PORT" "$ANS_PORT" "$RING_PORT" "$UAC_PORT"
  sleep 0.25
done
wait $UAC_PID; UAC_RC=$?
note_drops "$TARGET_PORT" "$ANS_PORT" "$RING_PORT"
DROPS=""; for p in "$TARGET_PORT" "$ANS_PORT" "$RING_PORT" "$UAC_PORT"; do [ -n "${DROPN[$p]:-}" ] && DROPS+="$p:${DROPN[$p]} "; done; DROPS=${DROPS% }
T1=$(date +%s.%N)
sample_ticks $PROXY_PIDS "${SIPP_PIDS[@]:-}"
other_snap $OURS $UAC_PID >>"$WORK/o1"

# let the UAS finish the last calls (they exit by themselves after CALLS calls)
for p in "${SIPP_PIDS[@]:-}"; do
  [ -z "$p" ] && continue
  for _ in $(seq 1 80); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
done
[ -n "$KAM_PID" ] && ! kill -0 "$KAM_PID" 2>/dev/null && echo "WARNING: kamailio died during the run" >&2
[ -n "$SRV_PID" ] && ! kill -0 "$SRV_PID" 2>/dev/null && echo "WARNING: trustring died during the run: $(tail -3 "$WORK/trustring.log" | tr '\n' ' ')" >&2

ELAPSED=$(awk -v a="$T0" -v b="$T1" 'BEGIN { printf "%.1f", b - a }')
OK=$(stat_field "$WORK/uac.csv" 'SuccessfulCall(C)')
SFAIL=$(stat_field "$WORK/uac.csv" 'FailedCall(C)')
RETR=$(stat_field "$WORK/uac.csv" 'Retransmissions(C)')
FAILED=$((CALLS - OK))
pct() { awk -v t="$1" -v e="$ELAPSED" -v hz="$HZ" 'BEGIN { printf "%.0f", (e > 0 ? 100 * t / hz / e : 0) }'; }
CPS=$(awk -v o="$OK" -v e="$ELAPSED" 'BEGIN { printf "%.1f", (e > 0 ? o / e : 0) }')
PROXY_CPU=$(pct "$(delta_ticks $PROXY_PIDS)"); UAC_CPU=$(pct "$(delta_ticks $UAC_PID)")
UAS_CPU=$(pct "$(delta_ticks "${SIPP_PIDS[@]:-}")")
OTHER=$(pct "$(other_delta "$WORK/o0" "$WORK/o1")")
CPU="cpu%: ${LABEL}=$([ -n "$PROXY_PIDS" ] && echo "$PROXY_CPU" || echo n/a) sipp_uac=$UAC_CPU"
ANS_OK=$(stat_field "$WORK/ans.csv" 'SuccessfulCall(C)'); RING_OK=$(stat_field "$WORK/ring.csv" 'SuccessfulCall(C)')
echo "$LABEL fork: rate=$RATE calls=$CALLS ok=$OK failed=$FAILED elapsed=${ELAPSED}s cps=$CPS" \
     "| uas_ok answer=$ANS_OK ring=$RING_OK ring_open=$((CALLS - RING_OK)) | retrans=$RETR udp_drops(port:n)=${DROPS:-?} | $CPU sipp_uas=$UAS_CPU other=$OTHER (of $(( $(nproc) * 100 )))" \
     "| children=$([ "$SERVER" = kamailio ] && echo "$CHILDREN" || echo -) uac_rc=$UAC_RC"
[ "$FAILED" -eq 0 ]
