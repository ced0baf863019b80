//! The `container:` section: image strings and maps, Docker image reference grammar, pull
//! policies, env, user and workdir checks, resources, read_only and cap_add.

mod common;

use attune_pack::{
    load_pack_dir, parse_memory_quantity, validate_image_reference, validate_workdir, PackError,
    ResourceLimits,
};
use attune_protocol::api::{ContainerSpec, PullPolicy, ResourceSpec};
use common::pack_with_action;

fn load_container(container_yaml: &str) -> Result<Option<ContainerSpec>, PackError> {
    let directory = pack_with_action(&format!(
        "ref: demo.echo\nrunner_type: shell\nentry_point: echo.sh\ncontainer:{container_yaml}"
    ));
    load_pack_dir(directory.path()).map(|pack| pack.actions[0].container.clone())
}

#[test]
fn valid_image_references_are_accepted() {
    for reference in [
        "busybox",
        "busybox:1.36",
        "ruby:3.3",
        "python:3.11-slim",
        "library/ubuntu:22.04",
        "ghcr.io/owner/image:v1.2.3",
        "localhost/attune-test:latest",
        "localhost:5000/team/app",
        "registry.example.com:443/a/b/c:tag_1",
        "Registry.Example.com/app",
        "[::1]:5000/app:1",
        "my_image",
        "my__image",
        "my---image",
        "a.b-c_d",
        "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "busybox:1.36@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        assert_eq!(validate_image_reference(reference), Ok(()), "{reference}");
    }
}

#[test]
fn invalid_image_references_are_rejected() {
    for (reference, reason) in [
        ("", "it is empty"),
        (
            "Ubuntu",
            "repository name component \"Ubuntu\" must be lowercase",
        ),
        ("ubuntu:", "tag \"\" must be"),
        ("ubuntu:-dev", "tag \"-dev\" must be"),
        ("ubuntu:a b", "tag \"a b\" must be"),
        ("ubuntu::1", "repository name component \"ubuntu:\""),
        ("-ubuntu", "repository name component \"-ubuntu\""),
        ("ubuntu-", "repository name component \"ubuntu-\""),
        ("my___image", "repository name component \"my___image\""),
        ("a..b", "repository name component \"a..b\""),
        ("team//app", "repository name component \"\""),
        ("team/app/", "repository name component \"\""),
        (
            "busybox@sha256:abc",
            "digest \"sha256:abc\" must be sha256: followed by 64",
        ),
        (
            "busybox@md5:0123",
            "digest \"md5:0123\" must be sha256:<64 hex digits>",
        ),
        (
            "bad_host.com:port/app",
            "registry \"bad_host.com:port\" must be",
        ),
        ("-host.com/app", "registry \"-host.com\" must be"),
        // Docker's grammar has no IPv4-mapped IPv6 (found by tests/properties.rs).
        (
            "[::ffff:1.2.3.4]/app",
            "registry \"[::ffff:1.2.3.4]\" must be",
        ),
        (":tag", "the repository name is empty"),
    ] {
        let error = validate_image_reference(reference).expect_err(reference);
        assert!(error.starts_with(reason), "{reference}: {error}");
    }
    let long_tag = format!("app:{}", "t".repeat(129));
    assert!(validate_image_reference(&long_tag).is_err());
    let long_name = "a".repeat(256);
    assert!(validate_image_reference(&long_name).is_err());
}

#[test]
fn workdirs_must_be_absolute_and_outside_proc() {
    assert_eq!(validate_workdir("/work"), Ok(()));
    assert_eq!(validate_workdir("/processes"), Ok(()));
    for workdir in [
        "work",
        "./x",
        "/proc",
        "/proc/self/fd/8",
        "//proc/1",
        "/tmp/../proc/self",
    ] {
        assert!(validate_workdir(workdir).is_err(), "{workdir}");
    }
}

#[test]
fn container_string_and_map_forms_load() {
    let spec = load_container(" alpine:3.20\n")
        .expect("string form")
        .expect("container");
    assert_eq!(
        spec,
        ContainerSpec {
            image: "alpine:3.20".to_string(),
            ..ContainerSpec::default()
        }
    );

    let spec = load_container(
        "\n  image: localhost/app:1\n  pull_policy: never\n  env:\n    MODE: fast\n    RETRIES: 3\n    DEBUG: true\n  user: \"1000:1000\"\n  workdir: /srv\n",
    )
    .expect("map form")
    .expect("container");
    assert_eq!(spec.image, "localhost/app:1");
    assert_eq!(spec.pull_policy, PullPolicy::Never);
    assert_eq!(spec.env.get("MODE").map(String::as_str), Some("fast"));
    assert_eq!(spec.env.get("RETRIES").map(String::as_str), Some("3"));
    assert_eq!(spec.env.get("DEBUG").map(String::as_str), Some("true"));
    assert_eq!(spec.user.as_deref(), Some("1000:1000"));
    assert_eq!(spec.workdir.as_deref(), Some("/srv"));

    let spec = load_container("\n  image: busybox\n  pull_policy: always\n  user: 65534\n")
        .expect("numeric user")
        .expect("container");
    assert_eq!(spec.pull_policy, PullPolicy::Always);
    assert_eq!(spec.user.as_deref(), Some("65534"));
}

#[test]
fn invalid_containers_name_the_file_and_problem() {
    let error = load_container(" Ubuntu:22.04\n").expect_err("uppercase image");
    assert!(
        matches!(error, PackError::InvalidImageReference { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "actions/echo.yaml: container image \"Ubuntu:22.04\" is not a valid image reference: repository name component \"Ubuntu\" must be lowercase"
    );

    for (container_yaml, message) in [
        (
            "\n  image: busybox\n  workdir: /proc/self/cwd\n",
            "actions/echo.yaml: container: workdir \"/proc/self/cwd\" is under /proc, which is not allowed",
        ),
        (
            "\n  image: busybox\n  workdir: relative/dir\n",
            "actions/echo.yaml: container: workdir \"relative/dir\" must be an absolute path",
        ),
        (
            "\n  image: busybox\n  pull_policy: sometimes\n",
            "actions/echo.yaml: container: pull_policy \"sometimes\" is not one of if-not-present, always, never",
        ),
        (
            "\n  image: busybox\n  pull-policy: never\n",
            "actions/echo.yaml: container: unknown key \"pull-policy\" (known: image, pull_policy, env, user, workdir, resources, read_only, cap_add)",
        ),
        (
            "\n  pull_policy: never\n",
            "actions/echo.yaml: container: image is required",
        ),
        (
            "\n  image: busybox\n  env:\n    1BAD: x\n",
            "actions/echo.yaml: container: env name \"1BAD\" must be letters, digits and underscores, not starting with a digit",
        ),
        (
            "\n  image: busybox\n  env:\n    GOOD: [1]\n",
            "actions/echo.yaml: container: env GOOD: value must be a string, found a list",
        ),
        (
            "\n  image: busybox\n  user: \"\"\n",
            "actions/echo.yaml: container: user \"\" must be a name or uid[:gid]",
        ),
        (
            " 42\n",
            "actions/echo.yaml: container: expected an image name or a map with image, pull_policy, env, user, workdir, resources, read_only, cap_add, found a number",
        ),
    ] {
        let error = load_container(container_yaml).expect_err(message);
        assert_eq!(error.to_string(), message);
    }
}

/// The error of loading `container:` with image busybox and the extra map lines `lines`.
fn container_error(lines: &str) -> String {
    load_container(&format!("\n  image: busybox\n{lines}"))
        .expect_err(&format!("container lines {lines:?} must be rejected"))
        .to_string()
}

#[test]
fn resources_read_only_and_capabilities_load() {
    let spec = load_container(
        "\n  image: busybox\n  resources:\n    memory: 256Mi\n    cpus: 0.5\n    pids: 64\n  read_only: true\n  cap_add: [NET_BIND_SERVICE, CAP_CHOWN, CAP_NET_BIND_SERVICE]\n",
    )
    .expect("full container")
    .expect("container");
    assert_eq!(
        spec.resources,
        Some(ResourceSpec {
            memory: Some("256Mi".to_string()),
            cpus: Some(0.5),
            pids: Some(64),
        })
    );
    assert!(spec.read_only);
    assert_eq!(spec.cap_add, ["NET_BIND_SERVICE", "CHOWN"]);
    let limits = ResourceLimits::from_spec(spec.resources.as_ref().expect("resources"))
        .expect("stored resources convert");
    assert_eq!(
        limits,
        ResourceLimits {
            memory_bytes: Some(268_435_456),
            nano_cpus: Some(500_000_000),
            pids: Some(64),
        }
    );

    for (memory, bytes) in [
        ("1Gi", 1_073_741_824),
        ("512M", 512_000_000),
        ("1G", 1_000_000_000),
        ("8000k", 8_000_000),
        ("7000Ki", 7_168_000),
        ("1Ti", 1_099_511_627_776),
        ("6291456", 6_291_456),
        ("\"6291456\"", 6_291_456),
    ] {
        let spec = load_container(&format!(
            "\n  image: busybox\n  resources: {{memory: {memory}}}\n"
        ))
        .unwrap_or_else(|error| panic!("memory {memory}: {error}"))
        .expect("container");
        let resources = spec.resources.expect("resources");
        assert_eq!(
            resources.memory.as_deref(),
            Some(memory.trim_matches('"')),
            "stored as written"
        );
        let memory_bytes = ResourceLimits::from_spec(&resources)
            .expect("limits")
            .memory_bytes;
        assert_eq!(memory_bytes, Some(bytes), "{memory}");
    }

    let spec = load_container("\n  image: busybox\n  resources: {cpus: 2}\n")
        .expect("integer cpus")
        .expect("container");
    assert_eq!(
        spec.resources.and_then(|resources| resources.cpus),
        Some(2.0)
    );

    let spec =
        load_container("\n  image: busybox\n  resources: {}\n  read_only: false\n  cap_add: []\n")
            .expect("empty settings")
            .expect("container");
    assert_eq!(
        spec,
        ContainerSpec {
            image: "busybox".to_string(),
            ..ContainerSpec::default()
        }
    );
}

#[test]
fn resources_that_do_not_parse_or_are_out_of_range_are_rejected() {
    let prefix = "actions/echo.yaml: container: resources: ";
    for (resources, reason) in [
        (
            "{memory: lots}",
            "memory \"lots\" is not a quantity such as 256Mi, 1Gi, 512M, 100k or a whole number of bytes",
        ),
        (
            "{memory: 5Mi}",
            "memory \"5Mi\" (5242880 bytes) is below Docker's minimum of 6Mi (6291456 bytes)",
        ),
        (
            "{memory: 2Ti}",
            "memory \"2Ti\" (2199023255552 bytes) is above the maximum of 1Ti (1099511627776 bytes)",
        ),
        (
            "{memory: 512m}",
            "memory \"512m\" has an unknown unit \"m\" (use Ki, Mi, Gi, Ti, k, M, G, T, or none for bytes)",
        ),
        (
            "{memory: 1.5}",
            "memory must be a quantity such as 256Mi or a whole number of bytes, found 1.5",
        ),
        (
            "{memory: -1}",
            "memory must be a quantity such as 256Mi or a whole number of bytes, found -1",
        ),
        ("{cpus: 0}", "cpus must be between 0.01 and 1024, found 0"),
        ("{cpus: -1}", "cpus must be between 0.01 and 1024, found -1"),
        ("{cpus: 1025}", "cpus must be between 0.01 and 1024, found 1025"),
        ("{cpus: x}", "cpus must be a number such as 0.5, found \"x\""),
        ("{pids: 3}", "pids must be between 16 and 32768, found 3"),
        ("{pids: 40000}", "pids must be between 16 and 32768, found 40000"),
        (
            "{pids: many}",
            "pids must be a whole number between 16 and 32768, found \"many\"",
        ),
        (
            "{pids: 64.5}",
            "pids must be a whole number between 16 and 32768, found 64.5",
        ),
        ("{disk: 1Gi}", "unknown key \"disk\" (known: memory, cpus, pids)"),
        (
            "{memory: 1Gi, swap: 1Gi}",
            "unknown key \"swap\" (known: memory, cpus, pids)",
        ),
    ] {
        let error = load_container(&format!("\n  image: busybox\n  resources: {resources}\n"))
            .expect_err(resources);
        assert!(matches!(error, PackError::InvalidContainer { .. }), "{error:?}");
        assert_eq!(error.to_string(), format!("{prefix}{reason}"), "{resources}");
    }
    assert_eq!(
        container_error("  resources: 256Mi\n"),
        "actions/echo.yaml: container: resources must be a map with memory, cpus, pids, found a string"
    );
}

#[test]
fn capabilities_and_read_only_are_checked() {
    for (lines, message) in [
        (
            "  cap_add: [NET_FOO]\n",
            "cap_add: capability \"NET_FOO\" is not a Linux capability (see capabilities(7), e.g. NET_BIND_SERVICE, NET_ADMIN, SYS_PTRACE)",
        ),
        (
            "  cap_add: [ALL]\n",
            "cap_add: capability \"ALL\" is not a Linux capability (see capabilities(7), e.g. NET_BIND_SERVICE, NET_ADMIN, SYS_PTRACE)",
        ),
        (
            "  cap_add: [net_admin]\n",
            "cap_add: capability \"net_admin\" must be upper-case, like \"NET_ADMIN\"",
        ),
        (
            "  cap_add: NET_ADMIN\n",
            "cap_add must be a list of capability names such as [NET_BIND_SERVICE], found a string",
        ),
        (
            "  cap_add: [7]\n",
            "cap_add: entries must be capability names, found 7",
        ),
        (
            "  read_only: yes please\n",
            "read_only must be true or false, found a string",
        ),
    ] {
        assert_eq!(
            container_error(lines),
            format!("actions/echo.yaml: container: {message}"),
            "{lines:?}"
        );
    }
}

#[test]
fn memory_quantities_convert_for_the_controller() {
    assert_eq!(parse_memory_quantity("256Mi"), Ok(268_435_456));
    assert_eq!(parse_memory_quantity("1G"), Ok(1_000_000_000));
    assert_eq!(parse_memory_quantity("100k"), Ok(100_000));
    assert_eq!(parse_memory_quantity("100Ki"), Ok(102_400));
    assert_eq!(parse_memory_quantity("4096"), Ok(4_096));
    assert!(parse_memory_quantity("1.5Gi").is_err());
    assert!(parse_memory_quantity("1GB").is_err());
}
