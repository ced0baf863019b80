//! The runtime registry against a real Postgres: the migration seeds the templates of the 8
//! interpreter families (agreeing with the agent's detection), a pack's `runtimes/*.yaml` are
//! stored when it is registered and replaced when it is registered again, and runtimes a
//! worker reports at enrollment are recorded `auto_detected` only when no record covers them.

use attune_protocol::api::RuntimeEnvironmentKind;
use attune_protocol::worker::WorkerEnrollment;
use attune_protocol::DetectedRuntime;
use attune_store::runtimes::RuntimeRow;
use attune_store::testing::TestDatabase;
use attune_store::{NewPack, Store, StoreError};
use std::path::PathBuf;

struct Fixture {
    database: TestDatabase,
    store: Store,
}

impl Fixture {
    async fn new() -> Fixture {
        let database = TestDatabase::create().await.expect("create test database");
        let store = Store::connect(&database.url, 4)
            .await
            .expect("connect to the test database");
        Fixture { database, store }
    }

    async fn finish(self) {
        self.store.pool().close().await;
        self.database
            .drop_database()
            .await
            .expect("drop test database");
    }

    async fn runtimes(&self) -> Vec<RuntimeRow> {
        self.store.list_runtimes().await.expect("list runtimes")
    }

    async fn runtime(&self, runtime_ref: &str) -> Option<RuntimeRow> {
        self.runtimes()
            .await
            .into_iter()
            .find(|row| row.runtime_ref == runtime_ref)
    }

    async fn register(&self, pack: &PackDir, replace: bool) -> Result<(), StoreError> {
        let pack = attune_pack::load_pack_dir(&pack.0).expect("the test pack loads");
        let archive = pack.to_archive().expect("archive the test pack");
        self.store
            .register_pack(
                NewPack {
                    pack: &pack,
                    archive: &archive,
                },
                replace,
            )
            .await
            .map(|_| ())
    }
}

/// A pack directory under the system's temporary directory, removed on drop.
struct PackDir(PathBuf);

impl PackDir {
    fn new(runtime_files: &[(&str, &str)]) -> PackDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let directory = std::env::temp_dir().join(format!(
            "attune-store-runtimes-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(directory.join("runtimes")).expect("create the pack directory");
        std::fs::write(
            directory.join("pack.yaml"),
            "ref: tools\nlabel: Tools\nversion: 1.0.0\n",
        )
        .expect("write pack.yaml");
        for (name, text) in runtime_files {
            std::fs::write(directory.join("runtimes").join(name), text).expect("write runtime");
        }
        PackDir(directory)
    }
}

impl Drop for PackDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const DENO_YAML: &str = r#"ref: tools.deno
name: Deno
aliases: [deno, typescript]
distributions:
  verification:
    commands:
      - binary: deno
        args: ["--version"]
        pattern: "deno (\\d+\\.\\d+\\.\\d+)"
execution_config:
  interpreter:
    binary: deno
    file_extension: ".ts"
"#;

const LUA_YAML: &str = r#"ref: tools.lua
name: lua
execution_config:
  interpreter:
    binary: lua5.4
    file_extension: ".lua"
  environment:
    env_type: custom
    create_command: ["mkdir", "-p", "{env_dir}"]
  dependencies:
    manifest_file: rockspec
    install_command: ["luarocks", "--tree", "{env_dir}", "install", "--deps-only", "{manifest_path}"]
"#;

fn detected(name: &str, path: &str) -> DetectedRuntime {
    DetectedRuntime {
        name: name.to_string(),
        version: Some("1.40.2".to_string()),
        path: path.to_string(),
    }
}

#[tokio::test]
async fn the_migration_seeds_one_template_per_interpreter_family() {
    let fixture = Fixture::new().await;
    let runtimes = fixture.runtimes().await;
    let summary: Vec<(&str, &str, Vec<&str>, Option<&str>)> = runtimes
        .iter()
        .map(|row| {
            (
                row.runtime_ref.as_str(),
                row.name.as_str(),
                row.interpreters.iter().map(String::as_str).collect(),
                row.version_command.as_deref(),
            )
        })
        .collect();
    // Interpreters and version commands as crates/attune-agent/src/detect.rs has them
    // (`runtime_binaries`, `version_arguments`).
    assert_eq!(
        summary,
        vec![
            ("core.go", "go", vec!["go"], Some("go version")),
            ("core.java", "java", vec!["java"], Some("java -version")),
            (
                "core.node",
                "node",
                vec!["node", "nodejs"],
                Some("node --version")
            ),
            ("core.perl", "perl", vec!["perl"], Some("perl -v")),
            (
                "core.python",
                "python",
                vec!["python3", "python"],
                Some("python3 --version")
            ),
            (
                "core.r",
                "r",
                vec!["Rscript", "R"],
                Some("Rscript --version")
            ),
            ("core.ruby", "ruby", vec!["ruby"], Some("ruby --version")),
            (
                "core.shell",
                "shell",
                vec!["bash", "sh"],
                Some("bash --version")
            ),
        ]
    );
    for row in &runtimes {
        assert!(!row.auto_detected, "{row:?}");
        assert_eq!(row.pack_ref, None, "{row:?}");
        assert!(row.version_regex.is_some(), "{row:?}");
        assert!(row.file_extension.is_some(), "{row:?}");
        let family: attune_protocol::Runtime = row.name.parse().expect("a family name");
        assert_eq!(family.as_str(), row.name);
    }
    let kind = |runtime_ref: &str| {
        runtimes
            .iter()
            .find(|row| row.runtime_ref == runtime_ref)
            .and_then(|row| row.environment.as_ref())
            .map(|environment| (environment.kind, environment.manifest_file.clone()))
    };
    assert_eq!(
        kind("core.python"),
        Some((
            RuntimeEnvironmentKind::Virtualenv,
            Some("requirements.txt".into())
        ))
    );
    assert_eq!(
        kind("core.node"),
        Some((
            RuntimeEnvironmentKind::NodeModules,
            Some("package.json".into())
        ))
    );
    assert_eq!(
        kind("core.ruby"),
        Some((RuntimeEnvironmentKind::Bundler, Some("Gemfile".into())))
    );
    assert_eq!(kind("core.shell"), None);
    // The view the API answers with.
    let view = runtimes[0].view();
    assert_eq!(view.runtime_ref, "core.go");
    assert!(view.created_at.ends_with('Z'), "{}", view.created_at);
    fixture.finish().await;
}

#[tokio::test]
async fn a_packs_runtimes_are_stored_and_replaced_when_it_is_registered_again() {
    let fixture = Fixture::new().await;
    let first = PackDir::new(&[("deno.yaml", DENO_YAML), ("lua.yaml", LUA_YAML)]);
    fixture.register(&first, false).await.expect("register");
    let deno = fixture
        .runtime("tools.deno")
        .await
        .expect("tools.deno stored");
    assert_eq!(deno.pack_ref.as_deref(), Some("tools"));
    assert_eq!(deno.name, "Deno");
    assert_eq!(deno.aliases, ["deno", "typescript"]);
    assert_eq!(deno.interpreters, ["deno"]);
    assert_eq!(deno.file_extension.as_deref(), Some(".ts"));
    assert_eq!(deno.version_command.as_deref(), Some("deno --version"));
    assert!(!deno.auto_detected);
    let lua = fixture
        .runtime("tools.lua")
        .await
        .expect("tools.lua stored");
    let environment = lua.environment.expect("lua's environment");
    assert_eq!(environment.kind, RuntimeEnvironmentKind::Custom);
    assert_eq!(environment.manifest_file.as_deref(), Some("rockspec"));
    assert_eq!(environment.install_command[0], "luarocks");

    // Registered again without lua and with another deno: lua is gone, deno is the new one.
    let second = PackDir::new(&[(
        "deno.yaml",
        &DENO_YAML.replace("file_extension: \".ts\"", "file_extension: \".mts\""),
    )]);
    fixture.register(&second, true).await.expect("re-register");
    assert_eq!(fixture.runtime("tools.lua").await, None);
    let deno = fixture
        .runtime("tools.deno")
        .await
        .expect("tools.deno kept");
    assert_eq!(deno.file_extension.as_deref(), Some(".mts"));
    assert_eq!(fixture.runtimes().await.len(), 8 + 1, "templates untouched");

    // A registration refused for its pack (already registered, no --force) keeps them too.
    assert!(matches!(
        fixture.register(&first, false).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(fixture.runtime("tools.lua").await, None);
    fixture.finish().await;
}

#[tokio::test]
async fn reported_runtimes_no_record_covers_are_recorded_once_as_auto_detected() {
    let fixture = Fixture::new().await;
    let reported = vec![
        detected("python3", "/usr/bin/python3"),
        detected("shell", "/bin/sh"),
        detected("native", ""),
        detected("deno", "/usr/local/bin/deno"),
    ];
    let added = fixture
        .store
        .record_detected_runtimes(&reported)
        .await
        .expect("record");
    assert_eq!(added, ["detected.deno"]);
    let deno = fixture
        .runtime("detected.deno")
        .await
        .expect("deno recorded");
    assert!(deno.auto_detected);
    assert_eq!(deno.pack_ref, None);
    assert_eq!(deno.name, "deno");
    assert_eq!(deno.interpreters, ["deno"]);
    assert!(deno.description.contains("1.40.2"), "{}", deno.description);
    assert_eq!(
        fixture.runtimes().await.len(),
        8 + 1,
        "python3 and shell are the templates', native needs none"
    );

    // Idempotent: the same report (another worker, a restart) adds nothing.
    let again = fixture
        .store
        .record_detected_runtimes(&reported)
        .await
        .expect("record again");
    assert!(again.is_empty());
    assert_eq!(fixture.runtimes().await.len(), 8 + 1);

    // Through enrollment's own store call, as the API makes it.
    let enrollment = WorkerEnrollment {
        name: "ts-1".into(),
        protocol_version: attune_protocol::PROTOCOL_VERSION,
        agent_version: "0.1.0".into(),
        agent_sha256: String::new(),
        runtimes: vec![
            detected("Deno", "/opt/deno/bin/deno"),
            detected("bun", "/usr/bin/bun"),
        ],
        labels: Default::default(),
        concurrency: 1,
        image: None,
    };
    fixture
        .store
        .enroll_worker(&enrollment, "worker-ts-1-abcd", None)
        .await
        .expect("enroll");
    let added = fixture
        .store
        .record_detected_runtimes(&enrollment.runtimes)
        .await
        .expect("record the enrollment's runtimes");
    assert_eq!(
        added,
        ["detected.bun"],
        "Deno is covered by deno, case aside"
    );

    // A pack that defines deno takes its place: the detected record goes.
    let pack = PackDir::new(&[("deno.yaml", DENO_YAML)]);
    fixture.register(&pack, false).await.expect("register");
    assert_eq!(fixture.runtime("detected.deno").await, None);
    assert!(fixture.runtime("detected.bun").await.is_some());
    let added = fixture
        .store
        .record_detected_runtimes(&[detected("typescript", "/usr/bin/deno")])
        .await
        .expect("record");
    assert!(added.is_empty(), "covered by the pack's alias");
    fixture.finish().await;
}
