#!/usr/bin/env python3
"""Print bench/run.sh's results: best round per contender, and the ratios to the anchors."""
import collections
import statistics
import sys

results, sizes_file = sys.argv[1], sys.argv[2]
csv_bytes, small, large, large_mib, small_bytes = (int(a) for a in sys.argv[3:8])
MIB = 2**20

best = collections.OrderedDict()
walls = collections.defaultdict(list)
for line in open(results):
    group, name, wall, cpu, rss, server = line.rstrip("\n").split("\t")
    cur = (float(wall), float(cpu), float(rss), float(server))
    walls[(group, name)].append(cur[0])
    if (group, name) not in best or cur[0] < best[(group, name)][0]:
        best[(group, name)] = cur
sizes = dict(l.rstrip("\n").split("\t") for l in open(sizes_file))
if not any(g == "dump" for g, _ in best):
    csv_bytes = 0


def table(title, columns, left=1):
    """A section's title and its Markdown table's header: the first `left` columns are
    names (left-aligned), the rest numbers (right-aligned)."""
    print(f"\n## {title}")
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join(["---"] * left + ["---:"] * (len(columns) - left)) + "|")


if csv_bytes:
    table(f"Dump: {csv_bytes / MIB:.0f} MiB of CSV, best round; server CPU = PostgreSQL + S3 server during the run", ["contender", "wall s", "CPU s", "server CPU s", "peak RSS MiB", "CSV MiB/s", "output bytes", "speed vs (b)", "size vs (b)"])
    anchor = best[("dump", "(b) psql | gzip -9 | aws s3 cp")][0]
    anchor_size = int(sizes.get("(b) psql | gzip -9 | aws s3 cp", 0)) or 1
    floor = best[("dump", "(a) psql COPY > /dev/null")][0]
    for (group, name), (wall, cpu, rss, server) in best.items():
        if group != "dump":
            continue
        volume = csv_bytes * (4 if "4x" in name else 1)
        size = int(sizes.get(name, 0))
        size_ratio = f"{size / anchor_size:.3f}" if size else ""
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {server:.2f} | {rss:.0f} | {volume / MIB / wall:.1f} | {size or ''} | {anchor / wall:.2f}x | {size_ratio} |")
    lvl1 = best[("dump", "(d) egress-dump --compression-level 1")][0]
    print(f"\nlevel 1 wall / floor (a) wall = {lvl1 / floor:.2f}")
    jobs = [(n, v) for (g, n), v in best.items() if g == "dump 4 tables"]
    if jobs:
        table(f"Dump of 4 tables (the same {csv_bytes / MIB:.0f} MiB split by time), one snapshot", ["contender", "wall s", "CPU s", "server CPU s", "peak RSS MiB"])
        for name, (wall, cpu, rss, server) in jobs:
            print(f"| {name} | {wall:.2f} | {cpu:.2f} | {server:.2f} | {rss:.0f} |")
    split = [(g, n, v) for (g, n), v in best.items() if g.startswith("dump split")]
    if split:
        table(f"One {csv_bytes / MIB:.0f} MiB table: split in ctid chunks vs one stream", ["group", "contender", "wall s", "CPU s", "server CPU s", "peak RSS MiB", "CSV MiB/s"], left=2)
        for group, name, (wall, cpu, rss, server) in split:
            print(f"| {group[5:]} | {name} | {wall:.2f} | {cpu:.2f} | {server:.2f} | {rss:.0f} | {csv_bytes / MIB / wall:.1f} |")
        for level in (1, 6):
            whole = best.get((f"dump split L{level}", f"egress-dump -L{level} --jobs 2, one stream"))
            chunked = best.get((f"dump split L{level}", f"egress-dump -L{level} --jobs 2 --split-larger-than 64MiB"))
            if whole and chunked:
                print(f"level {level}: split is {whole[0] / chunked[0]:.2f}x the speed of one stream (time ratio {chunked[0] / whole[0]:.2f})")

shards = [(n, v) for (g, n), v in best.items() if g == "shards"]
if shards:
    table("One day of four tables shared by N processes (--shards), one snapshot; best round", ["contender", "wall s", "CPU s", "server CPU s", "peak RSS MiB (largest process)", "speed vs 1 process"])
    one = shards[0][1][0]
    for name, (wall, cpu, rss, server) in shards:
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {server:.2f} | {rss:.0f} | {one / wall:.2f}x |")

dests = collections.OrderedDict()
for (group, name), v in best.items():
    if group.startswith("sync "):
        dest, phase = group[5:].split(": ", 1)
        dests.setdefault(dest, collections.OrderedDict()).setdefault(phase, []).append((name, v))
for dest, groups in dests.items():
    table(f"Sync into {dest}: {small} small objects (4-64 KiB), {large} x {large_mib} MiB; best of rounds; best rclone = faster of its two settings", ["phase", "contender", "wall s", "CPU s", "server CPU s", "peak RSS MiB", "objects/s", "MiB/s"], left=2)
    summary = []
    for phase, entries in groups.items():
        if phase.startswith("small"):
            count, volume = small, small_bytes
        elif phase.startswith("large"):
            count, volume = large, large * large_mib * MIB
        else:
            count, volume = small + large, 0
        for name, (wall, cpu, rss, server) in entries:
            mbs = f"{volume / MIB / wall:.1f}" if volume else ""
            print(f"| {phase} | {name} | {wall:.2f} | {cpu:.2f} | {server:.2f} | {rss:.0f} | {count / wall:.0f} | {mbs} |")
        rc = min(v[0] for n, v in entries if n.startswith("rclone"))
        eg = next(v[0] for n, v in entries if n == "egress-sync")
        summary.append(f"{phase}: egress-sync is {rc / eg:.2f}x the best rclone's speed (time ratio {eg / rc:.2f})")
    print()
    print("\n".join(summary))

many = [(g, n, v) for (g, n), v in best.items() if g.startswith("many")]
if many:
    table("Many small objects, local directories", ["run", "contender", "wall s", "CPU s", "peak RSS MiB"], left=2)
    for group, name, (wall, cpu, rss, server) in many:
        print(f"| {group[6:]} | {name} | {wall:.2f} | {cpu:.2f} | {rss:.0f} |")

listing = [(g, n, v) for (g, n), v in best.items() if g.startswith("listing")]
if listing:
    table("Listings in Ceph RGW (input and output in one RGW); time / rclone's, time / one stream's", ["run", "contender", "wall s", "CPU s", "peak RSS MiB", "/ rclone", "/ one stream"], left=2)
    for group, name, (wall, cpu, rss, server) in listing:
        entries = [(n, v) for (g, n), v in best.items() if g == group]
        rc = min((v[0] for n, v in entries if n.startswith("rclone")), default=0)
        one = next((v[0] for n, v in entries if n.endswith("--list-jobs 1")), 0)
        vs_rc = f"{wall / rc:.3f}" if rc and not name.startswith("rclone") else ""
        vs_one = f"{wall / one:.2f}" if one and name == "egress-sync" else ""
        print(f"| {group[9:]} | {name} | {wall:.2f} | {cpu:.2f} | {rss:.0f} | {vs_rc} | {vs_one} |")

parquet = [(n, v) for (g, n), v in best.items() if g == "parquet"]
if parquet:
    # "(floor)" is PostgreSQL alone (psql reads the COPY and throws it away): what no
    # client can beat on this machine, so the ratio any contender could reach at most.
    duck = next(v for n, v in parquet if n.startswith("DuckDB"))
    duck_size = int(next((s for n, s in sizes.items() if n.startswith("DuckDB")), 0)) or 1
    duck_median = statistics.median(next(w for (g, n), w in walls.items() if g == "parquet" and n.startswith("DuckDB")))
    table("Parquet from PostgreSQL, the bench table to a local file; best round (CPU, RSS of that round) and median; ratios to DuckDB's", ["contender", "wall s", "median wall s", "CPU s", "server CPU s", "peak RSS MiB", "file bytes", "speed vs DuckDB (best)", "speed vs DuckDB (median)", "RSS vs DuckDB", "size vs DuckDB"])
    for name, (wall, cpu, rss, server) in parquet:
        size = int(sizes.get(name, 0))
        median = statistics.median(walls[("parquet", name)])
        size_ratio = f"{size / duck_size:.2f}" if size else ""
        print(f"| {name} | {wall:.2f} | {median:.2f} | {cpu:.2f} | {server:.2f} | {rss:.0f} | {size or ''} | "
              f"{duck[0] / wall:.2f}x | {duck_median / median:.2f}x | {rss / duck[2]:.2f} | {size_ratio} |")
