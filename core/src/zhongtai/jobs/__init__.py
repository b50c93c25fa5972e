"""Jobs: the work engine every plugin uses (job types, the jobs table, queues, logs).

What a plugin needs::

    from zhongtai.jobs import Admission, JobContext, JobType, Resources, admits_only
"""

from zhongtai.jobs.admission import Admission, AdmissionRequest, admits_only
from zhongtai.jobs.context import JobCancelled, JobContext
from zhongtai.jobs.types import InvalidParams, JobType, Resources

__all__ = [
    "Admission",
    "AdmissionRequest",
    "InvalidParams",
    "JobCancelled",
    "JobContext",
    "JobType",
    "Resources",
    "admits_only",
]
