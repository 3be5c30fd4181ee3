-- Flush CPU for large documents: store content and ystate out of line uncompressed (EXTERNAL)
-- rather than pglz-compressed (EXTENDED, the default). A flush rewrites a document whole, so a
-- large co-edited one is compressed again at every pass: ten 512 KB documents (text + state)
-- cost Postgres 440-510 ms of CPU a pass, 250-270 ms uncompressed (measured with a one-pass
-- probe on the 2-core bench host, where that CPU is taken from the api and Valkey). A row under
-- toast_tuple_target (004) is never compressed either way, so small documents do not change;
-- large ones take their uncompressed size on disk and in WAL. New row versions only, as in 004.
ALTER TABLE documents ALTER COLUMN content SET STORAGE EXTERNAL;
ALTER TABLE documents ALTER COLUMN ystate SET STORAGE EXTERNAL;
