-- The runtime registry: what each runtime is (its interpreters, the extension of its entry
-- points, how to ask its version, how a pack's dependencies are installed for it), from three
-- sources:
--   * the templates seeded below, one per interpreter family the protocol knows
--     (`attune_protocol::Runtime`), refs `core.<family>`, pack_ref NULL;
--   * packs' `runtimes/*.yaml` files (upstream Attune's runtime format), refs
--     `<pack>.<name>`, pack_ref set, replaced whenever the pack is registered again;
--   * runtimes a worker reports at enrollment that no record covers, refs
--     `detected.<name>`, pack_ref NULL, auto_detected TRUE.
CREATE TABLE runtimes (
    ref             TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    -- The pack whose runtimes/*.yaml defines it; NULL for templates and detected runtimes.
    pack_ref        TEXT REFERENCES packs (ref) ON DELETE CASCADE,
    description     TEXT NOT NULL DEFAULT '',
    -- Lowercase names that also mean this runtime (`python3`, `nodejs`).
    aliases         TEXT[] NOT NULL DEFAULT '{}',
    -- Interpreter binaries, in the order they are looked up.
    interpreters    TEXT[] NOT NULL DEFAULT '{}',
    -- Of its entry points, with the dot (`.py`).
    file_extension  TEXT,
    -- The command that prints its version (`python3 --version`), and the regex whose first
    -- group is the version in that output.
    version_command TEXT,
    version_regex   TEXT,
    -- How a pack's dependencies are installed for it: `attune_protocol::api::RuntimeEnvironment`
    -- as JSON (kind, manifest_file, create_command, install_command, interpreter_path, env_vars);
    -- NULL when the runtime installs nothing.
    environment     JSONB,
    auto_detected   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX runtimes_pack_ref ON runtimes (pack_ref) WHERE pack_ref IS NOT NULL;

-- The templates. Interpreter names, their order and the version commands are those of the
-- agent's detection (crates/attune-agent/src/detect.rs: `runtime_binaries`,
-- `version_arguments`, `parse_version`), so the registry describes what agents report; the
-- python and node environments are those the agent builds lazily
-- (crates/attune-agent/src/environment.rs). `{interpreter}`, `{env_dir}`, `{pack_dir}` and
-- `{manifest_path}` are upstream Attune's template variables.
--
-- `native` has no template: its entry point is itself an executable, so there is no
-- interpreter to look up, no version to probe and no dependency file to install from; the
-- agent never detects it (it is only declared), and nothing a template holds would apply.
INSERT INTO runtimes (ref, name, description, aliases, interpreters, file_extension,
                      version_command, version_regex, environment) VALUES
    ('core.shell', 'shell', 'POSIX shell scripts (bash when the script asks for it, else sh)',
     '{sh,bash}', '{bash,sh}', '.sh', 'bash --version',
     '(?:GNU bash, version |BusyBox v|zsh )(\d+(?:\.\d+)*)', NULL),
    ('core.python', 'python', 'Python 3; a pack''s requirements.txt is installed into a virtualenv',
     '{python3}', '{python3,python}', '.py', 'python3 --version',
     'Python (\d+(?:\.\d+)*)',
     '{"kind": "virtualenv", "manifest_file": "requirements.txt",
       "create_command": ["{interpreter}", "-m", "venv", "{env_dir}"],
       "install_command": ["{env_dir}/bin/python", "-m", "pip", "install",
                           "--disable-pip-version-check", "--no-input", "-r", "{manifest_path}"],
       "interpreter_path": "{env_dir}/bin/python", "env_vars": {}}'),
    ('core.node', 'node', 'Node.js; a pack''s package.json is installed with npm',
     '{nodejs,node.js,javascript}', '{node,nodejs}', '.js', 'node --version',
     'v(\d+(?:\.\d+)*)',
     '{"kind": "node_modules", "manifest_file": "package.json",
       "create_command": [],
       "install_command": ["npm", "install", "--no-audit", "--no-fund", "--no-update-notifier",
                           "--omit=dev", "--install-links"],
       "env_vars": {"NODE_PATH": {"operation": "set", "value": "{env_dir}/node_modules"}}}'),
    ('core.ruby', 'ruby', 'Ruby; a pack''s Gemfile is installed with bundler',
     '{}', '{ruby}', '.rb', 'ruby --version',
     'ruby (\d+(?:\.\d+)*)',
     '{"kind": "bundler", "manifest_file": "Gemfile",
       "create_command": [],
       "install_command": ["bundle", "install", "--gemfile", "{manifest_path}"],
       "env_vars": {"BUNDLE_PATH": {"operation": "set", "value": "{env_dir}"},
                    "BUNDLE_GEMFILE": {"operation": "set", "value": "{manifest_path}"}}}'),
    ('core.go', 'go', 'Go sources, run with `go run`',
     '{golang}', '{go}', '.go', 'go version',
     'go version go(\d+(?:\.\d+)*)', NULL),
    ('core.java', 'java', 'Java single-file source programs',
     '{}', '{java}', '.java', 'java -version',
     'version "([^"]+)"', NULL),
    ('core.perl', 'perl', 'Perl 5 scripts',
     '{}', '{perl}', '.pl', 'perl -v',
     '\(v(\d+(?:\.\d+)*)\)', NULL),
    ('core.r', 'r', 'R scripts, run with Rscript',
     '{rscript}', '{Rscript,R}', '.R', 'Rscript --version',
     'R(?:\)| front-end)? version (\d+(?:\.\d+)*)', NULL);
