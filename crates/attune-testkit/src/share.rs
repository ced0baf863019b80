//! Who still uses a test database: servers sharing one database (two controllers on one
//! Postgres) each hold a [`DatabaseLease`]; only the last one given back lets its holder drop
//! the database.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One user's claim on a shared test database. Dropping it gives it back without dropping the
/// database (as dropping a [`crate::TestServer`] never dropped its database).
#[derive(Debug)]
pub struct DatabaseLease {
    users: Arc<AtomicUsize>,
    held: bool,
}

impl DatabaseLease {
    /// The first user of a database.
    pub fn first() -> DatabaseLease {
        DatabaseLease {
            users: Arc::new(AtomicUsize::new(1)),
            held: true,
        }
    }

    /// A user of a database someone else keeps and drops: its release is never the last.
    pub fn borrowed() -> DatabaseLease {
        DatabaseLease {
            // The owner's claim is the one never given back here.
            users: Arc::new(AtomicUsize::new(2)),
            held: true,
        }
    }

    /// Another user of the same database.
    pub fn join(&self) -> DatabaseLease {
        self.users.fetch_add(1, Ordering::SeqCst);
        DatabaseLease {
            users: self.users.clone(),
            held: true,
        }
    }

    /// How many users hold the database now.
    #[cfg(test)]
    pub fn users(&self) -> usize {
        self.users.load(Ordering::SeqCst)
    }

    /// Gives the claim back; true when this was the last one (the caller may drop the
    /// database).
    pub fn release(mut self) -> bool {
        self.give_back()
    }

    fn give_back(&mut self) -> bool {
        if !self.held {
            return false;
        }
        self.held = false;
        self.users.fetch_sub(1, Ordering::SeqCst) == 1
    }
}

impl Drop for DatabaseLease {
    fn drop(&mut self) {
        self.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::DatabaseLease;

    #[test]
    fn only_the_last_release_is_last() {
        let first = DatabaseLease::first();
        let second = first.join();
        let third = second.join();
        assert_eq!(first.users(), 3);
        assert!(!second.release());
        drop(third);
        assert_eq!(first.users(), 1);
        assert!(first.release());
    }
}
