//! Starting the pool's threads. The one place a thread is created, so that tests can make the
//! operating system "refuse" a thread (`fault::fail_spawns`) and check that nothing leaks.

use std::io;
use std::thread::{self, JoinHandle};

pub(crate) fn spawn_thread(
    name: String,
    stack_size: Option<usize>,
    body: impl FnOnce() + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    #[cfg(test)]
    fault::check(&name)?;
    let mut builder = thread::Builder::new().name(name);
    if let Some(size) = stack_size {
        builder = builder.stack_size(size);
    }
    builder.spawn(body)
}

#[cfg(test)]
pub(crate) mod fault {
    //! Spawn-failure injection for unit tests: threads whose name starts with a given prefix are
    //! refused after a given number have been started.

    use parking_lot::Mutex;
    use std::io;

    static RULES: Mutex<Vec<(String, usize)>> = Mutex::new(Vec::new());

    /// After `allowed` more threads named `prefix-*`, refuse every further one.
    pub(crate) fn fail_spawns(prefix: &str, allowed: usize) {
        RULES.lock().push((format!("{prefix}-"), allowed));
    }

    /// Removes the rule for `prefix`.
    pub(crate) fn allow_spawns(prefix: &str) {
        let prefix = format!("{prefix}-");
        RULES.lock().retain(|(p, _)| *p != prefix);
    }

    pub(super) fn check(name: &str) -> io::Result<()> {
        let mut rules = RULES.lock();
        for (prefix, allowed) in rules.iter_mut() {
            if name.starts_with(prefix.as_str()) {
                if *allowed == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "thread refused (injected)",
                    ));
                }
                *allowed -= 1;
            }
        }
        Ok(())
    }
}
