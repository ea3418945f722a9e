"""Studies: one module per experiment, each with typed presets and a `main` runner."""

EXPERIMENTS = {"ks": "Kuramoto–Sivashinsky: hybrid ETDRK4 + closure vs baselines"}
