"""`hydra/launcher=slurm`'s launcher: Hydra's submitit SLURM launcher, with a console line per job."""
