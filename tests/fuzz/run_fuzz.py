#!/usr/bin/env python3
"""Runs the libFuzzer harnesses of a FUZZ=ON build (see `make fuzz`).

Each harness fuzz_<name> runs for --time seconds (or --runs executions) on
tests/fuzz/corpus/<name>/ (read only) plus a scratch corpus in the build dir,
where libFuzzer writes the inputs it finds; --merge then adds those that
reach new coverage to the repo corpus. Harnesses run one after the other
(the machine is shared). A crash, leak, timeout or failed check fails the
run; the input is saved under BUILD/fuzz-crashes/<name>/ and its path printed
with the replay command that reproduces it. Output of each harness goes to
BUILD/fuzz-logs/<name>.log."""
import argparse
import glob
import os
import re
import subprocess
import sys

SRC = os.path.dirname(os.path.abspath(__file__))


def harness_names():
    return sorted(os.path.basename(p)[len("fuzz_"):-len(".c")]
                  for p in glob.glob(os.path.join(SRC, "fuzz_*.c")))


def last_stats(log):
    """(execs, exec/s, cov, ft) from libFuzzer's output."""
    execs = speed = cov = ft = None
    for line in log.splitlines():
        m = re.match(r"#(\d+)\s+\S+\s+cov: (\d+) ft: (\d+).*?exec/s: (\d+)", line)
        if m:
            execs, cov, ft, speed = (int(m.group(i)) for i in (1, 2, 3, 4))
        m = re.match(r"stat::number_of_executed_units: (\d+)", line)
        if m:
            execs = int(m.group(1))
        m = re.match(r"stat::average_exec_per_sec: (\d+)", line)
        if m:
            speed = int(m.group(1))
    return execs, speed, cov, ft


def run_one(args, name, seconds):
    fuzz_dir = os.path.join(args.build, "tests", "fuzz")
    binary = os.path.join(fuzz_dir, "fuzz_" + name)
    seeds = os.path.join(SRC, "corpus", name)
    scratch = os.path.join(args.build, "fuzz-corpus", name)
    crashes = os.path.join(args.build, "fuzz-crashes", name)
    logs = os.path.join(args.build, "fuzz-logs")
    for d in (scratch, crashes, logs):
        os.makedirs(d, exist_ok=True)
    if not os.access(binary, os.X_OK):
        print(f"fuzz {name}: {binary} is not built (make fuzz-build)")
        return False
    if not os.path.isdir(seeds) or not os.listdir(seeds):
        print(f"fuzz {name}: no seed corpus in {seeds}")
        return False
    before = set(os.listdir(crashes))
    cmd = [binary, scratch, seeds,
           f"-artifact_prefix={crashes}/",
           "-timeout=25", "-rss_limit_mb=2048", "-print_final_stats=1"]
    if args.runs:
        cmd.append(f"-runs={args.runs}")
    else:
        cmd.append(f"-max_total_time={seconds}")
    dict_path = os.path.join(SRC, name + ".dict")
    if os.path.exists(dict_path):
        cmd.append(f"-dict={dict_path}")
    if args.nice:
        cmd = ["nice", "-n", "10"] + cmd
    log_path = os.path.join(logs, name + ".log")
    with open(log_path, "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    with open(log_path, errors="replace") as log:
        out = log.read()
    execs, speed, cov, ft = last_stats(out)
    summary = f"fuzz {name}: {execs} execs, {speed} exec/s, cov {cov} ft {ft}"
    new = sorted(set(os.listdir(crashes)) - before)
    if rc != 0 or new:
        print(f"{summary}: FAILED (exit {rc}), log {log_path}")
        print("\n".join("    " + l for l in out.splitlines()[-40:]))
        for f in new:
            path = os.path.join(crashes, f)
            print(f"fuzz {name}: CRASH INPUT {path}")
            print(f"    reproduce: {binary} {path}")
            print(f"    or without libFuzzer: build/tests/fuzz/fuzz_{name}_replay {path}")
        return False
    print(summary)
    if args.merge:
        merge = [binary, "-merge=1", seeds, scratch]
        with open(log_path, "a") as log:
            if subprocess.call(merge, stdout=log, stderr=subprocess.STDOUT) != 0:
                print(f"fuzz {name}: merge into {seeds} failed, log {log_path}")
                return False
        print(f"fuzz {name}: merged new coverage into {seeds} "
              f"({len(os.listdir(seeds))} files)")
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build-fuzz")
    ap.add_argument("--time", type=int, default=60, help="seconds per harness")
    ap.add_argument("--budget", type=int, default=0,
                    help="seconds for all harnesses together (0: no limit); "
                         "each gets min(--time, budget/count), at least 5")
    ap.add_argument("--runs", type=int, default=0,
                    help="executions per harness instead of a time")
    ap.add_argument("--merge", action="store_true",
                    help="add new coverage to tests/fuzz/corpus/<name>/")
    ap.add_argument("--nice", action="store_true")
    ap.add_argument("names", nargs="*", help="harnesses (default: all)")
    args = ap.parse_args()
    names = args.names or harness_names()
    unknown = set(names) - set(harness_names())
    if unknown:
        sys.exit(f"run_fuzz: no harness tests/fuzz/fuzz_{sorted(unknown)[0]}.c")
    seconds = args.time
    if args.budget:
        seconds = max(5, min(seconds, args.budget // len(names)))
    failed = [n for n in names if not run_one(args, n, seconds)]
    if failed:
        sys.exit(f"run_fuzz: failed: {' '.join(failed)}")


if __name__ == "__main__":
    main()
