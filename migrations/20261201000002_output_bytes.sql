-- Any output is stored. Postgres `text` and `jsonb` reject the NUL byte and invalid UTF-8, so an
-- action printing `printf 'a\000b'` made its log chunk and report fail to store. Output is kept
-- as the bytes the action wrote (`bytea`; the API shows them as output text, a lossless escape,
-- see attune_protocol::output), and the result as `json`, which keeps `\u0000` escapes as text.
-- Existing text becomes its UTF-8 bytes.

ALTER TABLE executions
    ALTER COLUMN stdout DROP DEFAULT,
    ALTER COLUMN stdout TYPE BYTEA USING convert_to(stdout, 'UTF8'),
    ALTER COLUMN stdout SET DEFAULT ''::bytea,
    ALTER COLUMN stderr DROP DEFAULT,
    ALTER COLUMN stderr TYPE BYTEA USING convert_to(stderr, 'UTF8'),
    ALTER COLUMN stderr SET DEFAULT ''::bytea,
    ALTER COLUMN result TYPE JSON USING result::json;

ALTER TABLE execution_logs
    ALTER COLUMN data TYPE BYTEA USING convert_to(data, 'UTF8');
