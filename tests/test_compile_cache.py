"""The persistent XLA compilation cache of the CLI: where it goes, and how to turn it off."""

import jax
import jax.numpy as jnp
import pytest

from scilayers._compile_cache import ENV, use_compilation_cache


def test_cache_folder_is_used_and_off_disables_it(tmp_path, monkeypatch):
    before = jax.config.values["jax_compilation_cache_dir"]
    try:
        monkeypatch.setenv(ENV, "off")
        assert use_compilation_cache(tmp_path / "ignored") is None
        assert not (tmp_path / "ignored").exists()
        monkeypatch.setenv(ENV, str(tmp_path / "xla"))
        folder = use_compilation_cache()
        assert folder == tmp_path / "xla" and folder.is_dir()
        assert jax.config.values["jax_compilation_cache_dir"] == str(folder)
        blocker = tmp_path / "file"
        blocker.write_text("")
        monkeypatch.delenv(ENV)
        with pytest.warns(UserWarning, match="no XLA compilation cache"):
            assert use_compilation_cache(blocker / "sub") is None
        assert float(jax.jit(jnp.sin)(0.0)) == 0.0  # compilation still works
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
