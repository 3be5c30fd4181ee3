-- Named revisions of a document. job_id makes the snapshot job idempotent: arq runs a job at
-- least once, and a rerun after a worker died mid-job must not add a second row.
CREATE TABLE document_snapshots (
    id           uuid PRIMARY KEY,
    document_id  uuid NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    label        text NOT NULL,
    content      text NOT NULL,
    version      bigint NOT NULL,
    created_by   uuid,
    created_at   timestamptz NOT NULL DEFAULT now(),
    job_id       text NOT NULL UNIQUE
);
CREATE INDEX document_snapshots_doc_idx ON document_snapshots (document_id, created_at DESC, id DESC);
