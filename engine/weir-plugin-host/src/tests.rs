use std::time::{Duration, Instant};

use super::*;

fn host() -> PluginHost {
    PluginHost::new().unwrap()
}

fn hostile(host: &PluginHost) -> CompiledPlugin {
    host.compile(
        "hostile",
        weir_builtins::fixture("weir-fixture-hostile").expect("fixtures feature"),
    )
    .unwrap()
}

fn limits() -> Limits {
    Limits {
        memory_bytes: 32 << 20,
        deadline: Duration::from_millis(200),
        max_output_ratio: 4,
        wasi: WasiGrants::default(),
        log: LogLimits::default(),
    }
}

const BATCH: &[u8] = b"{\"msg\":\"from a@b.io\"}\n{\"msg\":\"fine\"}\n";

#[test]
fn redactor_runs_in_wasm() {
    let h = host();
    let p = h
        .compile("pii-redact", weir_builtins::get("pii-redact").unwrap())
        .unwrap();
    assert_eq!(p.sha256().len(), 64);
    let mut i = p.instantiate("t", "{}", &limits()).unwrap();
    let out = i.process(BATCH).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"msg\":\"from [REDACTED:email]\"}\n{\"msg\":\"fine\"}\n"
    );
    // The instance is reused across calls.
    assert_eq!(i.process(b"").unwrap(), b"");
}

#[test]
fn invalid_config_is_an_init_error() {
    let h = host();
    let p = h
        .compile("pii-redact", weir_builtins::get("pii-redact").unwrap())
        .unwrap();
    let e = p
        .instantiate("t", r#"{"action":"hash"}"#, &limits())
        .err()
        .unwrap();
    assert!(e.to_string().contains("hash_key"), "{e}");
}

#[test]
fn bad_components_are_refused_with_a_reason() {
    let h = host();
    assert!(matches!(
        h.compile("x", b"garbage bytes"),
        Err(HostError::NotWasm)
    ));
    let core = b"\0asm\x01\0\0\0"; // an empty core module
    assert!(matches!(h.compile("x", core), Err(HostError::CoreModule)));
    let empty_component = b"\0asm\x0d\0\x01\0"; // an empty component
    assert!(matches!(
        h.compile("x", empty_component),
        Err(HostError::WrongWorld(_))
    ));
}

#[test]
fn infinite_loop_times_out_and_instance_recovers() {
    let h = host();
    let p = hostile(&h);
    let mut i = p.instantiate("t", r#"{"mode":"loop"}"#, &limits()).unwrap();
    let t = Instant::now();
    assert_eq!(
        i.process(BATCH),
        Err(CallError::Timeout(Duration::from_millis(200)))
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stopped near its deadline"
    );
    // Next call gets a fresh instance (which loops again, and is stopped again).
    assert!(matches!(i.process(BATCH), Err(CallError::Timeout(_))));
}

#[test]
fn memory_bomb_is_stopped_at_the_cap() {
    let h = host();
    let p = hostile(&h);
    let mut i = p
        .instantiate("t", r#"{"mode":"alloc"}"#, &limits())
        .unwrap();
    assert_eq!(i.process(BATCH), Err(CallError::MemoryLimit(32 << 20)));
}

#[test]
fn trap_fails_the_batch_and_the_next_batch_works() {
    let h = host();
    let p = hostile(&h);
    let mut bad = p
        .instantiate("t", r#"{"mode":"fail-if","marker":"poison"}"#, &limits())
        .unwrap();
    assert!(matches!(
        bad.process(b"{\"a\":\"poison\"}\n"),
        Err(CallError::Rejected(_))
    ));
    assert_eq!(bad.process(BATCH).unwrap(), BATCH);
    let mut t = p.instantiate("t", r#"{"mode":"trap"}"#, &limits()).unwrap();
    let e = t.process(BATCH).unwrap_err();
    assert!(matches!(e, CallError::Trap(_)), "{e:?}");
    assert!(e.is_trap());
}

#[test]
fn output_bomb_is_capped() {
    let h = host();
    let p = hostile(&h);
    // A generous deadline: on a loaded machine writing 4 MiB may take a while, and the
    // point here is the output cap.
    let generous = Limits {
        deadline: Duration::from_secs(10),
        ..limits()
    };
    let mut i = p
        .instantiate("t", r#"{"mode":"flood"}"#, &generous)
        .unwrap();
    assert!(matches!(
        i.process(BATCH),
        Err(CallError::OutputTooLarge { .. })
    ));
}

#[test]
fn no_wasi_capabilities_are_granted() {
    // The fixture tries the file system, the environment, arguments and the network
    // from inside the sandbox and reports what it got.
    let h = host();
    let p = hostile(&h);
    let mut i = p
        .instantiate("t", r#"{"mode":"escape"}"#, &limits())
        .unwrap();
    let out = i.process(BATCH).unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(
        report["fs"].as_str().unwrap().starts_with("error"),
        "{report}"
    );
    assert!(
        report["file"].as_str().unwrap().starts_with("error"),
        "{report}"
    );
    assert_eq!(report["env"], 0, "{report}");
    assert_eq!(report["args"], 0, "{report}");
    assert!(
        report["net"].as_str().unwrap().starts_with("error"),
        "{report}"
    );
    assert_eq!(report["clock"], 0, "clocks are frozen: {report}");
    // Randomness is a fixed sequence: a second instance sees the same.
    let mut j = p
        .instantiate("t", r#"{"mode":"escape"}"#, &limits())
        .unwrap();
    let again: serde_json::Value = serde_json::from_slice(&j.process(BATCH).unwrap()).unwrap();
    assert_eq!(report["hash"], again["hash"], "{report} {again}");
}

#[test]
fn granted_wasi_capabilities_and_only_those() {
    let h = host();
    let p = hostile(&h);
    let mut env = std::collections::BTreeMap::new();
    env.insert("REGION".to_owned(), "eu-1".to_owned());
    let granted = Limits {
        wasi: WasiGrants {
            env,
            stdio: true,
            clocks: true,
            random: true,
        },
        ..limits()
    };
    let report = |limits: &Limits| -> serde_json::Value {
        let mut i = p.instantiate("t", r#"{"mode":"escape"}"#, limits).unwrap();
        serde_json::from_slice(&i.process(BATCH).unwrap()).unwrap()
    };
    let (a, b) = (report(&granted), report(&granted));
    assert_eq!(a["env_vars"], serde_json::json!(["REGION=eu-1"]), "{a}");
    assert!(a["clock"].as_u64().unwrap() > 1_700_000_000, "{a}");
    assert_ne!(
        a["hash"], b["hash"],
        "real randomness differs between instances"
    );
    // Files and sockets stay closed whatever is granted.
    assert!(a["fs"].as_str().unwrap().starts_with("error"), "{a}");
    assert!(a["net"].as_str().unwrap().starts_with("error"), "{a}");
}

fn counter(host: &PluginHost) -> CompiledPlugin {
    host.compile(
        "counter",
        weir_builtins::fixture("weir-fixture-counter").expect("fixtures feature"),
    )
    .unwrap()
}

fn numbers(out: &[u8]) -> Vec<u64> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn stateful_plugin_state_survives_traps_and_moves_to_new_instances() {
    let h = host();
    let p = counter(&h);
    assert!(p.is_stateful());
    assert_eq!(p.world(), STATEFUL_TRANSFORM_WORLD);
    assert!(
        !hostile(&h).is_stateful(),
        "a plain transform is not stateful"
    );
    let mut a = p
        .instantiate("t", r#"{"trap_on":"boom"}"#, &limits())
        .unwrap();
    assert_eq!(numbers(&a.process(b"{}\n{}\n").unwrap()), vec![1, 2]);
    assert_eq!(a.state().unwrap().data, 2u64.to_le_bytes());
    // A batch that traps half-way leaves the state where the last good batch left it.
    assert!(matches!(
        a.process(b"{}\n{\"x\":\"boom\"}\n"),
        Err(CallError::Trap(_))
    ));
    assert_eq!(numbers(&a.process(b"{}\n").unwrap()), vec![3]);

    // A new version writing format 2 continues from format 1 state (a migration).
    let mut b = p.instantiate("t", r#"{"format":2}"#, &limits()).unwrap();
    b.restore(a.state().unwrap().clone()).unwrap();
    assert_eq!(numbers(&b.process(b"{}\n").unwrap()), vec![4]);
    assert_eq!(
        b.state().unwrap(),
        &PluginState {
            format: 2,
            data: br#"{"count":4}"#.to_vec()
        }
    );
    // A format the plugin does not know is refused, with the reason.
    let mut c = p.instantiate("t", "{}", &limits()).unwrap();
    let err = c
        .restore(PluginState {
            format: 9,
            data: vec![],
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown state format 9"), "{err}");
}

#[test]
fn migration_rewrites_only_its_version_and_stamps_the_next() {
    let h = host();
    let p = h
        .compile(
            "schema-migrate",
            weir_builtins::get("schema-migrate").unwrap(),
        )
        .unwrap();
    assert_eq!(p.world(), MIGRATION_WORLD);
    let cfg = r#"{"from":2,"rename":{"a":"b"},"retype":{"b":"string"}}"#;
    let mut i = p.instantiate("t", cfg, &limits()).unwrap();
    assert_eq!(i.migration_step(), Some((2, 3)));
    let input =
        b"{\"a\":1,\"_schema\":2}\n{\"a\":1}\n{\"a\":5,\"_schema\":2}\n{\"a\":1,\"_schema\":3}\n";
    let out = i.process(input).unwrap();
    let rows: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rows,
        vec![
            serde_json::json!({"b": "1", "_schema": 3}),
            serde_json::json!({"a": 1}),
            serde_json::json!({"b": "5", "_schema": 3}),
            serde_json::json!({"a": 1, "_schema": 3}),
        ],
        "version 2 migrated and stamped, others untouched, order kept"
    );
    let bad = i
        .process(b"{\"_schema\":\"two\"}\n")
        .unwrap_err()
        .to_string();
    assert!(bad.contains("_schema must be a positive integer"), "{bad}");
    // A migration whose step is not N -> N+1 is refused at init.
    assert!(p.instantiate("t", r#"{"from":0}"#, &limits()).is_err());
}

#[test]
fn compiled_code_is_cached_on_disk_and_a_bad_cache_file_is_replaced() {
    let dir = std::env::temp_dir().join(format!("weir-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let wasm = weir_builtins::get("logfmt").unwrap();
    let file = dir.join(format!("{}.cwasm", sha256_hex(wasm)));
    let run = |h: &PluginHost| {
        let p = h.compile_cached("logfmt", wasm, Some(&dir)).unwrap();
        let mut i = p.instantiate("t", "{}", &limits()).unwrap();
        i.process(b"{\"message\":\"a=1\"}\n").unwrap()
    };
    let first = run(&host());
    assert!(file.is_file(), "the first compile writes the cache");
    // A second host (a restart) loads the machine code instead of compiling.
    assert_eq!(run(&host()), first);
    // A damaged cache file is not trusted blindly: it is recompiled and rewritten.
    std::fs::write(&file, b"not machine code").unwrap();
    assert_eq!(run(&host()), first);
    assert!(std::fs::metadata(&file).unwrap().len() > 1000);
    let _ = std::fs::remove_dir_all(&dir);
}

include!("../../../tests/fixtures/wat/components.rs");

fn wat_component(host: &PluginHost, text: &str) -> Result<CompiledPlugin, HostError> {
    let wasm = wat::parse_str(text).expect("valid WAT");
    host.compile("wat", &wasm)
}

#[test]
fn a_handwritten_component_passes_batches_through() {
    let h = host();
    let p = wat_component(&h, &memories_component(0, 1, 0)).unwrap();
    assert_eq!(p.world(), TRANSFORM_WORLD);
    let mut i = p.instantiate("t", "{}", &limits()).unwrap();
    assert_eq!(i.process(BATCH).unwrap(), BATCH);
}

#[test]
fn memories_share_one_cap_at_instantiation() {
    // Three memories of 12 MiB each: each alone is under the 32 MiB cap, together not.
    let h = host();
    let p = wat_component(&h, &memories_component(3, 192, 0)).unwrap();
    let e = p.check_instantiable(&limits()).unwrap_err();
    assert!(matches!(e, HostError::Limit(_)), "{e:?}");
    assert!(
        e.to_string().contains("memory limit of 33554432 bytes"),
        "{e}"
    );
    let e = p.instantiate("t", "{}", &limits()).err().unwrap();
    assert!(
        e.to_string().contains("memory limit of 33554432 bytes"),
        "{e}"
    );
    // Two of them fit.
    let p = wat_component(&h, &memories_component(2, 192, 0)).unwrap();
    p.check_instantiable(&limits()).unwrap();
    assert_eq!(
        p.instantiate("t", "{}", &limits())
            .unwrap()
            .process(BATCH)
            .unwrap(),
        BATCH
    );
}

#[test]
fn memories_growing_together_trap_at_the_cap() {
    // Three memories of one page, each grown by 12 MiB per call: the first call fits
    // (about 36 MiB would not: 3 x 12 MiB + the main memory > 32 MiB).
    let h = host();
    let p = wat_component(&h, &memories_component(3, 1, 192)).unwrap();
    p.check_instantiable(&limits()).unwrap();
    let mut i = p.instantiate("t", "{}", &limits()).unwrap();
    assert_eq!(i.process(BATCH), Err(CallError::MemoryLimit(32 << 20)));
    // Two memories grown by 12 MiB: 24 MiB fits once, and the second call goes over.
    let p = wat_component(&h, &memories_component(2, 1, 192)).unwrap();
    let mut i = p.instantiate("t", "{}", &limits()).unwrap();
    assert_eq!(i.process(BATCH).unwrap(), BATCH);
    assert_eq!(i.process(BATCH), Err(CallError::MemoryLimit(32 << 20)));
}

#[test]
fn too_many_memories_are_refused() {
    let h = host();
    let many = crate::limiter::MAX_MEMORIES; // plus the main one
    let p = wat_component(&h, &memories_component(many, 1, 0)).unwrap();
    let e = p.check_instantiable(&limits()).unwrap_err();
    assert!(matches!(e, HostError::Limit(_)), "{e:?}");
    assert!(e.to_string().contains("at most 8 memories"), "{e}");
}

#[test]
fn sleeping_in_block_fails_at_the_deadline() {
    let h = host();
    let p = hostile(&h);
    for mode in ["sleep", "poll"] {
        let mut i = p
            .instantiate("t", &format!(r#"{{"mode":"{mode}"}}"#), &limits())
            .unwrap();
        let t = Instant::now();
        assert_eq!(
            i.process(BATCH),
            Err(CallError::Timeout(Duration::from_millis(200))),
            "{mode}"
        );
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(190) && took < Duration::from_secs(3),
            "{mode}: stopped after {took:?}, not near its 200 ms deadline"
        );
        // The instance is rebuilt and stopped again: nothing stays blocked.
        assert!(matches!(i.process(BATCH), Err(CallError::Timeout(_))));
    }
}

#[test]
fn sockets_and_name_lookup_are_denied() {
    let h = host();
    let p = hostile(&h);
    let all = Limits {
        wasi: WasiGrants {
            env: Default::default(),
            stdio: true,
            clocks: true,
            random: true,
        },
        ..limits()
    };
    for l in [limits(), all] {
        let mut i = p.instantiate("t", r#"{"mode":"net"}"#, &l).unwrap();
        let report: serde_json::Value = serde_json::from_slice(&i.process(BATCH).unwrap()).unwrap();
        for k in ["tcp", "listen", "udp", "dns"] {
            let got = report[k].as_str().unwrap();
            assert!(got.starts_with("error"), "{k}: {report}");
        }
        // Refused by WASI itself (access denied), not by a peer that is not there.
        let tcp = report["tcp"].as_str().unwrap().to_lowercase();
        assert!(
            tcp.contains("denied") || tcp.contains("not permitted") || tcp.contains("permission"),
            "{report}"
        );
    }
}

#[test]
fn stdout_flood_is_rate_limited_and_the_batch_still_works() {
    let h = host();
    let p = hostile(&h);
    let dropped = Arc::new(weir_core::metrics::Counter::default());
    let l = Limits {
        wasi: WasiGrants {
            stdio: true,
            ..WasiGrants::default()
        },
        log: LogLimits {
            lines_per_sec: 1,
            burst: 10,
            max_line_bytes: 100,
            dropped: Some(dropped.clone()),
        },
        ..limits()
    };
    let mut i = p.instantiate("t", r#"{"mode":"chatty"}"#, &l).unwrap();
    assert_eq!(i.process(BATCH).unwrap(), BATCH);
    // 1000 lines in one call: the burst of 10 gets through (perhaps one more token).
    let n = dropped.get();
    assert!((989..=990).contains(&n), "{n} lines dropped");
}

mod validator {
    //! The upload validator (preamble, wasmtime's validation and compile, the world
    //! check, a trial instantiation) on arbitrary and mutated input: never a panic,
    //! always a typed refusal or a plugin that runs within its limits.
    use super::*;
    use proptest::prelude::*;
    use std::sync::LazyLock;

    static HOST: LazyLock<PluginHost> = LazyLock::new(|| PluginHost::new().unwrap());
    static VALID: LazyLock<Vec<u8>> =
        LazyLock::new(|| wat::parse_str(memories_component(1, 1, 1)).unwrap());

    /// Validate like an upload does; what a refusal may be.
    fn validate(bytes: &[u8]) -> Result<(), HostError> {
        let p = HOST.compile("fuzz", bytes)?;
        p.check_instantiable(&limits())?;
        // Whatever it does, a call ends in output or a typed call error.
        if let Ok(mut i) = p.instantiate("t", "{}", &limits()) {
            let _ = i.process(BATCH);
        }
        Ok(())
    }

    fn typed(r: Result<(), HostError>) -> Result<(), TestCaseError> {
        match r {
            Ok(())
            | Err(HostError::NotWasm)
            | Err(HostError::CoreModule)
            | Err(HostError::Compile(_))
            | Err(HostError::WrongWorld(_))
            | Err(HostError::UnsupportedVersion(_))
            | Err(HostError::Init(_))
            | Err(HostError::Limit(_)) => Ok(()),
            Err(e) => Err(TestCaseError::fail(format!("unexpected refusal: {e:?}"))),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_get_a_typed_refusal(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let r = validate(&bytes);
            prop_assert!(r.is_err(), "random bytes accepted");
            typed(r)?;
        }

        #[test]
        fn arbitrary_bytes_after_a_component_preamble(body in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
            bytes.extend_from_slice(&body);
            typed(validate(&bytes))?;
        }

        #[test]
        fn mutated_components_never_panic(
            flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..6),
            cut in proptest::option::of(any::<proptest::sample::Index>()),
        ) {
            let mut bytes = VALID.clone();
            for (at, b) in flips {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            if let Some(c) = cut {
                bytes.truncate(c.index(bytes.len()));
            }
            typed(validate(&bytes))?;
        }
    }
}
