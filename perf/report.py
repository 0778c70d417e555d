#!/usr/bin/env python3
"""Turns basalt-bench JSON into what people read: the server block of perf/RESULTS.md and PNG
plots. Owns no measurement; every number comes from the JSON files of one run.

  report.py disk DISK_JSON PNG          plot of `basalt-bench disk --json`
  report.py compare OUT_DIR [...]       RESULTS.md server block + plots from perf/compare.sh
  report.py cluster OUT_DIR [...]       RESULTS.md cluster block from perf/cluster.sh
"""
import argparse
import datetime
import json
import os
import platform
import re
import subprocess

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

PERF_DIR = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(PERF_DIR, "RESULTS.md")
BEGIN, END = "<!-- server:begin -->", "<!-- server:end -->"
SERVERS = ("etcd", "basalt")
COLORS = {"etcd": "tab:blue", "basalt": "tab:red"}
# The comparison's workloads in the order compare.sh runs them, with what each row shows.
WORKLOADS = [
    ("put-1x1", "put, 1 conn / 1 client", "put"),
    ("put-100x1000", "put, 100 conns / 1000 clients", "put"),
    ("range-l-1x1", "range linearizable, 1/1", "range"),
    ("range-s-1x1", "range serializable, 1/1", "range"),
    ("range-l-100x1000", "range linearizable, 100/1000", "range"),
    ("range-s-100x1000", "range serializable, 100/1000", "range"),
    ("txn-mixed-90-10", "txn-mixed 90% read, 10/100 (reads)", "read"),
    ("txn-mixed-90-10", "txn-mixed 90% read, 10/100 (writes)", "write"),
    ("watch-fanout", "watch fan-out, 1000 watchers (events)", "event"),
    ("k8s", "kube-apiserver mix, 10/100: create (Txn)", "create"),
    ("k8s", "kube-apiserver mix: GuaranteedUpdate (Txn)", "update"),
    ("k8s", "kube-apiserver mix: delete (Txn)", "delete"),
    ("k8s", "kube-apiserver mix: get", "get"),
    ("k8s", "kube-apiserver mix: LIST (every page of 500)", "list"),
    ("k8s", "kube-apiserver mix: LIST, one page", "list-page"),
    ("k8s", "kube-apiserver mix: events (leased put)", "events"),
    ("k8s", "kube-apiserver mix: watch event lag (12 watchers)", "watch-lag"),
]
FIO_LIMIT_MS = 10.0
CHECK_TOLERANCE = 0.10


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def series(run, name):
    for s in (run or {}).get("series", []):
        if s["name"] == name:
            return s
    return None


def rate(run, s):
    """Operations per second of a row; watch rows count events delivered."""
    if s["name"] == "event":
        return run["extra"].get("events_per_s", 0.0)
    return s["throughput_per_s"]


def plot_disk(disk, png):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    rows = disk["write_fdatasync"]
    labels = ["%d KiB" % (r["block_bytes"] // 1024) for r in rows]
    xs = range(len(rows))
    for offset, key, color in ((-0.27, "p50", "tab:green"), (0, "p99", "tab:orange"), (0.27, "p99.9", "tab:red")):
        ax.bar([x + offset for x in xs], [r[key] / 1000 for r in rows], width=0.27, label=key, color=color)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels)
    ax.set_ylabel("O_DIRECT write + fdatasync, ms")
    fio = disk["fio_check"]
    ax.set_title(
        "write + fdatasync latency by block size\nfio-style check (2300 B): p99 fdatasync %.2f ms, %s"
        % (fio["p99_fdatasync_ms"], "PASS" if fio["pass"] else "FAIL (etcd asks < 10 ms)")
    )
    ax.legend()
    ax = axes[1]
    curve = (disk.get("wal_group_commit") or {}).get("points")
    if curve:
        ax.plot([p["appenders"] for p in curve], [p["records_per_s"] for p in curve], "o-", label="Basalt WAL")
        floor = 1e6 / rows[0]["p50"]
        ax.axhline(floor, color="gray", linestyle="--", label="one 4 KiB fdatasync per record (p50)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent appenders")
        ax.set_ylabel("records/s made durable")
        ax.set_title("WAL group commit (%d B records)" % disk["wal_group_commit"]["record_payload_bytes"])
        ax.legend()
    else:
        ax.text(0.5, 0.5, "WAL curve not measured", ha="center", va="center")
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def plot_latency(runs, png):
    """Latency distributions (HdrHistogram percentile plots), one panel per workload row."""
    fig, axes = plt.subplots(3, 3, figsize=(15, 11))
    ticks = [0.0, 0.9, 0.99, 0.999, 0.9999]
    for ax, (workload, title, name) in zip(axes.flat, WORKLOADS):
        for server in SERVERS:
            s = series(runs.get((server, workload)), name)
            if not s or not s["count"]:
                continue
            points = [(q, us) for q, us in s["distribution_us"] if q < 1.0]
            xs = [1.0 / (1.0 - q) for q, _ in points]
            ax.plot(xs, [us / 1000 for _, us in points], label=server, color=COLORS[server])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([1.0 / (1.0 - q) for q in ticks])
        ax.set_xticklabels(["p%g" % (q * 100) for q in ticks])
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("latency, ms")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Latency distributions, etcd 3.5.1 vs Basalt (same machine, same run)")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)


def load_average():
    try:
        with open("/proc/loadavg") as f:
            return " / ".join(f.read().split()[:3]) + " (1 / 5 / 15 min)"
    except OSError:
        return "?"


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = re.search(r"model name\s*:\s*(.*)", f.read()).group(1)
    except (OSError, AttributeError):
        pass
    try:
        device = subprocess.run(["df", "-T", PERF_DIR], capture_output=True, text=True).stdout.splitlines()[-1].split()
        disk = "%s (%s)" % (device[0], device[1])
    except (OSError, IndexError):
        disk = "?"
    return "%d x %s, Linux %s, data dirs on %s" % (os.cpu_count() or 0, cpu, platform.release(), disk)


def fmt_ms(us):
    return "%.3f" % (us / 1000)


def server_cpu_us(run):
    """The server's CPU µs per request of a run made with --server-pid, else None; None too
    when any request failed (failures are cheap, so they would flatter the figure)."""
    if any(s["errors"] for s in (run or {}).get("series", [])):
        return None
    return ((run or {}).get("server") or {}).get("cpu_us_per_request")


def p50_us(runs, server, workload, name):
    s = series(runs.get((server, workload)), name)
    return s["latency_us"]["p50"] if s and s["count"] else None


def put_breakdown(runs, disk):
    """Where a lone put's time goes, from the run's own medians: a serializable range is one
    no-op round trip through the whole request path; the disk floor is one 4 KiB write +
    fdatasync; what a put takes beyond both is the server's own (queueing, apply, reply)."""
    floor = disk["write_fdatasync"][0]["p50"] if disk else None
    lines = ["", "Where a lone put's time goes (1 connection, 1 client, medians of this run):", ""]
    lines.append("| | etcd 3.5.1 µs | Basalt µs |")
    lines.append("| --- | ---: | ---: |")
    rows = {server: (p50_us(runs, server, "put-1x1", "put"), p50_us(runs, server, "range-s-1x1", "range"))
            for server in SERVERS}
    fmt = lambda v: "-" if v is None else "%.0f" % v  # noqa: E731
    lines.append("| put p50 | %s | %s |" % (fmt(rows["etcd"][0]), fmt(rows["basalt"][0])))
    lines.append("| no-op round trip (serializable range p50) | %s | %s |" % (fmt(rows["etcd"][1]), fmt(rows["basalt"][1])))
    lines.append("| one 4 KiB write + fdatasync (disk floor p50) | %s | %s |" % (fmt(floor), fmt(floor)))
    rest = lambda put, trip: None if None in (put, trip, floor) else put - trip - floor  # noqa: E731
    lines.append(
        "| the rest: queueing, apply, reply (put - round trip - floor) | %s | %s |"
        % (fmt(rest(*rows["etcd"])), fmt(rest(*rows["basalt"])))
    )
    lines.append("")
    lines.append(
        "etcd's row can come out below the floor: as a single member it answers before its "
        "fdatasync returns (see above)."
    )
    return lines


def hot_path_goals(runs, disk, other, pinning):
    """The goals of the hot-path work, each checked against this run's numbers; `other` holds
    the floor measured on the load generator's CPUs and where the disk's interrupts went."""
    floor = disk["write_fdatasync"][0]["p50"] if disk else None

    def ratio(workload, name, value):
        e, b = value(runs.get(("etcd", workload)), name), value(runs.get(("basalt", workload)), name)
        return (e, b, None if not e or b is None else b / e)

    def tput(run, name):
        s = series(run, name)
        return rate(run, s) if s and s["count"] else None

    cpu = lambda run, name: server_cpu_us(run)  # noqa: E731
    lines = ["", "Goals of the hot path, checked in this run:", "", "| goal | measured | met |", "| --- | --- | --- |"]
    put_b, trip_b = p50_us(runs, "basalt", "put-1x1", "put"), p50_us(runs, "basalt", "range-s-1x1", "range")
    put_e, trip_e = p50_us(runs, "etcd", "put-1x1", "put"), p50_us(runs, "etcd", "range-s-1x1", "range")
    verdict = lambda ok: "n/a" if ok is None else ("yes" if ok else "**no**")  # noqa: E731
    if None not in (put_b, trip_b, floor, put_e):
        bound = trip_b + 1.15 * floor
        lines.append(
            "| put 1/1 p50 ≤ own range p50 + 1.15 × floor, and below etcd's | %.0f µs vs %.0f + 1.15 × %.0f = %.0f µs; etcd %.0f µs | %s |"
            % (put_b, trip_b, floor, bound, put_e, verdict(put_b <= bound and put_b < put_e))
        )
    if None not in (trip_b, trip_e):
        lines.append(
            "| serializable range 1/1 p50 ≤ 0.8 × etcd's | %.0f vs %.0f µs (%.2f×) | %s |"
            % (trip_b, trip_e, trip_b / trip_e, verdict(trip_b <= 0.8 * trip_e))
        )
    for workload, name, title in (
        ("put-100x1000", "put", "server CPU per put, 100/1000"),
        ("range-l-100x1000", "range", "server CPU per linearizable range, 100/1000"),
        ("range-s-100x1000", "range", "server CPU per serializable range, 100/1000"),
    ):
        e, b, r = ratio(workload, name, cpu)
        if r is not None:
            lines.append("| %s ≤ 1/3 of etcd's | %.1f vs %.1f µs (%.2f×) | %s |" % (title, b, e, r, verdict(r <= 1 / 3)))
    e, b, r = ratio("put-100x1000", "put", tput)
    if r is not None:
        lines.append("| put throughput 100/1000 ≥ 3 × etcd's | %.0f vs %.0f /s (%.2f×) | %s |" % (b, e, r, verdict(r >= 3)))
    if floor is not None:
        lines.append("")
        lines.append(
            "The floor is measured on the servers' CPU(s) %s, where the servers pay what it pays; "
            "the data disk's completion interrupts were handled on %s." % (pinning[0], other.get("irq", "?"))
        )
        other_floor = other["disk"]["write_fdatasync"][0]["p50"] if other.get("disk") else None
        if other_floor is not None:
            text = "On the load generator's CPU(s) %s the same harness read a floor of %.0f µs p50" % (
                pinning[1], other_floor)
            if None not in (put_b, trip_b):
                other_bound = trip_b + 1.15 * other_floor
                text += "; against that floor the put bound would be %.0f + 1.15 × %.0f = %.0f µs, %s" % (
                    trip_b, other_floor, other_bound, "met" if put_b <= other_bound else "**not met**")
            lines.append(text + ".")
    return lines


def server_block(runs, disk, other, checks, quick, version, basalt_started, basalt_wal, pinning):
    lines = [BEGIN, "## Server (side by side with etcd 3.5)", ""]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines.append("Run: `perf/compare.sh%s` at %s, Basalt %s." % (" --quick" if quick else "", now, version))
    lines.append("Machine: %s. Load generator: basalt-bench on the same machine." % machine())
    lines.append("")
    lines.append("**Read this first.**")
    if basalt_wal:
        lines.append(
            "- Basalt in this run served from its data dir through raft and its WAL (WAL segments "
            "were found there after the run). DESIGN.md says it acknowledges a write only after "
            "the WAL fdatasync; this run does not check that."
        )
        floor_us = disk["write_fdatasync"][0]["p50"] if disk else None
        put = series(runs.get(("basalt", "put-1x1")), "put")
        if floor_us and put and put["count"] and put["latency_us"]["p50"] < floor_us:
            lines.append(
                "- **Warning:** Basalt's 1/1 put p50 (%s ms) is below this run's 4 KiB write + "
                "fdatasync p50 (%s ms, measured minutes earlier). Either the disk was faster while "
                "Basalt ran, or its acks do not wait for the fdatasync: find out before quoting "
                "Basalt's write numbers as durable." % (fmt_ms(put["latency_us"]["p50"]), fmt_ms(floor_us))
            )
    else:
        lines.append(
            "- Basalt's server in this run kept KV **in memory and was not durable** (no WAL was "
            "written in its data dir). A non-durable server beating a durable one proves nothing "
            "about the product; the write rows measure the network and request path only."
        )
    lines.append(
        "- etcd 3.5.1 as a **single member** acknowledges a put before its WAL fdatasync returns "
        "(etcd-io/etcd#14370, fixed in 3.5.5), so its single-member write latency is not the "
        "cost of durability either; compare it with the disk floor below."
    )
    lines.append(
        "- The client CPU column says how much the load generator itself used (cores busy over "
        "the run); the load average at the end of the run was %s." % load_average()
    )
    if not basalt_started:
        lines.append("- **Basalt did not start in this run; only etcd was measured.**")
    lines.append("")
    lines.append(
        "| workload | etcd ops/s | Basalt ops/s | Basalt/etcd | etcd p50 / p99 ms | Basalt p50 / p99 ms "
        "| server CPU µs per request etcd / Basalt | server syscalls per request etcd / Basalt "
        "| server heap allocations per request etcd / Basalt | errors etcd / Basalt | client CPU etcd / Basalt |"
    )
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for workload, title, name in WORKLOADS:
        cells = {}
        for server in SERVERS:
            run = runs.get((server, workload))
            s = series(run, name)
            if s and s["count"]:
                cells[server] = (
                    rate(run, s),
                    "%s / %s" % (fmt_ms(s["latency_us"]["p50"]), fmt_ms(s["latency_us"]["p99"])),
                    s["errors"],
                    run["client_cpu"]["cores_used"],
                    server_cpu_us(run),
                    (run.get("server") or {}).get("syscalls_per_request"),
                    (run.get("server") or {}).get("heap_allocations_per_request"),
                )
            elif s:
                cells[server] = (None, "-", s["errors"], run["client_cpu"]["cores_used"], None, None, None)
        get = lambda server, i, f: f(cells[server][i]) if server in cells else "-"  # noqa: E731
        ops = lambda v: "failed" if v is None else "%.0f" % v  # noqa: E731
        ratio = "-"
        if "etcd" in cells and "basalt" in cells and cells["etcd"][0] and cells["basalt"][0] is not None:
            ratio = "%.2f" % (cells["basalt"][0] / cells["etcd"][0])
        cpu = lambda v: "-" if v is None else "%.1f" % v  # noqa: E731
        lines.append(
            "| %s | %s | %s | %s | %s | %s | %s / %s | %s / %s | %s / %s | %s / %s | %s / %s |"
            % (
                title,
                get("etcd", 0, ops),
                get("basalt", 0, ops),
                ratio,
                get("etcd", 1, str),
                get("basalt", 1, str),
                get("etcd", 4, cpu),
                get("basalt", 4, cpu),
                get("etcd", 5, cpu),
                get("basalt", 5, cpu),
                get("etcd", 6, lambda v: "-" if v is None else "%.0f" % v),
                get("basalt", 6, lambda v: "-" if v is None else "%.0f" % v),
                get("etcd", 2, str),
                get("basalt", 2, str),
                get("etcd", 3, lambda v: "%.2f" % v),
                get("basalt", 3, lambda v: "%.2f" % v),
            )
        )
    lines.append("")
    lines.append(
        "Servers pinned to CPU(s) %s, the load generator to %s (taskset); each workload ran on etcd "
        "and then on Basalt. Server CPU is utime + stime of the whole process from /proc over the "
        "workload, divided by its requests; with one server CPU saturated it is the inverse of the "
        "throughput. Syscalls are counted by perf on the raw_syscalls:sys_enter tracepoint over "
        "the same span; heap allocations are the servers' own counters on /metrics "
        "(etcd: go_memstats_mallocs_total, Basalt: basalt_heap_allocations_total). Basalt's flags beyond the data dir and URLs: %s."
        % (pinning[0], pinning[1], "`%s`" % pinning[2] if pinning[2] else "none")
    )
    lines.extend(put_breakdown(runs, disk))
    lines.extend(hot_path_goals(runs, disk, other, pinning))
    failures = []
    for (server, workload), run in sorted(runs.items()):
        for s in run.get("series", []):
            for message, count in list(s.get("error_messages", {}).items())[:2]:
                failures.append("- %s %s (%s): %d x `%s`" % (server, workload, s["name"], count, message))
    if failures:
        lines.append("")
        lines.append("Errors seen:")
        lines.extend(failures)
    lines.append("")
    lines.append("![latency distributions](server-latency.png)")
    lines.append("")
    if disk:
        rows = disk["write_fdatasync"]
        fio = disk["fio_check"]
        lines.append("### Disk floor (same disk, same run: `basalt-bench disk` on the server CPUs)")
        lines.append("")
        lines.append("| O_DIRECT write + fdatasync | samples | p50 ms | p99 ms | p99.9 ms |")
        lines.append("| --- | ---: | ---: | ---: | ---: |")
        for r in rows:
            lines.append(
                "| %d KiB | %d | %s | %s | %s |"
                % (r["block_bytes"] // 1024, r["samples"], fmt_ms(r["p50"]), fmt_ms(r["p99"]), fmt_ms(r["p99.9"]))
            )
        seq = disk["sequential_mib_s"]
        lines.append("")
        lines.append(
            "Sequential 1 MiB direct writes: %.0f MiB/s into a fresh file, %.0f MiB/s overwriting. "
            "etcd's fio-style check (2300 B writes, fdatasync each, %.1f MiB): fdatasync p50 %s ms, "
            "p99 %.2f ms: **%s** (etcd asks p99 < %g ms)."
            % (
                seq["fresh_file"],
                seq["overwrite"],
                fio["total_bytes"] / 2**20,
                fmt_ms(fio["fdatasync_us"]["p50"]),
                fio["p99_fdatasync_ms"],
                "PASS" if fio["pass"] else "FAIL",
                FIO_LIMIT_MS,
            )
        )
        wal = disk.get("wal_group_commit") or {}
        curve = wal.get("points")
        if wal.get("error"):
            lines.append("Basalt WAL group commit: **failed**: %s." % wal["error"])
        if curve:
            lines.append(
                "Basalt WAL group commit (records/s at 1, 8, 64, 256 appenders): %s."
                % ", ".join("%.0f" % p["records_per_s"] for p in curve if p["appenders"] in (1, 8, 64, 256))
            )
        lines.append("")
        lines.append("![disk](disk.png)")
        lines.append("")
    lines.append("### Check of the tool")
    lines.append("")
    lines.append(
        "basalt-bench and an independent client (`perf/check_client.py`: grpcio's C core, requests "
        "encoded by hand) call the same etcd one after the other at 50 calls/s: 256-byte puts, "
        "then serializable ranges of a missing key. The range is the cheapest call a server "
        "answers, so its latency is mostly the client's own fixed cost per call; the corrected "
        "column takes the Python loop's extra fixed cost (its range p50 minus basalt-bench's) "
        "off its put p50. Agreement is judged within %d%%." % (CHECK_TOLERANCE * 100)
    )
    lines.append("")
    lines.append(
        "| etcd | calls | put p50 ms: basalt-bench / python | raw difference | range p50 ms: "
        "basalt-bench / python | python put p50 less its extra fixed cost | corrected difference | verdict |"
    )
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    labels = (("single", "single member (acks before fdatasync)"), ("cluster", "3 members (a put waits for a follower's fdatasync)"))
    for label, title in labels:
        bench_put = series(checks.get((label, "bench", "put")), "put")
        bench_range = series(checks.get((label, "bench", "range")), "range")
        python_put, python_range = checks.get((label, "python", "put")), checks.get((label, "python", "range"))
        if not (bench_put and bench_range and python_put and python_range):
            lines.append("| %s | - | - | - | - | - | - | not run |" % title)
            continue
        b_put, b_range = bench_put["latency_us"]["p50"], bench_range["latency_us"]["p50"]
        p_put, p_range = python_put["p50"], python_range["p50"]
        corrected = p_put - (p_range - b_range)
        raw_diff = (b_put - p_put) / p_put
        corrected_diff = (b_put - corrected) / corrected
        verdict = "agree" if abs(corrected_diff) <= CHECK_TOLERANCE else "differ"
        lines.append(
            "| %s | %d | %s / %s | %+.1f%% | %s / %s | %s | %+.1f%% | %s |"
            % (title, bench_put["count"], fmt_ms(b_put), fmt_ms(p_put), raw_diff * 100, fmt_ms(b_range),
               fmt_ms(p_range), fmt_ms(corrected), corrected_diff * 100, verdict)
        )
    lines.append("")
    lines.append(
        "A negative difference means basalt-bench saw the lower latency. The raw difference is the "
        "Python loop's own cost per call (interpreter, grpcio's threads waking after each pause), "
        "which grows when the machine's cores are busy."
    )
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_block(block, begin=BEGIN, end_marker=END):
    """Replace the marker block of RESULTS.md that `block` carries; a new block goes at the end."""
    with open(RESULTS) as f:
        text = f.read()
    if begin not in text:
        text = text.rstrip("\n") + "\n\n" + begin + "\n" + end_marker + "\n"
    start, end = text.index(begin), text.index(end_marker) + len(end_marker)
    text = text[:start] + block.rstrip("\n") + text[end:]
    with open(RESULTS, "w") as f:
        f.write(text)


def compare(args):
    runs = {}
    for server in SERVERS:
        for workload, _, _ in WORKLOADS:
            run = load(os.path.join(args.out_dir, "%s-%s.json" % (server, workload)))
            if run:
                runs[(server, workload)] = run
    checks = {}
    for label in ("single", "cluster"):
        for client in ("bench", "python"):
            for op in ("put", "range"):
                path = os.path.join(args.out_dir, "check-%s-%s-%s.json" % (label, client, op))
                checks[(label, client, op)] = load(path)
    disk = load(os.path.join(args.out_dir, "disk.json"))
    basalt_started = not os.path.exists(os.path.join(args.out_dir, "basalt-missing.txt"))
    plot_latency(runs, os.path.join(PERF_DIR, "server-latency.png"))
    if disk:
        plot_disk(disk, os.path.join(PERF_DIR, "disk.png"))
    try:
        with open(os.path.join(args.out_dir, "basalt-wal.txt")) as f:
            basalt_wal = f.read().strip() == "yes"
    except OSError:
        basalt_wal = False
    pinning = []
    for name in ("server-cpus.txt", "client-cpus.txt", "basalt-flags.txt"):
        try:
            with open(os.path.join(args.out_dir, name)) as f:
                pinning.append(f.read().strip())
        except OSError:
            pinning.append("?")
    other = {"disk": load(os.path.join(args.out_dir, "disk-client-cpus.json"))}
    try:
        with open(os.path.join(args.out_dir, "disk-irq.txt")) as f:
            other["irq"] = f.read().strip()
    except OSError:
        pass
    block = server_block(
        runs, disk, other, checks, args.quick == "1", args.basalt_version, basalt_started, basalt_wal, tuple(pinning)
    )
    write_block(block)
    print("wrote %s, %s and %s" % (RESULTS, "server-latency.png", "disk.png"))


CLUSTER_BEGIN, CLUSTER_END = "<!-- cluster:begin -->", "<!-- cluster:end -->"
# perf/cluster.sh's runs: one-way delays between members and workloads (all puts to the leader).
CLUSTER_DELAYS = (("0", "0 ms added"), ("0.5", "1 ms added round trip"))
CLUSTER_WORKLOADS = (("put-1x1", "1 client"), ("put-10x100", "100 clients"), ("put-100x1000", "1000 clients"))


def cluster_put_p50_us(out_dir, server):
    """The 1-client put p50 without added delay, or infinity when it was not measured."""
    s = series(load(os.path.join(out_dir, "%s-delay0-put-1x1.json" % server)), "put")
    return s["latency_us"]["p50"] if s and s["count"] else float("inf")


def cluster_block(out_dir, disk, quick, version, seconds):
    lines = [CLUSTER_BEGIN, "## 3-member cluster (side by side with etcd 3.5.1)", ""]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines.append("Run: `perf/cluster.sh%s` at %s, Basalt %s, %s s per workload." % (
        " --quick" if quick else "", now, version, seconds))
    lines.append("Machine: %s. Load generator: basalt-bench on the same machine." % machine())
    try:
        with open(os.path.join(out_dir, "loadavg.txt")) as f:
            lines.append("Load average when the run began (other work on the machine): %s." % " ".join(f.read().split()[:3]))
    except OSError:
        pass
    if quick:
        lines.append("A `--quick` run: it proves the script; its numbers are too short to quote.")
    lines.append("")
    lines.append(
        "Each member runs in a network namespace of its own (veth pairs into a bridge); basalt-bench "
        "runs in the bridge's namespace and sends every put (8-byte keys, 256-byte values) to the "
        "leader, so a put costs the leader's and a follower's WAL fdatasync and one round trip "
        "between members. The added delay holds back every member-to-member packet by 0.5 ms in "
        "user space (`tests/cluster/nfq_delay`, NFQUEUE: this kernel has no netem), which itself "
        "costs some tens of microseconds per packet. One cluster runs at a time."
    )
    lines.append("")
    if disk:
        rows = disk["write_fdatasync"]
        lines.append(
            "Disk floor in the same run (the data dirs' disk): 4 KiB O_DIRECT write + fdatasync p50 %s ms, "
            "p99 %s ms. A put on a cluster waits for at least one such write on a follower (etcd 3.5's "
            "leader counts its own entry before its own fdatasync returns)." % (fmt_ms(rows[0]["p50"]), fmt_ms(rows[0]["p99"]))
        )
        concurrent = disk.get("concurrent_write_fdatasync") or []
        if concurrent:
            lines.append("")
            lines.append(
                "The same write by %s writers at once (a file each, every write started together, the "
                "counts taking turns so each sees the same disk moments): p50 %s ms, p99 %s ms. In a "
                "cluster whose data dirs share this disk, each member flushes every entry, the "
                "followers at nearly the same moment and the leader a little earlier." % (
                    " / ".join(str(r["writers"]) for r in concurrent),
                    " / ".join(fmt_ms(r["p50"]) for r in concurrent),
                    " / ".join(fmt_ms(r["p99"]) for r in concurrent)))
        below = [server for server in SERVERS if cluster_put_p50_us(out_dir, server) < rows[0]["p50"]]
        if below:
            lines.append(
                "**Warning:** the 1-client put p50 of %s is below that floor's p50: the disk was faster "
                "while the clusters ran than while the floor was measured (other work shares this "
                "disk), or an ack did not wait for a follower's fdatasync. Do not read the latency "
                "rows against the floor without finding out which." % " and ".join(below)
            )
        lines.append("")
    lines.append("| added between members | clients | etcd puts/s | Basalt puts/s | Basalt/etcd "
                 "| etcd p50 / p99 ms | Basalt p50 / p99 ms | errors etcd / Basalt |")
    lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for delay, delay_title in CLUSTER_DELAYS:
        for workload, clients in CLUSTER_WORKLOADS:
            cells = {}
            for server in SERVERS:
                run = load(os.path.join(out_dir, "%s-delay%s-%s.json" % (server, delay, workload)))
                s = series(run, "put")
                if s and s["count"]:
                    cells[server] = (s["throughput_per_s"], "%s / %s" % (
                        fmt_ms(s["latency_us"]["p50"]), fmt_ms(s["latency_us"]["p99"])), s["errors"])
            e, b = cells.get("etcd"), cells.get("basalt")
            ratio = "%.2fx" % (b[0] / e[0]) if e and b and e[0] else "-"
            lines.append("| %s | %s | %s | %s | %s | %s | %s | %s / %s |" % (
                delay_title, clients, "%.0f" % e[0] if e else "-", "%.0f" % b[0] if b else "-", ratio,
                e[1] if e else "-", b[1] if b else "-", e[2] if e else "-", b[2] if b else "-"))
    lines.extend(cluster_put_bound(out_dir, disk))
    missing = sorted(f[: -len(".missing.txt")] for f in os.listdir(out_dir) if f.endswith(".missing.txt"))
    if missing:
        lines.append("")
        lines.append("Not measured (the cluster did not form): %s." % ", ".join(missing))
    lines.append(CLUSTER_END)
    return "\n".join(lines) + "\n"


def ping_p50_us(path):
    """The median round trip of a ping transcript, or None."""
    try:
        with open(path) as f:
            times = sorted(float(m.group(1)) * 1000 for m in re.finditer(r"time=([0-9.]+) ms", f.read()))
    except OSError:
        return None
    return times[len(times) // 2] if times else None


def cluster_put_bound(out_dir, disk):
    """The hot-path goal for a cluster: a lone put's p50 within 1.15 × (round trip between
    members + a follower's write + fdatasync + a no-op client round trip), per delay."""
    floor = disk["write_fdatasync"][0]["p50"] if disk else None
    # A follower's flush with the other follower's in flight: what the shared disk allows.
    shared = [r["p50"] for r in (disk or {}).get("concurrent_write_fdatasync", []) if r["writers"] == 2]
    shared_floor = shared[0] if shared else None
    lines = ["", "A lone put against its bound: 1.15 × (member round trip + disk floor + no-op client round trip), p50s of this run; "
             "the last two columns put the floor of two writes at once in the lone floor's place:", "",
             "| added between members | server | put 1/1 µs | member round trip µs | floor µs | no-op round trip µs | bound µs | met "
             "| floor, 2 at once µs | bound at that floor µs |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    fmt = lambda v: "-" if v is None else "%.0f" % v  # noqa: E731
    rows = 0
    for delay, delay_title in CLUSTER_DELAYS:
        for server in SERVERS:
            label = "%s-delay%s" % (server, delay)
            put = series(load(os.path.join(out_dir, "%s-put-1x1.json" % label)), "put")
            trip = series(load(os.path.join(out_dir, "%s-range-s-1x1.json" % label)), "range")
            put_us = put["latency_us"]["p50"] if put and put["count"] else None
            trip_us = trip["latency_us"]["p50"] if trip and trip["count"] else None
            member_us = ping_p50_us(os.path.join(out_dir, "%s-ping.txt" % label))
            if put_us is None:
                continue
            bound = None if None in (trip_us, member_us, floor) else 1.15 * (member_us + floor + trip_us)
            met = "-" if bound is None else ("yes" if put_us <= bound else "**no**")
            shared_bound = (None if None in (trip_us, member_us, shared_floor)
                            else 1.15 * (member_us + shared_floor + trip_us))
            lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                delay_title, server, fmt(put_us), fmt(member_us), fmt(floor), fmt(trip_us), fmt(bound), met,
                fmt(shared_floor), fmt(shared_bound)))
            rows += 1
    return lines if rows else []


def cluster(args):
    disk = load(os.path.join(args.out_dir, "disk.json"))
    block = cluster_block(args.out_dir, disk, args.quick == "1", args.basalt_version, args.seconds)
    write_block(block, CLUSTER_BEGIN, CLUSTER_END)
    print("wrote the cluster block of %s" % RESULTS)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("disk", help="plot one disk harness result")
    p.add_argument("json")
    p.add_argument("png")
    p = sub.add_parser("compare", help="RESULTS.md server block and plots from a compare.sh run")
    p.add_argument("out_dir")
    p.add_argument("--quick", default="0")
    p.add_argument("--basalt-version", default="?")
    p = sub.add_parser("cluster", help="RESULTS.md cluster block from a perf/cluster.sh run")
    p.add_argument("out_dir")
    p.add_argument("--quick", default="0")
    p.add_argument("--basalt-version", default="?")
    p.add_argument("--seconds", default="?")
    args = parser.parse_args()
    if args.command == "disk":
        plot_disk(load(args.json), args.png)
    elif args.command == "cluster":
        cluster(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
