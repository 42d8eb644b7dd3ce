#!/usr/bin/env bash
#
# Start-up time and idle memory of the admin-only daemon, spawned exactly as
# the control plane's test fixture spawns it:
#
#   ddmd --admin-addr ::1 --admin-port 0 --admin-port-file <tmp>/ddmd_port \
#        --api-only --data-dir <tmp>
#
# Builds release ddmd, then RUNS times: spawn in a fresh directory, time
# until the port file exists (the readiness signal), SIGKILL. Prints the
# median, minimum and maximum. Then starts one more, leaves it idle for a
# second and prints its resident memory from /proc.
#
# Targets: median start-up <= 15 ms, VmRSS <= 12 MiB.
#
# Environment: DDMD_BIN (skip the build and use this binary), RUNS (20),
# IDLE_SECS (1).

set -euo pipefail

cd "$(dirname "$0")/.."

if [[ -z "${DDMD_BIN:-}" ]]; then
	scripts/build-release.sh
	DDMD_BIN="$PWD/target/release/ddmd"
fi
export DDMD_BIN
export RUNS="${RUNS:-20}"
export IDLE_SECS="${IDLE_SECS:-1}"

exec python3 - <<'PY'
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

BIN = os.environ["DDMD_BIN"]
RUNS = int(os.environ["RUNS"])
IDLE = float(os.environ["IDLE_SECS"])
TIMEOUT = 10.0
POLL = 0.0001  # 0.1 ms between checks


def spawn(tmp):
    port_file = os.path.join(tmp, "ddmd_port")
    log = open(os.path.join(tmp, "ddmd.log"), "wb")
    start = time.perf_counter()
    proc = subprocess.Popen(
        [BIN, "--admin-addr", "::1", "--admin-port", "0",
         "--admin-port-file", port_file, "--api-only", "--data-dir", tmp],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    while not os.path.exists(port_file):
        if proc.poll() is not None:
            sys.exit(f"ddmd exited ({proc.returncode}) before its port "
                     f"file; log: {open(os.path.join(tmp, 'ddmd.log')).read()}")
        if time.perf_counter() - start > TIMEOUT:
            proc.kill()
            sys.exit(f"no port file after {TIMEOUT} s")
        time.sleep(POLL)
    took = time.perf_counter() - start
    with open(port_file) as f:
        text = f.read()
    if not text.endswith("\n"):
        proc.kill()
        sys.exit(f"port file {text!r} lacks its newline")
    return proc, took


def stop(proc, tmp):
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    shutil.rmtree(tmp)


times = []
for _ in range(RUNS):
    tmp = tempfile.mkdtemp(prefix="ddmd-bench-")
    proc, took = spawn(tmp)
    stop(proc, tmp)
    times.append(took * 1000)

print(f"ddmd: {BIN}")
print(f"start-up to port file, {RUNS} runs: median {statistics.median(times):.2f} ms, "
      f"min {min(times):.2f} ms, max {max(times):.2f} ms")

tmp = tempfile.mkdtemp(prefix="ddmd-bench-")
proc, _ = spawn(tmp)
time.sleep(IDLE)
status = {}
with open(f"/proc/{proc.pid}/status") as f:
    for line in f:
        key, _, value = line.partition(":")
        status[key] = value.strip()
stop(proc, tmp)


def mib(field):
    kib = int(status[field].split()[0])
    return f"{kib / 1024:.2f} MiB"


print(f"after {IDLE:g} s idle: VmRSS {mib('VmRSS')}, VmHWM {mib('VmHWM')}, "
      f"RssAnon {mib('RssAnon')}, RssFile {mib('RssFile')}, "
      f"VmSize {mib('VmSize')}, threads {status['Threads']}")
PY
