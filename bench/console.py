#!/usr/bin/env python3
"""The console's list pages with a large history: 100,000 sessions and
1,000,000 audit entries in the store (SQLite), each list endpoint timed
from the client (curl, TLS) as an admin and as a person who sees only a
few sessions. Not run in CI: timings are not assertions.

Usage: bench/console.py [--binary target/release/portcullis]
                        [--sessions 100000] [--entries 1000000] [--reps 30]

Writes bench/results/<date>-console.md.
"""
import argparse, datetime, json, os, sqlite3, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(binary, args, **kw):
    return subprocess.run([binary] + args, check=True, capture_output=True, text=True, **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/portcullis"))
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=30)
    a = ap.parse_args()
    if not os.path.exists(a.binary):
        sys.exit(f"build it first: cargo build --release (no {a.binary})")
    data = tempfile.mkdtemp(prefix="pcl-console-bench-")
    qs = subprocess.Popen([a.binary, "quickstart", "--data-dir", data],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    env_file = os.path.join(data, "quickstart.env")
    for _ in range(300):
        if os.path.exists(env_file):
            break
        time.sleep(0.1)
    time.sleep(1)
    qs.terminate()
    qs.wait()

    # The history, written straight into the store (the list pages read it;
    # nothing here is verified as a chain).
    db = sqlite3.connect(os.path.join(data, "portcullis.db"))
    t0 = int(time.time() * 1000) - a.sessions * 1000
    people = ["alice", "bob", "carol", "dave"]
    rows = []
    for i in range(a.sessions):
        # alice has one session in a thousand; the rest are others' agents.
        who = "user:alice" if i % 1000 == 0 else f"agent:bot{i % 50}@{people[1 + i % 3]}"
        rows.append((f"{i:032x}", who, f"db{i % 7}", "postgres", t0 + i * 1000, t0 + i * 1000 + 500, "caller_closed"))
    db.executemany("INSERT INTO sessions (id, principal, connection, protocol, started_at_ms, ended_at_ms, outcome) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    start = db.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_log").fetchone()[0]
    batch = []
    for i in range(a.entries):
        event = json.dumps({"kind": "session_end", "session": f"{i:032x}", "outcome": "caller_closed"})
        batch.append((start + 1 + i, t0 + i, "00" * 32, "11" * 32, event))
        if len(batch) == 50_000:
            db.executemany("INSERT INTO audit_log (seq, time_ms, prev_hash, hash, event) VALUES (?, ?, ?, ?, ?)", batch)
            batch = []
    if batch:
        db.executemany("INSERT INTO audit_log (seq, time_ms, prev_hash, hash, event) VALUES (?, ?, ?, ?, ?)", batch)
    db.commit()
    db.close()

    gw = subprocess.Popen([a.binary, "quickstart", "--data-dir", data],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for _ in range(300):
        time.sleep(0.1)
        env = dict(l.split("export ", 1)[1].split("=", 1) for l in open(env_file) if l.startswith("export "))
        if "PORTCULLIS_CONSOLE_URL" in env:
            break
    time.sleep(1)
    env = {k: v.strip().strip("'\"") for k, v in
           (l.split("export ", 1)[1].split("=", 1) for l in open(env_file) if l.startswith("export "))}
    url, ca = env["PORTCULLIS_URL"], env["PORTCULLIS_CA"]
    cfg = os.path.join(data, "portcullis.toml")

    def session_cookie(link):
        out = subprocess.run(["curl", "-sS", "-D", "-", "-o", "/dev/null", "--cacert", ca, link],
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.lower().startswith("set-cookie: __host-portcullis-console="):
                return line.split(":", 1)[1].strip().split(";")[0]
        sys.exit(f"no session from {link}: {out}")

    admin = session_cookie(env["PORTCULLIS_CONSOLE_URL"])
    alice_link = run(a.binary, ["--config", cfg, "console", "link", "--principal", "user:alice",
                                "--gateway", url]).stdout.strip()
    alice = session_cookie(alice_link)

    def timed(cookie, path):
        times = []
        for _ in range(a.reps):
            out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total} %{time_appconnect}",
                                  "--cacert", ca, "-H", f"cookie: {cookie}", url + path],
                                 capture_output=True, text=True).stdout.split()
            assert out[0] == "200", (path, out)
            # The answer, without the TLS handshake of a fresh curl.
            times.append((float(out[1]) - float(out[2])) * 1000)
        return statistics.median(times), max(times)

    cases = [
        ("sessions, first page (admin)", admin, "/api/v1/sessions?limit=50"),
        ("sessions, filtered by connection (admin)", admin, "/api/v1/sessions?connection=db3&limit=50"),
        ("sessions, filtered by principal (admin)", admin, "/api/v1/sessions?principal=user:alice&limit=50"),
        ("sessions, page deep in history (admin)", admin, f"/api/v1/sessions?before={t0 + a.sessions * 500}&limit=50"),
        ("sessions as alice (1 in 1,000 is hers)", alice, "/api/v1/sessions?limit=50"),
        ("audit, first page (admin)", admin, "/api/v1/audit?limit=100"),
        ("audit, page deep in history (admin)", admin, f"/api/v1/audit?before={a.entries // 2}&limit=100"),
        ("reviews (admin)", admin, "/api/v1/reviews"),
    ]
    results = [(name, *timed(cookie, path)) for name, cookie, path in cases]
    gw.terminate()
    gw.wait()

    date = datetime.date.today().isoformat()
    out = os.path.join(ROOT, "bench", "results", f"{date}-console.md")
    with open(out, "w") as f:
        f.write(f"# Console list pages with a large history ({date})\n\n")
        f.write(f"{a.sessions:,} sessions and {a.entries:,} audit entries in the quickstart's SQLite store; "
                f"{a.reps} requests per endpoint from curl over TLS on loopback (handshake excluded); "
                f"binary `{os.path.relpath(a.binary, ROOT)}`; 2 cores.\n\n")
        f.write("| list | median ms | max ms |\n| --- | ---: | ---: |\n")
        for name, med, mx in results:
            f.write(f"| {name} | {med:.1f} | {mx:.1f} |\n")
    print(open(out).read())


if __name__ == "__main__":
    main()
