"""The pure mapping from new-API JSON to the old contract, against the seed's golden samples."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from gateway.contract import ZERO_GUID
from gateway.sandbox.app import pascal
from gateway.upstream.mapping import (
    MIN_TIME,
    MappingError,
    camel_key,
    map_calls,
    map_disps,
    map_lpu_info,
    map_mkab_list,
    map_visits,
)
from tests.support import GOLDEN, ROOT

SEED = ROOT.parent / "shared" / "seed" / "000_df5ed6844f43f298.txt"


def golden(name: str) -> Any:
    return json.loads((GOLDEN / name).read_text())


@pytest.mark.skipif(not SEED.exists(), reason="../shared/seed is not beside this checkout")
def test_golden_files_are_the_seeds_examples() -> None:
    blocks = []
    for block in re.findall(r"```\n(.*?)```", SEED.read_text(), re.S):
        try:
            blocks.append(json.loads(block))
        except ValueError:
            continue  # request lines and the full response, which the seed splits across blocks
    assert blocks == [golden("call.json"), golden("visit.json")]


@pytest.mark.parametrize("transform", [lambda v: v, pascal], ids=["camelCase", "PascalCase"])
def test_seed_visit_and_call_come_out_field_for_field(transform: Any) -> None:
    visit, call = golden("visit.json"), golden("call.json")
    out_visits = map_visits(transform([visit]))
    out_calls = map_calls(transform([call]))
    assert out_visits == [visit]
    assert out_calls == [call]
    # Same keys in the same order as the seed, not just equal dicts.
    assert list(out_visits[0]) == list(visit)
    assert list(out_calls[0]) == list(call)


@pytest.mark.parametrize("transform", [lambda v: v, pascal], ids=["camelCase", "PascalCase"])
def test_seed_lpu_info_with_ratings(transform: Any) -> None:
    lpu = golden("ticket_lists.json")[0]["lpu"]
    assert map_lpu_info(transform(lpu)) == lpu
    assert map_mkab_list(transform([{"mkabGuid": "m1", "lpu": lpu}])) == [lpu]


def test_two_mkabs_in_one_lpu_give_one_entry_in_order() -> None:
    lpus = map_mkab_list(
        [
            {"mkabGuid": "m1", "lpu": {"guid": "B"}},
            {"mkabGuid": "m2", "lpu": {"guid": "a"}},
            {"mkabGuid": "m3", "lpu": {"guid": "b"}},
        ]
    )
    assert [lpu["guid"] for lpu in lpus] == ["B", "a"]


def test_omitted_fields_get_the_legacy_defaults() -> None:
    [visit] = map_visits([{"ticketGuid": "9d8ea16f-205b-4bc7-92e5-752cd84cb0db"}])
    assert visit["ticketGuid"] == "9d8ea16f-205b-4bc7-92e5-752cd84cb0db"
    assert visit["docFio"] is None and visit["login"] is None
    assert visit["docGuid"] == ZERO_GUID and visit["timeTableGuid"] == ZERO_GUID
    assert visit["beginTime"] == MIN_TIME and visit["endTime"] == MIN_TIME
    assert visit["flat"] == 0 and visit["source"] == 0
    assert visit["history"] == [] and visit["lpu"] is None and visit["busyType"] is None
    assert visit["dispExamGuid"] is None


def test_optional_fields_are_written_only_when_sent() -> None:
    [visit] = map_visits([{}])
    [call] = map_calls([{}])
    assert "planCount" not in visit and "usedCount" not in visit
    assert "displayTimeMode" not in call and "stubMessage" not in call
    [call] = map_calls([{"DisplayTimeMode": "Message", "StubMessage": "Врач придёт до 18:00"}])
    assert call["displayTimeMode"] == "Message" and call["stubMessage"] == "Врач придёт до 18:00"


def test_unknown_fields_are_dropped_and_times_keep_their_offset() -> None:
    [visit] = map_visits([{"beginTime": "2019-04-18T08:45:00+05:00", "SecretInternalFlag": True}])
    assert "SecretInternalFlag" not in visit and "secretInternalFlag" not in visit
    assert visit["beginTime"] == "2019-04-18T08:45:00+05:00"


def test_disp_items_pass_through_with_camelcase_keys() -> None:
    disps = map_disps([{"DispExamGuid": "g", "Stage": 2, "Items": [{"GPS": "1,2", "Name": "x"}]}])
    assert disps == [{"dispExamGuid": "g", "stage": 2, "items": [{"gps": "1,2", "name": "x"}]}]


@pytest.mark.parametrize(
    ("key", "expected"),
    [("TicketGuid", "ticketGuid"), ("GPS", "gps"), ("LPUGuid", "lpuGuid"), ("cityId", "cityId"), ("ID", "id")],
)
def test_camel_key(key: str, expected: str) -> None:
    assert camel_key(key) == expected


@pytest.mark.parametrize(
    ("mapper", "raw", "path"),
    [
        (map_visits, {"items": []}, "visits"),
        (map_visits, [None], "visits[0]"),
        (map_visits, [{"flat": "first"}], "visits[0].flat"),
        (map_visits, [{"flat": True}], "visits[0].flat"),
        (map_visits, [{"docFio": 5}], "visits[0].docFio"),
        (map_visits, [{"history": [{"client": []}]}], "visits[0].history[0].client"),
        (map_calls, [{"callDoctorId": "53453"}], "calls[0].callDoctorId"),
        (map_disps, {"a": 1}, "disps"),
        (map_disps, [1], "disps[0]"),
        (map_mkab_list, [{"mkabGuid": "m"}], "mkab[0].lpu"),
        (map_mkab_list, [{"lpu": {"name": "no guid"}}], "mkab[0].lpu.guid"),
        (map_mkab_list, "[]", "mkab"),
    ],
)
def test_wrong_types_raise_a_mapping_error_naming_the_field(mapper: Any, raw: Any, path: str) -> None:
    with pytest.raises(MappingError) as info:
        mapper(raw)
    assert info.value.path == path


def test_deeply_nested_disp_is_a_mapping_error_not_a_crash() -> None:
    deep: Any = {}
    for _ in range(100):
        deep = {"x": deep}
    with pytest.raises(MappingError):
        map_disps([deep])
