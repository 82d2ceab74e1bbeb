#!/bin/bash
# Self-test of the SIPp scenarios in tests/sipp/, WITHOUT a SIP server: small SIPp "fakes" (the
# files in this folder) stand in for a correct or a misbehaving proxy/registrar, and each case
# checks that the scenario under test passes (exit 0) or FAILS (non-zero), as it should.
#
#   tests/sipp/selftest/run.sh            (needs sipp: apt-get install sip-tester)
#   BASE_PORT=17400 tests/sipp/selftest/run.sh
#
# Uses UDP ports BASE_PORT..BASE_PORT+2 (default 17400) and 17999 on 127.0.0.1 only.  Every
# process it starts is bounded by `timeout` and waited for.  Prints one line per case and a
# closing "N passed, N failed"; exit status 0 only if every case behaved as expected.
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
S=$(cd "$HERE/.." && pwd)
BASE_PORT=${BASE_PORT:-17400}
SRV=$BASE_PORT; CLI=$((BASE_PORT + 1)); DEV=17999; PROXY=$((BASE_PORT + 2))
WORK=$(mktemp -d /tmp/sipp-selftest.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
command -v sipp >/dev/null || { echo "sipp not found (apt-get install sip-tester)" >&2; exit 2; }

PASS=0; FAIL=0
report() { # report NAME EXPECT RC
  local ok=0
  if [ "$2" = pass ]; then [ "$3" -eq 0 ] && ok=1; else [ "$3" -ne 0 ] && ok=1; fi
  if [ $ok = 1 ]; then PASS=$((PASS + 1)); printf 'ok    %-60s (expected %s, rc=%s)\n' "$1" "$2" "$3"
  else FAIL=$((FAIL + 1)); printf 'WRONG %-60s (expected %s, rc=%s)\n' "$1" "$2" "$3"
    sed 's/^/      | /' "$WORK/err" 2>/dev/null | head -c 1500; echo; fi
}
# srv FAKE SCENARIO EXPECT ARGS... : FAKE plays the server, SCENARIO is the client under test
srv() { local f=$1 sc=$2 ex=$3; shift 3
  rm -f "$WORK/err"
  timeout -k 2 20 sipp -sf "$HERE/$f.xml" -i 127.0.0.1 -p "$SRV" -m 1 -nostdin -timeout 12s >/dev/null 2>&1 &
  local F=$!; sleep 0.3
  timeout -k 2 20 sipp -sf "$S/$sc.xml" -i 127.0.0.1 -p "$CLI" -m 1 -nostdin -timeout 10s -timeout_error \
    -recv_timeout 5000 -trace_err -error_file "$WORK/err" "$@" "127.0.0.1:$SRV" >/dev/null 2>&1
  local rc=$?
  kill "$F" 2>/dev/null; wait "$F" 2>/dev/null
  report "$sc vs $f" "$ex" "$rc"
}
# dev FAKE SCENARIO EXPECT ARGS... : SCENARIO is the device under test, FAKE plays the proxy
dev() { local f=$1 sc=$2 ex=$3; shift 3
  rm -f "$WORK/err"
  timeout -k 2 20 sipp -sf "$S/$sc.xml" -i 127.0.0.1 -p "$DEV" -m 1 -nostdin -timeout 10s -timeout_error \
    -recv_timeout 8000 -trace_err -error_file "$WORK/err" "$@" >/dev/null 2>&1 &
  local U=$!; sleep 0.3
  timeout -k 2 20 sipp -sf "$HERE/$f.xml" -i 127.0.0.1 -p "$PROXY" -m 1 -nostdin -timeout 10s "127.0.0.1:$DEV" >/dev/null 2>&1
  wait "$U"; local rc=$?
  report "$sc vs $f" "$ex" "$rc"
}

A=(-s alice -key domain localhost)
AU=(-au alice -ap s3cret -auth_uri localhost)
srv freg-sha     register-challenge pass "${A[@]}" -key contact_port "$DEV"
srv freg-md5only register-challenge fail "${A[@]}" -key contact_port "$DEV"
srv freg-binding register           pass "${A[@]}" "${AU[@]}" -key contact_port "$DEV" -key expires 60
srv freg-other   register           fail "${A[@]}" "${AU[@]}" -key contact_port "$DEV" -key expires 60
srv freg-empty   register           fail "${A[@]}" "${AU[@]}" -key contact_port "$DEV" -key expires 60
srv freg-other   unregister         pass "${A[@]}" "${AU[@]}" -key contact_port "$DEV"
srv freg-binding unregister         fail "${A[@]}" "${AU[@]}" -key contact_port "$DEV"
srv freg-empty   unregister-all     pass "${A[@]}" "${AU[@]}"
srv freg-binding unregister-all     fail "${A[@]}" "${AU[@]}"
srv freg-empty   register-none      pass "${A[@]}" "${AU[@]}"
srv freg-binding register-none      fail "${A[@]}" "${AU[@]}"
srv fcall-ok       uac-call pass "${A[@]}"
srv fcall-retrans  uac-call pass "${A[@]}"
srv fcall-late-fwd uac-call fail "${A[@]}"
srv fcall-199      uac-call fail "${A[@]}"
srv f199-good    uac-199 pass "${A[@]}"
srv f199-winner  uac-199 fail "${A[@]}"
srv f199-unknown uac-199 fail "${A[@]}"
srv f199-none    uac-199 fail "${A[@]}"
srv f199-after   uac-199 fail "${A[@]}"
dev fproxy-cancel-good      uas-ring-cancel pass
dev fproxy-cancel-noreason  uas-ring-cancel fail
dev fproxy-cancel-badbranch uas-ring-cancel fail
dev fproxy-cancel-badcseq   uas-ring-cancel fail
dev fproxy-cancel-badack    uas-ring-cancel fail
dev fproxy-cancel-noreason  uas-ring-cancel-noreason pass
dev fproxy-cancel-good      uas-ring-cancel-noreason fail
dev fproxy-cancel-noreason  uas-ring-forever pass
dev fproxy-busy-good   uas-busy pass
dev fproxy-busy-badack uas-busy fail
dev fproxy-answer-crossing uas-answer pass
dev fproxy-answer-noack    uas-answer fail
dev fproxy-late        uas-late-200 pass
dev fproxy-late-noack  uas-late-200 fail

echo "sipp-selftest: $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
