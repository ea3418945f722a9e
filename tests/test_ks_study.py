"""The KS study's closure input: spectral derivative features (`ks.SpectralFeatures`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scilayers.experiments.ks import PRESETS, KSStudy, SpectralFeatures
from scilayers.nn import PeriodicCNN1d


class _Channels:
    """Stands in for the network: returns its input channels, so the features show."""

    def __call__(self, x):
        return x[None]


@pytest.mark.parametrize("n", [64, 128])
def test_features_are_the_exact_derivatives_of_resolved_modes(n):
    dx = 44.0 / 64  # the study's spacing; n = 128 is the out-of-domain length at it
    x = np.arange(n) * dx
    k = 2 * np.pi * 5 / (n * dx)
    u = np.sin(k * x) + 0.3 * np.cos(3 * k * x)
    feats = SpectralFeatures(_Channels(), dx, (0, 1, 2, 3))(jnp.asarray(u))
    want = [
        u,
        k * np.cos(k * x) - 0.9 * k * np.sin(3 * k * x),
        -(k**2) * np.sin(k * x) - 2.7 * k**2 * np.cos(3 * k * x),
        -(k**3) * np.cos(k * x) + 8.1 * k**3 * np.sin(3 * k * x),
    ]
    np.testing.assert_allclose(np.asarray(feats), np.stack(want), atol=1e-9 * k**3)


def test_odd_closure_stays_odd_and_shift_equivariant(key):
    study = KSStudy(PRESETS["full"])
    net = study.closure(key, odd=True)
    assert isinstance(net, SpectralFeatures) and net.net.is_odd
    u = jax.random.normal(jax.random.fold_in(key, 1), (64,))
    np.testing.assert_allclose(net(-u), -net(u), atol=1e-12)
    np.testing.assert_allclose(net(jnp.roll(u, 7)), jnp.roll(net(u), 7), atol=1e-10)
    assert net(jnp.tile(u, 2)).shape == (128,)  # the out-of-domain grid, same spacing


def test_presets_feed_the_closure_derivatives_and_the_emulator_the_field(key):
    study = KSStudy(PRESETS["quick"])
    assert isinstance(study.closure(key), SpectralFeatures)
    assert isinstance(study.emulator(key), PeriodicCNN1d)
    legacy = KSStudy(PRESETS["legacy"])  # the earlier table's closure: the field alone
    assert isinstance(legacy.closure(key), PeriodicCNN1d)


def test_quick_hybrids_get_their_own_budget():
    """The quick hybrids train past the shared budget (their validation loss still fell
    from 200 to 1000 steps); the ablations keep the shared one."""
    quick = PRESETS["quick"]
    assert quick.hybrid_train.steps > quick.train.steps
    assert quick.emulator_steps is not None  # the --uq emulator ensemble keeps its own


def test_uq_calibrates_on_extra_held_out_trajectories(tmp_path):
    """``uq_calib_trajectories`` adds trajectories of their own seed to the validation ones
    for --uq's calibration only: new states (not a copy of any split), the same for the
    same config, absent without --uq, and no training run is invalidated by it."""
    from scilayers.experiments._common import config_stamp

    tiny = PRESETS["quick"].replace(trajectories=20, traj_steps=40, context_steps=4,
                                    corr_steps=20, main_horizon=10, n_test=2, n_ood=2,
                                    burn_in=5.0, extra_test_trajectories=0)  # fmt: skip
    plain = KSStudy(tiny).problem(tmp_path, False)
    assert plain.calib is None and plain.calibration[0] is plain.val
    cfg = tiny.replace(uq="ensemble", uq_calib_trajectories=3)
    prob = KSStudy(cfg).problem(tmp_path, False)
    windows, t0 = prob.calibration
    assert t0 is None and windows.shape == (plain.val.shape[0] + 3, *plain.val.shape[1:])
    np.testing.assert_array_equal(windows[: plain.val.shape[0]], plain.val)
    extra = windows[plain.val.shape[0] :]
    seen = np.concatenate([plain.train, plain.val])[:, 0]
    assert np.min(np.abs(extra[:, None, 0] - seen[None]).max(-1)) > 0.1  # not a copy
    np.testing.assert_array_equal(KSStudy(cfg).problem(tmp_path, False).calib, windows)
    assert config_stamp(cfg) == config_stamp(tiny)  # training runs stay cached
    assert config_stamp(cfg, uq=True) != config_stamp(tiny.replace(uq="ensemble"), uq=True)


def test_extra_test_trajectories_enlarge_both_sets_and_nothing_else(tmp_path):
    """``extra_test_trajectories`` appends trajectories of their own seed to the in-domain
    and the out-of-domain test sets: new states (not a copy of any split), on each set's
    domain, while training, validation and the original test trajectories stay as they are."""
    tiny = PRESETS["quick"].replace(trajectories=20, traj_steps=40, context_steps=4,
                                    corr_steps=20, main_horizon=10, n_test=2, n_ood=2,
                                    burn_in=5.0, extra_test_trajectories=0)  # fmt: skip
    plain = KSStudy(tiny).problem(tmp_path, False)
    more = KSStudy(tiny.replace(extra_test_trajectories=3)).problem(tmp_path, False)
    np.testing.assert_array_equal(more.train, plain.train)
    np.testing.assert_array_equal(more.val, plain.val)
    for name in ("id", "ood"):
        old, new = plain.eval_sets[name].data, more.eval_sets[name].data
        assert new.shape == (old.shape[0] + 3, *old.shape[1:])  # same grid and span
        np.testing.assert_array_equal(new[: old.shape[0]], old)
        seen = old[:, 0]
        if name == "id":
            seen = np.concatenate([seen, plain.train[:, 0], plain.val[:, 0]])
        extra = new[old.shape[0] :, 0]
        assert np.min(np.abs(extra[:, None] - seen[None]).max(-1)) > 0.1  # not a copy
    with pytest.raises(ValueError, match="extra_test_trajectories"):
        tiny.replace(extra_test_trajectories=-1)


def test_product_features_are_the_pairwise_products_and_never_in_an_odd_closure(key):
    dx = 44.0 / 64
    x = np.arange(64) * dx
    k = 2 * np.pi * 3 / (64 * dx)
    u = np.sin(k * x)
    feats = np.asarray(SpectralFeatures(_Channels(), dx, (0, 1), products=True)(jnp.asarray(u)))
    ux = k * np.cos(k * x)
    want = np.stack([u, ux, u * u, u * ux, ux * ux])
    np.testing.assert_allclose(feats, want, atol=1e-9)
    study = KSStudy(PRESETS["quick"].replace(closure_products=True))
    assert study.closure(key).products and study.closure(key).net.channels_in == 9
    odd = study.closure(key, odd=True)  # quadratic channels are even in u: left out
    assert not odd.products and odd.net.is_odd
    v = jax.random.normal(key, (64,))
    np.testing.assert_allclose(odd(-v), -odd(v), atol=1e-12)
