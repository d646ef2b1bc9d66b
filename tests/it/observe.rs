//! Feature `tracing`: a span per task attempt and an event at each ending, as a subscriber
//! installed for the whole process sees them (worker threads use the global default). Runs in
//! a child process of its own, so that other tests' tasks do not reach its subscriber.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{alone_in_a_child_process, eventually, gate, quick};
use slowpool::{AsyncPool, TaskError};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

type Fields = HashMap<&'static str, String>;

/// A subscriber that keeps every span's fields and every event with the span it was in.
#[derive(Default)]
struct Recorder {
    next: AtomicU64,
    spans: Mutex<HashMap<u64, (&'static str, Fields)>>,
    events: Mutex<Vec<(Option<u64>, Fields)>>,
}

thread_local! {
    static ENTERED: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
}

#[derive(Clone, Default)]
struct Shared(Arc<Recorder>);

impl Subscriber for Shared {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target().starts_with("slowpool")
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.0.next.fetch_add(1, SeqCst) + 1;
        let mut fields = Fields::new();
        span.record(&mut Collect(&mut fields));
        let name = span.metadata().name();
        self.0.spans.lock().unwrap().insert(id, (name, fields));
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some((_, fields)) = self.0.spans.lock().unwrap().get_mut(&span.into_u64()) {
            values.record(&mut Collect(fields));
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::new();
        event.record(&mut Collect(&mut fields));
        let span = ENTERED.with(|entered| entered.borrow().last().copied());
        self.0.events.lock().unwrap().push((span, fields));
    }
    fn enter(&self, span: &Id) {
        ENTERED.with(|entered| entered.borrow_mut().push(span.into_u64()));
    }
    fn exit(&self, _: &Id) {
        ENTERED.with(|entered| entered.borrow_mut().pop());
    }
}

#[test]
fn every_attempt_has_a_span_and_every_ending_an_event() {
    if !alone_in_a_child_process(&crate::test_name!(
        "every_attempt_has_a_span_and_every_ending_an_event"
    )) {
        return;
    }
    let recorder = Shared::default();
    tracing::subscriber::set_global_default(recorder.clone()).unwrap();
    let (mut release, held) = gate();
    let retried = Arc::new(AtomicU64::new(0));
    let counted = retried.clone();
    let pool = AsyncPool::builder()
        .max_workers(4)
        .max_per_key(2)
        .build(move |n: u32| match n {
            0 => panic!("boom"),
            1 if counted.fetch_add(1, SeqCst) == 0 => Err(n),
            9 => {
                held.wait();
                Ok(n)
            }
            _ => Ok(n),
        })
        .unwrap();
    let ok = pool.task(5).key("a.example").add().unwrap();
    let panics = pool.task(0).add().unwrap();
    let retries = pool.task(1).key("b.example").retry(quick(2)).add().unwrap();
    let times_out = pool
        .task(9)
        .timeout(Duration::from_millis(20))
        .add()
        .unwrap();
    assert_eq!(ok.recv(), Ok(Ok(5)));
    assert!(matches!(panics.recv(), Err(TaskError::Panicked(_))));
    assert_eq!(retries.recv(), Ok(Ok(1)));
    assert_eq!(times_out.recv(), Err(TaskError::TimedOut));
    release.open();
    // `join` does not wait for a timed-out callback: its abandoned thread reports the late
    // return when it comes, then exits.
    eventually("the abandoned thread returns", || {
        pool.stats().abandoned == 0
    });
    pool.join();
    // Task ids count per pool: what this pool's tasks left, before another pool runs.
    let spans = recorder.0.spans.lock().unwrap().clone();
    let events = recorder.0.events.lock().unwrap().clone();
    // A cancel: the second task of a one-worker pool whose first is held.
    let (blocker_release, blocker) = gate();
    let single = AsyncPool::builder()
        .max_workers(1)
        .build(move |n: u32| {
            blocker.wait();
            Ok::<u32, u32>(n)
        })
        .unwrap();
    let first = single.add_task(1).unwrap();
    let second = single.add_task(2).unwrap();
    assert!(single.cancel(second.id()));
    drop(blocker_release);
    assert_eq!(first.recv(), Ok(Ok(1)));
    single.join();

    let span_of = |id: u64, attempt: u32| {
        spans
            .iter()
            .find(|(_, (name, f))| {
                *name == "slowpool.task"
                    && f.get("task_id") == Some(&id.to_string())
                    && f.get("attempt") == Some(&attempt.to_string())
            })
            .map(|(span, (_, fields))| (*span, fields.clone()))
            .unwrap_or_else(|| panic!("no span for task {id} attempt {attempt}: {spans:?}"))
    };
    let ended_in = |span: u64| {
        events
            .iter()
            .find(|(s, _)| *s == Some(span))
            .map(|(_, f)| f.clone())
            .unwrap_or_else(|| panic!("no event in span {span}: {events:?}"))
    };
    // A keyed success: its key in the span, the times in the event.
    let (span, fields) = span_of(ok.id().as_u64(), 1);
    assert!(fields.contains_key("key"), "{fields:?}");
    let event = ended_in(span);
    assert_eq!(event["outcome"], "\"completed\"");
    assert!(
        event.contains_key("queue_wait_s") && event.contains_key("run_time_s"),
        "{event:?}"
    );
    // No key, no key field.
    let (span, fields) = span_of(panics.id().as_u64(), 1);
    assert!(!fields.contains_key("key"), "{fields:?}");
    assert_eq!(ended_in(span)["outcome"], "\"panicked\"");
    // A retry: two attempts, two spans.
    let (first_try, _) = span_of(retries.id().as_u64(), 1);
    let (second_try, _) = span_of(retries.id().as_u64(), 2);
    assert_eq!(ended_in(first_try)["outcome"], "\"retrying\"");
    assert_eq!(ended_in(second_try)["outcome"], "\"completed\"");
    // A timeout: the ending reported when it happens, the late return when it comes.
    let (late, _) = span_of(times_out.id().as_u64(), 1);
    assert_eq!(ended_in(late)["outcome"], "\"late\"");
    let unrun = |id: u64, outcome: &str| {
        events.iter().any(|(_, f)| {
            f.get("task_id") == Some(&id.to_string())
                && f.get("outcome").map(String::as_str) == Some(outcome)
        })
    };
    assert!(
        unrun(times_out.id().as_u64(), "\"timed_out\""),
        "{events:?}"
    );
    let events = recorder.0.events.lock().unwrap().clone();
    let cancelled = events.iter().any(|(_, f)| {
        f.get("task_id") == Some(&second.id().as_u64().to_string())
            && f.get("outcome").map(String::as_str) == Some("\"cancelled\"")
    });
    assert!(cancelled, "{events:?}");
}
