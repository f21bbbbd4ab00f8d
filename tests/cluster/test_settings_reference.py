"""docs/settings.md is generated from the settings classes and must match them."""

from __future__ import annotations

import pytest

from cluster import settings_reference
from cluster.settings import Settings

pytestmark = pytest.mark.unit


def test_the_committed_reference_matches_the_settings_classes() -> None:
    committed = settings_reference.DOC.read_text(encoding="utf-8")
    assert committed == settings_reference.render(), (
        "docs/settings.md is stale: run `python -m cluster.settings_reference`"
    )


def test_every_field_is_in_exactly_one_section_and_described() -> None:
    owned = [
        name
        for cls, _, _ in settings_reference.SECTIONS
        for name in settings_reference.own_fields(cls)
    ]
    assert sorted(owned) == sorted(Settings.model_fields)
    assert len(owned) == len(set(owned))
    undocumented = [n for n in owned if not Settings.model_fields[n].description]
    assert undocumented == []
