"""CPU measurement server: a fresh process per configuration, without re-importing torch.

``sweep.py`` starts this script once and sends one JSON request per line on its stdin.
The server imports torch and nlsa_triton but never computes anything; for each request
it forks a child, which

1. builds the inputs (excluded from memory),
2. runs the same provider once on an 8x8 map (thread pools, allocator and library
   start-up are not charged to the configuration),
3. resets the peak resident set (VmHWM, via /proc/self/clear_refs) and reads VmRSS,
4. runs the configuration once: that call is the warm-up (not timed) and its
   VmHWM - VmRSS is the peak resident growth reported as peak_mem_mb,
5. times the timed repeats with time.perf_counter,

and writes one JSON result back. A child killed by SIGKILL (the kernel's OOM killer) is
recorded as 'oom', one past its time limit as 'error'. Since no torch work runs in the
server itself, each child starts with fresh allocator state and fresh thread pools.
"""
from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
import traceback
from dataclasses import replace

import torch  # imported once here, inherited by every child

import nlsa_triton  # noqa: F401
from common import cpu_first_call, cpu_repeats, cpu_time_ms, outcome, same_status, short_reason
from providers import Config, build

WARMUP_SIDE = 8


def _failure(exc: BaseException) -> dict:
    return same_status(*outcome(exc))


def measure(request: dict) -> dict:
    """Runs in the forked child: one configuration, as described in the module docstring."""
    if request.get("threads"):
        torch.set_num_threads(request["threads"])
    cfg = Config(**request["config"])
    seed = request.get("seed", 0)
    try:
        case = build(cfg, "cpu", seed)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a status
        return _failure(exc)
    try:
        tiny = build(replace(cfg, height=WARMUP_SIDE, width=WARMUP_SIDE), "cpu", seed)
        tiny.fn()
        del tiny
    except Exception:  # noqa: BLE001 - the real call below reports any problem
        pass

    try:
        first_s, result = cpu_first_call(case.fn)
    except Exception as exc:  # noqa: BLE001
        return _failure(exc)
    repeats = cpu_repeats(first_s, target_s=request["target_s"], min_reps=request["min_reps"],
                          max_reps=request["max_reps"])
    try:
        median, p20, p80 = cpu_time_ms(case.fn, repeats)
        result["time"] = {"status": "ok", "median": median, "p20": p20, "p80": p80}
    except Exception as exc:  # noqa: BLE001
        failed = _failure(exc)
        result["time"], result["reason"] = failed["time"], failed["reason"]
    return result


def _read_all(fd: int, timeout_s: float) -> bytes | None:
    """Everything the child writes until it closes the pipe; None on timeout."""
    chunks, deadline = [], time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def run_child(request: dict) -> dict:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        code = 0
        try:
            result = measure(request)
        except BaseException as exc:  # noqa: BLE001
            result = same_status("error", short_reason(exc))
            traceback.print_exc()
            code = 1
        try:
            data = json.dumps(result).encode()
            while data:
                data = data[os.write(write_fd, data):]
            os.close(write_fd)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    os.close(write_fd)
    data = _read_all(read_fd, request.get("timeout_s", 600))
    os.close(read_fd)
    if data is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return same_status("error", f"timed out after {request.get('timeout_s')} s")
    _, status = os.waitpid(pid, 0)
    if data:
        try:
            return json.loads(data)
        except ValueError:
            pass
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGKILL:
            return same_status("oom", "child killed by SIGKILL (the kernel's OOM killer, most likely)")
        return same_status("error", f"child killed by signal {signal.Signals(sig).name}")
    return same_status("error", f"child exited with status {os.WEXITSTATUS(status)} and no result")


def serve() -> None:
    # The protocol owns the original stdout; anything else printed goes to stderr.
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    print(json.dumps({"ready": True}), file=channel, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        result = run_child(json.loads(line))
        print(json.dumps(result), file=channel, flush=True)


if __name__ == "__main__":
    serve()
