"""jobs: claim a job in one statement on PostgreSQL (zt_claim_job)

A worker's claim used to be a transaction of four round trips: BEGIN, the claim's
UPDATE (which also takes the project's admission lock), the count of the project's
running jobs, COMMIT. Where no plugin's admission policy applies to the job, the
core's limit is all there is to decide, and this function decides it in one
statement, as exactly: it locks the row, takes the same advisory lock, and counts in
a statement of its own (a VOLATILE PL/pgSQL function takes a fresh snapshot for each
statement under READ COMMITTED, so the count sees every claim committed before the
lock was granted). It returns the claimed row, or no row for anything else (not
queued, a type the caller did not name, the project at its limit), which the engine
then decides the long way. SQLite has no such function; it keeps the transaction.

Keep the UPDATE's SET list the same as the engine's ``_CLAIM``.

Revision ID: c0e1a0000008
Revises: c0e1a0000007
Create Date: 2026-12-05 12:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "c0e1a0000008"
down_revision: str | Sequence[str] | None = "c0e1a0000007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

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
    END IF;
    UPDATE jobs
       SET status = 'running', attempts = attempts + 1, worker = p_worker,
           started_at = p_now, heartbeat_at = p_now, error = NULL
     WHERE id = p_id
    RETURNING * INTO v_claimed;
    RETURN NEXT v_claimed;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CLAIM_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS zt_claim_job(text, text, timestamptz, integer, text[])")
