"""Keyed pseudonyms."""

from __future__ import annotations

import re

import pytest

from playbooks.privacy import Pseudonymizer


def test_pseudonym_is_short_stable_and_prefixed():
    p = Pseudonymizer(b"k" * 16)
    value = p.pseudonym("alice")
    assert re.fullmatch(r"p-[0-9a-f]{16}", value)
    assert value == Pseudonymizer(b"k" * 16).pseudonym("alice")
    assert value != p.pseudonym("alice ")


def test_pseudonym_depends_on_the_key():
    # Without the key nobody can confirm a guess (unlike a plain hash).
    a, b = Pseudonymizer(b"a" * 16), Pseudonymizer(b"b" * 16)
    assert a.pseudonym("alice") != b.pseudonym("alice")


def test_key_is_required_and_never_shown():
    with pytest.raises(ValueError):
        Pseudonymizer(b"")
    assert "secret" not in repr(Pseudonymizer(b"secret-key-0123456"))
