-- Profiles and interests. A user without a row has the default profile (see shared/domain/profiles.py).
CREATE TABLE profiles (
    user_id       uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    display_name  text NOT NULL DEFAULT '',
    bio           text NOT NULL DEFAULT '',
    language      text NOT NULL DEFAULT 'en',
    region        text,
    interests     text[] NOT NULL DEFAULT '{}',
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- When a user last signed in or was seen: the profile warming job preloads the recent ones.
ALTER TABLE users ADD COLUMN last_seen_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX users_last_seen_idx ON users (last_seen_at DESC);
