//! The Elixir original's "without a GenServer" example: a main loop that gets data, adds it to
//! the pool, and checks its mailbox without waiting (`receive ... after 0`).
//!
//! `cargo run --example producer`

use std::thread;
use std::time::Duration;

use crossbeam_channel::unbounded;
use slowpool::{AsyncPool, Mailbox};

/// Do your work here; the return value is sent back to the loop's mailbox.
fn process(data: u32) -> String {
    thread::sleep(Duration::from_millis(u64::from(data % 4) * 10));
    format!("processed {data}")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = AsyncPool::new(3, process)?;
    let (mailbox, replies): (Mailbox<String>, _) = unbounded();
    let mut data_source = 1..21;
    let mut received = 0;
    loop {
        // Get some data and send it to the pool.
        if let Some(data) = data_source.next() {
            pool.add_task_to(data, &mailbox)?;
        }
        // Check for pending replies without blocking (Elixir: `receive ... after 0`).
        while let Ok(done) = replies.try_recv() {
            received += 1;
            println!(
                "{}: {}",
                done.id,
                done.result.unwrap_or_else(|e| e.to_string())
            );
        }
        if received == 20 {
            break;
        }
        if data_source.is_empty() {
            // Nothing left to produce: wait for the rest instead of spinning.
            let done = replies.recv()?;
            received += 1;
            println!(
                "{}: {}",
                done.id,
                done.result.unwrap_or_else(|e| e.to_string())
            );
        }
    }
    println!("all {received} replies received");
    Ok(())
}
