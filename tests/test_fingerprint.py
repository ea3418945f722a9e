"""Cached truths are keyed on the code that generates them, not on the config alone."""

import importlib.util
import sys

from scilayers.data import _fingerprint, code_fingerprint
from scilayers.data._ks import KSDataConfig


def test_changing_a_generating_module_changes_the_key(tmp_path, monkeypatch):
    src = tmp_path / "fake_study.py"
    src.write_text("STEP = 1\n")
    spec = importlib.util.spec_from_file_location("fake_study", src)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "fake_study", module)
    _fingerprint._digest.cache_clear()
    before = code_fingerprint("fake_study")
    assert before == code_fingerprint("fake_study")  # deterministic
    src.write_text("STEP = 2  # reordered arithmetic\n")
    _fingerprint._digest.cache_clear()
    assert code_fingerprint("fake_study") != before
    _fingerprint._digest.cache_clear()


def test_ks_truth_key_contains_the_code():
    cfg = KSDataConfig()
    assert cfg.fingerprint() == cfg.fingerprint()
    import scilayers.data._ks as ks

    original = ks.code_fingerprint
    try:
        ks.code_fingerprint = lambda *a: "another solver"
        changed = cfg.fingerprint()
    finally:
        ks.code_fingerprint = original
    assert changed != cfg.fingerprint()
