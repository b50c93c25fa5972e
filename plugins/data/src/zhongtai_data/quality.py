"""The ``data.quality`` job: schema, row count and quality report of each tabular file
of a committed version. The commit queues it; it can be run again from the API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from zhongtai.jobs import JobType
from zhongtai_data.local import local_copy
from zhongtai_data.models import File, Report
from zhongtai_data.tabular import quality_report, summarize_file

if TYPE_CHECKING:
    from zhongtai.jobs import JobContext

__all__ = ["QUALITY", "QualityParams"]


class QualityParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version_id: str = Field(min_length=1, max_length=32)


def run(ctx: JobContext, params: QualityParams) -> dict[str, Any]:
    platform = ctx.platform
    with platform.db.transaction() as session:
        files = [
            (row.id, row.path, row.sha256, row.tabular)
            for row in session.scalars(
                select(File).where(File.version_id == params.version_id, File.tabular.is_not(None))
            )
        ]
    done = failed = 0
    for index, (file_id, path, sha256, fmt) in enumerate(files):
        ctx.check_cancelled()
        ctx.progress(index / max(len(files), 1), f"{path} ({index + 1} of {len(files)})")
        try:
            with local_copy(platform, sha256) as local:
                summary = summarize_file(local, fmt)  # type: ignore[arg-type]
                report = quality_report(local, fmt)  # type: ignore[arg-type]
            status = "ok"
            done += 1
        except Exception as exc:  # a file the libraries cannot read: say so, go on
            summary = None
            report = {"problems": [f"{type(exc).__name__}: {exc}"]}
            status = "failed"
            failed += 1
        for problem in report.get("problems", [])[:5]:
            ctx.log(f"{path}: {problem}")
        with platform.db.transaction() as session:
            row = session.get(File, file_id)
            if row is None:
                continue  # the version was deleted meanwhile
            if summary is not None:
                row.columns = [{"name": c.name, "type": c.type} for c in summary.columns]
                row.rows = summary.rows
            stored = session.get(Report, file_id)
            if stored is None:
                session.add(
                    Report(file_id=file_id, status=status, report=report, job_id=ctx.job_id)
                )
            else:
                stored.status, stored.report, stored.job_id = status, report, ctx.job_id
        ctx.log(f"{path}: {status}, {report.get('rows', '?')} rows")
    ctx.progress(1.0, f"{done} reports, {failed} failed")
    return {"files": len(files), "reports": done, "failed": failed}


QUALITY = JobType(
    "data.quality",
    run,
    QualityParams,
    description="Schema, row count and quality report of a version's tabular files",
    timeout=3600,
    retries=1,
    permission="data.dataset.write",
)
