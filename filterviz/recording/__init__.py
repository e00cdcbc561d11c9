"""What a run leaves behind: its files (pictures, curves, arrays) and its MLflow record
(store, runs, sweeps)."""
