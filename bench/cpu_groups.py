#!/usr/bin/env python3
"""CPU time of the processes of a benchmark, by group, over a window.

  cpu_groups.py snap FILE                      record every process's CPU ticks
  cpu_groups.py diff A B SRC_DIR DST_DIR APPS NAMED
      prints "group seconds" lines: CPU used between snapshots A and B by the processes
      alive at both, grouped as src:<what> / dst:<what> for the children of the clusters'
      postmasters (client backends by application_name, from APPS: lines "port|pid|app"),
      as NAMED says for other processes ("name=pid,name=pid"), "other" for the rest.
Reads /proc only; a process that ends inside the window is not counted.
"""
import os
import sys

TICK = os.sysconf("SC_CLK_TCK")


def snap():
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = open(f"/proc/{pid}/stat").read()
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2:].split()
        # fields after the command: state ppid ... utime(14th overall) stime(15th)
        out[int(pid)] = (int(rest[1]), int(rest[11]) + int(rest[12]), cmd)
    return out


def load(path):
    d = {}
    for line in open(path):
        pid, ppid, ticks, cmd = line.rstrip("\n").split("\t", 3)
        d[int(pid)] = (int(ppid), int(ticks), cmd)
    return d


def postmaster(data_dir):
    return int(open(os.path.join(data_dir, "postmaster.pid")).readline())


def main():
    if sys.argv[1] == "snap":
        with open(sys.argv[2], "w") as f:
            for pid, (ppid, ticks, cmd) in snap().items():
                f.write(f"{pid}\t{ppid}\t{ticks}\t{cmd}\n")
        return
    a, b = load(sys.argv[2]), load(sys.argv[3])
    clusters = {postmaster(sys.argv[4]): "src", postmaster(sys.argv[5]): "dst"}
    apps = {}
    for line in open(sys.argv[6]):
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[1].isdigit():
            apps[int(parts[1])] = parts[2] or "unnamed"
    named = {}
    for item in filter(None, sys.argv[7].split(",")):
        name, pid = item.split("=")
        named[int(pid)] = name
    groups = {}
    for pid, (ppid, ticks, cmd) in b.items():
        if pid not in a:
            continue
        used = ticks - a[pid][1]
        if pid in named:
            g = named[pid]
        elif ppid in clusters:
            side = clusters[ppid]
            if pid in apps:
                g = f"{side}:backend {apps[pid]}"
            else:
                # "postgres: walwriter", "postgres: autovacuum worker", …
                what = cmd.split(":", 1)[1].strip() if ":" in cmd else cmd
                g = f"{side}:{' '.join(what.split()[:2])}"
        elif pid in clusters:
            g = f"{clusters[pid]}:postmaster"
        else:
            g = "other"
        groups[g] = groups.get(g, 0) + used
    for g, t in sorted(groups.items(), key=lambda x: -x[1]):
        if t:
            print(f"{g}\t{t / TICK:.2f}")


main()
