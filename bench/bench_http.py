"""HTTP benchmark: the same job through each system, TLS in and TLS out,
with the upstream's API key injected by the proxy.

direct      client -> upstream nginx (the client sends the key itself)
portcullis  client -> Portcullis -> upstream (token in, key injected)
portcullis+agent  client -> Portcullis -> agent (HTTP/2 link) -> upstream (the agent injects the key)
nginx       client -> nginx reverse proxy -> upstream
haproxy     client -> HAProxy -> upstream

Measured with wrk: latency at 1 keep-alive connection (p50, p99), requests
per second and p99 at 64 connections, with 1 KiB and 64 KiB JSON
responses; masking off and on (Portcullis only); new-connection rate (a
full TLS handshake per request). Resident memory of Portcullis fresh (before
any load), idle after the load (and that over fresh), and with 1,000 and 9,000 idle TLS connections (the hard limit on open files here is 20,000, and each idle connection costs the client a socket too). Results go to
bench/results/<date>-http.md and .json (quick runs: <date>-http-quick.*, not kept).
"""
import datetime, json, os, re, resource, shutil, signal, socket, ssl, statistics, subprocess, sys, time

KEY = "bench-upstream-key"


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def start(cmd, log, **kw):
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"), **kw)


def raise_nofile():
    """As many open files as the hard limit allows (10,000 idle sockets)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def rss_parts_kib(pid):
    """Resident memory split into anonymous (the heap: what a load can
    leave behind) and file-backed (the binary's pages read so far)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            for k in ("RssAnon", "RssFile"):
                if line.startswith(k + ":"):
                    out[k] = int(line.split()[1])
    return out


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(parts[11]) + int(parts[12])) / tick


def parse_wrk(out):
    def dur(v, unit):
        v = float(v)
        return v * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    res = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else None
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        res[f"p{pct}_ms"] = dur(*m.groups()) if m else None
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["errors"] = int(m.group(1)) if m else 0
    return res


def run(args, root, certs, free_port, wait_port, start_agent):
    import tempfile
    d = tempfile.mkdtemp(prefix="portcullis-bench-http-")
    os.chmod(d, 0o755)
    certs(d)
    with open(f"{d}/server.pem", "w") as f:
        f.write(open(f"{d}/server.crt").read() + open(f"{d}/server.key").read())
    os.makedirs(f"{d}/www", exist_ok=True)
    for name, size in (("1k", 1024), ("64k", 65536)):
        # Valid JSON of about `size` bytes: realistic records, no secrets.
        items = []
        while len(json.dumps({"items": items})) < size - 120:
            n = len(items)
            items.append({"sku": f"SKU-{n:08d}", "title": "Stainless steel bottle", "price": 19.99,
                          "created": "2026-11-25T20:08:17Z"})
        write(f"{d}/www/{name}.json", json.dumps({"items": items}))
    ports = {k: free_port() for k in ("upstream", "nginx", "haproxy", "floor", "floor2")}
    procs = []
    memory = None
    try:
        # TLS 1.2 and 1.3 for nginx as for the others: before 1.23.4
        # (Debian 12 ships 1.22) nginx offers only TLS 1.2 by default, whose
        # resumed handshakes skip the key exchange TLS 1.3 always does, so
        # runs before 2026-12-04 (late) compared new connections unevenly.
        write(f"{d}/upstream.conf", f"""
worker_processes 1; pid {d}/upstream.pid; error_log {d}/upstream-error.log; daemon off;
events {{ worker_connections 4096; }}
http {{ access_log off; types {{ application/json json; }}
  server {{ listen 127.0.0.1:{ports['upstream']} ssl;
    ssl_certificate {d}/server.crt; ssl_certificate_key {d}/server.key; ssl_protocols TLSv1.2 TLSv1.3;
    keepalive_requests 100000;
    root {d}/www;
    location / {{ if ($http_x_api_key != "{KEY}") {{ return 401; }} try_files $uri =404; }} }} }}
""")
        write(f"{d}/nginx.conf", f"""
worker_processes 1; pid {d}/nginx.pid; error_log {d}/nginx-error.log; daemon off;
events {{ worker_connections 4096; }}
http {{ access_log off;
  upstream up {{ server 127.0.0.1:{ports['upstream']}; keepalive 128; }}
  server {{ listen 127.0.0.1:{ports['nginx']} ssl;
    ssl_certificate {d}/server.crt; ssl_certificate_key {d}/server.key; ssl_protocols TLSv1.2 TLSv1.3;
    keepalive_requests 100000;
    location / {{ proxy_pass https://up; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Api-Key "{KEY}"; proxy_set_header Authorization "";
      proxy_ssl_verify on; proxy_ssl_trusted_certificate {d}/ca.pem; proxy_ssl_name localhost;
      proxy_ssl_server_name on; proxy_ssl_session_reuse on; }} }} }}
""")
        write(f"{d}/haproxy.cfg", f"""
global
  maxconn 9000
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:{ports['haproxy']} ssl crt {d}/server.pem
  http-request set-header X-Api-Key {KEY}
  http-request del-header Authorization
  default_backend be
backend be
  http-reuse always
  server up 127.0.0.1:{ports['upstream']} ssl verify required ca-file {d}/ca.pem sni str(localhost) verifyhost localhost
""")
        write(f"{d}/key", KEY + "\n")
        agent_port = free_port()
        write(f"{d}/portcullis.toml", f"""
[gateway]
listen = "127.0.0.1:0"
cert = "server.crt"
key = "server.key"

[limits]
max_header_bytes = 16384

[[connections]]
name = "bench"
type = "http"
url = "https://localhost:{ports['upstream']}"
ca_file = "ca.pem"
credential = {{ header = "x-api-key", secret = "file:key" }}

[[connections]]
name = "bench-masked"
type = "http"
url = "https://localhost:{ports['upstream']}"
ca_file = "ca.pem"
credential = {{ header = "x-api-key", secret = "file:key" }}

[[connections]]
name = "bench-agent"
type = "http"
agent = "bench"

[agent_listener]
listen = "127.0.0.1:{agent_port}"
ca_file = "ca.pem"

[[masking.rules]]
connections = ["bench-masked"]

[[grants]]
principals = ["agent:bench"]
connections = ["bench", "bench-masked", "bench-agent"]
""")
        raise_limits = raise_nofile
        procs.append(start(["nginx", "-c", f"{d}/upstream.conf"], f"{d}/upstream.log", preexec_fn=raise_limits))
        procs.append(start(["nginx", "-c", f"{d}/nginx.conf"], f"{d}/nginx.log", preexec_fn=raise_limits))
        procs.append(start(["haproxy", "-f", f"{d}/haproxy.cfg"], f"{d}/haproxy.log", preexec_fn=raise_limits))
        # hyper + rustls + tokio doing only what nginx does here: what
        # Portcullis costs beyond its libraries (not a peer: no ratio is
        # taken against it as "best peer").
        floor = start([os.path.join(root, "target/release/examples/floor_proxy"), f"127.0.0.1:{ports['floor']}",
                            f"{d}/server.crt", f"{d}/server.key", f"https://localhost:{ports['upstream']}",
                            f"{d}/ca.pem", "x-api-key", f"{d}/key"], f"{d}/floor.log", preexec_fn=raise_limits)
        procs.append(floor)
        # A second floor in front of the first: the cost of one more
        # TLS-terminating process on these cores with the same libraries
        # (it reaches the first over HTTP/2, as the gateway reaches an
        # agent). Its ratio to one floor is what a second hop leaves, to
        # hold "through the agent / in-process" against.
        floor2 = start([os.path.join(root, "target/release/examples/floor_proxy"), f"127.0.0.1:{ports['floor2']}",
                        f"{d}/server.crt", f"{d}/server.key", f"https://localhost:{ports['floor']}",
                        f"{d}/ca.pem", "x-api-key", f"{d}/key"], f"{d}/floor2.log", preexec_fn=raise_limits)
        procs.append(floor2)
        exe = os.path.join(root, "target/release/portcullis")
        cfg = f"{d}/portcullis.toml"
        token = subprocess.run([exe, "--config", cfg, "token", "create", "--principal", "agent:bench"],
                               check=True, capture_output=True, text=True).stdout.strip()
        # jemalloc writes its totals when the gateway exits (SIGTERM below):
        # what is allocated against what is resident tells live data from
        # pages the allocator keeps.
        gw_env = {**os.environ, "_RJEM_MALLOC_CONF": "stats_print:true,stats_print_opts:gdablxeh"}
        gw = subprocess.Popen([exe, "--config", cfg, "--log", "warn", "gateway"], stdout=subprocess.PIPE,
                              stderr=open(f"{d}/portcullis.log", "w"), text=True, preexec_fn=raise_limits,
                              env=gw_env)
        procs.append(gw)
        line = gw.stdout.readline()
        gw_port = int(re.search(r"url=https://localhost:(\d+)", line).group(1))
        agent = start_agent(exe, d, agent_port, (
            '\n[[connections]]\nname = "bench-agent"\ntype = "http"\n'
            f'url = "https://localhost:{ports["upstream"]}"\nca_file = "ca.pem"\n'
            'credential = { header = "x-api-key", secret = "file:key" }\n'))
        procs.append(agent)
        for name, p in ports.items():
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", p), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                logs = {f: open(f"{d}/{f}").read() for f in os.listdir(d) if f.endswith(".log")}
                sys.exit(f"{name} is not listening on {p}: {json.dumps(logs, indent=1)}")

        # Resident memory before any load (the target compares the idle
        # figure after the load with this one).
        fresh_kib = rss_kib(gw.pid)
        base = {
            "direct": (f"https://localhost:{ports['upstream']}", ["-H", f"X-Api-Key: {KEY}"]),
            "portcullis": (f"https://localhost:{gw_port}/c/bench", ["-H", f"Authorization: Bearer {token}"]),
            "portcullis+mask": (f"https://localhost:{gw_port}/c/bench-masked", ["-H", f"Authorization: Bearer {token}"]),
            "portcullis+agent": (f"https://localhost:{gw_port}/c/bench-agent", ["-H", f"Authorization: Bearer {token}"]),
            "nginx": (f"https://localhost:{ports['nginx']}", []),
            "floor": (f"https://localhost:{ports['floor']}", []),
            "floor+floor": (f"https://localhost:{ports['floor2']}", []),
            "haproxy": (f"https://localhost:{ports['haproxy']}", []),
        }
        # Everyone must answer 200 with the body before anything is timed
        # (the agent may take a moment to connect).
        for name, (url, hdr) in base.items():
            for _ in range(50):
                probe = subprocess.run(["curl", "-sS", "--cacert", f"{d}/ca.pem", "-o", "/dev/null", "-w", "%{http_code}",
                                        *sum([["-H", x] for x in hdr[1::2]], []), f"{url}/1k.json"], capture_output=True, text=True)
                if probe.stdout == "200":
                    break
                time.sleep(0.2)
            h = [x for x in hdr]
            r = subprocess.run(["curl", "-sS", "--cacert", f"{d}/ca.pem", "-o", "/dev/null", "-w", "%{http_code}",
                                *sum([["-H", x] for x in h[1::2]], []), f"{url}/1k.json"], capture_output=True, text=True)
            if r.stdout != "200":
                sys.exit(f"{name} is not serving: {r.stdout} {r.stderr}")

        jobs = []
        for size in ("1k", "64k"):
            jobs.append((f"latency c=1 {size}", ["-t1", "-c1"], size, ["direct", "portcullis", "portcullis+mask", "portcullis+agent", "floor", "floor+floor", "nginx", "haproxy"]))
            jobs.append((f"throughput c=64 {size}", ["-t2", "-c64"], size, ["direct", "portcullis", "portcullis+mask", "portcullis+agent", "floor", "floor+floor", "nginx", "haproxy"]))
        jobs.append(("new connection per request c=16 1k", ["-t2", "-c16", "-H", "Connection: close"], "1k",
                     ["direct", "portcullis", "floor", "nginx", "haproxy"]))
        results, loads, cpu = {}, [], {}
        # Resident memory after each job, to tell which load leaves what.
        after_job = {"fresh": rss_parts_kib(gw.pid)}
        for name, flags, size, systems in jobs:
            for _ in range(args.reps):
                for s in systems:
                    url, hdr = base[s]
                    pids = ([gw.pid, agent.pid] if s == "portcullis+agent" else [gw.pid] if s.startswith("portcullis")
                            else [floor.pid] if s == "floor"
                            else [floor2.pid, floor.pid] if s == "floor+floor" else [])
                    before = sum(cpu_seconds(p) for p in pids) if pids else None
                    out = subprocess.run(["wrk", *flags, "-d", f"{args.seconds}s", "--latency", *hdr, f"{url}/{size}.json"],
                                         capture_output=True, text=True).stdout
                    r = parse_wrk(out)
                    loads.append(os.getloadavg()[0])
                    if before is not None and r["requests"]:
                        cpu.setdefault(s, []).append((sum(cpu_seconds(p) for p in pids) - before) / r["requests"] * 1e6)
                    results.setdefault(name, {}).setdefault(s, []).append(r)
            after_job[name] = rss_parts_kib(gw.pid)
            print(f"done: {name}", file=sys.stderr)

        memory = {"fresh_kib": fresh_kib, "after_job": after_job, **idle_memory(gw.pid, gw_port, f"{d}/ca.pem")}
        memory["after_load_over_fresh"] = round(memory["idle_kib"] / max(fresh_kib, 1), 2)
        memory["after_10s_over_fresh"] = round(memory["idle_10s_kib"] / max(fresh_kib, 1), 2)
        memory["after_expiry_over_fresh"] = round(memory["idle_after_expiry_kib"] / max(fresh_kib, 1), 2)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if memory is not None:
            memory["allocator_at_exit_kib"] = allocator_totals(f"{d}/portcullis.log")
        shutil.rmtree(d, ignore_errors=True)
    report(root, args, results, loads, cpu, memory)


def allocator_totals(log):
    """jemalloc's totals at exit, in KiB: allocated (live), active, metadata, resident, mapped, retained."""
    try:
        text = open(log).read()
    except OSError:
        return None
    m = re.search(r"Allocated: (\d+), active: (\d+), metadata: (\d+).*?resident: (\d+), mapped: (\d+), retained: (\d+)", text)
    if not m:
        return None
    keys = ("allocated", "active", "metadata", "resident", "mapped", "retained")
    return {k: int(v) // 1024 for k, v in zip(keys, m.groups())}


def idle_memory(pid, port, ca):
    """RSS idle, and with 1,000 and 9,000 idle TLS connections (the hard limit on open files here is 20,000, and each idle connection costs the client a socket too)."""
    raise_nofile()
    ctx = ssl.create_default_context(cafile=ca)
    out = {"idle_kib": rss_kib(pid)}
    # Ten seconds later: what the allocator gives back once the load has
    # ended (the after / fresh target reads this one too).
    time.sleep(10)
    out["idle_10s_kib"] = rss_kib(pid)
    out["idle_10s_parts_kib"] = rss_parts_kib(pid)
    socks = []
    for target in (1000, 9000):
        while len(socks) < target:
            try:
                s = socket.create_connection(("127.0.0.1", port))
                socks.append(ctx.wrap_socket(s, server_hostname="localhost"))
            except OSError as e:
                print(f"stopped at {len(socks)} connections: {e}", file=sys.stderr)
                break
        time.sleep(1)
        out[f"conns_{len(socks)}_kib"] = rss_kib(pid)
        out[f"bytes_per_conn_at_{len(socks)}"] = (rss_kib(pid) - out["idle_kib"]) * 1024 // max(len(socks), 1)
    for s in socks:
        s.close()
    # Once the kept target connections have expired (60 s idle, like
    # nginx's keepalive they are a cache the load filled), what is left.
    time.sleep(65)
    out["idle_after_expiry_kib"] = rss_kib(pid)
    out["idle_after_expiry_parts_kib"] = rss_parts_kib(pid)
    return out


def report(root, args, results, loads, cpu, memory):
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    med = lambda xs: statistics.median(xs) if xs else None
    rows = []
    data = {}
    for job, per in results.items():
        summary = {}
        for s, runs in per.items():
            summary[s] = {k: med([r[k] for r in runs if r[k] is not None]) for k in ("rps", "p50_ms", "p99_ms")}
            summary[s]["rps_range"] = [min(r["rps"] or 0 for r in runs), max(r["rps"] or 0 for r in runs)]
            summary[s]["errors"] = sum(r["errors"] for r in runs)
        data[job] = summary
        direct = summary.get("direct", {})
        peers = [summary[p]["rps"] for p in ("nginx", "haproxy") if p in summary and summary[p]["rps"]]
        best_peer = max(peers) if peers else None
        floor_rps = summary.get("floor", {}).get("rps")
        for s, v in summary.items():
            ratio_f = (f"{v['rps'] / floor_rps:.2f}" if v["rps"] and floor_rps
                       and (s.startswith("portcullis") or s == "floor+floor") else "-")
            ratio_d = f"{v['rps'] / direct['rps']:.2f}" if v["rps"] and direct.get("rps") else "-"
            ratio_p = f"{v['rps'] / best_peer:.2f}" if v["rps"] and best_peer else "-"
            added = (f"{(v['p50_ms'] - direct['p50_ms']):+.3f}" if v["p50_ms"] is not None and direct.get("p50_ms") is not None else "-")
            rows.append(f"| {job} | {s} | {v['rps']:,.0f} [{v['rps_range'][0]:,.0f}-{v['rps_range'][1]:,.0f}] | "
                        f"{v['p50_ms'] if v['p50_ms'] is not None else '-'} | {v['p99_ms'] if v['p99_ms'] is not None else '-'} | "
                        f"{added} | {ratio_d} | {ratio_p} | {ratio_f} | {v['errors']} |")
    cpu_us = {s: med(v) for s, v in cpu.items()}
    # One more hop, ours against the libraries': through the agent over
    # in-process, beside a second floor over one.
    hops = []
    for job, summary in data.items():
        rps = {s: (summary.get(s) or {}).get("rps") for s in ("portcullis", "portcullis+agent", "floor", "floor+floor")}
        if all(rps.values()):
            hops.append(f"{job}: {rps['portcullis+agent'] / rps['portcullis']:.2f} / "
                        f"{rps['floor+floor'] / rps['floor']:.2f}")
    md = [f"# HTTP through Portcullis, nginx and HAProxy ({date})", "",
          f"Machine: {os.cpu_count()} cores, load average {min(loads):.2f}-{max(loads):.2f}. Median of {args.reps} "
          f"interleaved wrk runs of {args.seconds} s each [min-max RPS]. TLS on both hops everywhere; the proxies "
          "inject the upstream's API key; Portcullis also checks a bearer token, a grant, and writes a session (audit entries and a recording) per caller connection. "
          "`floor` is hyper, rustls and tokio doing only what nginx does (crates/proto-http/examples/floor_proxy.rs): "
          "/ floor is what Portcullis's own work leaves of its libraries' speed. `floor+floor` is a second floor in front "
          "of the first (over HTTP/2, as the gateway reaches an agent): what one more TLS-terminating process costs on "
          "these cores.", "",
          "| job | system | requests/s | p50 ms | p99 ms | added p50 ms vs direct | / direct | / best peer | / floor | non-2xx |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |", *rows, "",
          "CPU per request in the Portcullis and floor processes (µs; through the agent: the gateway and the agent; "
          "floor+floor: both floors): " + ", ".join(f"{k} {v:.0f}" for k, v in cpu_us.items() if v), "",
          "A second hop, through the agent / in-process against floor+floor / floor: " + "; ".join(hops), "",
          "Resident memory of the Portcullis process: " + json.dumps(memory), ""]
    out_dir = os.path.join(root, "bench", "results")
    os.makedirs(out_dir, exist_ok=True)
    # Quick runs go beside full ones, never over them.
    base = os.path.join(out_dir, f"{date}-http" + ("-quick" if args.seconds < 5 or args.reps < 3 else ""))
    # A second full run on one day goes beside the first, never over it.
    n = 2
    while os.path.exists(base + ".md") and not base.endswith("-quick"):
        base = os.path.join(out_dir, f"{date}-http-{n}")
        n += 1
    with open(base + ".md", "w") as f:
        f.write("\n".join(md))
    with open(base + ".json", "w") as f:
        json.dump({"date": date, "cores": os.cpu_count(), "seconds": args.seconds, "reps": args.reps,
                   "load_average": [min(loads), max(loads)], "jobs": data, "cpu_us_per_request": cpu_us,
                   "memory": memory}, f, indent=2)
    print("\n".join(md))
