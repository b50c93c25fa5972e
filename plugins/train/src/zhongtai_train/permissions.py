"""The train plugin's permissions; the role named is the lowest that holds each by default."""

from __future__ import annotations

from zhongtai.identity.roles import Permission, Role

EXPERIMENT_READ = Permission(
    "train.experiment.read",
    "See a project's experiments, runs, metrics, artifacts and registered models",
    Role.viewer,
)
EXPERIMENT_WRITE = Permission(
    "train.experiment.write",
    "Create experiments and runs, log metrics and artifacts, register models",
    Role.developer,
)
EXPERIMENT_DELETE = Permission(
    "train.experiment.delete",
    "Delete experiments, runs, registered models and model versions",
    Role.maintainer,
)

JOB_RUN = Permission(
    "train.job.run",
    "Start training jobs (code, data and compute chosen by the submitter)",
    Role.developer,
)

QUOTA_MANAGE = Permission(
    "train.quota.manage",
    "Set the project's GPU quota (how many GPUs its training jobs may hold at once)",
    Role.admin,
)

PERMISSIONS = [EXPERIMENT_READ, EXPERIMENT_WRITE, EXPERIMENT_DELETE, JOB_RUN, QUOTA_MANAGE]
