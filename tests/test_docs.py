"""The README's tables are the code's: message codes and environment names."""

from __future__ import annotations

import re

from gateway.config import ENV_NAMES
from gateway.contract import ERRORS
from tests.support import ROOT

README = (ROOT / "README.md").read_text()


def test_message_code_table_matches_the_error_catalog() -> None:
    rows = set(re.findall(r"^\| (\d{3}) \| (\d{4}) \| ([^|]+?) \|", README, re.M))
    assert rows == {(str(k.status), k.message_code, k.message) for k in ERRORS.values()}


def test_every_environment_name_is_documented() -> None:
    documented = set(re.findall(r"^\| `(GATEWAY_[A-Z_]+)` \|", README, re.M)) - {"GATEWAY_CONFIG"}
    assert documented == set(ENV_NAMES)
