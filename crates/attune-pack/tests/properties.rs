//! Property tests with generated inputs: the image reference parser, the pack loader (YAML-ish
//! action and manifest text, arbitrary, mutated and hand-assembled tar bytes) and the reader
//! of stored archives. Every input is bounded in size, so no case can hang or exhaust memory;
//! whatever comes in, the answer is `Ok` or an error, never a panic.
//!
//! Failures print the shrunk input; no regression file is written into the tree.

mod common;

use attune_pack::stored::read_stored_archive;
use attune_pack::{load_pack_archive, validate_image_reference, PackError, PackLimits};
use common::{ACTION_YAML, PACK_YAML};
use proptest::prelude::*;
use proptest::test_runner::Config;

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Limits small enough that a generated archive can reach every one of them.
fn small_limits() -> PackLimits {
    PackLimits {
        max_archive_bytes: 256 * 1024,
        max_unpacked_bytes: 64 * 1024,
        max_files: 32,
    }
}

// ---------------------------------------------------------------------------------------------
// Image references
// ---------------------------------------------------------------------------------------------

/// Whether Docker would accept `reference`: its reference grammar (distribution/reference
/// `ReferenceRegexp`), with the name's first component read as a registry when it has a dot
/// or a port or is `localhost` (as `splitDockerDomain` does), and at most 255 characters of
/// name. Whatever the parser accepts, the engine must accept too.
struct DockerGrammar {
    with_registry: regex_lite::Regex,
    without_registry: regex_lite::Regex,
}

static DOCKER: std::sync::LazyLock<DockerGrammar> = std::sync::LazyLock::new(DockerGrammar::new);

impl DockerGrammar {
    fn new() -> DockerGrammar {
        let alphanumeric = "[a-z0-9]+";
        let separator = "(?:[._]|__|[-]+)";
        let path_component = format!("{alphanumeric}(?:{separator}{alphanumeric})*");
        let domain_component = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
        let domain_name = format!("{domain_component}(?:\\.{domain_component})*");
        let ipv6 = "\\[(?:[a-fA-F0-9:]+)\\]";
        let domain = format!("(?:{domain_name}|{ipv6})(?::[0-9]+)?");
        let path = format!("{path_component}(?:/{path_component})*");
        let tag = "[\\w][\\w.-]{0,127}";
        let digest = "[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}";
        let suffix = format!("(?::{tag})?(?:@{digest})?$");
        DockerGrammar {
            with_registry: regex_lite::Regex::new(&format!("^{domain}/{path}{suffix}"))
                .expect("the reference grammar compiles"),
            without_registry: regex_lite::Regex::new(&format!("^{path}{suffix}"))
                .expect("the reference grammar compiles"),
        }
    }

    fn accepts(&self, reference: &str) -> bool {
        let name = reference_name(reference);
        let has_registry = name.split_once('/').is_some_and(|(first, _)| {
            first.contains('.') || first.contains(':') || first == "localhost"
        });
        let grammar = if has_registry {
            &self.with_registry
        } else {
            &self.without_registry
        };
        name.len() <= 255 && grammar.is_match(reference)
    }
}

/// The name part of a reference (before `:tag` and `@digest`).
fn reference_name(reference: &str) -> &str {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    match without_digest.rfind(':') {
        Some(colon) if !without_digest[colon..].contains('/') => &without_digest[..colon],
        _ => without_digest,
    }
}

const HEX64: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Strings made of the pieces references are made of, so that most cases reach deep into the
/// parser (registries, ports, IPv6, separators, tags, digests) rather than failing at once.
fn reference_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("a".to_string()),
        Just("z9".to_string()),
        Just("0".to_string()),
        Just("A".to_string()),
        Just(".".to_string()),
        Just("-".to_string()),
        Just("_".to_string()),
        Just("__".to_string()),
        Just(":".to_string()),
        Just("/".to_string()),
        Just("@".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("::1".to_string()),
        Just("localhost".to_string()),
        Just("example.com".to_string()),
        Just("5000".to_string()),
        Just("latest".to_string()),
        Just("sha256:".to_string()),
        Just(HEX64.to_string()),
        Just(HEX64.to_uppercase()),
        Just(" ".to_string()),
        Just("é".to_string()),
        Just("\u{0}".to_string()),
        "[a-z0-9]{1,6}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..14).prop_map(|pieces| pieces.concat())
}

/// References in the subset of Docker's grammar the parser supports: optional registry host
/// (labels, optional port, or localhost), lowercase path components with separators, optional
/// tag, optional sha256 digest.
fn valid_reference() -> impl Strategy<Value = String> {
    let label = "[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?";
    let registry = prop_oneof![
        Just(None),
        Just(Some("localhost".to_string())),
        Just(Some("localhost:5000".to_string())),
        Just(Some("[::1]:5000".to_string())),
        Just(Some("[fe80::a:1]".to_string())),
        (
            prop::collection::vec(label, 2..4),
            prop::option::of(1u16..u16::MAX)
        )
            .prop_map(|(labels, port)| {
                let host = labels.join(".");
                Some(match port {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                })
            }),
    ];
    let component = "[a-z0-9]{1,8}((\\.|_|__|-{1,3})[a-z0-9]{1,8}){0,2}";
    let path = prop::collection::vec(component, 1..4).prop_map(|parts| parts.join("/"));
    let tag = prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}");
    let digest = prop::option::of(Just(format!("sha256:{HEX64}")));
    (registry, path, tag, digest).prop_map(|(registry, path, tag, digest)| {
        let mut reference = match registry {
            Some(registry) => format!("{registry}/{path}"),
            // A first component with a dot would be read as a registry: keep it a path.
            None => path.replace('.', "-"),
        };
        if let Some(tag) = tag {
            reference.push(':');
            reference.push_str(&tag);
        }
        if let Some(digest) = digest {
            reference.push('@');
            reference.push_str(&digest);
        }
        reference
    })
}

/// Valid references with a few characters replaced, inserted or removed: inputs at the edge
/// of the grammar, where a lenient parser would accept what Docker refuses.
fn near_reference() -> impl Strategy<Value = String> {
    let alphabet: Vec<char> = "az09AZ.-_:/@[]".chars().collect();
    let edit = (
        any::<prop::sample::Index>(),
        prop::sample::select(alphabet),
        0..3u8,
    );
    (valid_reference(), prop::collection::vec(edit, 1..4)).prop_map(|(reference, edits)| {
        let mut characters: Vec<char> = reference.chars().collect();
        for (at, character, kind) in edits {
            let index = at.index(characters.len() + 1);
            match kind {
                0 if index < characters.len() => characters[index] = character,
                1 if index < characters.len() => {
                    characters.remove(index);
                }
                _ => characters.insert(index, character),
            }
        }
        characters.into_iter().collect()
    })
}

proptest! {
    #![proptest_config(config(10_000))]

    /// Anything at all: an answer, never a panic.
    #[test]
    fn image_reference_parser_never_panics(text in prop::collection::vec(any::<char>(), 0..300)) {
        let text: String = text.into_iter().collect();
        let _ = validate_image_reference(&text);
    }

    /// What the parser accepts, Docker's grammar accepts (so no accepted image fails only at
    /// run time for its name).
    #[test]
    fn accepted_references_follow_dockers_grammar(reference in prop_oneof![reference_like(), near_reference()]) {
        if validate_image_reference(&reference).is_ok() {
            prop_assert!(
                DOCKER.accepts(&reference),
                "accepted {reference:?}, which Docker refuses"
            );
        }
    }

    /// Every reference of the supported grammar is accepted.
    #[test]
    fn references_of_the_grammar_are_accepted(reference in valid_reference()) {
        prop_assert!(DOCKER.accepts(&reference), "{reference:?}");
        let result = validate_image_reference(&reference);
        prop_assert!(result.is_ok(), "{reference:?}: {result:?}");
    }

    /// Upper case in a repository path is always refused (Docker refuses it too).
    #[test]
    fn upper_case_repository_paths_are_refused(reference in valid_reference(), at in any::<prop::sample::Index>()) {
        let name = reference_name(&reference);
        let path_start = name.find('/').filter(|slash| {
            let first = &name[..*slash];
            first.contains('.') || first.contains(':') || first == "localhost"
        }).map_or(0, |slash| slash + 1);
        let letters: Vec<usize> = name[path_start..]
            .char_indices()
            .filter(|(_, character)| character.is_ascii_lowercase())
            .map(|(index, _)| path_start + index)
            .collect();
        prop_assume!(!letters.is_empty());
        let index = letters[at.index(letters.len())];
        let mut shouted = reference.clone();
        shouted.replace_range(index..index + 1, &reference[index..index + 1].to_uppercase());
        prop_assert!(validate_image_reference(&shouted).is_err(), "{shouted:?} was accepted");
    }
}

// ---------------------------------------------------------------------------------------------
// The pack loader
// ---------------------------------------------------------------------------------------------

/// Text that looks like YAML: keys the loader knows, values of every kind, indentation,
/// flow collections, anchors, aliases, tags, block scalars, comments, stray bytes.
fn yaml_like() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        4 => prop::sample::select(vec![
            "ref", "name", "pack", "label", "runner_type", "entry_point", "parameters",
            "timeout", "parameter_delivery", "parameter_format", "container", "image",
            "pull_policy", "env", "user", "workdir", "resources", "memory", "cpus", "pids",
            "read_only", "cap_add", "isolation", "pool", "min_idle", "max", "max_uses",
            "idle_timeout", "idempotent", "enabled", "type", "properties", "required",
            "default", "enum", "secret", "version", "tags",
        ]).prop_map(str::to_string),
        3 => prop::sample::select(vec![
            ": ", ":", "\n", "\n  ", "\n    ", "\n- ", "- ", ", ", "{", "}", "[", "]", "\"",
            "'", "&a ", "*a", "!!str ", "!!binary ", "!custom ", "? ", "| \n  ", "> \n  ",
            "# note", "---\n", "...\n", "\t", "<<: *a", "%YAML 1.2\n",
        ]).prop_map(str::to_string),
        3 => prop::sample::select(vec![
            "demo", "demo.echo", "demo.x", "shell", "python", "native", "echo.sh", "../x",
            "/abs", "busybox:1.36", "Busybox", "pooled", "per-execution", "env", "stdin",
            "file", "json", "yaml", "dotenv", "true", "false", "null", "~", "0", "-1",
            "1e400", "99999999999999999999", "5m", "1.5s", "64Mi", "1Ki", "0.5", "NET_ADMIN",
            "/proc/self", "string", "integer", "object", "array", "\u{0}", "é", "\u{feff}",
        ]).prop_map(str::to_string),
        1 => "[ -~]{1,8}",
        1 => any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(token, 0..80).prop_map(|tokens| tokens.concat())
}

/// An action file assembled from plausible (and implausible) settings, each key at most
/// once, in any order, sometimes with one setting repeated: cases reach past parsing into
/// validation (refs, runtimes, entry points, timeouts, containers, resources, pools, parameter
/// schemas) and into the duplicate-key check.
fn action_lines() -> impl Strategy<Value = String> {
    let settings: Vec<Vec<&'static str>> = vec![
        vec!["ref: demo.echo\n", "name: echo\n", "ref: other.echo\n", "ref: demo\n"],
        vec!["runner_type: shell\n", "runner_type: native\n", "runner_type: cobol\n"],
        vec![
            "entry_point: echo.sh\n",
            "entry_point: ../pack.yaml\n",
            "entry_point: /bin/sh\n",
            "entry_point: missing.sh\n",
        ],
        vec!["timeout: 5m\n", "timeout: 0\n", "timeout: 1.5\n", "timeout: 86400\n"],
        vec![
            "container: busybox:1.36\n",
            "container: Busybox\n",
            "container:\n  image: busybox:1.36\n  env: {A: b}\n",
            "container:\n  image: busybox\n  resources:\n    memory: 1Ki\n    cpus: 64\n",
            "container:\n  image: busybox\n  resources:\n    memory: 64Mi\n    pids: 100\n",
            "container:\n  image: busybox\n  workdir: /proc/1\n  cap_add: [NET_ADMIN]\n",
            "container:\n  image: busybox\n  user: {a: b}\n",
            "container:\n  image: busybox\n  pull_policy: sometimes\n",
            "container:\n  image: busybox\n  read_only: true\n  env: {A: 1, B: [x]}\n",
        ],
        vec!["isolation: per-execution\n", "isolation: pooled\n", "isolation: shared\n"],
        vec![
            "pool: {min_idle: 1, max: 2, max_uses: 5, idle_timeout: 30s}\n",
            "pool: {min_idle: 2, max: 1}\n",
            "pool: {max: 100000}\n",
        ],
        vec![
            "parameters:\n  type: object\n  properties:\n    a: {type: string, default: x, secret: true}\n",
            "parameters:\n  type: object\n  properties:\n    a: {type: string, default: 1}\n",
            "parameters:\n  a:\n    type: integer\n    required: true\n    secret: true\n",
            "parameters:\n  type: object\n  properties:\n    a: {$ref: 'http://x/y'}\n",
            "parameters:\n  type: object\n  required: [missing]\n",
            "parameters:\n  type: object\n  properties:\n    a: {type: strin}\n",
            "parameters: [1, 2]\n",
        ],
        vec!["parameter_delivery: file\n", "parameter_delivery: pigeon\n"],
        vec!["parameter_format: yaml\n", "parameter_format: dotenv\n"],
        vec!["enabled: false\n", "enabled: maybe\n"],
        vec!["idempotent: true\n"],
    ];
    let every_line: Vec<&'static str> = settings.iter().flatten().copied().collect();
    // The first option of each setting is a valid one, chosen nine times in ten, so that a
    // case has about one bad setting and validation is reached with each in turn.
    // The first three settings are required: rarely left out.
    let chosen: Vec<_> = settings
        .into_iter()
        .enumerate()
        .map(|(index, options)| {
            let valid = options[0];
            let weighted: Vec<&'static str> = std::iter::repeat_n(valid, 9 * (options.len() - 1))
                .chain(options)
                .collect();
            let presence = if index < 3 { 0.97 } else { 0.6 };
            prop::option::weighted(presence, prop::sample::select(weighted))
        })
        .collect();
    (
        chosen,
        prop::option::weighted(0.2, prop::sample::select(every_line)),
    )
        .prop_flat_map(|(chosen, repeated)| {
            let mut lines: Vec<&'static str> = chosen.into_iter().flatten().collect();
            lines.extend(repeated);
            Just(lines).prop_shuffle()
        })
        .prop_map(|lines| lines.concat())
}

/// A pack archive of `pack.yaml`, one action file and its script, plus `extra` files.
fn pack_archive(pack_yaml: &str, action_yaml: &str, extra: &[(String, Vec<u8>, u32)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut append = |path: &str, contents: &[u8], mode: u32| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(mode);
        header.set_size(contents.len() as u64);
        builder
            .append_data(&mut header, path, contents)
            .expect("append to test archive");
    };
    append("pack.yaml", pack_yaml.as_bytes(), 0o644);
    append("actions/echo.yaml", action_yaml.as_bytes(), 0o644);
    append("actions/echo.sh", b"#!/bin/sh\necho hi\n", 0o755);
    for (path, contents, mode) in extra {
        append(path, contents, *mode);
    }
    builder.into_inner().expect("finish test archive")
}

/// A loaded pack's invariants: its normalized archive loads back to the same pack.
fn check_loaded(result: Result<attune_pack::Pack, PackError>) -> Result<(), TestCaseError> {
    if let Ok(pack) = result {
        prop_assert_eq!(pack.sha256.len(), 64);
        for action in &pack.actions {
            let prefix = format!("{}.", pack.pack_ref);
            prop_assert!(
                action.action_ref.starts_with(&prefix),
                "{}",
                action.action_ref
            );
        }
        let archive = pack.to_archive().expect("a loaded pack writes its archive");
        let again = load_pack_archive(&archive, &PackLimits::default())
            .expect("a pack's own archive loads");
        prop_assert_eq!(&again.sha256, &pack.sha256);
        prop_assert_eq!(again.actions.len(), pack.actions.len());
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(3_000))]

    /// YAML-ish text as the action file, and as the manifest.
    #[test]
    fn loader_answers_any_yaml_like_text(action in yaml_like(), manifest in yaml_like(), which in 0..3u8) {
        let (pack_yaml, action_yaml) = match which {
            0 => (PACK_YAML.to_string(), action),
            1 => (manifest, ACTION_YAML.to_string()),
            _ => (manifest, action),
        };
        let archive = pack_archive(&pack_yaml, &action_yaml, &[]);
        check_loaded(load_pack_archive(&archive, &small_limits()))?;
    }

    /// Action files assembled from plausible settings reach validation; repeated keys among
    /// them are always refused.
    #[test]
    fn loader_answers_assembled_action_files(action in action_lines()) {
        let archive = pack_archive(PACK_YAML, &action, &[]);
        let result = load_pack_archive(&archive, &small_limits());
        let mut keys: Vec<&str> = action
            .lines()
            .filter(|line| !line.starts_with(' '))
            .filter_map(|line| line.split(':').next())
            .collect();
        let count = keys.len();
        keys.sort_unstable();
        keys.dedup();
        if keys.len() != count {
            prop_assert!(
                matches!(&result, Err(PackError::Yaml { message, line: Some(_), .. }) if message.contains("duplicate key")),
                "{action:?} repeats a key but gave {result:?}"
            );
        }
        check_loaded(result)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Archives: uploaded (the loader) and stored (the reader)
// ---------------------------------------------------------------------------------------------

/// One hand-assembled tar header and its data: any entry type, path, link name, mode, and a
/// size field that may lie about the data that follows.
#[derive(Debug, Clone)]
struct RawHeader {
    type_flag: u8,
    path: Vec<u8>,
    link: Vec<u8>,
    mode: u32,
    size: Option<u64>,
    data: Vec<u8>,
    ustar: bool,
}

fn tar_path() -> impl Strategy<Value = Vec<u8>> {
    let part = prop::sample::select(vec![
        "pack.yaml",
        "actions",
        "actions/",
        "echo.yaml",
        "echo.sh",
        "..",
        ".",
        "",
        "/",
        ".git",
        "target",
        "__pycache__",
        "a",
        "\u{0}",
        "\u{ff}",
        "é",
    ]);
    prop_oneof![
        8 => prop::collection::vec(part, 1..5).prop_map(|parts| parts.join("/").into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..100),
    ]
}

fn raw_header() -> impl Strategy<Value = RawHeader> {
    (
        prop_oneof![
            6 => prop::sample::select(b"0123456 7LKxgSVDM".to_vec()),
            1 => any::<u8>(),
        ],
        tar_path(),
        tar_path(),
        prop_oneof![Just(0o644u32), Just(0o755), Just(0o7777), any::<u32>()],
        prop_oneof![
            4 => Just(None),
            1 => Just(Some(0u64)),
            1 => (0u64..1 << 40).prop_map(Some),
            1 => Just(Some(0o77777777777u64)),
        ],
        prop::collection::vec(any::<u8>(), 0..1200),
        any::<bool>(),
    )
        .prop_map(
            |(type_flag, path, link, mode, size, data, ustar)| RawHeader {
                type_flag,
                path,
                link,
                mode,
                size,
                data,
                ustar,
            },
        )
}

/// The bytes of `headers` as a tar stream, written field by field (nothing is refused), with
/// or without the two zero blocks that end an archive.
fn assemble(headers: &[RawHeader], terminated: bool) -> Vec<u8> {
    let mut bytes = Vec::new();
    for raw in headers {
        let mut header = if raw.ustar {
            tar::Header::new_ustar()
        } else {
            tar::Header::new_gnu()
        };
        {
            let old = header.as_old_mut();
            let path_length = raw.path.len().min(old.name.len());
            old.name[..path_length].copy_from_slice(&raw.path[..path_length]);
            let link_length = raw.link.len().min(old.linkname.len());
            old.linkname[..link_length].copy_from_slice(&raw.link[..link_length]);
            old.linkflag[0] = raw.type_flag;
        }
        header.set_mode(raw.mode);
        header.set_size(raw.size.unwrap_or(raw.data.len() as u64));
        header.set_cksum();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&raw.data);
        let padding = (512 - raw.data.len() % 512) % 512;
        bytes.extend(std::iter::repeat_n(0u8, padding));
    }
    if terminated {
        bytes.extend(std::iter::repeat_n(0u8, 1024));
    }
    bytes
}

/// A valid archive with some bytes overwritten and maybe cut short.
fn mutated_archive() -> impl Strategy<Value = Vec<u8>> {
    let original = pack_archive(PACK_YAML, ACTION_YAML, &[]);
    let length = original.len();
    (
        prop::collection::vec((0..length, any::<u8>()), 1..24),
        prop::option::of(0..length),
    )
        .prop_map(move |(changes, cut)| {
            let mut bytes = original.clone();
            for (index, byte) in changes {
                bytes[index] = byte;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut);
            }
            bytes
        })
}

/// Every kind of archive bytes the readers may be given.
fn archive_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..4096),
        3 => mutated_archive(),
        3 => (prop::collection::vec(raw_header(), 0..8), any::<bool>())
            .prop_map(|(headers, terminated)| assemble(&headers, terminated)),
    ]
}

/// Extra pack files with arbitrary contents and modes under safe paths.
fn extra_files() -> impl Strategy<Value = Vec<(String, Vec<u8>, u32)>> {
    let path = "(docs|lib|actions/lib)/[a-z0-9_.-]{1,12}".prop_filter("no dot names", |path| {
        !path.ends_with('/') && !path.split('/').any(|part| part == "." || part == "..")
    });
    prop::collection::vec(
        (
            path,
            prop::collection::vec(any::<u8>(), 0..2048),
            0u32..0o10000,
        ),
        0..8,
    )
}

proptest! {
    #![proptest_config(config(4_000))]

    /// The upload path answers any bytes.
    #[test]
    fn loader_answers_any_archive_bytes(bytes in archive_bytes()) {
        check_loaded(load_pack_archive(&bytes, &small_limits()))?;
    }

    /// The stored-archive reader answers any bytes, and never makes up more data than it read.
    #[test]
    fn stored_archive_reader_answers_any_bytes(bytes in archive_bytes()) {
        if let Ok(entries) = read_stored_archive(&bytes) {
            let total: usize = entries
                .iter()
                .filter_map(|entry| entry.contents.as_ref())
                .map(|contents| contents.len())
                .sum();
            prop_assert!(total <= bytes.len());
            for entry in &entries {
                prop_assert!(entry.mode == 0o755 || entry.mode == 0o644);
            }
        }
    }
}

proptest! {
    #![proptest_config(config(2_000))]

    /// A registered pack's stored archive reads back to exactly its files.
    #[test]
    fn stored_archives_read_back_to_the_pack_files(extra in extra_files()) {
        let archive = pack_archive(PACK_YAML, ACTION_YAML, &extra);
        let pack = match load_pack_archive(&archive, &PackLimits::default()) {
            Ok(pack) => pack,
            // Two generated files may share a path (a duplicate entry).
            Err(PackError::UnsafeEntry { reason, .. }) if reason == "duplicate entry" => {
                return Ok(());
            }
            Err(error) => return Err(TestCaseError::fail(format!("{error}"))),
        };
        let entries = read_stored_archive(&pack.to_archive().unwrap()).unwrap();
        let files: Vec<_> = entries.iter().filter(|entry| entry.contents.is_some()).collect();
        prop_assert_eq!(files.len(), pack.files.len());
        for (entry, file) in files.iter().zip(&pack.files) {
            prop_assert_eq!(&entry.path, &file.relative_path);
            prop_assert_eq!(entry.contents.as_deref(), Some(&file.contents));
            let expected_mode = if file.mode & 0o111 != 0 { 0o755 } else { 0o644 };
            prop_assert_eq!(entry.mode, expected_mode);
        }
    }
}
