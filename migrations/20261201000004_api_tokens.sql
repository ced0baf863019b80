-- API tokens: only a hash of each is kept (sha256 of the token's text; tokens carry 256 random
-- bits, so a fast hash is enough). A revoked token stays listed with its revocation time.
CREATE TABLE api_tokens (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'executor', 'editor', 'admin')),
    token_sha256 BYTEA NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at TIMESTAMPTZ
);
