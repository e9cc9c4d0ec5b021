"""An OTLP/HTTP trace receiver for the tests: decodes each export with the
OpenTelemetry project's own protobuf definitions (PyPI
`opentelemetry-proto`) and writes one JSON line per span to --out, and
every raw body to --raw (for canary searches).

    python3 otlp_receiver.py --out spans.jsonl --raw raw.bin
prints `otlp: ready port=N` once it listens on 127.0.0.1.
"""

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--raw", required=True)
    args = ap.parse_args()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.path != "/v1/traces":
                self.send_response(404)
                self.end_headers()
                return
            req = trace_service_pb2.ExportTraceServiceRequest()
            req.ParseFromString(body)
            lines = []
            for rs in req.resource_spans:
                service = {a.key: value(a.value) for a in rs.resource.attributes}.get(
                    "service.name"
                )
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        lines.append(
                            json.dumps(
                                {
                                    "service": service,
                                    "name": s.name,
                                    "trace_id": s.trace_id.hex(),
                                    "duration_ns": s.end_time_unix_nano - s.start_time_unix_nano,
                                    "attributes": {a.key: value(a.value) for a in s.attributes},
                                }
                            )
                        )
            with lock:
                with open(args.raw, "ab") as f:
                    f.write(body)
                with open(args.out, "a") as f:
                    for line in lines:
                        f.write(line + "\n")
            answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"otlp: ready port={server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
