"""Demo patients for the simulated new API, built from the seed's JSON examples.

The records are the seed's own examples, varied (GUIDs, times, rooms) so that each LPU of each
patient has its own data. Tokens are listed in the README.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from typing import Any

from gateway.contract import LPU_METHODS

SEED_LPU_TALDOM: dict[str, Any] = {
    "guid": "12ab9992-9875-4fb6-a9c0-8504170c1429",
    "name": " ",
    "address": "., -. , ., ., 19",
    "email": "mail@taldomcrb.ru",
    "gps": "56.734124, 37.530498",
    "site": "http://taldomcrb.ru",
    "phone": "(49620) 3-33-37",
    "mcod": "470101",
    "fcod": "504701",
    "cityId": "2dr_geo_57074323",
    "ratings": {
        "mcod": "470101 ",
        "avg": 4.5,
        "item": {
            "queue": {
                "avg": 4,
                "vote_count": 1,
                "summa": 4,
                "detail_1": 0,
                "detail_2": 1,
                "detail_3": 0,
                "detail_4": 0,
                "detail_5": 0,
            },
            "result": {
                "avg": 4,
                "vote_count": 1,
                "summa": 4,
                "detail_1": 0,
                "detail_2": 1,
                "detail_3": 0,
                "detail_4": 0,
                "detail_5": 0,
            },
            "attitude": {
                "avg": 5,
                "vote_count": 1,
                "summa": 5,
                "detail_1": 1,
                "detail_2": 0,
                "detail_3": 0,
                "detail_4": 0,
                "detail_5": 0,
            },
            "cleanliness": {
                "avg": 5,
                "vote_count": 1,
                "summa": 5,
                "detail_1": 1,
                "detail_2": 0,
                "detail_3": 0,
                "detail_4": 0,
                "detail_5": 0,
            },
        },
    },
}

SEED_LPU_BASE: dict[str, Any] = {
    "guid": "1dadf64c-f34a-4023-98a6-3e7b7be4f243",
    "name": " ( )",
    "address": "141900, ., ., ., 19, 1",
    "phone": "8 (49620) 6-00-50",
    "mcod": "470102",
}

SEED_VISIT: dict[str, Any] = {
    "lpu": SEED_LPU_BASE,
    "num": "008",
    "uchastokNum": "",
    "room": "202",
    "flat": 0,
    "busyType": {"name": "", "type": 1, "code": ""},
    "ticketGuid": "9d8ea16f-205b-4bc7-92e5-752cd84cb0db",
    "timeTableGuid": "12d4329b-cbe3-4ca3-8cdc-0e7a8f23e0d5",
    "docFio": " . .",
    "docGuid": "f05d7650-a2a0-49dc-99f1-bb57829bc46a",
    "doctorRole": "",
    "speciality": "",
    "beginTime": "2019-04-18T08:45:00+03:00",
    "endTime": "2019-04-18T09:00:00+03:00",
    "dateOfAppointment": "2019-04-16T12:18:26+03:00",
    "planCount": 1,
    "usedCount": 1,
    "source": 0,
    "login": None,
    "sourceName": "Internet",
    "dispExamGuid": None,
    "history": [
        {
            "element": "",
            "elementGuid": "00000000-0000-0000-0000-000000000000",
            "oldValue": "",
            "newValue": "",
            "editor": "",
            "date": "2019-04-16T12:18:27+03:00",
            "client": {"mnem": "Internet", "name": " ", "description": ""},
        }
    ],
}

SEED_CALL: dict[str, Any] = {
    "lpu": SEED_LPU_BASE,
    "callDoctorGuid": "2c59038e-e67d-48c9-86f0-62e955ec4cd5",
    "callDoctorId": 53453,
    "address": " , - . 48 22",
    "createdBy": None,
    "status": 0,
    "type": 1,
    "dateStatus": None,
    "diagnosis": None,
    "ticketGuid": "00000000-0000-0000-0000-000000000000",
    "timeTableGuid": "00000000-0000-0000-0000-000000000000",
    "docFio": None,
    "docGuid": "00000000-0000-0000-0000-000000000000",
    "doctorRole": None,
    "speciality": None,
    "beginTime": "0001-01-01T00:00:00+03:00",
    "endTime": "0001-01-01T00:00:00+03:00",
    "dateOfAppointment": "2019-04-16T12:38:45+03:00",
    "source": 1,
    "login": None,
    "sourceName": "Internet",
    "dispExamGuid": None,
    "history": [
        {
            "element": "",
            "elementGuid": "e162dfc8-2201-41de-b1c8-6531331e1436",
            "oldValue": "",
            "newValue": "",
            "editor": "",
            "date": "2019-04-16T12:38:44+03:00",
            "client": {"mnem": "Internet", "name": " ", "description": ""},
        }
    ],
}

SEED_DISP: dict[str, Any] = {
    "dispExamGuid": "5b1c7a52-1f1e-4d59-9d7a-0b8f5d8a2c11",
    "name": "Диспансеризация",
    "stage": 1,
}

FAULTS = (
    "none",  # answer normally
    "status",  # answer `status` with an ExceptionResponse body
    "hang",  # never answer (until the sandbox shuts down)
    "invalid_json",  # 200 with a body that is not JSON
    "wrong_shape",  # 200 with an object where an array belongs
    "wrong_type",  # 200 with an array whose record has a string where an int belongs
    "null_item",  # 200 with [null]
    "reset",  # close the connection before any header
    "reset_mid_body",  # headers, half a body, then close
    "drip",  # 200, then one byte every `drip_interval` seconds
    "oversize",  # 200 with a JSON array larger than `oversize_bytes`
    "oversize_chunked",  # the same, chunked: no Content-Length to refuse it by
    "flaky",  # `status` for the first `flaky_failures` calls, then normal
    "gzip",  # the normal answer, gzip-encoded (Content-Encoding: gzip)
    "deflate",  # the normal answer, deflate-encoded (zlib format)
    "gzip_bomb",  # a small gzip body that inflates to `oversize_bytes` of valid JSON (whitespace)
    "many_records",  # `[{},{},…]` of `oversize_bytes` bytes: a flood of default-filled records
)


@dataclass
class LpuKnobs:
    """How the simulated LPU answers its three per-LPU calls."""

    delay: float = 0.0
    fault: str = "none"
    status: int = 500
    methods: tuple[str, ...] = LPU_METHODS
    drip_interval: float = 0.2
    oversize_bytes: int = 4 * 1024 * 1024
    flaky_failures: int = 1
    pascal_case: bool = False

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; one of {', '.join(FAULTS)}")


@dataclass
class SandboxLpu:
    info: dict[str, Any]
    visits: list[dict[str, Any]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    disps: list[dict[str, Any]] = field(default_factory=list)
    knobs: LpuKnobs = field(default_factory=LpuKnobs)


@dataclass
class SandboxPatient:
    token: str
    lpus: list[SandboxLpu]
    mkab_delay: float = 0.0
    mkab_status: int = 200


def _vary(template: dict[str, Any], seed: str, **changes: Any) -> dict[str, Any]:
    record = copy.deepcopy(template)
    for key in ("ticketGuid", "callDoctorGuid"):
        if key in record and record[key] != "00000000-0000-0000-0000-000000000000":
            record[key] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{seed}/{key}"))
    record.update(changes)
    return record


def demo_lpu(n: int, knobs: LpuKnobs | None = None) -> SandboxLpu:
    """LPU number n: the seed's LPU for n == 0, variations of it after."""
    info = copy.deepcopy(SEED_LPU_TALDOM)
    if n:
        info["guid"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox/lpu/{n}"))
        info["name"] = f"Поликлиника №{n}"
        info["mcod"] = info["ratings"]["mcod"] = f"47010{n + 1}"
    visits = [_vary(SEED_VISIT, f"{n}/v{i}", room=str(200 + i), num=f"00{8 + i}") for i in range(1 + n % 2)]
    calls = [_vary(SEED_CALL, f"{n}/c")] if n % 2 else []
    disps = [dict(SEED_DISP)] if n % 3 == 2 else []
    return SandboxLpu(info=info, visits=visits, calls=calls, disps=disps, knobs=knobs or LpuKnobs())


def demo_patients() -> list[SandboxPatient]:
    """The sandbox's default patients (README: "Sandbox patients")."""
    return [
        SandboxPatient("sandbox-patient-1", [demo_lpu(0)]),
        SandboxPatient(
            "sandbox-patient-2",
            [demo_lpu(0), demo_lpu(1, LpuKnobs(delay=3.0)), demo_lpu(2)],
        ),
        SandboxPatient(
            "sandbox-patient-3",
            [
                demo_lpu(1),
                demo_lpu(2, LpuKnobs(delay=1.0)),
                demo_lpu(3, LpuKnobs(fault="status", status=500)),
                demo_lpu(4, LpuKnobs(fault="hang")),
                demo_lpu(5, LpuKnobs(delay=6.0)),
            ],
        ),
        SandboxPatient(
            "sandbox-patient-4", [demo_lpu(1, LpuKnobs(pascal_case=True)), demo_lpu(2, LpuKnobs(pascal_case=True))]
        ),
        SandboxPatient("sandbox-patient-nomkab", []),
    ]
