"""The object store: one interface, drivers chosen by configuration.

The core builds the configured store with stevedore from the entry-point group
``zhongtai.storage`` (``local`` and ``s3`` ship with the core); plugins receive it
and use only the :class:`ObjectStore` interface::

    info = store.put("datasets/42/v1/train.csv", fileobj, content_type="text/csv")
    for chunk in store.open(info.key, start=0, end=1024):
        ...

Driver modules are not imported here, so importing this package never imports
boto3.
"""

from zhongtai.storage.base import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_CONTENT_TYPE,
    MAX_KEY_BYTES,
    MAX_PARTS,
    MIN_PART_SIZE,
    ByteStream,
    InvalidKey,
    InvalidUpload,
    NotSupported,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    PutData,
    StorageError,
    UploadNotFound,
    validate_key,
    validate_prefix,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_CONTENT_TYPE",
    "MAX_KEY_BYTES",
    "MAX_PARTS",
    "MIN_PART_SIZE",
    "ByteStream",
    "InvalidKey",
    "InvalidUpload",
    "NotSupported",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "PutData",
    "StorageError",
    "UploadNotFound",
    "validate_key",
    "validate_prefix",
]
