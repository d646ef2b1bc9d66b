//! The Elixir original's GenServer example, in Rust: an event loop that owns a pool and
//! `select!`s over its mailbox (results tagged with their id), a ticker and an input channel.
//!
//! A producer thread feeds numbers into the loop; the loop adds each to the pool, tagged with its
//! input, handles each ending as it arrives (the `handle_info({ref, value}, state)` of the
//! original: the message carries the input back, so the loop keeps no map of ids), reports
//! progress on every tick, and shuts the pool down when the input ends and every task is back.
//!
//! `cargo run --example genserver`

use std::thread;
use std::time::Duration;

use crossbeam_channel::{select, tick, unbounded, Receiver};
use slowpool::{AsyncPool, Mailbox};

/// The work: stands in for a slow network call.
fn process(data: u64) -> u64 {
    thread::sleep(Duration::from_millis(data % 7 * 5));
    data * data
}

/// The "GenServer": its state and its loop.
struct Producer {
    pool: AsyncPool<u64, u64>,
    /// Tasks added and not back yet.
    pending: usize,
    sum: u64,
}

impl Producer {
    fn run(mut self, inputs: Receiver<u64>) -> u64 {
        // Each message: the task's id, its input (the tag), its result.
        let (mailbox, results): (Mailbox<u64, u64>, _) = unbounded();
        let ticker = tick(Duration::from_millis(20));
        let mut inputs = Some(inputs);
        loop {
            let input_rx = inputs.clone().unwrap_or_else(crossbeam_channel::never);
            select! {
                // handle_cast(:produce, state)
                recv(input_rx) -> data => match data {
                    Ok(data) => {
                        self.pool.task(data).tag(data).add_to(&mailbox).expect("pool is running");
                        self.pending += 1;
                    }
                    Err(_) => inputs = None, // the producer is done
                },
                // handle_info({ref, return_value}, state)
                recv(results) -> done => {
                    let done = done.expect("we hold a sender");
                    self.pending -= 1;
                    match done.result {
                        Ok(square) => self.sum += square,
                        Err(error) => eprintln!("{} ({}) failed: {error}", done.id, done.tag),
                    }
                }
                recv(ticker) -> _ => {
                    let stats = self.pool.stats();
                    println!("tick: {} waiting for a reply, {} done", self.pending, stats.completed);
                }
            }
            if inputs.is_none() && self.pending == 0 {
                self.pool.shutdown();
                return self.sum;
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = AsyncPool::builder()
        .max_workers(10)
        .thread_name("genserver")
        .build(process)?;
    let (input_tx, input_rx) = unbounded();
    let feeder = thread::spawn(move || {
        for data in 1..=100 {
            input_tx.send(data).unwrap();
            if data % 10 == 0 {
                thread::sleep(Duration::from_millis(10)); // work arrives at any time
            }
        }
    });
    let producer = Producer {
        pool,
        pending: 0,
        sum: 0,
    };
    let sum = producer.run(input_rx);
    feeder.join().unwrap();
    println!("sum of squares 1..=100 = {sum}");
    assert_eq!(sum, (1..=100u64).map(|n| n * n).sum::<u64>());
    Ok(())
}
