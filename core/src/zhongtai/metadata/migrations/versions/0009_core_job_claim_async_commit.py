"""jobs: a claim made by zt_claim_job commits without waiting for the disk

A claim (``queued`` → ``running``) is the one state change of a job that no caller
waits on and that at-least-once delivery already recovers from: if PostgreSQL crashes
(a crash, not a restart, which flushes everything) before the claim reaches the disk,
the row is ``queued`` again afterwards, the worker's outcome finds no running attempt
and is dropped, and the reconciler dispatches the job again. So the function sets
``synchronous_commit`` off for its own transaction (``set_config(..., true)``): the
claim returns without waiting for the WAL flush, which on a busy machine cost the
worker a flush per job, in time and in PostgreSQL's CPU. Nothing else changes:
the setting ends with the claim's transaction, so the attempt's outcome, on the same
connection, commits synchronously as before, and its flush carries the claim to the
disk with it (the WAL is written in order). A job's row at submission, and every
other write, still wait for the flush.

Keep the UPDATE's SET list the same as the engine's ``_CLAIM``.

Revision ID: c0e1a0000009
Revises: c0e1a0000008
Create Date: 2026-12-05 18:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "c0e1a0000009"
down_revision: str | Sequence[str] | None = "c0e1a0000008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The function as migration c0e1a0000008 made it, with {commit} where this one adds a
# line: the upgrade puts it in, the downgrade leaves it out.
CLAIM_FUNCTION = """
CREATE OR REPLACE FUNCTION zt_claim_job(
    p_id text, p_worker text, p_now timestamptz, p_limit integer, p_types text[]
) RETURNS SETOF jobs
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_project text;
    v_busy integer;
    v_claimed jobs;
BEGIN
    SELECT project_id INTO v_project FROM jobs
     WHERE id = p_id AND status = 'queued' AND type = ANY (p_types)
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext(v_project));
    SELECT count(*) INTO v_busy FROM (
        SELECT 1 FROM jobs
         WHERE project_id = v_project AND status = 'running' AND id <> p_id
         LIMIT p_limit
    ) AS busy;
    IF v_busy >= p_limit THEN
        RETURN;
    END IF;{commit}
    UPDATE jobs
       SET status = 'running', attempts = attempts + 1, worker = p_worker,
           started_at = p_now, heartbeat_at = p_now, error = NULL
     WHERE id = p_id
    RETURNING * INTO v_claimed;
    RETURN NEXT v_claimed;
END
$$
"""

# For this transaction only (is_local): the claim's commit does not wait for the flush.
ASYNC_COMMIT = "\n    PERFORM set_config('synchronous_commit', 'off', true);"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CLAIM_FUNCTION.replace("{commit}", ASYNC_COMMIT))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CLAIM_FUNCTION.replace("{commit}", ""))
