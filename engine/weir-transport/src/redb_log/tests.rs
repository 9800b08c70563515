use super::*;

fn batch(tenant: &str, n: u32, ts: i64) -> Batch {
    let mut records = Vec::new();
    for i in 0..n {
        records.extend_from_slice(format!("{{\"i\":{i}}}\n").as_bytes());
    }
    Batch {
        tenant: tenant.into(),
        stream: "s".into(),
        ingest_ts_ms: ts,
        count: n,
        records,
        replay_of: None,
    }
}

fn opts(partitions: u32) -> RedbLogOptions {
    RedbLogOptions {
        partitions,
        ..Default::default()
    }
}

async fn append(log: &RedbLog, items: Vec<(u32, Batch)>) -> Vec<Appended> {
    log.append(items).unwrap().await.unwrap().unwrap()
}

#[tokio::test]
async fn offsets_are_per_partition_and_contiguous() {
    let dir = tempfile::tempdir().unwrap();
    let log = RedbLog::open(&dir.path().join("log.redb"), opts(2)).unwrap();
    let a = append(
        &log,
        vec![(0, batch("t", 3, now_ms())), (1, batch("t", 2, now_ms()))],
    )
    .await;
    assert_eq!(
        a[0],
        Appended {
            partition: 0,
            first_offset: 0,
            count: 3
        }
    );
    assert_eq!(
        a[1],
        Appended {
            partition: 1,
            first_offset: 0,
            count: 2
        }
    );
    let b = append(&log, vec![(0, batch("t", 4, now_ms()))]).await;
    assert_eq!(b[0].first_offset, 3);
    assert_eq!(log.end_offset(0), 7);
    let entries = log.read(0, 0, 100).unwrap();
    assert_eq!(
        entries
            .iter()
            .map(|e| (e.offset, e.end()))
            .collect::<Vec<_>>(),
        vec![(0, 3), (3, 7)]
    );
    assert_eq!(log.read(0, 3, 100).unwrap().len(), 1);
    assert_eq!(log.read(0, 1, 1).unwrap().len(), 1, "at least one entry");
    assert!(log.read(0, 7, 100).unwrap().is_empty());
    assert_eq!(log.read(5, 0, 1), Err(LogError::NoPartition(5)));
}

#[tokio::test]
async fn survives_reopen_without_reusing_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    {
        let log = RedbLog::open(&path, opts(1)).unwrap();
        append(&log, vec![(0, batch("t", 5, now_ms()))]).await;
    }
    let log = RedbLog::open(&path, opts(1)).unwrap();
    assert_eq!(log.end_offset(0), 5);
    let e = log.read(0, 0, 10).unwrap();
    assert_eq!(e[0].batch, batch("t", 5, e[0].batch.ingest_ts_ms));
    let a = append(&log, vec![(0, batch("t", 1, now_ms()))]).await;
    assert_eq!(a[0].first_offset, 5);
    drop(log);
    assert!(RedbLog::open(&path, opts(1)).is_ok());
}

#[tokio::test]
async fn partition_count_cannot_shrink() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    {
        let log = RedbLog::open(&path, opts(4)).unwrap();
        append(&log, vec![(3, batch("t", 1, now_ms()))]).await;
    }
    assert!(matches!(
        RedbLog::open(&path, opts(2)),
        Err(LogError::Storage(_))
    ));
}

#[tokio::test]
async fn retention_only_deletes_released_entries() {
    let dir = tempfile::tempdir().unwrap();
    let o = RedbLogOptions {
        partitions: 1,
        retention_bytes: 0,
        ..Default::default()
    };
    let log = RedbLog::open(&dir.path().join("log.redb"), o).unwrap();
    for _ in 0..3 {
        append(&log, vec![(0, batch("t", 2, now_ms()))]).await;
    }
    apply_retention(&log.shared);
    assert_eq!(
        log.stats(0).first_offset,
        0,
        "nothing released yet: nothing deleted"
    );
    log.release(0, 4);
    apply_retention(&log.shared);
    let s = log.stats(0);
    assert_eq!(s.first_offset, 4);
    assert_eq!(
        log.read(0, 0, 100).unwrap().len(),
        1,
        "only the unreleased entry is left"
    );
    assert_eq!(s.end_offset, 6);
}

#[tokio::test]
async fn retention_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let o = RedbLogOptions {
        partitions: 1,
        retention: Duration::from_secs(60),
        ..Default::default()
    };
    let log = RedbLog::open(&dir.path().join("log.redb"), o).unwrap();
    append(&log, vec![(0, batch("t", 1, now_ms() - 120_000))]).await;
    append(&log, vec![(0, batch("t", 1, now_ms()))]).await;
    log.release(0, 2);
    apply_retention(&log.shared);
    assert_eq!(log.stats(0).first_offset, 1);
}

#[tokio::test]
async fn lag_bound_gives_backpressure_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let o = RedbLogOptions {
        partitions: 1,
        max_lag_bytes: 10,
        ..Default::default()
    };
    let log = RedbLog::open(&dir.path().join("log.redb"), o).unwrap();
    append(&log, vec![(0, batch("t", 3, now_ms()))]).await;
    assert!(matches!(
        log.append(vec![(0, batch("t", 1, now_ms()))]),
        Err(LogError::Lagging { partition: 0, .. })
    ));
    log.release(0, 3);
    assert_eq!(log.stats(0).lag_bytes, 0);
    append(&log, vec![(0, batch("t", 1, now_ms()))]).await;
}

#[tokio::test]
async fn full_queue_is_backpressure_not_memory() {
    let dir = tempfile::tempdir().unwrap();
    let o = RedbLogOptions {
        partitions: 1,
        queue: 1,
        ..Default::default()
    };
    let log = RedbLog::open(&dir.path().join("log.redb"), o).unwrap();
    // Flood faster than the committer can fsync: some appends must be refused at once.
    let mut waits = Vec::new();
    let mut refused = 0;
    for _ in 0..2000 {
        match log.append(vec![(0, batch("t", 1, now_ms()))]) {
            Ok(w) => waits.push(w),
            Err(LogError::Backpressure) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        refused > 0,
        "a queue of 1 must refuse some of 2000 immediate appends"
    );
    let n = waits.len() as u64;
    for w in waits {
        w.await.unwrap().unwrap();
    }
    assert_eq!(
        log.end_offset(0),
        n,
        "every accepted append landed, nothing else"
    );
}

#[tokio::test]
async fn wait_for_wakes_on_append() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(RedbLog::open(&dir.path().join("log.redb"), opts(1)).unwrap());
    assert!(!log.wait_for(0, 0, Duration::from_millis(10)));
    let l2 = log.clone();
    let waiter = std::thread::spawn(move || l2.wait_for(0, 0, Duration::from_secs(10)));
    append(&log, vec![(0, batch("t", 1, now_ms()))]).await;
    assert!(waiter.join().unwrap());
}

#[tokio::test]
async fn closed_log_refuses_appends() {
    let dir = tempfile::tempdir().unwrap();
    let log = RedbLog::open(&dir.path().join("log.redb"), opts(1)).unwrap();
    log.close();
    assert_eq!(
        log.append(vec![(0, batch("t", 1, 0))]).err(),
        Some(LogError::Closed)
    );
}

#[test]
fn out_of_space_is_reported_as_disk_full() {
    let e = storage_err(std::io::Error::from_raw_os_error(28));
    assert!(matches!(e, LogError::DiskFull(_)), "{e:?}");
    assert!(matches!(
        storage_err("checksum mismatch"),
        LogError::Storage(_)
    ));
}

fn once(tenant: &str, key: &str, fingerprint: u64, answer: &str) -> Once {
    Once {
        tenant: tenant.into(),
        key: key.into(),
        fingerprint,
        answer: answer.as_bytes().to_vec(),
    }
}

async fn append_once(log: &RedbLog, items: Vec<(u32, Batch)>, o: Once) -> OnceOutcome {
    log.append_once(items, o).unwrap().await.unwrap().unwrap()
}

#[tokio::test]
async fn a_repeated_key_appends_nothing_and_gets_the_first_answer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.redb");
    let log = RedbLog::open(&path, opts(1)).unwrap();
    let first = append_once(
        &log,
        vec![(0, batch("t", 3, now_ms()))],
        once("t", "k1", 7, "first"),
    )
    .await;
    assert!(matches!(first, OnceOutcome::Appended(ref a) if a[0].count == 3));
    let again = append_once(
        &log,
        vec![(0, batch("t", 3, now_ms()))],
        once("t", "k1", 7, "second"),
    )
    .await;
    assert_eq!(
        again,
        OnceOutcome::Repeated(Remembered {
            fingerprint: 7,
            answer: b"first".to_vec()
        })
    );
    assert_eq!(log.end_offset(0), 3);
    // Keys are per tenant: another tenant's k1 is another key.
    let other = append_once(
        &log,
        vec![(0, batch("u", 1, now_ms()))],
        once("u", "k1", 7, "u"),
    )
    .await;
    assert!(matches!(other, OnceOutcome::Appended(_)));
    assert_eq!(log.end_offset(0), 4);
    // Two appends with one key in the same commit group: one lands.
    let (a, b) = (
        log.append_once(vec![(0, batch("t", 2, now_ms()))], once("t", "k2", 1, "a"))
            .unwrap(),
        log.append_once(vec![(0, batch("t", 2, now_ms()))], once("t", "k2", 1, "b"))
            .unwrap(),
    );
    let outcomes = [a.await.unwrap().unwrap(), b.await.unwrap().unwrap()];
    let appended = outcomes
        .iter()
        .filter(|o| matches!(o, OnceOutcome::Appended(_)))
        .count();
    assert_eq!(appended, 1, "{outcomes:?}");
    assert_eq!(log.end_offset(0), 6);
    // Remembered across a restart, with the first answer.
    drop(log);
    let log = RedbLog::open(&path, opts(1)).unwrap();
    assert_eq!(
        log.remembered("t", "k1").unwrap(),
        Some(Remembered {
            fingerprint: 7,
            answer: b"first".to_vec()
        })
    );
    assert_eq!(log.remembered("t", "nope").unwrap(), None);
    let again = append_once(
        &log,
        vec![(0, batch("t", 3, now_ms()))],
        once("t", "k1", 7, "x"),
    )
    .await;
    assert!(matches!(again, OnceOutcome::Repeated(_)));
    assert_eq!(log.end_offset(0), 6);
}

#[tokio::test]
async fn a_refused_append_is_not_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let log = RedbLog::open(
        &dir.path().join("log.redb"),
        RedbLogOptions {
            partitions: 1,
            max_lag_bytes: 10,
            ..Default::default()
        },
    )
    .unwrap();
    append_once(
        &log,
        vec![(0, batch("t", 3, now_ms()))],
        once("t", "a", 1, "a"),
    )
    .await;
    // The partition now lags: the next append is refused, and its key stays unknown.
    let refused = log.append_once(vec![(0, batch("t", 1, now_ms()))], once("t", "b", 1, "b"));
    assert!(matches!(refused, Err(LogError::Lagging { .. })));
    assert_eq!(log.remembered("t", "b").unwrap(), None);
    log.release(0, 3);
    let retried = append_once(
        &log,
        vec![(0, batch("t", 1, now_ms()))],
        once("t", "b", 1, "b"),
    )
    .await;
    assert!(matches!(retried, OnceOutcome::Appended(_)));
}

#[tokio::test]
async fn keys_are_bounded_per_tenant_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let log = RedbLog::open(
        &dir.path().join("log.redb"),
        RedbLogOptions {
            partitions: 1,
            keys_per_tenant: 3,
            key_ttl: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .unwrap();
    for i in 0..5 {
        append_once(
            &log,
            vec![(0, batch("t", 1, now_ms()))],
            once("t", &format!("k{i}"), i, ""),
        )
        .await;
    }
    append_once(
        &log,
        vec![(0, batch("u", 1, now_ms()))],
        once("u", "k0", 0, ""),
    )
    .await;
    let known: Vec<bool> = (0..5)
        .map(|i| log.remembered("t", &format!("k{i}")).unwrap().is_some())
        .collect();
    assert_eq!(
        known,
        [false, false, true, true, true],
        "the oldest go first"
    );
    assert!(
        log.remembered("u", "k0").unwrap().is_some(),
        "another tenant's keys stay"
    );
    // After the time to live, the committer's idle pass forgets them all.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.remembered("t", "k4").unwrap().is_some()
        || log.remembered("u", "k0").unwrap().is_some()
    {
        assert!(std::time::Instant::now() < deadline, "keys never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A forgotten key appends again.
    let again = append_once(
        &log,
        vec![(0, batch("t", 1, now_ms()))],
        once("t", "k4", 4, ""),
    )
    .await;
    assert!(matches!(again, OnceOutcome::Appended(_)));
}
