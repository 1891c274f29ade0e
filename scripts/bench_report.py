"""Turns the data of scripts/bench_suite.py into results.json, results.md
(the tables, and the issue's targets checked against the medians) and one
PNG per message size (round trips/s and p99 against connections, one line
per server).

    python scripts/bench_report.py [bench-results/results.json]

re-renders the markdown and plots from a saved results.json.
"""
import json
import os
import sys

LABELS = {
    "threads": "threads (plain python)",
    "interpose": "interpose run (unmodified)",
    "interpose-spawn": "interpose run (spawn variant)",
    "gevent-patched": "gevent patch_all",
    "eventlet-patched": "eventlet monkey_patch",
    "gevent-stream": "gevent StreamServer",
    "asyncio-streams": "asyncio streams",
    "asyncio-protocol": "asyncio Protocol",
    "uvloop-streams": "uvloop streams",
    "uvloop-protocol": "uvloop Protocol",
}
OURS = ("interpose", "interpose-spawn")


def _size_name(size):
    return f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def _fmt(stat, digits=0, spread=True):
    if stat is None:
        return "—"
    f = f"{{:,.{digits}f}}"
    text = f.format(stat["median"])
    if spread:
        text += f" ({f.format(stat['min'])}–{f.format(stat['max'])})"
    return text


def _cell(grid, server, conns, size):
    for row in grid:
        if (row["server"], row["conns"], row["size"]) == (server, conns, size):
            return row
    return None


def _median(grid, server, conns, size, key):
    row = _cell(grid, server, conns, size)
    if row is None or row.get(key) is None:
        return None
    return row[key]["median"]


def _met(ok):
    return {None: "—", True: "yes", False: "**no**"}[ok]


def _ratio_rows(grid, sizes, ours):
    """(target text, measured text, met) rows of the grid targets for one
    of our servers."""
    rows = []
    for size in sizes:
        sz = _size_name(size)
        for conns in (100, 1000):
            for peer, need, what in (("gevent-patched", 2.5, "gevent patch_all"),
                                     ("uvloop-protocol", 1.0, "uvloop Protocol")):
                a = _median(grid, ours, conns, size, "rps")
                b = _median(grid, peer, conns, size, "rps")
                if a is None or b is None:
                    continue
                rows.append((f"rt/s ≥ {need}× {what}, {conns} conns, {sz}",
                             f"{a / b:.2f}× ({a:,.0f} vs {b:,.0f})", a / b >= need))
            a = _median(grid, ours, conns, size, "cpu_us_per_rt")
            b = _median(grid, "uvloop-protocol", conns, size, "cpu_us_per_rt")
            if a is not None and b is not None:
                rows.append((f"CPU µs/rt ≤ uvloop Protocol's, {conns} conns, {sz}",
                             f"{a:.1f} vs {b:.1f}", a <= b))
        a = _median(grid, ours, 1000, size, "p99_us")
        b = _median(grid, "threads", 1000, size, "p99_us")
        if a is not None and b is not None:
            rows.append((f"p99 ≤ ½ threads' p99, 1000 conns, {sz}",
                         f"{a:,.0f} µs vs {b:,.0f} µs", a <= b / 2))
        row = _cell(grid, ours, 10000, size)
        if row is not None and row["stalled_max"] is not None:
            rows.append((f"no stalled connections at 10000, {sz}",
                         f"{row['stalled_max']} stalled (worst run),"
                         f" {row['errors_total']} errors", row["stalled_max"] == 0))
    return rows


def targets_table(data):
    grid = data.get("grid", [])
    sizes = data["settings"]["sizes"]
    lines = []
    for ours in OURS:
        if ours not in data["settings"]["servers"]:
            continue
        rows = _ratio_rows(grid, sizes, ours)
        idle = data.get("idle", {}).get(ours)
        if idle is not None:
            n = data["settings"]["idle_conns"]
            rows.append((f"≤ 10 KiB RSS per idle connection at {n}",
                         f"{idle['median']:.2f} KiB", idle["median"] <= 10))
        if not rows:
            continue
        lines += [f"**{LABELS[ours]}**", "", "| target | measured (medians) | met |",
                  "|---|---|---|"]
        lines += [f"| {t} | {m} | {_met(ok)} |" for t, m, ok in rows]
        lines.append("")
    engine = [r for r in data.get("micro", {}).get("engine", [])
              if r.get("target") is not None]
    if engine:
        lines += ["**engine**", "", "| target | measured (median) | met |",
                  "|---|---|---|"]
    for r in engine:
        lines.append(f"| {r['name']} ≤ {r['target']:g} {r['unit']} |"
                     f" {r['median']:.2f} {r['unit']} | {_met(r['met'])} |")
    return lines


def grid_tables(data):
    grid = data.get("grid", [])
    lines = []
    for size in data["settings"]["sizes"]:
        lines += [f"### {_size_name(size)} messages", "",
                  "| conns | server | round trips/s (min–max) | p50 µs | p99 µs |"
                  " server CPU µs/rt | server RSS MiB | stalled | errors |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for conns in data["settings"]["conns"]:
            for server in data["settings"]["servers"]:
                row = _cell(grid, server, conns, size)
                if row is None:
                    continue
                failed = f" ({row['failed_runs']} runs failed)" if row["failed_runs"] else ""
                lines.append(
                    f"| {conns:,} | {LABELS[server]}{failed} | {_fmt(row['rps'])} |"
                    f" {_fmt(row['p50_us'], spread=False)} |"
                    f" {_fmt(row['p99_us'], spread=False)} |"
                    f" {_fmt(row['cpu_us_per_rt'], 1, spread=False)} |"
                    f" {_fmt(row['rss_mib'], 1, spread=False)} |"
                    f" {row['stalled_max'] if row['stalled_max'] is not None else '—'} |"
                    f" {row['errors_total']} |")
        lines.append("")
    return lines


def compact_tables(data):
    """Per message size, one row per server: round trips/s, server CPU
    µs per round trip and p99 at each connection count (medians)."""
    grid = data.get("grid", [])
    conns = data["settings"]["conns"]
    lines = []
    for size in data["settings"]["sizes"]:
        lines += [f"**{_size_name(size)} messages**: round trips/s · server CPU"
                  " µs per round trip · p99 ms (medians; **N stalled**:"
                  " connections without a round trip in the window, worst"
                  " run)", "",
                  "| server | " + " | ".join(f"{c:,} conns" for c in conns) + " |",
                  "|---|" + "---:|" * len(conns)]
        for server in data["settings"]["servers"]:
            cells = []
            for c in conns:
                row = _cell(grid, server, c, size)
                if row is None or row["rps"] is None:
                    cells.append("—")
                    continue
                stalled = row["stalled_max"]
                mark = f" · **{stalled} stalled**" if stalled else ""
                cells.append(f"{row['rps']['median']:,.0f} · "
                             f"{row['cpu_us_per_rt']['median']:.1f} · "
                             f"{row['p99_us']['median'] / 1000:,.1f}{mark}")
            lines.append(f"| {LABELS[server]} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def idle_table(data):
    idle = data.get("idle")
    if not idle:
        return []
    n = data["settings"]["idle_conns"]
    lines = [f"### Idle memory: RSS per connection, {n:,} idle connections", "",
             "| server | KiB per connection (min–max) |", "|---|---:|"]
    for server in data["settings"]["servers"]:
        lines.append(f"| {LABELS[server]} | {_fmt(idle.get(server), 2)} |")
    return lines + [""]


def micro_tables(data):
    micro = data.get("micro")
    if not micro:
        return []
    lines = ["### Engine microbenchmarks (scripts/bench_engine.py)", "",
             "| benchmark | median | min–max | target | met |",
             "|---|---:|---:|---|---|"]
    for r in micro["engine"]:
        target = "—" if r["target"] is None else f"≤ {r['target']:g} {r['unit']}"
        lines.append(f"| {r['name']} | {r['median']:.2f} {r['unit']} |"
                     f" {r['min']:.2f}–{r['max']:.2f} | {target} | {_met(r['met'])} |")
    hook = micro["hookcost"]
    lines += ["", "### A hooked call that does not need to wait"
              " (scripts/bench_hookcost.py)", "",
              "ns per call, send(1 byte) + recv(1 byte) on a socket pair, median"
              " (min–max):", "",
              "| loop | plain python (raw libc) | interpose, `no_hooks()` |"
              " interpose, hooked | hook overhead |",
              "|---|---:|---:|---:|---:|"]
    for key, name in (("c", "C loop (ctypes call)"), ("py", "Python os.write/os.read")):
        m = hook[key]
        over = m["hooked"]["median"] - m["plain"]["median"]
        lines.append(f"| {name} | {_fmt(m['plain'], 0)} | {_fmt(m['no_hooks'], 0)} |"
                     f" {_fmt(m['hooked'], 0)} | {over:+.0f} |")
    return lines + [""]


def header(data):
    m = data["machine"]
    s = data["settings"]
    peers = ", ".join(f"{k} {v}" for k, v in m["peers"].items())
    return [
        f"Run {data['started']}, {data['minutes']} min: {m['cpu_model']},"
        f" {m['cpus']} CPUs, {m['memory_gib']} GiB, Linux {m['kernel']},"
        f" CPython {m['python']}; {peers}.",
        "",
        f"Server pinned to CPU {data['pinning']['server_cpu']}, load generator"
        f" (scripts/loadgen.c) to CPU {data['pinning']['load_cpu']};"
        f" {s['reps']} interleaved repetitions, {s['duration']:g} s measured"
        f" after {s['warmup']:g} s of warm-up per run; medians"
        " (min–max).  Server CPU µs/rt = server process CPU time in the"
        " window / round trips.",
        "",
    ]


def plot(data, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = data.get("grid", [])
    paths = []
    for size in data["settings"]["sizes"]:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=72)
        for server in data["settings"]["servers"]:
            xs, rps, p99 = [], [], []
            for conns in data["settings"]["conns"]:
                row = _cell(grid, server, conns, size)
                if row is None or row["rps"] is None:
                    continue
                xs.append(conns)
                rps.append(row["rps"]["median"])
                p99.append(row["p99_us"]["median"] / 1000)
            style = "-o" if server in OURS else "--."
            ax1.plot(xs, rps, style, label=LABELS[server], linewidth=1.5)
            ax2.plot(xs, p99, style, label=LABELS[server], linewidth=1.5)
        for ax, title in ((ax1, "round trips/s"), (ax2, "p99 latency (ms)")):
            ax.set_xscale("log")
            ax.set_xlabel("connections")
            ax.set_title(f"{title}, {_size_name(size)} messages")
            ax.grid(True, alpha=0.3)
        ax2.set_yscale("log")
        ax1.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out, f"echo_{size}.png")
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def render(data):
    lines = ["# Benchmark results", ""] + header(data)
    lines += ["## Targets (issue #5)", ""] + targets_table(data)
    lines += ["", "## Echo grid, at a glance", ""] + compact_tables(data)
    lines += ["## Echo grid", ""] + grid_tables(data)
    lines += idle_table(data) + micro_tables(data)
    return "\n".join(lines)


def write(data, out):
    os.makedirs(out, exist_ok=True)
    json_path = os.path.join(out, "results.json")
    with open(json_path, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    md_path = os.path.join(out, "results.md")
    with open(md_path, "w") as f:
        f.write(render(data) + "\n")
    return [json_path, md_path, *plot(data, out)]


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        "bench-results", "results.json")
    with open(path) as f:
        saved = json.load(f)
    print("\n".join(write(saved, os.path.dirname(os.path.abspath(path)))))
