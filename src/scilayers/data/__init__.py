"""Synthetic truth (batched, seeded, cached on disk), loaders and splits."""

from ._arterial import ARTERIAL_CASES as ARTERIAL_CASES
from ._arterial import arterial_case_path as arterial_case_path
from ._arterial import load_arterial_case as load_arterial_case
from ._arterial import run_arterial_case as run_arterial_case
from ._arterial import write_arterial_case as write_arterial_case
from ._era5 import hours_since as hours_since
from ._era5 import load_era5_t2m as load_era5_t2m
from ._era5 import load_reference_winds as load_reference_winds
from ._era5 import write_synthetic_era5 as write_synthetic_era5
from ._fingerprint import code_fingerprint as code_fingerprint
from ._io import DATA_DIR_ENV as DATA_DIR_ENV
from ._io import cached as cached
from ._io import data_dir as data_dir
from ._io import load_ks as load_ks
from ._io import save_dataset as save_dataset
from ._ks import KSDataConfig as KSDataConfig
from ._ks import generate_ks as generate_ks
from ._ks import ks_model as ks_model
from ._ks import ks_truth as ks_truth
from ._ks import steady_trajectories as steady_trajectories
from ._plot import plot_spacetime as plot_spacetime
from ._splits import SPLITS as SPLITS
from ._splits import assign_splits as assign_splits
from ._splits import select_split as select_split
