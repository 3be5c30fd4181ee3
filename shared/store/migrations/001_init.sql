-- Accounts, tenants and documents.
CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id             uuid PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    username       text NOT NULL,
    password_hash  text NOT NULL,
    role           text NOT NULL CHECK (role IN ('owner', 'member')),
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_username_key ON users (lower(username));
CREATE INDEX users_tenant_idx ON users (tenant_id);

-- tenant_id is NULL for a room document created by a match: its members are listed below.
CREATE TABLE documents (
    id          uuid PRIMARY KEY,
    tenant_id   uuid REFERENCES tenants (id) ON DELETE CASCADE,
    title       text NOT NULL,
    content     text NOT NULL DEFAULT '',
    version     bigint NOT NULL DEFAULT 0 CHECK (version >= 0),
    updated_by  uuid,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX documents_tenant_page_idx ON documents (tenant_id, created_at DESC, id DESC);

CREATE TABLE document_members (
    document_id  uuid NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (document_id, user_id)
);
CREATE INDEX document_members_user_idx ON document_members (user_id);
