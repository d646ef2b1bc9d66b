use crossbeam_channel::bounded;
use slowpool::{AsyncPool, TaskError};
use std::time::Duration;

#[test]
fn repro_join_after_timeout() {
    let (go_tx, go) = bounded::<()>(1);
    let pool = AsyncPool::builder()
        .max_workers(2)
        .max_per_key(1)
        .build_with(|| (), move |cx, n: u32| {
            if n == 0 {
                let _ = go.recv();
                cx.pool().join();
            }
            n
        })
        .unwrap();
    let joiner = pool.task(0).key("a").timeout(Duration::from_millis(20)).add().unwrap();
    let behind = pool.task(1).key("a").add().unwrap();
    assert_eq!(joiner.recv(), Err(TaskError::TimedOut));
    go_tx.send(()).unwrap();
    let r = behind.recv_timeout(Duration::from_secs(5));
    eprintln!("after-timeout: behind = {r:?}, stats = {:?}", pool.stats());
    std::mem::forget(pool);
}

#[test]
fn repro_timeout_during_join() {
    let (release_tx, release) = bounded::<()>(1);
    let pool = AsyncPool::builder()
        .max_workers(3)
        .max_per_key(1)
        .build_with(|| (), move |cx, n: u32| {
            match n {
                0 => cx.pool().join(),
                2 => { let _ = release.recv(); }
                _ => {}
            }
            n
        })
        .unwrap();
    let other = pool.task(2).key("b").add().unwrap();
    while !other.is_running() { std::thread::yield_now() }
    let joiner = pool.task(0).key("a").timeout(Duration::from_millis(50)).add().unwrap();
    let behind = pool.task(1).key("a").add().unwrap();
    assert_eq!(joiner.recv(), Err(TaskError::TimedOut)); // timed out inside join
    release_tx.send(()).unwrap();
    assert_eq!(other.recv(), Ok(2));
    let r = behind.recv_timeout(Duration::from_secs(5));
    eprintln!("during-join: behind = {r:?}, stats = {:?}", pool.stats());
    std::mem::forget(pool);
}

#[test]
fn repro_join_after_timeout_with_another_task_running() {
  for round in 0..50 {
    let (go_tx, go) = bounded::<()>(1);
    let (release_tx, release) = bounded::<()>(1);
    let (joined_tx, joined) = bounded::<()>(1);
    let pool = AsyncPool::builder()
        .max_workers(3)
        .max_per_key(1)
        .build_with(|| (), move |cx, n: u32| {
            match n {
                0 => {
                    let _ = go.recv();
                    cx.pool().join();
                    joined_tx.send(()).unwrap();
                }
                2 => { let _ = release.recv(); }
                _ => {}
            }
            n
        })
        .unwrap();
    let joiner = pool.task(0).key("a").timeout(Duration::from_millis(20)).add().unwrap();
    let other = pool.task(2).key("b").add().unwrap();
    let behind = pool.task(1).key("a").add().unwrap();
    assert_eq!(joiner.recv(), Err(TaskError::TimedOut));
    go_tx.send(()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    release_tx.send(()).unwrap();
    assert_eq!(other.recv(), Ok(2));
    let j = joined.recv_timeout(Duration::from_secs(5));
    let r = behind.recv_timeout(Duration::from_secs(1));
    if j.is_err() || r.is_err() { eprintln!("round {round} with-other: joined = {j:?}, behind = {r:?}, stats = {:?}", pool.stats()); std::mem::forget(pool); panic!() }
  }
}
