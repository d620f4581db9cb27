"""Errors raised by routing or the server itself still get the standard shape and stable codes."""

from __future__ import annotations

import pytest

from gateway.contract import ERRORS
from gateway.http.errors import kind_for_status


@pytest.mark.parametrize("status", [401, 402, 410, 414, 415, 418, 422])
def test_a_status_without_an_entry_keeps_its_status_and_gets_the_generic_code(status: int) -> None:
    # "4" + status would collide: 414 → 4414 already means "no such route".
    kind = kind_for_status(status)
    assert (kind.status, kind.message_code) == (status, ERRORS["bad_request"].message_code)


def test_known_statuses_and_5xx() -> None:
    assert kind_for_status(405) == ERRORS["method_not_allowed"]
    assert kind_for_status(431) == ERRORS["headers_too_large"]
    assert kind_for_status(599) == ERRORS["internal"]
