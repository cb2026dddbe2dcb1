"""A minimal OTLP/HTTP trace sink for the observability benchmark: accepts `POST /v1/traces`
(protobuf), counts requests, bytes and spans, answers an empty ExportTraceServiceResponse.
On SIGTERM/SIGINT it writes its counts as JSON to --stats (so the run shows spans really left).

    python benchmarks/observability_sink.py --port 4318 --stats sink.json
"""

from __future__ import annotations

import argparse
import json
import time

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--stats", required=True, help="JSON file written on exit")
    a = ap.parse_args()
    stats = {"posts": 0, "bytes": 0, "spans": 0, "services": [], "started": time.time()}

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        req = ExportTraceServiceRequest.FromString(body)
        stats["posts"] += 1
        stats["bytes"] += len(body)
        for rs in req.resource_spans:
            for kv in rs.resource.attributes:
                if kv.key == "service.name" and kv.value.string_value not in stats["services"]:
                    stats["services"].append(kv.value.string_value)
            stats["spans"] += sum(len(ss.spans) for ss in rs.scope_spans)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def health(request: web.Request) -> web.Response:
        return web.json_response(stats)

    def write() -> None:
        stats["ended"] = time.time()
        with open(a.stats, "w") as f:
            json.dump(stats, f, indent=1)

    app = web.Application(client_max_size=256 << 20)
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/stats", health)

    async def on_cleanup(_app: web.Application) -> None:
        write()

    app.on_cleanup.append(on_cleanup)
    web.run_app(app, host="127.0.0.1", port=a.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
