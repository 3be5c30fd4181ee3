-- Co-editing (docs/collab.md): a co-edited document's Yjs state and the last update-log id
-- folded into it, written by the flusher with the text in the same statement. NULL for a
-- document never co-edited: it is seeded from its text on first use.
ALTER TABLE documents ADD COLUMN ystate bytea, ADD COLUMN ylog text;
