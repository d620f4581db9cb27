"""Optional OpenTelemetry tracing: with `tracing.opentelemetry = true` the gateway exports a server
span per request and a client span per upstream call over OTLP/HTTP to a collector (here a real
aiohttp server on 127.0.0.1 that decodes what it receives), in the caller's trace; off by default."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.config import Config
from gateway.http import keys
from gateway.observability import otel
from tests.support.gateway import (
    LOG,
    bearer,
    create,
    patient,
    poll_until_final,
    recording_upstream,
    run_cli,
    wait_until,
)

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
SAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-01"


async def start_collector(aiohttp_server: Any) -> tuple[list[tuple[str, Span]], str]:
    """(spans as (service name, span), traces URL): an OTLP/HTTP collector on 127.0.0.1."""
    spans: list[tuple[str, Span]] = []

    async def export(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in message.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                spans.extend((attributes["service.name"], span) for span in scope.spans)
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", export)
    server = await aiohttp_server(app, host="127.0.0.1")
    return spans, str(server.make_url("/v1/traces"))


async def test_spans_are_exported_in_the_callers_trace(aiohttp_server: Any, gateway: Any) -> None:
    spans, collector = await start_collector(aiohttp_server)
    p = patient(None)
    received, url = await recording_upstream(aiohttp_server, p)
    tracing = {"opentelemetry": True, "otlp_endpoint": collector, "service_name": "gw-under-test"}
    client = await gateway(url, tracing=tracing)
    request_id = f"otel-{p.token[-12:]}"
    guid = await create(client, p.token, traceparent=SAMPLED, **{"X-Request-Id": request_id})
    await poll_until_final(client, guid, bearer(p.token))
    # The batch exporter sends on its own schedule; flushing makes it send now (from a thread: the
    # SDK blocks while it sends, and the collector answers on this loop).
    assert await asyncio.to_thread(client.app[keys.TRACING].provider.force_flush, 10_000)

    def client_spans() -> list[Span]:
        return [s for _, s in spans if s.kind == Span.SPAN_KIND_CLIENT and s.trace_id.hex() == TRACE_ID]

    await wait_until(lambda: len(client_spans()) >= 4, 10, "the create's four upstream calls exported")
    server = [s for _, s in spans if s.kind == Span.SPAN_KIND_SERVER and s.trace_id.hex() == TRACE_ID]
    assert len(server) == 1 and server[0].parent_span_id.hex() == PARENT_ID, "the create continues the caller's"
    assert {name for name, _ in spans} == {"gw-under-test"}
    # What the upstream received names the client spans as parents, in the caller's trace.
    sent_parents = {h["traceparent"].split("-")[2] for h in received}
    assert sent_parents <= {s.span_id.hex() for s in client_spans()}
    assert all(s.parent_span_id == server[0].span_id for s in client_spans())
    # The log lines name the same trace.
    assert {line for line in LOG.getvalue().splitlines() if request_id in line and TRACE_ID not in line} == set()
    attributes = [a.value.string_value for _, s in spans for a in s.attributes]
    assert not [a for a in attributes if p.token in a], "a token in a span"


async def test_a_trace_is_started_when_the_caller_sent_none(aiohttp_server: Any, gateway: Any) -> None:
    spans, collector = await start_collector(aiohttp_server)
    p = patient(None)
    received, url = await recording_upstream(aiohttp_server, p)
    client = await gateway(url, tracing={"opentelemetry": True, "otlp_endpoint": collector})
    await poll_until_final(client, await create(client, p.token), bearer(p.token))
    assert await asyncio.to_thread(client.app[keys.TRACING].provider.force_flush, 10_000)
    await wait_until(lambda: any(s.kind == Span.SPAN_KIND_CLIENT for _, s in spans), 10, "client spans exported")
    trace_ids = {h["traceparent"].split("-")[1] for h in received}
    assert len(trace_ids) == 1 and trace_ids <= {s.trace_id.hex() for _, s in spans}


def test_tracing_is_off_by_default() -> None:
    assert Config().tracing.opentelemetry is False
    otel.require(Config().tracing)  # nothing to check when off


def test_tracing_on_without_the_extra_stops_the_start() -> None:
    # A None in sys.modules is how Python marks a module as not importable: as on a machine
    # without the extra.
    hide = "import sys; sys.modules['opentelemetry.sdk'] = None"
    on = {"GATEWAY_TRACING_OPENTELEMETRY": "true"}
    for command in ("serve", "check-config"):
        proc = run_cli(command, env=on, prelude=hide)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [
            "config error: tracing.opentelemetry = true needs the otel extra "
            "(pip install 'visit-gateway[otel]'; missing opentelemetry.sdk)"
        ]
    assert run_cli("check-config", prelude=hide).returncode == 0, "off: the extra is not needed"


def test_check_config_accepts_tracing_by_environment() -> None:
    proc = run_cli(
        "check-config",
        env={
            "GATEWAY_TRACING_OPENTELEMETRY": "true",
            "GATEWAY_TRACING_OTLP_ENDPOINT": "http://127.0.0.1:4318/v1/traces",
        },
    )
    assert proc.returncode == 0, proc.stderr
    assert "opentelemetry = true" in proc.stdout
