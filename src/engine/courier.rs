//! The courier: one thread per pool, started on first need, that finishes deliveries into full
//! bounded mailboxes for threads that must not wait (a canceller, the timer, a shutdown).
//!
//! It waits on all of its pending sends at once with a crossbeam `Select` (one operation per
//! mailbox: sends to one mailbox keep their order), plus its inbox and the pool's give-up
//! signal. So a mailbox nobody reads holds back only its own results, and 2,000 cancellations
//! into one full mailbox cost one thread, not 2,000. Each pending send is settled (counted
//! delivered, for `join`) when it is sent, or dropped because its receiver left or the pool gave
//! up (`shutdown_timeout` ran out).

use std::collections::VecDeque;
use std::sync::Arc;

use crossbeam_channel::{unbounded, Receiver, Select, Sender};
use parking_lot::Mutex;

use super::spawn::spawn_thread;
use super::{Engine, Job};
use crate::delivery::Pending;

pub(crate) struct Courier {
    inbox: Mutex<Inbox>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

enum Inbox {
    /// No courier thread yet (or the OS refused it: the next send tries again).
    NotStarted,
    Open(Sender<Box<dyn Pending>>),
    /// The pool disconnected: the courier finishes what it holds and exits.
    Closed,
}

/// What the courier thread does next.
enum Turn {
    Arrived(Box<dyn Pending>),
    Sent(usize),
    GiveUp,
    Stop,
}

impl Courier {
    pub(crate) fn new() -> Courier {
        Courier {
            inbox: Mutex::new(Inbox::NotStarted),
            thread: Mutex::new(None),
        }
    }

    pub(crate) fn take_thread(&self) -> Option<std::thread::JoinHandle<()>> {
        self.thread.lock().take()
    }

    /// Closes the inbox: the courier finishes what it holds, then exits.
    pub(crate) fn close(&self) {
        let inbox = std::mem::replace(&mut *self.inbox.lock(), Inbox::Closed);
        drop(inbox);
    }
}

impl<J: Job> Engine<J> {
    /// Hands a send that found its mailbox full to the courier. It is settled when the courier
    /// sends or drops it; if no courier can run, it is dropped and settled now.
    pub(super) fn send_later(&self, pending: Box<dyn Pending>) {
        let courier = &self.courier;
        let mut inbox = courier.inbox.lock();
        if let Inbox::NotStarted = *inbox {
            let (tx, rx) = unbounded();
            let started = self.me.upgrade().map(|engine| {
                let name = format!("{}-courier", engine.settings.thread_name);
                spawn_thread(name, None, move || engine.courier_loop(rx))
            });
            if let Some(Ok(handle)) = started {
                *inbox = Inbox::Open(tx);
                *courier.thread.lock() = Some(handle);
            }
        }
        let refused = match &*inbox {
            Inbox::Open(tx) => tx.send(pending).err().map(|e| e.0),
            _ => Some(pending),
        };
        drop(inbox);
        if let Some(pending) = refused {
            // No courier: drop the result rather than block a thread that may be the
            // mailbox's only reader.
            crate::delivery::drop_quietly(pending);
            self.settle();
        }
    }

    fn courier_loop(self: Arc<Self>, inbox: Receiver<Box<dyn Pending>>) {
        // One queue per mailbox, oldest first.
        let mut queues: Vec<VecDeque<Box<dyn Pending>>> = Vec::new();
        let mut inbox_open = true;
        let mut gave_up = false;
        loop {
            if !inbox_open && queues.is_empty() {
                return;
            }
            let step = {
                let mut select = Select::new();
                let ops: Vec<usize> = queues.iter().map(|q| q[0].register(&mut select)).collect();
                let arrive = inbox_open.then(|| select.recv(&inbox));
                let give_up = (!gave_up).then(|| select.recv(self.stopping.give_up_signal()));
                let oper = select.select();
                let index = oper.index();
                if Some(index) == arrive {
                    match oper.recv(&inbox) {
                        Ok(pending) => Turn::Arrived(pending),
                        Err(_) => Turn::Stop,
                    }
                } else if Some(index) == give_up {
                    let _ = oper.recv(self.stopping.give_up_signal());
                    Turn::GiveUp
                } else {
                    let queue = ops
                        .iter()
                        .position(|&op| op == index)
                        .expect("an op of ours");
                    queues[queue][0].complete(oper);
                    Turn::Sent(queue)
                }
            };
            match step {
                Turn::Arrived(pending) if gave_up => {
                    crate::delivery::drop_quietly(pending);
                    self.settle();
                }
                Turn::Arrived(pending) => {
                    match queues.iter_mut().find(|q| q[0].same_mailbox(&*pending)) {
                        Some(queue) => queue.push_back(pending),
                        None => queues.push(VecDeque::from([pending])),
                    }
                }
                Turn::Sent(queue) => {
                    drop(queues[queue].pop_front());
                    if queues[queue].is_empty() {
                        queues.swap_remove(queue);
                    }
                    self.settle();
                }
                Turn::GiveUp => {
                    // `shutdown_timeout` ran out: nothing more is delivered.
                    gave_up = true;
                    for pending in queues.drain(..).flatten() {
                        crate::delivery::drop_quietly(pending);
                        self.settle();
                    }
                }
                Turn::Stop => inbox_open = false,
            }
        }
    }
}
