"""The data plugin's permissions; the role named is the lowest that holds each by default."""

from __future__ import annotations

from zhongtai.identity.roles import Permission, Role

DATASET_READ = Permission(
    "data.dataset.read", "See a project's datasets, versions and files", Role.viewer
)
DATASET_WRITE = Permission(
    "data.dataset.write", "Create datasets, upload files and commit versions", Role.developer
)
DATASET_DELETE = Permission(
    "data.dataset.delete",
    "Delete datasets and versions, even versions something downstream uses (force)",
    Role.maintainer,
)
SOURCE_MANAGE = Permission(
    "data.source.manage", "Register data sources and their credentials", Role.maintainer
)

PERMISSIONS = [DATASET_READ, DATASET_WRITE, DATASET_DELETE, SOURCE_MANAGE]
