//! Mutex helpers for the threads that may use locks (generator, loader, GUI; never the audio
//! thread). A poisoned mutex (a panic while it was held) still holds usable data here: the
//! state behind these locks is always left consistent, so the plugin keeps going rather than
//! panicking inside the host.

use std::sync::{Mutex, MutexGuard, TryLockError};

/// Locks, ignoring poisoning.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads through `f` if the mutex is free right now, ignoring poisoning; `None` if another
/// thread holds it. Never blocks, so the GUI thread can use it.
pub fn try_with<T, R>(mutex: &Mutex<T>, f: impl FnOnce(&T) -> R) -> Option<R> {
    match mutex.try_lock() {
        Ok(guard) => Some(f(&guard)),
        Err(TryLockError::Poisoned(e)) => Some(f(&e.into_inner())),
        Err(TryLockError::WouldBlock) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisoned_mutexes_stay_usable_and_busy_ones_are_skipped() {
        let mutex = std::sync::Arc::new(Mutex::new(5));
        let poisoner = mutex.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(mutex.is_poisoned());
        assert_eq!(*lock(&mutex), 5);
        assert_eq!(try_with(&mutex, |v| *v + 1), Some(6));
        let _held = lock(&mutex);
        assert_eq!(try_with(&mutex, |v| *v), None);
    }
}
