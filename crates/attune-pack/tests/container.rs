//! The `container:` section: image strings and maps, Docker image reference grammar, pull
//! policies, env, user and workdir checks.

mod common;

use attune_pack::{load_pack_dir, validate_image_reference, validate_workdir, PackError};
use attune_protocol::api::{ContainerSpec, PullPolicy};
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
            "actions/echo.yaml: container: unknown key \"pull-policy\" (known: image, pull_policy, env, user, workdir)",
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
            "actions/echo.yaml: container: expected an image name or a map with image, pull_policy, env, user, workdir, found a number",
        ),
    ] {
        let error = load_container(container_yaml).expect_err(message);
        assert_eq!(error.to_string(), message);
    }
}
