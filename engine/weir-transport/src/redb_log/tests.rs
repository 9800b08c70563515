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
