"""A simulated new API (upstream-api.md §A) with per-LPU latency and fault knobs.

`gateway sandbox` serves it for people; the tests use the same app as their fake upstream, on
127.0.0.1, so the faults the gateway is tested against are the ones a user can try by hand.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any

from aiohttp import web

from gateway.sandbox.data import LpuKnobs, SandboxLpu, SandboxPatient, demo_patients

HANG_LIMIT = 600.0  # a hanging answer still ends: nothing in this repo waits forever


@dataclass(frozen=True)
class CallRecord:
    """One call the sandbox received, for tests and for the /sandbox/calls page."""

    method: str
    lpu_guid: str | None
    authorization: str | None
    request_id: str | None
    client_app: str | None
    accept: str | None


class Sandbox:
    def __init__(self, patients: list[SandboxPatient] | None = None) -> None:
        self.patients = {p.token: p for p in (demo_patients() if patients is None else patients)}
        self.calls: list[CallRecord] = []
        # Calls received per (method, LPU GUID or "" for the MKAB list), for GET /sandbox/calls.
        self.call_counts: Counter[tuple[str, str]] = Counter()
        self._release: asyncio.Event | None = None
        self._flaky_seen: dict[tuple[str, str], int] = {}
        self._new_call: asyncio.Event | None = None
        # Per LPU GUID: calls being answered now, and the most ever answered at once.
        self.in_flight: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self._bombs: dict[int, bytes] = {}
        self._records: dict[int, bytes] = {}

    def records(self, size: int) -> bytes:
        """`[{},{},…]` of about `size` bytes, made once per size (the sandbox shares the loop
        of the tests' gateway: its own CPU must not be what they measure)."""
        if size not in self._records:
            self._records[size] = b"[" + b",".join([b"{}"] * (size // 3)) + b"]"
        return self._records[size]

    def bomb(self, inflated: int) -> bytes:
        """A gzip body inflating to `inflated` bytes of valid JSON (`[` spaces `]`): about a
        thousandth of that on the wire. Made once per size (making it costs CPU)."""
        if inflated not in self._bombs:
            packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            block = b" " * (1024 * 1024)
            parts = [packer.compress(b"[")]
            parts += [packer.compress(block) for _ in range(inflated // len(block))]
            parts += [packer.compress(b"]"), packer.flush()]
            self._bombs[inflated] = b"".join(parts)
        return self._bombs[inflated]

    @property
    def release(self) -> asyncio.Event:
        if self._release is None:
            self._release = asyncio.Event()
        return self._release

    def lpu(self, guid: str) -> SandboxLpu | None:
        for patient in self.patients.values():
            for lpu in patient.lpus:
                if lpu.info["guid"] == guid:
                    return lpu
        return None

    def count(self, method: str | None = None) -> int:
        return sum(1 for c in self.calls if method is None or c.method == method)

    def record(self, call: CallRecord) -> None:
        self.calls.append(call)
        self.call_counts[(call.method, call.lpu_guid or "")] += 1
        if self._new_call is not None:
            self._new_call.set()

    async def wait_calls(self, n: int, method: str | None = None, within: float = 10.0) -> None:
        """Returns once at least n calls (of `method`) have arrived; TimeoutError after `within` s."""
        async with asyncio.timeout(within):
            while self.count(method) < n:
                self._new_call = asyncio.Event()
                await self._new_call.wait()


SANDBOX = web.AppKey("sandbox", Sandbox)


def pascal(value: Any) -> Any:
    """The same JSON with PascalCase keys, as some upstream builds send it."""
    if isinstance(value, dict):
        return {("GPS" if k == "gps" else k[:1].upper() + k[1:]): pascal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [pascal(v) for v in value]
    return value


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"code": status, "message": message, "message_code": str(status)}, status=status)


def _patient(request: web.Request) -> SandboxPatient | None:
    auth = request.headers.get("Authorization", "")
    token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
    return request.app[SANDBOX].patients.get(token) if token else None


def _record(request: web.Request, method: str) -> None:
    h = request.headers
    request.app[SANDBOX].record(
        CallRecord(
            method,
            request.query.get("lpuGuid"),
            h.get("Authorization"),
            h.get("X-Request-Id"),
            h.get("ClientApplication"),
            h.get("Accept"),
        )
    )


async def mkab(request: web.Request) -> web.StreamResponse:
    _record(request, "mkab")
    patient = _patient(request)
    if patient is None:
        return _error(401, "Token is invalid")
    if patient.mkab_delay:
        await asyncio.sleep(patient.mkab_delay)
    if patient.mkab_status != 200:
        return _error(patient.mkab_status, "MKAB list unavailable")
    return web.json_response(
        [
            pascal({"mkabGuid": f"mkab-{i}", "lpu": lpu.info})
            if lpu.knobs.pascal_case
            else {"mkabGuid": f"mkab-{i}", "lpu": lpu.info}
            for i, lpu in enumerate(patient.lpus)
        ]
    )


async def _hold(request: web.Request, seconds: float) -> None:
    try:
        await asyncio.wait_for(request.app[SANDBOX].release.wait(), seconds)
    except TimeoutError:
        pass


async def _faulty(request: web.Request, method: str, lpu: SandboxLpu, payload: Any) -> web.StreamResponse:
    knobs = lpu.knobs
    fault = knobs.fault if method in knobs.methods else "none"
    if fault == "flaky":
        seen = request.app[SANDBOX]._flaky_seen
        key = (lpu.info["guid"], method)
        seen[key] = seen.get(key, 0) + 1
        fault = "status" if seen[key] <= knobs.flaky_failures else "none"
    if fault == "none":
        return web.json_response(pascal(payload) if knobs.pascal_case else payload)
    if fault in ("gzip", "deflate"):
        body = json.dumps(pascal(payload) if knobs.pascal_case else payload).encode()
        packed = gzip.compress(body) if fault == "gzip" else zlib.compress(body)
        return web.Response(body=packed, content_type="application/json", headers={"Content-Encoding": fault})
    if fault == "gzip_bomb":
        bomb = request.app[SANDBOX].bomb(knobs.oversize_bytes)
        return web.Response(body=bomb, content_type="application/json", headers={"Content-Encoding": "gzip"})
    if fault == "many_records":
        return web.Response(body=request.app[SANDBOX].records(knobs.oversize_bytes), content_type="application/json")
    if fault == "status":
        return _error(knobs.status, "Simulated failure")
    if fault == "hang":
        await _hold(request, HANG_LIMIT)
        return _error(503, "Released")
    if fault == "invalid_json":
        return web.Response(body=b'[{"ticketGuid": ', content_type="application/json")
    if fault == "wrong_shape":
        return web.json_response({"items": payload})
    if fault == "wrong_type":
        return web.json_response([{"flat": "first", "callDoctorId": "x", "source": "web"}])
    if fault == "null_item":
        return web.json_response([None])
    if fault == "oversize":
        filler = [{"docFio": "x" * 1000}] * (knobs.oversize_bytes // 1000 + 1)
        return web.json_response(filler)
    if fault == "oversize_chunked":
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        record = json.dumps({"docFio": "x" * 1000}).encode()
        await response.write(b"[" + record)
        for _ in range(knobs.oversize_bytes // len(record) + 1):
            await response.write(b"," + record)
        await response.write(b"]")
        return response
    transport = request.transport
    if fault == "reset":
        if transport is not None:
            transport.abort()
        return web.Response(status=204)
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    if fault == "reset_mid_body":
        response.content_length = 4096
        await response.prepare(request)
        await response.write(b'[{"ticketGuid": "9d8ea16f')
        if transport is not None:
            transport.abort()
        return response
    # drip: a valid body, one byte at a time, slower than any sane deadline
    body = json.dumps(payload).encode()
    await response.prepare(request)
    for i in range(len(body)):
        await response.write(body[i : i + 1])
        await _hold(request, knobs.drip_interval)
        if request.app[SANDBOX].release.is_set():
            break
    return response


def _per_lpu(method: str, attr: str) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        _record(request, method)
        patient = _patient(request)
        if patient is None:
            return _error(401, "Token is invalid")
        guid = request.query.get("lpuGuid", "")
        lpu = next((lpu for lpu in patient.lpus if lpu.info["guid"] == guid), None)
        if lpu is None:
            return _error(404, "MKAB not found in this LPU")
        sandbox = request.app[SANDBOX]
        sandbox.in_flight[guid] = sandbox.in_flight.get(guid, 0) + 1
        sandbox.peak[guid] = max(sandbox.peak.get(guid, 0), sandbox.in_flight[guid])
        try:
            if lpu.knobs.delay:
                await _hold(request, lpu.knobs.delay)
            return await _faulty(request, method, lpu, getattr(lpu, attr))
        finally:
            sandbox.in_flight[guid] -= 1

    return handler


async def list_patients(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    return web.json_response(
        [
            {
                "token": p.token,
                "lpus": [
                    {"guid": lpu.info["guid"], "name": lpu.info["name"], "knobs": vars(lpu.knobs)} for lpu in p.lpus
                ],
            }
            for p in sandbox.patients.values()
        ]
    )


async def call_counts(request: web.Request) -> web.Response:
    """GET /sandbox/calls: how many calls of each method each LPU received (`lpu` "" for mkab)."""
    counts = request.app[SANDBOX].call_counts
    return web.json_response([{"method": m, "lpu": g, "calls": n} for (m, g), n in sorted(counts.items())])


async def set_knobs(request: web.Request) -> web.Response:
    """PUT /sandbox/lpus/{guid} {"delay": 2, "fault": "status", "status": 503}: change an LPU live."""
    lpu = request.app[SANDBOX].lpu(request.match_info["guid"])
    if lpu is None:
        return _error(404, "No such LPU")
    try:
        changes = await request.json()
        allowed = {f.name for f in fields(LpuKnobs)}
        if not isinstance(changes, dict) or not set(changes) <= allowed:
            raise ValueError(f"knobs are {sorted(allowed)}")
        current = vars(lpu.knobs) | changes
        if "methods" in changes:
            current["methods"] = tuple(current["methods"])
        lpu.knobs = LpuKnobs(**current)
    except (ValueError, TypeError) as exc:
        return _error(400, str(exc))
    return web.json_response(vars(lpu.knobs))


async def _release_hangs(app: web.Application) -> None:
    app[SANDBOX].release.set()


def create_sandbox_app(sandbox: Sandbox | None = None) -> web.Application:
    app = web.Application()
    app[SANDBOX] = sandbox or Sandbox()
    app.router.add_get("/api/v2/mkab", mkab)
    app.router.add_get("/api/v2/visit", _per_lpu("visit", "visits"))
    app.router.add_get("/api/v2/calldoctor", _per_lpu("calldoctor", "calls"))
    app.router.add_get("/api/v2/disp", _per_lpu("disp", "disps"))
    app.router.add_get("/sandbox/patients", list_patients)
    app.router.add_put("/sandbox/lpus/{guid}", set_knobs)
    app.router.add_get("/sandbox/calls", call_counts)
    app.on_shutdown.append(_release_hangs)
    return app
