"""The shadow compare, pure: order-insensitive per LPU, ignored fields, paths without values."""

from __future__ import annotations

import copy
import json
from typing import Any

from gateway.rollout.compare import Timing, compare_sessions, metric_field
from gateway.sandbox.data import demo_lpu
from tests.support import golden

[GOLDEN] = golden("ticket_lists.json")


def entry(n: int, state: str = "Complete") -> dict[str, Any]:
    """A TicketLists element as both sides give it, from the sandbox's LPU number n."""
    lpu = demo_lpu(n)
    if state != "Complete":
        return {"state": state, "lpu": lpu.info, "visits": [], "calls": [], "disps": []}
    return {"state": state, "lpu": lpu.info, "visits": lpu.visits, "calls": lpu.calls, "disps": lpu.disps}


def answer() -> list[dict[str, Any]]:
    return [copy.deepcopy(GOLDEN), entry(1), entry(2), entry(3)]


def test_same_answer_in_another_order_matches() -> None:
    legacy = answer()
    gateway = list(reversed(copy.deepcopy(legacy)))
    for e in gateway:
        e["visits"].reverse()
    assert any(len(e["visits"]) > 1 for e in gateway)
    result = compare_sessions(legacy, gateway)
    assert result.match and result.reason == "equal" and result.paths == ()


def test_differences_are_field_paths_counted_in_the_legacy_answer() -> None:
    legacy = answer()
    gateway = copy.deepcopy(legacy)
    gateway.reverse()  # positions in the paths are still the legacy ones
    by_guid = {e["lpu"]["guid"]: e for e in gateway}
    by_guid[legacy[1]["lpu"]["guid"]]["visits"][1]["room"] = "999"
    by_guid[legacy[2]["lpu"]["guid"]]["lpu"]["phone"] = "+7 000"
    by_guid[legacy[3]["lpu"]["guid"]]["calls"][0]["history"][0]["editor"] = "someone"
    result = compare_sessions(legacy, gateway)
    assert set(result.paths) == {
        "[1].visits[1].room",
        "[2].lpu.phone",
        "[3].calls[0].history[0].editor",
    }
    assert result.reason == "records"
    # Only paths: none of the values on either side.
    text = json.dumps(result.paths)
    assert "999" not in text and "+7 000" not in text and "someone" not in text and "Поликлиника" not in text


def test_a_state_difference_is_reported_once_and_wins_the_reason() -> None:
    legacy = answer()
    gateway = copy.deepcopy(legacy)
    gateway[2] = entry(2, "Failed")
    gateway[1]["visits"][0]["room"] = "1"
    result = compare_sessions(legacy, gateway)
    assert set(result.paths) == {"[2].state", "[1].visits[0].room"}
    assert result.reason == "state"


def test_missing_and_extra_lpus_and_records() -> None:
    legacy = answer()
    gateway = [*copy.deepcopy(legacy[:3]), entry(7)]
    del gateway[1]["visits"][0]
    gateway[2]["disps"].append({"dispExamGuid": "0b9e1c1e-0000-4000-8000-000000000001", "name": "x"})
    result = compare_sessions(legacy, gateway)
    assert set(result.paths) == {
        "[3] (legacy only)",
        "gateway[3] (gateway only)",
        "[1].visits[0] (legacy only)",
        "[2].disps.gateway[1] (gateway only)",
    }
    assert result.reason == "lpus"


def test_a_changed_record_is_paired_by_its_identity_not_reported_as_two() -> None:
    legacy = [entry(1)]
    gateway = copy.deepcopy(legacy)
    gateway[0]["visits"].reverse()
    gateway[0]["visits"][1]["docFio"] = "Another"
    gateway[0]["visits"][1]["source"] = 3
    result = compare_sessions(legacy, gateway)
    assert result.paths == ("[0].visits[0].docFio", "[0].visits[0].source")


def test_ignored_fields_by_name_and_by_path() -> None:
    legacy = answer()
    gateway = copy.deepcopy(legacy)
    gateway[0]["lpu"]["ratings"]["avg"] = 1.0
    gateway[1]["visits"][0]["history"][0]["date"] = "2020-01-01T00:00:00+03:00"
    gateway[1]["visits"][0]["room"] = "000"
    assert set(compare_sessions(legacy, gateway).paths) == {
        "[0].lpu.ratings.avg",
        "[1].visits[0].history[0].date",
        "[1].visits[0].room",
    }
    assert compare_sessions(legacy, gateway, ["ratings", "visits.history", "room"]).match
    # A dotted path ignores only there: the room of a visit, not a ratings field elsewhere.
    assert compare_sessions(legacy, gateway, ["lpu.ratings.avg", "history"]).paths == ("[1].visits[0].room",)


def test_json_numbers_compare_by_value_not_by_type() -> None:
    legacy = [copy.deepcopy(GOLDEN)]
    gateway = copy.deepcopy(legacy)
    gateway[0]["lpu"]["ratings"]["item"]["queue"]["avg"] = 4.0  # 4 in the legacy answer
    assert compare_sessions(legacy, gateway).match
    gateway[0]["lpu"]["ratings"]["item"]["queue"]["avg"] = "4"
    assert compare_sessions(legacy, gateway).paths == ("[0].lpu.ratings.item.queue.avg",)


def test_the_path_list_is_capped_but_the_total_is_kept() -> None:
    legacy = [entry(1)]
    legacy[0]["disps"] = [{"dispExamGuid": f"00000000-0000-4000-8000-{i:012d}"} for i in range(300)]
    gateway = [entry(1)]
    result = compare_sessions(legacy, gateway)
    assert len(result.paths) == 100 and result.total == 300


# Issue 11 row 14: a pass-through disp item whose key carries personal data.
PERSONAL_KEY = "Иванов Иван Иванович 12.03.1980"


def test_keys_of_pass_through_disp_items_never_appear_in_the_paths() -> None:
    legacy = [entry(2)]
    assert legacy[0]["disps"], "LPU 2 of the sandbox has a disp item"
    gateway = copy.deepcopy(legacy)
    legacy[0]["disps"][0][PERSONAL_KEY] = "x"
    gateway[0]["disps"][0]["name"] = "changed"
    result = compare_sessions(legacy, gateway)
    assert not result.match and result.total == 2
    text = json.dumps(result.paths, ensure_ascii=False)
    assert "Иванов" not in text and PERSONAL_KEY not in text
    assert "name" not in text, "no key of a pass-through object is shown as text"
    # The same key has the same name within one secret (the per-field counters can count it),
    # another under another secret.
    again = compare_sessions(legacy, gateway)
    assert again.paths == result.paths
    assert compare_sessions(legacy, gateway, secret=b"other").paths != result.paths


def test_each_difference_is_classified_per_lpu() -> None:
    legacy = answer()
    gateway = [*copy.deepcopy(legacy[:3]), entry(7)]  # LPU 3 missing, LPU 7 extra
    gateway[1] = entry(1, "Failed")
    gateway[2]["visits"][0]["room"] = "planted"
    gateway[0]["calls"].reverse()
    result = compare_sessions(legacy, gateway)
    assert {(d.cls, d.field, d.path) for d in result.differences} == {
        ("missing_lpu", "lpus", "[3] (legacy only)"),
        ("extra_lpu", "lpus", "gateway[3] (gateway only)"),
        ("state", "state", "[1].state"),
        ("content", "visits.room", "[2].visits[0].room"),
    } | ({("order", "calls", "[0].calls (order)")} if len(legacy[0]["calls"]) > 1 else set())
    assert result.cls == "missing_lpu"
    assert result.classes()["state"] == 1 and result.classes()["content"] == 1


def test_order_alone_is_reported_but_is_not_a_mismatch() -> None:
    legacy = answer()
    gateway = list(reversed(copy.deepcopy(legacy)))
    result = compare_sessions(legacy, gateway)
    assert result.match
    assert [(d.cls, d.field) for d in result.differences] == [("order", "lpus")]
    assert result.cls == "order"


def test_records_are_matched_by_identity_not_position() -> None:
    legacy = [entry(1)]
    assert len(legacy[0]["visits"]) > 1
    gateway = copy.deepcopy(legacy)
    # The gateway drops the first visit and changes the second: one record missing, one field.
    first, second = gateway[0]["visits"][0], gateway[0]["visits"][1]
    gateway[0]["visits"] = [second | {"room": "other"}, *gateway[0]["visits"][2:]]
    assert first["ticketGuid"] != second["ticketGuid"]
    result = compare_sessions(legacy, gateway)
    assert set(result.paths) == {"[0].visits[0] (legacy only)", "[0].visits[1].room"}
    assert {f for _, f in result.fields} == {"visits (legacy only)", "visits.room"}


def test_timing_is_a_difference_only_beyond_the_margin_and_only_when_the_gateway_is_later() -> None:
    legacy = answer()
    gateway = copy.deepcopy(legacy)
    assert compare_sessions(legacy, gateway, timing=Timing(legacy=2.0, gateway=6.5)).match  # within 5 s
    assert compare_sessions(legacy, gateway, timing=Timing(legacy=9.0, gateway=1.0)).match  # faster
    late = compare_sessions(legacy, gateway, timing=Timing(legacy=2.0, gateway=9.0))
    assert late.paths == ("final_seconds",) and late.cls == "timing" and late.reason == "timing"
    # Relative to a slow legacy side: 12 s against 10 s is within 100 %.
    assert compare_sessions(legacy, gateway, timing=Timing(legacy=10.0, gateway=19.0)).match


def test_metric_fields_collapse_hashed_keys() -> None:
    assert metric_field("disps.~3fa1c2d0") == "disps.*"
    assert metric_field("visits.room") == "visits.room"
